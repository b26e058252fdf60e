"""The multi-head baselines in isolation: per-sample heads, the latent-replay buffer (size, class
balance, feature shapes, the replay term's weight c), EWC's penalty and importances, Joint's union
of experiences, and the config errors. Small models (nf=4, 16×16 inputs); no training runs."""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from arrays import normal
from phn_jax import data, models, run_setup
from phn_jax.config import base_config
from phn_jax.strategies import EWC, LatentReplay, MultiHeadResNet, create_strategy
from phn_jax.strategies.base import TrainData, masked_cross_entropy
from phn_jax.strategies.ewc import consolidate, ewc_penalty
from phn_jax.strategies.latent_replay import class_balanced_selection

RESNET = models.ResNetConfig(num_classes=3, nf=4, blocks_per_stage=(1, 1, 1, 1))  # ResNet-10: half the compile
MODEL = MultiHeadResNet(RESNET, num_tasks=4)
SPEC = data.Preprocess(mean=(0.5,) * 3, std=(0.25,) * 3)
SHAPE = (16, 16, 3)
# Adam's first step is lr·g/(|g| + ε): where |g| ≈ ε, a rounding error δ of g moves it by up to
# lr·δ/(4ε), a few percent of lr = 1e-3 for float32 gradients (1.2e-5 seen); a wrong gradient moves it by ~lr.
ADAM_ATOL = 5e-5


def _images(key, n, shape=SHAPE):
    return jax.random.randint(key, (n, *shape), 0, 256).astype(jnp.uint8)


def _train_data(key, n, task, n_pad=None, classes=3):
    """Real samples first (labels cycling through the classes), then zero padding up to n_pad."""
    n_pad = n_pad or n
    k_img, k_end = jax.random.split(key)
    labels = jnp.where(jnp.arange(n_pad) < n, jnp.arange(n_pad) % classes, 0).astype(jnp.int32)
    return TrainData(_images(k_img, n_pad), labels, jnp.full((n_pad,), task, jnp.int32), n, SPEC, k_end)


def test_per_sample_heads_equal_one_head_at_a_time():
    params, _ = MODEL.init(jax.random.key(0))
    x = normal(1, (6, *SHAPE))
    task = jnp.array([0, 3, 1, 1, 2, 0])
    logits = jax.jit(lambda t: MODEL.logits(params, x, t, train=False)[0])
    mixed = logits(task)
    every = jax.jit(lambda: MODEL.logits_all_tasks(params, x))()  # [T, N, C], for task inference
    for t in range(4):  # same batch (same batch statistics), one head for all samples
        single = logits(jnp.full((6,), t))
        np.testing.assert_allclose(mixed[task == t], single[task == t], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(every[t], single, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Latent replay


def test_buffer_stays_within_size_and_class_balanced():
    m, classes, tasks = 20, 3, 6
    rng = np.random.default_rng(0)
    old_class, old_valid = jnp.zeros(m, jnp.int32), jnp.zeros(m, bool)
    seen = jnp.zeros(tasks * classes, bool)
    for t in range(tasks):
        n = 40
        labels = rng.integers(0, classes, n)
        labels[:classes * 8] = np.arange(classes * 8) % classes  # ≥ 8 samples of every class
        new_class = jnp.asarray(t * classes + labels, jnp.int32)
        new_valid = jnp.arange(n) < 30 + t  # a padded tail
        keep_old, keep_new, seen = class_balanced_selection(
            old_class, old_valid, new_class, new_valid, seen, jax.random.key(t), m)
        assert not jnp.any(keep_old & ~old_valid) and not jnp.any(keep_new & ~new_valid)
        kept = np.concatenate([np.asarray(old_class)[np.asarray(keep_old)], np.asarray(new_class)[np.asarray(keep_new)]])
        counts = np.bincount(kept, minlength=tasks * classes)[:(t + 1) * classes]
        assert kept.size <= m and kept.size == min(m, 8 * (t + 1) * classes) or counts.min() < 8
        assert counts.max() - counts.min() <= 1, (t, counts)
        assert int(seen.sum()) == (t + 1) * classes
        # Old classes only shrink, to a random subset of what they had.
        if t:
            before = np.bincount(np.asarray(old_class)[np.asarray(old_valid)], minlength=tasks * classes)
            assert np.all(np.bincount(np.asarray(old_class)[np.asarray(keep_old)], minlength=tasks * classes)
                          <= before)
        old_class = jnp.asarray(np.pad(kept, (0, m - kept.size)), jnp.int32)
        old_valid = jnp.arange(m) < kept.size


@pytest.fixture(scope="module")
def lr0():
    """LR-0 (replays preprocessed images) with a buffer of 10, after experiences 0 and 1."""
    strategy = LatentReplay(MODEL, freeze_depth=0, input_shape=SHAPE, buffer_size=10, replay_batch_size=4)
    state = strategy.init(jax.random.key(0))
    datas = [_train_data(jax.random.key(10 + t), 12 + 3 * t, t, n_pad=16) for t in range(2)]
    states = []
    for t, d in enumerate(datas):
        state = strategy.end_experience(state, t, d)
        states.append(state)
    return strategy, states, datas


def test_latent_replay_buffer_holds_balanced_features_of_real_samples(lr0):
    strategy, states, datas = lr0
    for t, (state, d) in enumerate(zip(states, datas)):
        b = jax.device_get(state["buffer"])
        valid = b["valid"]
        assert valid.sum() == 10  # every class has ≥ 3 samples: the buffer is full
        counts = np.bincount(b["task"][valid] * 3 + b["y"][valid], minlength=6)[:3 * (t + 1)]
        assert counts.max() - counts.min() <= 1, counts
        # Each stored z is the test-time preprocessed image (k = 0) of a real sample with its label.
        for i in np.flatnonzero(valid):
            src = datas[b["task"][i]]
            x = data.preprocess(SPEC, jax.random.key(0), src.images[:src.num_valid], train=False)
            match = np.flatnonzero(np.all(np.isclose(np.asarray(x), b["z"][i]), axis=(1, 2, 3)))
            assert match.size == 1 and src.labels[match[0]] == b["y"][i]
    assert np.all(np.asarray(states[1]["buffer"]["seen"][:2]))
    assert not np.any(np.asarray(states[1]["buffer"]["seen"][2:]))


@pytest.mark.parametrize("k,expected", [(0, (32, 32, 3)), (1, (32, 32, 20)), (2, (16, 16, 40)), (3, (8, 8, 80)),
                                        (4, (4, 4, 160))])
def test_buffer_stores_the_frozen_parts_output_shape(k, expected):
    model = MultiHeadResNet(models.ResNetConfig(num_classes=5), num_tasks=20)  # nf = 20, 32×32 inputs
    strategy = LatentReplay(model, freeze_depth=k, input_shape=(32, 32, 3), buffer_size=200)
    assert strategy.feature_shape == expected
    state = jax.eval_shape(strategy.init, jax.random.key(0))
    assert state["buffer"]["z"].shape == (200, *expected)

    def end(s, images, labels, tasks, key):
        return strategy.end_experience(s, 0, TrainData(images, labels, tasks, 50, data.Preprocess(), key))

    after = jax.eval_shape(end, state, jax.ShapeDtypeStruct((50, 32, 32, 3), jnp.uint8),
                           jax.ShapeDtypeStruct((50,), jnp.int32), jax.ShapeDtypeStruct((50,), jnp.int32),
                           jax.random.key(1))
    chex.assert_trees_all_equal_shapes_and_dtypes(after, state)


def _batch(seed, n=8, task=1):
    return {"x": normal(seed, (n, *SHAPE)), "y": np.random.default_rng(seed + 100).integers(0, 3, n, np.int32),
            "mask": jnp.arange(n) < n - 1, "task": jnp.full((n,), task, jnp.int32)}


def test_replay_enters_the_loss_with_weight_c():
    """One step of LR-2 in experience 2 against a hand-written one: Adam on
    CE(batch) + c·CE(h(z_b), y_b) over the trainable rest, the frozen part untouched; with c = 0 the
    replayed batch is not computed, and with c = 1 it moves the trainable rest."""
    k = 2
    frozen, trainable = models.part_names(k)
    batch, key = _batch(3), jax.random.key(4)
    strategies = {c: LatentReplay(MODEL, freeze_depth=k, input_shape=SHAPE, buffer_size=10, replay_batch_size=4,
                                  replay_coef=c) for c in (0.0, 1.0)}
    state = strategies[1.0].init(jax.random.key(0))  # one state for every c: a buffer after experience 1
    state = strategies[1.0].end_experience(state, 0, _train_data(jax.random.key(5), 12, 0))
    state = strategies[1.0].begin_experience(state, 1)
    b = state["buffer"]
    idx, rmask = strategies[1.0].replay_batch(b, key)
    assert int(rmask.sum()) == 4 and np.all(np.asarray(b["task"])[np.asarray(idx)] == 0)

    @jax.jit
    def hand_step(params, opt, c):
        def loss(params):
            z, _ = MODEL.trunk(params, batch["x"], k, train=True, mask=batch["mask"], frozen=True)
            ce = masked_cross_entropy(MODEL.head(params, z, 1, k, train=True, mask=batch["mask"])[0], batch["y"],
                                      batch["mask"])
            replay = masked_cross_entropy(MODEL.head(params, b["z"][idx], b["task"][idx], k, train=True,
                                                     mask=rmask)[0], b["y"][idx], rmask)
            return ce + c * replay, (ce, replay)

        (total, (ce, replay)), g = jax.value_and_grad(loss, has_aux=True)(params)
        updates, _ = optax.adam(1e-3).update(g, opt, params)
        return optax.apply_updates(params, updates), (total, ce, replay)

    stepped = {}
    for c, strategy in strategies.items():
        stepped[c] = new, m = jax.jit(strategy.train_step, static_argnums=4)(state, batch, key, 1, False)
        expected, (total, ce, replay) = hand_step(state["params"], state["opt"], c)
        # The replay term is not computed when c = 0 (reported as 0).
        np.testing.assert_allclose([m["loss"], m["ce"], m["reg"]], [total, ce, replay if c else 0.0], rtol=1e-5)
        for name in frozen:
            chex.assert_trees_all_equal(new["params"][name], state["params"][name])
        for name in trainable:
            chex.assert_trees_all_close(new["params"][name], expected[name], rtol=1e-5, atol=ADAM_ATOL)
    conv = lambda c: stepped[c][0]["params"]["stage4"]["block1"]["conv2"]
    assert not np.allclose(conv(1.0), conv(0.0))


# ---------------------------------------------------------------------------------------------
# EWC


def test_ewc_penalty_equals_hand_computed_value():
    theta = {"a": jnp.array([1.0, -2.0]), "b": jnp.array([[0.5], [3.0]])}
    fisher = {"a": jnp.array([[2.0, 1.0], [0.5, 4.0]]), "b": jnp.array([[[1.0], [0.0]], [[3.0], [2.0]]])}
    star = {"a": jnp.array([[0.0, 0.0], [1.0, -1.0]]), "b": jnp.array([[[0.0], [1.0]], [[0.5], [2.0]]])}
    # task 0: a: 2·1² + 1·(−2)² = 6; b: 1·0.5² + 0·2² = 0.25
    # task 1: a: 0.5·0² + 4·(−1)² = 4; b: 3·0² + 2·1² = 2
    zeros = jax.tree_util.tree_map(jnp.zeros_like, theta)
    ewc = {"importance": zeros, "center": zeros, "offset": jnp.zeros(())}
    assert float(ewc_penalty(theta, **ewc)) == 0.0  # nothing consolidated
    row = lambda tree, t: jax.tree_util.tree_map(lambda x: x[t], tree)
    ewc = consolidate(ewc, row(fisher, 0), row(star, 0))
    assert float(ewc_penalty(theta, **ewc)) == pytest.approx(6.25)
    ewc = consolidate(ewc, row(fisher, 1), row(star, 1))
    assert float(ewc_penalty(theta, **ewc)) == pytest.approx(12.25)
    # b[1]: A = 0 + 2, μ = 2 (task 1's θ*, the only one with importance there)
    assert float(ewc["importance"]["b"][1, 0]) == 2.0 and float(ewc["center"]["b"][1, 0]) == 2.0
    strategy = EWC(MODEL, ewc_lambda=2.0)
    state = strategy.init(jax.random.key(0))
    # F = 1 and θ* = θ + 0.1 for task 0 only: Ω = |θ| · 0.1²
    star = jax.tree_util.tree_map(lambda p: np.asarray(p) + 0.1, state["params"])
    ones = jax.tree_util.tree_map(np.ones_like, star)
    state = {**state, "ewc": consolidate(state["ewc"], ones, star)}
    n = models.count_params(state["params"])
    omega = jax.jit(strategy.regularizer, static_argnames="first")(state["params"], state, None, first=False)
    assert float(omega) == pytest.approx(n * 0.01, rel=1e-4)
    _, m = jax.jit(strategy.train_step, static_argnums=4)(state, _batch(1), jax.random.key(2), 1, False)
    assert float(m["loss"]) == pytest.approx(float(m["ce"]) + 2.0 * n * 0.01, rel=1e-4)


def test_ewc_merged_penalty_equals_the_per_task_sum_in_float64():
    """Ω(θ) and ∇Ω(θ) from `consolidate`d (A, μ, K) against Σ_t Σ_i F_{t,i} (θ_i − θ*_{t,i})² (Avalanche's
    per-task sum), after 1, 2 and 3 tasks, with importances that are 0 in some coordinates (a head
    other tasks never train) and θ*_t far apart."""
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        shape = {"w": (5, 3), "b": (3,)}
        draw = lambda scale: {k: jnp.asarray(scale * rng.normal(size=v)) for k, v in shape.items()}
        theta = draw(1.0)
        tasks = [({k: jnp.square(v) * (rng.uniform(size=v.shape) > 0.3) for k, v in draw(1.0).items()}, draw(3.0))
                 for _ in range(3)]
        tasks[0][0]["b"] = jnp.zeros(3)  # no importance anywhere in task 0's b: μ stays 0 until task 1's
        zeros = jax.tree_util.tree_map(jnp.zeros_like, theta)
        ewc = {"importance": zeros, "center": zeros, "offset": jnp.zeros(())}
        per_task = lambda p, n: sum(jnp.sum(f[k] * jnp.square(p[k] - s[k])) for f, s in tasks[:n] for k in shape)
        for n, (f, s) in enumerate(tasks, 1):
            ewc = consolidate(ewc, f, s)
            np.testing.assert_allclose(ewc_penalty(theta, **ewc), per_task(theta, n), rtol=1e-12)
            chex.assert_trees_all_close(jax.grad(ewc_penalty)(theta, **ewc), jax.grad(per_task)(theta, n),
                                        rtol=1e-12, atol=1e-12)
        assert float(per_task(theta, 3)) > 10 and float(ewc["offset"]) > 10  # not vacuous: K matters


def test_ewc_importance_is_the_mean_squared_minibatch_gradient():
    strategy = EWC(MODEL, fisher_batch_size=4)
    state = strategy.init(jax.random.key(0))
    d = _train_data(jax.random.key(1), 6, task=2, n_pad=12)  # minibatches of 4 and 2 real samples
    new = strategy.end_experience(state, 2, d)

    @jax.jit
    def grad(images, labels):
        x = data.preprocess(SPEC, jax.random.key(0), images, train=False)
        ce = lambda p: masked_cross_entropy(MODEL.logits(p, x, 2, train=False)[0], labels, jnp.ones(len(labels), bool))
        return jax.grad(ce)(state["params"])

    grads = jax.device_get([grad(d.images[lo:hi], d.labels[lo:hi]) for lo, hi in ((0, 4), (4, 6))])
    expected = jax.tree_util.tree_map(lambda a, b: (a**2 + b**2) / 2, *grads)
    new, state = jax.device_get((new, state))  # NumPy from here: checked leaf by leaf
    got = new["ewc"]["importance"]  # the first task consolidated: A = F_t, μ = θ*_t where F_t > 0, K = 0
    chex.assert_trees_all_close(got, expected, rtol=1e-3, atol=1e-8)
    chex.assert_trees_all_equal(jax.tree_util.tree_map(lambda a, c, p: np.where(a > 0, p, 0), got, new["ewc"]["center"],
                                                       state["params"]), new["ewc"]["center"])
    assert float(new["ewc"]["offset"]) == 0.0
    assert float(jnp.abs(got["classifier"]["kernel"][0]).sum()) == 0  # other tasks' heads: no importance


# ---------------------------------------------------------------------------------------------
# Joint, config


def _stream():
    return data.build_stream(base_config("synthetic").data)


def test_joint_trains_on_the_union_with_task_ids():
    stream = _stream()
    images, labels, tasks, spec = run_setup._training_set(stream, 1, cumulative=True)
    e0, e1 = stream.experiences[:2]
    np.testing.assert_array_equal(images, np.concatenate([e0.train_images, e1.train_images]))
    np.testing.assert_array_equal(labels, np.concatenate([e0.train_labels, e1.train_labels]))
    assert tasks.tolist() == [0] * len(e0.train_labels) + [1] * len(e1.train_labels) and spec == e0.preprocess
    _, _, tasks, _ = run_setup._training_set(stream, 1, cumulative=False)
    assert set(tasks.tolist()) == {1}


def test_joint_refuses_streams_with_different_pipelines(tmp_path):
    stream = _stream()
    noisy = dataclasses.replace(stream.experiences[1], preprocess=dataclasses.replace(SPEC, noise="blur"))
    stream = dataclasses.replace(stream, experiences=(stream.experiences[0], noisy, *stream.experiences[2:]))
    with pytest.raises(ValueError, match="one input pipeline"):
        run_setup._pipeline(stream, 0, cumulative=True)
    assert run_setup._pipeline(stream, 1, cumulative=False) == noisy.preprocess


@pytest.mark.parametrize("overrides,match", [
    ({"strategy.name": "rehearsal"}, "unknown strategy 'rehearsal'"),
    ({"strategy.name": "lr", "strategy.freeze_depth": 5}, "freeze depth k=5 is out of range"),
    ({"strategy.name": "lr", "strategy.buffer_size": 0}, "replay_coef=1.0 replays from a buffer"),
    ({"strategy.name": "lr", "strategy.replay_coef": -1.0}, "replay_coef must be ≥ 0"),
    ({"strategy.name": "lr", "strategy.replay_batch_size": 0}, "replay_batch_size must be ≥ 1"),
    ({"strategy.name": "ewc", "strategy.ewc_lambda": -1.0}, "ewc_lambda must be ≥ 0"),
])
def test_bad_config_is_a_clear_error(overrides, match):
    c = base_config("synthetic")
    for key, value in overrides.items():
        section, field = key.split(".")
        c[section][field] = value
    with pytest.raises(ValueError, match=match):
        create_strategy(c, _stream())


def test_factory_builds_every_strategy():
    c = base_config("synthetic")
    c.model.num_classes = 2
    kinds = {}
    for name in ("naive", "ewc", "lr", "joint"):
        c.strategy.name = name
        kinds[name] = create_strategy(c, _stream())
    assert [type(s).__name__ for s in kinds.values()] == ["Naive", "EWC", "LatentReplay", "Joint"]
    assert kinds["joint"].cumulative and not kinds["naive"].cumulative
    assert kinds["lr"].buffer_size == 200 and kinds["lr"].replay_batch_size == 64 and kinds["lr"].freeze_depth == 3
    assert kinds["ewc"].ewc_lambda == 1.0 and kinds["ewc"].fisher_batch_size == c.train.batch_size
