"""A plain PyTorch training step of the slim ResNet-18, to time beside ours (`make bench-torch`).

    .venv-torch/bin/python experiments/bench_torch.py [--steps 20] [--json out.json]

Runs in its own environment (`requirements-torch.txt`: the CPU build of torch); imports neither
JAX nor phn_jax. The network is the paper's (Lopez-Paz & Ranzato's slim ResNet-18): a 3×3
convolution of nf = 20 channels, BatchNorm and ReLU, four stages of two BasicBlocks (nf, 2nf, 4nf,
8nf channels; strides 1, 2, 2, 2), a 4×4 average pool and a linear layer of 10 outputs. One step
is what a plain training loop does: forward, cross-entropy, backward, Adam (lr 1e-3), on a batch
of 64 random 32×32×3 images in float32, on the GPU when torch sees one (each step timed to its end:
torch.cuda.synchronize), else on the CPU with torch's default threads. Prints, and writes with
--json, ms per step (median, min, max over --steps steps after 2 warm-up steps) and images/s.

With --serve it times one step per line read from stdin and answers each with that step's seconds,
after a first line of JSON that describes it: `make bench-torch` alternates these steps with ours
(`phn_jax.bench.time_interleaved`).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch
from torch import nn
from torch.nn import functional as F

BATCH = 64


class BasicBlock(nn.Module):
    """y = relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)), shortcut a strided 1×1 conv + bn where the
    shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SlimResNet18(nn.Module):
    def __init__(self, nf: int = 20, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, nf, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(nf)
        layers, c_in = [], nf
        for i, stride in enumerate((1, 2, 2, 2)):
            c_out = nf * 2**i
            layers += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(c_in, num_classes)

    def forward(self, x):
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.linear(F.avg_pool2d(out, 4).flatten(1))


def make_step():
    """(step, info): step() runs one training step to its end and returns its seconds; info
    describes it (name, torch version, threads, device)."""
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model = SlimResNet18().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(BATCH, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (BATCH,), device=device)

    def step() -> float:
        tic = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        sync()
        return time.perf_counter() - tic

    info = {"name": "PyTorch plain step (slim ResNet-18)", "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    return step, info


def time_steps(steps: int) -> dict:
    step, info = make_step()
    times = [step() for _ in range(steps + 2)][2:]
    med = statistics.median(times)
    return {**info, "ms_median": 1e3 * med, "ms_min": 1e3 * min(times), "ms_max": 1e3 * max(times),
            "images_per_s": BATCH / med}


def serve() -> None:
    """One step per line of stdin, its seconds printed back; EOF ends it."""
    step, info = make_step()
    print(json.dumps(info), flush=True)
    for _ in sys.stdin:
        print(repr(step()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--serve", action="store_true", help="time one step per line of stdin (see above)")
    args = parser.parse_args()
    if args.serve:
        return serve()
    result = time_steps(args.steps)
    print(f"{result['name']}: {result['ms_median']:.1f} ms/step (torch {result['torch']}, {result['device']}, "
          f"{result['threads']} threads)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
