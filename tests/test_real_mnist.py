"""Real MNIST (`../shared/data/mnist`, the four official files), prepared by our builder as a user
would (`python -m phn_jax.data.prepare mnist --manual_dir ...`, what `make data DATASET=mnist
MANUAL_DIR=...` runs), trained with von Oswald et al.'s configs at the reference's settings:

  - SplitMNIST, its first two tasks (0/1, 2/3; 21 epochs each): mean task-incremental accuracy
    ≥ 99.5 % after the second. With PyTorch's default initialisation of the hypernetwork (the
    defect before hypercl's Xavier/zero-bias init) task 2 stayed at ~98.4 %.
  - PermutedMNIST-10, its first task (plain MNIST, 32×32, 11 epochs): ≥ 97 %. It underfit at
    93.2 % with the defect.

`make test-real` runs these (CI: `.ci/run`, with PHN_REQUIRE_REAL_MNIST=1, so that missing data
fails instead of skipping); about 3 minutes on 2 cores.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from phn_jax import config as config_lib
from phn_jax import train

pytestmark = pytest.mark.real
ROOT = Path(__file__).parent.parent
MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist"
FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A tfds data directory with real MNIST, prepared by our builder from MNIST_DIR."""
    if not all((MNIST_DIR / f).is_file() for f in FILES):
        message = (f"real MNIST is not at {MNIST_DIR} (its four official .gz files): put them there, or run "
                   "`make data DATASET=mnist MANUAL_DIR=<dir with them>` and the configs by hand")
        if os.environ.get("PHN_REQUIRE_REAL_MNIST") == "1":
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path_factory.mktemp("tfds")
    done = subprocess.run([sys.executable, "-m", "phn_jax.data.prepare", "mnist", "--data_dir", str(out),
                           "--manual_dir", str(MNIST_DIR)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def _accuracy_matrix(name: str, data_dir: Path, workdir: Path, num_experiences: int) -> np.ndarray:
    c = config_lib.load_config(ROOT / "experiments" / "configs" / f"{name}.py")
    c.data.update(data_dir=str(data_dir), num_experiences=num_experiences)
    c.train.update(progress=False, num_devices=1)
    c.eval.task_inference = False
    summary = train.train_and_evaluate(c, workdir)
    return np.array(summary["accuracy_matrix"], dtype=float)


def test_split_mnist_learns_its_first_two_tasks_as_the_reference(data_dir, tmp_path):
    r = _accuracy_matrix("split_mnist", data_dir, tmp_path, 2)
    print(f"\nSplitMNIST, first two tasks: R = {np.round(100 * r, 2).tolist()}")
    assert np.mean(r[1]) >= 0.995 and np.min(r[1]) >= 0.99


def test_permuted_mnist_learns_plain_mnist_as_the_reference(data_dir, tmp_path):
    r = _accuracy_matrix("permuted_mnist", data_dir, tmp_path, 1)
    print(f"\nPermutedMNIST-10, first task: {100 * r[0, 0]:.2f} %")
    assert r[0, 0] >= 0.97
