"""Small runs of the engine that several test modules share: the config every engine test starts
from, a run killed right after a checkpoint, and the stream and probe of the strategies' tests."""
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from phn_jax import checkpoint, train
from phn_jax.config import load_config

ROOT = Path(__file__).parent.parent
# The strategies' stream (tiny_config's, made longer and noisier): 4 experiences, 20 epochs each.
STREAM = {"data.num_experiences": 4, "data.noise_std": 0.6, "data.test_per_class": 100, "optim.lr": 3e-3,
          "train.epochs": 20, "train.eval_batch_size": 200, "checkpoint.max_to_keep": 4}
REAL = 16  # real samples of each experience's (padded) training arrays: one step per epoch


def tiny_config(**overrides):
    """experiments/configs/smoke.py (3 experiences x 2 classes of 16x16 prototypes + noise, each class
    its own prototype) made hard enough to forget on with its ResNet-10 at nf=4 (noise 0.4, Adam at
    lr 3e-3, 40 epochs; 100 test samples per class, evaluated in one batch per experience), on one
    device of the test session's four (tests/conftest.py; test_devices compares meshes), and
    `overrides` ('a.b': value)."""
    c = load_config(ROOT / "experiments" / "configs" / "smoke.py")
    c.data.update(noise_std=0.4, test_per_class=100)
    c.optim.lr = 3e-3
    c.train.update(epochs=40, eval_batch_size=200, progress=False, num_devices=1)
    for key, value in overrides.items():
        node = c
        *path, leaf = key.split(".")
        for p in path:
            node = node[p]
        node[leaf] = value
    return c


def final_state(workdir):
    """The state of a run's newest checkpoint, as saved (no template)."""
    mngr = checkpoint.manager(workdir)
    return mngr.restore(mngr.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]


def killed_after_checkpoint(monkeypatch, step, config, workdir):
    """Runs `config` in `workdir`, killed (KeyboardInterrupt) as soon as checkpoint `step` is saved,
    before the results files that follow it."""
    save = checkpoint.save

    def crash(mngr, saved, state, meta):
        save(mngr, saved, state, meta)
        if saved == step:
            raise KeyboardInterrupt(f"killed after checkpoint {step}")

    monkeypatch.setattr(checkpoint, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(config, workdir)
    monkeypatch.setattr(checkpoint, "save", save)


def first_moments(state):
    """Adam's first moments (mu) of every optimizer state in `state`, flattened, in one order."""
    leaves = jax.tree_util.tree_flatten_with_path(state["opt"])[0]
    mus = [np.asarray(v, np.float64).ravel() for path, v in leaves if "mu" in jax.tree_util.keystr(path)]
    assert mus, "no Adam first moment in the state"
    return np.concatenate(mus)
