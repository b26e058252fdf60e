"""Every initial value of ours draws from the distribution of the reference code's at the paper's
settings: the first two moments of each tensor, over several initialisations, against the formula
of the reference's initialiser.

Partial hypernetworks (HamedHemati/Partial-Hypernetworks-for-CL, `hyper_resnet18_sp_v3_SH.py`, all
PyTorch defaults): task embeddings and the conv heads' lookup tables `nn.Embedding`, N(0, 1); every
`nn.Linear` (trunk, heads) U(±1/√fan_in) for weight and bias, variance 1/(3 fan_in); `LinHead`
tables constant (1 for norm weights, 0 for biases); the frozen part's `nn.Conv2d` U(±1/√(C_in·k²)),
its norms 1 and 0. So a generated conv weight W[i] = A_hᵀh + A_cᵀc_i + b, given the trunk's
features h and the lookup row c_i, has mean 0 and E[W²] = (‖h‖² + ‖c_i‖² + 1)/(3(H + d)); a
generated linear weight E[W²] = (‖h‖² + 1)/(3H).

von Oswald et al. (chrhenning/hypercl, `mnist/train_utils.py` `generate_classifier`): every matrix of
the hypernetwork Xavier uniform, variance 2/(fan_in + fan_out), every vector 0; embeddings N(0, 1).
A generated chunk value v = W_outᵀh + b has E[v²] = 2‖h‖²/(H + chunk_dim).
"""
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from phn_jax import config as config_lib
from phn_jax import models, runtime
from phn_jax.partial_hnet import PartialHypernetwork

ROOT = Path(__file__).parent.parent

DRAWS = 8
TOL = 6.0  # standard errors


def _draws(init, seed: int = 0):
    """DRAWS initialisations, vmapped, compiled as the engine compiles its initialisers."""
    keys = jax.random.split(jax.random.key(seed), DRAWS)
    return jax.jit(jax.vmap(init), compiler_options=runtime.INIT_COMPILER_OPTIONS)(keys)


def _close(got: float, want: float, n: int, what: str, mean: bool = False):
    """|got − want| within TOL standard errors of a mean (mean=True: of values with second moment
    `want`) or of a second moment (sd of x² ≤ √2·E[x²] for the symmetric distributions here) over n
    independent units."""
    se = np.sqrt(want / n) if mean else np.sqrt(2.0) * want / np.sqrt(n)
    assert abs(got - (0.0 if mean else want)) <= TOL * se, (what, got, want, se)


@pytest.fixture(scope="module")
def hn0():
    """(model, ψ of DRAWS initialisations [DRAWS, ...]) of HN-0 at the paper's settings: the slim
    ResNet-18 (nf 20), every layer generated, 20 tasks, 10 outputs a head."""
    model = PartialHypernetwork.create(models.ResNetConfig(num_classes=10), 0, num_tasks=20)
    phi, psi = _draws(model.init)
    return model, psi


def test_partial_hypernetwork_parameters_draw_as_the_reference(hn0):
    model, psi = hn0
    hnet = model.hnet
    e = np.asarray(psi["embeddings"])
    _close(e.mean(), 1.0, e.size, "embeddings", mean=True)
    _close((e ** 2).mean(), 1.0, e.size, "embeddings")
    fan_ins = (hnet.embedding_dim,) + hnet.hidden_dims[:-1]
    for layer, fan_in in zip(psi["mlp"], fan_ins):
        for name in ("kernel", "bias"):
            w = np.asarray(layer[name])
            _close((w ** 2).mean(), 1 / (3 * fan_in), w.size, f"trunk {name}")
    for head in hnet.heads:
        p = {k: np.asarray(v) for k, v in psi["heads"][head.path].items()}
        if head.kind == "table":
            np.testing.assert_array_equal(p["table"], head.init)
            assert head.init == (1.0 if head.path.endswith("scale") else 0.0)
            continue
        fan_in = p["kernel"].shape[1]  # H + d (conv) or H (linear)
        for name in ("kernel", "bias"):
            _close((p[name] ** 2).mean(), 1 / (3 * fan_in), p[name].size, f"{head.path} {name}")
        if head.kind == "conv":
            _close((p["lookup"] ** 2).mean(), 1.0, p["lookup"].size, f"{head.path} lookup")


def test_partial_hypernetwork_generated_weights_draw_as_the_reference(hn0):
    """Every generated tensor of HN-0 (task 3): mean 0 and E[ω²] from the reference's formula, given
    each draw's trunk features h and lookup rows c."""
    model, psi = hn0
    hnet = model.hnet
    omega = jax.jit(jax.vmap(lambda p: hnet.apply(p, 3)))(psi)
    h = np.asarray(jax.jit(jax.vmap(lambda p: hnet.features(p, 3)))(psi))  # [DRAWS, H]
    hh = (h ** 2).sum(-1)
    flat = traverse_util.flatten_dict(jax.tree_util.tree_map(np.asarray, omega), sep="/")
    checked = 0
    for head in hnet.heads:
        w = flat[head.path]
        if head.kind == "table":
            continue
        per_column = head.size // head.shape[0] if head.kind == "conv" else head.size  # independent columns of A
        if head.kind == "conv":
            cc = (np.asarray(psi["heads"][head.path]["lookup"]) ** 2).sum(-1).mean(-1)  # mean_i ‖c_i‖², [DRAWS]
            want = (hh + cc + 1) / (3 * (hnet.hidden_dims[-1] + hnet.head_embedding_dim))
        else:
            want = (hh + 1) / (3 * hnet.hidden_dims[-1])
        got = (w.reshape(DRAWS, -1) ** 2).mean(-1)
        _close(float(np.mean(got / want)), 1.0, per_column * DRAWS, f"{head.path} E[ω²]")
        _close(float(np.mean(w.reshape(DRAWS, -1).mean(-1) / np.sqrt(want))), 1.0, per_column * DRAWS,
               f"{head.path} mean", mean=True)
        checked += 1
    assert checked == sum(h.kind != "table" for h in hnet.heads) == 21  # 20 convolutions and the classifier


def test_frozen_part_draws_as_the_reference():
    """φ at k = 4 (stem and four stages): kernels U(±1/√(C_in·k²)), norms γ = 1, β = 0."""
    model = PartialHypernetwork.create(models.ResNetConfig(num_classes=10), 4, num_tasks=20)
    phi, _ = _draws(model.init, seed=1)
    for path, w in traverse_util.flatten_dict(jax.tree_util.tree_map(np.asarray, phi), sep="/").items():
        if w.ndim == 5:  # [DRAWS, C_out, kh, kw, C_in]
            _close((w ** 2).mean(), 1 / (3 * np.prod(w.shape[2:])), w.size, path)
        else:
            np.testing.assert_array_equal(w, 1.0 if path.endswith("scale") else 0.0)


@pytest.mark.parametrize("name", ["split_mnist", "permuted_mnist"])
def test_von_oswald_hypernetwork_draws_as_hypercl(name):
    """The MNIST configs' chunked hypernetwork: matrices Xavier uniform (variance 2/(fan_in + fan_out)),
    vectors 0, task and chunk embeddings N(0, 1); a generated value of chunk i, v = W_outᵀh_i, has
    E[v²] = 2‖h_i‖²/(H + chunk_dim) given the last hidden layer h_i."""
    c = config_lib.load_config(ROOT / "experiments" / "configs" / f"{name}.py")
    tasks = c.data.num_experiences
    net = models.MLPConfig(in_features=c.data.image_size ** 2, hidden_dims=tuple(c.model.hidden_dims),
                           num_classes=c.model.num_classes, num_heads=tasks)
    hnet = PartialHypernetwork.create(net, 0, num_tasks=tasks, **c.hnet.to_dict()).hnet
    assert hnet.dense_init == "xavier"
    psi = _draws(hnet.init, seed=2)
    psi = jax.tree_util.tree_map(np.asarray, psi)
    for name_, e in (("embeddings", psi["embeddings"]), ("chunk embeddings", psi["chunk_embeddings"])):
        _close(e.mean(), 1.0, e.size, name_, mean=True)
        _close((e ** 2).mean(), 1.0, e.size, name_)
    for layer in psi["mlp"] + [psi["output"]]:
        fan_in, fan_out = layer["kernel"].shape[1:]
        _close((layer["kernel"] ** 2).mean(), 2 / (fan_in + fan_out), layer["kernel"].size, f"{name} kernel")
        np.testing.assert_array_equal(layer["bias"], 0.0)
    t = tasks - 1
    h = np.asarray(jax.jit(jax.vmap(lambda p: hnet.hidden(p, jnp.array([t]))[0]))(psi))  # [DRAWS, n_c, H]
    kept = np.minimum(hnet.chunk_dim, hnet.num_generated - hnet.chunk_dim * np.arange(hnet.num_chunks))  # per chunk
    want = 2 * ((h ** 2).sum(-1) * kept).sum(-1) / kept.sum() / (h.shape[-1] + hnet.chunk_dim)  # [DRAWS]
    omega = jax.jit(jax.vmap(lambda p: hnet.apply(p, t)))(psi)
    v = np.concatenate([np.asarray(w).reshape(DRAWS, -1) for w in jax.tree_util.tree_leaves(omega)], axis=1)
    assert v.shape[1] == hnet.num_generated
    _close(float(np.mean((v ** 2).mean(-1) / want)), 1.0, hnet.chunk_dim * DRAWS, f"{name} E[v²]")
    _close(float(np.mean(v.mean(-1) / np.sqrt(want))), 1.0, hnet.chunk_dim * DRAWS, f"{name} mean", mean=True)
