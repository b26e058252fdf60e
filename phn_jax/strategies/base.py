"""What every continual-learning strategy gives the engine, and the losses they share.

A strategy is a frozen, hashable dataclass (a static argument of `jax.jit`) whose methods are pure
functions of an explicit state pytree:

  init(key) -> state
  begin_experience(state, task_id) -> state          before training experience `task_id`
  train_step(state, batch, key, task_id, first) -> (state, metrics)
        one optimisation step on `batch` = {'x': [B,H,W,C] float32, 'y': [B] int32, 'mask': [B] bool,
        'task': [B] int32 (each sample's task id; the engine fills it, = task_id unless the strategy
        is cumulative)}; `first` (static) says whether this is the first experience; metrics: dict
        of scalars
  end_experience(state, task_id, train_data: TrainData) -> state   after it (buffers, Fisher, ...)
  eval_context(state) -> ctx                          once per evaluation (e.g. ω of every task)
  eval_logits(state, ctx, x, mask, task_id) -> [B, C]
  memory(state) -> dict                               sizes in MB for the metrics (Table 6)
  predict_without_task_id(state, ctx, x, mask, num_learned) -> (task [B], class [B])   optional:
        the predictions without task ids, the task among 0..num_learned−1 and the class within it
        (`phn_jax.task_inference`: `ByEntropy` makes them from `eval_logits_all_tasks(state, ctx, x,
        mask) -> [T, B, C]`, the logits of every task's model); `without_task_ids`: the matrices
        they make (default: all of `metrics.WITHOUT_TASK_IDS`)

Class attribute `first_step_differs`: whether `train_step` with first=True is another program than
with first=False (HN and LR-k train their frozen part in the first experience); when False, the
engine runs every experience with first=False, so one program serves them all.

Optional class attribute `cumulative` (default False): when True the engine trains experience t
on the union of experiences 0..t (Joint training), with each sample's own task id in
batch['task'].
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from phn_jax import data
from phn_jax.data import Preprocess


class TrainData(NamedTuple):
    """The training data of an experience as `end_experience` receives it (on the device).

    images: uint8 [N_pad, H, W, C_in], labels: int32 [N_pad], tasks: int32 [N_pad] (each sample's
    task id); the first `num_valid` samples are real, the rest zero padding. preprocess: their
    input pipeline (`data.preprocess(preprocess, key, images, train=False)` is the model's test
    input). key: a key of this experience's own, for whatever randomness the strategy needs there
    (buffer sampling, test-time noise).
    """

    images: jax.Array
    labels: jax.Array
    tasks: jax.Array
    num_valid: int
    preprocess: Preprocess
    key: jax.Array


def masked_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """L_CE = Σ_n m_n CE(logits_n, y_n) / Σ_n m_n over the real samples of a padded batch."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1)


def masked_correct(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Number of correct argmax predictions among the real samples."""
    return jnp.sum((jnp.argmax(logits, -1) == labels) & mask)


def real_batches(num_examples: int, batch_size: int, num_valid) -> tuple[jax.Array, jax.Array]:
    """The first `num_valid` of `num_examples` (padded) samples in storage order, in batches.

    Returns idx int32 [S, B] and mask bool [S, B], S = ⌈num_examples / B⌉: mask marks the real
    samples (num_valid may be traced; num_examples and batch_size are static).
    """
    idx, mask = data.eval_indices(num_examples, batch_size)
    return jnp.asarray(idx), jnp.asarray(mask) & (jnp.asarray(idx) < num_valid)
