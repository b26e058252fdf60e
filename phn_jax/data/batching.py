"""Batch index layouts with static shapes, for epochs that run inside `jax.lax.scan`.

An experience's N examples are cut into S = ⌈N / B⌉ batches of B indices. The last batch is
padded with index 0 and `mask = False`, so that every example appears exactly once among the
masked-in positions and every batch has the same shape; the engine weights per-example losses
and accuracies with the mask.

With a number of iterations instead (`iteration_indices`, `train.iterations`), every batch is
full: B consecutive samples of an endless sequence of random permutations of the experience, a
batch that reaches the end of one permutation going on into the next, as von Oswald et al.'s
reference code draws them; the experience's steps are cut into calls of S steps, and the steps
after the last iteration are masked out whole.
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
    idx, _ = _layout(_real_first(key, num_examples, num_valid), num_examples, batch_size, jnp)
    return idx, (jnp.arange(idx.size) < num_valid).reshape(idx.shape)


def _real_first(key: jax.Array, num_examples: int, num_valid) -> jax.Array:
    """int32 [N]: a uniformly random permutation of the real examples 0..n−1 in the first n places,
    the padding n..N−1 after them."""
    position = jnp.arange(num_examples)
    # Random keys for the real examples, +inf for the padding: argsort puts the real ones first.
    scores = jnp.where(position < num_valid, jax.random.uniform(key, (num_examples,), jnp.float32), jnp.inf)
    return jnp.argsort(scores).astype(jnp.int32)


def sweeps_per_call(steps: int, batch_size: int, smallest: int) -> int:
    """How many permutations the S·B consecutive samples of one call of `iteration_indices` can
    touch at most, when every experience has at least `smallest` real examples: ⌈S·B / n⌉ + 1."""
    return math.ceil(steps * batch_size / smallest) + 1


def iteration_indices(
    key: jax.Array, call, num_examples: int, batch_size: int, steps: int, iterations: int, num_valid, sweeps: int
) -> tuple[jax.Array, jax.Array]:
    """Call `call` (traced) of an experience trained for `iterations` steps of full batches, `steps`
    steps a call.

    The experience's samples are an endless sequence of random permutations of its n = `num_valid`
    real examples, one after another (π_0, π_1, ...; π_s from fold_in(key, s)): position p is
    example π_{⌊p / n⌋}(p mod n). Step i of the experience takes positions iB .. iB + B − 1, so a
    batch that reaches the end of one permutation goes on into the next (von Oswald et al.'s
    hypercl, data/dataset.py `Dataset._get_random_batch`: a generator reshuffled after every sweep).
    This call's steps are i = call·S .. call·S + S − 1; those with i ≥ `iterations` are masked out.

    Args:
      key: `jax.random` key of the experience (the same for all its calls).
      call: the call's index (may be traced).
      num_examples: N, the padded size of the arrays (static); num_valid: n ≤ N (may be traced).
      batch_size: B; steps: S, steps a call; iterations: I, steps of the experience (all static).
      sweeps: a bound on the permutations one call touches (`sweeps_per_call`), static.

    Returns:
      idx int32 [S, B] and mask bool [S, B] (whole rows False after the I-th step). Positions are
      int32: I·B < 2³¹.
    """
    n = jnp.asarray(num_examples if num_valid is None else num_valid, jnp.int32)
    position = call * steps * batch_size + jnp.arange(steps * batch_size, dtype=jnp.int32)
    first = position[0] // n
    orders = jax.vmap(lambda s: _real_first(jax.random.fold_in(key, first + s), num_examples, n))(jnp.arange(sweeps))
    idx = orders[position // n - first, position % n].reshape(steps, batch_size)
    step = call * steps + jnp.arange(steps)
    return idx, jnp.broadcast_to((step < iterations)[:, None], idx.shape)


def eval_indices(num_examples: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Evaluation batches in storage order: `epoch_indices` with the identity permutation.

    Returns NumPy arrays idx int32[S, B] and mask bool[S, B] (constants for a jitted evaluation).
    """
    return _layout(np.arange(num_examples), num_examples, batch_size, np)
