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
import base64
import csv
import json
import re
from collections import defaultdict
from pathlib import Path

import markdown_it
import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from phn_jax import metrics, report
from phn_jax.config import with_defaults
from phn_jax.data.streams import KINDS

PAPER_RESULTS = Path(__file__).with_name("paper_results.csv")
# Runs whose results fields (`report.results_fields`) differ only in these are one configuration's seeds.
SEED_FIELDS = ("seed", "data.seed")
TABLE2_METHODS = ("Naive", "EWC", "LR-1", "HN-1", "LR-2", "HN-2", "LR-3", "HN-3", "LR-4", "HN-4", "HN-F")
# Table 1 and Figure 7: (clean, noisy) twins; the paper's, then `make paper QUICK=1`'s
CLEAN_NOISY = (("clean_cifar100", "noisy_cifar100"), ("clean_digits", "noisy_digits"))
VON_OSWALD_STREAMS = ("permuted_mnist", "split_mnist")  # von Oswald et al.'s Table 1 (paper_results table vo1)
# Tables 2, 4, 5, 6: the paper's streams first, then any other class-split stream with runs
PAPER_STREAMS = ("split_cifar100", "split_tinyimagenet")
NOT_CLASS_SPLIT = ("transfer",) + tuple(s for pair in CLEAN_NOISY for s in pair)
DEPTHS = range(5)
HEMATI_STREAMS = PAPER_STREAMS + CLEAN_NOISY[0]  # the streams of Hemati et al.'s Tables 1, 2, 4, 5, 6
# The paper's settings beyond a row's name (method, look-ahead order, replay coefficient), one line per
# (field, the methods it applies to (the name before "-"; "" for every method), the streams, the value). On
# a stream listed here a configuration fills a row only where each field that applies to its method has
# this value; the configurations of the row at other settings are named under the table. Hemati et al.:
# §4 and the appendix; von Oswald et al.: their code, as experiments/configs/{split,permuted}_mnist.py set it.
PAPER_SETTINGS = (
    ("train.epochs", "", HEMATI_STREAMS, 100),
    ("train.batch_size", "", HEMATI_STREAMS, 64),
    ("optim.lr", "", HEMATI_STREAMS, 1e-3),
    ("strategy.beta", "HN", HEMATI_STREAMS, 0.5),
    ("strategy.buffer_size", "LR", ("split_cifar100",) + CLEAN_NOISY[0], 200),
    ("strategy.buffer_size", "LR", ("split_tinyimagenet",), 400),
    ("strategy.replay_batch_size", "LR", HEMATI_STREAMS, 64),
    ("strategy.ewc_lambda", "EWC", HEMATI_STREAMS, 1.0),
    ("train.epochs", "HNET", ("split_mnist",), 21),
    ("train.epochs", "HNET", ("permuted_mnist",), 11),
    ("train.batch_size", "HNET", VON_OSWALD_STREAMS, 128),
    ("optim.lr", "HNET", ("split_mnist",), 1e-3),
    ("optim.lr", "HNET", ("permuted_mnist",), 1e-4),
    ("strategy.beta", "HNET", ("split_mnist",), 0.01),
    ("strategy.beta", "HNET", ("permuted_mnist",), 0.1),
)


def paper_settings(stream: str, method: str) -> dict | None:
    """{field: the paper's value} of the fields of PAPER_SETTINGS that apply to `method` on `stream`;
    None where the paper has no runs of the stream (our own streams: every setting counts)."""
    if not any(stream in streams for _, _, streams, _ in PAPER_SETTINGS):
        return None
    return {field: value for field, kind, streams, value in PAPER_SETTINGS
            if stream in streams and kind in ("", method.split("-")[0])}


def title(stream: str) -> str:
    """The stream's name in the paper and the report (`data.streams.KINDS`)."""
    return KINDS[stream].title if stream in KINDS else stream


def load_paper_results(path: str | Path = PAPER_RESULTS) -> list[dict]:
    """The rows of `paper_results.csv`, with table an int (Hemati et al.'s; another paper's a string,
    e.g. 'vo1'), mean a float and std a float or None."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["table"] = int(r["table"]) if r["table"].isdigit() else r["table"]
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
    """The paper's name of a run's method: Naive, EWC, Joint, LR-k, HN-k, HN-F (HN-0); HNET (von Oswald
    et al.'s name) for HN with their MLP target (model.arch=mlp)."""
    s = config["strategy"]
    name, k = s["name"], s["freeze_depth"]
    if name == "hn" and config.get("model", {}).get("arch") == "mlp":
        return "HNET"
    if name == "hn":
        return "HN-F" if k == 0 else f"HN-{k}"
    if name == "lr":
        return f"LR-{k}"
    return {"naive": "Naive", "ewc": "EWC", "joint": "Joint"}.get(name, name)


def setting_name(config: dict) -> str:
    """What the paper's tables vary within a method: HN's look-ahead order, LR's replay coefficient;
    ", pretrained" where the frozen part came from strategy.frozen_init (the reference scripts' way)."""
    s = config["strategy"]
    pretrained = ", pretrained" if s["frozen_init"] != "none" else ""  # (not the paper's setting)
    if s["name"] == "hn":
        return f"order={s['order']}{pretrained}"
    if s["name"] == "lr":
        return f"c={float(s['replay_coef']):g}{pretrained}"
    return ""


def find_runs(root: str | Path) -> list[tuple[Path, dict, dict]]:
    """(directory, config (completed by `config.with_defaults`), metrics) of every run under `root` (sorted
    by path)."""
    runs = []
    for m in sorted(Path(root).rglob(report.METRICS_JSON)):
        c = m.with_name(report.CONFIG_JSON)
        if c.is_file():
            runs.append((m.parent, with_defaults(json.loads(c.read_text())), json.loads(m.read_text())))
    return runs


def group_runs(runs) -> list[dict]:
    """Runs of one configuration together: dicts with stream, method, setting, label, seeds, dirs,
    the flat config and `aggregate` (mean ± std over its seeds). A seed run twice (alone and in a
    multi-seed run, say) counts once, its newest run; `repeated` lists the others. Configurations
    that share a name are told apart in their label by the fields where they differ (`extra`).
    `finished`: every seed's run completed its stream; `newest`: when its newest metrics were written."""
    groups: dict[str, dict] = {}
    for d, config, summary in sorted(runs, key=lambda r: (r[0] / report.METRICS_JSON).stat().st_mtime_ns):
        flat = {k: v for k, v in report.results_fields(config).items() if k not in SEED_FIELDS}
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
        g["finished"] = all(s["completed_experiences"] == len(s["accuracy_matrix"]) for s in g["summaries"])
        g["newest"] = max((d / report.METRICS_JSON).stat().st_mtime_ns for d in g["dirs"])
    out = list(groups.values())
    by_name = defaultdict(list)
    for g in out:
        g["aggregate"] = metrics.aggregate_seeds(g["summaries"], g["seeds"])
        by_name[(g["stream"], g["method"], g["setting"])].append(g)
    for same in by_name.values():
        differ = sorted({k for g in same for k in g["flat"] if len({json.dumps(h["flat"].get(k)) for h in same}) > 1})
        for g in same:
            g["extra"] = ", ".join(f"{k}={g['flat'].get(k)}" for k in differ)
            g["label"] = " ".join(x for x in (g["method"], g["setting"], f"({g['extra']})" if g["extra"] else "") if x)
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


def _cell(ours: dict | None, digits: int = 1) -> str:
    return "—" if ours is None else _fmt(ours["mean"], ours["std"], digits)


def cells(ours: dict | None, paper: dict | None, digits: int = 1) -> tuple[str, str, str]:
    """(ours with n, the paper's, ours − paper) as table cells; '—' where missing."""
    o = "—" if ours is None else f"{_fmt(ours['mean'], ours['std'], digits)} (n={ours['n']})"
    p = "—" if paper is None else _fmt(paper["mean"], paper["std"], digits)
    diff = "—" if ours is None or paper is None else f"{ours['mean'] - paper['mean']:+.{digits}f}"
    return o, p, diff


def _off_settings(g: dict, wanted: dict) -> list[str]:
    return [f"{k}={g['flat'].get(k)!r} (the paper's {v!r})" for k, v in wanted.items() if g["flat"].get(k) != v]


def _find(groups, stream: str, method: str, setting: str | None, notes: list[str] | None = None):
    """(the configuration of a row, the row's name) or (None, None): a finished configuration of the
    stream, the method and the setting (None: the default); on a stream of the paper's, one at the
    paper's settings (`paper_settings`). Where several qualify, the one with the most seeds (then the
    newest), the row's name saying the settings that tell it from the others. What else was found for
    the row (another qualifying configuration, one at other settings, an unfinished one) is named in
    `notes`."""
    default = {"HN": "order=first", "HNET": "order=first", "LR": "c=1"}
    want = setting if setting is not None else default.get(method.split("-")[0], "")
    found = [g for g in groups if (g["stream"], g["method"], g["setting"]) == (stream, method, want)]
    wanted = paper_settings(stream, method) or {}
    fits = [g for g in found if g["finished"] and not _off_settings(g, wanted)]
    best = max(fits, key=lambda g: (len(g["seeds"]), g["newest"]), default=None)
    if best is None:
        name = None
    else:
        differ = sorted(k for k in best["flat"] if len({json.dumps(g["flat"].get(k)) for g in fits}) > 1)
        name = method + (f" ({', '.join(f'{k}={best['flat'][k]}' for k in differ)})" if differ else "")
    if notes is not None:
        row = f"{method}{'' if setting is None else ', ' + want}, {title(stream)}"
        for g in found:
            if g is best:
                continue
            off = _off_settings(g, wanted)
            why = ("unfinished: " + ", ".join(f"{s['completed_experiences']} of {len(s['accuracy_matrix'])} "
                                                "experiences" for s in g["summaries"]) if not g["finished"] else
                   "not at the paper's settings: " + "; ".join(off) if off else
                   f"also qualifies; the row shows {name} (the most seeds, then the newest)")
            notes.append(f"{row}: not in the table: {g['label']} (seeds {', '.join(map(str, g['seeds']))}), {why}")
    return best, name


def _table(heading: str, header: list[str], rows: list[list[str]], notes: list[str] = ()) -> list[str]:
    """A Markdown table under `heading`, and `notes` (what `_find` left out) as a list below it."""
    if not rows and not notes:
        return []
    table = (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
             if rows else ["(no configuration qualifies)"])
    return [f"## {heading}", ""] + table + [""] + ([f"- {n}" for n in notes] + [""] if notes else [])


def _has_paper(paper, table: int, streams) -> bool:
    """Whether the paper's `table` has numbers for one of `streams` (else: our columns only)."""
    return any(r["table"] == table and r["stream"] in streams for r in paper)


def _metric_header(metric_titles, with_paper: bool) -> list[str]:
    return [f"{w} {m}" for m in metric_titles for w in (("ours", "paper", "Δ") if with_paper else ("ours",))]


def _metric_cells(ours, published, with_paper: bool, digits: int = 1) -> list[str]:
    c = cells(ours, published, digits)
    return list(c) if with_paper else [c[0]]


def _class_split_streams(groups) -> list[str]:
    """The streams of Tables 2, 4, 5 and 6: the paper's first, then the others with runs, sorted."""
    found = {g["stream"] for g in groups} - set(NOT_CLASS_SPLIT)
    return [s for s in PAPER_STREAMS if s in found] + sorted(found - set(PAPER_STREAMS))


def table1(groups, paper) -> list[str]:
    out = []
    for pair in CLEAN_NOISY:
        with_paper = _has_paper(paper, 1, pair)
        rows, notes = [], []
        for stream in pair:
            for method in ("LR-2", "HN-2", "LR-3", "HN-3", "LR-4", "HN-4"):
                g, name = _find(groups, stream, method, None, notes)
                if g is None:
                    continue
                row = [title(stream), name]
                for e in range(1, 5):
                    row += _metric_cells(_ours(g["aggregate"], f"learning_accuracy_e{e}"),
                                         paper_value(paper, 1, stream, method, f"learning_accuracy_e{e}"), with_paper)
                rows.append(row)
        header = ["stream", "method"] + _metric_header([f"e{e}" for e in range(1, 5)], with_paper)
        out += _table(f"Table 1: learning accuracy of each experience (%), clean vs noisy {title(pair[0]).split(',')[0]}",
                      header, rows, notes)
    return out


def table2(groups, paper) -> list[str]:
    out = []
    for stream in _class_split_streams(groups):
        with_paper = _has_paper(paper, 2, (stream,))
        rows, notes = [], []
        for method in TABLE2_METHODS + ("Joint",):
            g, name = _find(groups, stream, method, None, notes)
            if g is None:
                continue
            row = [name]
            for metric in ("aca", "forgetting", "time"):
                row += _metric_cells(_ours(g["aggregate"], metric), paper_value(paper, 2, stream, method, metric),
                                     with_paper)
            rows.append(row)
        header = ["method"] + _metric_header(("ACA (%)", "forgetting (%)", "time (min)"), with_paper)
        out += _table(f"Table 2: {title(stream)}", header, rows, notes)
    return out


def table45(groups, paper, table: int) -> list[str]:
    orders = ("none", "first") if table == 4 else ("first", "second")
    heading = "Table 4: look-ahead vs none" if table == 4 else "Table 5: first vs second order"
    out = []
    for stream in _class_split_streams(groups):
        with_paper = _has_paper(paper, table, (stream,))
        compared = "none" if table == 4 else "second"  # (the default, first order, is in Table 2's runs)
        if not any(g["stream"] == stream and g["setting"] == f"order={compared}" for g in groups):
            continue
        rows, notes = [], []
        for k in DEPTHS:
            method = "HN-F" if k == 0 else f"HN-{k}"
            for order in orders:
                g, name = _find(groups, stream, method, f"order={order}", notes)
                if g is None:
                    continue
                row = [name, order]
                for metric in ("aca", "learning_accuracy", "time"):
                    row += _metric_cells(_ours(g["aggregate"], metric),
                                         paper_value(paper, table, stream, method, metric, f"order={order}"), with_paper)
                rows.append(row)
        header = ["method", "look-ahead"] + _metric_header(("ACA (%)", "learning accuracy (%)", "time (min)"),
                                                           with_paper)
        out += _table(f"{heading} ({title(stream)})", header, rows, notes)
    return out


def table6(groups, paper) -> list[str]:
    streams = _class_split_streams(groups)
    with_paper = _has_paper(paper, 6, streams)
    rows, notes = [], []
    for stream in streams:
        for k in DEPTHS:
            for method, key in ((f"LR-{k}", "replay_buffer_mb"), ("HN-F" if k == 0 else f"HN-{k}", "hypernetwork_mb")):
                g, name = _find(groups, stream, method, None, notes)
                if g is None:
                    continue
                mb = g["summaries"][0]["memory"].get(key)
                ours = None if mb is None else {"mean": mb, "std": None, "n": len(g["seeds"])}
                rows.append([title(stream), name,
                             *_metric_cells(ours, paper_value(paper, 6, stream, method, "memory"), with_paper, 2)])
    return _table("Table 6: memory (MB at 32 bit)", ["stream", "method"] + _metric_header(("MB",), with_paper), rows,
                  notes)


def table_von_oswald(groups, paper) -> list[str]:
    """von Oswald et al.'s Table 1: HNET on their MNIST streams; CL1 (task given: our ACA) beside their
    number, our learning accuracy and forgetting, and ours with the task inferred by entropy
    (HNET+ENT: class-incremental and task-inference accuracy)."""
    rows, notes = [], []
    for stream in VON_OSWALD_STREAMS:
        g, name = _find(groups, stream, "HNET", None, notes)
        if g is not None:
            cl1 = cells(_ours(g["aggregate"], "aca"), paper_value(paper, "vo1", stream, "HNET", "aca"), 2)
            ours = [_cell(_ours(g["aggregate"], m), 2) for m in ("learning_accuracy", "forgetting",
                                                              "class_incremental_accuracy", "task_inference_accuracy")]
            rows.append([title(stream), name, *cl1, *ours])
    return _table("von Oswald et al. (ICLR 2020), Table 1: accuracy (%) after the last task",
                  ["stream", "method", "ours CL1", "paper CL1", "Δ CL1", "ours learning accuracy", "ours forgetting",
                   "ours HNET+ENT (class-incremental)", "ours task inference"], rows, notes)


def transfer_results(groups) -> dict[tuple[str, str], dict[str, list]]:
    """Figure 4's data: for each transfer pair (A, B) with runs, for "LR (c=0)" and "HN" (first-order
    look-ahead), the learning accuracy on B (R[1, 1], %) at k = 0..4: {mean, std, n} or None."""
    out: dict = {}
    kinds = {("lr", "c=0"): "LR (c=0)", ("hn", "order=first"): "HN"}
    for g in groups:
        kind = kinds.get((g["flat"]["strategy.name"], g["setting"]))
        if g["stream"] != "transfer" or kind is None:
            continue
        pair = tuple(g["flat"]["data.transfer_pair"])
        per_k = out.setdefault(pair, {}).setdefault(kind, [None] * len(DEPTHS))
        per_k[g["flat"]["strategy.freeze_depth"]] = _ours(g["aggregate"], "learning_accuracy_e2")
    return dict(sorted(out.items()))


def table_transfer(results) -> list[str]:
    rows = [[f"{a} → {b}", kind, *(_cell(v) + ("" if v is None else f" (n={v['n']})") for v in per_k)]
            for (a, b), kinds in results.items() for kind, per_k in sorted(kinds.items())]
    return _table("Figure 4's data: learning accuracy on B after A (%), by freeze depth k",
                  ["A → B", "method"] + [f"k={k}" for k in DEPTHS], rows)


def all_configurations(groups) -> list[str]:
    rows = []
    for g in groups:
        a = g["aggregate"]
        rows.append([g["stream"], g["label"], ", ".join(map(str, g["seeds"])),
                     f"{a['completed_experiences']}" + ("" if g["finished"] else " (unfinished)"),
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


def mean_accuracy_matrix(g) -> np.ndarray:
    """R [T, T] of a configuration, mean over its seeds; NaN where no seed measured it."""
    R = np.stack([metrics.as_accuracy_matrix(s["accuracy_matrix"]) for s in g["summaries"]])
    seen = np.isfinite(R).any(axis=0)  # (entries no seed measured stay NaN, without a warning)
    return np.where(seen, np.nanmean(np.where(seen, R, 0.0), axis=0), np.nan)


def accuracy_curves(groups, stream: str, experiences: int = 3) -> dict[str, np.ndarray]:
    """Figure 8's data: R[i, j] of the first `experiences` experiences j (rows i), mean over seeds
    ([T, experiences], NaN where not measured), of the LR-3 and HN-3 configurations of `stream` (the
    paper's freeze depth), or of all its configurations when it has neither."""
    mine = [g for g in groups if g["stream"] == stream]
    at3 = [g for g in mine if g["method"] in ("LR-3", "HN-3")]
    return {g["label"]: mean_accuracy_matrix(g)[:, :experiences] for g in (at3 or mine)}


def first_experience_curves(groups, stream: str) -> dict[str, np.ndarray]:
    """Figure 7's data: R[i, 0] (i = 0..T−1) of the LR-k (c = 1) and HN-k (first order) runs of
    `stream`, mean over seeds, keyed by method."""
    return {g["method"]: mean_accuracy_matrix(g)[:, 0] for g in groups
            if g["stream"] == stream and g["setting"] in ("c=1", "order=first") and g["method"][-1].isdigit()}


def lookahead_curves(groups, stream: str) -> dict[str, dict[str, np.ndarray]]:
    """Figure 11's data: for each HN-k of `stream` run both with and without the look-ahead, R mean
    over seeds ({"first": R, "none": R}), keyed by method."""
    out = {}
    for method in sorted({g["method"] for g in groups if g["stream"] == stream and g["method"].startswith("HN")}):
        both = {o: _find(groups, stream, method, f"order={o}")[0] for o in ("first", "none")}
        if None not in both.values():
            out[method] = {o: mean_accuracy_matrix(g) for o, g in both.items()}
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
        ax.set_xlim(0.5, max((R.shape[0] for R in curves.values()), default=1) + 0.5)
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


def _depth_color(method: str, colors):
    return colors[int(method[-1]) % len(colors)] if method[-1].isdigit() else colors[0]


def figure4(results: dict, heading: str) -> Figure:
    """One panel per target dataset B: learning accuracy on B against k, a color per source A, HN
    solid, LR (c = 0) dashed, ± std over seeds as error bars."""
    targets = sorted({b for _, b in results})
    sources = sorted({a for a, _ in results})
    colors = dict(zip(sources, _colors(len(sources))))
    fig = Figure(figsize=(3.4 * len(targets) + 1.0, 3.8), dpi=100, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(targets), sharey=True, squeeze=False)[0])
    for ax, b in zip(axes, targets):
        for (a, target), kinds in results.items():
            if target != b:
                continue
            for kind, per_k in sorted(kinds.items()):
                ks = [k for k, v in enumerate(per_k) if v is not None]
                ax.errorbar(ks, [per_k[k]["mean"] for k in ks], yerr=[per_k[k]["std"] or 0.0 for k in ks],
                            color=colors[a], linestyle="-" if kind == "HN" else "--",
                            marker="o" if kind == "HN" else "s", markersize=4, capsize=2, label=f"{a}, {kind}")
        ax.set_title(f"second experience: {b}")
        ax.set_xlabel("freeze depth k")
        ax.set_xticks(list(DEPTHS))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="first experience", title_fontsize=7)
    axes[0].set_ylabel("learning accuracy on B (%)")
    fig.suptitle(heading)
    return fig


def figure7(clean: dict, noisy: dict, heading: str) -> Figure:
    """Left: R[i, 0] of LR-k (c = 1), noisy solid and clean dashed. Middle and right: the noisy
    stream's R[i, 0] and the first experience's forgetting R[0, 0] − R[i, 0], LR dashed, HN solid."""
    fig = Figure(figsize=(13.0, 4.0), dpi=100, layout="constrained")
    axes = fig.subplots(1, 3)
    colors = _colors(10)
    for method, r in sorted(noisy.items()):
        x = np.arange(1, r.size + 1)
        style = dict(color=_depth_color(method, colors), marker="o", markersize=3)
        if method.startswith("LR"):
            axes[0].plot(x, 100 * r, linestyle="-", label=f"{method}, noisy", **style)
            if method in clean:
                axes[0].plot(np.arange(1, clean[method].size + 1), 100 * clean[method], linestyle="--",
                             label=f"{method}, clean", **style)
        line = "-" if method.startswith("HN") else "--"
        axes[1].plot(x, 100 * r, linestyle=line, label=method, **style)
        axes[2].plot(x, 100 * (r[0] - r), linestyle=line, label=method, **style)
    for ax, (name, y) in zip(axes, (("LR (c=1): noisy solid, clean dashed", "test accuracy of experience 1 (%)"),
                                    ("noisy stream: HN solid, LR dashed", "test accuracy of experience 1 (%)"),
                                    ("noisy stream: HN solid, LR dashed", "forgetting of experience 1 (%)"))):
        ax.set_title(name)
        ax.set_xlabel("after training experience")
        ax.set_ylabel(y)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(heading)
    return fig


def figure11(curves: dict, heading: str, experiences: int = 8) -> Figure:
    """Experiences 1..8 (as far as the stream goes), each panel R[i, j] over i: a color per HN-k,
    solid with the look-ahead (first order), dashed without."""
    T = max(R["first"].shape[0] for R in curves.values())
    n = min(experiences, T)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig = Figure(figsize=(3.2 * cols + 1.5, 2.8 * rows + 0.6), dpi=100, layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, sharey=True, squeeze=False)).ravel()
    colors = _colors(10)
    for j, ax in enumerate(axes[:n]):
        for method, Rs in curves.items():
            for order, line in (("first", "-"), ("none", "--")):
                R = Rs[order]
                ax.plot(np.arange(j, R.shape[0]) + 1, 100 * R[j:, j], linestyle=line, marker="o", markersize=2,
                        color=_depth_color(method, colors), label=f"{method}, {'look-ahead' if order == 'first' else 'none'}")
        ax.set_title(f"experience {j + 1}")
        ax.set_xlabel("after training experience")
        ax.set_xlim(0.5, T + 0.5)  # (the same stream axis in every panel, the last one's single point too)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[n:]:
        ax.set_visible(False)
    for ax in axes[::cols]:
        ax.set_ylabel("test accuracy (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=7)
    fig.suptitle(heading)
    return fig


def write_figures(groups, out_dir: Path) -> list[str]:
    """Figures 4, 7, 8, 11 and 12 of every stream (or stream pair) with the runs they need, as PNGs in
    `out_dir`; their Markdown lines."""
    lines = []

    def save(fig: Figure, name: str, alt: str) -> None:
        report.save_png(fig, out_dir / name)
        lines.extend([f"![{alt}]({name})", ""])

    results = transfer_results(groups)
    if results:
        save(figure4(results, "Figure 4: learning accuracy on the second experience (B) after A, by freeze depth"),
             "figure4_transfer.png", "Figure 4, transfer pairs")
    for clean, noisy in CLEAN_NOISY:
        noisy_curves = first_experience_curves(groups, noisy)
        if noisy_curves:
            save(figure7(first_experience_curves(groups, clean), noisy_curves,
                         f"Figure 7: the first experience over the stream, {title(noisy)}"),
                 f"figure7_{noisy}.png", f"Figure 7, {title(noisy)}")
    for stream in sorted({g["stream"] for g in groups} - {"transfer"}):
        acc = accuracy_curves(groups, stream)
        save(figure8(acc, f"Figure 8: accuracy of experiences 1–3 over the stream, {title(stream)}"),
             f"figure8_{stream}.png", f"Figure 8, {title(stream)}")
        curves = lookahead_curves(groups, stream)
        if curves:
            save(figure11(curves, f"Figure 11: with and without the look-ahead, {title(stream)}"),
                 f"figure11_{stream}.png", f"Figure 11, {title(stream)}")
        cos = cos_curves(groups, stream)
        if cos:
            save(figure12(cos, f"Figure 12: cos(g1, g2) over training, {title(stream)}"),
                 f"figure12_{stream}.png", f"Figure 12, {title(stream)}")
    return (["## Figures", ""] + lines) if lines else []


def html_page(markdown: str, figures_dir: Path) -> str:
    """The report as one self-contained HTML page: its Markdown rendered (CommonMark with tables) and
    each figure embedded as a data URI."""
    def embed(match) -> str:
        png = (Path(figures_dir) / match[2]).read_bytes()
        return f"![{match[1]}](data:image/png;base64,{base64.b64encode(png).decode()})"

    body = markdown_it.MarkdownIt("commonmark").enable("table").render(
        re.sub(r"!\[([^]]*)\]\(([^)]+\.png)\)", embed, markdown))
    style = ("body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:13px;margin-bottom:1.5em}"
             "th,td{border:1px solid #bbb;padding:3px 7px;text-align:right}th{background:#eee}"
             "td:first-child,td:nth-child(2){text-align:left}img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>phn_jax report</title>"
            f"<style>{style}</style></head><body>\n{body}</body></html>\n")


def report_markdown(root: str | Path, paper_path: str | Path = PAPER_RESULTS, figures_dir: Path | None = None) -> str:
    """The whole report of the runs under `root` as Markdown (with `figures_dir`, also its figures
    written there)."""
    groups = group_runs(find_runs(root))
    paper = load_paper_results(paper_path)
    lines = [f"# phn_jax report: {root}", "",
             f"{sum(len(g['seeds']) for g in groups)} runs in {len(groups)} configurations. Ours: mean ± sample "
             "std over seeds (n); paper: Hemati et al. (CoLLAs 2023) (von Oswald et al. (ICLR 2020) where a table "
             "says so), `phn_jax/paper_results.csv`; Δ = ours − paper.",
             ""]
    lines += table1(groups, paper) + table2(groups, paper) + table45(groups, paper, 4) + table45(groups, paper, 5)
    finished = [g for g in groups if g["finished"]]  # (the tables' `_find` names the unfinished under each)
    lines += table6(groups, paper) + table_von_oswald(groups, paper) + table_transfer(transfer_results(finished))
    lines += all_configurations(groups)
    repeated = [str(d) for g in groups for d in g["repeated"]]
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
