"""Checkpoints of a continual-learning run: orbax `CheckpointManager`, with a checksum of every array.

A checkpoint holds everything the run needs to go on from where it was written (after an
experience, or between two epochs of one; the engine numbers steps by epochs completed):
  state    the strategy's state pytree (parameters, optimizer state, targets, statistics),
           restored into the structure, dtypes and shardings of a freshly initialised one;
  meta     JSON: the resolved config, the run's progress (accuracy matrices, times, training
           history, experience and epoch), and a format version;
  digests  JSON: the SHA-256 of each array's bytes (with its dtype and shape) and of `meta`,
           computed from the values in memory as they are saved (`digests`).
Every process of a multi-process run calls `save` and `restore_latest` (orbax coordinates them).
orbax writes a step to a temporary directory and renames it when complete (all three items
together), so a run killed while saving leaves the previous checkpoints intact. A restore
recomputes the digests of what it read: bytes changed on disk (a bad sector, a faulty copy, a
stray write) are damage, caught wherever they land, like a file that cannot be read.

What orbax and TensorStore print while a save or a restore fails (pages of spec, tracebacks from
their threads) goes to `checkpoint_errors.txt` in the run directory, never to the terminal.
"""
from __future__ import annotations

import contextlib
import datetime
import gc
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

# 3: HN's targets are the hypernetwork's factored outputs (`Hypernetwork.snapshot`), no longer every
# task's full ω, and EWC's state is its merged penalty (`ewc.consolidate`), no longer per-task stacks;
# 4: a chunked hypernetwork's targets are its chunks (`ChunkedHypernetwork.snapshot`), no longer ω's pytree;
# 5: the `digests` item (the same state and meta as 4).
# A checkpoint of a version not in READABLE is refused with a clear error, never moved aside.
FORMAT_VERSION = 5
READABLE = (4, 5)  # 4: written before checksums, restored unverified
CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "checkpoints-damaged"  # damaged checkpoints moved aside, for inspection
ERRORS_FILE = "checkpoint_errors.txt"  # beside checkpoints/: what orbax printed while a save or restore failed
DIGEST = "sha256"
FILES = "files.sha256"  # in each checkpoint: the digest of each of its files (`_write_file_digests`)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used for this run (corrupt, or from another config)."""


class NoIntactCheckpointError(CheckpointError):
    """Every checkpoint of a run is damaged."""


def manager(workdir: str | os.PathLike, max_to_keep: int = 2) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        Path(workdir).absolute() / CHECKPOINT_DIR,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))


def leaf_name(path) -> str:
    """A pytree leaf's name, 'opt/0/mu/psi/w', the same whether the tree is the run's own (optax
    states are named tuples) or orbax's restore without a template (every node a dict or list)."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _host_values(x) -> np.ndarray:
    """The values of a leaf on this host, C-contiguous: a jax.Array's first local copy (every leaf of a
    run's state is replicated, `runtime.replicate`), or the NumPy value itself."""
    if isinstance(x, jax.Array):
        if not x.is_fully_replicated:
            raise ValueError(f"a checkpointed array must be replicated, got sharding {x.sharding}")
        x = x.addressable_data(0)
    return np.ascontiguousarray(np.asarray(x))


def _meta_digest(meta: dict) -> str:
    return hashlib.new(DIGEST, json.dumps(meta, sort_keys=True).encode()).hexdigest()


def digests(state, meta: dict) -> dict:
    """{'algorithm': 'sha256', 'meta': the digest of `meta`'s JSON (keys sorted), 'arrays': {leaf_name:
    {'dtype', 'shape', 'sha256' of its bytes in C order}}}: what a restore compares what it read with."""
    arrays = {}
    for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
        values = _host_values(x)
        arrays[leaf_name(path)] = {"dtype": values.dtype.name, "shape": list(values.shape),
                                   DIGEST: hashlib.new(DIGEST, values.reshape(-1).view(np.uint8)).hexdigest()}
    return {"algorithm": DIGEST, "meta": _meta_digest(meta), "arrays": arrays}


class _Damaged(Exception):
    """A checkpoint that cannot be read: its files are truncated, garbled or missing, or its bytes
    differ from the checksums written with it."""


def _check_arrays(state, recorded: dict) -> None:
    """Compares the arrays of `state` as restored with the `digests(...)['arrays']` recorded when they
    were saved. _Damaged naming the first array whose bytes differ; CheckpointError when an array was
    restored as another dtype than it was saved in (e.g. JAX_ENABLE_X64 changed)."""
    now = digests(state, {})["arrays"]
    if set(now) != set(recorded):
        raise _Damaged(f"its arrays {sorted(set(now) ^ set(recorded))[:3]} have no checksum")
    for name, d in now.items():
        saved = recorded[name]
        if d["dtype"] != saved.get("dtype"):
            raise CheckpointError(f"array {name} was saved as {saved.get('dtype')} and restored as {d['dtype']}: "
                                  "resume with the JAX_ENABLE_X64 setting the run started with")
        if d != saved:
            raise _Damaged(f"array {name} does not match its checksum (its bytes changed on disk)")


def _first_line(err: Exception, limit: int = 160) -> str:
    """orbax/TensorStore errors carry pages of spec: the first line says what is wrong."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". See full TensorStore")[0]
    return line if len(line) <= limit else line[:limit] + "..."


def errors_file(directory: str | os.PathLike) -> Path | None:
    """Where process 0 keeps what orbax prints while a checkpoint of `directory` (a CheckpointManager's)
    fails: `checkpoint_errors.txt` beside it; None (nowhere) for the other processes of a job."""
    return Path(directory).parent / ERRORS_FILE if jax.process_index() == 0 else None


def open_errors_file(path: Path | None, header: str):
    """(f, start, end): `path` opened for appending with `header` written and flushed (start, end: the
    offsets before and after it), or os.devnull (0, 0) where `path` is None or cannot be written (a
    full disk, a read-only directory)."""
    f = None
    try:
        f = open(path, "a") if path is not None else open(os.devnull, "w")
        start = f.tell()
        f.write(header)
        f.flush()
        return f, start, f.tell()
    except OSError:
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()
        return open(os.devnull, "w"), 0, 0


@contextlib.contextmanager
def stderr_to(path: Path | None, what: str):
    """Sends the process's stderr (file descriptor 2: TensorStore's and orbax's threads print pages of
    spec and tracebacks there when a read or write fails) to `path` for the duration, appended after
    a line naming `what` and the time; nothing is left there when nothing was printed. `path` None,
    or a file that cannot be opened (a full disk, a read-only directory): os.devnull."""
    sys.stderr.flush()
    f, start, header_end = open_errors_file(
        path, f"== {what}, {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}\n")
    saved = os.dup(2)
    failed = True
    try:
        with contextlib.redirect_stderr(f):  # Python's writes too, where sys.stderr is not fd 2
            os.dup2(f.fileno(), 2)
            try:
                yield
                failed = False
            finally:
                if failed:
                    time.sleep(0.5)  # the failing read's or write's callbacks report from other threads,
                    gc.collect()  # and its abandoned coroutines when they are collected
                # fd 2 back first: flushing f fails on a full disk, and must not leave the terminal on f
                os.dup2(saved, 2)
                with contextlib.suppress(OSError):
                    f.flush()
                    if f.tell() == header_end:  # nothing printed: leave the file as it was
                        f.truncate(start)
    finally:
        os.close(saved)
        with contextlib.suppress(OSError):  # (its buffer cannot be written to a full disk)
            f.close()
        if path is not None:
            with contextlib.suppress(OSError):
                if path.stat().st_size == 0:
                    path.unlink()


def save(mngr: ocp.CheckpointManager, step: int, state, meta: dict) -> None:
    """Saves (state, meta) as `step`, with the digests of both, and waits until it is on disk."""
    meta = {**meta, "format_version": FORMAT_VERSION}
    with stderr_to(errors_file(mngr.directory), f"saving checkpoint {step}"):
        mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta),
                                                digests=ocp.args.JsonSave(digests(state, meta))))
        mngr.wait_until_finished()
        if jax.process_index() == 0:
            _write_file_digests(Path(mngr.directory) / str(step))


def _file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, DIGEST).hexdigest()


def _write_file_digests(step_dir: Path) -> None:
    """`files.sha256` in a committed checkpoint: the digest of every file orbax wrote, in
    `sha256sum`'s format (`cd <step> && sha256sum -c files.sha256` checks it by hand). Written after
    orbax's commit (a temporary file, then a rename): a kill in between leaves a checkpoint whose
    arrays are still verified by its `digests` item."""
    lines = [f"{_file_digest(f)}  {f.relative_to(step_dir).as_posix()}\n"
             for f in sorted(step_dir.rglob("*")) if f.is_file() and f.name not in (FILES, FILES + ".tmp")]
    tmp = step_dir / (FILES + ".tmp")
    tmp.write_text("".join(lines))
    os.replace(tmp, step_dir / FILES)


def _check_files(step_dir: Path) -> bool:
    """Compares every file of a checkpoint with its `files.sha256`; _Damaged naming the first that
    is missing or differs. False when the checkpoint has no such list (killed before it was written)."""
    listed = step_dir / FILES
    if not listed.is_file():
        return False
    try:
        lines = listed.read_text().splitlines()
    except UnicodeDecodeError:
        lines = [""]
    for line in lines:
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name or any(c not in "0123456789abcdef" for c in digest):
            raise _Damaged(f"its list of checksums {FILES} is garbled")
        try:
            ok = _file_digest(step_dir / name) == digest
        except FileNotFoundError:
            raise _Damaged(f"its file {name} is missing") from None
        if not ok:
            raise _Damaged(f"its file {name} does not match its checksum (its bytes changed on disk)")
    return True


def _read(mngr: ocp.CheckpointManager, step: int, abstract=None, differences=lambda meta: []):
    """(state, meta, what was verified: 'files and arrays', 'arrays' (a checkpoint without
    `files.sha256`), or None (format 4)) of checkpoint `step`. `abstract`: the state's structure, dtypes and
    shardings (None: as saved, host arrays). `differences(meta)`: how the saved config differs from the
    run's (any: CheckpointError, before the arrays are read). _Damaged when it cannot be read or
    differs from its digests."""
    where = Path(mngr.directory) / str(step)
    files = _check_files(where)
    try:
        meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as err:  # orbax raises many types for a damaged directory
        raise _Damaged(f"its metadata cannot be read ({_first_line(err)})") from err
    if not isinstance(meta, dict):
        raise _Damaged("its metadata is not a JSON object")
    try:  # (before the version: a changed byte in the metadata is damage, whatever it says)
        recorded, unreadable = mngr.restore(step, args=ocp.args.Composite(digests=ocp.args.JsonRestore()))["digests"], None
    except Exception as err:  # (a checkpoint of format 4 has none)
        recorded, unreadable = None, err
    if recorded is not None:
        if not isinstance(recorded, dict) or recorded.get("algorithm") != DIGEST or \
                not isinstance(recorded.get("arrays"), dict):
            raise _Damaged("its checksums are not readable")
        if _meta_digest(meta) != recorded.get("meta"):
            raise _Damaged("its metadata (config and progress) does not match its checksum")
    version = meta.get("format_version")
    if version not in READABLE:
        raise CheckpointError(f"checkpoint {where} has format version {version!r}, this phn_jax reads "
                              f"{', '.join(map(str, READABLE))}: start a new --workdir")
    if recorded is None and version >= 5:
        raise _Damaged(f"its checksums cannot be read ({_first_line(unreadable)})") from unreadable
    diffs = differences(meta)
    if diffs:
        raise CheckpointError(f"checkpoint {where} belongs to a different config:\n  " + "\n  ".join(diffs) +
                              "\nResume with the config the run started with, or start a new --workdir.")
    try:
        state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    except Exception as err:
        raise _Damaged(f"its arrays cannot be read ({_first_line(err)})") from err
    if recorded is not None:
        _check_arrays(state, recorded["arrays"])
    return state, meta, None if recorded is None else "files and arrays" if files else "arrays"


def steps(directory: Path) -> list[int]:
    """The steps of the committed checkpoints in `directory` (a checkpoints/ folder; [] when absent),
    ascending, read from their names without opening a manager."""
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def _reader(directory: Path) -> ocp.CheckpointManager:
    """A manager that reads `directory` without creating or changing anything there."""
    return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))


def read_latest(workdir: str | os.PathLike) -> tuple[int, dict, dict]:
    """(step, state, meta) of the newest checkpoint of another run's `workdir`, read as saved (host
    arrays, no template) and verified, without creating or changing anything there. CheckpointError
    if it has none, or if it is damaged."""
    directory = Path(workdir).absolute() / CHECKPOINT_DIR
    saved = steps(directory)
    if not saved:
        raise CheckpointError(f"{workdir} holds no checkpoint ({directory} is missing or empty): name the "
                              "directory of a phn_jax run that finished at least one experience")
    with stderr_to(None, f"reading checkpoint {saved[-1]}"):
        try:
            state, meta, _ = _read(_reader(directory), saved[-1])
        except _Damaged as err:
            raise CheckpointError(f"checkpoint {directory / str(saved[-1])} is damaged: {err}. Resume that run "
                                  "(--resume) to fall back to its previous checkpoint, or restore it from a backup; "
                                  "make verify RUN=<dir> checks every checkpoint") from None
    return saved[-1], jax.device_get(state), meta


class Verified(NamedTuple):
    """What `verify_run` found in one checkpoint."""

    step: int
    damage: str | None  # why it is damaged; None when it was read whole
    description: str    # what it holds and what was checked ('' when damaged)
    verified: bool      # its digests were checked (False: format 4, written before checksums)


def verify_run(workdir: str | os.PathLike) -> list[Verified]:
    """Reads every checkpoint in `workdir` (the directory holding checkpoints/: for one seed of a
    multi-seed run, its group's, `rundir.checkpointed_run`) and checks it against its digests, changing
    nothing: one `Verified` per checkpoint, oldest first. CheckpointError when there is no checkpoint."""
    workdir = Path(workdir)
    directory = workdir.absolute() / CHECKPOINT_DIR
    saved = steps(directory)
    if not saved:
        raise CheckpointError(f"{workdir} holds no checkpoint ({directory} is missing or empty): name a phn_jax "
                              "run directory")
    mngr, out = _reader(directory), []
    errors = errors_file(directory) if os.access(workdir, os.W_OK) else None
    for step in saved:
        try:
            with stderr_to(errors, f"verifying checkpoint {step}"):
                state, meta, checked = _read(mngr, step)
        except _Damaged as err:
            out.append(Verified(step, str(err), "", False))
            continue
        sizes = [np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(state)]
        progress = meta.get("progress", {})
        at = progress[0] if isinstance(progress, list) else progress
        out.append(Verified(step, None, f"{len(sizes)} arrays, {sum(sizes) / 1e6:.1f} MB, experience "
                                        f"{at.get('experience', '?')} epoch {at.get('epoch', '?')}; " +
                            (f"its {checked} match their {DIGEST}" if checked else
                             "written before checksums (format 4): nothing to check it against"), bool(checked)))
    return out


def _config_diff(saved: dict, current: dict, prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _config_diff(a, b, f"{prefix}{key}.")
        elif json.dumps(a) != json.dumps(b):
            diffs.append(f"{prefix}{key}: checkpoint {a!r}, now {b!r}")
    return diffs


def restore_latest(mngr: ocp.CheckpointManager, abstract_state, config: dict, ignore: tuple[str, ...] = (),
                   warn=None, move: bool = True, complete=lambda saved: saved):
    """(step, state, meta) of the newest intact checkpoint, or None if there is none.

    A damaged checkpoint (a truncated, garbled or missing file, or bytes that differ from its
    digests) is named in one sentence (given to `warn`, e.g. a logger's warning), moved aside to
    `checkpoints-damaged/` beside `checkpoints/` for inspection, and the next newest is tried
    (`move=False`: not moved; the processes other than 0 of a multi-process run leave the moving to
    process 0). When none is intact, CheckpointError, and nothing is moved. Raises CheckpointError
    too if a checkpoint was written by a different config (fields listed in `ignore`, e.g. the
    progress bar, may differ; `complete` fills in the saved config's missing fields first, e.g.
    `config.with_defaults`) or format. What orbax prints meanwhile: `checkpoint_errors.txt`.
    """
    newest_first = sorted(mngr.all_steps(), reverse=True)
    if not newest_first:
        return None
    # the shardings of `abstract_state` too (replicated over the run's mesh), not the saving run's devices
    abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                                      abstract_state)
    where = lambda step: Path(mngr.directory) / str(step)

    def differences(meta):
        return [d for d in _config_diff(complete(meta.get("config", {})), config) if not d.startswith(ignore)]

    damaged, errors = [], errors_file(mngr.directory) if move else None
    for step in newest_first:
        try:
            with stderr_to(errors, f"restoring checkpoint {step}"):
                state, meta, checked = _read(mngr, step, abstract, differences)
        except _Damaged as err:
            damaged.append((step, str(err)))
            continue
        aside = Path(mngr.directory).parent / DAMAGED_DIR
        for bad, why in damaged:
            target = aside / f"{bad}-{time.strftime('%Y%m%d-%H%M%S')}"
            if move:
                aside.mkdir(exist_ok=True)
                os.replace(where(bad), target)
            if warn is not None:
                warn(f"checkpoint {bad} is damaged: {why}; moved to {target}, resuming from checkpoint {step}")
        if checked is None and warn is not None:
            warn(f"checkpoint {step} was written before checksums (format 4): restored without verifying it")
        if damaged and move:
            mngr.reload()
        return step, state, meta
    raise NoIntactCheckpointError(
        f"no intact checkpoint in {mngr.directory}: " + "; ".join(f"checkpoint {s}: {why}" for s, why in damaged) +
        f". Nothing was moved or deleted (what orbax printed is in {Path(mngr.directory).parent / ERRORS_FILE}); "
        "start a new --workdir, or restore the files from a backup.")
