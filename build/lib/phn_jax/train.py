"""The continual-learning engine: one stream, one strategy, one run directory.

    train_and_evaluate(config, workdir, resume=False) -> summary

It is made of small named pieces:
  setup(config)          the stream, the strategy and the device mesh, before anything is written
  Progress               where the run stands: accuracy matrices, times, history, experience, epoch
  train_epochs(...)      the epochs of one experience, each one jitted `train_epoch`
  evaluate_seen(...)     row t of the accuracy matrix (and, without task ids, of the others)
  Checkpointer           orbax checkpoints every `checkpoint.every_minutes` and after each
                         experience, the stop requests (SIGTERM/SIGINT) and the results files
  train_and_evaluate     the run directory and its lock, resume, the experience loop

For each experience t: `strategy.begin_experience`; `config.train.epochs` epochs, each one jitted
call that runs all of the epoch's batches on the device (`lax.scan`; shuffling, augmentation
and the step inside jit, explicit keys); `strategy.end_experience`; evaluation of every
experience seen so far with its task id (weights of all tasks generated at once), filling row t
of the accuracy matrix R (with `eval.task_inference`, for a strategy that can, also rows of the
class-incremental and task-inference matrices: the task inferred by predictive entropy,
`phn_jax.task_inference`); a checkpoint; then the metrics and plots in `workdir`, which are
always written after the checkpoint that holds them.

Checkpoints: step = epochs completed over the run (t·E + e): after experience t it is (t+1)·E;
between epochs of an experience, when `checkpoint.every_minutes` have passed since the last one
or a stop was requested, t·E + e with 0 < e < E. A resumed run continues at the next epoch with
the same keys, so it ends with exactly the uninterrupted run's results (same machine and devices).

Shapes: every experience's train (test) arrays are zero-padded to the stream's largest train
(test) size with a count of real samples, so one compilation serves every experience of a
stream; padded samples are masked out of losses, accuracies and batch statistics.

Randomness: the run's key `jax.random.key(config.seed)` is split into (initialisation, stream);
experience t draws its keys from fold_in(stream, t), epoch e from a fold_in of that.

Seeds (`config.seeds`, e.g. 0,1,2): the seeds of one config run as one program, every function
of a step taken over a leading seed axis of the state, of the data (each seed's stream draws its
own class order) and of the keys (`Setup.stacked`), by `jax.vmap` or `jax.lax.map`
(`train.seed_axis`, `over_seeds`); a single run has no seed axis.
Each seed writes the results directory it would write alone (`RunDirs`); the run directory of the
group holds the checkpoints, the log and the aggregate over seeds (`metrics.aggregate_seeds`).

Devices and processes (`phn_jax.runtime`): batches are sharded along the `data` axis of a mesh
of every device of every process; parameters and the experience's arrays are replicated. Every
process runs this same loop; process 0 owns the run directory (lock, reports, log).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from phn_jax import checkpoint, data, metrics, models, report, rundir, runtime, task_inference
from phn_jax.checkpoint import CheckpointError
from phn_jax.config import ConfigError, check_config, seed_configs, with_defaults
from phn_jax.strategies import create_strategy
from phn_jax.strategies.base import TrainData, masked_correct

# Config fields that may change between an interrupted run and its resumption.
# (the device count too: a run may move to another machine, with float-level differences, DESIGN §6)
RESUMABLE_FIELDS = ("train.progress", "train.num_devices", "train.seed_axis", "checkpoint.max_to_keep", "checkpoint.every_minutes")
HISTORY_COLUMNS = ("experience", "epoch", "loss", "ce", "reg", "cos_g1_g2", "train_accuracy", "time_s")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class DeviceMemoryError(MemoryError):
    """A device ran out of memory; the message names the batch size to lower."""


@contextlib.contextmanager
def _device_memory(field: str, value: int, what: str):
    """Turns XLA's RESOURCE_EXHAUSTED (out of device memory) while `what` into DeviceMemoryError."""
    try:
        yield
    except jax.errors.JaxRuntimeError as err:
        if "RESOURCE_EXHAUSTED" not in str(err):
            raise
        raise DeviceMemoryError(
            f"the device ran out of memory while {what} with {field}={value}: lower {field} (keep it a multiple "
            "of the device count), or spread the batch over more devices (train.num_devices=0 uses all). "
            "Checkpoints and results so far are kept; resume with --resume.") from None


def _pad(a: np.ndarray, n: int) -> np.ndarray:
    return np.concatenate([a, np.zeros((n - a.shape[0],) + a.shape[1:], a.dtype)]) if a.shape[0] < n else a


def _pipeline(stream, t: int, cumulative: bool) -> data.Preprocess:
    """The input pipeline of experience t's training set; a cumulative strategy's unions need one
    pipeline for the whole stream (ValueError otherwise)."""
    specs = {e.preprocess for e in stream.experiences} if cumulative else {stream.experiences[t].preprocess}
    if len(specs) > 1:
        raise ValueError(f"a cumulative strategy (Joint) trains on the union of experiences, which needs one input "
                         f"pipeline, but the experiences of stream {stream.name!r} preprocess differently: "
                         f"{sorted(map(str, specs))}")
    return specs.pop()


def _training_set(stream, t: int, cumulative: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, data.Preprocess]:
    """What experience t trains on: (images uint8 [N, ...], labels [N], task ids int32 [N], pipeline).

    Its own training set, or for a cumulative strategy (Joint) the union of experiences 0..t, each
    sample with its experience's task id.
    """
    exps = stream.experiences[:t + 1] if cumulative else stream.experiences[t:t + 1]
    tasks = [np.full(e.train_labels.shape[0], e.task_id, np.int32) for e in exps]
    return (np.concatenate([e.train_images for e in exps]), np.concatenate([e.train_labels for e in exps]),
            np.concatenate(tasks), _pipeline(stream, t, cumulative))


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


@partial(jax.jit, static_argnames=("strategy", "spec", "batch_size", "first", "mesh", "seed_axis"), donate_argnums=(0,))
def train_epoch(state, images, labels, tasks, num_valid, task_id, key, *, strategy, spec, batch_size, first, mesh,
                seed_axis):
    """One epoch of `strategy.train_step` over a random permutation of the experience.

    images uint8 [N_pad, H, W, C], labels int32 [N_pad], tasks int32 [N_pad] (each sample's task id,
    batch['task']), num_valid: the real samples (first ones).
    Returns (state, per-step metrics with a leading [S] axis, S = ⌈N_pad / B⌉; steps whose batch
    is pure padding are skipped and report zeros). With a `seed_axis`, state, images, labels, tasks,
    num_valid, key and the results have a leading seed axis in front.
    """
    def epoch(state, images, labels, tasks, num_valid, key):
        k_perm, k_steps = jax.random.split(key)
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

    return over_seeds(epoch, seed_axis)(state, images, labels, tasks, num_valid, key)


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


# The accuracies without task ids, in the order `evaluate_without_task_id` returns them.
WITHOUT_TASK_IDS = ("class_incremental", "task_inference")


@partial(jax.jit, static_argnames=("strategy", "spec", "batch_size", "mesh", "seed_axis"))
def evaluate_without_task_id(state, context, images, labels, num_valid, task_id, num_learned, key, *, strategy,
                             spec, batch_size, mesh, seed_axis):
    """Task `task_id`'s test samples right when each sample's task is inferred by predictive entropy
    among the learned tasks 0..num_learned−1 (`phn_jax.task_inference`): int32 [2] = the counts
    behind the class-incremental and the task-inference accuracy, as `WITHOUT_TASK_IDS` names them
    ([S, 2] with a `seed_axis`)."""
    def correct(state, context, images, labels, num_valid, key):
        def count(x, y, mask):
            logits = strategy.eval_logits_all_tasks(state, context, x, mask)
            return task_inference.inferred_correct(logits, y, mask, task_id, num_learned)

        return _sum_over_test_set(count, jnp.zeros((2,), jnp.int32), images, labels, num_valid, key, spec=spec,
                                  batch_size=batch_size, mesh=mesh)

    return over_seeds(correct, seed_axis)(state, context, images, labels, num_valid, key)


def _epoch_row(t: int, epoch: int, step_metrics: dict, seconds: float) -> dict:
    """Per-epoch means over the steps that ran (weighted by their real samples for accuracy)."""
    m = step_metrics
    ran = m["count"] > 0
    mean = lambda k: float(np.mean(m[k][ran]))
    return {"experience": t, "epoch": epoch, "loss": mean("loss"), "ce": mean("ce"), "reg": mean("reg"),
            "cos_g1_g2": mean("cos_g1_g2"), "train_accuracy": float(m["correct"].sum() / m["count"].sum()),
            "time_s": seconds}


@dataclasses.dataclass(frozen=True)
class Setup:
    """What a run is made of, built from its config before anything is written.

    A multi-seed run (`config.seeds`) has one config and one stream per seed (each seed draws its own
    class order) and one strategy and mesh for all; its state, data and keys carry a leading seed
    axis (`stacked`).
    """

    config: object
    configs: tuple           # each seed's config (seed = s); (config,) for a single run
    streams: tuple           # each seed's stream
    strategy: object
    mesh: Mesh
    cumulative: bool         # Joint: trains experience t on the union of experiences 0..t
    without_task_ids: bool   # also evaluate with the task inferred (eval.task_inference, if the strategy can)

    @property
    def stacked(self) -> bool:
        return bool(self.config.seeds)

    @property
    def frozen_from_start(self) -> bool:
        """strategy.frozen_init names a run: the frozen part is loaded, not trained on experience 1."""
        return self.config.strategy.get("frozen_init", "none") != "none"

    def first(self, t: int) -> bool:
        """Whether experience t's step is the first experience's program (it trains the frozen part
        too): the first experience of a strategy whose first step differs, unless the frozen part came
        from strategy.frozen_init (then every step freezes it)."""
        return t == 0 and not self.frozen_from_start and self.strategy.first_step_differs

    @property
    def seed_axis(self) -> str | None:
        """How the programs go over the seeds (`SEED_AXES`; None for a single run): train.seed_axis,
        where 'auto' is vmap on GPUs and TPUs and map on CPUs."""
        if not self.stacked:
            return None
        how = self.config.train.seed_axis
        return how if how != "auto" else ("map" if self.mesh.devices.flat[0].platform == "cpu" else "vmap")

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(c.seed for c in self.configs)

    @property
    def stream(self) -> data.Stream:
        """The first seed's stream: the shapes, sizes and pipelines every seed's stream shares."""
        return self.streams[0]

    @property
    def num_experiences(self) -> int:
        return self.stream.num_experiences

    @property
    def epochs(self) -> int:
        return self.config.train.epochs

    def key(self) -> jax.Array:
        """The run's key `jax.random.key(seed)`; each seed's, stacked [S], for a multi-seed run."""
        if self.stacked:
            return jax.vmap(jax.random.key)(jnp.asarray(self.seeds))
        return jax.random.key(self.config.seed)

    def stack(self, trees: list):
        """The seeds' trees (numpy leaves) as one with a leading seed axis; the only one if not stacked."""
        return jax.tree_util.tree_map(lambda *a: np.stack(a), *trees) if self.stacked else trees[0]

    def unstack(self, tree) -> list:
        """Each seed's slice of a stacked tree; [tree] if not stacked."""
        return [jax.tree_util.tree_map(lambda a: a[i], tree) for i in range(len(self.seeds))] if self.stacked else [tree]


def setup(config) -> Setup:
    """Checks the config (`phn_jax.config.RULES`), then builds each seed's stream (a missing dataset
    stops here with its clear error, before any compilation), the strategy and the mesh of every
    device (`train.num_devices`: 0 = all), and checks the batch sizes against them. Raises ConfigError."""
    check_config(config)
    configs = seed_configs(config)
    streams = [data.build_stream(c.data) for c in configs]
    strategies = {create_strategy(c, stream) for c, stream in zip(configs, streams)}
    if len(strategies) > 1:
        raise ConfigError(f"the seeds {tuple(config.seeds)} build different strategies (a seed that changes the "
                          "model's shapes?); they cannot share one program: run them one by one with --config.seed=")
    strategy = strategies.pop()
    cumulative = getattr(strategy, "cumulative", False)
    for t in range(streams[0].num_experiences):
        if len({_pipeline(stream, t, cumulative) for stream in streams}) > 1:
            raise ConfigError(f"the seeds {tuple(config.seeds)} give experience {t + 1} different input pipelines "
                              "(datasets); they cannot share one program: run them one by one with --config.seed=")
    mesh = runtime.make_mesh(config.train.num_devices)
    smallest = min(e.train_labels.shape[0] for stream in streams for e in stream.experiences)
    problems = [f"train.{name}={config.train[name]} is not a multiple of the {mesh.size} devices (each device "
                "takes an equal share of a batch)" for name in ("batch_size", "eval_batch_size")
                if config.train[name] % mesh.size]
    if config.train.batch_size > smallest:
        problems.append(f"train.batch_size={config.train.batch_size} is larger than the smallest experience "
                        f"of stream {streams[0].name!r} ({smallest} training samples)")
    if problems:
        raise ConfigError("; ".join(problems) + ". Choose batch sizes that fit, with --config.train.batch_size= "
                          "and --config.train.eval_batch_size=.")
    without = bool(config.eval.task_inference and task_inference.supports_task_inference(strategy))
    return Setup(config, tuple(configs), tuple(streams), strategy, mesh, cumulative, without)


@dataclasses.dataclass(frozen=True)
class RunDirs:
    """Where a run writes. `workdir`: checkpoints, log and lock (and a multi-seed run's aggregate,
    `aggregate.json` and `aggregate.md`); `results`: each seed's results directory, the run directory
    that seed would have alone (config, stream, metrics, plots, history).

    A single run: results = (workdir,). A multi-seed run: `--workdir runs/x/hn3_seed{seed}` puts
    seed s's results in runs/x/hn3_seed<s> and the group in runs/x/hn3_seeds0-1-2 (seeds 0, 1, 2);
    a workdir without `{seed}` holds the group, and seed s's results in <workdir>/seed<s>.
    """

    workdir: Path
    results: tuple[Path, ...]

    @classmethod
    def of(cls, workdir: str | Path, seeds: tuple[int, ...]) -> "RunDirs":
        workdir = str(workdir)
        if not seeds:
            return cls(Path(workdir), (Path(workdir),))
        template = workdir if "{seed}" in workdir else str(Path(workdir) / "seed{seed}")
        group = workdir.replace("{seed}", "s" + "-".join(map(str, seeds)))
        return cls(Path(group), tuple(Path(template.replace("{seed}", str(s))) for s in seeds))

    @property
    def grouped(self) -> bool:
        return self.results != (self.workdir,)

    def all(self) -> tuple[Path, ...]:
        return (self.workdir,) + self.results if self.grouped else (self.workdir,)


# A multi-seed run's mark in each seed's results directory: which run wrote it.
GROUP_JSON = "group.json"


def _check_dirs(dirs: RunDirs, resume: bool) -> None:
    """Refuses results directories that hold another run: a seed's directory with checkpoints of its
    own or (without --resume) results; a single run's workdir that a multi-seed run writes."""
    for d in dirs.results:
        group = d / GROUP_JSON
        if dirs.grouped and (d / checkpoint.CHECKPOINT_DIR).exists():
            raise FileExistsError(f"{d} holds a run of its own (checkpoints); a multi-seed run would overwrite its "
                                  "results: choose another --workdir")
        if dirs.grouped and not resume and (d / report.METRICS_JSON).exists():
            raise FileExistsError(f"{d} already holds results; pass --resume (RESUME=1) to continue the multi-seed "
                                  "run that wrote them, or choose another --workdir")
        if not dirs.grouped and group.exists():
            raise FileExistsError(f"{d} holds one seed's results of the multi-seed run in "
                                  f"{json.loads(group.read_text())['workdir']}: resume that run with its seeds, or "
                                  "choose another --workdir")


@dataclasses.dataclass
class Progress:
    """Where a run (one seed) stands; a checkpoint's metadata holds it (JSON).

    R: accuracy matrix [T, T] (NaN where not evaluated); inferred: the class-incremental and
    task-inference matrices ({} when not evaluated without task ids); times: seconds of each
    completed experience; history: one row per epoch (HISTORY_COLUMNS); experience: the one being
    trained (T when the run is done); epoch: its epochs completed; elapsed_s: the program's time
    spent in it. The seeds of a multi-seed run have one Progress each, at the same experience and
    epoch; the times of each (`times`, the history's `time_s`) are its share of the program's, the
    program's seconds over its S seeds, so that they add up to the program's.
    """

    R: np.ndarray
    inferred: dict
    times: list
    history: list
    experience: int = 0
    epoch: int = 0
    elapsed_s: float = 0.0

    @classmethod
    def start(cls, s: Setup) -> "Progress":
        T = s.num_experiences
        return cls(metrics.empty_accuracy_matrix(T),
                   {m: metrics.empty_accuracy_matrix(T) for m in WITHOUT_TASK_IDS} if s.without_task_ids else {},
                   [], [])

    def step(self, epochs: int) -> int:
        """The checkpoint step: epochs completed over the run."""
        return self.experience * epochs + self.epoch

    def to_json(self) -> dict:
        return {"accuracy_matrix": metrics.jsonable(self.R), "without_task_ids": metrics.jsonable(self.inferred),
                "times_s": self.times, "history": self.history, "experience": self.experience,
                "epoch": self.epoch, "elapsed_s": self.elapsed_s}

    @classmethod
    def from_json(cls, d: dict) -> "Progress":
        return cls(metrics.as_accuracy_matrix(d["accuracy_matrix"]),
                   {m: metrics.as_accuracy_matrix(v) for m, v in d["without_task_ids"].items()},
                   list(d["times_s"]), list(d["history"]), d["experience"], d["epoch"], d["elapsed_s"])

    def summary(self, memory: dict) -> dict:
        return metrics.summarize(self.R, self.times, memory, **self.inferred)


def _progress_json(s: Setup, progress: list[Progress]):
    """A checkpoint's progress: one seed's JSON, or a multi-seed run's list of them."""
    return [p.to_json() for p in progress] if s.stacked else progress[0].to_json()


def _progress_from_json(s: Setup, saved) -> list[Progress]:
    return [Progress.from_json(d) for d in (saved if s.stacked else [saved])]


@jax.jit
def _first_seed(tree):
    """Seed 0's slice of a stacked tree, as one program (not an eager slice per leaf)."""
    return jax.tree_util.tree_map(lambda a: a[0], tree)


def load_frozen_part(source: str | Path, freeze_depth: int) -> dict:
    """The stem and stages 1..k (k = freeze_depth) from the newest checkpoint of the phn_jax run in
    `source`: an HN run's φ (frozen since its first experience), any other strategy's network
    parameters (a Joint run: the multitask pretraining); one seed's directory of a multi-seed run
    gives that seed's slice of its group's checkpoint. Host arrays, {module: params}. CheckpointError
    if the run has no checkpoint, has not finished an experience, or lacks one of the modules."""
    directory, index = Path(source), None
    if (directory / GROUP_JSON).is_file():
        group = json.loads((directory / GROUP_JSON).read_text())
        directory, index = Path(group["workdir"]), list(group["seeds"]).index(group["seed"])
    step, state, meta = checkpoint.read_latest(directory)
    progress = meta["progress"]  # (one seed's, or a list of each seed's: `_progress_json`)
    if (progress[0] if isinstance(progress, list) else progress)["experience"] < 1:
        raise CheckpointError(f"the run in {directory} has not finished its first experience (checkpoint step "
                              f"{step}): its frozen part is not trained yet")
    params = state.get("phi", state.get("params", {}))
    names = models.part_names(freeze_depth)[0]
    missing = [n for n in names if n not in params]
    if missing:
        raise CheckpointError(f"the run in {directory} has no {', '.join(missing)} (it has {', '.join(sorted(params))}): "
                              f"freeze depth {freeze_depth} needs a run that trained stem and stages 1..{freeze_depth} "
                              "(an HN or LR run at a depth ≥ it, or Naive, EWC, Joint)")
    part = {n: params[n] for n in names}
    return part if index is None else jax.tree_util.tree_map(lambda a: a[index], part)


def with_frozen_init(s: Setup, state):
    """`state` with its frozen part (strategy.FROZEN_PARAMS' stem and stages 1..k) replaced by
    `load_frozen_part(config.strategy.frozen_init)`, the same for every seed; the shapes must agree."""
    k, where = s.config.strategy.freeze_depth, s.strategy.FROZEN_PARAMS
    part = load_frozen_part(s.config.strategy.frozen_init, k)
    if s.stacked:
        part = jax.tree_util.tree_map(lambda a: np.broadcast_to(a, (len(s.seeds),) + a.shape), part)
    current = {n: state[where][n] for n in part}
    shapes = lambda tree: jax.tree_util.tree_map(lambda a: tuple(a.shape), tree)
    if shapes(part) != shapes(current):
        raise ConfigError(f"strategy.frozen_init={s.config.strategy.frozen_init!r}: its stem and stages 1..{k} "
                          "have other shapes than this run's (model.nf, model.blocks_per_stage and the input "
                          "channels must be the same)")
    return {**state, where: {**state[where], **jax.tree_util.tree_map(jnp.asarray, part)}}


def _memory(s: Setup, state) -> dict:
    """The strategy's memory figures (the same for every seed)."""
    return s.strategy.memory(_first_seed(state) if s.stacked else state)


class Events:
    """TensorBoard event files in each seed's results directory (process 0; tensorboardX, no
    TensorFlow; `tensorboard --logdir runs/`). Step = epochs completed over the run (the checkpoint
    step). Per epoch: train/loss, train/ce, train/reg, train/cos_g1_g2, train/accuracy; per
    experience: test/accuracy/experience_<j> for every experience seen and test/aca. A resumed run
    purges the events after its checkpoint's step (`purge_step`), which it writes again."""

    TRAIN = ("loss", "ce", "reg", "cos_g1_g2", "train_accuracy")

    def __init__(self, dirs: "RunDirs", purge_step: int | None, enabled: bool):
        self.writers = [report.event_writer(d, purge_step) for d in dirs.results] if enabled else []

    def epoch(self, rows: list[dict], step: int) -> None:
        for w, row in zip(self.writers, rows):
            for k in self.TRAIN:
                w.add_scalar("train/" + k.removeprefix("train_"), row[k], step)

    def experience(self, progress: list[Progress], summaries: list[dict], step: int) -> None:
        for w, p, summary in zip(self.writers, progress, summaries):
            t = p.experience - 1
            for j in range(t + 1):
                w.add_scalar(f"test/accuracy/experience_{j}", p.R[t, j], step)
            w.add_scalar("test/aca", summary["aca"], step)

    def flush(self) -> None:
        for w in self.writers:
            w.flush()

    def close(self) -> None:
        for w in self.writers:
            w.close()


class Checkpointer:
    """Checkpoints of one run, the stop requests, and the results files that follow each.

    `safe_point` (between epochs) writes a checkpoint when `every_minutes` have passed since the
    last one or a stop was requested (any process: SIGTERM/SIGINT), then raises
    `rundir.Interrupted` on a stop. `end_of_experience` always writes one, then (process 0) the
    metrics, plots, history and events: results are never on disk before the checkpoint that holds them.
    """

    def __init__(self, s: Setup, dirs: RunDirs, mngr, stop: rundir.StopRequests, config_json: dict, events: Events):
        self.s, self.dirs, self.mngr, self.stop, self.config_json = s, dirs, mngr, stop, config_json
        self.events = events
        self.every_s = 60.0 * s.config.checkpoint.get("every_minutes", 5.0)
        self.last = time.monotonic()

    @property
    def workdir(self) -> Path:
        return self.dirs.workdir

    def save(self, state, progress: list[Progress]) -> None:
        checkpoint.save(self.mngr, progress[0].step(self.s.epochs), state,
                        {"config": self.config_json, "progress": _progress_json(self.s, progress)})
        self.events.flush()
        self.last = time.monotonic()

    def _stop_if_asked(self, stop: bool, where: str) -> None:
        if stop:
            raise rundir.Interrupted(self.stop.signal_name or "a signal to another process", where)

    def safe_point(self, state, progress: list[Progress]) -> None:
        stop, due = runtime.agree(self.stop.signal_name is not None, time.monotonic() - self.last >= self.every_s)
        if stop or due:
            self.save(state, progress)
        self._stop_if_asked(stop, f"in experience {progress[0].experience + 1}, after epoch {progress[0].epoch} of "
                                  f"{self.s.epochs}")

    def end_of_experience(self, state, progress: list[Progress]) -> None:
        self.save(state, progress)
        if runtime.is_main_process():
            summaries = write_results(self.s, self.dirs, progress, _memory(self.s, state))
            self.events.experience(progress, summaries, progress[0].step(self.s.epochs))
            self.events.flush()
        stop, _ = runtime.agree(self.stop.signal_name is not None, False)
        if progress[0].experience < self.s.num_experiences:
            self._stop_if_asked(stop, f"after experience {progress[0].experience}")


def write_results(s: Setup, dirs: RunDirs, progress: list[Progress], memory: dict) -> list[dict]:
    """Each seed's metrics.json, CSVs and plots of the completed experiences, and train_history.csv
    in its results directory; a multi-seed run's aggregate over seeds in its workdir. Returns the
    seeds' summaries."""
    summaries = [p.summary(memory) for p in progress]
    for d, p, summary in zip(dirs.results, progress, summaries):
        report.write_report(d, summary)
        report.write_table(d / "train_history.csv", HISTORY_COLUMNS, p.history)
    if dirs.grouped:
        report.write_aggregate(dirs.workdir, metrics.aggregate_seeds(summaries, s.seeds))
    return summaries


def _check_finite(s: Setup, rows: list[dict], ckpt: Checkpointer) -> None:
    for seed, row in zip(s.seeds, rows):
        if not math.isfinite(row["loss"]):
            raise NonFiniteLossError(
                f"the training loss became {row['loss']} in experience {row['experience'] + 1}, epoch "
                f"{row['epoch'] + 1}{f' (seed {seed})' if s.stacked else ''}. " + (
                    f"The results and checkpoints of experience{'s 1..' if row['experience'] > 1 else ' '}"
                    f"{row['experience']} in {ckpt.workdir} are kept. "
                    if row["experience"] else "No experience was completed: there are no results yet. ") +
                "Lower optim.lr, or check the data (NaN inputs) and the config")


def train_epochs(s: Setup, state, progress: list[Progress], arrays, spec, k_train, ckpt: Checkpointer):
    """Epochs progress.epoch..E−1 of experience t = progress.experience on `arrays` = (images,
    labels, tasks, num_valid) (each seed's, stacked, for a multi-seed run); appends each epoch's row
    to each seed's history; a safe point between epochs. Raises NonFiniteLossError when a loss is
    NaN or infinite."""
    t, (images, labels, tasks, n_valid) = progress[0].experience, arrays
    bar = tqdm(range(progress[0].epoch, s.epochs), initial=progress[0].epoch, total=s.epochs, unit="epoch",
               desc=f"experience {t + 1}/{s.num_experiences}", disable=not s.config.train.progress, leave=False)
    for epoch in bar:
        tic = time.perf_counter()
        with _device_memory("train.batch_size", s.config.train.batch_size, "training"):
            state, step_metrics = train_epoch(
                state, images, labels, tasks, n_valid, t, fold_in(k_train, epoch), strategy=s.strategy,
                spec=spec, batch_size=s.config.train.batch_size, first=s.first(t), mesh=s.mesh, seed_axis=s.seed_axis)
            step_metrics = jax.device_get(step_metrics)  # waits for the epoch: its time is real
        seconds = time.perf_counter() - tic
        rows = [_epoch_row(t, epoch, m, seconds / len(progress)) for m in s.unstack(step_metrics)]  # (each seed's share)
        _check_finite(s, rows, ckpt)
        for p, row in zip(progress, rows):
            p.history.append(row)
            p.epoch, p.elapsed_s = epoch + 1, p.elapsed_s + seconds
        ckpt.events.epoch(rows, progress[0].step(s.epochs))
        bar.set_postfix(loss=f"{np.mean([r['loss'] for r in rows]):.3f}",
                        acc=f"{np.mean([r['train_accuracy'] for r in rows]):.3f}")
        if epoch + 1 < s.epochs:  # after the last epoch, the experience's own checkpoint follows
            ckpt.safe_point(state, progress)
    return state


def evaluate_seen(s: Setup, state, progress: list[Progress], tests, k_eval) -> None:
    """Row t of R (and of the matrices without task ids): every experience j ≤ t on its test set."""
    with _device_memory("train.eval_batch_size", s.config.train.eval_batch_size, "evaluating"):
        _evaluate_seen(s, state, progress, tests, k_eval)


def _evaluate_seen(s: Setup, state, progress: list[Progress], tests, k_eval) -> None:
    t = progress[0].experience
    context = eval_context(state, strategy=s.strategy, seed_axis=s.seed_axis)
    for j in range(t + 1):
        x, y, n = tests[j]
        kw = dict(strategy=s.strategy, spec=s.stream.experiences[j].preprocess,
                  batch_size=s.config.train.eval_batch_size, mesh=s.mesh, seed_axis=s.seed_axis)
        # accuracies are counts over n, divided here: the same fraction is the same number in every matrix
        correct = evaluate(state, context, x, y, n, j, fold_in(k_eval, j), **kw)
        for p, c, n_j in zip(progress, s.unstack(jax.device_get(correct)), s.unstack(n)):
            p.R[t, j] = int(c) / int(n_j)
        if s.without_task_ids:  # the task inferred among the t + 1 learned ones
            counts = evaluate_without_task_id(state, context, x, y, n, j, t + 1, fold_in(k_eval, j), **kw)
            for p, c, n_j in zip(progress, s.unstack(jax.device_get(counts)), s.unstack(n)):
                for m, value in zip(WITHOUT_TASK_IDS, c):
                    p.inferred[m][t, j] = int(value) / int(n_j)


def _log_experience(s: Setup, log, progress: list[Progress], summaries: list[dict]) -> None:
    t, T = progress[0].experience - 1, s.num_experiences
    for seed, p, summary in zip(s.seeds, progress, summaries):
        log.info("%sexperience %d/%d: %.1f s, accuracy %s; ACA %.4f, forgetting %s",
                 f"seed {seed}: " if s.stacked else "", t + 1, T, p.times[-1],
                 " ".join(f"{a:.3f}" for a in p.R[t, :t + 1]), summary["aca"],
                 "n/a" if summary["forgetting"] is None else f"{summary['forgetting']:.4f}")
        if p.inferred:
            log.info("  without task ids (entropy task inference): class-incremental accuracy %.4f, "
                     "task inference %.4f", summary["class_incremental_accuracy"], summary["task_inference_accuracy"])


def _test_sets(s: Setup) -> list:
    """Each experience's test set as (images, labels, real count): padded to the streams' largest,
    replicated on the mesh; each seed's, stacked, for a multi-seed run."""
    n_test = max(e.test_labels.shape[0] for stream in s.streams for e in stream.experiences)
    tests = []
    for j in range(s.num_experiences):
        exps = [stream.experiences[j] for stream in s.streams]
        x, y = s.stack([(_pad(e.test_images, n_test), _pad(e.test_labels, n_test)) for e in exps])
        tests.append((*runtime.replicate((x, y), s.mesh), s.stack([e.test_labels.shape[0] for e in exps])))
    return tests


def _train_arrays(s: Setup, t: int):
    """Experience t's training arrays (images, labels, tasks, num_valid), padded to the largest
    experience of the streams (a cumulative strategy: to the union of all), replicated; each seed's,
    stacked, for a multi-seed run; and their input pipeline."""
    sizes = [[e.train_labels.shape[0] for e in stream.experiences] for stream in s.streams]
    n_train = max(map(sum, sizes)) if s.cumulative else max(map(max, sizes))
    sets = [_training_set(stream, t, s.cumulative) for stream in s.streams]
    images, labels, tasks = s.stack([tuple(_pad(a, n_train) for a in arrays[:3]) for arrays in sets])
    n_valid = s.stack([labels.shape[0] for _, labels, _, _ in sets])
    return (*runtime.replicate((images, labels, tasks), s.mesh), n_valid), sets[0][3]


def run_stream(s: Setup, state, progress: list[Progress], ckpt: Checkpointer, log) -> list[dict]:
    """The experience loop from where `progress` stands to the end of the stream; each seed's summary."""
    _, k_stream = split_key(s.key())
    tests = _test_sets(s)
    for t in range(progress[0].experience, s.num_experiences):
        k_train, k_eval = split_key(fold_in(k_stream, t))
        k_end = fold_in(k_eval, s.num_experiences)  # end_experience's (evaluation uses fold_in(k_eval, j), j < T)
        arrays, spec = _train_arrays(s, t)
        tic = time.perf_counter() - progress[0].elapsed_s
        if progress[0].epoch == 0:  # (a checkpoint inside the experience holds the state after it)
            state = runtime.replicate(begin_experience(state, t, strategy=s.strategy, seed_axis=s.seed_axis), s.mesh)
        state = train_epochs(s, state, progress, arrays, spec, k_train, ckpt)
        state = end_experience(state, *arrays, k_end, t, strategy=s.strategy, spec=spec, seed_axis=s.seed_axis)
        evaluate_seen(s, state, progress, tests, k_eval)
        seconds = time.perf_counter() - tic
        for p in progress:
            p.times.append(seconds / len(progress))  # each seed's share of the program's time
            p.experience, p.epoch, p.elapsed_s = t + 1, 0, 0.0
        memory = _memory(s, state)
        _log_experience(s, log, progress, [p.summary(memory) for p in progress])
        ckpt.end_of_experience(state, progress)
    memory = _memory(s, state)
    summaries = [p.summary(memory) for p in progress]
    for seed, summary in zip(s.seeds, summaries):
        log.info("%sdone: ACA %.4f, learning accuracy %.4f, forgetting %s, %.1f s", f"seed {seed}: " if s.stacked
                 else "", summary["aca"], summary["learning_accuracy"], summary["forgetting"], summary["total_time_s"])
    if s.stacked:
        log.info("over seeds %s: %s", s.seeds, metrics.describe_aggregate(metrics.aggregate_seeds(summaries, s.seeds)))
    return summaries


@contextlib.contextmanager
def _own(dirs: RunDirs):
    """Process 0 creates the run's directories and holds their locks; every process learns whether it did."""
    failure = None
    with contextlib.ExitStack() as stack:
        if runtime.is_main_process():
            try:
                for d in dirs.all():
                    rundir.ensure_writable(d, (checkpoint.CHECKPOINT_DIR, checkpoint.DAMAGED_DIR))
                    stack.enter_context(rundir.lock(d))
            except (rundir.WorkdirError, rundir.RunLockedError) as err:
                failure = err
        if runtime.agree(failure is not None, False)[0]:
            raise failure or rundir.RunLockedError(f"process 0 could not take the run directory {dirs.workdir}")
        yield


def _write_run_files(s: Setup, dirs: RunDirs, topology: runtime.Topology) -> None:
    """config, stream and runtime of the run into each results directory (and the group's workdir)."""
    for d, c, stream in zip(dirs.results, s.configs, s.streams):
        report.write_config(d, c)
        report.write_json(d / "stream.json", stream.describe())
        report.write_json(d / "runtime.json", dataclasses.asdict(topology))
        if dirs.grouped:
            report.write_json(d / GROUP_JSON, {"workdir": str(dirs.workdir), "seed": c.seed, "seeds": s.seeds})
    if dirs.grouped:
        report.write_config(dirs.workdir, s.config)
        report.write_json(dirs.workdir / "runtime.json", dataclasses.asdict(topology))


def train_and_evaluate(config, workdir: str | Path, *, resume: bool = False):
    """Runs the stream of `config` with its strategy; writes the run directory; returns the summary
    (a multi-seed run, `config.seeds`: the list of each seed's summaries; see `RunDirs` for where
    each seed's results go).

    resume=False refuses a workdir that already holds checkpoints (never overwrites a run);
    resume=True continues from the latest checkpoint (or starts if there is none). A SIGTERM or
    SIGINT stops the run at the next safe point with a checkpoint (`rundir.Interrupted`).
    """
    s = setup(config)
    dirs = RunDirs.of(workdir, s.seeds if s.stacked else ())
    main = runtime.is_main_process()
    with _own(dirs), rundir.StopRequests() as stop:
        _check_dirs(dirs, resume)  # (before the checkpoint manager creates its directory)
        mngr = checkpoint.manager(dirs.workdir, config.checkpoint.max_to_keep)
        if mngr.latest_step() is not None and not resume:
            raise FileExistsError(f"{dirs.workdir} already holds a run (checkpoint step {mngr.latest_step()}); pass "
                                  "--resume (RESUME=1) to continue it, or choose another --workdir")
        config_json = metrics.jsonable(config.to_dict(), default=repr)
        k_init, _ = split_key(s.key())
        state = init_state(k_init, strategy=s.strategy, seed_axis=s.seed_axis)
        if s.frozen_from_start:  # (a resumed run has it in its checkpoint: the restore overwrites it)
            state = with_frozen_init(s, state)
        state = runtime.replicate(state, s.mesh)
        progress = [Progress.start(s) for _ in s.seeds]
        # before the log is opened: a refused resume (another config) leaves the run directory as it was
        damaged = []
        restored = (checkpoint.restore_latest(mngr, state, config_json, RESUMABLE_FIELDS, warn=damaged.append,
                                              move=main, complete=with_defaults) if resume else None)
        with report.run_log(dirs.workdir, to_file=main) as log:
            topology = runtime.Topology.of(s.mesh)
            log.info("running on %s", topology.describe())
            if s.stacked:
                log.info("seeds %s in one program; their results in %s", s.seeds, ", ".join(map(str, dirs.results)))
            for warning in damaged:
                log.warning("%s", warning)
            if restored is not None:
                _, state, meta = restored
                progress = _progress_from_json(s, meta["progress"])
                at = progress[0]
                if at.epoch:
                    log.info("resumed from the checkpoint in experience %d/%d, after epoch %d/%d",
                             at.experience + 1, s.num_experiences, at.epoch, s.epochs)
                else:
                    log.info("resumed from the checkpoint after experience %d/%d", at.experience, s.num_experiences)
            elif resume:
                log.info("no checkpoint in %s: starting from the first experience", dirs.workdir)
            # events up to the checkpoint's step are on disk (flushed with it); later ones are written again
            events = Events(dirs, progress[0].step(s.epochs) + 1 if restored is not None else None, enabled=main)
            memory = _memory(s, state)
            with contextlib.closing(events):
                if main:
                    _write_run_files(s, dirs, topology)
                    if progress[0].times:  # a kill between a checkpoint and its results files: write them again
                        summaries = write_results(s, dirs, progress, memory)
                        if progress[0].epoch == 0:  # (may repeat the same values at the same step)
                            events.experience(progress, summaries, progress[0].step(s.epochs))
                log.info("stream %s: %d experiences of %d classes; strategy %s, freeze depth %d, |psi| = %d",
                         s.stream.name, s.num_experiences, s.stream.classes_per_experience, config.strategy.name,
                         config.strategy.freeze_depth, memory.get("hypernetwork_params", 0))
                summaries = run_stream(s, state, progress, Checkpointer(s, dirs, mngr, stop, config_json, events), log)
            return summaries if s.stacked else summaries[0]
