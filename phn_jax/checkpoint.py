"""Checkpoints of a continual-learning run: orbax `CheckpointManager`.

A checkpoint holds everything the run needs to go on from where it was written (after an
experience, or between two epochs of one; the engine numbers steps by epochs completed):
  state  the strategy's state pytree (parameters, optimizer state, targets, statistics),
         restored into the structure, dtypes and shardings of a freshly initialised one;
  meta   JSON: the resolved config, the run's progress (accuracy matrices, times, training
         history, experience and epoch), and a format version.
Every process of a multi-process run calls `save` and `restore_latest` (orbax coordinates them).
orbax writes a step to a temporary directory and renames it when complete, so a run killed
while saving leaves the previous checkpoints intact.
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import time
from pathlib import Path

import jax
import orbax.checkpoint as ocp

# 3: HN's targets are the hypernetwork's factored outputs (`Hypernetwork.snapshot`), no longer every
# task's full ω, and EWC's state is its merged penalty (`ewc.consolidate`), no longer per-task stacks;
# 4: a chunked hypernetwork's targets are its chunks (`ChunkedHypernetwork.snapshot`), no longer ω's pytree;
# a checkpoint of another version is refused with a clear error, never moved aside.
FORMAT_VERSION = 4
CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "checkpoints-damaged"  # damaged checkpoints moved aside, for inspection


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used for this run (corrupt, or from another config)."""


def manager(workdir: str | os.PathLike, max_to_keep: int = 2) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        Path(workdir).absolute() / CHECKPOINT_DIR,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))


def save(mngr: ocp.CheckpointManager, step: int, state, meta: dict) -> None:
    """Saves (state, meta) as `step` and waits until it is on disk."""
    meta = {**meta, "format_version": FORMAT_VERSION}
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    mngr.wait_until_finished()


def read_latest(workdir: str | os.PathLike) -> tuple[int, dict, dict]:
    """(step, state, meta) of the newest checkpoint of another run's `workdir`, read as saved (host
    arrays, no template), without creating or changing anything there. CheckpointError if it has none."""
    directory = Path(workdir).absolute() / CHECKPOINT_DIR
    steps = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []
    if not steps:
        raise CheckpointError(f"{workdir} holds no checkpoint ({directory} is missing or empty): name the "
                              "directory of a phn_jax run that finished at least one experience")
    mngr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
    restored = mngr.restore(steps[-1], args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                               meta=ocp.args.JsonRestore()))
    return steps[-1], jax.device_get(restored["state"]), restored["meta"]


def _config_diff(saved: dict, current: dict, prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _config_diff(a, b, f"{prefix}{key}.")
        elif json.dumps(a) != json.dumps(b):
            diffs.append(f"{prefix}{key}: checkpoint {a!r}, now {b!r}")
    return diffs


class _Damaged(Exception):
    """A checkpoint that cannot be read: its files are truncated, garbled or missing."""


def _first_line(err: Exception, limit: int = 160) -> str:
    """orbax/TensorStore errors carry pages of spec: the first line says what is wrong."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". See full TensorStore")[0]
    return line if len(line) <= limit else line[:limit] + "..."


@contextlib.contextmanager
def _stderr_to(path: Path):
    """Sends the process's stderr (file descriptor 2: TensorStore's and orbax's threads print pages
    of spec and tracebacks there when a read fails) to `path` for the duration, and a moment after."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "w") as f, contextlib.redirect_stderr(f):  # Python's writes too, where sys.stderr is not fd 2
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            time.sleep(0.5)  # the failing read's callbacks report from other threads,
            gc.collect()  # and its abandoned coroutines when they are collected
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _restore(mngr: ocp.CheckpointManager, step: int, abstract, config: dict, ignore: tuple[str, ...], complete):
    """(state, meta) of checkpoint `step`; _Damaged when it cannot be read, CheckpointError when it
    is of another config or format."""
    where = Path(mngr.directory) / str(step)
    try:
        meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as err:  # orbax raises many types for a damaged directory
        raise _Damaged(f"its metadata cannot be read ({_first_line(err)})") from err
    if not isinstance(meta, dict):
        raise _Damaged("its metadata is not a JSON object")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {where} has format version {meta.get('format_version')!r}, "
                              f"this phn_jax writes {FORMAT_VERSION}: start a new --workdir")
    diffs = [d for d in _config_diff(complete(meta.get("config", {})), config) if not d.startswith(ignore)]
    if diffs:
        raise CheckpointError(f"checkpoint {where} belongs to a different config:\n  " + "\n  ".join(diffs) +
                              "\nResume with the config the run started with, or start a new --workdir.")
    try:
        state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    except Exception as err:
        raise _Damaged(f"its arrays cannot be read ({_first_line(err)})") from err
    return state, meta


def restore_latest(mngr: ocp.CheckpointManager, abstract_state, config: dict, ignore: tuple[str, ...] = (),
                   warn=None, move: bool = True, complete=lambda saved: saved):
    """(step, state, meta) of the newest intact checkpoint, or None if there is none.

    A damaged checkpoint (a truncated, garbled or missing file) is named in one sentence (given
    to `warn`, e.g. a logger's warning), moved aside to `checkpoints-damaged/` beside `checkpoints/` for inspection, and the
    next newest is tried (`move=False`: not moved; the processes other than 0 of a multi-process
    run leave the moving to process 0). When none is intact, CheckpointError, and nothing is moved.
    Raises CheckpointError too if a checkpoint was written by a different config (fields listed
    in `ignore`, e.g. the progress bar, may differ; `complete` fills in the saved config's missing
    fields first, e.g. `config.with_defaults`) or format.
    """
    steps = sorted(mngr.all_steps(), reverse=True)
    if not steps:
        return None
    # the shardings of `abstract_state` too (replicated over the run's mesh), not the saving run's devices
    abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                                      abstract_state)
    damaged = []
    for step in steps:
        # what orbax prints, kept for inspection (by process 0; the others' goes nowhere)
        errors = Path(mngr.directory) / str(step) / "restore_errors.txt" if move else Path(os.devnull)
        try:
            with _stderr_to(errors):
                state, meta = _restore(mngr, step, abstract, config, ignore, complete)
        except _Damaged as err:
            damaged.append((step, str(err)))
            continue
        except CheckpointError:  # another config or format: the checkpoint is fine, nothing is left behind
            if move:
                errors.unlink(missing_ok=True)
            raise
        if move:
            errors.unlink()
        aside = Path(mngr.directory).parent / DAMAGED_DIR
        for bad, why in damaged:
            target = aside / f"{bad}-{time.strftime('%Y%m%d-%H%M%S')}"
            if move:
                aside.mkdir(exist_ok=True)
                os.replace(Path(mngr.directory) / str(bad), target)
            if warn is not None:
                warn(f"checkpoint {bad} is damaged: {why}; moved to {target}, resuming from checkpoint {step}")
        if damaged and move:
            mngr.reload()
        return step, state, meta
    raise CheckpointError(
        f"no intact checkpoint in {mngr.directory}: " + "; ".join(f"checkpoint {s}: {why}" for s, why in damaged) +
        f". Nothing was moved or deleted (what orbax reported is in each checkpoint's restore_errors.txt); start a "
        "new --workdir, or restore the files from a backup.")
