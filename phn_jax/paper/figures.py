"""The paper's figures from the runs (their data, then the PNGs) and the report as one HTML page."""
from __future__ import annotations

import base64
import re
from pathlib import Path

import markdown_it
import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from phn_jax import metrics, report
from phn_jax.paper.runs import CLEAN_NOISY, DEPTHS, find, title
from phn_jax.paper.tables import transfer_results


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
        if g.stream != stream or not g.method.startswith("HN") or g.setting == "order=none":
            continue
        seeds = [[r["cos_g1_g2"] for r in _history(d) if r["experience"] >= 1] for d in g.dirs]
        n = min(map(len, seeds))
        if n:
            out[g.label] = np.mean([c[:n] for c in seeds], axis=0)
    return out


def mean_accuracy_matrix(g) -> np.ndarray:
    """R [T, T] of a configuration, mean over its seeds; NaN where no seed measured it."""
    R = np.stack([metrics.as_accuracy_matrix(s["accuracy_matrix"]) for s in g.summaries])
    seen = np.isfinite(R).any(axis=0)  # (entries no seed measured stay NaN, without a warning)
    return np.where(seen, np.nanmean(np.where(seen, R, 0.0), axis=0), np.nan)


def accuracy_curves(groups, stream: str, experiences: int = 3) -> dict[str, np.ndarray]:
    """Figure 8's data: R[i, j] of the first `experiences` experiences j (rows i), mean over seeds
    ([T, experiences], NaN where not measured), of the LR-3 and HN-3 configurations of `stream` (the
    paper's freeze depth), or of all its configurations when it has neither."""
    mine = [g for g in groups if g.stream == stream]
    at3 = [g for g in mine if g.method in ("LR-3", "HN-3")]
    return {g.label: mean_accuracy_matrix(g)[:, :experiences] for g in (at3 or mine)}


def first_experience_curves(groups, stream: str) -> dict[str, np.ndarray]:
    """Figure 7's data: R[i, 0] (i = 0..T−1) of the LR-k (c = 1) and HN-k (first order) runs of
    `stream`, mean over seeds, keyed by method."""
    return {g.method: mean_accuracy_matrix(g)[:, 0] for g in groups
            if g.stream == stream and g.setting in ("c=1", "order=first") and g.method[-1].isdigit()}


def lookahead_curves(groups, stream: str) -> dict[str, dict[str, np.ndarray]]:
    """Figure 11's data: for each HN-k of `stream` run both with and without the look-ahead, R mean
    over seeds ({"first": R, "none": R}), keyed by method."""
    out = {}
    for method in sorted({g.method for g in groups if g.stream == stream and g.method.startswith("HN")}):
        both = {o: find(groups, stream, method, f"order={o}")[0] for o in ("first", "none")}
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
    for stream in sorted({g.stream for g in groups} - {"transfer"}):
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
