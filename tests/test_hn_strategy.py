"""HN with the chunked hypernetwork through the look-ahead, its logits of every task (task
inference), and the memory comparison of the paper's Table 6 that HN reports in every run's metrics."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from arrays import normal
from phn_jax import lookahead, models
from phn_jax.partial_hnet import PartialHypernetwork
from phn_jax.strategies.hn import HN
from phn_jax.task_inference import supports_task_inference


def quick_state(hn: HN, key):
    """HN's state at the start of experience 1 with φ drawn in one call (N(0, 0.3²)): the ResNet's
    own init draws once per tensor, which takes XLA:CPU seconds to compile; ψ from its own init."""
    k_phi, k_psi = jax.random.split(key)
    phi_shapes = jax.eval_shape(hn.model.init, k_phi)[0]
    flat, unravel = ravel_pytree(jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), phi_shapes))
    phi = unravel(0.3 * jax.random.normal(k_phi, flat.shape))
    return hn.begin_experience({"phi": phi, "psi": hn.model.hnet.init(k_psi), "stats": {}}, 0)


def test_chunked_hypernetwork_trains_through_the_lookahead():
    model = PartialHypernetwork.create(models.ResNetConfig(num_classes=2, nf=4, blocks_per_stage=(1, 1, 1, 1)), 3, num_tasks=2, kind="chunked",
                                       embedding_dim=8, hidden_dims=(16, 8), chunk_dim=512, chunk_embedding_dim=4)
    hn = HN(model, lr=1e-2, order="first")
    kinit = jax.random.key(0)
    # 16x16: stage 4 keeps 2x2 pixels for the generated layers' per-sample norm
    batch = {"x": normal(1, (8, 16, 16, 3)), "y": np.random.default_rng(2).integers(0, 2, 8, np.int32),
             "mask": jnp.ones(8, bool), "task": jnp.zeros(8, jnp.int32)}
    step = jax.jit(hn.train_step, static_argnums=4)
    state = quick_state(hn, kinit)
    state, m = step(state, batch, jax.random.key(1), 0, True)
    assert np.isfinite(m["loss"]) and m["reg"] == 0
    state = hn.begin_experience(state, 1)
    psi_star, ce = state["psi"], []
    for i in range(8):
        state, m = step(state, {**batch, "task": jnp.ones(8, jnp.int32)}, jax.random.key(2 + i), 1, False)
        assert all(np.isfinite(m[k]) for k in ("loss", "ce", "reg", "cos_g1_g2")), m
        ce.append(float(m["ce"]))
    # ψ moved (the chunk MLP's output layer and chunk embeddings too), the regulariser saw the move,
    # and the current task's loss went down on its (fixed) batch
    for part in ("output", "chunk_embeddings", "embeddings"):
        assert not np.allclose(state["psi"][part]["kernel"] if part == "output" else state["psi"][part],
                               psi_star[part]["kernel"] if part == "output" else psi_star[part]), part
    assert m["reg"] > 0 and ce[-1] < ce[0], ce
    # ∇L_H at the current ψ: finite and non-zero, on the previous task's embedding row only
    weights = lookahead.regularized_task_weights(jax.random.key(9), 1, hn.num_tasks)
    g = jax.device_get(jax.jit(jax.grad(hn.regularizer))(state["psi"], state["targets"], weights))
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(g))
    assert np.any(g["output"]["kernel"] != 0) and np.any(g["embeddings"][0] != 0)
    assert np.all(g["embeddings"][1] == 0)


@pytest.mark.parametrize("k, feature_shape", [(4, (4, 4, 160)), (3, (8, 8, 80)), (0, (32, 32, 3))])
def test_memory_reports_the_latent_replay_buffer_of_the_same_depth(k, feature_shape):
    model = PartialHypernetwork.create(models.ResNetConfig(num_classes=10), k, num_tasks=20)
    hn = HN(model, input_shape=(32, 32, 3))
    state = {"phi": jax.eval_shape(model.init, jax.random.key(0))[0]}
    mem = hn.memory(state)
    assert mem["replay_feature_shape"] == list(feature_shape) and mem["replay_buffer_samples"] == 200
    by_hand = {4: 200 * 4 * 4 * 160 * 4 / 2**20,  # 1.953125 MB: 200 pre-pool maps of 160x4x4, 32 bit
               3: 200 * 8 * 8 * 80 * 4 / 2**20,   # 3.90625 MB
               0: 200 * 32 * 32 * 3 * 4 / 2**20}  # 2.34 MB: LR-0 stores images (the paper's Table 6)
    assert mem["replay_buffer_mb"] == pytest.approx(by_hand[k], rel=1e-12)
    assert mem["hypernetwork_params"] == model.hnet.num_params()
    assert "replay_buffer_mb" not in HN(model).memory(state)  # no input shape: no comparison


def test_hn_logits_of_every_task_equal_its_one_task_evaluation():
    model = PartialHypernetwork.create(models.ResNetConfig(num_classes=3, nf=4, blocks_per_stage=(1, 1, 1, 1)), 3,
                                       num_tasks=3)
    hn = HN(model)
    assert supports_task_inference(hn) and not supports_task_inference(object())
    state = quick_state(hn, jax.random.key(0))
    # distinct per-task tables, so a mixed-up task index could not pass
    psi = state["psi"]
    state["psi"] = {**psi, "heads": jax.tree_util.tree_map(
        lambda x: x + normal(1, x.shape, scale=0.5), psi["heads"])}
    x = normal(2, (5, 16, 16, 3))
    mask = jnp.array([True] * 4 + [False])
    ctx = hn.eval_context(state)
    all_tasks = jax.jit(hn.eval_logits_all_tasks)(state, ctx, x, mask)
    assert all_tasks.shape == (3, 5, 3)
    one_task = jax.jit(hn.eval_logits)
    for t in range(3):
        np.testing.assert_allclose(all_tasks[t], one_task(state, ctx, x, mask, t), rtol=2e-5, atol=2e-5)
    assert not np.allclose(all_tasks[0], all_tasks[1])
