"""LR-k: latent replay (Pellegrini et al., 2020) on the multi-head ResNet, the paper's replay baseline
(Hemati et al. §4, Table 2; docs/design.md §3).

Experience 1 trains the whole network. From then on the frozen part g_φ = stem + stages 1..k
(the same cut as HN-k, `models.part_names`) gets no gradient and no update; only stages k+1..4 and
the heads train. At the end of every experience the frozen part, in eval mode, maps the
experience's training inputs (test-time preprocessing) to their pre-pool feature maps
z = g_φ(x) (NHWC, e.g. [4, 4, 160] for k = 4 on 32×32 inputs; k = 0 stores the preprocessed
images themselves), and a class-balanced buffer of M samples in total (200 for CIFAR, 400 for
TinyImageNet) keeps some of them with their labels and task ids. (Only the samples the buffer
keeps go through g_φ, in batches of the eval batch size; with the reference normalisation "eval
mode" normalises with the statistics of that batch, as everywhere in that mode.) Each step then
minimises

    L = CE(current batch) + c · CE(h(z_b), y_b, head t_b over a buffer batch b of R = 64 samples)

with c ∈ {0, 1} (`replay_coef`): the replay batch is drawn uniformly without replacement from the
buffer and passes only through the trainable rest h (its own batch statistics; running statistics
are not moved by it). c = 0 is Naive with a frozen trunk.

Class balance (Avalanche's `ClassBalancedBuffer(adaptive_size=True)`, which the reference code
used): after each experience every class seen so far — a class is a (task, label) pair — gets
⌊M/K⌋ slots, K the number of seen classes, and the first M mod K classes (in (task, label) order)
one more; a new class fills its slots with random samples of its experience, an old class shrinks
to its share by dropping random ones. A class with fewer samples than slots leaves them empty.

The reference code numbers the cut by "latent depth" d = k + 1 (d = 1 freezes the stem); here
k = 0 freezes nothing and replays images (HN-F's numbering: docs/design.md §3: "LR-0 replays images").
For streams whose experiences preprocess differently (Noisy-CIFAR100) LR-0 stores each image
after its own experience's test-time pipeline. The reference code trained the baselines with SGD
(lr 0.03, 40 epochs); here they share the run's optimiser config (Adam, `optim.lr`).

State: Naive's plus 'buffer': {'z': float32 [M, *feature_shape], 'y': int32 [M], 'task': int32
[M], 'valid': bool [M], 'seen': bool [num_tasks, C]} — fixed shapes, so nothing recompiles.
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import ClassVar

import jax
import jax.numpy as jnp

from phn_jax import data, metrics, models
from phn_jax.runtime import compiled_init, float_dtype
from phn_jax.strategies.base import masked_cross_entropy, real_batches
from phn_jax.strategies.naive import Naive


def class_balanced_selection(old_class, old_valid, new_class, new_valid, seen, key, buffer_size: int):
    """Which of the buffer's entries and of the new samples the next buffer keeps.

    old_class int32 [M], old_valid bool [M]: the buffer's entries (class ids); new_class int32 [N],
    new_valid bool [N]: the new samples; seen bool [K_max]: the classes seen before (updated here
    with the new ones); M = buffer_size.
    With K seen classes, class c (rank r_c among the seen classes, by id) gets
        quota_c = ⌊M/K⌋ + [r_c < M mod K]
    slots; within each class a uniformly random order (from `key`) decides which candidates keep
    theirs. Σ_c quota_c = M, so at most M candidates are kept.

    Returns (keep_old bool [M], keep_new bool [N], seen bool [K_max]).
    """
    cls = jnp.concatenate([old_class, new_class])
    valid = jnp.concatenate([old_valid, new_valid])
    seen = seen.at[cls].max(valid)
    k = jnp.maximum(jnp.sum(seen), 1)
    rank = jnp.cumsum(seen) - 1
    quota = jnp.where(seen, buffer_size // k + (rank < buffer_size % k), 0)
    # Sort the candidates by class, randomly within a class; invalid ones last.
    big = seen.shape[0]
    sort_class = jnp.where(valid, cls, big)
    order = jnp.lexsort((jax.random.uniform(key, cls.shape, jnp.float32), sort_class))
    sorted_class = sort_class[order]
    position = jnp.arange(cls.shape[0]) - jnp.searchsorted(sorted_class, sorted_class, side="left")
    keep_sorted = (sorted_class < big) & (position < quota[jnp.minimum(sorted_class, big - 1)])
    keep = jnp.zeros_like(valid).at[order].set(keep_sorted)
    m = old_class.shape[0]
    return keep[:m], keep[m:], seen


def _compact(keep: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    """The kept positions first (in order), then the others, cut or padded to `size`:
    (idx int32 [size], kept bool [size])."""
    idx = jnp.argsort(~keep, stable=True).astype(jnp.int32)
    kept = keep[idx]
    if idx.shape[0] < size:
        pad = size - idx.shape[0]
        idx, kept = jnp.pad(idx, (0, pad)), jnp.pad(kept, (0, pad))
    return idx[:size], kept[:size]


@dataclasses.dataclass(frozen=True)
class LatentReplay(Naive):
    """freeze_depth: k. input_shape: (H, W, C) of the model's input. buffer_size: M (0: no buffer,
    only with replay_coef = 0). replay_batch_size: R. replay_coef: c. feature_batch_size: batch size
    of the end-of-experience feature pass (eval batches)."""

    freeze_depth: int = 0
    input_shape: tuple[int, int, int] = (32, 32, 3)
    buffer_size: int = 200
    replay_batch_size: int = 64
    replay_coef: float = 1.0
    feature_batch_size: int = 256

    first_step_differs: ClassVar[bool] = True  # experience 1 trains the trunk too

    def __post_init__(self):
        models.check_freeze_depth(self.freeze_depth)
        for name, value, least in (("strategy.buffer_size", self.buffer_size, 0),
                                   ("strategy.replay_batch_size", self.replay_batch_size, 1),
                                   ("the feature batch size (train.eval_batch_size)", self.feature_batch_size, 1)):
            if value < least:
                raise ValueError(f"{name} must be ≥ {least}, got {value}")
        if not self.replay_coef >= 0:
            raise ValueError(f"strategy.replay_coef must be ≥ 0, got {self.replay_coef}")
        if self.replay_coef > 0 and self.buffer_size == 0:
            raise ValueError(f"strategy.replay_coef={self.replay_coef} replays from a buffer, but "
                             "strategy.buffer_size=0: give the buffer a size or set replay_coef=0")

    @property
    def reg_weight(self) -> float:
        return self.replay_coef

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """One buffer sample: g_φ's output for one input, NHWC without N."""
        return self.model.feature_shape(self.freeze_depth, self.input_shape)

    def frozen_depth(self, first: bool) -> int:
        return 0 if first else self.freeze_depth

    @compiled_init("self")
    def init(self, key):
        m, c = self.buffer_size, self.model.num_classes
        buffer = {"z": jnp.zeros((m, *self.feature_shape), float_dtype()), "y": jnp.zeros((m,), jnp.int32),
                  "task": jnp.zeros((m,), jnp.int32), "valid": jnp.zeros((m,), bool),
                  "seen": jnp.zeros((self.num_tasks, c), bool)}
        return {**super().init(key), "buffer": buffer}

    def replay_batch(self, buffer, key) -> tuple[jax.Array, jax.Array]:
        """A uniformly random subset of the valid entries: (idx int32 [R'], mask bool [R']),
        R' = min(R, M); positions beyond the number of valid entries are masked out."""
        size = min(self.replay_batch_size, self.buffer_size)
        scores = jnp.where(buffer["valid"], jax.random.uniform(key, buffer["valid"].shape, jnp.float32), -1.0)
        _, idx = jax.lax.top_k(scores, size)
        return idx, buffer["valid"][idx]

    def regularizer(self, params, state, key, first: bool):
        """CE of the rest h on a replay batch of stored features (zero in the first experience)."""
        if first or self.replay_coef == 0:
            return jnp.zeros(())
        b = state["buffer"]
        idx, mask = self.replay_batch(b, key)
        logits, _ = self.model.head(params, b["z"][idx], b["task"][idx], self.freeze_depth, train=True,
                                    stats=state["stats"] or None, mask=mask)
        return masked_cross_entropy(logits, b["y"][idx], mask)

    def end_experience(self, state, task_id, train_data):
        if self.buffer_size == 0:
            return state
        d = train_data
        return self._update_buffer(state, d.images, d.labels, d.tasks, d.num_valid, d.key, spec=d.preprocess)

    @partial(jax.jit, static_argnums=0, static_argnames="spec")
    def _update_buffer(self, state, images, labels, tasks, num_valid, key, *, spec):
        """The class-balanced update with this experience's samples, then their features g_φ(x)
        (eval mode, test-time preprocessing) for the new entries only."""
        b, m = state["buffer"], self.buffer_size
        c = self.model.num_classes
        k_select, k_pre = jax.random.split(key)
        new_valid = jnp.arange(images.shape[0]) < num_valid
        keep_old, keep_new, seen = class_balanced_selection(
            b["task"] * c + b["y"], b["valid"], tasks * c + labels, new_valid, b["seen"].reshape(-1), k_select, m)
        # Kept old entries first, then the kept new samples (at most M in all).
        (old, _), (new, new_kept) = _compact(keep_old, m), _compact(keep_new, m)
        # Zeros where nothing is kept: a batch of padding alone may normalise to non-finite values.
        z_new = jnp.where(new_kept.reshape((-1,) + (1,) * len(self.feature_shape)),
                          self.features(state, images[new], new_kept, k_pre, spec=spec), 0.0)
        slot = jnp.arange(m)
        from_old = slot < jnp.sum(keep_old)
        j = jnp.clip(slot - jnp.sum(keep_old), 0, m - 1)
        pick = lambda a_old, a_new: jnp.where(from_old.reshape((-1,) + (1,) * (a_old.ndim - 1)), a_old[old], a_new[j])
        buffer = {"z": pick(b["z"], z_new), "y": pick(b["y"], labels[new]), "task": pick(b["task"], tasks[new]),
                  "valid": pick(keep_old, new_kept), "seen": seen.reshape(b["seen"].shape)}
        return {**state, "buffer": buffer}

    def features(self, state, images, mask, key, *, spec):
        """z = g_φ(x) of uint8 images [N, H, W, C_in] in eval mode, in batches of `feature_batch_size`
        (batch statistics over the masked-in samples of each batch): float32 [N, *feature_shape]."""
        idx, valid = real_batches(images.shape[0], self.feature_batch_size, images.shape[0])
        valid = valid & mask[idx]

        def one(inputs):
            i, v, k = inputs
            x = data.preprocess(spec, k, images[i], train=False)
            return self.model.trunk(state["params"], x, self.freeze_depth, train=False,
                                    stats=state["stats"] or None, mask=v)[0]

        z = jax.lax.map(one, (idx, valid, jax.random.split(key, idx.shape[0])))
        return z.reshape((-1,) + z.shape[2:])[:images.shape[0]]

    def memory(self, state) -> dict:
        """The model, and the buffer's M samples of `feature_shape` at 32 bit (the paper's Table 6)."""
        return {**super().memory(state), **metrics.replay_buffer_memory(self.buffer_size, self.feature_shape),
                "replay_buffer_filled": int(jnp.sum(state["buffer"]["valid"]))}
