"""phn_jax installed from its wheel (not editable) into a fresh virtual environment works from any
directory: a run by config name, its report (the published numbers are package data), and the
paper's queue, which find the experiment configs inside the package (pyproject.toml installs
experiments/ as phn_jax.experiments).

The fresh environment has no pip and no packages of its own: the wheel is installed into it with
this environment's pip (`--python`), and its dependencies come from this environment's
site-packages through a .pth file, which Python adds to the path without processing the .pth files
inside it, so the editable phn_jax of this environment stays out of it. System test (`make
test-system`, CI): it builds the wheel (pip fetches setuptools from the package index)."""
import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
pytestmark = pytest.mark.system


def test_the_wheel_in_a_fresh_environment_runs_from_any_directory(tmp_path):
    dist, env, elsewhere = tmp_path / "dist", tmp_path / "env", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip"]
    # (from a copy: setuptools builds inside the source tree, build/, which the checkout must not keep)
    source = tmp_path / "source"
    anywhere = shutil.ignore_patterns(".git", ".venv*", ".cache", "*.egg-info", "__pycache__", ".pytest_cache")
    at_top = {"runs", "data", "build"}  # (the checkout's own, not phn_jax/data)
    shutil.copytree(ROOT, source, ignore=lambda d, names: anywhere(d, names) | (at_top & set(names) if Path(d) == ROOT
                                                                                else set()))
    built = subprocess.run([*pip, "wheel", "--no-deps", "--quiet", "-w", str(dist), str(source)], capture_output=True,
                           text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel, = dist.glob("phn_jax-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    python = str(env / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = subprocess.run([*pip, "--python", python, "install", "--no-deps", "--no-index", "--quiet", str(wheel)],
                               capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]

    def run(*args, timeout=600):
        return subprocess.run([python, *args], cwd=elsewhere, capture_output=True, text=True, timeout=timeout)

    where = run("-c", "import phn_jax, phn_jax.config as c; print(phn_jax.__file__); print(c.CONFIGS)").stdout.split()
    assert len(where) == 2 and all(w.startswith(str(env)) for w in where), where  # the wheel's, not the repository's
    done = run("-m", "phn_jax.main", "--config", "smoke", "--workdir", "run", "--config.train.epochs=1",
               "--config.train.progress=False")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((elsewhere / "run" / "metrics.json").read_text())["completed_experiences"] == 3
    reported = run("-m", "phn_jax.paper", ".")  # the report reads the published numbers from the package
    assert reported.returncode == 0 and "## Every configuration found" in (elsewhere / "report.md").read_text(), \
        reported.stderr[-3000:]
    queue = run("-m", "phn_jax.suite", "paper", "--quick", "--list", "--runs", "runs")
    assert queue.returncode == 0, queue.stderr[-3000:]
    assert "configurations: 0 finished" in queue.stdout and "digits/naive_seeds0-1-2" in queue.stdout, queue.stdout[-2000:]
