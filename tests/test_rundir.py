"""The run directory's owner (the lock), its checks, and the stop requests, without training."""
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
from runs import tiny_config

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


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _holds(tmp_path, **lock) -> bool:
    """Writes run.lock with `lock` (this host and boot by default); whether lock() then takes it over."""
    content = {"host": socket.gethostname(), "boot_id": rundir._boot_id(), "started": "then", "command": "phn_jax", **lock}
    (tmp_path / rundir.LOCK_FILE).write_text(json.dumps(content))
    try:
        with rundir.lock(tmp_path) as me:
            assert json.loads((tmp_path / rundir.LOCK_FILE).read_text()) == me
    except rundir.RunLockedError:
        return False
    return True


def test_a_lock_knows_its_holder_beyond_the_pid(tmp_path):
    """A pid names a process only with its start time and the boot: a lock whose pid is alive but
    started at another time (a reused pid; a restarted container's pid 1) or in another boot is stale;
    a lock with this process's own pid is never refused; the live holder itself is."""
    me = rundir._start_ticks(os.getpid())
    assert me is not None and me == rundir._start_ticks(os.getpid())  # (/proc: Linux)
    assert _holds(tmp_path, pid=os.getpid(), pid_start=me - 1)  # this pid, another process's lock
    assert _holds(tmp_path, pid=os.getpid())  # a lock written before start times were recorded
    sleeper = _sleeper()
    try:
        live = rundir._start_ticks(sleeper.pid)
        assert not _holds(tmp_path, pid=sleeper.pid, pid_start=live)  # the live holder
        with pytest.raises(rundir.RunLockedError) as refused:
            with rundir.lock(tmp_path):
                pass
        lock = tmp_path / rundir.LOCK_FILE
        assert f"in use by process {sleeper.pid}" in str(refused.value)
        assert f"ps -o pid,lstart,args -p {sleeper.pid}" in str(refused.value)  # how to check it
        assert f"delete {lock} and resume" in str(refused.value)  # and what to delete if it is not the run
        assert not _holds(tmp_path, pid=sleeper.pid)  # no start time recorded: it may be the holder
        assert _holds(tmp_path, pid=sleeper.pid, pid_start=live + 1)  # the pid now belongs to another process
        assert _holds(tmp_path, pid=sleeper.pid, pid_start=live, boot_id="another-boot")  # rebooted since
    finally:
        sleeper.kill()


def _new_pid_namespace() -> list[str] | None:
    """`unshare`'s command for a new pid namespace (pid 1 inside), as a container has; None where
    this machine does not allow one."""
    for cmd in (["unshare", "--pid", "--fork", "--mount-proc"], ["unshare", "-r", "--pid", "--fork", "--mount-proc"]):
        try:
            if subprocess.run([*cmd, "true"], capture_output=True, timeout=30).returncode == 0:
                return cmd
        except (OSError, subprocess.TimeoutExpired):
            pass
    return None


@pytest.mark.skipif(_new_pid_namespace() is None, reason="no pid namespaces here (unshare); "
                    "test_a_lock_knows_its_holder_beyond_the_pid fakes the start time instead")
def test_a_restarted_container_takes_its_lock_back(tmp_path):
    """A container preempted while running restarts with the same host name and the run as pid 1
    again: its lock names pid 1, alive (the new process itself). It is taken over, not refused."""
    take = ("import json, os, sys; from phn_jax import rundir; lock = rundir.lock(sys.argv[1]); me = lock.__enter__(); "
            "print(json.dumps(me)); os._exit(0)")  # killed holding it: the lock stays
    runs = [subprocess.run([*_new_pid_namespace(), sys.executable, "-c", take, str(tmp_path)], capture_output=True,
                           text=True, timeout=120) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr
    first, second = (json.loads(run.stdout) for run in runs)
    assert first["pid"] == second["pid"] == 1 and first["pid_start"] != second["pid_start"]
    assert json.loads((tmp_path / rundir.LOCK_FILE).read_text()) == second


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
