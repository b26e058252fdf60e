"""The task-conditioned hypernetwork H_ψ: (ψ, task id t) -> ω, the weights of the stateless part h_ω.

It knows its target only through the target's parameter shapes (a pytree of arrays or
`jax.ShapeDtypeStruct`s, e.g. `jax.eval_shape` of an init), so it serves any h_ω, not only the
ResNet of `phn_jax.models`. Structure (docs/design.md §2, the reference implementation's facts):

    e_t = E[t]                                   E ∈ R^{num_tasks × 32}   task embeddings
    h   = ReLU(W2 · ReLU(W1 · e_t + b1) + b2)    32 -> 50 -> 32

and one head per target tensor, chosen by its rank and name:

  'conv'   rank-4 kernel [C_out, kh, kw, C_in] (OHWI): channel-wise generation. A learnable lookup
           table c ∈ R^{C_out × d} and one linear map A ∈ R^{(32+d) × (kh·kw·C_in)} with bias b:
               W[i] = reshape(A^T [h ; c_i] + b),   i = 1..C_out           (no output nonlinearity)
           computed as (h^T A_h + b) + c A_c with A = [A_h ; A_c], the same value at a lower cost.
  'linear' rank-2 weight (e.g. the classifier's [160, C]): W = reshape(A^T h + b), A ∈ R^{32 × |W|}.
  'table'  rank-1 vectors (classifier bias, norm scale γ and bias β): a free per-task table
           T ∈ R^{num_tasks × |v|}, v = T[t], not generated from the embedding; initialised to 1
           for a norm scale and to 0 otherwise.

Initialisation follows the reference code's PyTorch defaults: embeddings and lookup tables
N(0, 1); linear maps and their biases U(±1/sqrt(fan_in)) (`dense_init='pytorch'`; 'xavier' is
hypercl's, see DENSE_INITS).

With C = 100 outputs and 20 tasks the parameter count equals the paper's Table 6 for every freeze
depth (tests/test_hypernetwork.py).

`ChunkedHypernetwork` (von Oswald et al. 2020, Fig. 1b) is the alternative to the per-tensor heads
with the same interface; `build_hypernetwork(kind, ...)` makes either ('heads' | 'chunked').
Both MLP trunks use the activation `activation` ('relu', the reference code's; or 'elu').
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from phn_jax import models
from phn_jax.runtime import compiled_init, float_dtype, random_floats

HEAD_KINDS = ("conv", "linear", "table")


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    """One generated tensor: its '/'-joined path in h_ω's pytree, head kind, shape, table init."""

    path: str
    kind: str
    shape: tuple[int, ...]
    init: float = 0.0

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


def _target_leaves(target_shapes) -> list[tuple[str, tuple[int, ...], float]]:
    """(path, shape, table init) of every leaf of a target pytree, in sorted path order.

    The init is the value a per-task table of that leaf starts from: 1 for a norm scale, else 0.
    """
    leaves = []
    for path, leaf in sorted(traverse_util.flatten_dict(target_shapes, sep="/").items()):
        shape = tuple(int(d) for d in (leaf.shape if hasattr(leaf, "shape") else np.shape(leaf)))
        leaves.append((path, shape, 1.0 if path.endswith("scale") else 0.0))
    return leaves


# How the chunked hypernetwork's flat output ω_gen is laid out over the target's tensors:
#   'flax':    the tensors in sorted path order, each row-major in its own shape (a dense kernel [D_in, D_out])
#   'pytorch': hypercl's (mnets/mlp.py `MLP.param_shapes`): layer after layer in forward order, each layer's
#              weight then its bias, a dense weight row-major as PyTorch stores it, [D_out, D_in]
CHUNK_LAYOUTS = ("flax", "pytorch")


def _pytorch_order(heads: tuple[HeadSpec, ...], layer_order: tuple[str, ...]) -> tuple[HeadSpec, ...]:
    """`heads` in PyTorch's parameter order: by layer as `layer_order` lists the target's top-level
    names (input to output), a layer's 'kernel' before its 'bias'. ValueError if `layer_order` does
    not name every layer, or a tensor other than a layer's kernel [D_in, D_out] or bias."""
    layers = {h.path.split("/")[0] for h in heads}
    if not layer_order or layers - set(layer_order):
        raise ValueError(f"layout='pytorch' needs the target's layers in forward order (got {layer_order!r} for the "
                         f"layers {sorted(layers)}): the MLP target gives them; use layout='flax' for other targets")
    for h in heads:
        leaf = h.path.split("/")[-1]
        if h.path.count("/") != 1 or leaf not in ("kernel", "bias") or len(h.shape) != (2 if leaf == "kernel" else 1):
            raise ValueError(f"layout='pytorch' lays out dense layers (a kernel [D_in, D_out] and a bias), not "
                             f"{h.path} {h.shape}; use layout='flax'")
    return tuple(sorted(heads, key=lambda h: (layer_order.index(h.path.split("/")[0]), h.path.endswith("bias"))))


def target_heads(target_shapes) -> tuple[HeadSpec, ...]:
    """The head of every leaf of a target pytree (nested dicts of arrays/ShapeDtypeStructs)."""
    heads = []
    for path, shape, init in _target_leaves(target_shapes):
        kind = {4: "conv", 2: "linear", 1: "table"}.get(len(shape))
        if kind is None:
            raise ValueError(f"cannot generate target tensor {path!r} of shape {shape}: "
                             "only rank-4 conv kernels, rank-2 weights and rank-1 vectors have heads")
        heads.append(HeadSpec(path, kind, shape, init))
    return tuple(heads)


# How a dense layer of the hypernetwork starts: `models.dense_layer` (DENSE_INITS: pytorch | xavier).
DENSE_INITS = models.DENSE_INITS


def output_sq_distances(omega_all, targets) -> jax.Array:
    """d_j = ‖T_j − ω_j‖²₂ over the flattened leaves of two pytrees with a leading task axis: [num_tasks]."""
    return sum(jnp.sum(jnp.square(t - o).reshape(o.shape[0], -1), axis=1)
               for t, o in zip(jax.tree_util.tree_leaves(targets), jax.tree_util.tree_leaves(omega_all)))


def _output_differences(w, b, w_star, b_star) -> jax.Array:
    """M = [W ; W − W* ; (b − b*)ᵀ]: [2H+1, n] from W, W* [H, n] and b, b* [n]."""
    return jnp.concatenate([w, w - w_star, (b - b_star)[None]])


def _column_blocks(w, b, w_star, b_star, kept: int) -> tuple:
    """M's columns before and after `kept`, each built from the slices of W, b, W*, b* (no slice of M)."""
    cut = lambda a, lo, hi: (a[:, lo:hi] if a.ndim == 2 else a[lo:hi])
    return tuple(_output_differences(*(cut(a, lo, hi) for a in (w, b, w_star, b_star)))
                 for lo, hi in ((0, kept), (kept, w.shape[1])))


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def output_gram(w, b, w_star, b_star, kept: int) -> tuple[jax.Array, jax.Array]:
    """(G_kept, G_rest) = (M_k M_kᵀ, M_r M_rᵀ) [2H+1, 2H+1] for M = [W ; W − W* ; (b − b*)ᵀ] [2H+1, n]
    (W, W* [H, n]; b, b* [n]) cut into its first `kept` columns M_k and the others M_r (static;
    G_rest is zero when kept = n): every inner product of the rows that a chunk's difference from
    its target is made of (`ChunkedHypernetwork.sq_distances`), G = G_kept + G_rest over all
    columns. W*, b* are targets: they get no gradient.

    Its VJP is written out: with S = Ḡ + Ḡᵀ, ∂/∂M = S M, and since W appears in rows 1..H and
    H+1..2H, ∂/∂[W ; bᵀ] = [S₁ + S₂ ; S₃] M (S₁, S₂, S₃ its row blocks of H, H and 1 rows), one
    [H+1, 2H+1] @ [2H+1, ·] product per block of columns, the two written side by side into one
    [H+1, n] gradient: half of autodiff's products (whose second takes a transposed operand, which
    XLA:CPU computes several times slower), and no zero-padded copy per block."""
    return _output_gram_fwd(w, b, w_star, b_star, kept)[0]


def _output_gram_fwd(w, b, w_star, b_star, kept):
    blocks = _column_blocks(w, b, w_star, b_star, kept)
    return tuple(m @ m.T for m in blocks), blocks


def _output_gram_bwd(kept, blocks, g):
    h = (blocks[0].shape[0] - 1) // 2

    def row_grads(m, g_m):  # [H+1, columns]: ∂/∂W, then ∂/∂b
        s = g_m + g_m.T
        return jnp.concatenate([s[:h] + s[h:2 * h], s[2 * h:]]) @ m
    grad = jnp.concatenate([row_grads(m, g_m) for m, g_m in zip(blocks, g)], axis=1)
    return grad[:h], grad[h], None, None


output_gram.defvjp(_output_gram_fwd, _output_gram_bwd)


ACTIVATIONS = {"relu": jax.nn.relu, "elu": jax.nn.elu}


def _check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown hypernetwork activation {activation!r}; use one of {tuple(ACTIVATIONS)}")


def _mlp_init(key, dims: tuple[int, ...], dense_init: str) -> list[dict]:
    """Dense layers dims[0] -> dims[1] -> ... -> dims[-1]."""
    return [models.dense_layer(k, a, b, dense_init) for k, a, b in zip(jax.random.split(key, len(dims) - 1), dims[:-1], dims[1:])]


def _mlp_apply(layers, x, activation: str):
    """act(... act(x W1 + b1) ... W_L + b_L): the activation after every layer."""
    for layer in layers:
        x = ACTIVATIONS[activation](x @ layer["kernel"] + layer["bias"])
    return x


def _mlp_num_params(dims: tuple[int, ...]) -> int:
    return sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))


@dataclasses.dataclass(frozen=True)
class Trunk:
    """What both kinds of hypernetwork share, stated once: the task embeddings E [num_tasks,
    embedding_dim] and the MLP over them (hidden_dims, activation), its dense layers initialised as
    `dense_init` says (DENSE_INITS). The defaults are the paper's: 32, (50, 32), ReLU, PyTorch's init."""

    num_tasks: int
    embedding_dim: int = 32
    hidden_dims: tuple[int, ...] = (50, 32)
    activation: str = "relu"
    dense_init: str = "pytorch"  # DENSE_INITS

    def __post_init__(self):
        _check_activation(self.activation)
        models.check_dense_init(self.dense_init)


@dataclasses.dataclass(frozen=True)
class Hypernetwork(Trunk):
    """H_ψ with per-tensor heads. A static, hashable description; `init` and `apply` are pure.

    Params ψ: {'embeddings': [num_tasks, embedding_dim], 'mlp': [dense]*, 'heads': {path: ...}}.
    """

    heads: tuple[HeadSpec, ...] = dataclasses.field(kw_only=True)
    head_embedding_dim: int = 32  # d, the width of the conv heads' lookup tables

    @classmethod
    def for_target(cls, target_shapes, num_tasks: int, **kwargs) -> "Hypernetwork":
        return cls(heads=target_heads(target_shapes), num_tasks=num_tasks, **kwargs)

    @compiled_init("self")
    def init(self, key: jax.Array) -> dict[str, Any]:
        k_emb, k_mlp, k_heads = jax.random.split(key, 3)
        psi = {"embeddings": random_floats(jax.random.normal, k_emb, (self.num_tasks, self.embedding_dim)),
               "mlp": _mlp_init(k_mlp, (self.embedding_dim,) + self.hidden_dims, self.dense_init),
               "heads": {}}
        h, d = self.hidden_dims[-1], self.head_embedding_dim
        for head, k in zip(self.heads, jax.random.split(k_heads, len(self.heads))):
            if head.kind == "conv":
                k1, k2 = jax.random.split(k)
                p = models.dense_layer(k1, h + d, head.size // head.shape[0], self.dense_init)
                p["lookup"] = random_floats(jax.random.normal, k2, (head.shape[0], d))
            elif head.kind == "linear":
                p = models.dense_layer(k, h, head.size, self.dense_init)
            else:
                p = {"table": jnp.full((self.num_tasks,) + head.shape, head.init, float_dtype())}
            psi["heads"][head.path] = p
        return psi

    def features(self, psi, task_id) -> jax.Array:
        """h = MLP(E[t]): [hidden_dims[-1]] for a scalar task id, [T, hidden_dims[-1]] for a vector of T."""
        return _mlp_apply(psi["mlp"], psi["embeddings"][task_id], self.activation)

    def _factors(self, p, head: HeadSpec, h: jax.Array, task_id) -> tuple[jax.Array, jax.Array | None]:
        """A head's output as ω = rows + shared, `rows` per task and `shared` the same for every task.

        h: the features [..., n_h] of the task id(s) `task_id` (a scalar or a vector [T]); p: the head's params.
            conv:    rows = h A_h + b [..., kh·kw·C_in],  shared = c A_c [C_out, kh·kw·C_in]  (W[i] = rows + shared[i])
            linear:  rows = h A + b   [..., |W|],         shared = None
            table:   rows = T[t]      [..., *shape],      shared = None
        """
        if head.kind == "conv":
            n_h = h.shape[-1]
            return h @ p["kernel"][:n_h] + p["bias"], p["lookup"] @ p["kernel"][n_h:]
        if head.kind == "linear":
            return h @ p["kernel"] + p["bias"], None
        return p["table"][task_id], None

    def apply(self, psi, task_id) -> dict[str, Any]:
        """ω = H_ψ(t) for a scalar integer task id: exactly the pytree h_ω takes.

        Vmappable over task ids: `jax.vmap(hnet.apply, in_axes=(None, 0))(psi, ids)` gives every
        leaf a leading task axis.
        """
        h = self.features(psi, task_id)
        out = {}
        for head in self.heads:
            rows, shared = self._factors(psi["heads"][head.path], head, h, task_id)
            out[head.path] = (rows if shared is None else rows[None, :] + shared).reshape(head.shape)
        return traverse_util.unflatten_dict(out, sep="/")

    def snapshot(self, psi) -> dict[str, dict[str, jax.Array]]:
        """The outputs H_ψ(j) of every task j in factored form (`_factors`), the targets T_j of the
        look-ahead regulariser: {path: {'rows': [num_tasks, |ω| / C_out for conv heads, else |ω|],
        'shared': [C_out, kh·kw·C_in] (conv heads only)}}.

        A conv head's num_tasks·|ω| values are held in (num_tasks + C_out)·kh·kw·C_in.
        """
        ids = jnp.arange(self.num_tasks)
        h = self.features(psi, ids)
        out = {}
        for head in self.heads:
            rows, shared = self._factors(psi["heads"][head.path], head, h, ids)
            out[head.path] = {"rows": rows.reshape(self.num_tasks, -1), **({} if shared is None else {"shared": shared})}
        return out

    def sq_distances(self, psi, targets) -> jax.Array:
        """d_j = ‖H_ψ(j) − T_j‖²₂ for every task j: [num_tasks], against `targets` = `snapshot(ψ*)`.

        Computed from the factors, without forming the num_tasks·|ω| outputs: with Δr_j = r_j − r*_j
        and ΔS = S − S* [C_out, K] a conv head's difference is ω_j − T_j = 1 Δr_jᵀ + ΔS; with m = the
        mean row of ΔS,
            ‖1 Δr_jᵀ + ΔS‖²_F = C_out ‖Δr_j + m‖² + ‖ΔS − 1 mᵀ‖²_F          (sums of squares only)
        and the other heads' is ‖Δr_j‖². The same values as `output_sq_distances` of the full outputs.
        """
        d = jnp.zeros(self.num_tasks)
        for path, now in self.snapshot(psi).items():
            dr = now["rows"] - targets[path]["rows"]
            if "shared" in now:
                ds = now["shared"] - targets[path]["shared"]
                m = jnp.mean(ds, axis=0)
                d = d + ds.shape[0] * jnp.sum(jnp.square(dr + m), axis=1) + jnp.sum(jnp.square(ds - m))
            else:
                d = d + jnp.sum(jnp.square(dr), axis=1)
        return d

    def num_params(self) -> int:
        """|ψ|, from the static structure alone."""
        n = self.num_tasks * self.embedding_dim + _mlp_num_params((self.embedding_dim,) + self.hidden_dims)
        h, d = self.hidden_dims[-1], self.head_embedding_dim
        for head in self.heads:
            if head.kind == "conv":
                per_channel = head.size // head.shape[0]
                n += (h + d) * per_channel + per_channel + head.shape[0] * d
            elif head.kind == "linear":
                n += h * head.size + head.size
            else:
                n += self.num_tasks * head.size
        return n


@dataclasses.dataclass(frozen=True)
class ChunkedHypernetwork(Trunk):
    """The chunked hypernetwork of von Oswald et al. (2020, Fig. 1b): one small MLP emits ω in chunks.

    The target's generated tensors are flattened (sorted path order, row-major) and concatenated
    into one vector of |ω_gen| values, cut into n_c = ⌈|ω_gen| / chunk_dim⌉ chunks. With learnable
    chunk embeddings c_i ∈ R^{d_c} (i = 1..n_c, shared by all tasks):

        e_t = E[t]                                            E ∈ R^{num_tasks × embedding_dim}
        h_i = act(... act(W1 [e_t ; c_i] + b1) ...)           hidden_dims, e.g. 50 -> 32
        v_i = W_out h_i + b_out ∈ R^{chunk_dim}               (no output nonlinearity)
        ω_gen = unflatten((v_1 ; ... ; v_{n_c})[:|ω_gen|])

    All chunks are one batched MLP call ([n_c, embedding_dim + d_c] -> [n_c, chunk_dim]), and the
    whole map is vmappable over task ids.

    Choice: rank-1 tensors (norm scale γ, bias β, classifier bias) stay free per-task tables as in
    the per-tensor-heads version (`vectors_as_tables=True`, the default), so the two kinds differ
    only in how the weight tensors are generated, and γ keeps its initial value 1. von Oswald et al.
    generate everything, biases included: `vectors_as_tables=False`.

    Initialisation: E, c ~ N(0, 1); dense layers as `dense_init` says (DENSE_INITS): 'pytorch'
    (U(±1/sqrt(fan_in)), PyTorch's default) or 'xavier' (Xavier uniform, zero biases: hypercl's
    `generate_classifier`, which von Oswald et al.'s MNIST results come from).

    Layout (`layout`, CHUNK_LAYOUTS): which target value each chunk value becomes. Row k of W_out
    makes value k of every chunk, so the layout decides which weights share a row. 'flax': sorted
    path order, each tensor row-major in its own shape; 'pytorch': hypercl's order (an MLP's layers
    input to output, weight [D_out, D_in] then bias). They are different networks: with 'flax' and
    a chunk_dim that is a multiple of a kernel's D_out (SplitMNIST's 42,000 = 105·400, PermutedMNIST's
    78,000 = 78·1000), a row of W_out makes the weights of one and the same neuron in every chunk,
    so all 784 (1,024) input weights of a first-layer neuron come from 105 (78) rows of W_out; in
    hypercl's [D_out, D_in] order a row's values fall on different neurons. Measured on real MNIST
    (docs/mnist.md).

    Params ψ: {'embeddings': [num_tasks, embedding_dim], 'chunk_embeddings': [n_c, d_c],
    'mlp': [dense]* (hidden layers), 'output': dense [hidden_dims[-1], chunk_dim],
    'tables': {path: [num_tasks, *shape]}}.

    |ψ| = num_tasks·embedding_dim + Σ_l (d_{l-1}·d_l + d_l) [d_0 = embedding_dim + d_c]
          + hidden_dims[-1]·chunk_dim + chunk_dim + n_c·d_c + num_tasks·Σ_tables |v|.
    """

    heads: tuple[HeadSpec, ...] = dataclasses.field(kw_only=True)  # kind 'chunk' (generated) or 'table' (per-task table)
    chunk_dim: int = 4096
    chunk_embedding_dim: int = 32
    layout: str = "flax"  # CHUNK_LAYOUTS

    def __post_init__(self):
        super().__post_init__()
        if self.layout not in CHUNK_LAYOUTS:
            raise ValueError(f"chunked hypernetwork: unknown layout {self.layout!r}; use one of {CHUNK_LAYOUTS}")
        for name in ("chunk_dim", "chunk_embedding_dim", "embedding_dim"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"chunked hypernetwork: {name} must be a positive integer, got {value!r}")
        if not self.hidden_dims:
            raise ValueError("chunked hypernetwork: hidden_dims must name at least one hidden layer")

    @classmethod
    def for_target(cls, target_shapes, num_tasks: int, vectors_as_tables: bool = True,
                   layer_order: tuple[str, ...] = (), **fields) -> "ChunkedHypernetwork":
        """For a target's parameter shapes; `layer_order`: its top-level layer names input to output
        (needed by layout='pytorch' only); `fields`: the dataclass's (layout, chunk_dim, ...)."""
        heads = tuple(HeadSpec(path, "table" if vectors_as_tables and len(shape) == 1 else "chunk", shape, init)
                      for path, shape, init in _target_leaves(target_shapes))
        if fields.get("layout", cls.layout) == "pytorch":  # (the field's default where not given)
            heads = _pytorch_order(heads, tuple(layer_order))
        return cls(heads=heads, num_tasks=num_tasks, **fields)

    @property
    def num_generated(self) -> int:
        """|ω_gen|: the number of values the chunks generate."""
        return sum(h.size for h in self.heads if h.kind == "chunk")

    @property
    def num_chunks(self) -> int:
        """n_c = ⌈|ω_gen| / chunk_dim⌉."""
        return -(-self.num_generated // self.chunk_dim)

    @compiled_init("self")
    def init(self, key: jax.Array) -> dict[str, Any]:
        k_emb, k_chunk, k_mlp, k_out = jax.random.split(key, 4)
        return {
            "embeddings": random_floats(jax.random.normal, k_emb, (self.num_tasks, self.embedding_dim)),
            "chunk_embeddings": random_floats(jax.random.normal, k_chunk,
                                              (self.num_chunks, self.chunk_embedding_dim)),
            "mlp": _mlp_init(k_mlp, (self.embedding_dim + self.chunk_embedding_dim,) + self.hidden_dims,
                             self.dense_init),
            "output": models.dense_layer(k_out, self.hidden_dims[-1], self.chunk_dim, self.dense_init),
            "tables": {h.path: jnp.full((self.num_tasks,) + h.shape, h.init, float_dtype())
                       for h in self.heads if h.kind == "table"},
        }

    def hidden(self, psi, task_ids: jax.Array) -> jax.Array:
        """h_ti, the last hidden layer for every chunk i of every task id of a vector [T]: [T, n_c, H].

        The T·n_c inputs [e_t ; c_i] go through the MLP as one [T·n_c, ·] matrix, so that every
        product, and its gradient, is a plain 2-D matmul (XLA:CPU's gradient of a [T, n_c, ·] @ [·, ·]
        product contracts two axes at once, several times slower).
        """
        c, e = psi["chunk_embeddings"], psi["embeddings"][task_ids]
        n_c, T = c.shape[0], e.shape[0]
        x = jnp.concatenate([jnp.repeat(e, n_c, axis=0), jnp.tile(c, (T, 1))], axis=-1)  # [T·n_c, d_e + d_c]
        return _mlp_apply(psi["mlp"], x, self.activation).reshape(T, n_c, -1)

    def apply(self, psi, task_id) -> dict[str, Any]:
        """ω = H_ψ(t) for a scalar integer task id: exactly the pytree h_ω takes (vmappable over t)."""
        return self._assemble(self.hidden(psi, jnp.reshape(task_id, (1,)))[0], psi["output"], psi["tables"], task_id)

    def apply_snapshot(self, targets, task_id) -> dict[str, Any]:
        """ω = H_ψ*(t) from `targets` = `snapshot(ψ*)`, its factors: what `apply(ψ*, t)` gave (vmappable
        over t). The replay of von Oswald et al.'s generative memory draws from these."""
        return self._assemble(targets["hidden"][task_id], targets["output"], targets["tables"], task_id)

    def _assemble(self, h, output, tables, task_id) -> dict[str, Any]:
        """ω from the last hidden layer h [n_c, H] of a task's chunks: v_i = W_out h_i + b_out, cut into the heads."""
        flat = (h @ output["kernel"] + output["bias"]).reshape(-1)  # [n_c · chunk_dim]
        out, offset = {}, 0
        for head in self.heads:
            if head.kind == "table":
                out[head.path] = tables[head.path][task_id]
            else:
                values = flat[offset:offset + head.size]
                out[head.path] = (values.reshape(head.shape[::-1]).T if self.layout == "pytorch" and len(head.shape) == 2
                                  else values.reshape(head.shape))
                offset += head.size
        return traverse_util.unflatten_dict(out, sep="/")

    def snapshot(self, psi) -> dict[str, Any]:
        """The outputs H_ψ(j) of every task j, the targets T_j of the look-ahead regulariser, in
        factored form: v*_ji = W*_out h*_ji + b*_out is kept as {'hidden': h*_ji [num_tasks, n_c, H],
        'output': (W*_out [H, chunk_dim], b*_out [chunk_dim]), 'tables': {path: [num_tasks, *shape]}}:
        (num_tasks·n_c + chunk_dim)·H values, not num_tasks·|ω_gen|."""
        return {"hidden": self.hidden(psi, jnp.arange(self.num_tasks)), "output": psi["output"],
                "tables": psi["tables"]}

    def sq_distances(self, psi, targets) -> jax.Array:
        """d_j = ‖H_ψ(j) − T_j‖²₂ for every task j: [num_tasks], against `targets` = `snapshot(ψ*)`,
        without forming the num_tasks·|ω_gen| outputs. Chunk i of task j differs from its target by

            v_ji − v*_ji = W Δh_ji + ΔW h*_ji + Δb = Mᵀ u_ji,   M = [W ; ΔW ; Δbᵀ] [2H+1, chunk_dim],
            u_ji = [Δh_ji ; h*_ji ; 1],   Δh = h − h*,  ΔW = W − W*,  Δb = b − b*

        so ‖v_ji − v*_ji‖² = u_jiᵀ G u_ji with G = M Mᵀ [2H+1, 2H+1] (`output_gram`): products over
        the chunk values made once for all tasks, not once per task. The last chunk counts only its
        first `kept` = |ω_gen| − (n_c − 1)·chunk_dim values, those `apply` keeps, so G is summed from
        the columns before and after `kept`, G = G_kept + G_rest: every chunk but the last takes
        G, the last G_kept (the same products as one G, and no slice of M for the last chunk).
        The tables add ‖ΔT_j‖². Every factor is a difference taken directly (Δh, ΔW, Δb), so the
        gradient is as exact in float32 as the outputs' own difference; the value (logged) carries
        the rounding of G, relative eps·‖M‖²‖u‖² / ‖M u‖². The same values as `output_sq_distances`
        of the full outputs.
        """
        h, h_star = self.hidden(psi, jnp.arange(self.num_tasks)), targets["hidden"]
        (w, b), (w_star, b_star) = ((o["kernel"], o["bias"]) for o in (psi["output"], targets["output"]))
        kept = self.num_generated - (self.num_chunks - 1) * self.chunk_dim
        g_kept, g_rest = output_gram(w, b, w_star, b_star, kept)
        g = g_kept + g_rest
        u = jnp.concatenate([h - h_star, h_star, jnp.ones(h.shape[:2] + (1,), h.dtype)], axis=-1)  # [T, n_c, 2H+1]
        quadratic = lambda x, g: jnp.sum((x @ g) * x, axis=-1)  # uᵀ G u of every row of x [rows, 2H+1]
        whole = u[:, :-1].reshape(-1, u.shape[-1])  # every chunk but the last: [T·(n_c − 1), 2H+1]
        d = quadratic(whole, g).reshape(self.num_tasks, -1).sum(axis=1) + quadratic(u[:, -1], g_kept)
        return d + output_sq_distances(psi["tables"], targets["tables"]) if self.num_tables else d

    @property
    def num_tables(self) -> int:
        return sum(h.kind == "table" for h in self.heads)

    def num_params(self) -> int:
        """|ψ| (the formula of the class docstring), from the static structure alone."""
        d_c = self.chunk_embedding_dim
        return (self.num_tasks * self.embedding_dim
                + _mlp_num_params((self.embedding_dim + d_c,) + self.hidden_dims)
                + self.hidden_dims[-1] * self.chunk_dim + self.chunk_dim + self.num_chunks * d_c
                + self.num_tasks * sum(h.size for h in self.heads if h.kind == "table"))


HNET_KINDS = ("heads", "chunked")
# The options of each kind besides the target and the number of tasks.
_KIND_OPTIONS = {
    "heads": ("embedding_dim", "hidden_dims", "head_embedding_dim", "activation", "dense_init"),
    "chunked": ("embedding_dim", "hidden_dims", "chunk_dim", "chunk_embedding_dim", "activation",
                "vectors_as_tables", "dense_init", "layout"),
}


def build_hypernetwork(kind: str, target_shapes, num_tasks: int, layer_order: tuple[str, ...] = (), **options):
    """H_ψ of `kind` ('heads': `Hypernetwork`; 'chunked': `ChunkedHypernetwork`) for a target.

    `options` may hold the options of both kinds (e.g. all of `config.hnet`); each kind takes its
    own (`_KIND_OPTIONS`) and ignores the other's. An option of neither kind is an error.
    `layer_order`: the target's top-level layer names input to output (the chunked kind's
    layout='pytorch' needs them).
    """
    if kind not in HNET_KINDS:
        raise ValueError(f"unknown hypernetwork kind {kind!r}; use one of {HNET_KINDS}")
    unknown = sorted(set(options) - {o for opts in _KIND_OPTIONS.values() for o in opts})
    if unknown:
        raise ValueError(f"unknown hypernetwork option(s) {unknown}; the options of each kind: {_KIND_OPTIONS}")
    cls = Hypernetwork if kind == "heads" else ChunkedHypernetwork
    kwargs = {k: tuple(v) if k == "hidden_dims" else v for k, v in options.items() if k in _KIND_OPTIONS[kind]}
    if kind == "chunked":
        kwargs["layer_order"] = tuple(layer_order)
    return cls.for_target(target_shapes, num_tasks, **kwargs)
