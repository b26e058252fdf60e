"""Benchmarks of the engine's own compiled programs on CIFAR-shaped data (`make bench`).

    python -m phn_jax.bench [--parts steps,seeds,eval] [--out runs/bench] [--steps 20]
    python -m phn_jax.bench --parts torch --torch-python .venv-torch/bin/python    (`make bench-torch`)
    python -m phn_jax.bench --parts run [--run-epochs 2]                           (`make bench PARTS=run`)

Every figure is measured in this one run, on this machine, so the ratios it prints (second over
first order, S seeds over one) compare like with like; machines are noisy: compare ratios and
medians, never a lone absolute time.

What is timed is `phn_jax.programs.train_epoch` on one batch (one step: preprocessing, augmentation
and the strategy's step inside jit, exactly as a run calls it), on a synthetic stream of the
paper's shapes: 20 experiences of 5 classes, 32×32×3 uint8 images, batch 64, slim ResNet-18
(nf = 20), 10 outputs per head. Look-ahead steps are experience 2's (t = 1; the regulariser costs
the same at every t ≥ 1: it generates the weights of every task); the experience-1 step (t = 0)
trains the whole network. Training images get Split-CIFAR100's augmentation (random crop and flip).

Programs whose figures a ratio compares are timed together (`time_interleaved`): in rounds that
alternate their order (A B C, C B A, ...), so that the machine's drift over minutes, which on a
shared 2-core machine moves a step's median by 10-20 % between sittings, falls on each alike.

For each program: ms per step (median, min, max over `--steps` steps after two warm-up steps),
images/s (= seeds · batch / median step), GFLOP/s (XLA's cost analysis of the compiled program,
flops / median step), its memory (arguments + outputs + temporaries − aliased, from XLA's memory
analysis), and the compile time with a cold and then a warm persistent compilation cache.

Parts:
  steps  HN-k for k = 0..4 at orders none, first and second; the experience-1 step of each k;
         the Naive, EWC and LR-3 steps
  seeds  HN-3 (first order) and its experience-1 step with 1, 3 and 8 seeds in one program
         (`config.seeds`): images/s summed over seeds
  eval   evaluation of 20 tasks on their test sets (500 images each), as after the last experience
  mnist  von Oswald et al.'s MNIST configs (`make split-mnist`, `make permuted-mnist`: their MLP from a
         chunked hypernetwork, batch 128) on a synthetic stream of their shapes: the experience-1
         step and the look-ahead step (experience 2), timed together; the look-ahead / experience-1
         ratio is what a look-ahead epoch costs over an experience-1 epoch; beside them a step of
         their replay systems in experience 2 (HNET+TIR, HNET+R with a head per task: every system
         of each trains in one step; the replay's cost does not grow with the tasks)
  torch  our full-network steps (Naive; the experience-1 step of HN-0 and HN-3) and a plain PyTorch
         step of the same slim ResNet-18 (`experiments/bench_torch.py --serve`, run by --torch-python
         in its own environment, its steps alternating with ours; on the GPU when that torch sees
         one): each of ours over PyTorch's time
  checkpoint  a checkpoint of HN-0's state at the paper's sizes (Split-CIFAR100, 20 tasks: ψ, Adam's
         moments, the targets): `checkpoint.save` (orbax's save, then the SHA-256 of every array and
         every file) and the checksums alone; `restore_latest` (orbax's restore, then their
         verification) and the verification alone; timed together. The ratios are what the
         checksums add to a save and a restore
  run    a real run (`train.train_and_evaluate`, evaluation with task inference as `make cifar100`
         does it) of HN-3 on Split-CIFAR100's sizes (20 × 5 classes, 500 training and 100 test
         images per class) for --run-epochs epochs per experience, and from it the projected wall
         time of `make cifar100 FREEZE=3` (100 epochs per experience; `projected_time`)

Steps, seeds, eval and mnist are the default parts. Writes `bench.json` and `bench.md` (the same tables)
under --out, again after each program, so an interrupted bench keeps what it measured.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from phn_jax import checkpoint, programs, run_setup
from phn_jax import config as config_lib
from phn_jax import data, metrics, models, report, runtime, train

BATCH = 64
IMAGE_SIZE = 32       # Split-CIFAR100's
TASKS = 20
PAPER_EPOCHS = 100     # the paper's epochs per experience (`make cifar100`)
PARTS = ("steps", "seeds", "eval", "mnist", "torch", "checkpoint", "run")
DEFAULT_PARTS = ("steps", "seeds", "eval", "mnist")
MNIST_CONFIGS = {"SplitMNIST": "split_mnist", "PermutedMNIST-10": "permuted_mnist"}  # experiments/configs/<name>.py
TORCH_SCRIPT = config_lib.CONFIGS.parent / "bench_torch.py"
TORCH_STEP = "PyTorch plain step"
FULL_NETWORK = ("Naive", "HN-0 experience 1", "HN-3 experience 1")  # our steps that train the whole network
ROUNDS = 4             # rounds of `time_interleaved`


def bench_config(strategy: str = "hn", freeze_depth: int = 3, order: str = "first", seeds: tuple = (),
                 seed_axis: str = "auto"):
    """The paper's Split-CIFAR100 shapes on the synthetic stream (no dataset needed)."""
    c = config_lib.base_config("synthetic")
    c.data.update(num_experiences=TASKS, classes_per_experience=5, train_per_class=BATCH // 5 + 1,
                  test_per_class=100, image_size=IMAGE_SIZE, conflict=False, augment="crop_flip")
    c.strategy.update(name=strategy, freeze_depth=freeze_depth, order=order)
    c.train.update(batch_size=BATCH, eval_batch_size=256, progress=False, num_devices=1, seed_axis=seed_axis)
    c.seeds = tuple(seeds)
    return c


def mnist_config(config_name: str, **strategy):
    """experiments/configs/`config_name`.py (von Oswald et al.'s MNIST settings) on a synthetic stream of its
    shapes (experiences, classes, image size, one channel), so that no dataset is needed; `strategy`:
    fields of config.strategy to change (e.g. name='tir', scenario=3)."""
    c = config_lib.load_config(config_lib.CONFIGS / f"{config_name}.py")
    c.strategy.update(**strategy)
    size, tasks = c.data.image_size, c.data.num_experiences
    classes = c.data.get("classes_per_experience", c.model.num_classes)
    c.data = data.default_data_config("synthetic")
    c.data.update(num_experiences=tasks, classes_per_experience=classes, image_size=size, channels=1,
                  train_per_class=c.train.batch_size // classes + 1, test_per_class=10, conflict=False, normalize=False)
    c.train.update(progress=False, num_devices=1)
    return c


@dataclasses.dataclass
class Timing:
    """One compiled program's figures."""

    name: str
    seeds: int
    ms_median: float
    ms_min: float
    ms_max: float
    images_per_s: float
    gflop_per_s: float | None
    memory_mb: float | None
    compile_cold_s: float
    compile_warm_s: float


def _compile(fn, args, kwargs) -> tuple:
    """(compiled program, cold compile seconds, warm compile seconds): compiled once (a program new
    to the bench's persistent cache, which starts empty), then again after dropping the in-memory
    caches (loaded from the persistent one)."""
    tic = time.perf_counter()
    compiled = fn.lower(*args, **kwargs).compile()
    cold = time.perf_counter() - tic
    jax.clear_caches()
    tic = time.perf_counter()
    compiled = fn.lower(*args, **kwargs).compile()
    return compiled, cold, time.perf_counter() - tic


def _cost(compiled) -> tuple[float | None, float | None]:
    """(flops, memory in MB) of a compiled program, where XLA reports them."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = (cost or {}).get("flops")
    mem = compiled.memory_analysis()
    mb = None
    if mem is not None:
        total = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                 - mem.alias_size_in_bytes)
        mb = total / metrics.BYTES_PER_MIB
    return flops, mb


def _batch(s: run_setup.Setup, t: int, batch: int):
    """Experience t's first `batch` training images of each seed (one step), replicated."""
    def one(stream):
        e = stream.experiences[t]
        return e.train_images[:batch], e.train_labels[:batch], np.full(batch, t, np.int32)
    images, labels, tasks = s.stack([one(stream) for stream in s.streams])
    return (*runtime.replicate((images, labels, tasks), s.mesh), s.stack([batch] * len(s.seeds)))


@dataclasses.dataclass
class Program:
    """A program ready to time: step() runs it once, to its end, and returns its seconds."""

    name: str
    seeds: int
    images: int                     # images per call
    step: Callable[[], float]
    compiled: object = None         # XLA's compiled program (its cost and memory analysis); None: not ours
    compile_cold_s: float = 0.0
    compile_warm_s: float = 0.0
    flops_per_call: int = 1         # XLA's cost analysis counts a loop's body once
    close: Callable[[], object] = lambda: None


def time_interleaved(programs: list[Program], steps: int, rounds: int = ROUNDS, warmup: int = 2) -> list[Timing]:
    """Each program's figures from `steps` timed calls (after `warmup` untimed ones each), made in
    `rounds` rounds of ⌈steps / rounds⌉ calls per program that alternate the programs' order (A B C,
    then C B A, ...): a slow drift of the machine falls on every program alike, so their ratios
    hold though their absolute times move."""
    for p in programs:
        for _ in range(warmup):
            p.step()
    timed = [(p, []) for p in programs]
    rounds = max(1, min(rounds, steps))
    per_round = -(-steps // rounds)
    for r in range(rounds):
        for p, times in (timed if r % 2 == 0 else timed[::-1]):
            for _ in range(min(per_round, steps - len(times))):
                times.append(p.step())
    return [_timing(p, times) for p, times in timed]


def step_program(name: str, config, t: int) -> Program:
    """The training step of experience t of `config` (one batch of config.train.batch_size per call of
    `train_epoch`), compiled."""
    s = run_setup.setup(config)
    k_init, _ = programs.split_key(s.key())
    state = programs.init_state(k_init, strategy=s.strategy, seed_axis=s.seed_axis)
    state = programs.begin_experience(state, t, strategy=s.strategy, seed_axis=s.seed_axis)
    carry = [runtime.replicate(state, s.mesh)]
    batch = config.train.batch_size
    arrays = _batch(s, t, batch)
    key = programs.fold_in(s.key(), 7)
    kwargs = dict(strategy=s.strategy, spec=s.stream.experiences[t].preprocess, batch_size=batch, first=s.first(t),
                  mesh=s.mesh, seed_axis=s.seed_axis)
    compiled, cold, warm = _compile(programs.train_epoch, (carry[0], *arrays, t, key), kwargs)

    def step() -> float:
        tic = time.perf_counter()
        carry[0], m = compiled(carry[0], *arrays, t, key)  # the state is donated: carry the new one
        jax.block_until_ready((carry[0], m))
        return time.perf_counter() - tic

    # lax.map's body is one seed's step
    loops = len(s.seeds) if s.seed_axis == "map" else 1
    return Program(name, len(s.seeds), batch * len(s.seeds), step, compiled, cold, warm, loops)


def eval_program(name: str, config) -> Program:
    """Evaluation after the last experience: every task's test set, ω of all tasks generated once."""
    s = run_setup.setup(config)
    k_init, _ = programs.split_key(s.key())
    state = runtime.replicate(programs.init_state(k_init, strategy=s.strategy, seed_axis=s.seed_axis), s.mesh)
    tests = run_setup.test_sets(s.streams, s.mesh, s.stacked)
    kwargs = dict(strategy=s.strategy, spec=s.stream.experiences[0].preprocess, batch_size=256, mesh=s.mesh,
                  seed_axis=s.seed_axis)
    key = s.key()
    x, y, n = tests[0]
    compiled, cold, warm = _compile(programs.evaluate, (state, programs.eval_context(state, strategy=s.strategy, seed_axis=None), x, y, n, 0,
                                                     key), kwargs)

    def step() -> float:
        tic = time.perf_counter()
        context = programs.eval_context(state, strategy=s.strategy, seed_axis=None)
        jax.block_until_ready([compiled(state, context, x, y, n, j, key) for j, (x, y, n) in enumerate(tests)])
        return time.perf_counter() - tic

    images = sum(int(n) for _, _, n in tests)
    return Program(name, 1, images, step, compiled, cold, warm, flops_per_call=len(tests))


CHECKPOINT = "checkpoint of HN-0"


def checkpoint_programs(directory: Path, config=None) -> list[Program]:
    """A save with its checksums, the checksums alone, a verified restore and the verification alone,
    of the initial state of `config` (None: HN-0's at the paper's sizes, `bench_config("hn", 0)`), in
    `directory`."""
    s = run_setup.setup(config or bench_config("hn", 0))
    k_init, _ = programs.split_key(s.key())
    state = runtime.replicate(programs.init_state(k_init, strategy=s.strategy, seed_axis=s.seed_axis), s.mesh)
    mngr = checkpoint.manager(directory)
    meta, step = {"config": {}, "progress": {}}, [0]
    mb = sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(state)) / 1e6
    name = f"{CHECKPOINT} ({mb:.0f} MB, {len(jax.tree_util.tree_leaves(state))} arrays)"

    def timed(fn) -> Callable[[], float]:
        def step_() -> float:
            tic = time.perf_counter()
            fn()
            return time.perf_counter() - tic
        return step_

    def save():
        step[0] += 1
        checkpoint.save(mngr, step[0], state, meta)

    save()  # (a checkpoint to restore from the start)
    where = lambda: directory / checkpoint.CHECKPOINT_DIR / str(mngr.latest_step())
    recorded = lambda: json.loads((where() / "digests" / "metadata").read_text())["arrays"]
    checksums = lambda: (checkpoint.digests(state, meta), checkpoint._write_file_digests(where()))
    restore = lambda: checkpoint.restore_latest(mngr, state, {})
    verify = lambda: (checkpoint._check_files(where()), checkpoint._check_arrays(state, recorded()))
    return [Program(f"{name}: save, checksums included", 1, 1, timed(save)),
            Program(f"{name}: checksums alone", 1, 1, timed(checksums)),
            Program(f"{name}: restore, verification included", 1, 1, timed(restore)),
            Program(f"{name}: verification alone", 1, 1, timed(verify))]


def torch_program(python: str) -> Program:
    """The plain PyTorch step, run by `experiments/bench_torch.py --serve` under the interpreter
    `python` (its own environment): one step per request, timed there."""
    errors = tempfile.TemporaryFile("w+")
    server = subprocess.Popen([python, str(TORCH_SCRIPT), "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=errors, text=True)

    def close() -> str:
        """Ends the server (EOF on its stdin); returns what it wrote to stderr (once)."""
        if errors.closed:
            return ""
        server.stdin.close()
        server.wait()
        server.stdout.close()
        errors.seek(0)
        message = errors.read()
        errors.close()
        return message

    def answer() -> str:
        line = server.stdout.readline()
        if not line:
            raise RuntimeError(f"{TORCH_SCRIPT.name} failed under {python} (make bench-torch installs torch into "
                               f".venv-torch):\n{close()[-2000:]}")
        return line

    def step() -> float:
        server.stdin.write("step\n")
        server.stdin.flush()
        return float(answer())

    r = json.loads(answer())
    where = r.get("device", "cpu")
    name = f"{TORCH_STEP} (torch {r['torch']}, " + (f"{r['threads']} threads)" if where == "cpu" else f"{where})")
    return Program(name, 1, BATCH, step, close=close)


def cifar100_config(epochs: int):
    """`make cifar100 FREEZE=3`'s run (HN-3, first order, evaluation with task inference, a checkpoint
    after each experience) on synthetic images of Split-CIFAR100's sizes: 20 experiences of 5 classes,
    500 training and 100 test images per class, 32×32×3; `epochs` epochs per experience."""
    c = bench_config("hn", 3)
    c.data.train_per_class = 500
    c.train.epochs = epochs
    return c


def projected_time(history: list[dict], times_s: list[float], epochs: int) -> float:
    """Seconds of a run at `epochs` epochs per experience, from the same run measured at fewer:

        Σ_t [ T_t + (epochs − E_t) · m_t ]

    T_t: experience t's measured wall time (its epochs, evaluation and checkpoint; times_s[t]),
    E_t: its epochs run, m_t: the median time of its epochs after the first (the first compiles).
    history: the run's epoch rows (train_history.csv: experience, epoch, time_s)."""
    total = 0.0
    for t, measured in enumerate(times_s):
        rows = [float(r["time_s"]) for r in history if int(r["experience"]) == t]
        if len(rows) < 2:
            raise ValueError(f"experience {t + 1} ran {len(rows)} epoch(s): a projection needs ≥ 2 (the first "
                             "compiles); pass --run-epochs 2 or more")
        total += measured + (epochs - len(rows)) * statistics.median(rows[1:])
    return total


def time_run(epochs: int) -> dict:
    """A run of `cifar100_config(epochs)` in a temporary directory: its wall time, and the projected
    wall time of `make cifar100 FREEZE=3` (PAPER_EPOCHS epochs per experience) from it."""
    config = cifar100_config(epochs)
    with tempfile.TemporaryDirectory() as tmp:
        tic = time.perf_counter()
        summary = train.train_and_evaluate(config, tmp, resume=False)
        measured = time.perf_counter() - tic
        with open(Path(tmp) / "train_history.csv", newline="") as f:
            history = list(csv.DictReader(f))
    times = summary["per_experience"]["time_s"]
    return {"program": f"make cifar100 FREEZE=3 on synthetic images of its sizes, {epochs} epochs per experience",
            "run_epochs": epochs, "measured_s": measured, "aca": summary["aca"],
            "projected_epochs": PAPER_EPOCHS, "projected_s": (measured - sum(times)) + projected_time(
                history, times, PAPER_EPOCHS)}


def _timing(p: Program, times: list[float]) -> Timing:
    flops, mb = _cost(p.compiled) if p.compiled is not None else (None, None)
    med = statistics.median(times)
    return Timing(p.name, p.seeds, 1e3 * med, 1e3 * min(times), 1e3 * max(times), p.images / med,
                  None if flops is None else p.flops_per_call * flops / med / 1e9, mb, p.compile_cold_s,
                  p.compile_warm_s)


def cases(parts) -> list[list[tuple[str, object, int]]]:
    """(name, config, experience) of every training step to time, in the groups that are timed
    together (`time_interleaved`: what a ratio compares is in one group); config None: PyTorch's
    step (`torch_program`)."""
    full_network = [("Naive", bench_config("naive", 0), 1), ("HN-0 experience 1", bench_config("hn", 0), 0),
                    ("HN-3 experience 1", bench_config("hn", 3), 0)]
    out = []
    if "steps" in parts:
        out += [[(f"HN-{k} {order}", bench_config("hn", k, order), 1) for order in ("none", "first", "second")]
                for k in range(5)]
        out.append([(f"HN-{k} experience 1", bench_config("hn", k), 0) for k in range(5)])
        out.append(full_network[:1] + [("EWC", bench_config("ewc", 0), 1), ("LR-3", bench_config("lr", 3), 1)])
    if "torch" in parts:  # the full-network steps are timed beside PyTorch's instead
        out = [[c for c in group if c[0] not in FULL_NETWORK] for group in out]
        out.append(full_network + [(TORCH_STEP, None, None)])
    if "seeds" in parts:
        for t, what in ((1, "HN-3 first"), (0, "HN-3 experience 1")):
            out.append([(f"{what}, 1 seed", bench_config("hn", 3), t)] + [
                (f"{what}, {n} seeds {axis}", bench_config("hn", 3, "first", tuple(range(n)), axis), t)
                for n in (3, 8) for axis in programs.SEED_AXES])
    if "mnist" in parts:
        for title, name in MNIST_CONFIGS.items():
            c = mnist_config(name)
            systems = [(f"{title} {system}", mnist_config(name, name=strategy, scenario=3), 1)
                       for system, strategy in (("HNET+TIR", "tir"), ("HNET+R", "replay"))]
            out.append([(f"{title} experience 1", c, 0), (f"{title} look-ahead", c, 1)] + systems)
    return [group for group in out if group]


def _taps(size: int, k: int, stride: int) -> int:
    """Along one axis of `size` inputs: Σ over a k-wide window's output positions (stride s, padding
    k // 2) of the window's taps that fall inside the input."""
    return sum(0 <= o * stride + a - k // 2 < size for o in range(-(-size // stride)) for a in range(k))


def conv_layers(cfg: models.ResNetConfig, image_size: int):
    """Yields (module, multiply-adds per image, reads the module's input) of every convolution of
    the slim ResNet-18 on image_size² inputs. A k×k convolution from C_in to C_out channels does
    C_in·C_out multiply-adds for each pair of an output position and a kernel tap inside the input
    (a tap on the padding multiplies zeros): taps(H)·taps(W)·C_in·C_out, ≈ H'·W'·k²·C_in·C_out."""
    hw = image_size
    yield "stem", _taps(hw, 3, 1) ** 2 * cfg.in_channels * cfg.nf, True
    for stage, block, c_in, c_out, stride, shortcut in models.block_shapes(cfg):
        yield stage, _taps(hw, 3, stride) ** 2 * c_in * c_out, block == "block1"
        if shortcut:
            yield stage, _taps(hw, 1, stride) ** 2 * c_in * c_out, True
        hw = -(-hw // stride)
        yield stage, _taps(hw, 3, 1) ** 2 * c_out * c_out, False


def second_order_floor(freeze_depth: int, cfg: models.ResNetConfig = models.ResNetConfig(),
                       image_size: int = IMAGE_SIZE) -> float:
    """The exact second order's convolution multiply-adds over the first order's at freeze depth k
    (`conv_layers`' counts): the least its step can cost, with direct convolutions, where time
    follows FLOPs.

    Both orders run every convolution y = x ⊛ W forward. In a layer of h_ω (W generated) the first
    order adds the kernel gradient ∂W = x ⋆ ∂y and the input gradient ∂x = ∂y ⊛ᵀ W: 3 convolutions,
    2 where x is the image or g_φ's features (x does not depend on ω: no ∂x). The second order (a
    Hessian-vector product through that gradient) adds the tangent of each, two convolutions by the
    product rule: ẏ = ẋ ⊛ W + x ⊛ Ẇ, (∂W)˙ = ẋ ⋆ ∂y + x ⋆ (∂y)˙,
    (∂x)˙ = (∂y)˙ ⊛ᵀ W + ∂y ⊛ᵀ Ẇ: 9 in all, 4 where ẋ = 0. (A product and its tangent, (x + εẋ)(W + εẆ)
    mod ε², take 3 products however they are arranged; merging two into one convolution of twice the
    channels keeps their multiply-adds.) The frozen layers run forward only, in both orders.
    """
    _, generated = models.part_names(freeze_depth)
    first = second = 0
    for module, macs, reads_input in conv_layers(cfg, image_size):
        leaf = module == generated[0] and reads_input  # its input is the image or g_φ's features
        first += macs * ((2 if leaf else 3) if module in generated else 1)
        second += macs * ((4 if leaf else 9) if module in generated else 1)
    return second / first


def ratios(timings: list[Timing]) -> dict[str, float]:
    """Second over first order at each k: time, FLOPs (XLA's cost analysis of the two compiled
    steps) and the floor that the exact second order's convolutions set (`second_order_floor`: where
    every layer is generated, nearly 3); S seeds' images/s over one seed's; our full-network steps
    over PyTorch's plain step (time)."""
    by = {t.name: t for t in timings}
    out = {}
    torch_step = next((t for t in timings if t.name.startswith(TORCH_STEP)), None)
    for name in FULL_NETWORK if torch_step else ():
        if name in by:
            out[f"{name} / PyTorch plain step (time)"] = by[name].ms_median / torch_step.ms_median
    for k in range(5):
        first, second = by.get(f"HN-{k} first"), by.get(f"HN-{k} second")
        if first and second:
            out[f"HN-{k} second / first order (time)"] = second.ms_median / first.ms_median
            if first.gflop_per_s and second.gflop_per_s:  # the work itself: GFLOP/s × ms = FLOPs per step
                out[f"HN-{k} second / first order (FLOPs)"] = (second.gflop_per_s * second.ms_median
                                                              / (first.gflop_per_s * first.ms_median))
            out[f"HN-{k} second / first order (floor: convolutions)"] = second_order_floor(k)
    ckpt = {t.name.split(": ", 1)[1]: t for t in timings if t.name.startswith(CHECKPOINT)}
    if len(ckpt) == 4:
        out[f"{CHECKPOINT}: checksums / save (time)"] = (ckpt["checksums alone"].ms_median
                                                         / ckpt["save, checksums included"].ms_median)
        out[f"{CHECKPOINT}: verification / restore (time)"] = (ckpt["verification alone"].ms_median
                                                               / ckpt["restore, verification included"].ms_median)
    for title in MNIST_CONFIGS:
        first, lookahead = by.get(f"{title} experience 1"), by.get(f"{title} look-ahead")
        if first and lookahead:
            out[f"{title}: look-ahead / experience-1 step (time)"] = lookahead.ms_median / first.ms_median
            if first.gflop_per_s and lookahead.gflop_per_s:
                out[f"{title}: look-ahead / experience-1 step (FLOPs)"] = (lookahead.gflop_per_s * lookahead.ms_median
                                                                         / (first.gflop_per_s * first.ms_median))
        for system in ("HNET+TIR", "HNET+R"):
            if lookahead and (step := by.get(f"{title} {system}")):
                out[f"{title}: {system} / look-ahead step (time)"] = step.ms_median / lookahead.ms_median
    for what in ("HN-3 first", "HN-3 experience 1"):
        one = by.get(f"{what}, 1 seed")
        for n in (3, 8):
            for axis in programs.SEED_AXES:
                many = by.get(f"{what}, {n} seeds {axis}")
                if one and many:
                    out[f"{what}: {n} seeds ({axis}) / 1 seed (images/s)"] = many.images_per_s / one.images_per_s
    return out


def markdown(timings: list[Timing], ratio: dict[str, float], machine: dict, run: dict | None = None) -> str:
    fmt = lambda v, d=1: "n/a" if v is None else f"{v:.{d}f}"
    lines = [f"# phn_jax bench: {machine['platform']} ({machine['device']}), {machine['cpu']}, jax {machine['jax']}",
             "", f"Batch {BATCH} of 32×32×3, slim ResNet-18 (nf 20), {TASKS} tasks (the MNIST rows: their configs' "
             "MLP, chunked hypernetwork and batch 128); medians over the steps timed.", "",
             "| program | seeds | ms/step median (min–max) | images/s | GFLOP/s | memory MB | compile cold / warm s |",
             "|---|---|---|---|---|---|---|"]
    for t in timings:
        lines.append(f"| {t.name} | {t.seeds} | {fmt(t.ms_median)} ({fmt(t.ms_min)}–{fmt(t.ms_max)}) | "
                     f"{fmt(t.images_per_s, 0)} | {fmt(t.gflop_per_s)} | {fmt(t.memory_mb)} | "
                     f"{fmt(t.compile_cold_s)} / {fmt(t.compile_warm_s)} |")
    if ratio:
        lines += ["", "| ratio (same run) | value |", "|---|---|"] + [f"| {k} | {v:.2f} |" for k, v in ratio.items()]
    if run:
        lines += ["", f"Projected wall time of `make cifar100 FREEZE=3` ({TASKS} × {run['projected_epochs']} epochs): "
                  f"**{run['projected_s'] / 60:.1f} min**, from a run of {run['program']} that took "
                  f"{run['measured_s']:.0f} s (ACA {run['aca']:.3f})."]
    return "\n".join(lines) + "\n"


def write(out: Path, timings: list[Timing], machine: dict, run: dict | None = None) -> str:
    """bench.json and bench.md under `out` with what is measured so far; returns the markdown."""
    ratio = ratios(timings)
    result = {"machine": machine, "timings": [dataclasses.asdict(t) for t in timings], "ratios": ratio,
              "projected_time": run}
    report.write_json(out / "bench.json", result)
    text = markdown(timings, ratio, machine, run)
    with report.atomic_open(out / "bench.md") as f:
        f.write(text)
    return text


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(DEFAULT_PARTS), help="comma-separated: " + ", ".join(PARTS))
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--steps", type=int, default=20, help="steps timed per program (after 2 warm-up)")
    parser.add_argument("--torch-python", default=".venv-torch/bin/python",
                        help="the part torch: the Python with torch installed (make bench-torch makes .venv-torch)")
    parser.add_argument("--run-epochs", type=int, default=2,
                        help="the part run: epochs per experience of the run the projection is made from (≥ 2)")
    args = parser.parse_args(argv)
    parts = args.parts.split(",")
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) {sorted(unknown)}: choose from {', '.join(PARTS)}")
    if "torch" in parts and not Path(args.torch_python).is_file():
        parser.error(f"--torch-python {args.torch_python} does not exist: `make bench-torch` installs it")
    if "run" in parts and args.run_epochs < 2:
        parser.error(f"--run-epochs {args.run_epochs}: the projection needs ≥ 2 epochs (the first compiles)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = out / "xla-cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    cache_dir.mkdir()
    runtime.enable_compilation_cache(cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    dev = jax.devices()[0]
    machine = {"platform": dev.platform, "device": dev.device_kind, "cpu": platform.processor() or platform.machine(),
               "jax": jax.__version__}
    timings, run = [], None
    for group in cases(parts):
        programs = [torch_program(args.torch_python) if config is None else step_program(name, config, t)
                    for name, config, t in group]
        try:
            timings += time_interleaved(programs, args.steps)
        finally:
            for p in programs:
                p.close()
        for timing in timings[-len(programs):]:
            print(f"{timing.name}: {timing.ms_median:.1f} ms/step, {timing.images_per_s:.0f} images/s", flush=True)
        write(out, timings, machine)
    if "eval" in parts:
        timings += time_interleaved([eval_program(f"evaluation of {TASKS} tasks (HN-3)", bench_config("hn", 3))],
                                    args.steps, warmup=1)
        write(out, timings, machine)
    if "checkpoint" in parts:
        with tempfile.TemporaryDirectory() as tmp:
            timings += time_interleaved(checkpoint_programs(Path(tmp)), args.steps, warmup=1)
        for timing in timings[-4:]:
            print(f"{timing.name}: {timing.ms_median:.1f} ms", flush=True)
        write(out, timings, machine)
    if "run" in parts:
        run = time_run(args.run_epochs)
    shutil.rmtree(cache_dir, ignore_errors=True)
    print(write(out, timings, machine, run))
    return json.loads((out / "bench.json").read_text())


if __name__ == "__main__":
    main()
