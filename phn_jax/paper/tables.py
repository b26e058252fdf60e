"""The paper's tables as Markdown: each cell ours (mean ± std over seeds, n) beside the published
value and the difference, the rows' configurations chosen by `runs.find`."""
from __future__ import annotations

from phn_jax.paper.runs import (CLEAN_NOISY, DEPTHS, NOT_CLASS_SPLIT, ONE_HEAD, PAPER_STREAMS,
                                TABLE2_METHODS, VON_OSWALD_STREAMS, VON_OSWALD_SYSTEMS, find, paper_value, title)


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
    found = {g.stream for g in groups} - set(NOT_CLASS_SPLIT)
    return [s for s in PAPER_STREAMS if s in found] + sorted(found - set(PAPER_STREAMS))


def table1(groups, paper) -> list[str]:
    out = []
    for pair in CLEAN_NOISY:
        with_paper = _has_paper(paper, 1, pair)
        rows, notes = [], []
        for stream in pair:
            for method in ("LR-2", "HN-2", "LR-3", "HN-3", "LR-4", "HN-4"):
                g, name = find(groups, stream, method, None, notes)
                if g is None:
                    continue
                row = [title(stream), name]
                for e in range(1, 5):
                    row += _metric_cells(_ours(g.aggregate, f"learning_accuracy_e{e}"),
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
            g, name = find(groups, stream, method, None, notes)
            if g is None:
                continue
            row = [name]
            for metric in ("aca", "forgetting", "time"):
                row += _metric_cells(_ours(g.aggregate, metric), paper_value(paper, 2, stream, method, metric),
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
        if not any(g.stream == stream and g.setting == f"order={compared}" for g in groups):
            continue
        rows, notes = [], []
        for k in DEPTHS:
            method = "HN-F" if k == 0 else f"HN-{k}"
            for order in orders:
                g, name = find(groups, stream, method, f"order={order}", notes)
                if g is None:
                    continue
                row = [name, order]
                for metric in ("aca", "learning_accuracy", "time"):
                    row += _metric_cells(_ours(g.aggregate, metric),
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
                g, name = find(groups, stream, method, None, notes)
                if g is None:
                    continue
                mb = g.summaries[0]["memory"].get(key)
                ours = None if mb is None else {"mean": mb, "std": None, "n": len(g.seeds)}
                rows.append([title(stream), name,
                             *_metric_cells(ours, paper_value(paper, 6, stream, method, "memory"), with_paper, 2)])
    return _table("Table 6: memory (MB at 32 bit)", ["stream", "method"] + _metric_header(("MB",), with_paper), rows,
                  notes)


def table_von_oswald(groups, paper) -> list[str]:
    """von Oswald et al.'s Table 1: their methods on their MNIST streams, a column per scenario (van de
    Ven & Tolias), each after the last task and "during" (each task tested right after it was learned,
    among the tasks so far: hypercl's acc_during_mean). HNET: CL1 (the task given: our ACA) beside the
    paper's number, CL2 from its one-head run and CL3 from its run with a head per task, both with the
    task inferred by entropy (HNET+ENT); HNET+TIR (the task inferred by the task-inference network) and
    HNET+R (the replay-trained classifier, no task): CL2 from their one-head runs, CL3 from their runs
    with a head per task. The paper's CL2/CL3 numbers are not in this repository's copies of the paper:
    none are shown."""
    rows, notes = [], []
    cols = (("CL2", "domain_incremental"), ("CL3", "class_incremental"))
    for stream in VON_OSWALD_STREAMS:
        for method in ("HNET",) + tuple(VON_OSWALD_SYSTEMS.values()):
            single = "order=first, one head" if method == "HNET" else ONE_HEAD  # (a head per task: the default)
            runs = {"heads": find(groups, stream, method, None, notes), "one": find(groups, stream, method, single, notes)}
            if all(g is None for g, _ in runs.values()):
                continue
            g, name = runs["heads"]
            # (the paper's CL1 is HNET's, whose classifier HNET+TIR's is; HNET+R's is a classifier of its own)
            cl1 = cells(g and _ours(g.aggregate, "aca"),
                        None if method == "HNET+R" else paper_value(paper, "vo1", stream, "HNET", "aca"), 2)
            by_scenario = []
            for scenario, metric in cols:
                src = runs["one"][0] if scenario == "CL2" else g
                by_scenario += [_cell(src and _ours(src.aggregate, f"{metric}_accuracy"), 2),
                                _cell(src and _ours(src.aggregate, f"{metric}_during"), 2)]
            seeds = "; ".join(f"{label}: n={len(r.seeds)}" for label, (r, _) in (("heads", runs["heads"]),
                                                                                  ("one head", runs["one"])) if r)
            rows.append([title(stream), method, *cl1, *by_scenario, _cell(g and _ours(g.aggregate, "task_inference_accuracy"), 2),
                         seeds])
    return _table("von Oswald et al. (ICLR 2020), Table 1: accuracy (%) by scenario",
                  ["stream", "method", "ours CL1", "paper CL1", "Δ CL1", "ours CL2", "CL2 during", "ours CL3",
                   "CL3 during", "task inference (CL3 run)", "runs"], rows, notes)


def transfer_results(groups) -> dict[tuple[str, str], dict[str, list]]:
    """Figure 4's data: for each transfer pair (A, B) with runs, for "LR (c=0)" and "HN" (first-order
    look-ahead), the learning accuracy on B (R[1, 1], %) at k = 0..4: {mean, std, n} or None."""
    out: dict = {}
    kinds = {("lr", "c=0"): "LR (c=0)", ("hn", "order=first"): "HN"}
    for g in groups:
        kind = kinds.get((g.flat["strategy.name"], g.setting))
        if g.stream != "transfer" or kind is None:
            continue
        pair = tuple(g.flat["data.transfer_pair"])
        per_k = out.setdefault(pair, {}).setdefault(kind, [None] * len(DEPTHS))
        per_k[g.flat["strategy.freeze_depth"]] = _ours(g.aggregate, "learning_accuracy_e2")
    return dict(sorted(out.items()))


def table_transfer(results) -> list[str]:
    rows = [[f"{a} → {b}", kind, *(_cell(v) + ("" if v is None else f" (n={v['n']})") for v in per_k)]
            for (a, b), kinds in results.items() for kind, per_k in sorted(kinds.items())]
    return _table("Figure 4's data: learning accuracy on B after A (%), by freeze depth k",
                  ["A → B", "method"] + [f"k={k}" for k in DEPTHS], rows)


def all_configurations(groups) -> list[str]:
    rows = []
    for g in groups:
        a = g.aggregate
        rows.append([g.stream, g.label, ", ".join(map(str, g.seeds)),
                     f"{a['completed_experiences']}" + ("" if g.finished else " (unfinished)"),
                     *(_cell(_ours(a, k)) for k in ("aca", "learning_accuracy", "forgetting", "time"))])
    return _table("Every configuration found (mean ± std over its seeds)",
                  ["stream", "configuration", "seeds", "experiences", "ACA (%)", "learning accuracy (%)",
                   "forgetting (%)", "time (min)"], rows)
