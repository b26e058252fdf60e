"""A run survives being stopped or killed at any moment, and owns its run directory: real runs of
`python -m phn_jax.main` in subprocesses (experiments/configs/smoke.py with the slim ResNet-18, 3 experiences x 20 epochs;
a process spends its first seconds tracing the steps, then each epoch takes tens of milliseconds).

Every interrupted run, resumed, ends with exactly the uninterrupted run's accuracy matrix and final
state (bit for bit: same machine, same device count)."""
import collections
import csv
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import cli
from phn_jax import checkpoint

pytestmark = pytest.mark.system
# the slim ResNet-18 (smoke.py's ResNet-10 finishes before most of the random kills land)
ARGS = ("--config.train.epochs=20", "--config.eval.task_inference=False", "--config.model.blocks_per_stage=2,2,2,2")
# a checkpoint at (nearly) every epoch: every_minutes of 0.03 s
OFTEN = ("--config.checkpoint.every_minutes=0.0005",)
STEPS = 3 * 20  # a run of ARGS: its last checkpoint step (epochs completed over its 3 experiences)


def _final(workdir):
    """(accuracy matrix, the state of the latest checkpoint)."""
    matrix = json.loads((workdir / "metrics.json").read_text())["accuracy_matrix"]
    mngr = checkpoint.manager(workdir)
    state = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    return matrix, state


@pytest.fixture(scope="module")
def uninterrupted_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    done = cli.run(workdir, *ARGS)
    assert done.returncode == 0, done.stdout + done.stderr
    return workdir


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_dir):
    return _final(uninterrupted_dir)


def _assert_identical(workdir, uninterrupted):
    matrix, state = _final(workdir)
    assert matrix == uninterrupted[0]
    chex.assert_trees_all_equal(state, uninterrupted[1])
    assert not (workdir / "run.lock").exists()


def _resume(workdir, *extra):
    done = cli.run(workdir, *ARGS, *extra, "--resume")
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_sigterm_and_sigint_save_say_how_to_resume_and_resume_identically(tmp_path, uninterrupted):
    run = cli.start(tmp_path, *ARGS)
    cli.wait_ready(run)
    run.send_signal(signal.SIGTERM)
    rc, out = cli.finish(run)
    assert rc == 128 + signal.SIGTERM, out
    assert "stopped by SIGTERM in experience 1, after epoch 1 of 20: a checkpoint is saved" in out
    assert "--resume (make ... RESUME=1)" in out and "Traceback" not in out
    # two lines, as the README says: one when the signal arrives, one when the run has stopped (the last)
    lines = [line for line in out.splitlines() if line.strip()]
    said = [line for line in lines if "SIGTERM" in line]
    assert len(said) == 2 and said[0].startswith("SIGTERM: the run stops after the current epoch"), out
    assert said[1] == lines[-1] and lines[-1].startswith("stopped by SIGTERM"), out
    assert checkpoint.manager(tmp_path).latest_step() == 1  # after epoch 1 of experience 1

    run = cli.start(tmp_path, *ARGS, "--resume")
    for line in run.stdout:  # SIGINT (Ctrl-C) once experience 1 is done
        if "experience 1/3:" in line:
            run.send_signal(signal.SIGINT)
            break
    rc, out = cli.finish(run)
    assert rc == 128 + signal.SIGINT, out
    assert "stopped by SIGINT" in out and "Traceback" not in out and "KeyboardInterrupt" not in out
    assert json.loads((tmp_path / "metrics.json").read_text())["completed_experiences"] >= 1

    _resume(tmp_path)
    _assert_identical(tmp_path, uninterrupted)


def _compiles(out: str) -> tuple[collections.Counter, collections.Counter]:
    """(programs compiled, programs loaded from the persistent cache) by name, from a run's output
    under JAX_LOG_COMPILES=1: 'Compiling jit(f) ...' then, on a hit, "... cache hit for 'jit_f' ..."."""
    compiled = collections.Counter(re.findall(r"Compiling jit\((\S+?)\) with global shapes", out))
    loaded = collections.Counter(re.findall(r"Persistent compilation cache hit for 'jit_(\S+?)'", out))
    return compiled, loaded


def test_each_program_compiles_once_and_later_processes_load_it_from_the_cache(tmp_path):
    """A run compiles each distinct program once (train_epoch twice: experience 1's step differs), a
    stopped run's resumed process loads what the first process compiled, and a second run of the
    same configuration compiles nothing: every program comes from the persistent compilation cache.
    A fresh cache of its own; every program stored (min compile time 0: by default only those that
    took ≥ 1 s to compile are)."""
    cache = tmp_path / "xla"
    env = {"JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_LOG_COMPILES": "1"}
    args = ("--config.train.epochs=20", "--config.eval.task_inference=False")
    run = cli.start(tmp_path / "a", *args, env=env)
    cli.wait_ready(run)
    run.send_signal(signal.SIGTERM)  # stops after epoch 1 of experience 1
    rc, stopped = cli.finish(run)
    assert rc == 128 + signal.SIGTERM, stopped
    resumed = cli.run(tmp_path / "a", *args, "--resume", env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    stored = sorted(p.name for p in cache.iterdir())
    second = cli.run(tmp_path / "b", *args, env=env)
    assert second.returncode == 0, second.stdout + second.stderr

    compiled, loaded = _compiles(stopped)
    assert compiled["train_epoch"] == 1 and not loaded, stopped  # a fresh cache: nothing to load
    compiled_r, loaded_r = _compiles(resumed.stdout + resumed.stderr)
    assert loaded_r["train_epoch"] == 1 and compiled_r["train_epoch"] == 2  # experience 1's, then the others'
    compiled_2, loaded_2 = _compiles(second.stdout + second.stderr)
    engine = ("init_state", "begin_experience", "train_epoch", "end_experience", "eval_context", "evaluate")
    assert {name: compiled_2[name] for name in engine} == {**dict.fromkeys(engine, 1), "train_epoch": 2}
    assert loaded_2["train_epoch"] == 2 and loaded_2.total() == compiled_2.total()  # every program from the cache
    assert sorted(p.name for p in cache.iterdir()) == stored  # and it stored nothing new
    assert sum(name.startswith("jit_train_epoch-") for name in stored) == 2


def test_a_second_run_on_a_workdir_in_use_is_refused_and_the_first_unharmed(tmp_path, uninterrupted):
    first = cli.start(tmp_path, *ARGS)
    cli.wait_ready(first)
    for extra in ((), ("--resume",)):
        second = cli.run(tmp_path, *ARGS, *extra, timeout=120)
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"is in use by process {first.pid} on" in second.stderr and "Traceback" not in second.stderr
    rc, out = cli.finish(first)
    assert rc == 0, out
    _assert_identical(tmp_path, uninterrupted)


def _largest_array_file(workdir, step) -> Path:
    data = [p for p in (workdir / checkpoint.CHECKPOINT_DIR / str(step) / "state").rglob("*") if p.parent.name == "d"]
    return max(data, key=lambda p: p.stat().st_size)


def test_random_bytes_in_a_finished_runs_checkpoint_are_caught_by_verify_and_resume(tmp_path, uninterrupted_dir,
                                                                                     uninterrupted):
    """64 KB of random bytes in the latest checkpoint's largest array file, size kept (before checksums:
    resumed without a word, into another final state): `--verify` names it and exits 2, changing
    nothing; `--resume` says so in one line, moves it aside and ends as the uninterrupted run."""
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted_dir, workdir)
    bad = checkpoint.manager(workdir).latest_step()
    target = _largest_array_file(workdir, bad)
    data = bytearray(target.read_bytes())
    data[len(data) // 4: len(data) // 4 + 65536] = random.Random(0).randbytes(65536)
    target.write_bytes(bytes(data[:target.stat().st_size]))
    before = sorted((p, p.stat().st_mtime_ns) for p in workdir.rglob("*"))
    verified = subprocess.run([sys.executable, "-m", "phn_jax.main", "--verify", "--workdir", str(workdir)],
                              cwd=cli.ROOT, capture_output=True, text=True, timeout=300)
    name = target.relative_to(workdir / checkpoint.CHECKPOINT_DIR / str(bad)).as_posix()
    assert verified.returncode == 2, verified.stdout + verified.stderr
    assert f"checkpoint {bad}: DAMAGED: its file {name} does not match its checksum" in verified.stdout
    assert f"checkpoint {bad - 20}: intact" in verified.stdout
    assert f"resumes from the newest intact one, checkpoint {bad - 20}" in verified.stderr.splitlines()[-1]
    assert sorted((p, p.stat().st_mtime_ns) for p in workdir.rglob("*")) == before  # nothing written
    done = _resume(workdir)
    out = done.stdout + done.stderr
    assert f"checkpoint {bad} is damaged: its file {name} does not match its checksum" in out
    assert "Traceback" not in out and "TensorStore" not in out, out[:3000]
    moved, = (workdir / checkpoint.DAMAGED_DIR).iterdir()
    assert moved.name.startswith(f"{bad}-")
    _assert_identical(workdir, uninterrupted)


def _at_most_20_lines_ending_with(done: subprocess.CompletedProcess, message: str) -> None:
    out = (done.stdout + done.stderr).splitlines()
    assert done.returncode == 2, "\n".join(out[-30:])
    assert len(out) <= 20 and done.stderr.splitlines()[-1].startswith(message), "\n".join(out[-30:])


def test_no_intact_checkpoint_ends_with_its_message(tmp_path, uninterrupted_dir):
    """Every checkpoint truncated where orbax must read it to find out (no files.sha256, as a kill right
    after orbax's commit leaves one): the terminal ends with the message, whatever orbax's threads and
    abandoned coroutines print later (tracebacks by the thousand: in checkpoint_errors.txt). Twice:
    when they print varies from run to run."""
    for attempt in range(2):
        workdir = tmp_path / f"run{attempt}"
        shutil.copytree(uninterrupted_dir, workdir)
        for step in checkpoint.manager(workdir).all_steps():
            (workdir / checkpoint.CHECKPOINT_DIR / str(step) / checkpoint.FILES).unlink()
            target = _largest_array_file(workdir, step)
            target.write_bytes(target.read_bytes()[:100])
        done = cli.run(workdir, *ARGS, "--resume", timeout=300)
        _at_most_20_lines_ending_with(done, "error: no intact checkpoint in")
        assert not (workdir / checkpoint.DAMAGED_DIR).exists()


def _mount_namespace(directory: Path) -> list[str] | None:
    """`unshare`'s command for a mount namespace in which a tmpfs can be mounted on `directory`; None
    where this machine allows none."""
    for cmd in (["unshare", "--mount"], ["unshare", "-r", "--mount"]):
        try:
            probe = subprocess.run([*cmd, "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$0"', str(directory)],
                                   capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return cmd
    return None


# The fallback where no tmpfs can be mounted: orbax's save fails as on a full disk, after printing
# what its threads print then (a traceback a line, 200 of them).
SIMULATED_FULL_DISK = """
import errno, os, runpy, sys
import orbax.checkpoint as ocp
save = ocp.CheckpointManager.save
def full(self, step, *args, **kwargs):
    if step > 20:  # experience 1's checkpoint is written
        for _ in range(200):
            os.write(2, b"Traceback (most recent call last): a writer thread of TensorStore\\n")
        raise ValueError("RESOURCE_EXHAUSTED: Failed to write 29948 bytes to file 13: No space left on device")
    return save(self, step, *args, **kwargs)
ocp.CheckpointManager.save = full
sys.argv = ["phn_jax.main", *sys.argv[1:]]
runpy.run_module("phn_jax.main", run_name="__main__")
"""


def test_a_full_disk_ends_with_its_message_in_at_most_20_lines_and_resumes(tmp_path, uninterrupted_dir,
                                                                           uninterrupted):
    """A real tmpfs as large as the finished run (where this machine lets the test mount one): the
    disk fills while a later checkpoint is written. The terminal shows the run's log and the message
    last (orbax's tracebacks: checkpoint_errors.txt); the tmpfs enlarged, --resume finishes the run
    as the uninterrupted one."""
    disk = tmp_path / "disk"
    disk.mkdir()
    namespace = _mount_namespace(disk)
    if namespace is None:
        done = subprocess.run([sys.executable, "-c", SIMULATED_FULL_DISK, *cli.command(disk / "run", *ARGS)[3:]],
                              cwd=cli.ROOT, env=cli.environment(), capture_output=True, text=True, timeout=600)
        _at_most_20_lines_ending_with(done, f"error: the disk holding {disk / 'run'} is full")
        assert "a writer thread of TensorStore" in (disk / "run" / checkpoint.ERRORS_FILE).read_text()
        return
    size_kb = sum(p.stat().st_size for p in uninterrupted_dir.rglob("*") if p.is_file()) // 1024
    run = disk / "run"
    first, resumed = (" ".join(map(shlex.quote, cli.command(run, *ARGS, *extra))) for extra in ((), ("--resume",)))
    script = (f'mount -t tmpfs -o size={size_kb}k tmpfs "{disk}" && {{ {first} > "{tmp_path}/first.out" '
              f'2> "{tmp_path}/first.err"; echo $? > "{tmp_path}/first.rc"; }} && '
              f'cp "{run}/{checkpoint.ERRORS_FILE}" "{tmp_path}/errors.txt"; '
              f'mount -o remount,size={3 * size_kb}k "{disk}" && {resumed} > "{tmp_path}/resumed.out" 2>&1 && '
              f'cp -r "{run}" "{tmp_path}/copy"')
    subprocess.run([*namespace, "sh", "-c", script], cwd=cli.ROOT, env=cli.environment(), timeout=900)
    first_run = subprocess.CompletedProcess([], int((tmp_path / "first.rc").read_text()),
                                            (tmp_path / "first.out").read_text(), (tmp_path / "first.err").read_text())
    _at_most_20_lines_ending_with(first_run, f"error: the disk holding {run} is full")
    assert "No space left on device" in (tmp_path / "errors.txt").read_text()  # orbax's own words, kept
    assert (tmp_path / "copy").is_dir(), (tmp_path / "resumed.out").read_text()[-3000:]
    _assert_identical(tmp_path / "copy", uninterrupted)


def test_a_read_only_checkpoints_directory_is_one_paragraph(tmp_path, uninterrupted_dir):
    """checkpoints/ read-only inside a writable run directory (a read-only mount where the test can make
    one, else its permissions): --resume says which directory and what to do, exit 2, changing nothing."""
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted_dir, workdir)
    ckpts = workdir / checkpoint.CHECKPOINT_DIR
    before = sorted((p, p.stat().st_mtime_ns) for p in workdir.rglob("*"))
    (tmp_path / "probe").mkdir()
    namespace = _mount_namespace(tmp_path / "probe")
    if namespace is not None:
        resume = " ".join(map(shlex.quote, cli.command(workdir, *ARGS, "--resume")))
        script = (f'mount --bind "{ckpts}" "{ckpts}" && mount -o remount,bind,ro "{ckpts}" && {resume} > '
                  f'"{tmp_path}/out" 2> "{tmp_path}/err"; echo $? > "{tmp_path}/rc"')
        subprocess.run([*namespace, "sh", "-c", script], cwd=cli.ROOT, env=cli.environment(), timeout=300)
        done = subprocess.CompletedProcess([], int((tmp_path / "rc").read_text()), (tmp_path / "out").read_text(),
                                           (tmp_path / "err").read_text())
    elif os.geteuid() != 0:
        ckpts.chmod(0o555)
        done = cli.run(workdir, *ARGS, "--resume", timeout=300)
        ckpts.chmod(0o755)
    else:
        pytest.skip("root without mount namespaces: no directory is read-only to this test")
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{ckpts} is not a writable directory" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert sorted((p, p.stat().st_mtime_ns) for p in workdir.rglob("*")) == before


def kill_and_resume(workdir, kills: int, seed: int = 0) -> list[float]:
    """SIGKILLs the run at `kills` random moments (seeded), resuming after each, then lets it finish.
    A moment is drawn within the work left, not in seconds (a fast machine would finish first): a
    random checkpoint step still ahead, then a random fraction of a second after it appears, so the
    kill lands between two checkpoints, or inside a save. Returns the work lost by each kill: seconds
    since the last checkpoint (or since the run started, before the first)."""
    rng, lost = random.Random(seed), []
    latest = lambda: max(checkpoint.steps(workdir / checkpoint.CHECKPOINT_DIR), default=0)
    for k in range(kills):
        run = cli.start(workdir, *ARGS, *OFTEN, *(("--resume",) if k else ()))
        cli.wait_ready(run)
        started = time.time()
        target = rng.randint(min(latest() + 1, STEPS - 1), STEPS - 1)
        deadline = time.monotonic() + 300
        while run.poll() is None and latest() < target and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        run.kill()
        run.communicate()
        if run.returncode != -signal.SIGKILL:  # it had finished: nothing to kill
            continue
        done = [p for p in (workdir / checkpoint.CHECKPOINT_DIR).iterdir() if p.name.isdigit()]
        last = max((p.stat().st_mtime for p in done), default=started)
        lost.append(max(time.time() - max(last, started), 0.0))
    _resume(workdir, *OFTEN)
    return lost


def test_sigkill_at_three_random_moments_resumes_identically(tmp_path, uninterrupted):
    lost = kill_and_resume(tmp_path, kills=3)
    assert len(lost) >= 2, lost  # the run was still going for most kills
    _assert_identical(tmp_path, uninterrupted)
    assert "resumed from the checkpoint" in (tmp_path / "log.txt").read_text()


@pytest.mark.slow
def test_sigkill_twenty_times(tmp_path, uninterrupted):
    """20 trials, each a fresh run SIGKILLed once at a random moment (seeded), resumed and compared."""
    identical, lost = 0, []
    for trial in range(20):
        workdir = tmp_path / f"trial{trial}"
        lost += kill_and_resume(workdir, kills=1, seed=100 + trial)
        matrix, state = _final(workdir)
        same = matrix == uninterrupted[0] and all(
            np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(state),
                                                 jax.tree_util.tree_leaves(uninterrupted[1])))
        identical += same
    print(f"\n{identical}/20 identical; {len(lost)}/20 kills hit a running run; work lost per kill: median "
          f"{np.median(lost):.2f} s, largest {max(lost):.2f} s")
    assert identical == 20


def test_a_whole_run_in_float64_trains_the_same_model(tmp_path):
    """JAX_ENABLE_X64=1 runs the whole stream in float64 (parameters, optimizer state, inputs; the
    evaluation's counts are int64 then), for anyone checking numerics; its first epoch's loss equals
    the float32 run's of the same seed to 1e-4."""
    runs = {}
    for name, env in (("float64", {"JAX_ENABLE_X64": "1"}), ("float32", {"JAX_ENABLE_X64": "0"})):
        workdir = tmp_path / name
        done = cli.run(workdir, "--config.train.epochs=2", env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        with jax.enable_x64(True):  # read as saved (this process runs without x64, which would cast to float32)
            _, state, _ = checkpoint.read_latest(workdir)
        floats = {np.asarray(a).dtype for a in jax.tree_util.tree_leaves(state) if np.asarray(a).dtype.kind == "f"}
        assert floats == {np.dtype(name)}
        metrics = json.loads((workdir / "metrics.json").read_text())
        assert metrics["completed_experiences"] == 3 and np.isfinite(metrics["aca"])
        with open(workdir / "train_history.csv") as f:
            runs[name] = next(csv.DictReader(f))  # experience 0, epoch 0
    loss = {name: float(row["loss"]) for name, row in runs.items()}
    np.testing.assert_allclose(loss["float64"], loss["float32"], rtol=1e-4)
