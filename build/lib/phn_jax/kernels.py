"""The convolution and normalisation of the target networks, with derivatives written by hand.

`conv` (a stride-s 3×3 or 1×1 convolution, NHWC × OHWI), its transpose `conv_transpose` and the
kernel gradient `_kernel_grad` have VJPs written in each other, so that the second-order look-ahead
(a VJP of a VJP) stays a chain of plain convolutions; kernels of few input taps (the stem: 3·3·3 =
27 ≤ PATCH_MAX) are a matmul over patches. `normalize` is the norm layer of every mode ('batch',
'instance', 'running'); its training statistics come from `_norm_train`: one shifted pass over x
(x − s, s = the first position's value per group, held constant) with a hand-written VJP.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

Params = dict[str, Any]

BN_EPS = 1e-5
BN_MOMENTUM = 0.1


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
