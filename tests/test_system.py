"""A run survives being stopped or killed at any moment, and owns its run directory: real runs of
`python -m phn_jax.main` in subprocesses (experiments/configs/smoke.py with the slim ResNet-18, 3 experiences x 20 epochs;
a process spends its first seconds tracing the steps, then each epoch takes tens of milliseconds).

Every interrupted run, resumed, ends with exactly the uninterrupted run's accuracy matrix and final
state (bit for bit: same machine, same device count)."""
import collections
import csv
import json
import random
import re
import shutil
import signal
import time

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


def test_truncated_checkpoint_resumes_from_the_previous_one_with_one_line(tmp_path, uninterrupted_dir,
                                                                          uninterrupted):
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted_dir, workdir)
    bad = checkpoint.manager(workdir).latest_step()
    data = [p for p in (workdir / "checkpoints" / str(bad) / "state").rglob("*") if p.parent.name == "d"]
    target = max(data, key=lambda p: p.stat().st_size)
    target.write_bytes(target.read_bytes()[:100])
    done = _resume(workdir)
    out = done.stdout + done.stderr
    assert f"checkpoint {bad} is damaged: its arrays cannot be read" in out
    assert "Traceback" not in out and "TensorStore" not in out, out[:3000]
    moved, = (workdir / checkpoint.DAMAGED_DIR).iterdir()
    assert (moved / "restore_errors.txt").is_file()  # what orbax printed (if anything), kept for inspection
    _assert_identical(workdir, uninterrupted)


def kill_and_resume(workdir, kills: int, seed: int = 0) -> list[float]:
    """SIGKILLs the run at `kills` random moments (seeded), resuming after each, then lets it finish.
    Returns the work lost by each kill: seconds since the last checkpoint (or since the run
    started, before the first)."""
    rng, lost = random.Random(seed), []
    for k in range(kills):
        run = cli.start(workdir, *ARGS, *OFTEN, *(("--resume",) if k else ()))
        cli.wait_ready(run)
        started = time.time()
        time.sleep(rng.uniform(1.0, 12.0))
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
