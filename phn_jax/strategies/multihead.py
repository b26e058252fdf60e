"""The multi-head slim ResNet-18 of the baselines (Naive, EWC, LR-k, Joint): one shared trunk, one
linear classifier head per task, the head picked per sample.

    f(x_n; θ) = W_{t_n}ᵀ pool(g(x_n; θ_body)) + b_{t_n}

with g the stem and the four stages (docs/design.md §2), pool the global average pool, and (W_t, b_t) the
head of task t (W: [T, D, C], b: [T, C], D = 8·nf). Batches that mix tasks (a replay buffer, Joint
training on the union of experiences) carry a task id per sample, t: [N]; the features are
computed once for the whole batch, then each sample's logits use its own head — the only
per-sample weights are the selected heads' kernels and biases.

The trunk can be cut at a freeze depth k exactly as HN-k's (`models.part_names`): the frozen part
g_φ = stem + stages 1..k (k = 0: the identity) and the trainable rest (stages k+1..4 + heads).
`trunk` runs g_φ, `head` the rest, `logits` both.

Normalisation, as the model's `norm`: 'reference' normalises with the statistics of the current
batch everywhere, in train and eval (BatchNorm2d(track_running_stats=False)); 'batchnorm' keeps
running statistics (shared by all tasks), batch statistics in train, running ones in eval.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from phn_jax import models
from phn_jax.runtime import compiled_init, float_dtype

Params = models.Params


@dataclasses.dataclass(frozen=True)
class MultiHeadResNet:
    """Static description: the ResNet, the number of task heads T and the norm mode (hashable)."""

    resnet: models.ResNetConfig
    num_tasks: int
    norm: str = "reference"

    def __post_init__(self):
        models.check_norm(self.norm)
        if self.num_tasks < 1:
            raise ValueError(f"a multi-head model needs at least one task head, got num_tasks={self.num_tasks}")

    @property
    def num_classes(self) -> int:
        """C, the outputs of one task head."""
        return self.resnet.num_classes

    @property
    def mode(self) -> str:
        """`kernels.normalize` mode of every norm layer: 'batch' (reference) or 'running'."""
        return "running" if self.norm == "batchnorm" else "batch"

    @compiled_init("self")
    def init(self, key: jax.Array) -> tuple[Params, Params | None]:
        """(θ, running statistics or None): the uncut ResNet's parameters with 'classifier' holding
        T heads, {'kernel': [T, D, C], 'bias': [T, C]}, each initialised as PyTorch's nn.Linear."""
        k_body, k_heads = jax.random.split(key)
        heads = models.init_linear(k_heads, self.resnet.widths[-1], self.resnet.num_classes, (self.num_tasks,))
        params = {**models.init_resnet(k_body, self.resnet), "classifier": heads}
        return params, (models.init_batch_stats(params) if self.norm == "batchnorm" else None)

    def trunk(self, params: Params, x: jax.Array, depth: int, *, train: bool, stats: Params | None = None,
              mask: jax.Array | None = None, frozen: bool = False):
        """z = g_φ(x), the frozen part at depth k: x [N,H,W,C] -> ([N,H',W',C_k], new_stats).

        frozen=True: no gradient reaches φ, and with running statistics it runs in eval mode (its
        statistics are frozen with it), as HN-k's frozen part. k = 0: z = x.
        """
        names, _ = models.part_names(depth)
        phi = {n: params[n] for n in names}
        if frozen:
            phi, train = jax.lax.stop_gradient(phi), False
        z, new = models.run_modules(phi, x, names, self.resnet, self.mode, train, stats, mask)
        return z, self._merge(stats, new)

    def pooled(self, params: Params, z: jax.Array, depth: int, *, train: bool, stats: Params | None = None,
               mask: jax.Array | None = None):
        """h = pool(stages k+1..4 (z)): z [N,H',W',C_k] (`trunk`'s output at depth k) -> ([N, D], new_stats)."""
        _, names = models.part_names(depth)
        h, new = models.run_modules(params, z, names[:-1], self.resnet, self.mode, train, stats, mask)
        return h.mean((1, 2)), self._merge(stats, new)

    def head(self, params: Params, z: jax.Array, task: jax.Array | int, depth: int, *, train: bool,
             stats: Params | None = None, mask: jax.Array | None = None):
        """logits = the trainable rest at depth k on z, with each sample's task head.

        z [N,H',W',C_k] (the output of `trunk` at the same depth), task: int32 [N] or a scalar
        (one task for the whole batch) -> ([N, C], new_stats).
          h_n = pool(stages k+1..4 (z_n)) ∈ R^D;  logits_n = h_nᵀ W[t_n] + b[t_n].
        """
        h, stats = self.pooled(params, z, depth, train=train, stats=stats, mask=mask)
        task = jnp.broadcast_to(jnp.asarray(task, jnp.int32), h.shape[:1])
        heads = params["classifier"]
        return jnp.einsum("nd,ndc->nc", h, heads["kernel"][task]) + heads["bias"][task], stats

    def logits(self, params: Params, x: jax.Array, task: jax.Array | int, *, train: bool,
               stats: Params | None = None, mask: jax.Array | None = None, freeze_depth: int = 0):
        """f(x) = head(trunk(x)): x [N,H,W,C], task [N] or scalar -> ([N, C], new_stats).

        freeze_depth k > 0: stem + stages 1..k are frozen (see `trunk`); 0: everything trains.
        mask [N]: the real samples of a padded batch (batch statistics ignore the others).
        """
        z, stats = self.trunk(params, x, freeze_depth, train=train, stats=stats, mask=mask,
                              frozen=freeze_depth > 0)
        return self.head(params, z, task, freeze_depth, train=train, stats=stats, mask=mask)

    def logits_all_tasks(self, params: Params, x: jax.Array, *, stats: Params | None = None,
                         mask: jax.Array | None = None) -> jax.Array:
        """Eval-mode logits of every task head on the same features: x [N,H,W,C] -> [T, N, C]."""
        h, _ = self.pooled(params, x, 0, train=False, stats=stats, mask=mask)
        heads = params["classifier"]
        return jnp.einsum("nd,tdc->tnc", h, heads["kernel"]) + heads["bias"][:, None]

    def feature_shape(self, depth: int, input_shape: tuple[int, int, int]) -> tuple[int, ...]:
        """Shape of one sample's g_φ output at depth k for inputs (H, W, C), e.g. (4, 4, 160) for k=4
        on 32×32×3 (NHWC); found with `jax.eval_shape` (no FLOPs)."""
        params = jax.eval_shape(lambda: self.init(jax.random.key(0))[0])
        z = jax.eval_shape(lambda p, x: self.trunk(p, x, depth, train=False)[0], params,
                           jax.ShapeDtypeStruct((1, *input_shape), float_dtype()))
        return tuple(z.shape[1:])

    @staticmethod
    def _merge(stats, new):
        return None if stats is None else {**stats, **(new or {})}
