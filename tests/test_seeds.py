"""Several seeds in one program (`config.seeds`): each seed's step, end of experience and
evaluation inside the vmapped program equal that seed's alone; a multi-seed run writes each seed's
results directory, the aggregate over seeds, and resumes exactly.

What is compared is what docs/design.md §6 says can be compared between two float32 programs (vmap turns
the seeds' convolutions into one grouped convolution, which sums in another order): the step's
metrics and Adam's first moment after one step, which is (1 − b1)·g (the whole gradient, look-ahead
included), not parameters after Adam steps.

Marked `system` (whole runs and their compilations, about 3 minutes): `make test-system`, which
`.ci/run` calls.
"""
import json
import time
import types

import jax
import numpy as np
import pytest
from runs import REAL, STREAM, first_moments, killed_after_checkpoint, tiny_config

from phn_jax import checkpoint, metrics, programs, report, run_setup, runtime, train

pytestmark = pytest.mark.system

SEEDS = (0, 3)
# case: (overrides, also compare experience 1's step)
CASES = {
    "hn vmap": ({"strategy.name": "hn", "train.seed_axis": "vmap"}, True),
    "hn map": ({"strategy.name": "hn", "train.seed_axis": "map"}, False),
    "lr vmap": ({"strategy.name": "lr", "train.seed_axis": "vmap"}, False),
    "ewc vmap": ({"strategy.name": "ewc", "train.seed_axis": "vmap"}, False),
}


def _steps(s: run_setup.Setup, state0, first_step: bool):
    """From the (stacked) host state `state0`, with each seed's own stream: (experience 1's step or
    None, the state after end_experience of experience 1, experience 2's step, test samples right of
    state0 on experience 1); steps as host (state, metrics). Each seed's first REAL samples of an
    experience, mixed so both classes are among them."""
    rep = lambda tree: runtime.replicate(tree, s.mesh)
    key = lambda i: programs.over_seeds(jax.random.key, s.seed_axis)(s.stack([i + seed for seed in s.seeds]))
    arrays = []
    for t in range(2):
        exps = [stream.experiences[t] for stream in s.streams]
        mixed = [np.random.default_rng(t).permutation(e.train_labels.shape[0])[:64] for e in exps]
        images, labels = rep(s.stack([(e.train_images[m], e.train_labels[m]) for e, m in zip(exps, mixed)]))
        arrays.append((images, labels, rep(np.full(labels.shape, t, np.int32)), s.stack([REAL] * len(exps))))
    spec = s.stream.experiences[0].preprocess

    def step(state, t):
        state = programs.begin_experience(rep(state), t, strategy=s.strategy, seed_axis=s.seed_axis)
        state, m = programs.train_epoch(state, *arrays[t], t, key(10 + t), strategy=s.strategy, spec=spec,
                                     batch_size=s.config.train.batch_size, first=s.first(t), mesh=s.mesh,
                                     seed_axis=s.seed_axis)
        return jax.device_get((state, m))

    step1 = step(state0, 0) if first_step else None
    after1 = jax.device_get(programs.end_experience(rep(state0), *arrays[0], key(20), 0, strategy=s.strategy, spec=spec,
                                                 seed_axis=s.seed_axis))
    step2 = step(after1, 1)
    exps = [stream.experiences[0] for stream in s.streams]
    x, y = rep(s.stack([(e.test_images, e.test_labels) for e in exps]))
    n = s.stack([e.test_labels.shape[0] for e in exps])
    state = rep(state0)
    context = programs.eval_context(state, strategy=s.strategy, seed_axis=s.seed_axis)
    correct = programs.evaluate(state, context, x, y, n, 0, key(30), strategy=s.strategy, spec=spec,
                             batch_size=s.config.train.eval_batch_size, mesh=s.mesh, seed_axis=s.seed_axis)
    return step1, after1, step2, jax.device_get(correct)


@pytest.mark.parametrize("case", list(CASES))
def test_each_seed_equals_that_seed_alone(case):
    overrides = {**STREAM, **CASES[case][0]}
    group = run_setup.setup(tiny_config(**overrides, seeds=SEEDS))
    assert group.stacked and group.seeds == SEEDS and group.seed_axis == overrides["train.seed_axis"]
    # each seed's stream is its own (the synthetic stream's seed draws its prototypes)
    assert not np.array_equal(group.streams[0].experiences[0].train_images, group.streams[1].experiences[0].train_images)
    state0 = jax.device_get(programs.init_state(group.key(), strategy=group.strategy, seed_axis="vmap"))
    together = _steps(group, state0, CASES[case][1])
    for i, seed in enumerate(SEEDS):
        alone_setup = run_setup.setup(tiny_config(**overrides, seed=seed))
        np.testing.assert_array_equal(alone_setup.stream.experiences[1].train_images,
                                      group.streams[i].experiences[1].train_images)
        alone = _steps(alone_setup, jax.tree_util.tree_map(lambda a: a[i], state0), CASES[case][1])
        mine = jax.tree_util.tree_map(lambda a: a[i], together)
        for one, both in ((alone[0], mine[0]), (alone[2], mine[2])):
            if one is None:
                continue
            (s1, m1), (s2, m2) = one, both
            assert m1["count"].tolist()[0] == REAL and not any(m1["count"].tolist()[1:])
            for k in ("loss", "ce", "reg", "cos_g1_g2"):
                np.testing.assert_allclose(m2[k], m1[k], rtol=1e-3, atol=1e-6, err_msg=f"seed {seed}: {k}")
            np.testing.assert_array_equal(m2["correct"], m1["correct"])
            g1, g2 = first_moments(s1), first_moments(s2)
            np.testing.assert_allclose(g2, g1, rtol=1e-3, atol=1e-4 * np.abs(g1).max(), err_msg=f"seed {seed}")
            assert np.linalg.norm(g2 - g1) <= 1e-3 * np.linalg.norm(g1)
        # end_experience (EWC's Fisher, LR's buffer) and test samples right of the seed's own state
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6), alone[1], mine[1])
        assert float(mine[3]) == float(alone[3]) > 0
        if case.startswith("hn"):
            assert mine[2][1]["reg"][0] > 0  # experience 2 is regularised towards experience 1


def _seeds_config(**overrides):
    return tiny_config(**{"train.epochs": 3, "seeds": SEEDS, **overrides})


@pytest.fixture(scope="module")
def seeds_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds")
    return root, train.train_and_evaluate(_seeds_config(), root / "hn_seed{seed}")


def test_results_directories_and_aggregate(seeds_run):
    root, summaries = seeds_run
    group = root / "hn_seeds0-3"
    assert sorted(p.name for p in root.iterdir()) == ["hn_seed0", "hn_seed3", "hn_seeds0-3"]
    assert checkpoint.manager(group).all_steps() == [6, 9] and (group / "log.txt").is_file()
    for seed, summary in zip(SEEDS, summaries):
        d = root / f"hn_seed{seed}"
        assert json.loads((d / "metrics.json").read_text()) == summary
        assert json.loads((d / "config.json").read_text())["seed"] == seed
        assert json.loads((d / "group.json").read_text()) == {"workdir": str(group), "seed": seed, "seeds": list(SEEDS)}
        assert json.loads((d / "stream.json").read_text()) == json.loads(json.dumps(
            metrics.jsonable(run_setup.setup(tiny_config(seed=seed)).stream.describe())))
        assert len((d / "train_history.csv").read_text().splitlines()) == 1 + 3 * 3
        assert not (d / checkpoint.CHECKPOINT_DIR).exists() and not (d / "run.lock").exists()
    # the aggregate against numbers computed here: mean and sample std (n − 1) over the two seeds
    agg = json.loads((group / report.AGGREGATE_JSON).read_text())
    assert agg["seeds"] == list(SEEDS) and agg["completed_experiences"] == 3
    for key in ("aca", "learning_accuracy", "forgetting", "class_incremental_accuracy"):
        a, b = (s[key] for s in summaries)
        assert agg[key]["mean"] == pytest.approx((a + b) / 2) and agg[key]["n"] == 2
        assert agg[key]["std"] == pytest.approx(abs(a - b) / np.sqrt(2))
    final = [[s["accuracy_matrix"][2][j] for s in summaries] for j in range(3)]
    assert [m["mean"] for m in agg["per_experience"]["final_accuracy"]] == pytest.approx(np.mean(final, 1))
    md = (group / report.AGGREGATE_MD).read_text()
    assert f"| aca (%) | {100 * agg['aca']['mean']:.2f} ± {100 * agg['aca']['std']:.2f} | 2 |" in md
    assert "seeds (0, 3) in one program" in (group / "log.txt").read_text()


def test_each_seeds_time_is_its_share_of_the_programs(tmp_path, monkeypatch):
    """A clock on which each call of the epoch program (every seed's epoch at once) takes 10 s and
    nothing else takes time: each of the 2 seeds' epochs is 5 s in its history and each experience of
    3 epochs 15 s in its metrics, adding up to the program's 30 s; not the program's time for each."""
    clock = [0.0]
    epoch = programs.train_epoch

    def ten_seconds(*args, **kwargs):
        clock[0] += 10.0
        return epoch(*args, **kwargs)

    monkeypatch.setattr(programs, "train_epoch", ten_seconds)
    monkeypatch.setattr(train, "time", types.SimpleNamespace(perf_counter=lambda: clock[0], monotonic=time.monotonic))
    summaries = train.train_and_evaluate(_seeds_config(), tmp_path / "hn_seed{seed}")
    for seed, summary in zip(SEEDS, summaries):
        assert summary["per_experience"]["time_s"] == [15.0, 15.0, 15.0] and summary["total_time_s"] == 45.0
        history = (tmp_path / f"hn_seed{seed}" / "train_history.csv").read_text().splitlines()
        assert [row.split(",")[-1] for row in history[1:]] == ["5.0"] * 9


def test_resume_equals_uninterrupted_and_directories_are_protected(seeds_run, tmp_path, monkeypatch):
    _, summaries = seeds_run
    killed_after_checkpoint(monkeypatch, 6, _seeds_config(), tmp_path)  # after experience 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "aggregate.json", "aggregate.md", "checkpoints", "config.json", "config.yaml", "log.txt", "runtime.json",
        "seed0", "seed3"]
    assert json.loads((tmp_path / report.AGGREGATE_JSON).read_text())["completed_experiences"] == 1  # killed in the checkpoint before its results
    with pytest.raises(FileExistsError, match="--resume"):
        train.train_and_evaluate(_seeds_config(), tmp_path)
    with pytest.raises(FileExistsError, match="one seed's results of the multi-seed run"):
        train.train_and_evaluate(tiny_config(seed=3), tmp_path / "seed3")
    resumed = train.train_and_evaluate(_seeds_config(), tmp_path, resume=True)
    for a, b in zip(resumed, summaries):
        assert a["accuracy_matrix"] == b["accuracy_matrix"] and a["aca"] == b["aca"]
    assert json.loads((tmp_path / report.AGGREGATE_JSON).read_text())["aca"] == metrics.aggregate_seeds(
        summaries, SEEDS)["aca"]
