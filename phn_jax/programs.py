"""The engine's compiled programs: pure functions of (state, arrays, keys), jitted once per shape.

  init_state, begin_experience, end_experience   the strategy's, as one program each
  train_epoch                                    one epoch of steps in `lax.scan` (shuffling, augmentation
                                                 and the step inside jit), or one call of an experience
                                                 of `train.iterations` steps
  eval_context, evaluate, evaluate_without_task_id
                                                 the test set of one experience, in fixed batches

Every program takes a leading seed axis on every argument and result when `seed_axis` is given
(`over_seeds`: vmap or lax.map), so that several seeds run as one program. What `bench` times.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from phn_jax import data, runtime, task_inference
from phn_jax.metrics import WITHOUT_TASK_IDS
from phn_jax.strategies.base import TrainData, masked_correct


# How a multi-seed run's programs go over the seed axis (`train.seed_axis`): vmap: vectorised, the
# seeds' convolutions become grouped convolutions (fast on GPUs and TPUs); map: `lax.map`, one seed
# after another inside the program (XLA:CPU's grouped convolutions are slower than a loop).
SEED_AXES = ("vmap", "map")


def over_seeds(fn, seed_axis: str | None):
    """`fn`, or `fn` over a leading seed axis [S] of every argument and result: seed_axis None (a
    single run), "vmap" (`jax.vmap`) or "map" (`jax.lax.map`); the results are the same."""
    if seed_axis == "map":
        return lambda *args: jax.lax.map(lambda a: fn(*a), args)
    return jax.vmap(fn) if seed_axis == "vmap" else fn


def split_key(key) -> tuple[jax.Array, jax.Array]:
    """Two keys from one key, or from each key of a stack [S] (the seeds' keys)."""
    keys = over_seeds(jax.random.split, "vmap" if key.ndim else None)(key)
    return keys[..., 0], keys[..., 1]


def fold_in(key, i: int) -> jax.Array:
    """`jax.random.fold_in(key, i)`, for one key or each key of a stack [S]."""
    return over_seeds(lambda k: jax.random.fold_in(k, i), "vmap" if key.ndim else None)(key)


@runtime.compiled_init("strategy", "seed_axis")
def init_state(key, *, strategy, seed_axis):
    """`strategy.init(key)` as one compiled program (runtime.compiled_init); with a seed axis, one state
    per key of key [S], stacked."""
    return over_seeds(strategy.init, seed_axis)(key)


@partial(jax.jit, static_argnames=("strategy", "seed_axis"))
def begin_experience(state, task_id, *, strategy, seed_axis):
    """`strategy.begin_experience(state, task_id)` (over the seeds), compiled once per run: task_id
    is traced, so every experience runs the same program."""
    return over_seeds(lambda st: strategy.begin_experience(st, task_id), seed_axis)(state)


@partial(jax.jit, static_argnames=("strategy", "spec", "seed_axis"))
def end_experience(state, images, labels, tasks, num_valid, key, task_id, *, strategy, spec, seed_axis):
    """`strategy.end_experience(state, task_id, TrainData(...))` (over the seeds), compiled once per
    experience shape; the arrays as `train_epoch` takes them, `key` the experience's own."""
    end = lambda st, x, y, t, n, k: strategy.end_experience(st, task_id, TrainData(x, y, t, n, spec, k))
    return over_seeds(end, seed_axis)(state, images, labels, tasks, num_valid, key)


@partial(jax.jit, static_argnames=("strategy", "spec", "batch_size", "first", "mesh", "seed_axis", "iterations",
                                   "sweeps"), donate_argnums=(0,))
def train_epoch(state, images, labels, tasks, num_valid, task_id, key, experience_key=None, call=0, *, strategy, spec,
                batch_size, first, mesh, seed_axis, iterations=0, sweeps=0):
    """One epoch of `strategy.train_step` over a random permutation of the experience; or, with
    `iterations` > 0, call `call` of an experience of that many steps of full batches
    (`data.iteration_indices`: permutations one after another, keyed by `experience_key`; `sweeps` its
    static bound).

    images uint8 [N_pad, H, W, C], labels int32 [N_pad], tasks int32 [N_pad] (each sample's task id,
    batch['task']), num_valid: the real samples (first ones); key: this call's (its steps' keys and
    an epoch's permutation).
    Returns (state, per-step metrics with a leading [S] axis, S = ⌈N_pad / B⌉; steps whose batch
    is pure padding, or after the experience's last iteration, are skipped and report zeros). With a
    `seed_axis`, state, images, labels, tasks, num_valid, key, experience_key and the results have a
    leading seed axis in front.
    """
    def epoch(state, images, labels, tasks, num_valid, key, experience_key):
        k_perm, k_steps = jax.random.split(key)
        if iterations:
            idx, mask = data.iteration_indices(experience_key, call, images.shape[0], batch_size,
                                               data.num_batches(images.shape[0], batch_size), iterations, num_valid,
                                               sweeps)
        else:
            idx, mask = data.epoch_indices(k_perm, images.shape[0], batch_size, num_valid=num_valid)

        def step(state, inputs):
            idx_s, mask_s, key_s = inputs
            k_aug, k_step = jax.random.split(key_s)
            x = data.preprocess(spec, k_aug, images[idx_s], train=True)
            batch = {"x": jax.lax.with_sharding_constraint(x, runtime.batch_sharded(mesh)), "y": labels[idx_s],
                     "mask": mask_s, "task": tasks[idx_s]}
            run = lambda s: strategy.train_step(s, batch, k_step, task_id, first)
            skip = lambda s: (s, jax.tree_util.tree_map(lambda m: jnp.zeros(m.shape, m.dtype),
                                                        jax.eval_shape(run, s)[1]))
            return jax.lax.cond(mask_s.any(), run, skip, state)

        return jax.lax.scan(step, state, (idx, mask, jax.random.split(k_steps, idx.shape[0])))

    return over_seeds(epoch, seed_axis)(state, images, labels, tasks, num_valid, key, experience_key)


def _sum_over_test_set(count, init, images, labels, num_valid, key, *, spec, batch_size, mesh):
    """Σ over the fixed test batches of `count(x, y, mask)` (same shape and dtype as `init`), in jit;
    each batch split over the mesh's `data` axis.

    images uint8 [N_pad, H, W, C], labels [N_pad]; the first `num_valid` samples are real.
    """
    idx, mask = data.eval_indices(images.shape[0], batch_size)
    mask = jnp.asarray(mask) & (jnp.asarray(idx) < num_valid)

    def step(total, inputs):
        idx_s, mask_s, key_s = inputs
        x = jax.lax.with_sharding_constraint(data.preprocess(spec, key_s, images[idx_s], train=False),
                                             runtime.batch_sharded(mesh))
        return total + count(x, labels[idx_s], mask_s).astype(total.dtype), None  # int64 under jax_enable_x64

    total, _ = jax.lax.scan(step, init, (idx, mask, jax.random.split(key, idx.shape[0])))
    return total


@partial(jax.jit, static_argnames=("strategy", "seed_axis"))
def eval_context(state, *, strategy, seed_axis):
    """`strategy.eval_context(state)`, once per evaluation (per seed with a `seed_axis`)."""
    return over_seeds(strategy.eval_context, seed_axis)(state)


@partial(jax.jit, static_argnames=("strategy", "spec", "batch_size", "mesh", "seed_axis"))
def evaluate(state, context, images, labels, num_valid, task_id, key, *, strategy, spec, batch_size, mesh,
             seed_axis):
    """How many of task `task_id`'s test samples are classified right (int32; its accuracy is that
    over `num_valid`, divided on the host), in fixed batches of `batch_size` (with a `seed_axis`: of
    each seed, [S]; every argument but task_id has the seed axis)."""
    def correct(state, context, images, labels, num_valid, key):
        count = lambda x, y, mask: masked_correct(strategy.eval_logits(state, context, x, mask, task_id), y, mask)
        return _sum_over_test_set(count, jnp.zeros((), jnp.int32), images, labels, num_valid, key, spec=spec,
                                  batch_size=batch_size, mesh=mesh)

    return over_seeds(correct, seed_axis)(state, context, images, labels, num_valid, key)


@partial(jax.jit, static_argnames=("strategy", "spec", "batch_size", "mesh", "seed_axis"))
def evaluate_without_task_id(state, context, images, labels, num_valid, task_id, num_learned, key, *, strategy,
                             spec, batch_size, mesh, seed_axis):
    """Task `task_id`'s test samples right when each sample's task is not given, only the tasks
    0..num_learned−1 learned so far (`strategy.predict_without_task_id`, e.g. HNET+ENT's predictive
    entropy, `phn_jax.task_inference`): int32 [3], the counts behind the class-incremental, the
    task-inference and the domain-incremental accuracy in the order of `metrics.WITHOUT_TASK_IDS`
    ([S, 3] with a `seed_axis`)."""
    def correct(state, context, images, labels, num_valid, key):
        def count(x, y, mask):
            task_hat, class_hat = strategy.predict_without_task_id(state, context, x, mask, num_learned)
            return task_inference.inferred_correct(task_hat, class_hat, y, mask, task_id)

        return _sum_over_test_set(count, jnp.zeros((len(WITHOUT_TASK_IDS),), jnp.int32), images, labels, num_valid,
                                  key, spec=spec, batch_size=batch_size, mesh=mesh)

    return over_seeds(correct, seed_axis)(state, context, images, labels, num_valid, key)
