"""von Oswald et al.'s replay systems (phn_jax.vae, phn_jax.strategies.replay): the VAE's loss and
gradient against NumPy in float64, the regulariser keeping an old task's generated decoder, the
replayed batch, the task-inference network on tasks separable by construction, and HNET+TIR and
HNET+R through the engine (the scenarios' matrices, resume)."""
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from runs import killed_after_checkpoint, tiny_config

from phn_jax import models, train
from phn_jax.strategies import create_strategy
from phn_jax.strategies.hn import HN
from phn_jax.strategies.replay import TIR, GenerativeMemory, Replay, distillation_loss
from phn_jax.partial_hnet import PartialHypernetwork
from phn_jax.vae import VAE

SMALL_HNET = dict(embedding_dim=4, chunk_embedding_dim=4, hidden_dims=(6,), activation="elu", chunk_dim=64,
                  vectors_as_tables=False, dense_init="xavier", layout="pytorch")


def _np_mlp(params, h, cfg):
    *hidden, (last, _, _) = cfg.layers()
    for name, _, _ in hidden:
        h = np.maximum(h @ params[name]["kernel"] + params[name]["bias"], 0)
    return h @ params[last]["kernel"] + params[last]["bias"]


def _np_vae_loss(vae, enc, dec, x, task_id, eps, mask):
    """The VAE's loss written out in NumPy: BCE of sigmoid(logits) averaged over pixels, KL/D, masked mean."""
    out = _np_mlp(enc, x, vae.encoder)
    mu, logvar = out[:, :vae.latent_dim], out[:, vae.latent_dim:]
    z = mu + np.exp(0.5 * logvar) * eps
    c = np.zeros((len(x), vae.condition_dim))
    c[:, task_id] = 1
    p = 1 / (1 + np.exp(-_np_mlp(dec, np.concatenate([z, c], 1), vae.decoder)))
    bce = -(x * np.log(p) + (1 - x) * np.log(1 - p)).mean(1)
    kl = -0.5 * (1 + logvar - mu ** 2 - np.exp(logvar)).sum(1) / vae.in_features
    m = mask.astype(float)
    return (bce * m).sum() / m.sum() + (kl * m).sum() / m.sum()


def test_vae_loss_and_gradient_equal_numpy_in_float64():
    vae = VAE(in_features=6, encoder_dims=(5,), decoder_dims=(4,), latent_dim=3, condition_dim=4)
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        as64 = lambda tree: jax.tree_util.tree_map(lambda a: jnp.asarray(rng.normal(0, 0.7, a.shape)), tree)
        enc = as64(jax.eval_shape(lambda: models.init_mlp(jax.random.key(0), vae.encoder)))
        dec = as64(jax.eval_shape(lambda: models.init_mlp(jax.random.key(0), vae.decoder)))
        x = jnp.asarray(rng.uniform(0.05, 0.95, (5, 6)))
        mask = jnp.array([True, True, True, True, False])
        key = jax.random.key(3)
        loss, (rec, kl) = vae.loss(enc, dec, x, 2, key, mask)
        eps = np.asarray(jax.random.normal(key, (5, 3), jnp.float64))  # the noise the loss draws: an input here
        to_np = lambda tree: jax.tree_util.tree_map(np.asarray, tree)
        want = _np_vae_loss(vae, to_np(enc), to_np(dec), np.asarray(x), 2, eps, np.asarray(mask))
        np.testing.assert_allclose(float(loss), want, rtol=1e-12)
        np.testing.assert_allclose(float(rec + kl), want, rtol=1e-12)
        # the gradient along random directions against central differences of the NumPy loss
        grads = jax.grad(lambda e, d: vae.loss(e, d, x, 2, key, mask)[0], argnums=(0, 1))(enc, dec)
        for seed in range(3):
            v = jax.tree_util.tree_map(lambda a: np.random.default_rng(seed).normal(size=a.shape), to_np((enc, dec)))
            h = 1e-6
            shifted = lambda s: jax.tree_util.tree_map(lambda a, b: a + s * b, to_np((enc, dec)), v)
            fd = (_np_vae_loss(vae, *shifted(h), np.asarray(x), 2, eps, np.asarray(mask))
                  - _np_vae_loss(vae, *shifted(-h), np.asarray(x), 2, eps, np.asarray(mask))) / (2 * h)
            dot = sum(float(np.vdot(g, d)) for g, d in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(v)))
            np.testing.assert_allclose(dot, fd, rtol=1e-7)
        # the padded sample counts for nothing
        x2 = x.at[4].set(0.5)
        assert float(vae.loss(enc, dec, x2, 2, key, mask)[0]) == float(loss)


def _memory(beta, lr=1e-2, num_tasks=3):
    vae = VAE(in_features=16, encoder_dims=(12,), decoder_dims=(10,), latent_dim=2, condition_dim=num_tasks)
    return GenerativeMemory.create(vae, num_tasks, lr=lr, beta=beta, **SMALL_HNET)


def _patterns(task, n, seed=0):
    """n 4x4 images of task `task`: a bright row `task` (and dim noise elsewhere)."""
    rng = np.random.default_rng(seed + 10 * task)
    x = rng.uniform(0.0, 0.2, (n, 4, 4, 1))
    x[:, task % 4, :, 0] = rng.uniform(0.8, 1.0, (n, 4))
    return jnp.asarray(x, jnp.float32)


def _train_memory(memory, state, task, steps, seed=0):
    state = memory.begin_experience(state, task)
    step = jax.jit(memory.train_step)
    x, mask = _patterns(task, 32, seed), jnp.ones(32, bool)
    for i in range(steps):
        state, m = step(state, x, mask, jax.random.key(100 * task + i), task)
    return state, m


def _decoder_change_and_bound(memory, before, after, z, task):
    """max_n,d |x̂_after − x̂_before| of task `task`'s decoder on latents z, and its bound from the
    generated weights' change alone: x̂ = σ(W2 relu(W1 u + b1) + b2), σ' ≤ ¼, relu 1-Lipschitz:
    |Δx̂| ≤ ¼ (‖ΔW2‖₂ ‖h'‖ + ‖W2‖₂ ‖Δh‖ + ‖Δb2‖∞) with ‖Δh‖ ≤ ‖ΔW1‖₂ ‖u‖ + ‖Δb1‖, h' = h + Δh
    (operator 2-norms over the spectral norm's upper bound, the Frobenius norm)."""
    w0, w1 = memory.decoder(before, task), memory.decoder(after, task)
    x0, x1 = (jax.nn.sigmoid(memory.vae.decode(w, z, task)) for w in (w0, w1))
    c = jax.nn.one_hot(jnp.full(z.shape[:1], task), memory.vae.condition_dim)
    u = jnp.concatenate([z, c], 1)
    fro = lambda a: float(jnp.sqrt(jnp.sum(jnp.square(a))))
    (l1, _, _), (l2, _, _) = memory.vae.decoder.layers()
    d = lambda name, leaf: w1[name][leaf] - w0[name][leaf]
    h1 = jax.nn.relu(u @ w1[l1]["kernel"] + w1[l1]["bias"])
    dh = fro(d(l1, "kernel")) * jnp.linalg.norm(u, axis=1) + fro(d(l1, "bias"))
    bound = 0.25 * (fro(d(l2, "kernel")) * jnp.linalg.norm(h1, axis=1) + fro(w0[l2]["kernel"]) * dh
                    + float(jnp.max(jnp.abs(d(l2, "bias")))))
    return float(jnp.max(jnp.abs(x1 - x0))), float(jnp.max(bound))


def test_the_regulariser_keeps_an_old_tasks_generated_samples():
    """Task 0's generated decoder after training task 1: with β its samples stay within the bound the
    change of its generated weights allows (which the regulariser keeps small), without β they move."""
    z = jax.random.normal(jax.random.key(7), (64, 2))
    changes = {}
    for beta in (0.0, 1.0):
        memory = _memory(beta)
        state, _ = _train_memory(memory, memory.init(jax.random.key(0)), 0, 150)
        before = state["params"]["psi"]
        state, m = _train_memory(memory, state, 1, 150)
        after = state["params"]["psi"]
        changes[beta] = _decoder_change_and_bound(memory, before, after, z, 0)
        drift = float(memory.hnet.sq_distances(after, memory.hnet.snapshot(before))[0])
        if beta:
            change, bound = changes[beta]
            assert change <= bound + 1e-6 and bound < 0.1, (changes, drift)  # seen: 0.0013 ≤ 0.083
            assert drift < 1e-2  # ‖H_ψ(0) − T_0‖² after task 1 (seen 0.00097)
    assert changes[0.0][0] > 5 * changes[1.0][1], changes  # without β: 5x what the bound allows with β (seen 0.81)
    # and task 1 was learned either way: its samples show its bright row (row 1)
    samples = jax.nn.sigmoid(memory.vae.decode(memory.decoder(after, 1), z, 1)).reshape(-1, 4, 4)
    assert float(samples[:, 1].mean()) > float(samples[:, 0].mean()) + 0.5


def test_replayed_batch():
    memory = _memory(beta=0.5, num_tasks=4)
    state = memory.init(jax.random.key(1))
    state = memory.begin_experience(state, 3)  # targets = the decoders as they are now
    x, tasks = jax.jit(memory.replay, static_argnums=3)(state, jax.random.key(2), 3, 10)
    assert x.shape == (10, 16) and np.all((np.asarray(x) > 0) & (np.asarray(x) < 1))
    # sample i of task i mod t: the previous tasks only, balanced to within one sample
    np.testing.assert_array_equal(tasks, [0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    # each sample is its own task's decoder (generated from ψ, not the snapshot) on the same latent
    z = jax.random.normal(jax.random.key(2), (10, 2))
    for i in range(10):
        own = jax.nn.sigmoid(memory.vae.decode(memory.decoder(state["params"]["psi"], int(tasks[i])), z[i:i + 1],
                                               int(tasks[i])))
        np.testing.assert_allclose(x[i], own[0], rtol=1e-5, atol=1e-6)
    # in experience 2 only task 0 is replayed
    _, tasks = memory.replay(state, jax.random.key(2), 1, 10)
    assert np.all(np.asarray(tasks) == 0)


def test_distillation_loss_equals_its_formula_over_the_valid_outputs():
    rng = np.random.default_rng(0)
    z, t = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    tau, k = 2.0, 4
    p = np.exp(t[:, :k] / tau) / np.exp(t[:, :k] / tau).sum(1, keepdims=True)
    log_q = z[:, :k] / tau - np.log(np.exp(z[:, :k] / tau).sum(1, keepdims=True))
    want = -(p * log_q).sum(1).mean() * tau ** 2
    np.testing.assert_allclose(distillation_loss(jnp.asarray(z), jnp.asarray(t), k, tau), want, rtol=1e-5)


def _tir(replay_weight, num_tasks=3):
    """HNET+TIR at toy sizes on 4x4 images."""
    mlp = models.MLPConfig(16, (12,), 2, num_tasks)
    model = PartialHypernetwork.create(mlp, 0, num_tasks, kind="chunked", **SMALL_HNET)
    hn = HN(model, lr=1e-2, beta=0.05, lookahead_step="optimizer", train_old_embeddings=False, copy_embedding=False)
    return TIR(hn, _memory(beta=1.0, num_tasks=num_tasks), models.MLPConfig(16, (12,), num_tasks, 1), lr=1e-2,
               replay_weight=replay_weight)


def test_task_inference_network_tells_separable_tasks_apart_with_replay():
    """Tasks separable by construction (task t: a bright row t): after three tasks the inference
    network infers each task's fresh samples with replay (≥ 95 %); without replay (λ = 0) it has seen
    only the latest task's label since the first and infers every sample as it (1/3)."""
    accuracy = {}
    for weight in (0.5, 0.0):
        tir = _tir(weight)
        state = tir.init(jax.random.key(0))
        step = jax.jit(tir.train_step, static_argnums=4)
        for t in range(3):
            state = tir.begin_experience(state, t)
            x = _patterns(t, 32)
            batch = {"x": x, "y": jnp.asarray(np.arange(32) % 2, jnp.int32), "mask": jnp.ones(32, bool),
                     "task": jnp.full(32, t, jnp.int32)}
            for i in range(150):
                state, m = step(state, batch, jax.random.key(1000 * t + i), t, t == 0)
        x_test = jnp.concatenate([_patterns(t, 50, seed=5) for t in range(3)])
        t_hat = tir.infer_task(state, x_test, 3)
        accuracy[weight] = float(jnp.mean(t_hat == jnp.repeat(jnp.arange(3), 50)))
    assert accuracy[0.5] >= 0.95 and accuracy[0.0] <= 0.4, accuracy


def _replay_config(name, scenario, **overrides):
    """tiny_config's stream (3 experiences, 16x16x3, pixels in [0, 1]) with the MLP, a small chunked
    hypernetwork and a small generative memory, 20 epochs."""
    c = tiny_config(**{"model.arch": "mlp", "model.hidden_dims": (16,), "strategy.freeze_depth": 0, "data.normalize": False,
                       "strategy.name": name, "strategy.scenario": scenario, "strategy.lookahead_step": "optimizer",
                       "strategy.beta": 0.05, "train.epochs": 20, **overrides})
    c.hnet.update(kind="chunked", **{k: v for k, v in SMALL_HNET.items() if k != "chunk_dim"}, chunk_dim=1024)
    c.replay.update(encoder_dims=(16,), latent_dim=4, condition_dim=3, lr=3e-3)
    c.replay.decoder_dims.update(tir=(16,), replay=(16,))
    c.replay.hnet.update(chunk_dim=1024, embedding_dim=4, chunk_embedding_dim=4, hidden_dims=(6,))
    return c


@pytest.fixture(scope="module")
def tir_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tir")
    return workdir, train.train_and_evaluate(_replay_config("tir", 3), workdir)


def test_tir_run_reports_every_scenario(tir_run):
    workdir, summary = tir_run
    R, cl2, cl3, task = (np.array(summary[m], float) for m in ("accuracy_matrix", "domain_incremental_matrix",
                                                                "class_incremental_matrix", "task_inference_matrix"))
    seen = np.tril(np.ones((3, 3), bool))
    # one task learned: nothing to infer; CL3 right ⇔ task and class right: R + task − 1 ≤ CL3 ≤ min(R, task)
    assert task[0, 0] == 1.0 and cl3[0, 0] == R[0, 0] == cl2[0, 0]
    assert np.all(cl3[seen] <= np.minimum(R[seen], task[seen]) + 1e-9)
    assert np.all(cl3[seen] >= R[seen] + task[seen] - 1 - 1e-9)
    assert np.all(cl3[seen] <= cl2[seen] + 1e-9)
    assert set(summary["scenarios"]) == {"CL1", "CL2", "CL3"}
    assert summary["scenarios"]["CL3"]["accuracy"] == summary["class_incremental_accuracy"]
    # the prototypes are easy: each task learned, and its task inferred well above chance (1/3) after the last
    assert summary["learning_accuracy"] > 0.9 and summary["task_inference_accuracy"] > 0.6, summary
    assert summary["memory"]["replay_params"] > 0 and summary["memory"]["task_inference_params"] > 0
    # the history has the other systems' losses: the VAE's, trained in every experience but the last
    # (no later task replays it), and the task-inference network's, from the second on
    import csv
    rows = list(csv.DictReader((workdir / "train_history.csv").open()))
    per_experience = lambda key: [np.mean([float(r[key]) for r in rows if r["experience"] == str(t)]) for t in range(3)]
    vae, inference = per_experience("vae_loss"), per_experience("inference_loss")
    assert vae[0] > 0 and vae[1] > 0 and vae[2] == 0 and inference[0] == 0 and inference[1] > 0


def test_tir_resumes_bit_identically(tir_run, tmp_path, monkeypatch):
    workdir, summary = tir_run
    config = _replay_config("tir", 3)
    killed_after_checkpoint(monkeypatch, 40, config, tmp_path)  # after experience 2
    resumed = train.train_and_evaluate(config, tmp_path, resume=True)
    for m in ("accuracy_matrix", "class_incremental_matrix", "task_inference_matrix", "domain_incremental_matrix"):
        assert resumed[m] == summary[m], m


@pytest.mark.parametrize("scenario", [2, 3])
def test_replay_run(scenario, tmp_path):
    summary = train.train_and_evaluate(_replay_config("replay", scenario), tmp_path)
    assert summary["learning_accuracy"] > 0.9, summary
    if scenario == 2:  # one head: the task neither given nor inferred, only CL2 (= R, the head is the same)
        assert set(summary["scenarios"]) == {"CL1", "CL2"} and "class_incremental_matrix" not in summary
        assert summary["domain_incremental_matrix"] == summary["accuracy_matrix"]
    else:
        assert set(summary["scenarios"]) == {"CL1", "CL2", "CL3"}
        # replay keeps the old heads' classes against the new: CL3 well above chance (1/6) after the last
        assert summary["class_incremental_accuracy"] > 0.5, summary


def test_replay_systems_need_the_mlp_and_their_scenario():
    from phn_jax.config import ConfigError, check_config
    c = _replay_config("replay", 1)
    with pytest.raises(ConfigError, match="SCENARIO=2 or SCENARIO=3"):
        check_config(c)
    c = _replay_config("tir", 3, **{"model.arch": "resnet"})
    with pytest.raises(ConfigError, match="needs model.arch='mlp'"):
        check_config(c)
    c = _replay_config("hn", 2, **{"model.arch": "resnet", "hnet.layout": "flax"})
    with pytest.raises(ConfigError, match="strategy.scenario=2 .* is the MLP's"):
        check_config(c)
    c = _replay_config("tir", 3, **{"data.normalize": True})
    with pytest.raises(ConfigError, match="needs data.normalize=False"):
        check_config(c)
    stream = types.SimpleNamespace(num_experiences=3, classes_per_experience=2, image_shape=(16, 16, 3))
    assert isinstance(create_strategy(_replay_config("replay", 3), stream), Replay)
    assert isinstance(create_strategy(_replay_config("tir", 2), stream), TIR)
