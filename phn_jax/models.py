"""The target networks over explicit parameter pytrees: the slim ResNet-18 of the GEM paper (nf=20),
cut at freeze depth k, and von Oswald et al.'s fully connected network (`MLPConfig`, end of file).

Layout: images NHWC, conv kernels OHWI (output channel first, so that the hypernetwork's
channel-wise generation of DESIGN §2 is a plain reshape: row i of a generated kernel is output
channel i).

Architecture (DESIGN §2): stem conv3x3 3->nf + norm + ReLU; four stages of two BasicBlocks with
nf, 2nf, 4nf, 8nf channels (20/40/80/160) and strides 1/2/2/2; BasicBlock =
conv3x3-norm-ReLU-conv3x3-norm + shortcut (1x1 conv stride s + norm when the shape changes), ReLU;
no conv bias; global average pool; linear 8nf -> C.

Decomposition at freeze depth k in {0..4} (the paper's Eq. 1, f = h_ω ∘ g_φ):
  g_φ ("frozen"/stateful part)  = stem + stages 1..k   (k = 0: the identity, nothing to freeze)
  h_ω ("stateless" part)        = stages k+1..4 + classifier (k = 0: the stem too)
so that `stateless_apply(ω, frozen_apply(φ, x))` equals `apply(φ ∪ ω, x)` for the same weights.

Normalisation (DESIGN §2). Every norm layer has an affine (scale γ, bias β); how it normalises is
the `norm` mode of the model:
  'reference' (default; what the paper's numbers come from): no running statistics anywhere.
      The frozen part normalises with the statistics of the current batch, in train and in eval
      (PyTorch BatchNorm2d(track_running_stats=False)). The generated part ran per sample in the
      reference code (functorch.vmap over the batch), so its "BN" is instance normalisation over
      H×W of each sample with the per-task γ, β: a sample's output never depends on its batch.
  'batchnorm' (conventional): BatchNorm with running statistics (momentum 0.1, unbiased running
      variance, as PyTorch); batch statistics in train, running statistics in eval. The engine
      keeps per-task running statistics for generated layers.
"""
from __future__ import annotations

import dataclasses
import functools
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from phn_jax.runtime import float_dtype, random_floats

Params = dict[str, Any]

STAGES = ("stage1", "stage2", "stage3", "stage4")
NORM_MODES = ("reference", "batchnorm")
ARCHS = ("resnet", "mlp")  # config.model.arch
BN_EPS = 1e-5
BN_MOMENTUM = 0.1

# Initialisers run as one compiled program each, at XLA's optimisation level 1. Called eagerly, every
# random draw of a new shape would compile on its own (about half a second each on jax 0.11's XLA:CPU);
# level 1 halves the compile time of the random draws and gives the same bits as the default
# (tests/test_train.py checks).
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def compiled_init(*static_argnames: str):
    """Decorator: called on concrete arrays, the initialiser runs jitted with `static_argnames` static
    (its configuration, or `self` of a frozen dataclass) and INIT_COMPILER_OPTIONS; called under a
    trace (inside jit, vmap or eval_shape) it is traced inline, as the enclosing program's part
    (compiler options belong to a top-level jit only)."""
    def decorate(fn):
        jitted = jax.jit(fn, static_argnames=static_argnames, compiler_options=INIT_COMPILER_OPTIONS)

        @functools.wraps(fn)
        def init(*args, **kwargs):
            traced = any(isinstance(a, jax.core.Tracer) for a in jax.tree_util.tree_leaves((args, kwargs)))
            return (fn if traced else jitted)(*args, **kwargs)
        return init
    return decorate


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """Static description of a slim ResNet-18: nf=20 gives 20/40/80/160 channels."""

    num_classes: int = 10
    nf: int = 20
    in_channels: int = 3
    blocks_per_stage: tuple[int, ...] = (2, 2, 2, 2)
    strides: tuple[int, ...] = (1, 2, 2, 2)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.nf * 2**j for j in range(len(self.blocks_per_stage)))


def check_freeze_depth(freeze_depth: int) -> int:
    if not isinstance(freeze_depth, (int, np.integer)) or not 0 <= freeze_depth <= len(STAGES):
        raise ValueError(
            f"freeze depth k={freeze_depth!r} is out of range: k must be an integer in 0..{len(STAGES)} "
            "(0 generates every layer, 4 generates only the classifier)")
    return int(freeze_depth)


def check_norm(norm: str) -> str:
    if norm not in NORM_MODES:
        raise ValueError(f"unknown normalisation mode {norm!r}; use one of {NORM_MODES}")
    return norm


# ----------------------------------------------------------------------------------------------
# Parameters


def _conv_kernel(key, c_out: int, c_in: int, size: int) -> jax.Array:
    """OHWI kernel, U(±1/sqrt(fan_in)) as PyTorch's default conv init (kaiming_uniform, a=√5)."""
    init = jax.nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform", in_axis=(1, 2, 3), out_axis=0)
    return random_floats(init, key, (c_out, size, size, c_in))


def _norm_params(c: int) -> Params:
    return {"scale": jnp.ones((c,), float_dtype()), "bias": jnp.zeros((c,), float_dtype())}


def _block_shapes(cfg: ResNetConfig):
    """Yields (stage, block, c_in, c_out, stride, shortcut) for every BasicBlock; shortcut: a 1×1
    convolution (and its norm) on the skip path, where the block changes the stride or the width."""
    c_in = cfg.nf
    for stage, width, n, stage_stride in zip(STAGES, cfg.widths, cfg.blocks_per_stage, cfg.strides):
        for b in range(n):
            stride = stage_stride if b == 0 else 1
            yield stage, f"block{b + 1}", c_in, width, stride, stride != 1 or c_in != width
            c_in = width


@compiled_init("cfg")
def init_resnet(key: jax.Array, cfg: ResNetConfig = ResNetConfig()) -> Params:
    """All parameters of the uncut model: {'stem', 'stage1'..'stage4', 'classifier'}."""
    keys = iter(jax.random.split(key, 64))
    params: Params = {"stem": {"conv": _conv_kernel(next(keys), cfg.nf, cfg.in_channels, 3),
                               "bn": _norm_params(cfg.nf)}}
    for stage, block, c_in, c_out, _, shortcut in _block_shapes(cfg):
        p = {"conv1": _conv_kernel(next(keys), c_out, c_in, 3), "bn1": _norm_params(c_out),
             "conv2": _conv_kernel(next(keys), c_out, c_out, 3), "bn2": _norm_params(c_out)}
        if shortcut:
            p["shortcut_conv"] = _conv_kernel(next(keys), c_out, c_in, 1)
            p["shortcut_bn"] = _norm_params(c_out)
        params.setdefault(stage, {})[block] = p
    params["classifier"] = init_linear(next(keys), cfg.widths[-1], cfg.num_classes)
    return params


def init_linear(key: jax.Array, d_in: int, d_out: int, lead: tuple[int, ...] = ()) -> Params:
    """A linear layer {'kernel': [*lead, d_in, d_out], 'bias': [*lead, d_out]} initialised as PyTorch's
    nn.Linear: U(±1/sqrt(d_in)); `lead` stacks independent layers (e.g. one head per task)."""
    bound = 1 / np.sqrt(d_in)
    kk, kb = jax.random.split(key)
    return {"kernel": random_floats(jax.random.uniform, kk, (*lead, d_in, d_out), minval=-bound, maxval=bound),
            "bias": random_floats(jax.random.uniform, kb, (*lead, d_out), minval=-bound, maxval=bound)}


def init_batch_stats(params: Params) -> Params:
    """Running statistics for every norm layer in `params` (mean 0, var 1), for norm='batchnorm'."""
    if isinstance(params, dict) and set(params) == {"scale", "bias"}:
        return {"mean": jnp.zeros_like(params["scale"]), "var": jnp.ones_like(params["scale"])}
    return {k: s for k, v in params.items() if isinstance(v, dict) and (s := init_batch_stats(v))}


def part_names(freeze_depth: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Top-level module names of (g_φ, h_ω) at freeze depth k."""
    k = check_freeze_depth(freeze_depth)
    frozen = ("stem",) + STAGES[:k] if k > 0 else ()
    stateless = tuple(n for n in ("stem",) + STAGES + ("classifier",) if n not in frozen)
    return frozen, stateless


def split_params(params: Params, freeze_depth: int) -> tuple[Params, Params]:
    """(φ, ω): the frozen part's and the stateless part's subtrees of the uncut model's params."""
    frozen, stateless = part_names(freeze_depth)
    return {n: params[n] for n in frozen if n in params}, {n: params[n] for n in stateless if n in params}


def count_params(tree) -> int:
    """Number of scalars in a pytree of arrays or ShapeDtypeStructs."""
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


# ----------------------------------------------------------------------------------------------
# Forward


def _hwio_conv(x, kernel_hwio, stride: int, padding, lhs_dilation=(1, 1), rhs_dilation=(1, 1)):
    return jax.lax.conv_general_dilated(x, kernel_hwio, (stride, stride), padding, lhs_dilation=lhs_dilation,
                                        rhs_dilation=rhs_dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"))


PATCH_MAX = 32  # kh·kw·Cin up to which `conv` is a matmul over patches (the stem: 3·3·3 = 27)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """x [N,H,W,Cin] * kernel [Cout,kh,kw,Cin] -> [N,H',W',Cout], 'same'-style padding (k//2).

    y[n, h, w, o] = Σ_{a,b,i} x_pad[n, h·s + a, w·s + b, i] · W[o, a, b, i]

    An NHWC/HWIO convolution, except where the input has few channels (the RGB stem, kh·kw·Cin ≤
    PATCH_MAX): there one matmul over the kh·kw·Cin patches, which XLA:CPU runs ~4x faster.

    Why a hand-written VJP: XLA:CPU runs the convolutions that JAX's own transpose rules emit
    (and any OHWI convolution) 5-20x slower inside a loop, such as the epoch's `lax.scan`, than
    outside one. Here every convolution, forward and backward, is an NHWC/HWIO one, the kernel
    gradient included (`_kernel_grad`). The three (`conv`, `conv_transpose`, `_kernel_grad`) have
    VJPs written in each other, so the second-order look-ahead, which differentiates the backward
    pass, stays on the same fast convolutions.
    """
    c_out, kh, kw, c_in = kernel.shape
    if kh * kw * c_in <= PATCH_MAX:
        return _patches(x, kh, kw, stride) @ kernel.reshape(c_out, -1).T
    return _hwio_conv(x, jnp.transpose(kernel, (1, 2, 3, 0)), stride, [(kh // 2, kh // 2)] * 2)


def _patches(x, kh: int, kw: int, stride: int) -> jax.Array:
    """x [N,H,W,C] -> [N,H',W',kh·kw·C]: the padded input under each output position, (a, b, c) order."""
    h, w = x.shape[1:3]
    ph, pw = kh // 2, kw // 2
    xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    ho, wo = (h + 2 * ph - kh) // stride + 1, (w + 2 * pw - kw) // stride + 1
    return jnp.concatenate([xp[:, a:a + (ho - 1) * stride + 1:stride, b:b + (wo - 1) * stride + 1:stride]
                            for a in range(kh) for b in range(kw)], -1)


def _conv_fwd(x, kernel, stride):
    return conv(x, kernel, stride), (x, kernel)


def _conv_bwd(stride, residuals, g):
    x, kernel = residuals
    return conv_transpose(g, kernel, stride, x.shape[1:3]), _kernel_grad(x, g, kernel.shape[1:3], stride)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _kernel_grad(x, g, kernel_hw: tuple, stride: int):
    """∂⟨g, conv(x, W, s)⟩/∂W, x [N,H,W,Cin], g [N,H',W',Cout] -> [Cout,kh,kw,Cin]:

        dW[o, a, b, i] = Σ_{n,h,w} x_pad[n, h·s + a, w·s + b, i] · g[n, h, w, o]

    One NHWC/HWIO convolution with the roles swapped: x's channels i are its batch and its samples
    n the input features; g, dilated by the stride, is the kernel (H'×W' taps, n in, o out); the
    output's kh×kw positions are the taps (a, b): [Cin,kh,kw,Cout], transposed. (1×1 kernels: one
    matmul.) On XLA:CPU this is 1.1-4x faster than one matmul per tap (stage 1: 4x), and x's
    transpose, kept apart from x's producer by an optimisation barrier, is a plain copy instead of
    a recomputation of that producer in transposed order.

    Its own VJP is `conv_transpose` (w.r.t. x) and `conv` (w.r.t. g).
    """
    kh, kw = kernel_hw
    (h, w), (ho, wo) = x.shape[1:3], g.shape[1:3]
    if kh == kw == 1:
        return jnp.einsum("nhwi,nhwo->oi", x[:, ::stride, ::stride], g)[:, None, None, :]
    # the output is kh×kw: low padding k//2 as the forward's, high padding what is left of the window
    padding = [(kh // 2, kh - 1 - kh // 2 + (ho - 1) * stride - (h - 1)),
               (kw // 2, kw - 1 - kw // 2 + (wo - 1) * stride - (w - 1))]
    x_cf = jnp.transpose(jax.lax.optimization_barrier(x), (3, 1, 2, 0))  # [Cin, H, W, N]
    dw = _hwio_conv(x_cf, jnp.transpose(g, (1, 2, 0, 3)), 1, padding, rhs_dilation=(stride, stride))
    return jnp.transpose(dw, (3, 1, 2, 0))


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_transpose(g: jax.Array, kernel: jax.Array, stride: int, in_hw: tuple) -> jax.Array:
    """∂⟨g, conv(x, W, s)⟩/∂x: g [N,H',W',Cout], kernel [Cout,kh,kw,Cin] -> [N,H,W,Cin] (H, W = in_hw).

        dx[n, p, q, i] = Σ_{h,w,o: h·s + a = p + pad, w·s + b = q + pad} g[n, h, w, o] · W[o, a, b, i]

    computed as a convolution of g dilated by the stride with the spatially flipped kernel, its
    in/out channels swapped. Its own VJP is `conv` (w.r.t. g) and `_kernel_grad` (w.r.t. W), so
    differentiating the backward pass again emits no convolution of JAX's transpose rules.
    """
    _, kh, kw, _ = kernel.shape
    pad = kh // 2
    (h, w), (ho, wo) = in_hw, g.shape[1:3]
    flipped = jnp.transpose(kernel[:, ::-1, ::-1, :], (1, 2, 0, 3))  # [kh, kw, Cout, Cin]
    lo = kh - 1 - pad
    padding = [(lo, h + kh - 2 - (ho - 1) * stride - lo), (lo, w + kw - 2 - (wo - 1) * stride - lo)]
    return _hwio_conv(g, flipped, 1, padding, lhs_dilation=(stride, stride))


def _conv_transpose_fwd(g, kernel, stride, in_hw):
    return conv_transpose(g, kernel, stride, in_hw), (g, kernel)


def _conv_transpose_bwd(stride, in_hw, residuals, ct):
    # ⟨ct, Tᵀ-conv(g, W)⟩ = ⟨conv(ct, W), g⟩: w.r.t. g a convolution of ct, w.r.t. W the kernel
    # gradient with ct in the place of x
    g, kernel = residuals
    return conv(ct, kernel, stride), _kernel_grad(ct, g, kernel.shape[1:3], stride)


def _kernel_grad_fwd(x, g, kernel_hw, stride):
    return _kernel_grad(x, g, kernel_hw, stride), (x, g)


def _kernel_grad_bwd(kernel_hw, stride, residuals, ct):
    # ⟨ct, dW(x, g)⟩ = ⟨g, conv(x, ct)⟩ = ⟨x, conv_transpose(g, ct)⟩
    x, g = residuals
    return conv_transpose(g, ct, stride, x.shape[1:3]), conv(x, ct, stride)


conv.defvjp(_conv_fwd, _conv_bwd)
conv_transpose.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)
_kernel_grad.defvjp(_kernel_grad_fwd, _kernel_grad_bwd)


def normalize(p: Params, stats: Params | None, x: jax.Array, mode: str, train: bool, mask: jax.Array | None = None):
    """y = γ·(x − μ)/sqrt(σ² + ε) + β over x [N,H,W,C]; returns (y, new_stats).

    mode 'batch':    μ, σ² over (N,H,W) of this batch, always (no running statistics).
    mode 'instance': μ, σ² over (H,W) of each sample (instance norm; per-sample generated layers).
    mode 'running':  train: batch statistics, running ones updated with momentum 0.1
                     (σ² unbiased, as PyTorch); eval: the running statistics.
    mask [N] (optional): batch statistics over the valid samples only, so that the padding of a
    last, partial batch never changes the statistics of the real ones.

    The statistics and their derivatives are `_norm_train`'s (one pass over x, a hand-written VJP).
    """
    if mode not in ("batch", "instance", "running"):
        raise ValueError(f"unknown norm mode {mode!r}")
    new_stats = stats
    if mode == "running" and not train:
        return _standardize(x, stats["mean"], jax.lax.rsqrt(stats["var"] + BN_EPS), p["scale"], p["bias"]), stats
    per_sample = mode == "instance"
    w = jnp.ones(x.shape[:1], x.dtype) if mask is None or per_sample else mask.astype(x.dtype)
    y, mean, var = _norm_train(x, p["scale"], p["bias"], w, per_sample)
    if mode == "running":
        n = _count(w, x.shape[1] * x.shape[2], per_sample)
        unbiased = var * n / jnp.maximum(n - 1, 1)
        new_stats = {"mean": (1 - BN_MOMENTUM) * stats["mean"] + BN_MOMENTUM * mean,
                     "var": (1 - BN_MOMENTUM) * stats["var"] + BN_MOMENTUM * unbiased}
    return y, new_stats


def _standardize(x, mean, r, scale, bias):
    """y = (x − μ)·r·γ + β, r = (σ² + ε)^(-1/2): x [N,H,W,C]; μ, r broadcastable against it; γ, β [C]."""
    return (x - mean) * (r * scale) + bias


def _group(s: jax.Array, per_sample: bool) -> jax.Array:
    """Per-sample sums s [N, ...] -> the sums over each statistics group: per sample ([N, ...], as
    is) or over the batch ([...])."""
    return s if per_sample else s.sum(0)


def _count(w: jax.Array, hw: int, per_sample: bool) -> jax.Array:
    """n, the number of values behind each statistic: H·W·Σ w over the group ([N, 1] or [])."""
    n = jnp.maximum(_group(w, per_sample), 1) * hw
    return n[:, None] if per_sample else n


def _per_position(v: jax.Array, per_sample: bool) -> jax.Array:
    """A statistic ([C], or [N, C] per sample) broadcastable against x [N,H,W,C]."""
    return v[:, None, None, :] if per_sample else v


def _shift(x: jax.Array, per_sample: bool) -> jax.Array:
    """s, one value of x for each statistics group, held constant (no gradient): [N, C] per sample
    (x[n, 0, 0, :]), else [C] (x[0, 0, 0, :]). Sums of x − s keep their precision where |μ| ≫ σ."""
    return jax.lax.stop_gradient(x[:, 0, 0, :] if per_sample else x[0, 0, 0, :])


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def _norm_train(x, scale, bias, w, per_sample: bool):
    """(y, μ, σ²) of normalisation with the statistics of x [N,H,W,C] (per sample, or over the batch
    with sample weights w [N] ∈ {0, 1}), from shifted data x̃ = x − s (s: `_shift`, one value of
    each group, a constant):

        S₁[n,c] = Σ_{h,w} x̃,  S₂[n,c] = Σ_{h,w} x̃²,  μ̃ = Σ_n w·S₁ / n,  σ² = Σ_n w·S₂ / n − μ̃²,  μ = μ̃ + s
        y = (x̃ − μ̃)·r·γ + β,  r = (σ² + ε)^(-1/2)        (per sample: no Σ_n, w = 1, n = H·W)

    One pass over x for both statistics, and a VJP in closed form (`_norm_train_bwd`), so that every
    reduction, forward and backward, is a plain sum over an input or a product of two inputs, which
    XLA:CPU runs as one fused reduction; autodiff of the two-pass formula made XLA write (x − μ),
    x̂ and their products out first (2.5-3x the time at stage 1). The shift keeps E[x̃²] − μ̃² exact
    in float32: unshifted, E[x²] − μ² cancels where |μ| ≫ σ (per-sample statistics over few pixels
    at stage 4 lost 4.6e-2 of ψ's gradient); with s a value of the group, |μ̃| is a few σ. y, μ, σ²
    and every derivative are those of the unshifted formula (it is invariant to a constant shift).
    σ² is clipped at 0 against rounding; the VJP takes the clip as inactive. Its own derivative (the
    second order) is JAX's, of `_norm_train_bwd`.
    """
    return _norm_train_fwd(x, scale, bias, w, per_sample)[0]


def _norm_train_fwd(x, scale, bias, w, per_sample):
    s = _shift(x, per_sample)
    xs = x - _per_position(s, per_sample)  # fused into each reduction and into y: never written out
    n = _count(w, x.shape[1] * x.shape[2], per_sample)
    mean_s = _group(w[:, None] * xs.sum((1, 2)), per_sample) / n
    var = jnp.maximum(_group(w[:, None] * jnp.square(xs).sum((1, 2)), per_sample) / n - jnp.square(mean_s), 0)
    r = jax.lax.rsqrt(var + BN_EPS)
    y = _standardize(xs, _per_position(mean_s, per_sample), _per_position(r, per_sample), scale, bias)
    return (y, mean_s + s, var), (x, s, scale, w, mean_s, r)


def _norm_train_bwd(per_sample, residuals, cotangents):
    """With g = ∂L/∂y, Σ over each group (Σ_g, Σ_gx̃: plain sums of g and g·x̃), in the shifted
    x̃ = x − s and μ̃ = μ − s of `_norm_train` (∂x̃/∂x = 1, s a constant):

        ∂L/∂β = Σ g,  ∂L/∂γ = Σ g·x̂ = r·(Σ_gx̃ − μ̃·Σ_g),  ∂L/∂r = γ·(Σ_gx̃ − μ̃·Σ_g)
        ∂L/∂σ² = −r³/2 · ∂L/∂r (+ σ²'s cotangent),  ∂L/∂μ̃ = −γ·r·Σ_g − 2μ̃·∂L/∂σ² (+ μ's)
        ∂L/∂x = γ·r·g + w/n · (∂L/∂μ̃ + 2x̃·∂L/∂σ²)      (μ̃ = Σ w·S₁/n, E[x̃²] = Σ w·S₂/n)
    """
    x, s, scale, w, mean_s, r = residuals
    xs = x - _per_position(s, per_sample)
    g, g_mean, g_var = cotangents
    n = _count(w, x.shape[1] * x.shape[2], per_sample)
    sum_g, sum_gx = _group(g.sum((1, 2)), per_sample), _group((g * xs).sum((1, 2)), per_sample)
    d_scale = r * (sum_gx - mean_s * sum_g)
    d_var = -0.5 * r ** 2 * scale * d_scale + g_var
    d_mean = -scale * r * sum_g - 2 * mean_s * d_var + g_mean
    per_n = lambda d: (w[:, None] * d / n)[:, None, None, :]  # ∂L/∂S[n,c], S₁ or S₂
    dx = g * _per_position(scale * r, per_sample) + per_n(d_mean) + 2 * xs * per_n(d_var)
    if per_sample:
        d_scale, sum_g = d_scale.sum(0), sum_g.sum(0)
    return dx, d_scale, sum_g, jnp.zeros_like(w)


_norm_train.defvjp(_norm_train_fwd, _norm_train_bwd)


def _module_apply(name: str, p: Params, s: Params | None, x, cfg: ResNetConfig, mode: str, train: bool, mask):
    """Applies one top-level module ('stem', 'stageJ' or 'classifier'); returns (y, new_stats)."""
    if name == "classifier":
        x = x.mean((1, 2))  # global average pool
        return x @ p["kernel"] + p["bias"], s
    if name == "stem":
        y, s_bn = normalize(p["bn"], s and s["bn"], conv(x, p["conv"]), mode, train, mask)
        return jax.nn.relu(y), (s and {"bn": s_bn})
    j = STAGES.index(name)
    new_s = {}
    for b in range(cfg.blocks_per_stage[j]):
        blk = f"block{b + 1}"
        pb, sb = p[blk], (s[blk] if s else {})
        stride = cfg.strides[j] if b == 0 else 1
        y, sb1 = normalize(pb["bn1"], sb.get("bn1"), conv(x, pb["conv1"], stride), mode, train, mask)
        y, sb2 = normalize(pb["bn2"], sb.get("bn2"), conv(jax.nn.relu(y), pb["conv2"]), mode, train, mask)
        nb = {"bn1": sb1, "bn2": sb2}
        if "shortcut_conv" in pb:
            x, nb["shortcut_bn"] = normalize(pb["shortcut_bn"], sb.get("shortcut_bn"),
                                             conv(x, pb["shortcut_conv"], stride), mode, train, mask)
        x = jax.nn.relu(y + x)
        new_s[blk] = nb
    return x, (new_s if s else None)


def run_modules(params: Params, x: jax.Array, names, cfg: ResNetConfig, mode: str, train: bool,
                stats: Params | None = None, mask: jax.Array | None = None):
    """Applies the named top-level modules in order; the one forward pass behind every part.

    Returns (output, new_stats); new_stats is None unless mode == 'running'. mask [N]: which
    samples are real (batch statistics ignore the others).
    """
    if mode == "running" and stats is None:
        raise ValueError("norm mode 'running' needs the running statistics (init_batch_stats)")
    new_stats = {} if mode == "running" else None
    for name in names:
        s = stats.get(name) if mode == "running" else None
        x, s = _module_apply(name, params[name], s, x, cfg, mode, train, mask)
        if mode == "running" and s:
            new_stats[name] = s
    return x, new_stats


def _part_mode(norm: str, part: str) -> str:
    if check_norm(norm) == "batchnorm":
        return "running"
    return "batch" if part == "frozen" else "instance"


def frozen_apply(phi: Params, x: jax.Array, freeze_depth: int, cfg: ResNetConfig = ResNetConfig(), *,
                 norm: str = "reference", train: bool = False, stats: Params | None = None,
                 mask: jax.Array | None = None):
    """g_φ: x [N,H,W,3] -> z = features after stage k, [N,H/s,W/s,C_k] (k=0: z = x).

    Returns (z, new_stats). Reference norm: batch statistics in train and eval.
    """
    names, _ = part_names(freeze_depth)
    return run_modules(phi, x, names, cfg, _part_mode(norm, "frozen"), train, stats, mask)


def stateless_apply(omega: Params, z: jax.Array, freeze_depth: int, cfg: ResNetConfig = ResNetConfig(), *,
                    norm: str = "reference", train: bool = False, stats: Params | None = None,
                    mask: jax.Array | None = None):
    """h_ω: z -> logits [N, C]. Returns (logits, new_stats).

    Reference norm: per-sample instance normalisation, so one sample's output never depends on
    the rest of its batch.
    """
    _, names = part_names(freeze_depth)
    return run_modules(omega, z, names, cfg, _part_mode(norm, "stateless"), train, stats, mask)


def apply(params: Params, x: jax.Array, cfg: ResNetConfig = ResNetConfig(), *, train: bool = False,
          stats: Params | None = None, norm_mode: str = "running", mask: jax.Array | None = None):
    """The uncut model f(x) with one norm mode everywhere (default conventional BatchNorm)."""
    names = ("stem",) + STAGES + ("classifier",)
    return run_modules(params, x, names, cfg, norm_mode, train, stats, mask)


# ----------------------------------------------------------------------------------------------
# von Oswald et al.'s fully connected target network


@dataclasses.dataclass(frozen=True)
class MLPConfig:
    """Static description of the multi-head MLP of von Oswald et al. (ICLR 2020) on MNIST (their
    `mnets.mlp.MLP`: ReLU hidden layers with biases, no normalisation, no dropout).

    in_features: D_0, the flattened input H·W·C (784 for 28×28×1, 1024 for 32×32×1).
    hidden_dims: D_1..D_{L-1} (PermutedMNIST 1000-1000, SplitMNIST 400-400).
    num_classes: C, the outputs of one task head; num_heads: the task heads (one per task), so
    that the last layer has C·num_heads outputs and head t is outputs t·C..(t+1)·C−1 (their CL1).
    """

    in_features: int = 784
    hidden_dims: tuple[int, ...] = (400, 400)
    num_classes: int = 10
    num_heads: int = 1

    def layers(self) -> tuple[tuple[str, int, int], ...]:
        """(name, D_in, D_out) of every layer, input to output: 'fc1'..'fc{L-1}', then 'classifier'.
        The one description of the network's parameters: `init_mlp` and `mlp_apply` read it."""
        dims = (self.in_features, *self.hidden_dims, self.num_classes * self.num_heads)
        names = [f"fc{i + 1}" for i in range(len(self.hidden_dims))] + ["classifier"]
        return tuple(zip(names, dims[:-1], dims[1:]))


@compiled_init("cfg")
def init_mlp(key: jax.Array, cfg: MLPConfig) -> Params:
    """{name: {'kernel': [D_in, D_out], 'bias': [D_out]}} for every layer of `cfg.layers()`,
    PyTorch's nn.Linear init (only the shapes matter when a hypernetwork generates them)."""
    layers = cfg.layers()
    return {name: init_linear(k, d_in, d_out)
            for k, (name, d_in, d_out) in zip(jax.random.split(key, len(layers)), layers)}


def mlp_apply(params: Params, x: jax.Array, cfg: MLPConfig, head: jax.Array | int | None = None) -> jax.Array:
    """x [N, H, W, C] (or [N, D_0]) -> logits of task head `head`, [N, C] (head None: all heads,
    [N, C·num_heads]).

        h_0 = flatten(x) ∈ R^{D_0}  (row-major over H, W, C)
        h_l = ReLU(h_{l-1} W_l + b_l),  l = 1..L−1
        y   = h_{L-1} W_L + b_L ∈ R^{C·num_heads},   logits = y[t·C : (t+1)·C]

    `head` may be a traced integer (task inference runs every head under vmap).
    """
    h = x.reshape(x.shape[0], -1)
    if h.shape[1] != cfg.in_features:
        raise ValueError(f"the MLP takes {cfg.in_features} input values per sample, got {h.shape[1]} "
                         f"(input shape {x.shape[1:]})")
    *hidden, (last, _, _) = cfg.layers()
    for name, _, _ in hidden:
        h = jax.nn.relu(h @ params[name]["kernel"] + params[name]["bias"])
    y = h @ params[last]["kernel"] + params[last]["bias"]
    if head is None:
        return y
    return jax.lax.dynamic_slice_in_dim(y, head * cfg.num_classes, cfg.num_classes, axis=1)
