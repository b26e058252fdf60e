"""The run directory's owner (the lock), its checks, and the stop requests, without training."""
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
from test_train import tiny_config

from phn_jax import rundir, train


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_lock_is_held_released_and_refused_while_held(tmp_path):
    with rundir.lock(tmp_path) as me:
        held = json.loads((tmp_path / rundir.LOCK_FILE).read_text())
        assert held == me and held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        with pytest.raises(rundir.RunLockedError, match=f"in use by process {os.getpid()} on"):
            with rundir.lock(tmp_path):
                pass
        assert (tmp_path / rundir.LOCK_FILE).exists()  # the refused one leaves the holder's lock
    assert not (tmp_path / rundir.LOCK_FILE).exists()


def test_stale_lock_is_taken_over_and_another_hosts_is_not(tmp_path):
    stale = {"pid": _dead_pid(), "host": socket.gethostname(), "started": "2026-01-01T00:00:00+00:00"}
    (tmp_path / rundir.LOCK_FILE).write_text(json.dumps(stale))
    with rundir.lock(tmp_path) as me:
        assert json.loads((tmp_path / rundir.LOCK_FILE).read_text())["pid"] == os.getpid() == me["pid"]
    other = {**stale, "host": "another-host"}
    (tmp_path / rundir.LOCK_FILE).write_text(json.dumps(other))
    with pytest.raises(rundir.RunLockedError, match=f"on another-host.*delete {tmp_path / rundir.LOCK_FILE}"):
        with rundir.lock(tmp_path):
            pass


def test_a_locked_workdir_is_refused_before_anything_is_written(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": sleeper.pid, "host": socket.gethostname(), "started": "now", "command": "make cifar100"}
        (tmp_path / rundir.LOCK_FILE).write_text(json.dumps(lock))
        for resume in (False, True):
            with pytest.raises(rundir.RunLockedError, match=f"process {sleeper.pid} .*make cifar100"):
                train.train_and_evaluate(tiny_config(), tmp_path, resume=resume)
        assert sorted(p.name for p in tmp_path.iterdir()) == [rundir.LOCK_FILE]
    finally:
        sleeper.kill()


def test_workdir_that_is_a_file_or_not_writable(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(rundir.WorkdirError, match="is a file"):
        train.train_and_evaluate(tiny_config(), tmp_path / "file")
    assert (tmp_path / "file").read_text() == "x"
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o500)
        with pytest.raises(rundir.WorkdirError, match="not writable"):
            train.train_and_evaluate(tiny_config(), tmp_path / "ro")


def test_stop_requests_record_the_first_signal():
    with rundir.StopRequests() as stop:
        assert stop.signal_name is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the previous handler is back
    assert rundir.Interrupted("SIGINT", "after experience 1").exit_code == 130


def test_a_second_signal_exits_at_once():
    code = ("import os, signal, time\nfrom phn_jax import rundir\nwith rundir.StopRequests():\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n    os.kill(os.getpid(), signal.SIGINT)\n    time.sleep(30)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 130
    assert "SIGINT again: exiting now" in p.stderr and "Traceback" not in p.stderr
