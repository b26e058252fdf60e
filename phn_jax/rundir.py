"""The run directory's owner and the run's stop requests.

One writer per run directory: a run holds `workdir/run.lock` for its whole life, a JSON file with
the holder's pid, host and start time, created with O_EXCL (atomic on local and network file
systems). A second run, or a `--resume`, on a held directory is refused at once, naming the
holder. A lock whose process is gone (same host, pid no longer alive) is stale and taken over.
In a multi-process job, process 0 holds it.

Stop requests: SIGTERM (cloud preemption, `kill`, SLURM's time limit) and SIGINT (Ctrl-C) do not
kill a run. The first one is recorded; the engine sees it at its next safe point (the end of the
current epoch), writes a checkpoint and raises `Interrupted`, which the command line reports in
one sentence with how to resume. A second signal exits at once: every file of the run is written
atomically (a temporary file or directory, then a rename), so nothing is left half-written.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

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


def _holder(path: Path) -> dict | None:
    """The lock's content, or None when it vanished or is unreadable (a holder still writing it)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _create(path: Path, content: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(content, f)
    return True


@contextlib.contextmanager
def lock(workdir: str | os.PathLike) -> Iterator[dict]:
    """Holds `workdir/run.lock` for the duration of the `with` block; yields its content.

    Raises RunLockedError when a live process holds it (or one on another host, whose liveness
    this host cannot check). `workdir` must exist."""
    path = Path(workdir) / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
          "command": " ".join(sys.argv)}
    for _ in range(3):  # a stale lock taken over, raced at most by another taker
        if _create(path, me):
            break
        held = _holder(path)
        if held is not None and (held.get("host") != me["host"] or _alive(int(held.get("pid", -1)))):
            elsewhere = "" if held.get("host") == me["host"] else (
                f" If that process is gone (this host cannot check another host), delete {path}.")
            raise RunLockedError(
                f"{workdir} is in use by process {held.get('pid')} on {held.get('host')}, started "
                f"{held.get('started')} ({held.get('command', '?')}). Wait for it to finish or stop it "
                f"(kill {held.get('pid')}: it saves a checkpoint and exits), then resume; or choose another "
                f"--workdir.{elsewhere}")
        with contextlib.suppress(FileNotFoundError):  # stale (its process is gone) or half-written
            path.unlink()
    else:
        raise RunLockedError(f"could not take the lock {path}: other processes keep taking it")
    try:
        yield me
    finally:
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


def ensure_writable(workdir: str | os.PathLike) -> Path:
    """Creates `workdir` (and its parents) and checks it is a writable directory; WorkdirError with
    a sentence that says what to do otherwise."""
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
    return workdir
