"""The run directory: its owner (the lock), where a run writes (`RunDirs`: each seed's results
directory and the group's, marked by group.json), the checks that keep a run from overwriting
another's, the files a run writes first (`write_run_files`), the frozen part read from another run's
directory (`load_frozen_part`), and the run's stop requests.

One writer per run directory: a run holds `workdir/run.lock` for its whole life, a JSON file created
with O_EXCL (atomic on local and network file systems) that names its holder beyond a pid: host,
the kernel's boot id, the process's start time as the OS counts it (clock ticks since boot,
/proc/<pid>/stat), a random token, the command. A second run, or a `--resume`, on a held directory
is refused at once, naming the holder and how to check it. A lock is stale, and taken over, when
on this host its process is gone, or its pid now belongs to another process (another start time:
a restarted container's pid 1, a reused pid), or the kernel has booted since (another boot id);
and this process never refuses a lock with its own pid unless it holds it itself. A lock of
another host cannot be checked from here: the message says what to delete when that run is gone.
In a multi-process job, process 0 holds it.

Stop requests: SIGTERM (cloud preemption, `kill`, SLURM's time limit) and SIGINT (Ctrl-C) do not
kill a run. The first one is recorded; the engine sees it at its next safe point (the end of the
current epoch), writes a checkpoint and raises `Interrupted`, which the command line reports in
one sentence with how to resume. A second signal exits at once: every file of the run is written
atomically (a temporary file or directory, then a rename), so nothing is left half-written.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import secrets
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import jax

from phn_jax import checkpoint, models, report, runtime
from phn_jax.checkpoint import CheckpointError

LOCK_FILE = "run.lock"


class RunLockedError(RuntimeError):
    """Another live process holds the run directory."""


class WorkdirError(RuntimeError):
    """The run directory cannot be used: a file, or not writable."""


class Interrupted(Exception):
    """The run stopped at a safe point on a signal, after writing a checkpoint."""

    def __init__(self, signal_name: str, where: str):
        super().__init__(f"stopped by {signal_name} {where}")
        self.signal_name, self.where = signal_name, where

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process the signal ended."""
        return 128 + getattr(signal, self.signal_name, signal.SIGTERM).value


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _boot_id() -> str | None:
    """The kernel's boot id (Linux), the same in every container of a host until it reboots."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (field 22 of /proc/<pid>/stat): with the
    pid and the boot id, what names one process; None where /proc is not there or the pid is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])  # (after the command name, which may hold spaces)
    except (OSError, ValueError, IndexError):
        return None


_HELD: set[str] = set()  # the tokens of the locks this process holds


def _holder(path: Path) -> dict | None:
    """The lock's content, or None when it vanished or is unreadable (a holder still writing it)."""
    try:
        held = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return held if isinstance(held, dict) else None


def _create(path: Path, content: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(content, f)
    return True


def _held_by_another(held: dict, me: dict) -> bool:
    """Whether the lock's holder may be a live process other than this one (see the module's docstring)."""
    if held.get("token") in _HELD:
        return True  # this process, in another `with lock(...)`: a second run on the directory
    if held.get("host") != me["host"]:
        return True  # cannot be checked from here
    if held.get("boot_id") and me["boot_id"] and held["boot_id"] != me["boot_id"]:
        return False  # the kernel booted since: every process of then is gone
    try:
        pid = int(held.get("pid", -1))
    except (TypeError, ValueError):
        return False
    if pid == me["pid"] or not _alive(pid):
        return False  # this process (its pid, not its token: a restarted container's pid 1 meets its old lock), or gone
    started, now = held.get("pid_start"), _start_ticks(pid)
    return started is None or now is None or started == now  # another start time: the pid was reused


def _refusal(path: Path, workdir, held: dict, me: dict) -> str:
    pid, host = held.get("pid"), held.get("host")
    check = (f"To check it, run `ps -o pid,lstart,args -p {pid}` on {host}: if that is not this run (or shows "
             f"nothing), the lock is stale: delete {path} and resume." if host == me["host"] else
             f"This host cannot check a process on {host}: if that run is gone, delete {path} and resume.")
    if held.get("token") in _HELD:
        check = "This very process holds it (a run inside a run?)."
    return (f"{workdir} is in use by process {pid} on {host}, started {held.get('started')} "
            f"({held.get('command', '?')}). Wait for it to finish or stop it (kill {pid}: it saves a checkpoint and "
            f"exits), then resume; or choose another --workdir. {check}")


@contextlib.contextmanager
def lock(workdir: str | os.PathLike) -> Iterator[dict]:
    """Holds `workdir/run.lock` for the duration of the `with` block; yields its content.

    Raises RunLockedError when another live process holds it (or one on another host, whose
    liveness this host cannot check). `workdir` must exist."""
    path = Path(workdir) / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "boot_id": _boot_id(), "pid_start": _start_ticks(os.getpid()),
          "token": secrets.token_hex(8), "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
          "command": " ".join(sys.argv)}
    for _ in range(3):  # a stale lock taken over, raced at most by another taker
        if _create(path, me):
            break
        held = _holder(path)
        if held is not None and _held_by_another(held, me):
            raise RunLockedError(_refusal(path, workdir, held, me))
        with contextlib.suppress(FileNotFoundError):  # stale (its process is gone) or half-written
            path.unlink()
    else:
        raise RunLockedError(f"could not take the lock {path}: other processes keep taking it")
    _HELD.add(me["token"])
    try:
        yield me
    finally:
        _HELD.discard(me["token"])
        if _holder(path) == me:
            path.unlink()


class StopRequests:
    """Records SIGTERM and SIGINT while a run is inside `with StopRequests() as stop:`.

    `stop.signal_name` is None until the first signal; a second signal prints one line and exits
    the process at once with 128 + its number. Outside the main thread (signals cannot be caught
    there) it records nothing and changes nothing."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.signal_name is not None:
            print(f"\n{name} again: exiting now, without a new checkpoint; the run resumes from its "
                  "latest checkpoint with --resume (RESUME=1)", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.signal_name = name
        print(f"\n{name}: the run stops after the current epoch and writes a checkpoint "
              "(send it again to exit at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def ensure_writable(workdir: str | os.PathLike, inside: tuple[str, ...] = ()) -> Path:
    """Creates `workdir` (and its parents) and checks it is a writable directory, and so is each of
    its subdirectories `inside` that exists (a resume writes checkpoints and moves damaged ones);
    WorkdirError with a sentence that says what to do otherwise."""
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"--workdir {workdir} is a file, not a directory: choose another --workdir")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WorkdirError(f"cannot create --workdir {workdir}: {err.strerror}; choose a directory you can "
                           "write to") from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise WorkdirError(f"--workdir {workdir} is not writable: choose a directory you can write to, or "
                           "change its permissions")
    for name in inside:
        d = workdir / name
        if d.exists() and not (d.is_dir() and os.access(d, os.W_OK | os.X_OK)):
            raise WorkdirError(f"{d} is not a writable directory, and the run writes there (its checkpoints; a "
                               f"resume moves damaged ones aside): change its permissions (chmod -R u+w {d}) or "
                               "its mount, then run the same command again")
    return workdir


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


def check_dirs(dirs: RunDirs, resume: bool) -> None:
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


def checkpointed_run(directory: str | Path) -> tuple[Path, int | None]:
    """The directory holding the checkpoints of the run in `directory`, and the index of its seed:
    `directory` itself (None), or, for one seed's results directory of a multi-seed run (its
    group.json), the group's workdir and the seed's place in the group's stacked state."""
    directory = Path(directory)
    if not (directory / GROUP_JSON).is_file():
        return directory, None
    group = json.loads((directory / GROUP_JSON).read_text())
    return Path(group["workdir"]), list(group["seeds"]).index(group["seed"])


def load_frozen_part(source: str | Path, freeze_depth: int) -> dict:
    """The stem and stages 1..k (k = freeze_depth) from the newest checkpoint of the phn_jax run in
    `source`: an HN run's φ (frozen since its first experience), any other strategy's network
    parameters (a Joint run: the multitask pretraining); one seed's directory of a multi-seed run
    gives that seed's slice of its group's checkpoint. Host arrays, {module: params}. CheckpointError
    if the run has no checkpoint, has not finished an experience, or lacks one of the modules."""
    directory, index = checkpointed_run(source)
    step, state, meta = checkpoint.read_latest(directory)
    progress = meta["progress"]  # (one seed's, or a list of each seed's: `progress.progress_json`)
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


@contextlib.contextmanager
def own(dirs: RunDirs):
    """Process 0 creates the run's directories and holds their locks; every process learns whether it did."""
    failure = None
    with contextlib.ExitStack() as stack:
        if runtime.is_main_process():
            try:
                for d in dirs.all():
                    ensure_writable(d, (checkpoint.CHECKPOINT_DIR, checkpoint.DAMAGED_DIR))
                    stack.enter_context(lock(d))
            except (WorkdirError, RunLockedError) as err:
                failure = err
        if runtime.agree(failure is not None, False)[0]:
            raise failure or RunLockedError(f"process 0 could not take the run directory {dirs.workdir}")
        yield


def write_run_files(dirs: RunDirs, config, configs, streams, topology: runtime.Topology) -> None:
    """The run's config, each seed's (`configs`) with its stream and the runtime into each results
    directory (and a multi-seed run's mark, group.json); the config and runtime into the group's workdir."""
    seeds = tuple(c.seed for c in configs)
    for d, c, stream in zip(dirs.results, configs, streams):
        report.write_config(d, c)
        report.write_json(d / "stream.json", stream.describe())
        report.write_json(d / "runtime.json", dataclasses.asdict(topology))
        if dirs.grouped:
            report.write_json(d / GROUP_JSON, {"workdir": str(dirs.workdir), "seed": c.seed, "seeds": seeds})
    if dirs.grouped:
        report.write_config(dirs.workdir, config)
        report.write_json(dirs.workdir / "runtime.json", dataclasses.asdict(topology))
