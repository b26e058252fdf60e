"""von Oswald et al.'s PermutedMNIST-10 and SplitMNIST configs: they build the strategy they describe
(no data needed), and `make permuted-mnist` / `make split-mnist` run them with k = 0 and their epochs."""
import os
import shutil
import subprocess
import types
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from phn_jax import models, train
from phn_jax.config import load_config
from phn_jax.hypernetwork import ChunkedHypernetwork
from phn_jax.strategies import create_strategy

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name, tasks, classes, chunked", [
    ("permuted_mnist", 10, 10, dict(embedding_dim=24, chunk_embedding_dim=8, hidden_dims=(25, 25), chunk_dim=78_000,
                                    activation="elu")),
    ("split_mnist", 5, 2, dict(embedding_dim=96, chunk_embedding_dim=96, hidden_dims=(10, 10), chunk_dim=42_000,
                               activation="relu")),
])
def test_config_builds_the_chunked_hn_it_describes(name, tasks, classes, chunked):
    config = load_config(ROOT / "experiments" / "configs" / f"{name}.py")
    stream = types.SimpleNamespace(num_experiences=tasks, classes_per_experience=classes, image_shape=(32, 32, 3))
    hn = create_strategy(config, stream)
    hnet = hn.model.hnet
    assert isinstance(hnet, ChunkedHypernetwork) and hn.model.freeze_depth == 0 and hnet.num_tasks == tasks
    assert {k: getattr(hnet, k) for k in chunked} == chunked
    assert (hn.lookahead_step, hn.order, hn.train_old_embeddings, hn.copy_embedding) == ("optimizer", "first", False,
                                                                                          False)
    assert hn.beta == {"permuted_mnist": 0.1, "split_mnist": 0.01}[name]
    assert config.eval.task_inference and config.data.name == name
    # ω is the whole slim ResNet-18 with `classes` outputs; all but the rank-1 tensors come in chunks
    omega = models.split_params(jax.eval_shape(lambda: models.init_resnet(jax.random.key(0), hn.model.resnet)), 0)[1]
    vectors = sum(x.size for x in jax.tree_util.tree_leaves(omega) if x.ndim == 1)
    assert hnet.num_generated == models.count_params(omega) - vectors
    assert hnet.num_chunks == -(-hnet.num_generated // chunked["chunk_dim"])
    # Table 6's comparison at k = 0: LR-0 stores 200 images of 32x32x3 at 32 bit
    state = {"phi": jax.eval_shape(hn.model.init, jax.random.key(0))[0]}
    assert hn.memory(state)["replay_buffer_mb"] == 200 * 32 * 32 * 3 * 4 / 2**20


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("target, config, epochs", [("permuted-mnist", "permuted_mnist", 11),
                                                    ("split-mnist", "split_mnist", 21)])
def test_make_targets(target, config, epochs):
    def command(*variables):
        # Under `make test` the outer make's MAKEFLAGS/MAKELEVEL would add "Entering directory" lines.
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
        out = subprocess.run(["make", "-n", "--no-print-directory", target, "STAMP=Makefile", *variables],
                             cwd=ROOT, capture_output=True, text=True, check=True, env=env).stdout
        return out.strip().splitlines()[-1]

    cmd = command()
    assert f"--config experiments/configs/{config}.py" in cmd and f"--workdir runs/{config}/hn0_first_seed0" in cmd
    assert "--config.strategy.freeze_depth=0" in cmd and f"--config.train.epochs={epochs}" in cmd
    cmd = command("FREEZE=2", "EPOCHS=3", "ORDER=second", "SEED=4")
    assert "--config.strategy.freeze_depth=2" in cmd and "--config.train.epochs=3" in cmd
    assert "--config.strategy.order=second" in cmd and f"runs/{config}/hn2_second_seed4" in cmd


@pytest.mark.system
@pytest.mark.parametrize("name", ["permuted_mnist", "split_mnist"])
def test_config_runs_end_to_end_under_mock_data(name, tmp_path):
    """The config through the engine on tfds' mock MNIST, shrunk (nf=8, 1 epoch, 2 permutations)."""
    config = load_config(ROOT / "experiments" / "configs" / f"{name}.py")
    config.model.nf = 8
    # batch 8: mock SplitMNIST's smallest experience has 9 training samples
    config.train.update(epochs=1, batch_size=8, eval_batch_size=32, progress=False)
    if name == "permuted_mnist":
        config.data.num_experiences = 2
    with tfds.testing.mock_data(num_examples=64):
        summary = train.train_and_evaluate(config, tmp_path)
    assert summary["completed_experiences"] == config.data.num_experiences
    for key in ("aca", "class_incremental_accuracy", "task_inference_accuracy"):
        assert 0 <= summary[key] <= 1, key
    assert summary["memory"]["replay_buffer_mb"] == 200 * 32 * 32 * 3 * 4 / 2**20
    assert np.isfinite(summary["memory"]["hypernetwork_mb"])
