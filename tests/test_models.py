"""The slim ResNet-18, its split at freeze depth k, and the two normalisation modes."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal

from arrays import normal, perturbed
from phn_jax import kernels, models

CFG = models.ResNetConfig(num_classes=10)
PARAMS = models.init_resnet(jax.random.key(0), CFG)
X = normal(1, (4, 8, 8, 3))


def _perturb(tree, seed, scale=0.3):
    """Non-trivial norm affines, so that the split tests do not pass by γ=1, β=0 alone."""
    return perturbed(tree, seed, scale)


def test_main_model_parameter_count():
    assert models.count_params(PARAMS) == 1_094_750
    assert models.count_params({k: v for k, v in PARAMS.items() if k != "classifier"}) == 1_093_140


def test_widths_and_feature_shapes():
    assert CFG.widths == (20, 40, 80, 160)
    shapes = {k: models.frozen_apply(models.split_params(PARAMS, k)[0], jnp.zeros((2, 32, 32, 3)), k)[0].shape
              for k in range(5)}
    assert shapes == {0: (2, 32, 32, 3), 1: (2, 32, 32, 20), 2: (2, 16, 16, 40), 3: (2, 8, 8, 80),
                      4: (2, 4, 4, 160)}


def test_split_is_a_partition():
    for k in range(5):
        phi, omega = models.split_params(PARAMS, k)
        assert not set(phi) & set(omega)
        assert {**phi, **omega}.keys() == PARAMS.keys()
    assert models.split_params(PARAMS, 0)[0] == {}
    assert set(models.split_params(PARAMS, 4)[1]) == {"classifier"}


@pytest.mark.parametrize("k", range(5))
@pytest.mark.parametrize("train", [True, False])
def test_split_equals_uncut_with_batchnorm(k, train):
    params = _perturb(PARAMS, 2)
    stats = _perturb(models.init_batch_stats(PARAMS), 3, 0.1)
    stats = jax.tree_util.tree_map(jnp.abs, stats)  # variances stay positive
    y_full, s_full = models.apply(params, X, CFG, train=train, stats=stats)
    phi, omega = models.split_params(params, k)
    s_phi, s_omega = models.split_params(stats, k)
    z, s_phi_new = models.frozen_apply(phi, X, k, CFG, norm="batchnorm", train=train, stats=s_phi)
    y_split, s_omega_new = models.stateless_apply(omega, z, k, CFG, norm="batchnorm", train=train, stats=s_omega)
    chex.assert_trees_all_close(y_split, y_full, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close({**s_phi_new, **s_omega_new}, s_full, rtol=1e-6, atol=1e-6)
    if train:  # running statistics moved
        assert not np.allclose(s_full["stem"]["bn"]["mean"], stats["stem"]["bn"]["mean"])
    else:
        chex.assert_trees_all_close(s_full, stats)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_reference_norm_batch_dependence(k):
    """Stateless part: per-sample; frozen part: batch statistics, in eval too."""
    x = normal(4, (3, 16, 16, 3))
    x_other = x.copy()
    x_other[1:] = normal(5, (2, 16, 16, 3)) * 3 + 1
    phi, omega = models.split_params(_perturb(PARAMS, 6), k)
    z, _ = models.frozen_apply(phi, x, k, CFG, train=False)
    z_other, _ = models.frozen_apply(phi, x_other, k, CFG, train=False)
    assert not np.allclose(z[0], z_other[0], atol=1e-3)
    # the same features for sample 0, different companions in the batch
    z_mixed = z_other.at[0].set(z[0])
    y, _ = models.stateless_apply(omega, z, k, CFG)
    y_mixed, _ = models.stateless_apply(omega, z_mixed, k, CFG)
    y_alone, _ = models.stateless_apply(omega, z[:1], k, CFG)
    chex.assert_trees_all_close(y_mixed[0], y[0], atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(y_alone[0], y[0], atol=1e-5, rtol=1e-5)
    assert not np.allclose(y_mixed[1], y[1], atol=1e-3)


def test_normalize_modes_against_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 5, 2)).astype(np.float32) * 2 + 1
    p = {"scale": np.array([1.5, -0.5], np.float32), "bias": np.array([0.2, 0.1], np.float32)}
    eps = 1e-5
    ref_batch = (x - x.mean((0, 1, 2))) / np.sqrt(x.var((0, 1, 2)) + eps) * p["scale"] + p["bias"]
    ref_inst = (x - x.mean((1, 2), keepdims=True)) / np.sqrt(x.var((1, 2), keepdims=True) + eps) * p["scale"] + p["bias"]
    np.testing.assert_allclose(kernels.normalize(p, None, x, "batch", False)[0], ref_batch, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(kernels.normalize(p, None, x, "instance", True)[0], ref_inst, rtol=1e-4, atol=1e-5)
    stats = {"mean": np.array([0.5, -1.0], np.float32), "var": np.array([2.0, 0.5], np.float32)}
    y, s = kernels.normalize(p, stats, x, "running", True)
    np.testing.assert_allclose(y, ref_batch, rtol=1e-4, atol=1e-5)
    n = 3 * 4 * 5
    np.testing.assert_allclose(s["mean"], 0.9 * stats["mean"] + 0.1 * x.mean((0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(s["var"], 0.9 * stats["var"] + 0.1 * x.var((0, 1, 2)) * n / (n - 1), rtol=1e-5)
    y, s = kernels.normalize(p, stats, x, "running", False)
    np.testing.assert_allclose(y, (x - stats["mean"]) / np.sqrt(stats["var"] + eps) * p["scale"] + p["bias"],
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["batch", "running"])
def test_masked_batch_statistics_ignore_padding(mode):
    """A padded batch gives the real samples the outputs (and running stats) of the unpadded one."""
    p = {"scale": jnp.array([1.2, 0.7]), "bias": jnp.array([0.1, -0.3])}
    stats = {"mean": jnp.zeros(2), "var": jnp.ones(2)}
    x = normal(7, (5, 3, 3, 2))
    padded = jnp.concatenate([x, 100 * jnp.ones((3, 3, 3, 2))])
    mask = jnp.arange(8) < 5
    y, s = kernels.normalize(p, stats, x, mode, True)
    y_pad, s_pad = kernels.normalize(p, stats, padded, mode, True, mask)
    chex.assert_trees_all_close(y_pad[:5], y, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(s_pad, s, atol=1e-6, rtol=1e-5)


def _two_pass_normalize(p, stats, x, mode, mask):
    """The textbook formula, differentiated by JAX: μ, then σ² = mean((x − μ)²) over the valid samples."""
    axes = (1, 2) if mode == "instance" else (0, 1, 2)
    w = jnp.ones(x.shape[0]) if mask is None or mode == "instance" else mask.astype(x.dtype)
    w = jnp.broadcast_to(w[:, None, None, None], x.shape)
    n = w.sum(axes, keepdims=True)
    mean = (x * w).sum(axes, keepdims=True) / n
    var = (jnp.square(x - mean) * w).sum(axes, keepdims=True) / n
    y = (x - mean) / jnp.sqrt(var + kernels.BN_EPS) * p["scale"] + p["bias"]
    if mode != "running":
        return y, None
    m = n.reshape(-1)  # the count, per channel (all alike)
    return y, {"mean": 0.9 * stats["mean"] + 0.1 * mean.reshape(-1),
               "var": 0.9 * stats["var"] + 0.1 * var.reshape(-1) * m / (m - 1)}


@pytest.mark.parametrize("mode,masked", [("batch", False), ("batch", True), ("instance", False), ("running", True)])
def test_normalize_derivatives_against_autodiff_of_the_two_pass_formula(mode, masked):
    """`normalize`'s hand-written VJP (one-pass statistics) and JAX's derivative of that VJP (what the
    second-order look-ahead differentiates) equal autodiff of the two-pass formula (float64),
    running statistics included."""
    with jax.enable_x64(True):
        x = normal(20, (6, 3, 4, 5), np.float64) * 2 + 0.5
        p = {"scale": normal(21, (5,), np.float64), "bias": normal(22, (5,), np.float64)}
        stats = {"mean": normal(23, (5,), np.float64), "var": 1 + jnp.abs(normal(24, (5,), np.float64))}
        mask = (jnp.arange(6) % 3 != 1) if masked else None
        cot = normal(25, x.shape, np.float64)

        def loss(norm):
            def f(p, x):
                y, s = norm(p, x)
                running = 0.0 if mode != "running" else (s["mean"] ** 2 + s["var"] ** 3).sum()
                return (jnp.sin(y) * cot).sum() + running
            return f

        ours = loss(lambda p, x: kernels.normalize(p, stats, x, mode, True, mask))
        theirs = loss(lambda p, x: _two_pass_normalize(p, stats, x, mode, mask))
        chex.assert_trees_all_close(ours(p, x), theirs(p, x), rtol=1e-12)
        grad = lambda f: jax.grad(f, argnums=(0, 1))
        chex.assert_trees_all_close(grad(ours)(p, x), grad(theirs)(p, x), rtol=1e-10, atol=1e-12)
        # the derivative of the derivative, along an outer direction
        second = lambda f: grad(lambda p, x: (grad(f)(p, x)[1] * cot).sum() + (grad(f)(p, x)[0]["scale"] ** 2).sum())
        chex.assert_trees_all_close(second(ours)(p, x), second(theirs)(p, x), rtol=1e-9, atol=1e-10)


def _max_rel_err(a, b) -> float:
    """max over leaves of max|a − b| / max|b|."""
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y))) / np.max(np.abs(np.asarray(y))))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


@pytest.mark.parametrize("mode,masked,hw", [("instance", False, (2, 2)), ("instance", False, (4, 4)),
                                            ("batch", True, (2, 2)), ("running", False, (4, 4))])
def test_normalize_in_float32_against_float64_where_the_mean_dwarfs_the_spread(mode, masked, hw):
    """`normalize` in float32 (forward, first and second derivatives) within 1e-4 of the two-pass
    formula in float64 on the same inputs, at activations with |μ| ≈ 200 σ and per-sample statistics
    over 4 or 16 pixels (stage 4's). Unshifted one-pass statistics (E[x²] − μ²) miss by far more:
    σ² ≈ 0.25 is then computed from E[x²] ≈ 1e4, whose float32 rounding is ~5e-4."""
    x64 = np.asarray(normal(30, (6, *hw, 5), np.float64)) * 0.5 + 100.0
    p64 = {"scale": np.asarray(normal(31, (5,), np.float64)), "bias": np.asarray(normal(32, (5,), np.float64))}
    cot64 = np.asarray(normal(33, x64.shape, np.float64))
    stats64 = {"mean": np.full(5, 100.0), "var": np.full(5, 0.25)}
    mask = (np.arange(6) % 3 != 1) if masked else None

    def derivatives(norm, p, x, cot):
        def f(p, x):
            return (jnp.sin(norm(p, x)[0]) * cot).sum()
        grad = jax.grad(f, argnums=(0, 1))
        second = jax.grad(lambda p, x: (grad(p, x)[1] * cot).sum() + (grad(p, x)[0]["scale"] ** 2).sum(), argnums=(0, 1))
        return norm(p, x)[0], grad(p, x), second(p, x)

    ours = derivatives(lambda p, x: kernels.normalize(p, jax.tree_util.tree_map(jnp.float32, stats64), x, mode, True,
                                                     mask), *jax.tree_util.tree_map(np.float32, (p64, x64, cot64)))
    assert ours[0].dtype == jnp.float32
    with jax.enable_x64(True):
        exact = derivatives(lambda p, x: _two_pass_normalize(p, stats64, x, mode, mask), p64, x64, cot64)
        exact = jax.tree_util.tree_map(np.asarray, exact)
    for name, a, b in zip(("y", "gradient", "second derivative"), ours, exact):
        assert _max_rel_err(a, b) < 1e-4, (name, _max_rel_err(a, b))


def test_conv_ohwi_against_scipy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 6, 6, 2)).astype(np.float32)
    w = rng.normal(size=(3, 3, 3, 2)).astype(np.float32)  # [C_out, kh, kw, C_in]
    ref = np.stack([sum(signal.correlate2d(x[0, :, :, i], w[o, :, :, i], mode="same") for i in range(2))
                    for o in range(3)], -1)
    np.testing.assert_allclose(kernels.conv(x, w)[0], ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(kernels.conv(x, w, 2)[0], ref[::2, ::2], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stride,size", [(1, 3), (2, 3), (2, 1), (1, 1)])
def test_conv_vjp_against_xla_autodiff(stride, size):
    """The hand-written VJP of `conv` equals JAX's own derivative of the same convolution (float64)."""
    with jax.enable_x64(True):
        _check_conv_vjp(stride, size)


def _check_conv_vjp(stride, size):
    x = normal(8, (2, 7, 6, 3), np.float64)
    w = normal(9, (4, size, size, 3), np.float64)
    pad = size // 2

    def reference(x, w):
        return jax.lax.conv_general_dilated(x, w, (stride, stride), [(pad, pad)] * 2,
                                            dimension_numbers=("NHWC", "OHWI", "NHWC"))

    cotangent = normal(10, reference(x, w).shape, np.float64)
    ours = jax.vjp(lambda x, w: kernels.conv(x, w, stride), x, w)[1](cotangent)
    theirs = jax.vjp(reference, x, w)[1](cotangent)
    chex.assert_trees_all_close(ours, theirs, rtol=1e-10, atol=1e-10)
    # the VJP of the VJP (what the second-order look-ahead differentiates): conv_transpose's and
    # the kernel gradient's own hand-written VJPs against JAX's second derivative
    backward = lambda conv_fn: lambda x, w, c: jax.vjp(conv_fn, x, w)[1](c)
    outer = (normal(11, x.shape, np.float64), normal(12, w.shape, np.float64))
    ours2 = jax.vjp(backward(lambda x, w: kernels.conv(x, w, stride)), x, w, cotangent)[1](outer)
    theirs2 = jax.vjp(backward(reference), x, w, cotangent)[1](outer)
    chex.assert_trees_all_close(ours2, theirs2, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("bad", [-1, 5, 2.5, "3"])
def test_freeze_depth_out_of_range(bad):
    with pytest.raises(ValueError, match="freeze depth"):
        models.split_params(PARAMS, bad)


def test_unknown_norm_mode():
    with pytest.raises(ValueError, match="normalisation mode"):
        models.frozen_apply({}, X, 0, CFG, norm="layernorm")


MLP = models.MLPConfig(in_features=4 * 4 * 1, hidden_dims=(8, 8), num_classes=3, num_heads=2)


def test_mlp_layers_and_forward_equal_a_numpy_forward():
    """h_l = ReLU(h_{l-1} W_l + b_l), y = h W_L + b_L, head t = y[:, 3t:3t+3], against NumPy."""
    assert MLP.layers() == (("fc1", 16, 8), ("fc2", 8, 8), ("classifier", 8, 6))
    params = models.init_mlp(jax.random.key(0), MLP)
    assert models.count_params(params) == 16 * 8 + 8 + 8 * 8 + 8 + 8 * 6 + 6
    x = normal(1, (5, 4, 4, 1))
    p = {k: {n: np.asarray(v, np.float64) for n, v in layer.items()} for k, layer in params.items()}
    h = np.asarray(x, np.float64).reshape(5, 16)
    for name in ("fc1", "fc2"):
        h = np.maximum(h @ p[name]["kernel"] + p[name]["bias"], 0)
    y = h @ p["classifier"]["kernel"] + p["classifier"]["bias"]
    np.testing.assert_allclose(models.mlp_apply(params, x, MLP), y, rtol=1e-5, atol=1e-5)
    head = jax.jit(lambda t: models.mlp_apply(params, x, MLP, t))  # a traced head index
    for t in range(2):
        np.testing.assert_allclose(head(t), y[:, 3 * t:3 * t + 3], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="16 input values"):
        models.mlp_apply(params, jnp.zeros((1, 5, 5, 1)), MLP)
