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

Devices and processes (`phn_jax.runtime`): batches are sharded along the `data` axis of a mesh
of every device of every process; parameters and the experience's arrays are replicated. Every
process runs this same loop; process 0 owns the run directory (lock, reports, log).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from phn_jax import checkpoint, data, metrics, report, rundir, runtime, task_inference
from phn_jax.config import ConfigError, check_config
from phn_jax.strategies import create_strategy
from phn_jax.strategies.base import TrainData, masked_correct

# Config fields that may change between an interrupted run and its resumption.
# (the device count too: a run may move to another machine, with float-level differences, DESIGN §6)
RESUMABLE_FIELDS = ("train.progress", "train.num_devices", "checkpoint.max_to_keep", "checkpoint.every_minutes")
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


@partial(jax.jit, static_argnames="strategy")
def init_state(key, *, strategy):
    """`strategy.init(key)` compiled once (eagerly, each parameter's initialiser compiles on its own)."""
    return strategy.init(key)


@partial(jax.jit, static_argnames=("strategy", "spec", "batch_size", "first", "mesh"), donate_argnums=(0,))
def train_epoch(state, images, labels, tasks, num_valid, task_id, key, *, strategy, spec, batch_size, first, mesh):
    """One epoch of `strategy.train_step` over a random permutation of the experience.

    images uint8 [N_pad, H, W, C], labels int32 [N_pad], tasks int32 [N_pad] (each sample's task id,
    batch['task']), num_valid: the real samples (first ones).
    Returns (state, per-step metrics with a leading [S] axis, S = ⌈N_pad / B⌉; steps whose batch
    is pure padding are skipped and report zeros).
    """
    k_perm, k_steps = jax.random.split(key)
    idx, mask = data.epoch_indices(k_perm, images.shape[0], batch_size, num_valid=num_valid)

    def step(state, inputs):
        idx_s, mask_s, key_s = inputs
        k_aug, k_step = jax.random.split(key_s)
        x = data.preprocess(spec, k_aug, images[idx_s], train=True)
        batch = {"x": jax.lax.with_sharding_constraint(x, runtime.batch_sharded(mesh)), "y": labels[idx_s], "mask": mask_s,
                 "task": tasks[idx_s]}
        run = lambda s: strategy.train_step(s, batch, k_step, task_id, first)
        skip = lambda s: (s, jax.tree_util.tree_map(lambda m: jnp.zeros(m.shape, m.dtype), jax.eval_shape(run, s)[1]))
        return jax.lax.cond(mask_s.any(), run, skip, state)

    return jax.lax.scan(step, state, (idx, mask, jax.random.split(k_steps, idx.shape[0])))


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
        return total + count(x, labels[idx_s], mask_s), None

    total, _ = jax.lax.scan(step, init, (idx, mask, jax.random.split(key, idx.shape[0])))
    return total


@partial(jax.jit, static_argnames=("strategy", "spec", "batch_size", "mesh"))
def evaluate(state, context, images, labels, num_valid, task_id, key, *, strategy, spec, batch_size, mesh):
    """Test accuracy of task `task_id` on its (padded) test set, in fixed batches of `batch_size`."""
    count = lambda x, y, mask: masked_correct(strategy.eval_logits(state, context, x, mask, task_id), y, mask)
    correct = _sum_over_test_set(count, jnp.zeros((), jnp.int32), images, labels, num_valid, key, spec=spec,
                                 batch_size=batch_size, mesh=mesh)
    return correct / num_valid


# The accuracies without task ids, in the order `evaluate_without_task_id` returns them.
WITHOUT_TASK_IDS = ("class_incremental", "task_inference")


@partial(jax.jit, static_argnames=("strategy", "spec", "batch_size", "mesh"))
def evaluate_without_task_id(state, context, images, labels, num_valid, task_id, num_learned, key, *, strategy,
                             spec, batch_size, mesh):
    """Accuracies on task `task_id`'s test set when each sample's task is inferred by predictive
    entropy among the learned tasks 0..num_learned−1 (`phn_jax.task_inference`): float [2] =
    (class-incremental accuracy, task-inference accuracy), as `WITHOUT_TASK_IDS` names them."""
    def count(x, y, mask):
        logits = strategy.eval_logits_all_tasks(state, context, x, mask)
        return task_inference.inferred_correct(logits, y, mask, task_id, num_learned)

    correct = _sum_over_test_set(count, jnp.zeros((2,), jnp.int32), images, labels, num_valid, key, spec=spec,
                                 batch_size=batch_size, mesh=mesh)
    return correct / num_valid


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
    """What a run is made of, built from its config before anything is written."""

    config: object
    stream: data.Stream
    strategy: object
    mesh: Mesh
    cumulative: bool         # Joint: trains experience t on the union of experiences 0..t
    without_task_ids: bool   # also evaluate with the task inferred (eval.task_inference, if the strategy can)

    @property
    def num_experiences(self) -> int:
        return self.stream.num_experiences

    @property
    def epochs(self) -> int:
        return self.config.train.epochs


def setup(config) -> Setup:
    """Checks the config (`phn_jax.config.RULES`), then builds the stream (a missing dataset stops
    here with its clear error, before any compilation), the strategy and the mesh of every device
    (`train.num_devices`: 0 = all), and checks the batch sizes against them. Raises ConfigError."""
    check_config(config)
    stream = data.build_stream(config.data)
    strategy = create_strategy(config, stream)
    cumulative = getattr(strategy, "cumulative", False)
    _pipeline(stream, 0, cumulative)
    mesh = runtime.make_mesh(config.train.num_devices)
    smallest = min(e.train_labels.shape[0] for e in stream.experiences)
    problems = [f"train.{name}={config.train[name]} is not a multiple of the {mesh.size} devices (each device "
                "takes an equal share of a batch)" for name in ("batch_size", "eval_batch_size")
                if config.train[name] % mesh.size]
    if config.train.batch_size > smallest:
        problems.append(f"train.batch_size={config.train.batch_size} is larger than the smallest experience "
                        f"of stream {stream.name!r} ({smallest} training samples)")
    if problems:
        raise ConfigError("; ".join(problems) + ". Choose batch sizes that fit, with --config.train.batch_size= "
                          "and --config.train.eval_batch_size=.")
    without = bool(config.eval.task_inference and task_inference.supports_task_inference(strategy))
    return Setup(config, stream, strategy, mesh, cumulative, without)


@dataclasses.dataclass
class Progress:
    """Where a run stands; a checkpoint's metadata holds it (JSON).

    R: accuracy matrix [T, T] (NaN where not evaluated); inferred: the class-incremental and
    task-inference matrices ({} when not evaluated without task ids); times: seconds of each
    completed experience; history: one row per epoch (HISTORY_COLUMNS); experience: the one being
    trained (T when the run is done); epoch: its epochs completed; elapsed_s: time spent in it.
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


class Checkpointer:
    """Checkpoints of one run, the stop requests, and the results files that follow each.

    `safe_point` (between epochs) writes a checkpoint when `every_minutes` have passed since the
    last one or a stop was requested (any process: SIGTERM/SIGINT), then raises
    `rundir.Interrupted` on a stop. `end_of_experience` always writes one, then (process 0) the
    metrics, plots and history: results are never on disk before the checkpoint that holds them.
    """

    def __init__(self, s: Setup, workdir: Path, mngr, stop: rundir.StopRequests, config_json: dict):
        self.s, self.workdir, self.mngr, self.stop, self.config_json = s, workdir, mngr, stop, config_json
        self.every_s = 60.0 * s.config.checkpoint.get("every_minutes", 5.0)
        self.last = time.monotonic()

    def save(self, state, progress: Progress) -> None:
        checkpoint.save(self.mngr, progress.step(self.s.epochs), state,
                        {"config": self.config_json, "progress": progress.to_json()})
        self.last = time.monotonic()

    def _stop_if_asked(self, stop: bool, where: str) -> None:
        if stop:
            raise rundir.Interrupted(self.stop.signal_name or "a signal to another process", where)

    def safe_point(self, state, progress: Progress) -> None:
        stop, due = runtime.agree(self.stop.signal_name is not None, time.monotonic() - self.last >= self.every_s)
        if stop or due:
            self.save(state, progress)
        self._stop_if_asked(stop, f"in experience {progress.experience + 1}, after epoch {progress.epoch} of "
                                  f"{self.s.epochs}")

    def end_of_experience(self, state, progress: Progress) -> None:
        self.save(state, progress)
        if runtime.is_main_process():
            write_results(self.workdir, progress, self.s.strategy.memory(state))
        stop, _ = runtime.agree(self.stop.signal_name is not None, False)
        if progress.experience < self.s.num_experiences:
            self._stop_if_asked(stop, f"after experience {progress.experience}")


def write_results(workdir: Path, progress: Progress, memory: dict) -> dict:
    """metrics.json, the CSVs and plots of the completed experiences, and train_history.csv."""
    summary = progress.summary(memory)
    report.write_report(workdir, summary)
    report.write_table(workdir / "train_history.csv", HISTORY_COLUMNS, progress.history)
    return summary


def train_epochs(s: Setup, state, progress: Progress, arrays, spec, k_train, ckpt: Checkpointer):
    """Epochs progress.epoch..E−1 of experience t = progress.experience on `arrays` = (images,
    labels, tasks, num_valid); appends each epoch's row to the history; a safe point between
    epochs. Raises NonFiniteLossError when the loss is NaN or infinite."""
    t, (images, labels, tasks, n_valid) = progress.experience, arrays
    bar = tqdm(range(progress.epoch, s.epochs), initial=progress.epoch, total=s.epochs, unit="epoch",
               desc=f"experience {t + 1}/{s.num_experiences}", disable=not s.config.train.progress, leave=False)
    for epoch in bar:
        tic = time.perf_counter()
        with _device_memory("train.batch_size", s.config.train.batch_size, "training"):
            state, step_metrics = train_epoch(
                state, images, labels, tasks, n_valid, t, jax.random.fold_in(k_train, epoch), strategy=s.strategy,
                spec=spec, batch_size=s.config.train.batch_size, first=t == 0, mesh=s.mesh)
            step_metrics = jax.device_get(step_metrics)  # waits for the epoch: its time is real
        row = _epoch_row(t, epoch, step_metrics, time.perf_counter() - tic)
        if not math.isfinite(row["loss"]):
            raise NonFiniteLossError(
                f"the training loss became {row['loss']} in experience {t + 1}, epoch {epoch + 1}. Results and "
                f"checkpoints up to experience {t} in {ckpt.workdir} are kept. Lower optim.lr, or check the data "
                "(NaN inputs) and the config")
        progress.history.append(row)
        progress.epoch = epoch + 1
        progress.elapsed_s += row["time_s"]
        bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['train_accuracy']:.3f}")
        if progress.epoch < s.epochs:  # after the last epoch, the experience's own checkpoint follows
            ckpt.safe_point(state, progress)
    return state


def evaluate_seen(s: Setup, state, progress: Progress, tests, k_eval) -> None:
    """Row t of R (and of the matrices without task ids): every experience j ≤ t on its test set."""
    with _device_memory("train.eval_batch_size", s.config.train.eval_batch_size, "evaluating"):
        _evaluate_seen(s, state, progress, tests, k_eval)


def _evaluate_seen(s: Setup, state, progress: Progress, tests, k_eval) -> None:
    t = progress.experience
    context = s.strategy.eval_context(state)
    for j in range(t + 1):
        x, y, n = tests[j]
        kw = dict(strategy=s.strategy, spec=s.stream.experiences[j].preprocess,
                  batch_size=s.config.train.eval_batch_size, mesh=s.mesh)
        progress.R[t, j] = float(evaluate(state, context, x, y, n, j, jax.random.fold_in(k_eval, j), **kw))
        if progress.inferred:  # the task inferred among the t + 1 learned ones
            accs = evaluate_without_task_id(state, context, x, y, n, j, t + 1, jax.random.fold_in(k_eval, j), **kw)
            for m, a in zip(WITHOUT_TASK_IDS, jax.device_get(accs)):
                progress.inferred[m][t, j] = float(a)


def _log_experience(log, progress: Progress, summary: dict) -> None:
    t, T = progress.experience - 1, progress.R.shape[0]
    log.info("experience %d/%d: %.1f s, accuracy %s; ACA %.4f, forgetting %s", t + 1, T, progress.times[-1],
             " ".join(f"{a:.3f}" for a in progress.R[t, :t + 1]), summary["aca"],
             "n/a" if summary["forgetting"] is None else f"{summary['forgetting']:.4f}")
    if progress.inferred:
        log.info("  without task ids (entropy task inference): class-incremental accuracy %.4f, "
                 "task inference %.4f", summary["class_incremental_accuracy"], summary["task_inference_accuracy"])


def run_stream(s: Setup, state, progress: Progress, ckpt: Checkpointer, log) -> dict:
    """The experience loop from where `progress` stands to the end of the stream; the summary."""
    T, stream, mesh = s.num_experiences, s.stream, s.mesh
    _, k_stream = jax.random.split(jax.random.key(s.config.seed))
    # A cumulative strategy (Joint) trains on the union of experiences 0..t: pad to the stream's size.
    sizes = [e.train_labels.shape[0] for e in stream.experiences]
    n_train = sum(sizes) if s.cumulative else max(sizes)
    n_test = max(e.test_labels.shape[0] for e in stream.experiences)
    tests = [(*runtime.replicate((_pad(e.test_images, n_test), _pad(e.test_labels, n_test)), mesh),
              e.test_labels.shape[0]) for e in stream.experiences]
    for t in range(progress.experience, T):
        k_train, k_eval = jax.random.split(jax.random.fold_in(k_stream, t))
        k_end = jax.random.fold_in(k_eval, T)  # end_experience's (evaluation uses fold_in(k_eval, j), j < T)
        images, labels, tasks, spec = _training_set(stream, t, s.cumulative)
        n_valid = labels.shape[0]
        images, labels, tasks = runtime.replicate((_pad(images, n_train), _pad(labels, n_train),
                                                   _pad(tasks, n_train)), mesh)
        tic = time.perf_counter() - progress.elapsed_s
        if progress.epoch == 0:  # (a checkpoint inside the experience holds the state after it)
            state = runtime.replicate(s.strategy.begin_experience(state, t), mesh)
        state = train_epochs(s, state, progress, (images, labels, tasks, n_valid), spec, k_train, ckpt)
        state = s.strategy.end_experience(state, t, TrainData(images, labels, tasks, n_valid, spec, k_end))
        evaluate_seen(s, state, progress, tests, k_eval)
        progress.times.append(time.perf_counter() - tic)
        progress.experience, progress.epoch, progress.elapsed_s = t + 1, 0, 0.0
        _log_experience(log, progress, progress.summary(s.strategy.memory(state)))
        ckpt.end_of_experience(state, progress)
    summary = progress.summary(s.strategy.memory(state))
    log.info("done: ACA %.4f, learning accuracy %.4f, forgetting %s, %.1f s", summary["aca"],
             summary["learning_accuracy"], summary["forgetting"], summary["total_time_s"])
    return summary


@contextlib.contextmanager
def _own(workdir: Path):
    """Process 0 creates the run directory and holds its lock; every process learns whether it did."""
    failure = None
    with contextlib.ExitStack() as stack:
        if runtime.is_main_process():
            try:
                rundir.ensure_writable(workdir)
                stack.enter_context(rundir.lock(workdir))
            except (rundir.WorkdirError, rundir.RunLockedError) as err:
                failure = err
        if runtime.agree(failure is not None, False)[0]:
            raise failure or rundir.RunLockedError(f"process 0 could not take the run directory {workdir}")
        yield


def train_and_evaluate(config, workdir: str | Path, *, resume: bool = False) -> dict:
    """Runs the stream of `config` with its strategy; writes the run directory; returns the summary.

    resume=False refuses a workdir that already holds checkpoints (never overwrites a run);
    resume=True continues from the latest checkpoint (or starts if there is none). A SIGTERM or
    SIGINT stops the run at the next safe point with a checkpoint (`rundir.Interrupted`).
    """
    workdir = Path(workdir)
    s = setup(config)
    main = runtime.is_main_process()
    with _own(workdir), rundir.StopRequests() as stop:
        mngr = checkpoint.manager(workdir, config.checkpoint.max_to_keep)
        if mngr.latest_step() is not None and not resume:
            raise FileExistsError(f"{workdir} already holds a run (checkpoint step {mngr.latest_step()}); pass "
                                  "--resume (RESUME=1) to continue it, or choose another --workdir")
        config_json = metrics.jsonable(config.to_dict(), default=repr)
        k_init, _ = jax.random.split(jax.random.key(config.seed))
        state = runtime.replicate(init_state(k_init, strategy=s.strategy), s.mesh)
        progress = Progress.start(s)
        # before the log is opened: a refused resume (another config) leaves the run directory as it was
        damaged = []
        restored = (checkpoint.restore_latest(mngr, state, config_json, RESUMABLE_FIELDS, warn=damaged.append,
                                              move=main) if resume else None)
        with report.run_log(workdir, to_file=main) as log:
            topology = runtime.Topology.of(s.mesh)
            log.info("running on %s", topology.describe())
            for warning in damaged:
                log.warning("%s", warning)
            if restored is not None:
                _, state, meta = restored
                progress = Progress.from_json(meta["progress"])
                if progress.epoch:
                    log.info("resumed from the checkpoint in experience %d/%d, after epoch %d/%d",
                             progress.experience + 1, s.num_experiences, progress.epoch, s.epochs)
                else:
                    log.info("resumed from the checkpoint after experience %d/%d", progress.experience,
                             s.num_experiences)
            elif resume:
                log.info("no checkpoint in %s: starting from the first experience", workdir)
            if main:
                report.write_config(workdir, config)
                report.write_json(workdir / "stream.json", s.stream.describe())
                report.write_json(workdir / "runtime.json", dataclasses.asdict(topology))
                if progress.times:  # a kill between a checkpoint and its results files: write them again
                    write_results(workdir, progress, s.strategy.memory(state))
            log.info("stream %s: %d experiences of %d classes; strategy %s, freeze depth %d, |psi| = %d",
                     s.stream.name, s.num_experiences, s.stream.classes_per_experience, config.strategy.name,
                     config.strategy.freeze_depth, s.strategy.memory(state).get("hypernetwork_params", 0))
            ckpt = Checkpointer(s, workdir, mngr, stop, config_json)
            return run_stream(s, state, progress, ckpt, log)
