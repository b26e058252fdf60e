"""The target networks over explicit parameter pytrees: the slim ResNet-18 of the GEM paper (nf=20),
cut at freeze depth k, and von Oswald et al.'s fully connected network (`MLPConfig`, end of file).

Layout: images NHWC, conv kernels OHWI (output channel first, so that the hypernetwork's
channel-wise generation of docs/design.md §2 is a plain reshape: row i of a generated kernel is output
channel i).

Architecture (docs/design.md §2): stem conv3x3 3->nf + norm + ReLU; four stages of two BasicBlocks with
nf, 2nf, 4nf, 8nf channels (20/40/80/160) and strides 1/2/2/2; BasicBlock =
conv3x3-norm-ReLU-conv3x3-norm + shortcut (1x1 conv stride s + norm when the shape changes), ReLU;
no conv bias; global average pool; linear 8nf -> C.

Decomposition at freeze depth k in {0..4} (the paper's Eq. 1, f = h_ω ∘ g_φ):
  g_φ ("frozen"/stateful part)  = stem + stages 1..k   (k = 0: the identity, nothing to freeze)
  h_ω ("stateless" part)        = stages k+1..4 + classifier (k = 0: the stem too)
so that `stateless_apply(ω, frozen_apply(φ, x))` equals `apply(φ ∪ ω, x)` for the same weights.

Normalisation (docs/design.md §2). Every norm layer has an affine (scale γ, bias β); how it normalises is
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
import math

import jax
import jax.numpy as jnp
import numpy as np

from phn_jax.kernels import Params, conv, normalize
from phn_jax.runtime import compiled_init, float_dtype, random_floats


STAGES = ("stage1", "stage2", "stage3", "stage4")
NORM_MODES = ("reference", "batchnorm")
ARCHS = ("resnet", "mlp", "flax")  # config.model.arch (flax: a user's module, phn_jax.flax_modules)

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


def block_shapes(cfg: ResNetConfig):
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
    for stage, block, c_in, c_out, _, shortcut in block_shapes(cfg):
        p = {"conv1": _conv_kernel(next(keys), c_out, c_in, 3), "bn1": _norm_params(c_out),
             "conv2": _conv_kernel(next(keys), c_out, c_out, 3), "bn2": _norm_params(c_out)}
        if shortcut:
            p["shortcut_conv"] = _conv_kernel(next(keys), c_out, c_in, 1)
            p["shortcut_bn"] = _norm_params(c_out)
        params.setdefault(stage, {})[block] = p
    params["classifier"] = init_linear(next(keys), cfg.widths[-1], cfg.num_classes)
    return params


# How a dense layer starts (`dense_layer`):
#   'pytorch': W, b ~ U(±1/sqrt(d_in)), PyTorch's `nn.Linear` default (the partial hypernetwork's reference code)
#   'xavier':  W ~ U(±sqrt(6/(d_in + d_out))), b = 0, hypercl's `generate_classifier` (von Oswald et al.'s
#              MNIST scripts: Xavier uniform for every matrix, zeros for every vector)
DENSE_INITS = ("pytorch", "xavier")


def check_dense_init(dense_init: str) -> str:
    if dense_init not in DENSE_INITS:
        raise ValueError(f"unknown dense_init {dense_init!r}; use one of {DENSE_INITS}")
    return dense_init


def dense_layer(key: jax.Array, d_in: int, d_out: int, dense_init: str = "pytorch", lead: tuple[int, ...] = ()) -> Params:
    """A linear layer {'kernel': [*lead, d_in, d_out], 'bias': [*lead, d_out]} initialised as `dense_init`
    says (DENSE_INITS); `lead` stacks independent layers (e.g. one head per task)."""
    check_dense_init(dense_init)
    a, c = (math.sqrt(6 / (d_in + d_out)), 0.0) if dense_init == "xavier" else (1 / math.sqrt(d_in),) * 2
    kk, kb = jax.random.split(key)
    return {"kernel": random_floats(jax.random.uniform, kk, (*lead, d_in, d_out), minval=-a, maxval=a),
            "bias": (random_floats(jax.random.uniform, kb, (*lead, d_out), minval=-c, maxval=c) if c
                     else jnp.zeros((*lead, d_out), float_dtype()))}


def init_linear(key: jax.Array, d_in: int, d_out: int, lead: tuple[int, ...] = ()) -> Params:
    """`dense_layer` as PyTorch's nn.Linear starts: U(±1/sqrt(d_in))."""
    return dense_layer(key, d_in, d_out, "pytorch", lead)


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
    that the last layer has C·num_heads outputs and head t is outputs t·C..(t+1)·C−1 (their CL1),
    or 1: one head of C outputs shared by every task (their CL2).
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


@compiled_init("cfg", "dense_init")
def init_mlp(key: jax.Array, cfg: MLPConfig, dense_init: str = "pytorch") -> Params:
    """{name: {'kernel': [D_in, D_out], 'bias': [D_out]}} for every layer of `cfg.layers()`, each a
    `dense_layer` (PyTorch's nn.Linear init by default; only the shapes matter when a hypernetwork
    generates them)."""
    layers = cfg.layers()
    return {name: dense_layer(k, d_in, d_out, dense_init)
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
    if head is None or cfg.num_heads == 1:  # (one head serves every task: van de Ven & Tolias' CL2)
        return y
    return jax.lax.dynamic_slice_in_dim(y, head * cfg.num_classes, cfg.num_classes, axis=1)
