"""The paper's tables from run directories, our numbers beside the published ones (`make report`).

    python -m phn_jax.paper RUNS [--out RUNS/report.md]

Every directory under RUNS with a `config.json` and a `metrics.json` is one run of one seed (a
single run, or one seed of a multi-seed run). Runs whose configs agree but for the seed (and the
fields that do not change results: progress bar, devices, seed axis, checkpointing) are one
configuration; its cells are mean ± sample std over its seeds (`metrics.aggregate_seeds`), with n.

A configuration is named as the paper names its rows: stream; method Naive, EWC, Joint, LR-k or
HN-k (HN-F for k = 0); setting, the look-ahead order of HN and the replay coefficient c of LR. The
paper's tables use the defaults (first order, c = 1) except where a table compares settings.

A row takes one configuration (`_find`): a finished one (every seed completed its stream), and on
the paper's streams one at the paper's settings (β, epochs, buffer size, ...: PAPER_SETTINGS, one
table); where several qualify, the one with the most seeds, the row's name saying the settings that
tell it apart. Every other configuration found for the row is named under the table, with why. A
multi-seed program's seeds each count their share of its time (`progress.Progress`).

`paper_results.csv` holds the published numbers (Hemati et al., CoLLAs 2023, Tables 1, 2, 4, 5, 6),
typed from the paper's text, one row per cell: table, the paper's row label, stream, method,
setting, metric, mean, std, unit, note (the printed value where it is a typo). Rows of table `vo1`
are von Oswald et al.'s (ICLR 2020) Table 1: HNET's task-incremental (CL1) accuracy on
PermutedMNIST-10 and SplitMNIST, the method "HNET" (runs of their MLP target, model.arch=mlp).

Tables written (where runs exist): 1 (learning accuracy per experience, clean vs noisy), 2 (ACA,
forgetting, time), 4 (look-ahead vs none), 5 (first vs second order), 6 (memory), von Oswald et al.'s
Table 1 (HNET on PermutedMNIST-10 / SplitMNIST: CL1, and ours with the task inferred), Figure 4's data
(transfer pairs), and every configuration found. Tables 2, 4, 5, 6 cover Split-CIFAR100 and
Split-TinyImageNet, then any other class-split stream with runs (Split-Digits of `make paper
QUICK=1`); Table 1 the clean/noisy CIFAR-100 pair and its digits twin. Each cell: ours, and where the
paper has the cell its value and the difference (ours − paper). Figures (PNG beside the report,
each where its runs exist): 4 (transfer: learning accuracy on B against k, LR c = 0 vs HN), 7 (the
first experience over the stream: LR noisy vs clean; LR vs HN on the noisy stream), 8 (experiences
1–3 over the stream, LR-3 and HN-3), 11 (experiences 1–8 with and without the look-ahead) and 12
(cos(g1, g2) over the look-ahead's epochs); all means over seeds. `report.html` is the same report
as one self-contained page (figures embedded).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from phn_jax import report
from phn_jax.paper.figures import (accuracy_curves, cos_curves, first_experience_curves, html_page, lookahead_curves,
                                   write_figures)
from phn_jax.paper.runs import (PAPER_RESULTS, PAPER_SETTINGS, find_runs, group_runs, load_paper_results,
                                paper_settings, paper_value)
from phn_jax.paper.tables import (all_configurations, table1, table2, table6, table45, table_transfer, table_von_oswald,
                                  transfer_results)

__all__ = ["PAPER_RESULTS", "PAPER_SETTINGS", "accuracy_curves", "cos_curves", "find_runs", "first_experience_curves",
           "group_runs", "html_page", "load_paper_results", "lookahead_curves", "main", "paper_settings", "paper_value",
           "report_markdown", "transfer_results"]


def report_markdown(root: str | Path, paper_path: str | Path = PAPER_RESULTS, figures_dir: Path | None = None) -> str:
    """The whole report of the runs under `root` as Markdown (with `figures_dir`, also its figures
    written there)."""
    groups = group_runs(find_runs(root))
    paper = load_paper_results(paper_path)
    lines = [f"# phn_jax report: {root}", "",
             f"{sum(len(g.seeds) for g in groups)} runs in {len(groups)} configurations. Ours: mean ± sample "
             "std over seeds (n); paper: Hemati et al. (CoLLAs 2023) (von Oswald et al. (ICLR 2020) where a table "
             "says so), `phn_jax/paper/paper_results.csv`; Δ = ours − paper.",
             ""]
    lines += table1(groups, paper) + table2(groups, paper) + table45(groups, paper, 4) + table45(groups, paper, 5)
    finished = [g for g in groups if g.finished]  # (the tables' `_find` names the unfinished under each)
    lines += table6(groups, paper) + table_von_oswald(groups, paper) + table_transfer(transfer_results(finished))
    lines += all_configurations(groups)
    repeated = [str(d) for g in groups for d in g.repeated]
    if repeated:
        lines += ["Seeds run more than once count once, with their newest run; not counted: " + ", ".join(repeated), ""]
    if figures_dir is not None:
        lines += write_figures(finished, Path(figures_dir))
    return "\n".join(lines) + "\n"


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", help="a directory of run directories (searched recursively)")
    parser.add_argument("--out", default=None, help="the Markdown file (default: RUNS/report.md; the HTML page "
                        "beside it, report.html)")
    args = parser.parse_args(argv)
    if not Path(args.runs).is_dir():
        parser.error(f"{args.runs} is not a directory of runs")
    out = Path(args.out or Path(args.runs) / "report.md")
    text = report_markdown(args.runs, figures_dir=out.parent)
    with report.atomic_open(out) as f:
        f.write(text)
    with report.atomic_open(out.with_suffix(".html")) as f:
        f.write(html_page(text, out.parent))
    print(text)
    print(f"written: {out} and {out.with_suffix('.html')}")
    return out


if __name__ == "__main__":
    main()
