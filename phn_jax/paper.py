"""The paper's tables from run directories, our numbers beside the published ones (`make report`).

    python -m phn_jax.paper RUNS [--out RUNS/report.md]

Every directory under RUNS with a `config.json` and a `metrics.json` is one run of one seed (a
single run, or one seed of a multi-seed run). Runs whose configs agree but for the seed (and the
fields that do not change results: progress bar, devices, seed axis, checkpointing) are one
configuration; its cells are mean ± sample std over its seeds (`metrics.aggregate_seeds`), with n.

A configuration is named as the paper names its rows: stream; method Naive, EWC, Joint, LR-k or
HN-k (HN-F for k = 0); setting, the look-ahead order of HN and the replay coefficient c of LR. The
paper's tables use the defaults (first order, c = 1) except where a table compares settings.

`paper_results.csv` holds the published numbers (Hemati et al., CoLLAs 2023, Tables 1, 2, 4, 5, 6),
typed from the paper's text, one row per cell: table, the paper's row label, stream, method,
setting, metric, mean, std, unit, note (the printed value where it is a typo).

Tables written (where runs exist): 1 (learning accuracy per experience, clean vs noisy), 2 (ACA,
forgetting, time on Split-CIFAR100 and Split-TinyImageNet), 4 (look-ahead vs none), 5 (first vs
second order), 6 (memory), and every configuration found. Each cell: ours, the paper's, and the
difference (ours − paper). Figures (PNG beside the report): Figure 8 (the accuracy of experiences
1–3 over the stream, each configuration's mean over seeds) and Figure 12 (cos(g1, g2) over the
look-ahead's epochs, mean over seeds) for every stream.
"""
from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from phn_jax import metrics, report

PAPER_RESULTS = Path(__file__).with_name("paper_results.csv")
# Config fields that do not change a run's results: runs differing only in these are one configuration.
IGNORED = ("seed", "seeds", "data.seed", "train.progress", "train.num_devices", "train.seed_axis",
           "checkpoint.max_to_keep", "checkpoint.every_minutes")
TABLE2_METHODS = ("Naive", "EWC", "LR-1", "HN-1", "LR-2", "HN-2", "LR-3", "HN-3", "LR-4", "HN-4", "HN-F")
STREAM_TITLES = {"split_cifar100": "Split-CIFAR100", "split_tinyimagenet": "Split-TinyImageNet",
                 "clean_cifar100": "CIFAR-100 4×5, clean", "noisy_cifar100": "CIFAR-100 4×5, noisy"}


def load_paper_results(path: str | Path = PAPER_RESULTS) -> list[dict]:
    """The rows of `paper_results.csv`, with table an int, mean a float and std a float or None."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["table"] = int(r["table"])
        r["mean"] = float(r["mean"])
        r["std"] = float(r["std"]) if r["std"] else None
    return rows


def paper_value(results: list[dict], table: int, stream: str, method: str, metric: str,
                setting: str = "") -> dict | None:
    """The published cell (a row of `load_paper_results`), or None where the paper has none."""
    for r in results:
        if (r["table"], r["stream"], r["method"], r["metric"], r["setting"]) == (table, stream, method, metric, setting):
            return r
    return None


def method_name(config: dict) -> str:
    """The paper's name of a run's method: Naive, EWC, Joint, LR-k, HN-k, HN-F (HN-0)."""
    s = config["strategy"]
    name, k = s["name"], s["freeze_depth"]
    if name == "hn":
        return "HN-F" if k == 0 else f"HN-{k}"
    if name == "lr":
        return f"LR-{k}"
    return {"naive": "Naive", "ewc": "EWC", "joint": "Joint"}.get(name, name)


def setting_name(config: dict) -> str:
    """What the paper's tables vary within a method: HN's look-ahead order, LR's replay coefficient."""
    s = config["strategy"]
    if s["name"] == "hn":
        return f"order={s['order']}"
    if s["name"] == "lr":
        return f"c={float(s['replay_coef']):g}"
    return ""


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def find_runs(root: str | Path) -> list[tuple[Path, dict, dict]]:
    """(directory, config, metrics) of every run under `root` (sorted by path)."""
    runs = []
    for m in sorted(Path(root).rglob(report.METRICS_JSON)):
        c = m.with_name(report.CONFIG_JSON)
        if c.is_file():
            runs.append((m.parent, json.loads(c.read_text()), json.loads(m.read_text())))
    return runs


def group_runs(runs) -> list[dict]:
    """Runs of one configuration together: dicts with stream, method, setting, label, seeds, dirs,
    the flat config and `aggregate` (mean ± std over its seeds). A seed run twice (alone and in a
    multi-seed run, say) counts once, its newest run; `repeated` lists the others. Configurations
    that share a name are told apart in their label by the fields where they differ."""
    groups: dict[str, dict] = {}
    for d, config, summary in sorted(runs, key=lambda r: (r[0] / report.METRICS_JSON).stat().st_mtime_ns):
        flat = {k: v for k, v in _flatten(config).items() if k not in IGNORED}
        key = json.dumps(flat, sort_keys=True, default=str)
        g = groups.setdefault(key, {"stream": config["data"]["name"], "method": method_name(config),
                                    "setting": setting_name(config), "flat": flat, "runs": {}, "repeated": []})
        if config["seed"] in g["runs"]:  # the same seed again: the newest run counts, the older is listed
            g["repeated"].append(g["runs"][config["seed"]][0])
        g["runs"][config["seed"]] = (d, summary)
    for g in groups.values():
        g["seeds"] = sorted(g.pop("runs").items())
        g["dirs"] = [d for _, (d, _) in g["seeds"]]
        g["summaries"] = [summary for _, (_, summary) in g["seeds"]]
        g["seeds"] = [seed for seed, _ in g["seeds"]]
    out = list(groups.values())
    by_name = defaultdict(list)
    for g in out:
        g["aggregate"] = metrics.aggregate_seeds(g["summaries"], g["seeds"])
        by_name[(g["stream"], g["method"], g["setting"])].append(g)
    for same in by_name.values():
        differ = sorted({k for g in same for k in g["flat"] if len({json.dumps(h["flat"].get(k)) for h in same}) > 1})
        for g in same:
            extra = ", ".join(f"{k}={g['flat'].get(k)}" for k in differ)
            g["label"] = " ".join(x for x in (g["method"], g["setting"], f"({extra})" if extra else "") if x)
    return sorted(out, key=lambda g: (g["stream"], g["method"], g["setting"], g["label"]))


def _ours(aggregate: dict, metric: str) -> dict | None:
    """Our mean/std/n of a metric in the paper's unit: % for accuracies, minutes for time."""
    if metric == "time":
        m = aggregate.get("total_time_s")
        scale = 1 / 60
    elif metric.startswith("learning_accuracy_e"):
        i = int(metric.rsplit("e", 1)[1]) - 1
        per = aggregate["per_experience"]["accuracy_when_learned"]
        m, scale = (per[i] if i < len(per) else None), 100.0
    else:
        m, scale = aggregate.get(metric), 100.0
    if m is None or m["mean"] is None:
        return None
    return {"mean": m["mean"] * scale, "std": None if m["std"] is None else m["std"] * scale, "n": m["n"]}


def _fmt(mean: float | None, std: float | None = None, digits: int = 1) -> str:
    if mean is None:
        return "—"
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def _cell(ours: dict | None) -> str:
    return "—" if ours is None else _fmt(ours["mean"], ours["std"])


def cells(ours: dict | None, paper: dict | None, digits: int = 1) -> tuple[str, str, str]:
    """(ours with n, the paper's, ours − paper) as table cells; '—' where missing."""
    o = "—" if ours is None else f"{_fmt(ours['mean'], ours['std'], digits)} (n={ours['n']})"
    p = "—" if paper is None else _fmt(paper["mean"], paper["std"], digits)
    diff = "—" if ours is None or paper is None else f"{ours['mean'] - paper['mean']:+.{digits}f}"
    return o, p, diff


def _find(groups, stream: str, method: str, setting: str | None):
    """The configuration of a paper row: the stream, the method and the setting (None: the default)."""
    default = {"HN": "order=first", "LR": "c=1"}
    want = setting if setting is not None else default.get(method.split("-")[0], "")
    found = [g for g in groups if (g["stream"], g["method"], g["setting"]) == (stream, method, want)]
    return found[0] if found else None


def _table(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    if not rows:
        return []
    return ([f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(r) + " |" for r in rows] + [""])


def table1(groups, paper) -> list[str]:
    rows = []
    for stream in ("clean_cifar100", "noisy_cifar100"):
        for method in ("LR-2", "HN-2", "LR-3", "HN-3", "LR-4", "HN-4"):
            g = _find(groups, stream, method, None)
            if g is None:
                continue
            row = [STREAM_TITLES[stream], method]
            for e in range(1, 5):
                row += list(cells(_ours(g["aggregate"], f"learning_accuracy_e{e}"),
                                  paper_value(paper, 1, stream, method, f"learning_accuracy_e{e}")))
            rows.append(row)
    header = ["stream", "method"] + [f"{w} e{e}" for e in range(1, 5) for w in ("ours", "paper", "Δ")]
    return _table("Table 1: learning accuracy of each experience (%), clean vs noisy stream", header, rows)


def table2(groups, paper) -> list[str]:
    out = []
    for stream in ("split_cifar100", "split_tinyimagenet"):
        rows = []
        for method in TABLE2_METHODS + ("Joint",):
            g = _find(groups, stream, method, None)
            if g is None:
                continue
            row = [method]
            for metric in ("aca", "forgetting", "time"):
                row += list(cells(_ours(g["aggregate"], metric), paper_value(paper, 2, stream, method, metric)))
            rows.append(row)
        header = ["method"] + [f"{w} {m}" for m in ("ACA (%)", "forgetting (%)", "time (min)")
                               for w in ("ours", "paper", "Δ")]
        out += _table(f"Table 2: {STREAM_TITLES[stream]}", header, rows)
    return out


def table45(groups, paper, table: int) -> list[str]:
    orders = ("none", "first") if table == 4 else ("first", "second")
    rows = []
    for k in range(5):
        method = "HN-F" if k == 0 else f"HN-{k}"
        for order in orders:
            g = _find(groups, "split_cifar100", method, f"order={order}")
            if g is None:
                continue
            row = [method, order]
            for metric in ("aca", "learning_accuracy", "time"):
                row += list(cells(_ours(g["aggregate"], metric),
                                  paper_value(paper, table, "split_cifar100", method, metric, f"order={order}")))
            rows.append(row)
    header = ["method", "look-ahead"] + [f"{w} {m}" for m in ("ACA (%)", "learning accuracy (%)", "time (min)")
                                         for w in ("ours", "paper", "Δ")]
    title = "Table 4: look-ahead vs none" if table == 4 else "Table 5: first vs second order"
    return _table(f"{title} (Split-CIFAR100)", header, rows)


def table6(groups, paper) -> list[str]:
    rows = []
    for stream in ("split_cifar100", "split_tinyimagenet"):
        for k in range(5):
            for method, key in ((f"LR-{k}", "replay_buffer_mb"), ("HN-F" if k == 0 else f"HN-{k}", "hypernetwork_mb")):
                g = _find(groups, stream, method, None)
                if g is None:
                    continue
                mb = g["summaries"][0]["memory"].get(key)
                ours = None if mb is None else {"mean": mb, "std": None, "n": len(g["seeds"])}
                rows.append([STREAM_TITLES[stream], method,
                             *cells(ours, paper_value(paper, 6, stream, method, "memory"), digits=2)])
    return _table("Table 6: memory (MB at 32 bit)", ["stream", "method", "ours", "paper", "Δ"], rows)


def all_configurations(groups) -> list[str]:
    rows = []
    for g in groups:
        a = g["aggregate"]
        rows.append([g["stream"], g["label"], ", ".join(map(str, g["seeds"])),
                     f"{a['completed_experiences']}",
                     *(_cell(_ours(a, k)) for k in ("aca", "learning_accuracy", "forgetting", "time"))])
    return _table("Every configuration found (mean ± std over its seeds)",
                  ["stream", "configuration", "seeds", "experiences", "ACA (%)", "learning accuracy (%)",
                   "forgetting (%)", "time (min)"], rows)


def _history(d: Path) -> list[dict]:
    path = d / "train_history.csv"
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    return [dict(zip(lines[0].split(","), map(float, line.split(",")))) for line in lines[1:]]


def cos_curves(groups, stream: str) -> dict[str, np.ndarray]:
    """Figure 12's data: for each HN configuration of `stream` with a look-ahead, cos(g1, g2) of each
    epoch of experiences 2.. (its look-ahead epochs, in order), mean over its seeds (as many epochs
    as every seed has)."""
    out = {}
    for g in groups:
        if g["stream"] != stream or not g["method"].startswith("HN") or g["setting"] == "order=none":
            continue
        seeds = [[r["cos_g1_g2"] for r in _history(d) if r["experience"] >= 1] for d in g["dirs"]]
        n = min(map(len, seeds))
        if n:
            out[g["label"]] = np.mean([c[:n] for c in seeds], axis=0)
    return out


def accuracy_curves(groups, stream: str, experiences: int = 3) -> dict[str, np.ndarray]:
    """Figure 8's data: for each configuration of `stream`, R[i, j] of the first `experiences`
    experiences j (rows i), mean over its seeds: [T, experiences], NaN where not measured."""
    out = {}
    for g in groups:
        if g["stream"] == stream:
            R = np.stack([metrics.as_accuracy_matrix(s["accuracy_matrix"])[:, :experiences] for s in g["summaries"]])
            seen = np.isfinite(R).any(axis=0)  # (entries no seed measured stay NaN, without a warning)
            out[g["label"]] = np.where(seen, np.nanmean(np.where(seen, R, 0.0), axis=0), np.nan)
    return out


def _colors(n: int):
    return matplotlib.colormaps["tab10" if n <= 10 else "tab20"].colors


def figure8(curves: dict[str, np.ndarray], title: str) -> Figure:
    fig = Figure(figsize=(12.0, 4.0), dpi=100, layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    colors = _colors(len(curves))
    for j, ax in enumerate(axes):
        for c, (label, R) in enumerate(curves.items()):
            if j < R.shape[1] and np.isfinite(R[j:, j]).any():
                ax.plot(np.arange(j, R.shape[0]) + 1, 100 * R[j:, j], marker="o", markersize=3,
                        color=colors[c % len(colors)], label=label)
        ax.set_title(f"experience {j + 1}")
        ax.set_xlabel("after training experience")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    fig.suptitle(title)
    if axes[0].lines:  # every configuration has experience 1: its legend names them all
        handles, labels = axes[0].get_legend_handles_labels()
        axes[-1].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    return fig


def figure12(curves: dict[str, np.ndarray], title: str) -> Figure:
    fig = Figure(figsize=(9.0, 4.0), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    colors = _colors(len(curves))
    for c, (label, cos) in enumerate(curves.items()):
        ax.plot(np.arange(1, cos.size + 1), cos, color=colors[c % len(colors)], label=label)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("epoch of experiences 2.. (the look-ahead's)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("cos(g1, g2), epoch mean")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    return fig


def write_figures(groups, out_dir: Path) -> list[str]:
    """Figures 8 and 12 of every stream with runs, as PNGs in `out_dir`; their Markdown lines."""
    lines = []
    for stream in sorted({g["stream"] for g in groups}):
        title = STREAM_TITLES.get(stream, stream)
        acc = accuracy_curves(groups, stream)
        report.save_png(figure8(acc, f"Figure 8: accuracy of experiences 1–3 over the stream, {title}"),
                        out_dir / f"figure8_{stream}.png")
        lines += [f"![Figure 8, {title}](figure8_{stream}.png)", ""]
        cos = cos_curves(groups, stream)
        if cos:
            report.save_png(figure12(cos, f"Figure 12: cos(g1, g2) over training, {title}"),
                            out_dir / f"figure12_{stream}.png")
            lines += [f"![Figure 12, {title}](figure12_{stream}.png)", ""]
    return (["## Figures", ""] + lines) if lines else []


def report_markdown(root: str | Path, paper_path: str | Path = PAPER_RESULTS, figures_dir: Path | None = None) -> str:
    """The whole report of the runs under `root` as Markdown (with `figures_dir`, also its figures
    written there)."""
    groups = group_runs(find_runs(root))
    paper = load_paper_results(paper_path)
    lines = [f"# phn_jax report: {root}", "",
             f"{sum(len(g['seeds']) for g in groups)} runs in {len(groups)} configurations. Ours: mean ± sample "
             "std over seeds (n); paper: Hemati et al. (CoLLAs 2023), `phn_jax/paper_results.csv`; Δ = ours − paper.",
             ""]
    lines += table1(groups, paper) + table2(groups, paper) + table45(groups, paper, 4) + table45(groups, paper, 5)
    lines += table6(groups, paper) + all_configurations(groups)
    repeated = [str(d) for g in groups for d in g["repeated"]]
    if repeated:
        lines += ["Seeds run more than once count once, with their newest run; not counted: " + ", ".join(repeated), ""]
    if figures_dir is not None:
        lines += write_figures(groups, Path(figures_dir))
    return "\n".join(lines) + "\n"


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", help="a directory of run directories (searched recursively)")
    parser.add_argument("--out", default=None, help="the Markdown file (default: RUNS/report.md)")
    args = parser.parse_args(argv)
    if not Path(args.runs).is_dir():
        parser.error(f"{args.runs} is not a directory of runs")
    out = Path(args.out or Path(args.runs) / "report.md")
    text = report_markdown(args.runs, figures_dir=out.parent)
    with report.atomic_open(out) as f:
        f.write(text)
    print(text)
    return out


if __name__ == "__main__":
    main()
