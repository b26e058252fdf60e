"""A user's own Flax modules as the generated target (model.arch='flax', `phn_jax.flax_modules`):
the logits against the module's own apply with the generated parameters put in by hand, ψ's
look-ahead gradient against finite differences in float64, the baselines' model, the refusals; and
(system) whole runs of the engine with a linen and an nnx module that resume bit-identically after
a kill, and the baselines through the engine."""
import chex
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import user_modules as um
from phn_jax import lookahead, train
from phn_jax.config import ConfigError, check_config
from phn_jax.flax_modules import FlaxNetwork, ModuleError, MultiHeadFlax
from phn_jax.partial_hnet import PartialHypernetwork
from phn_jax.strategies.base import masked_cross_entropy
from runs import final_state, killed_after_checkpoint, tiny_config

INPUT, C, T = (8, 8, 3), 2, 3


def _net(kind: str, heads: int = 1) -> FlaxNetwork:
    """linen: LinenHead generated on a LinenStem (frozen, k = 1); nnx: NnxCNN generated whole (k = 0)."""
    if kind == "linen":
        return FlaxNetwork.create("user_modules:LinenHead", {"features": 4, "num_outputs": C * heads}, INPUT, C, T,
                                  "user_modules:LinenStem", {"features": 3})
    return FlaxNetwork.create("user_modules:NnxCNN", {"in_channels": 3, "num_outputs": C * heads}, INPUT, C, T)


def _flax_layout(omega) -> dict:
    """The generated ω (conv kernels OHWI, row i = output channel i) in flax's HWIO, in NumPy."""
    return jax.tree_util.tree_map(lambda a: np.transpose(a, (1, 2, 3, 0)) if a.ndim == 4 else np.asarray(a), omega)


def _by_hand(kind: str, heads: int, phi, params, x) -> np.ndarray:
    """The user's module called as its own library calls it, with `params` put in by hand."""
    if kind == "linen":
        z = um.LinenStem(features=3).apply({"params": phi}, x)
        return np.asarray(um.LinenHead(features=4, num_outputs=C * heads).apply({"params": params}, z))
    module = um.NnxCNN(3, num_outputs=C * heads, rngs=nnx.Rngs(123))
    state = nnx.state(module, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(module, state)
    return np.asarray(module(x))


@pytest.mark.parametrize("kind,hnet,heads", [("linen", "heads", 1), ("linen", "chunked", T), ("nnx", "heads", T),
                                             ("nnx", "chunked", 1)])
def test_logits_equal_the_modules_own_apply_with_the_generated_parameters(kind, hnet, heads):
    net = _net(kind, heads)
    model = PartialHypernetwork.create(net, 1 if kind == "linen" else 0, T, kind=hnet, chunk_dim=64,
                                       chunk_embedding_dim=8)
    phi, psi = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (5, *INPUT))
    for t in range(T):
        logits, _ = jax.jit(model.logits, static_argnames=("train",))(phi, psi, x, t, train=False)
        y = _by_hand(kind, heads, phi, _flax_layout(model.hnet.apply(psi, t)), x)
        np.testing.assert_allclose(np.asarray(logits), y if heads == 1 else y[:, t * C:(t + 1) * C], atol=2e-6)
    assert net.num_heads == heads
    # the conv kernels are generated output channel by output channel (OHWI), handed to flax as HWIO
    conv = "Conv_0" if kind == "linen" else "conv"
    assert model.hnet.apply(psi, 0)[conv]["kernel"].shape[0] == 4


@pytest.mark.parametrize("kind,hnet", [("linen", "heads"), ("nnx", "chunked")])
def test_psi_gradient_equals_finite_differences_in_float64(kind, hnet):
    """The second-order look-ahead gradient through the user's module (HN's g = ∇ψ[L_CE(ψ) + β L_H(ψ − α∇L_CE)])
    against central differences of that objective along three random directions."""
    alpha, beta, eps = 0.05, 0.5, 1e-6
    with jax.enable_x64(True):
        net = _net(kind)
        model = PartialHypernetwork.create(net, 1 if kind == "linen" else 0, T, kind=hnet, chunk_dim=64,
                                           chunk_embedding_dim=8)
        phi, psi = model.init(jax.random.key(0))
        psi = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), psi)
        phi = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), phi)
        targets = model.hnet.snapshot(jax.tree_util.tree_map(lambda a: a + 0.1, psi))  # ψ* ≠ ψ: L_H > 0
        x = jax.random.normal(jax.random.key(1), (6, *INPUT), jnp.float64)
        y, mask = jnp.array([0, 1, 1, 0, 1, 0]), jnp.ones(6, bool)
        weights = jnp.array([1.0, 0.0, 0.0])  # task 0 regularised, task 1 learned

        def ce(p):
            return masked_cross_entropy(model.logits(phi, p, x, 1, train=True, freeze=True)[0], y, mask)

        def reg(p):
            return lookahead.output_regularizer(model.hnet.sq_distances(p, targets), weights)

        def objective(p):
            g1 = jax.grad(ce)(p)
            return ce(p) + beta * reg(jax.tree_util.tree_map(lambda a, g: a - alpha * g, p, g1))

        res = jax.jit(lambda p: lookahead.lookahead_gradient(lambda q: (ce(q), None), reg, p, beta=beta,
                                                             order="second", virtual_step=lookahead.sgd_step(alpha)))(psi)
        assert float(res.reg) > 0
        flat, unflatten = jax.flatten_util.ravel_pytree(psi)
        g = jax.flatten_util.ravel_pytree(res.grad)[0]
        assert g.dtype == jnp.float64
        f = jax.jit(lambda v: objective(unflatten(v)))
        rng = np.random.default_rng(0)
        for _ in range(3):
            d = rng.standard_normal(flat.shape)
            d /= np.linalg.norm(d)
            fd = (f(flat + eps * d) - f(flat - eps * d)) / (2 * eps)
            np.testing.assert_allclose(float(g @ d), float(fd), rtol=1e-6, atol=1e-9)


def test_the_baselines_model_is_the_module_with_a_head_per_task():
    net = _net("linen", T)
    model = MultiHeadFlax(net)
    params, stats = model.init(jax.random.key(0))
    assert stats is None and set(params) == {"frozen", "generated"}
    x = jax.random.normal(jax.random.key(1), (4, *INPUT))
    task = jnp.array([0, 2, 1, 2])
    y = _by_hand("linen", T, params["frozen"], params["generated"], x)
    expected = np.stack([y[n, t * C:(t + 1) * C] for n, t in enumerate(task)])
    np.testing.assert_allclose(model.logits(params, x, task, train=True)[0], expected, atol=2e-6)
    # the frozen trunk (LR-1): z = g(x), the head h on z, and no gradient to g
    z, _ = model.trunk(params, x, 1, train=False, frozen=True)
    np.testing.assert_allclose(model.head(params, z, task, 1, train=True)[0], expected, atol=2e-6)
    g = jax.grad(lambda p: model.logits(p, x, task, train=True, freeze_depth=1)[0].sum())(params)
    assert all(float(jnp.abs(a).max()) == 0 for a in jax.tree_util.tree_leaves(g["frozen"]))
    np.testing.assert_allclose(model.logits_all_tasks(params, x), y.reshape(4, T, C).transpose(1, 0, 2), atol=2e-6)
    assert model.feature_shape(1, INPUT) == (4, 4, 3) and model.feature_shape(0, INPUT) == INPUT


@pytest.mark.parametrize("module,kwargs,message", [
    ("user_modules:LinenBatchNorm", {}, "'batch_stats'"),
    ("user_modules:NnxDropout", {}, "Rng"),
    ("user_modules:not_a_module", {}, "not a flax.linen.Module or flax.nnx.Module"),
    ("user_modules:Missing", {}, "has no 'Missing'"),
    ("no_such_package.models:CNN", {}, "cannot import 'no_such_package.models'"),
    ("user_modules:LinenHead", {"num_outputs": 5}, r"C = 2 .* C·T = 6"),
    ("user_modules:LinenHead", {"width": 5}, r"model.module_kwargs=\{'width': 5\} cannot be built .* TypeError"),
    ("user_modules:NnxCNN", {"in_channels": 1}, r"cannot be built or called on one sample of shape \(8, 8, 3\)"),
])
def test_a_module_the_engine_cannot_run_is_refused_with_what_to_change(module, kwargs, message):
    with pytest.raises(ModuleError, match=message):
        FlaxNetwork.create(module, kwargs, INPUT, C, T)


def _config(kind: str, **overrides):
    """tiny_config's stream, 2 experiences × 8 epochs, with the user's module of `kind`."""
    module = (dict(module="user_modules:LinenHead", frozen_module="user_modules:LinenStem") if kind == "linen"
              else dict(module="user_modules:NnxCNN"))
    c = tiny_config(**{"data.num_experiences": 2, "train.epochs": 8, "strategy.freeze_depth": int(kind == "linen"),
                       **overrides})
    c.model.update(arch="flax", **module)
    c.model.module_kwargs.update(num_outputs=2, **({"in_channels": 3} if kind == "nnx" else {}))
    return c


def test_config_errors_of_a_users_module():
    with pytest.raises(ConfigError, match="needs model.module"):
        check_config(_without_module())
    with pytest.raises(ConfigError, match="freeze_depth=0 must be 1"):
        check_config(_config("linen", **{"strategy.freeze_depth": 0}))
    with pytest.raises(ConfigError, match="freeze_depth=1 must be 0"):
        check_config(_config("nnx", **{"strategy.freeze_depth": 1}))
    with pytest.raises(ConfigError, match="leave model.norm at 'reference'"):
        check_config(_config("nnx", **{"model.norm": "batchnorm"}))
    check_config(_config("linen"))
    check_config(_config("nnx", **{"strategy.name": "lr", "strategy.freeze_depth": 0}))


def _without_module():
    c = _config("nnx")
    c.model.module = ""
    return c


@pytest.mark.system
@pytest.mark.parametrize("kind", ["linen", "nnx"])
def test_a_users_module_through_the_engine_resumes_bit_identically_after_a_kill(kind, tmp_path, monkeypatch):
    whole = train.train_and_evaluate(_config(kind), tmp_path / "whole")
    R = np.array(whole["accuracy_matrix"], float)
    assert R[0, 0] > 0.7  # learned through the generated module (chance: 0.5)
    killed_after_checkpoint(monkeypatch, 8, _config(kind), tmp_path / "killed")  # after experience 1
    resumed = train.train_and_evaluate(_config(kind), tmp_path / "killed", resume=True)
    np.testing.assert_array_equal(np.array(resumed["accuracy_matrix"], float), R)
    chex.assert_trees_all_equal(final_state(tmp_path / "killed"), final_state(tmp_path / "whole"))
    state = final_state(tmp_path / "whole")
    if kind == "linen":  # g (φ) trained on experience 1 only: Adam's φ moments as they were then
        assert set(state["phi"]) == {"Conv_0"}


@pytest.mark.system
@pytest.mark.parametrize("name", ["naive", "ewc", "joint", "lr"])
def test_the_baselines_run_a_users_module(name, tmp_path):
    c = _config("linen", **{"strategy.name": name, "strategy.buffer_size": 16})
    c.model.module_kwargs.num_outputs = 4  # a head per task (2 experiences × 2 classes)
    summary = train.train_and_evaluate(c, tmp_path)
    R = np.array(summary["accuracy_matrix"], float)
    assert R[0, 0] > 0.7 and R[1, 1] > 0.6  # (chance: 0.5)
    state = final_state(tmp_path)
    assert set(state["params"]) == {"frozen", "generated"}


def _psi(workdir, seed=None) -> np.ndarray:
    psi = final_state(workdir)["psi"]
    if seed is not None:
        psi = jax.tree_util.tree_map(lambda a: a[seed], psi)
    return np.asarray(jax.flatten_util.ravel_pytree(psi)[0])


@pytest.mark.system
def test_a_users_module_in_a_multi_seed_program_equals_each_seed_alone(tmp_path):
    """Seeds 0, 1 of the linen network as one program against each seed alone: the same run. (Four
    devices against one: tests/test_strategies_stream.py's hn_flax case, a step's losses and gradients,
    as docs/design.md §6 says to compare device counts.)"""
    together = train.train_and_evaluate(_config("linen", **{"seeds": (0, 1)}), tmp_path / "s")
    for seed, summary in zip((0, 1), together):
        alone = train.train_and_evaluate(_config("linen", **{"seed": seed}), tmp_path / f"alone{seed}")
        assert summary["accuracy_matrix"] == alone["accuracy_matrix"]
        np.testing.assert_allclose(_psi(tmp_path / "s", seed), _psi(tmp_path / f"alone{seed}"), rtol=1e-5, atol=1e-6)
