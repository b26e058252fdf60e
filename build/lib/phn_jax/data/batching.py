"""Batch index layouts with static shapes, for epochs that run inside `jax.lax.scan`.

An experience's N examples are cut into S = ⌈N / B⌉ batches of B indices. The last batch is
padded with index 0 and `mask = False`, so that every example appears exactly once among the
masked-in positions and every batch has the same shape; the engine weights per-example losses
and accuracies with the mask.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def num_batches(num_examples: int, batch_size: int) -> int:
    """S = ⌈num_examples / batch_size⌉ (ValueError unless both are positive)."""
    if num_examples <= 0 or batch_size <= 0:
        raise ValueError(f"need num_examples > 0 and batch_size > 0, got {num_examples}, {batch_size}")
    return math.ceil(num_examples / batch_size)


def _layout(order, num_examples: int, batch_size: int, xp):
    """Reshapes an order of the N indices into (idx int32[S, B], mask bool[S, B]) with padding."""
    total = num_batches(num_examples, batch_size) * batch_size
    pad = total - num_examples
    idx = xp.concatenate([order.astype(xp.int32), xp.zeros((pad,), xp.int32)])
    mask = xp.arange(total) < num_examples
    return idx.reshape(-1, batch_size), mask.reshape(-1, batch_size)


def epoch_indices(
    key: jax.Array, num_examples: int, batch_size: int, num_valid: jax.Array | int | None = None
) -> tuple[jax.Array, jax.Array]:
    """One training epoch: a uniformly random permutation of 0..N−1 cut into batches.

    Args:
      key: `jax.random` key of this epoch.
      num_examples: N (static).
      batch_size: B (static).
      num_valid: optional n ≤ N (may be traced): only examples 0..n−1 are real, the rest is
        padding that makes experiences of different sizes share one compiled epoch. The real
        examples are permuted into the first n positions and the padding gets mask False.

    Returns:
      idx int32[S, B] and mask bool[S, B], S = ⌈N/B⌉: idx[mask] is a permutation of 0..n−1
      (n = N by default) and every other position has mask False. Jittable with
      `num_examples` and `batch_size` static.
    """
    if num_valid is None:
        return _layout(jax.random.permutation(key, num_examples), num_examples, batch_size, jnp)
    position = jnp.arange(num_examples)
    # Random keys for the real examples, +inf for the padding: argsort puts the real ones first.
    scores = jnp.where(position < num_valid, jax.random.uniform(key, (num_examples,), jnp.float32), jnp.inf)
    idx, _ = _layout(jnp.argsort(scores), num_examples, batch_size, jnp)
    return idx, (jnp.arange(idx.size) < num_valid).reshape(idx.shape)


def eval_indices(num_examples: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Evaluation batches in storage order: `epoch_indices` with the identity permutation.

    Returns NumPy arrays idx int32[S, B] and mask bool[S, B] (constants for a jitted evaluation).
    """
    return _layout(np.arange(num_examples), num_examples, batch_size, np)
