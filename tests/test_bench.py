"""The bench's bookkeeping (`phn_jax.bench`), on constructed timings: its ratios and table are
computed from the same run's figures. (The bench itself is `make bench`, never a timed test.)"""
from pathlib import Path

import numpy as np
import pytest

from phn_jax import bench, checkpoint
from phn_jax.config import check_config, load_config

ROOT = Path(__file__).parent.parent


def _t(name, ms, seeds=1, gflop_per_s=None):
    return bench.Timing(name, seeds, ms, ms, ms, 1e3 * bench.BATCH * seeds / ms, gflop_per_s, None, 1.0, 0.5)


def test_ratios_and_table():
    timings = [_t("HN-0 first", 100.0), _t("HN-0 second", 180.0), _t("HN-3 first, 1 seed", 50.0),
               _t("HN-3 first, 3 seeds map", 150.0, 3), _t("HN-3 first, 3 seeds vmap", 75.0, 3)]
    r = bench.ratios(timings)
    assert r["HN-0 second / first order (time)"] == pytest.approx(1.8)
    assert r["HN-3 first: 3 seeds (map) / 1 seed (images/s)"] == pytest.approx(1.0)
    assert r["HN-3 first: 3 seeds (vmap) / 1 seed (images/s)"] == pytest.approx(2.0)
    assert r["HN-0 second / first order (floor: convolutions)"] == bench.second_order_floor(0)
    assert len(r) == 4  # no GFLOP/s: no FLOP ratio
    # FLOPs per step = GFLOP/s × time: 2 × 180 against 3 × 100
    flops = bench.ratios([_t("HN-1 first", 100.0, gflop_per_s=3.0), _t("HN-1 second", 180.0, gflop_per_s=2.0)])
    assert flops == {"HN-1 second / first order (time)": pytest.approx(1.8),
                     "HN-1 second / first order (FLOPs)": pytest.approx(1.2),
                     "HN-1 second / first order (floor: convolutions)": bench.second_order_floor(1)}
    md = bench.markdown(timings, r, {"platform": "cpu", "device": "cpu", "cpu": "x86_64", "jax": "0"})
    assert "| HN-0 second | 1 | 180.0 (180.0–180.0) | 356 | n/a | n/a | 1.0 / 0.5 |" in md
    assert "| HN-0 second / first order (time) | 1.80 |" in md


def test_cases_cover_every_depth_and_order():
    groups = [[name for name, _, _ in group] for group in bench.cases(bench.PARTS)]
    names = [name for group in groups for name in group]
    assert len(names) == len(set(names))  # each program timed once
    for k in range(5):  # what a ratio compares is timed together
        assert [f"HN-{k} {order}" for order in ("none", "first", "second")] in groups
    assert list(bench.FULL_NETWORK) + [bench.TORCH_STEP] in groups
    assert {"Naive", "EWC", "LR-3", "HN-3 experience 1, 8 seeds vmap"} <= set(names)
    for title in bench.MNIST_CONFIGS:
        assert [f"{title} experience 1", f"{title} look-ahead", f"{title} HNET+TIR", f"{title} HNET+R"] in groups
    with pytest.raises(SystemExit):
        bench.main(["--parts", "nothing"])


def test_full_network_steps_over_the_pytorch_step_of_the_same_run():
    timings = [_t("Naive", 600.0), _t("HN-0 experience 1", 500.0), _t("HN-3 first", 50.0),
               _t(f"{bench.TORCH_STEP} (torch 2.13.0, 2 threads)", 200.0)]
    r = bench.ratios(timings)
    assert r == {"Naive / PyTorch plain step (time)": pytest.approx(3.0),
                 "HN-0 experience 1 / PyTorch plain step (time)": pytest.approx(2.5)}
    [group] = bench.cases(["torch"])
    assert [name for name, _, _ in group] == list(bench.FULL_NETWORK) + [bench.TORCH_STEP]
    assert group[-1][1] is None  # PyTorch's step: torch_program


def test_pytorch_step_without_torch_says_how_to_install_it():
    import importlib.util
    import sys

    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed in this environment")
    with pytest.raises(RuntimeError, match="make bench-torch installs torch"):
        bench.torch_program(sys.executable)
    with pytest.raises(SystemExit):
        bench.main(["--parts", "torch", "--torch-python", "/nonexistent/python"])


def test_interleaved_rounds_cancel_a_drifting_machine():
    """A machine that slows down steadily (the n-th call takes 1 + n/40 of its time): programs timed
    in rounds of alternating order keep their true ratio (2.0); timed one after the other they do not."""
    def programs():
        calls = []

        def program(name, base):
            def step():
                calls.append(name)
                return base * (1 + len(calls) / 40)
            return bench.Program(name, 1, bench.BATCH, step)
        return [program("A", 0.1), program("B", 0.2)], calls

    pair, calls = programs()
    a, b = bench.time_interleaved(pair, steps=20)
    assert b.ms_median / a.ms_median == pytest.approx(2.0, rel=1e-12)
    assert calls[:4] == ["A", "A", "B", "B"]  # two warm-up calls each, then rounds of 5: A B, B A, A B, B A
    assert "".join(calls[4:]) == "A" * 5 + "B" * 10 + "A" * 10 + "B" * 10 + "A" * 5
    pair, _ = programs()
    a, b = bench.time_interleaved(pair, steps=20, rounds=1)
    assert b.ms_median / a.ms_median > 2.5


def test_projected_time_from_a_shorter_run():
    # two experiences of 3 epochs; the first epoch of each compiles and is left out of m_t
    history = [{"experience": "0", "epoch": "0", "time_s": "9.0"}, {"experience": "0", "epoch": "1", "time_s": "2.0"},
               {"experience": "0", "epoch": "2", "time_s": "4.0"}, {"experience": "1", "epoch": "0", "time_s": "5.0"},
               {"experience": "1", "epoch": "1", "time_s": "1.0"}, {"experience": "1", "epoch": "2", "time_s": "1.0"}]
    # T_0 = 20 (15 s of epochs + 5 s evaluation), m_0 = 3; T_1 = 10, m_1 = 1; 100 epochs: 97 more each
    assert bench.projected_time(history, [20.0, 10.0], 100) == pytest.approx(20 + 97 * 3 + 10 + 97 * 1)
    with pytest.raises(ValueError, match="needs ≥ 2"):
        bench.projected_time(history[:1], [12.0], 100)
    run = {"program": "x", "run_epochs": 3, "measured_s": 31.0, "aca": 0.5, "projected_epochs": 100,
           "projected_s": 600.0}
    md = bench.markdown([], {}, {"platform": "gpu", "device": "H200", "cpu": "x86_64", "jax": "0"}, run)
    assert "(20 × 100 epochs): **10.0 min**" in md
    with pytest.raises(SystemExit):
        bench.main(["--parts", "run", "--run-epochs", "1"])


def _conv_multiply_adds(jaxpr) -> int:
    """Multiply-adds of every convolution in a jaxpr (its sub-jaxprs included) on taps inside the
    input: the convolution itself, with its strides and padding, of ones over one channel pair
    counts them (each output sums the taps that land on the input), times the batch and C_in·C_out;
    a matmul of [N, H, W, C_in] by [C_in, C_out] (`kernels.conv`'s 1×1 convolution of few channels):
    N·H·W·C_in·C_out."""
    import jax

    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            (n, h, w, _), (kh, kw, c_in, c_out) = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape  # NHWC, HWIO
            ones = eqn.primitive.bind(np.ones((1, h, w, 1), np.float32), np.ones((kh, kw, 1, 1), np.float32),
                                      **eqn.params)
            total += n * int(ones.sum()) * c_in * c_out
        elif eqn.primitive.name == "dot_general" and eqn.outvars[0].aval.ndim == 4:  # a 1×1 convolution as
            total += np.prod(eqn.outvars[0].aval.shape) * eqn.invars[0].aval.shape[-1]  # a matmul (`kernels.conv`)
        for v in eqn.params.values():
            sub = getattr(v, "jaxpr", v)
            if hasattr(sub, "eqns"):
                total += _conv_multiply_adds(sub)
    return total


def test_second_order_floor_counts_the_network_s_convolutions():
    """The floor's layer table (`conv_layers`) holds the multiply-adds of the convolutions that the
    network's forward pass traces (16×16 and the bench's 32×32 inputs; 4 input channels, so that the
    stem is a convolution and not a matmul over patches). The floor, hand-computed on a two-stage
    network of one block each (nf 1, one input channel, 4×4 inputs; taps inside the input: 2+3+3+2 =
    10 per axis at stride 1, 2+3 = 5 at stride 2 and 2+2 = 4 on the 2×2 map): stem 100, stage1 100 +
    100, stage2 50 + 8 (the 1×1 shortcut: 2·2 taps, 1·2 channels) + 64, forward F = 422. k = 0: first
    order F + 100 (the stem reads the image: no ∂x) + 2·322 = 1166, second F + 3·100 + 8·322 = 3298;
    k = 1 (stage2's conv1 and shortcut read g_φ's features): first F + 58 + 2·64 = 608, second F +
    3·58 + 8·64 = 1108."""
    import jax

    from phn_jax import models
    cfg = models.ResNetConfig(in_channels=4)
    params = models.init_resnet(jax.random.PRNGKey(0), cfg)
    for size in (16, 32):
        x = jax.ShapeDtypeStruct((2, size, size, 4), np.float32)
        jaxpr = jax.make_jaxpr(lambda p, x: models.apply(p, x, cfg, train=True, norm_mode="batch"))(params, x).jaxpr
        assert _conv_multiply_adds(jaxpr) == 2 * sum(m for _, m, _ in bench.conv_layers(cfg, size))
    tiny = models.ResNetConfig(nf=1, in_channels=1, blocks_per_stage=(1, 1), strides=(1, 2))
    assert [m for _, m, _ in bench.conv_layers(tiny, 4)] == [100, 100, 100, 50, 8, 64]
    assert bench.second_order_floor(0, tiny, 4) == pytest.approx(3298 / 1166)
    assert bench.second_order_floor(1, tiny, 4) == pytest.approx(1108 / 608)
    assert bench.second_order_floor(2, tiny, 4) == 1.0  # nothing generated but the classifier
    assert [round(bench.second_order_floor(k), 2) for k in range(5)] == [2.99, 2.70, 2.34, 1.77, 1.0]


def test_mnist_configs_on_their_shapes_and_the_look_ahead_ratio():
    """The MNIST rows run von Oswald et al.'s configs (MLP target, chunked hypernetwork, batch 128) on a
    synthetic stream of their shapes; the ratio is look-ahead over experience-1 step."""
    split, permuted = (bench.mnist_config(name) for name in bench.MNIST_CONFIGS.values())
    assert (split.data.num_experiences, split.data.classes_per_experience, split.data.image_size) == (5, 2, 28)
    assert (permuted.data.num_experiences, permuted.data.classes_per_experience, permuted.data.image_size) == (10, 10, 32)
    for c in (split, permuted):
        assert (c.data.name, c.data.channels, c.model.arch, c.hnet.kind, c.train.batch_size) == (
            "synthetic", 1, "mlp", "chunked", 128)
    r = bench.ratios([_t("SplitMNIST experience 1", 2.0), _t("SplitMNIST look-ahead", 5.0),
                      _t("SplitMNIST HNET+TIR", 15.0)])
    assert r == {"SplitMNIST: look-ahead / experience-1 step (time)": pytest.approx(2.5),
                 "SplitMNIST: HNET+TIR / look-ahead step (time)": pytest.approx(3.0)}
    # the replay systems' steps: their strategies on the same configs, with a head per task
    tir = bench.mnist_config("split_mnist", name="tir", scenario=3)
    assert (tir.strategy.name, tir.strategy.scenario, tir.data.name, tir.data.normalize) == ("tir", 3, "synthetic", False)
    check_config(tir)
    cases = {name: c for group in bench.cases(("mnist",)) for name, c, _ in group}
    assert cases["PermutedMNIST-10 HNET+R"].strategy.name == "replay" and cases["SplitMNIST HNET+TIR"].strategy.name == "tir"


def test_checkpoint_programs_and_their_ratios(tmp_path):
    """The checkpoint part on the smoke config's state: each program runs, what it saves verifies; the
    ratios are checksums over save and verification over restore, of the same run."""
    config = load_config(ROOT / "experiments" / "configs" / "smoke.py")
    programs = bench.checkpoint_programs(tmp_path, config)
    timings = bench.time_interleaved(programs, steps=2, warmup=0)
    assert [r[1] for r in checkpoint.verify_run(tmp_path)] == [None, None]  # max_to_keep 2 of the 3 saves
    names = [t.name.split(": ", 1)[1] for t in timings]
    assert names == ["save, checksums included", "checksums alone", "restore, verification included",
                     "verification alone"]
    fake = [_t(t.name, ms) for t, ms in zip(timings, (400.0, 20.0, 300.0, 30.0))]
    r = bench.ratios(fake)
    assert r == {f"{bench.CHECKPOINT}: checksums / save (time)": pytest.approx(0.05),
                 f"{bench.CHECKPOINT}: verification / restore (time)": pytest.approx(0.1)}
