"""Data parallelism: a training step and an evaluation on a 4-device mesh equal the same step on
one device (same global batch), for every strategy. Four host CPU devices come from conftest.py.

What is compared (DESIGN §6): Adam's first step is about −lr·sign(g), so parameters after it are
no test of the gradient (entries below the rounding noise flip sign). Adam's first moment after
one step from a fresh optimizer is (1 − b1)·g exactly: comparing it compares the whole gradient,
look-ahead included. Also the step's metrics (loss, L_CE, the regulariser, cos(g1, g2), correct
count), the state the strategy keeps between experiences (EWC's Fisher, LR's buffer) and test
accuracies.
"""
import jax
import numpy as np
import pytest
from test_train import tiny_config

from phn_jax import runtime, train
from phn_jax.strategies.base import TrainData

# (case, overrides, also compare experience 1's step: everything trains, no regulariser)
CASES = {
    "hn_first": ({"strategy.name": "hn", "strategy.order": "first"}, True),
    "hn_second": ({"strategy.name": "hn", "strategy.order": "second", "optim.eps_root": 1e-8}, False),
    "lr": ({"strategy.name": "lr", "strategy.buffer_size": 8, "strategy.replay_batch_size": 8}, False),
    "ewc": ({"strategy.name": "ewc"}, False),
    "naive": ({"strategy.name": "naive"}, True),
}
# one batch of 16 per experience: each epoch is a single step
SMALL = {"data.num_experiences": 2, "data.train_per_class": 8, "data.test_per_class": 16, "train.epochs": 1,
         "eval.task_inference": False}


def _first_moments(state):
    """Adam's first moments (mu) of every optimizer state in `state`, flattened, in one order."""
    leaves = jax.tree_util.tree_flatten_with_path(state["opt"])[0]
    mus = [np.asarray(v, np.float64).ravel() for path, v in leaves if "mu" in jax.tree_util.keystr(path)]
    assert mus, "no Adam first moment in the state"
    return np.concatenate(mus)


def _on_mesh(case: str, num_devices: int, state0):
    """From the host state `state0` on a mesh of `num_devices`: (experience 1's step or None, the
    state after end_experience of experience 1, experience 2's step, test accuracy of state0 on
    experience 1), each step as host (state, metrics)."""
    overrides, first_step = CASES[case]
    s = train.setup(tiny_config(**SMALL, **overrides, **{"train.num_devices": num_devices}))
    rep = lambda tree: runtime.replicate(tree, s.mesh)
    arrays = []
    for t, exp in enumerate(s.stream.experiences):
        images, labels = rep((exp.train_images, exp.train_labels))
        arrays.append((images, labels, rep(np.full(labels.shape, t, np.int32)), labels.shape[0]))

    def step(state, t):
        state = s.strategy.begin_experience(rep(state), t)
        state, m = train.train_epoch(state, *arrays[t], t, jax.random.key(10 + t), strategy=s.strategy,
                                     spec=s.stream.experiences[t].preprocess, batch_size=16, first=t == 0,
                                     mesh=s.mesh)
        return jax.device_get((state, m))

    step1 = step(state0, 0) if first_step else None
    exp = s.stream.experiences[0]
    after1 = s.strategy.end_experience(rep(state0), 0, TrainData(*arrays[0], exp.preprocess, jax.random.key(20)))
    step2 = step(after1, 1)
    x, y = rep((exp.test_images, exp.test_labels))
    state = rep(state0)
    acc = train.evaluate(state, s.strategy.eval_context(state), x, y, y.shape[0], 0, jax.random.key(30),
                         strategy=s.strategy, spec=exp.preprocess, batch_size=32, mesh=s.mesh)
    return step1, jax.device_get(after1), step2, float(acc)


@pytest.mark.parametrize("case", list(CASES))
def test_four_devices_equal_one(case):
    assert len(jax.devices()) == 4
    s = train.setup(tiny_config(**SMALL, **CASES[case][0], **{"train.num_devices": 1}))
    state0 = jax.device_get(train.init_state(jax.random.key(0), strategy=s.strategy))
    step1, after1, step2, acc1 = _on_mesh(case, 1, state0)
    step1_4, after1_4, step2_4, acc4 = _on_mesh(case, 4, state0)
    for one, four in ((step1, step1_4), (step2, step2_4)):
        if one is None:
            continue
        (s1, m1), (s4, m4) = one, four
        # float32 (DESIGN §6): L_H(ψ') ∝ ‖α·g1‖² doubles g1's relative error, so 1e-3 relative
        for k in ("loss", "ce", "reg", "cos_g1_g2"):
            np.testing.assert_allclose(m4[k], m1[k], rtol=1e-3, atol=1e-6, err_msg=k)
        np.testing.assert_array_equal(m4["correct"], m1["correct"])
        # the gradient (float32: entrywise to 1e-3 relative or 1e-4 of its largest entry; as a vector to 1e-4)
        g1, g4 = _first_moments(s1), _first_moments(s4)
        np.testing.assert_allclose(g4, g1, rtol=1e-3, atol=1e-4 * np.abs(g1).max())
        assert np.linalg.norm(g4 - g1) <= 1e-4 * np.linalg.norm(g1)
    # end_experience from the same state: EWC's importances, LR's buffer of features, HN unchanged
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6), after1, after1_4)
    if case.startswith("hn"):  # experience 2 regularises towards experience 1's outputs
        assert step2[1]["reg"][0] > 0
    # evaluation of the same state, its test batch of 32 split over 4 devices
    assert acc4 == acc1 and acc1 > 0
