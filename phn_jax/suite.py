"""The paper's experiments as one resumable queue: `make transfer`, `make paper [QUICK=1]`.

    python -m phn_jax.suite {paper,transfer} [--runs RUNS] [--seeds 0,1,2] [--epochs E] [--quick]
                                             [--pairs A:B,...] [--list]

An entry of a queue is one configuration, its seeds run as one program (`config.seeds`), written
where the Makefile's single-run target writes it: the queue and `make cifar100 STRATEGY=lr FREEZE=2
SEEDS=0,1,2` share `RUNS/cifar100/lr2_c1_seed{seed}`, so runs made by hand count. Entries run in
queue order, in this process, each with resume=True:
  - an entry whose every seed has finished with the entry's config is skipped (nothing is built);
  - an interrupted one continues from its checkpoint;
  - a directory holding a run of another config stops the queue with that run's error (exit 2), as
    does a stop request (exit 128 + signal, after a checkpoint): the same command continues.
The datasets every unfinished entry needs are checked before the first one starts.

The queues (docs/design.md §4, the paper's §4 and appendix):
  paper: Table 2 — Split-CIFAR100 and Split-TinyImageNet × Naive, EWC, LR-1..4 (c = 1), HN-0..4;
         Tables 4, 5 — Split-CIFAR100 × HN-0..4 without look-ahead and at second order;
         Table 1, Figure 7 — clean and noisy CIFAR-100 (4 × 5) × LR-2..4 (c = 1), HN-2..4;
         then the transfer queue. Table 6 and Figures 8, 11, 12 come from these runs.
  transfer (§4.1, Figure 4): every ordered pair A → B of the five datasets (`--pairs` chooses) ×
         k = 0..4 × {LR-k with c = 0, HN-k}: the learning accuracy on B.
--quick runs the same queues on streams that ship with the code (big_vision's `runlocal`):
Split-Digits for Split-CIFAR100 (no second Table 2 stream), noisy/clean digits for noisy/clean
CIFAR-100, the pairs digits → synthetic and synthetic → digits at 16×16, with a slim ResNet-10 of
width 8 and 2 epochs per experience: the whole report in minutes on a laptop CPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import json
import sys
from pathlib import Path

import jax
import ml_collections

from phn_jax import config as config_lib
from phn_jax import main as cli
from phn_jax import report, rundir, runtime
from phn_jax.data import DatasetNotFoundError, check_datasets
from phn_jax.data.streams import KINDS, TRANSFER_CHOICES, TRANSFER_DATASETS

# --quick: each paper stream's stand-in that needs no download (None: left out)
QUICK_STREAMS = {"split_cifar100": "split_digits", "split_tinyimagenet": None, "noisy_cifar100": "noisy_digits",
                 "clean_cifar100": "clean_digits"}
QUICK_PAIRS = (("digits", "synthetic"), ("synthetic", "digits"))
QUICK_EPOCHS = 2
DEPTHS = (0, 1, 2, 3, 4)


@dataclasses.dataclass(frozen=True)
class Method:
    """A strategy as the Makefile's variables give it: STRATEGY, FREEZE, ORDER, REPLAY."""

    strategy: str
    freeze_depth: int = 3
    order: str = "first"
    replay_coef: float = 1.0

    def name(self) -> str:
        """The Makefile's run name without its seed: hn<k>_<order>, lr<k>_c<c>, naive, ewc, joint."""
        if self.strategy == "hn":
            return f"hn{self.freeze_depth}_{self.order}"
        if self.strategy == "lr":
            return f"lr{self.freeze_depth}_c{self.replay_coef:g}"
        return self.strategy

    def overrides(self) -> dict:
        return {"strategy.name": self.strategy, "strategy.freeze_depth": self.freeze_depth,
                "strategy.order": self.order, "strategy.replay_coef": float(self.replay_coef)}


@dataclasses.dataclass(frozen=True)
class Entry:
    """One configuration of a queue: its config (all seeds) and its workdir (with `{seed}` when it has
    several seeds, as `RunDirs.of` reads it)."""

    config: ml_collections.ConfigDict
    workdir: str

    @property
    def dirs(self) -> rundir.RunDirs:
        return rundir.RunDirs.of(self.workdir, tuple(self.config.seeds))

    def describe(self) -> str:
        seeds = tuple(self.config.seeds) or (self.config.seed,)
        return f"{self.dirs.workdir} (seeds {', '.join(map(str, seeds))})"


def entry(runs: str | Path, stream: str, method: Method, seeds: tuple[int, ...], *, epochs: int | None = None,
          quick: bool = False, pair: tuple[str, str] | None = None) -> Entry:
    """The queue entry of `method` on `stream` (its config file and directory: `data.streams.KINDS`; a transfer
    pair's directory RUNS/transfer/<A>_to_<B>) with `seeds`, and --quick's shrinking."""
    config_file, subdir = KINDS[stream].config_file, KINDS[stream].run_dir
    config = config_lib.load_config(config_lib.CONFIGS / config_file)
    config.update_from_flattened_dict(method.overrides())
    if pair is not None:
        config.data.transfer_pair = tuple(pair)
        subdir = f"{subdir}/{pair[0]}_to_{pair[1]}"
    if quick:
        config.model.update(nf=8, blocks_per_stage=(1, 1, 1, 1))
        config.train.update(epochs=QUICK_EPOCHS, iterations=0)
        if stream == "transfer":
            config.data.image_size = 16
    if epochs is not None:  # (in place of a config's iterations)
        config.train.update(epochs=epochs, iterations=0)
    if len(seeds) == 1:
        config.seed = seeds[0]
        name = f"{method.name()}_seed{seeds[0]}"
    else:
        config.seeds = tuple(seeds)
        name = f"{method.name()}_seed{{seed}}"
    config_lib.check_config(config)
    return Entry(config, str(Path(runs) / subdir / name))


def transfer_pairs(spec: str | None = None, quick: bool = False) -> list[tuple[str, str]]:
    """`A:B,C:D` as pairs (checked); None: every ordered pair of distinct TRANSFER_DATASETS (QUICK_PAIRS
    with quick)."""
    if spec is None:
        return list(QUICK_PAIRS) if quick else list(itertools.permutations(TRANSFER_DATASETS, 2))
    pairs = []
    for item in spec.split(","):
        pair = tuple(item.split(":"))
        if len(pair) != 2 or not set(pair) <= set(TRANSFER_CHOICES):
            raise ValueError(f"--pairs: {item!r} is not A:B with A and B among {', '.join(TRANSFER_CHOICES)}")
        pairs.append(pair)
    return pairs


def transfer_queue(runs, seeds, *, epochs=None, quick=False, pairs=None) -> list[Entry]:
    """Figure 4: each pair × k = 0..4 × {LR-k with c = 0, HN-k}."""
    return [entry(runs, "transfer", method, seeds, epochs=epochs, quick=quick, pair=pair)
            for pair in transfer_pairs(pairs, quick)
            for k in DEPTHS
            for method in (Method("lr", k, replay_coef=0.0), Method("hn", k))]


def paper_queue(runs, seeds, *, epochs=None, quick=False, pairs=None) -> list[Entry]:
    """Every run of the paper's tables and figures, in queue order (see the module's docstring)."""
    def stream(name):
        return QUICK_STREAMS.get(name, name) if quick else name

    table2 = ([Method("naive"), Method("ewc")] + [Method("lr", k) for k in DEPTHS[1:]]
              + [Method("hn", k) for k in DEPTHS])
    plan = [(stream(s), m) for s in ("split_cifar100", "split_tinyimagenet") for m in table2]
    plan += [(stream("split_cifar100"), Method("hn", k, order)) for order in ("none", "second") for k in DEPTHS]
    plan += [(stream(s), m) for s in ("clean_cifar100", "noisy_cifar100")
             for m in [Method("lr", k) for k in (2, 3, 4)] + [Method("hn", k) for k in (2, 3, 4)]]
    queue = [entry(runs, s, m, seeds, epochs=epochs, quick=quick) for s, m in plan if s is not None]
    return queue + transfer_queue(runs, seeds, epochs=epochs, quick=quick, pairs=pairs)


QUEUES = {"paper": paper_queue, "transfer": transfer_queue}


def finished(e: Entry) -> bool:
    """Whether every seed of `e` has results of all its experiences, written with `e`'s config (the
    fields that decide results, `report.results_fields`, and the seed)."""
    for seed_config, d in zip(config_lib.seed_configs(e.config), e.dirs.results):
        try:
            saved = json.loads((d / report.CONFIG_JSON).read_text())
            summary = json.loads((d / report.METRICS_JSON).read_text())
        except (OSError, ValueError):
            return False
        if report.results_fields(saved) != report.results_fields(seed_config):
            return False
        if summary.get("completed_experiences") != summary.get("num_experiences"):
            return False
    return True


def run_queue(queue: list[Entry], *, list_only: bool = False, out=sys.stdout) -> list[Entry]:
    """Runs every unfinished entry of `queue` in order (see the module's docstring); returns the entries
    it ran. `list_only`: prints the queue, each entry done or to run, and runs nothing."""
    todo = [(i, e) for i, e in enumerate(queue) if not finished(e)]  # (each entry's files read once)
    print(f"{len(queue)} configurations: {len(queue) - len(todo)} finished, {len(todo)} to run", file=out)
    if list_only:
        to_run = {i for i, _ in todo}
        for i, e in enumerate(queue):
            print(f"[{i + 1}/{len(queue)}] {'to run' if i in to_run else 'done  '} {e.describe()}", file=out)
        return []
    for data in {json.dumps(e.config.data.to_dict(), sort_keys=True, default=list): e.config.data
                 for _, e in todo}.values():
        check_datasets(data)  # every dataset present before hours of training
    for i, e in todo:
        print(f"[{i + 1}/{len(queue)}] {e.describe()}", file=out, flush=True)
        cli.run_or_exit(e.config, e.workdir, resume=True)
        # The entry's compiled programs are not needed again: dropped, or their code's memory mappings (about
        # 4,000 per configuration) would reach the kernel's limit (vm.max_map_count, 65,530) after ~15 of them.
        jax.clear_caches()
        gc.collect()
    return [e for _, e in todo]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("queue", choices=sorted(QUEUES))
    parser.add_argument("--runs", default="runs", help="the directory of run directories (default: runs)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, one program per configuration")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per experience (default: the config's)")
    parser.add_argument("--quick", action="store_true", help="the same queue on embedded streams, tiny and fast")
    parser.add_argument("--pairs", default=None, help="transfer pairs A:B,... (default: every ordered pair)")
    parser.add_argument("--list", action="store_true", help="print the queue and what is done; run nothing")
    args = parser.parse_args(argv)
    try:
        seeds = tuple(int(s) for s in args.seeds.split(","))
        queue = QUEUES[args.queue](args.runs, seeds, epochs=args.epochs, quick=args.quick, pairs=args.pairs)
    except ValueError as err:  # bad seeds, pairs or epochs (config_lib.ConfigError is one)
        parser.error(str(err))
    runtime.enable_compilation_cache()
    try:
        run_queue(queue, list_only=args.list)
    except DatasetNotFoundError as err:  # (it says which dataset is missing and how to prepare it)
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
