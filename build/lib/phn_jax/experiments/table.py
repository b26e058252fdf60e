"""Prints a Markdown table of finished runs: `python experiments/table.py RUN_DIR [RUN_DIR ...]`.

One row per run directory (its metrics.json): ACA, learning accuracy, forgetting (in %), the
wall time, and the hypernetwork size — the columns of the paper's Tables 2, 4 and 5.
"""
from __future__ import annotations

import sys
from pathlib import Path

from phn_jax import report


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def markdown_table(run_dirs) -> str:
    rows = ["| run | experiences | ACA | learning accuracy | forgetting | time (min) | HN size (MB) |",
            "|---|---|---|---|---|---|---|"]
    for run in run_dirs:
        m = report.load_metrics(run)
        done = f"{m['completed_experiences']}/{m['num_experiences']}"
        mb = m["memory"].get("hypernetwork_mb")
        rows.append(f"| {Path(run).name} | {done} | {_pct(m['aca'])} | {_pct(m['learning_accuracy'])} | "
                    f"{_pct(m['forgetting'])} | {m['total_time_s'] / 60:.1f} | {'' if mb is None else f'{mb:.2f}'} |")
    return "\n".join(rows)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print(markdown_table(sys.argv[1:]))
