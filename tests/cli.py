"""Runs `python -m phn_jax.main` in subprocesses, as a user or a cluster launcher does, for the tests
of multi-process runs, signals, kills and locks. The processes share the session's persistent
compilation cache (JAX_COMPILATION_CACHE_DIR, set by `make test`), so only the first compiles."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parent.parent
SMOKE = ROOT / "experiments" / "configs" / "smoke.py"
READY = "running on"  # the run's first log line: its signal handlers and lock are in place


def command(workdir, *args, config=SMOKE) -> list[str]:
    return [sys.executable, "-m", "phn_jax.main", "--config", str(config), "--workdir", str(workdir),
            "--config.train.progress=False", *args]


def environment(devices: int = 1, env: dict | None = None) -> dict:
    """This process's environment with `devices` host CPU devices, and the variables of `env`."""
    out = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **(env or {})}
    out.pop("JAX_NUM_CPU_DEVICES", None)
    return out


def start(workdir, *args, devices: int = 1, env: dict | None = None) -> subprocess.Popen:
    """The run in the background; its output (stdout and stderr together) on `.stdout`."""
    return subprocess.Popen(command(workdir, *args), cwd=ROOT, env=environment(devices, env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def run(workdir, *args, devices: int = 1, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command(workdir, *args), cwd=ROOT, env=environment(devices, env), capture_output=True,
                          text=True, timeout=timeout)


def wait_ready(proc: subprocess.Popen, timeout: float = 300) -> list[str]:
    """Reads the process's output until the run's first log line; returns the lines read."""
    lines, deadline = [], time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line)
        if READY in line:
            return lines
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise AssertionError("the run did not start:\n" + "".join(lines))


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    """(exit code, the rest of its output)."""
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def distributed(port: int, process_id: int, num_processes: int = 2) -> list[str]:
    return ["--distributed", f"--coordinator_address=localhost:{port}", f"--num_processes={num_processes}",
            f"--process_id={process_id}"]
