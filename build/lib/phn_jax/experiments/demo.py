"""`make demo`: HN-k against fine-tuning (Naive) on Split-Digits, offline, in minutes on a laptop CPU.

Trains both strategies on scikit-learn's handwritten digits (5 experiences x 2 classes) with the
config `experiments/configs/split_digits.py`, then prints ACA, learning accuracy and forgetting.
Runs live in `--workdir` (default runs/demo); a finished or interrupted run is resumed, not
overwritten.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from phn_jax import train
from phn_jax.config import load_config

import table  # experiments/table.py, beside this file

CONFIG = Path(__file__).parent / "configs" / "split_digits.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/demo")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per experience (config default: 15)")
    args = parser.parse_args()
    config = load_config(CONFIG)
    if args.epochs is not None:
        config.train.epochs = args.epochs
    runs = []
    tic = time.perf_counter()
    for name, strategy in ((f"hn{config.strategy.freeze_depth}", "hn"), ("naive", "naive")):
        config.strategy.name = strategy
        runs.append(Path(args.workdir) / name)
        train.train_and_evaluate(config, runs[-1], resume=True)
    print(f"\nSplit-Digits, {config.train.epochs} epochs per experience, seed {config.seed} "
          f"({time.perf_counter() - tic:.0f} s in all):\n")
    print(table.markdown_table(runs))


if __name__ == "__main__":
    main()
