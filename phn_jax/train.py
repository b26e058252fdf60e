"""The continual-learning engine: one stream, one strategy, one run directory.

    train_and_evaluate(config, workdir, resume=False) -> summary

This module is the loop; its rooms are elsewhere:
  run_setup.setup(config)    the streams, the strategy and the device mesh, before anything is written
  programs                   the compiled programs (init_state, train_epoch, evaluate, ...)
  progress.Progress          where the run stands: accuracy matrices, times, history, experience, epoch
  rundir                     the run directory: lock, RunDirs, checks, group.json, frozen part
  report                     the results files and TensorBoard events (`report.Events`)
Here, read top-down from `train_and_evaluate`: the run directory and its lock, resume, then
`run_stream`, the experience loop, of `train_epochs` (the epochs of one experience, each one
`programs.train_epoch`) and `evaluate_seen` (row t of the accuracy matrix and, without task ids,
of the others); `Checkpointer`: orbax checkpoints every `checkpoint.every_minutes` and after each
experience, the stop requests (SIGTERM/SIGINT) and the results files.

For each experience t: `strategy.begin_experience`; `config.train.epochs` epochs, each one jitted
call that runs all of the epoch's batches on the device (`lax.scan`; shuffling, augmentation
and the step inside jit, explicit keys), or with `config.train.iterations` = I that many steps of
full batches drawn across epochs (von Oswald et al.'s loop), in ⌈I / S⌉ calls of an epoch's S
steps (`Setup.epochs`; "epoch" below is such a call); `strategy.end_experience`; evaluation of every
experience seen so far with its task id (weights of all tasks generated at once), filling row t
of the accuracy matrix R (with `eval.task_inference`, for a strategy that can, also rows of the
matrices without task ids: the task inferred, e.g. by predictive entropy,
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
import math
import time
from functools import partial
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from phn_jax import checkpoint, metrics, programs, report, rundir, runtime
from phn_jax.config import with_defaults
from phn_jax.metrics import WITHOUT_TASK_IDS
from phn_jax.programs import fold_in, split_key
from phn_jax.progress import Progress, epoch_row, history_columns, progress_from_json, progress_json
from phn_jax.rundir import RunDirs
from phn_jax.run_setup import Setup, memory_of, setup, test_sets, train_arrays, unstack_seeds, with_frozen_init

# Config fields that may change between an interrupted run and its resumption.
# (the device count too: a run may move to another machine, with float-level differences, docs/design.md §6)
RESUMABLE_FIELDS = ("train.progress", "train.num_devices", "train.seed_axis", "checkpoint.max_to_keep", "checkpoint.every_minutes",
                    "log.wandb")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class DeviceMemoryError(MemoryError):
    """A device ran out of memory; the message names the batch size to lower."""


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
    with rundir.own(dirs), rundir.StopRequests() as stop:
        rundir.check_dirs(dirs, resume)  # (before the checkpoint manager creates its directory)
        mngr = checkpoint.manager(dirs.workdir, config.checkpoint.max_to_keep)
        if mngr.latest_step() is not None and not resume:
            raise FileExistsError(f"{dirs.workdir} already holds a run (checkpoint step {mngr.latest_step()}); pass "
                                  "--resume (RESUME=1) to continue it, or choose another --workdir")
        config_json = metrics.jsonable(config.to_dict(), default=repr)
        k_init, _ = split_key(s.key())
        state = programs.init_state(k_init, strategy=s.strategy, seed_axis=s.seed_axis)
        if s.frozen_from_start:  # (a resumed run has it in its checkpoint: the restore overwrites it)
            state = with_frozen_init(s, state)
        state = runtime.replicate(state, s.mesh)
        progress = [Progress.start(s.num_experiences, s.without_task_ids) for _ in s.seeds]
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
                progress = progress_from_json(meta["progress"], s.stacked)
                at = progress[0]
                if at.epoch:
                    log.info("resumed from the checkpoint in experience %d/%d, after epoch %d/%d",
                             at.experience + 1, s.num_experiences, at.epoch, s.epochs)
                else:
                    log.info("resumed from the checkpoint after experience %d/%d", at.experience, s.num_experiences)
            elif resume:
                log.info("no checkpoint in %s: starting from the first experience", dirs.workdir)
            # events up to the checkpoint's step are on disk (flushed with it); later ones are written again
            events = report.Events(dirs.results, progress[0].step(s.epochs) + 1 if restored is not None else None,
                                   enabled=main, wandb=config.log.wandb, group=dirs.workdir.name, config=config_json)
            memory = memory_of(s.strategy, state, s.stacked)
            with contextlib.closing(events):
                if main:
                    rundir.write_run_files(dirs, s.config, s.configs, s.streams, topology)
                    if progress[0].times:  # a kill between a checkpoint and its results files: write them again
                        summaries = write_results(dirs, progress, memory, s.seeds)
                        if progress[0].epoch == 0:  # (may repeat the same values at the same step)
                            events.experience(progress, summaries, progress[0].step(s.epochs))
                log.info("stream %s: %d experiences of %d classes; strategy %s, freeze depth %d, |psi| = %d",
                         s.stream.name, s.num_experiences, s.stream.classes_per_experience, config.strategy.name,
                         config.strategy.freeze_depth, memory.get("hypernetwork_params", 0))
                summaries = run_stream(s, state, progress, Checkpointer(s, dirs, mngr, stop, config_json, events), log)
            return summaries if s.stacked else summaries[0]


def run_stream(s: Setup, state, progress: list[Progress], ckpt: Checkpointer, log) -> list[dict]:
    """The experience loop from where `progress` stands to the end of the stream; each seed's summary.
    It binds the compiled programs to the run (strategy, mesh, seed axis, batch sizes) for the pieces
    it calls, which take only what they use."""
    _, k_stream = split_key(s.key())
    seeds = s.seeds if s.stacked else None
    tests = test_sets(s.streams, s.mesh, s.stacked)
    on = dict(strategy=s.strategy, seed_axis=s.seed_axis)  # what every program takes
    evaluating = dict(on, batch_size=s.config.train.eval_batch_size, mesh=s.mesh)  # and the evaluations
    evaluate = partial(programs.evaluate, **evaluating)
    evaluate_without = partial(programs.evaluate_without_task_id, **evaluating) if s.without_task_ids else None
    specs = tuple(e.preprocess for e in s.stream.experiences)
    for t in range(progress[0].experience, s.num_experiences):
        k_train, k_eval = split_key(fold_in(k_stream, t))
        k_end = fold_in(k_eval, s.num_experiences)  # end_experience's (evaluation uses fold_in(k_eval, j), j < T)
        arrays, spec = train_arrays(s.streams, t, s.cumulative, s.mesh, s.stacked)
        tic = time.perf_counter() - progress[0].elapsed_s
        if progress[0].epoch == 0:  # (a checkpoint inside the experience holds the state after it)
            state = runtime.replicate(programs.begin_experience(state, t, **on), s.mesh)
        epoch = partial(programs.train_epoch, **on, spec=spec, batch_size=s.config.train.batch_size, first=s.first(t),
                        mesh=s.mesh, iterations=s.iterations, sweeps=s.sweeps)
        with _device_memory("train.batch_size", s.config.train.batch_size, "training"):
            state = train_epochs(epoch, state, progress, arrays, k_train, ckpt, epochs=s.epochs, seeds=seeds,
                                 label=f"experience {t + 1}/{s.num_experiences}", show=s.config.train.progress)
        state = programs.end_experience(state, *arrays, k_end, t, **on, spec=spec)
        with _device_memory("train.eval_batch_size", s.config.train.eval_batch_size, "evaluating"):
            evaluate_seen(state, progress, tests, k_eval, context=programs.eval_context(state, **on),
                          evaluate=evaluate, evaluate_without=evaluate_without, specs=specs, seeds=seeds)
        seconds = time.perf_counter() - tic
        for p in progress:
            p.times.append(seconds / len(progress))  # each seed's share of the program's time
            p.experience, p.epoch, p.elapsed_s = t + 1, 0, 0.0
        memory = memory_of(s.strategy, state, s.stacked)
        _log_experience(log, progress, [p.summary(memory) for p in progress], seeds, s.num_experiences)
        ckpt.end_of_experience(state, progress)
    memory = memory_of(s.strategy, state, s.stacked)
    summaries = [p.summary(memory) for p in progress]
    for seed, summary in zip(s.seeds, summaries):
        log.info("%sdone: ACA %.4f, learning accuracy %.4f, forgetting %s, %.1f s", f"seed {seed}: " if s.stacked
                 else "", summary["aca"], summary["learning_accuracy"], summary["forgetting"], summary["total_time_s"])
    if s.stacked:
        log.info("over seeds %s: %s", s.seeds, metrics.describe_aggregate(metrics.aggregate_seeds(summaries, s.seeds)))
    return summaries


def train_epochs(epoch_program, state, progress: list[Progress], arrays, k_train, ckpt: Checkpointer, *,
                 epochs: int, seeds: tuple | None, label: str, show: bool):
    """Epochs progress.epoch..E−1 (E = `epochs`) of experience t = progress.experience on `arrays` =
    (images, labels, tasks, num_valid) (each seed's, stacked, for a multi-seed run: `seeds`), each one
    call of `epoch_program` (`programs.train_epoch` bound to the run and the experience); appends each
    epoch's row to each seed's history; a safe point between epochs. A progress bar `label` where
    `show`. Raises NonFiniteLossError when a loss is NaN or infinite."""
    t = progress[0].experience
    bar = tqdm(range(progress[0].epoch, epochs), initial=progress[0].epoch, total=epochs, unit="epoch", desc=label,
               disable=not show, leave=False)
    for epoch in bar:
        tic = time.perf_counter()
        state, step_metrics = epoch_program(state, *arrays, t, fold_in(k_train, epoch), k_train, epoch)
        step_metrics = jax.device_get(step_metrics)  # waits for the epoch: its time is real
        seconds = time.perf_counter() - tic
        rows = [epoch_row(t, epoch, m, seconds / len(progress)) for m in unstack_seeds(step_metrics, seeds)]
        _check_finite(rows, seeds, ckpt.workdir)  # (above: each seed's share of the time)
        for p, row in zip(progress, rows):
            p.history.append(row)
            p.epoch, p.elapsed_s = epoch + 1, p.elapsed_s + seconds
        ckpt.events.epoch(rows, progress[0].step(epochs))
        bar.set_postfix(loss=f"{np.mean([r['loss'] for r in rows]):.3f}",
                        acc=f"{np.mean([r['train_accuracy'] for r in rows]):.3f}")
        if epoch + 1 < epochs:  # after the last epoch, the experience's own checkpoint follows
            ckpt.safe_point(state, progress)
    return state


def evaluate_seen(state, progress: list[Progress], tests, k_eval, *, context, evaluate, evaluate_without,
                  specs: tuple, seeds: tuple | None) -> None:
    """Row t of R (and of the matrices without task ids) for t = progress.experience: every experience
    j ≤ t on its test set `tests[j]` with its pipeline `specs[j]`, by `evaluate` (`programs.evaluate`
    bound to the run) and, where given, `evaluate_without` (`programs.evaluate_without_task_id`);
    `context`: the strategy's evaluation context of `state`."""
    t = progress[0].experience
    for j in range(t + 1):
        x, y, n = tests[j]
        # accuracies are counts over n, divided here: the same fraction is the same number in every matrix
        correct = evaluate(state, context, x, y, n, j, fold_in(k_eval, j), spec=specs[j])
        for p, c, n_j in zip(progress, unstack_seeds(jax.device_get(correct), seeds), unstack_seeds(n, seeds)):
            p.R[t, j] = int(c) / int(n_j)
        if evaluate_without:  # the task inferred among the t + 1 learned ones
            counts = evaluate_without(state, context, x, y, n, j, t + 1, fold_in(k_eval, j), spec=specs[j])
            for p, c, n_j in zip(progress, unstack_seeds(jax.device_get(counts), seeds), unstack_seeds(n, seeds)):
                for m, value in zip(WITHOUT_TASK_IDS, c):
                    if m in p.inferred:
                        p.inferred[m][t, j] = int(value) / int(n_j)


def _log_experience(log, progress: list[Progress], summaries: list[dict], seeds: tuple | None, T: int) -> None:
    """Each seed's line of the experience just completed (`seeds`: a multi-seed run's, else None), of T."""
    t = progress[0].experience - 1
    for seed, p, summary in zip(seeds or (None,), progress, summaries):
        log.info("%sexperience %d/%d: %.1f s, accuracy %s; ACA %.4f, forgetting %s",
                 f"seed {seed}: " if seeds else "", t + 1, T, p.times[-1],
                 " ".join(f"{a:.3f}" for a in p.R[t, :t + 1]), summary["aca"],
                 "n/a" if summary["forgetting"] is None else f"{summary['forgetting']:.4f}")
        if p.inferred:
            log.info("  without task ids: %s", ", ".join(f"{m.replace('_', '-')} {summary[m + '_accuracy']:.4f}"
                                                         for m in p.inferred))


class Checkpointer:
    """Checkpoints of one run, the stop requests, and the results files that follow each.

    `safe_point` (between epochs) writes a checkpoint when `every_minutes` have passed since the
    last one or a stop was requested (any process: SIGTERM/SIGINT), then raises
    `rundir.Interrupted` on a stop. `end_of_experience` always writes one, then (process 0) the
    metrics, plots, history and events: results are never on disk before the checkpoint that holds them.
    """

    def __init__(self, s: Setup, dirs: RunDirs, mngr, stop: rundir.StopRequests, config_json: dict,
                 events: report.Events):
        self.s, self.dirs, self.mngr, self.stop, self.config_json = s, dirs, mngr, stop, config_json
        self.events = events
        self.every_s = 60.0 * s.config.checkpoint.every_minutes
        self.last = time.monotonic()

    @property
    def workdir(self) -> Path:
        return self.dirs.workdir

    def save(self, state, progress: list[Progress]) -> None:
        checkpoint.save(self.mngr, progress[0].step(self.s.epochs), state,
                        {"config": self.config_json, "progress": progress_json(progress, self.s.stacked)})
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
            summaries = write_results(self.dirs, progress, memory_of(self.s.strategy, state, self.s.stacked), self.s.seeds)
            self.events.experience(progress, summaries, progress[0].step(self.s.epochs))
            self.events.flush()
        stop, _ = runtime.agree(self.stop.signal_name is not None, False)
        if progress[0].experience < self.s.num_experiences:
            self._stop_if_asked(stop, f"after experience {progress[0].experience}")


def write_results(dirs: RunDirs, progress: list[Progress], memory: dict, seeds: tuple) -> list[dict]:
    """Each seed's metrics.json, CSVs and plots of the completed experiences, and train_history.csv
    in its results directory; a multi-seed run's aggregate over its `seeds` in its workdir. Returns the
    seeds' summaries."""
    summaries = [p.summary(memory) for p in progress]
    for d, p, summary in zip(dirs.results, progress, summaries):
        report.write_report(d, summary)
        report.write_table(d / "train_history.csv", history_columns(p.history), p.history)
    if dirs.grouped:
        report.write_aggregate(dirs.workdir, metrics.aggregate_seeds(summaries, seeds))
    return summaries


def _check_finite(rows: list[dict], seeds: tuple | None, workdir: Path) -> None:
    """NonFiniteLossError for the first history row (one a seed; `seeds`: a multi-seed run's, else
    None) whose loss is NaN or infinite, saying what of the run in `workdir` is kept."""
    for seed, row in zip(seeds or (None,), rows):
        if not math.isfinite(row["loss"]):
            raise NonFiniteLossError(
                f"the training loss became {row['loss']} in experience {row['experience'] + 1}, epoch "
                f"{row['epoch'] + 1}{f' (seed {seed})' if seeds else ''}. " + (
                    f"The results and checkpoints of experience{'s 1..' if row['experience'] > 1 else ' '}"
                    f"{row['experience']} in {workdir} are kept. "
                    if row["experience"] else "No experience was completed: there are no results yet. ") +
                "Lower optim.lr, or check the data (NaN inputs) and the config")


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
