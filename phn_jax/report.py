"""The run directory: config, metrics (JSON + CSV), plots and a plain-text log.

Layout of ``workdir`` (file names are the module constants below)::

    config.json              resolved ConfigDict (json)
    config.yaml              the same, readable YAML (plain types, loads with yaml.safe_load)
    metrics.json             metrics.summarize(...) output
    accuracy_matrix.csv      R[i, j]: row = after experience i, column = experience j
    class_incremental_matrix.csv, task_inference_matrix.csv (and .png heatmaps)
                             the same without task ids, when the run evaluated so (task inference)
    per_experience.csv       one row per completed experience (time, ACA, LA, F, BWT, ...)
    accuracy_matrix.png      heatmap of R
    accuracy_over_stream.png accuracy of each experience j over the stream (i >= j)
    log.txt                  appended log of the run
    events.out.tfevents.*    TensorBoard scalars (`Events`, below)

A multi-seed run (``config.seeds``) writes the above for each seed in that seed's directory, and
in its own workdir the checkpoints, the log, and the aggregate over seeds: ``aggregate.json``
(:func:`phn_jax.metrics.aggregate_seeds`) and ``aggregate.md`` (the same as tables).

Every file except the log is written atomically (a temporary file in the same directory, then
``os.replace``): a run killed mid-write leaves the previous version intact, never a half-written
file. Experiences are indexed from 0, as in :mod:`phn_jax.metrics`.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import matplotlib
import numpy as np
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from phn_jax import metrics as M
from phn_jax.config import with_defaults

__all__ = [
    "ACCURACY_CSV",
    "AGGREGATE_JSON",
    "AGGREGATE_MD",
    "ACCURACY_PNG",
    "CONFIG_JSON",
    "CONFIG_YAML",
    "LOG_TXT",
    "METRICS_JSON",
    "OPTIONAL_MATRICES",
    "OPTIONAL_PER_EXPERIENCE_COLUMNS",
    "OVER_STREAM_PNG",
    "PER_EXPERIENCE_COLUMNS",
    "PER_EXPERIENCE_CSV",
    "accuracy_matrix_figure",
    "accuracy_over_stream_figure",
    "atomic_open",
    "close_run_log",
    "load_metrics",
    "open_run_log",
    "plot_accuracy_matrix",
    "plot_accuracy_over_stream",
    "run_log",
    "save_png",
    "write_aggregate",
    "write_config",
    "write_metrics",
    "write_report",
]

CONFIG_JSON = "config.json"
CONFIG_YAML = "config.yaml"
METRICS_JSON = "metrics.json"
ACCURACY_CSV = "accuracy_matrix.csv"
PER_EXPERIENCE_CSV = "per_experience.csv"
ACCURACY_PNG = "accuracy_matrix.png"
OVER_STREAM_PNG = "accuracy_over_stream.png"
LOG_TXT = "log.txt"
AGGREGATE_JSON = "aggregate.json"
AGGREGATE_MD = "aggregate.md"

#: Columns of per_experience.csv, in order (keys of ``summary["per_experience"]``).
PER_EXPERIENCE_COLUMNS = (
    "experience",
    "task_id",
    "time_s",
    "aca",
    "learning_accuracy",
    "forgetting",
    "bwt",
    "accuracy_when_learned",
    "final_accuracy",
)

#: Evaluation without task ids (``metrics.summarize``'s optional matrices), written when present:
#: each matrix as ``<name>.csv``, and the per-experience columns after the others.
OPTIONAL_MATRICES = tuple(f"{m}_matrix" for m in M.WITHOUT_TASK_IDS)
OPTIONAL_PER_EXPERIENCE_COLUMNS = tuple(f"{m}_accuracy" for m in M.WITHOUT_TASK_IDS)

_DPI = 100


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success it replaces ``path`` atomically.

    ``mode`` is ``"w"`` (text, UTF-8) or ``"wb"``. If the body raises, the temporary file is
    removed and ``path`` is untouched. Parent directories are created.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would make results unreadable to others
        with os.fdopen(fd, mode, **({"encoding": "utf-8", "newline": ""} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _write_text(path: Path, text: str) -> Path:
    with atomic_open(path, "w") as f:
        f.write(text)
    return path


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """CSV with ``None`` as an empty cell and floats in full precision (``repr``)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in row])
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# Config and metrics
# --------------------------------------------------------------------------------------------


# Config fields that do not change a run's results: display, devices, how seeds share a program, checkpoints.
NOT_RESULTS = ("seeds", "train.progress", "train.num_devices", "train.seed_axis", "checkpoint.max_to_keep",
               "checkpoint.every_minutes")


def results_fields(config: Any) -> dict:
    """The fields of a config (a ConfigDict, or a run's config.json as a dict, completed by
    `config.with_defaults`) that decide its results, flat ({"strategy.freeze_depth": 3, ...}) and as
    JSON types, NOT_RESULTS left out: two runs with the same are the same experiment."""
    as_dict = config.to_dict() if hasattr(config, "to_dict") else with_defaults(config)
    plain = json.loads(json.dumps(M.jsonable(as_dict, default=repr)))

    def flat(d: Mapping, prefix: str) -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v})
        return out

    return {k: v for k, v in flat(plain, "").items() if k not in NOT_RESULTS}


def write_config(workdir: str | os.PathLike, config: Any) -> tuple[Path, Path]:
    """Write the resolved config as ``config.json`` and readable ``config.yaml``; return both paths.

    ``config`` is an ``ml_collections.ConfigDict`` (field references resolved by ``to_dict()``)
    or any mapping. Tuples become lists and values JSON cannot hold are written as ``repr``.
    (``ConfigDict.to_yaml()`` is not used: it dumps Python object tags, unreadable and unsafe
    to load.)
    """
    as_dict = config.to_dict() if hasattr(config, "to_dict") else config
    if not isinstance(as_dict, Mapping):
        raise TypeError(f"config must be a ConfigDict or a mapping, got {type(config).__name__}")
    plain = M.jsonable(as_dict, default=repr)
    workdir = Path(workdir)
    return (
        _write_text(workdir / CONFIG_JSON, json.dumps(plain, indent=2, allow_nan=False) + "\n"),
        _write_text(workdir / CONFIG_YAML, yaml.safe_dump(plain, sort_keys=False, default_flow_style=False)),
    )


def write_metrics(workdir: str | os.PathLike, summary: Mapping[str, Any]) -> list[Path]:
    """Write ``metrics.json``, ``accuracy_matrix.csv`` and ``per_experience.csv``; return the paths.

    ``summary`` is the dict of :func:`phn_jax.metrics.summarize`. ``accuracy_matrix.csv`` has the
    header ``after_experience,experience_0,...,experience_{T-1}`` and one row per experience
    ``i`` (empty cells where undefined); ``per_experience.csv`` has the columns
    ``PER_EXPERIENCE_COLUMNS`` (then those of ``OPTIONAL_PER_EXPERIENCE_COLUMNS`` it holds) and one
    row per completed experience. The matrices of ``OPTIONAL_MATRICES`` the summary holds are
    written as ``<name>.csv`` like ``accuracy_matrix.csv``.
    """
    try:
        R = M.as_accuracy_matrix(summary["accuracy_matrix"])
        per = summary["per_experience"]
        header = list(PER_EXPERIENCE_COLUMNS) + [c for c in OPTIONAL_PER_EXPERIENCE_COLUMNS if c in per]
        columns = [list(per[c]) for c in header]
    except KeyError as err:
        raise KeyError(f"summary lacks {err}; build it with phn_jax.metrics.summarize") from None
    text = json.dumps(M.jsonable(summary), indent=2, allow_nan=False) + "\n"

    def matrix_csv(matrix):
        matrix = M.as_accuracy_matrix(matrix)
        return _csv_text(["after_experience", *(f"experience_{j}" for j in range(matrix.shape[0]))],
                         [[i, *M.jsonable(row)] for i, row in enumerate(matrix)])

    workdir = Path(workdir)
    return [
        _write_text(workdir / METRICS_JSON, text),
        _write_text(workdir / ACCURACY_CSV, matrix_csv(R)),
        _write_text(workdir / PER_EXPERIENCE_CSV, _csv_text(header, list(zip(*columns)))),
        *(_write_text(workdir / f"{name}.csv", matrix_csv(summary[name])) for name in OPTIONAL_MATRICES
          if name in summary),
    ]


def load_metrics(workdir: str | os.PathLike) -> dict[str, Any]:
    """Read ``metrics.json`` back as written (``None`` for undefined values).

    ``phn_jax.metrics.as_accuracy_matrix(d["accuracy_matrix"])`` turns the matrix back into an
    array with ``NaN``. Raises ``FileNotFoundError`` if the run wrote no metrics.
    """
    path = Path(workdir) / METRICS_JSON
    if not path.is_file():
        raise FileNotFoundError(f"no {METRICS_JSON} in {workdir}: the run has not finished an experience")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# --------------------------------------------------------------------------------------------
# Plots (matplotlib's object API on the Agg canvas: no pyplot, no global figure state)
# --------------------------------------------------------------------------------------------


def save_png(fig: Figure, path: str | os.PathLike) -> Path:
    """Render ``fig`` at its own size and dpi (no tight bbox) and write it atomically."""
    with atomic_open(path, "wb") as f:
        FigureCanvasAgg(fig).print_png(f)
    return Path(path)


def _unit(R: np.ndarray) -> tuple[float, str]:
    """Colour/axis maximum and cell format: fractions (max <= 1) or percentages."""
    return (1.0, "{:.2f}") if np.nanmax(R, initial=0.0) <= 1.0 else (100.0, "{:.1f}")


def accuracy_matrix_figure(R: Any, title: str | None = None) -> Figure:
    """Heatmap of the accuracy matrix ``R`` ``[T, T]``: annotated cells, undefined cells blank.

    Rows are "after training experience i", columns "evaluated on experience j"; colours span
    [0, 1] (or [0, 100] if ``R`` holds percentages). Size ``(h + 1) x h`` inches at 100 dpi with
    ``h = max(4, 2 + T/2)`` (T=3: 500x400 px).
    """
    R = M.as_accuracy_matrix(R)
    T = R.shape[0]
    vmax, fmt = _unit(R)
    height = max(4.0, 2.0 + 0.5 * T)
    fig = Figure(figsize=(height + 1.0, height), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    image = ax.imshow(np.ma.masked_invalid(R), cmap=cmap, vmin=0.0, vmax=vmax)
    fig.colorbar(image, ax=ax, label="accuracy")
    fontsize = 8 if T <= 10 else 6
    for i, j in zip(*np.nonzero(np.isfinite(R))):
        value = R[i, j]
        color = "black" if value > 0.6 * vmax else "white"
        ax.text(j, i, fmt.format(value), ha="center", va="center", color=color, fontsize=fontsize)
    ax.set_xticks(range(T))
    ax.set_yticks(range(T))
    ax.tick_params(labelsize=fontsize)
    ax.set_xlabel("evaluated on experience j")
    ax.set_ylabel("after training experience i")
    ax.set_title(title or "accuracy matrix R[i, j]")
    return fig


def plot_accuracy_matrix(R: Any, path: str | os.PathLike, title: str | None = None) -> Path:
    """Write :func:`accuracy_matrix_figure` of ``R`` as a PNG at ``path`` (atomically)."""
    return save_png(accuracy_matrix_figure(R, title), path)


def accuracy_over_stream_figure(R: Any, title: str | None = None) -> Figure:
    """One line per experience ``j``: ``R[i, j]`` against ``i`` for ``i >= j`` (paper Fig. 8).

    Shows how each experience's accuracy evolves as the stream goes on; experiences with no
    value yet have no line. Size 8 x 4.5 inches at 100 dpi (800x450 px), legend outside.
    """
    R = M.as_accuracy_matrix(R)
    T = R.shape[0]
    vmax, _ = _unit(R)
    fig = Figure(figsize=(8.0, 4.5), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    colors = matplotlib.colormaps["tab10" if T <= 10 else "tab20"].colors
    for j in range(T):
        if np.isfinite(R[j:, j]).any():
            color = colors[j % len(colors)]
            ax.plot(np.arange(j, T), R[j:, j], marker="o", markersize=3, color=color, label=f"experience {j}")
    ax.set_xlim(-0.5, T - 0.5)
    ax.set_ylim(0.0, vmax * 1.02)
    ax.set_xticks(range(T))
    ax.set_xlabel("after training experience i")
    ax.set_ylabel("test accuracy R[i, j]")
    ax.set_title(title or "accuracy of each experience over the stream")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, ncol=1 if T <= 12 else 2)
    return fig


def plot_accuracy_over_stream(R: Any, path: str | os.PathLike, title: str | None = None) -> Path:
    """Write :func:`accuracy_over_stream_figure` of ``R`` as a PNG at ``path`` (atomically)."""
    return save_png(accuracy_over_stream_figure(R, title), path)


def write_report(workdir: str | os.PathLike, summary: Mapping[str, Any]) -> list[Path]:
    """:func:`write_metrics` plus both plots of ``summary["accuracy_matrix"]`` and a heatmap
    ``<name>.png`` of each matrix of ``OPTIONAL_MATRICES`` the summary holds; return all paths."""
    workdir = Path(workdir)
    paths = write_metrics(workdir, summary)
    R = summary["accuracy_matrix"]
    return [
        *paths,
        plot_accuracy_matrix(R, workdir / ACCURACY_PNG),
        plot_accuracy_over_stream(R, workdir / OVER_STREAM_PNG),
        *(plot_accuracy_matrix(summary[name], workdir / f"{name}.png", title=name.replace("_", " "))
          for name in OPTIONAL_MATRICES if name in summary),
    ]


# --------------------------------------------------------------------------------------------
# The run log
# --------------------------------------------------------------------------------------------


def open_run_log(
    workdir: str | os.PathLike, *, stream: IO[str] | None = None, level: int = logging.INFO, to_file: bool = True
) -> logging.Logger:
    """A logger writing to ``workdir/log.txt`` (appended; not with ``to_file=False``: the processes
    other than 0 of a multi-process run) and to ``stream`` (default stdout).

    The logger is private to this call (not registered in ``logging``'s global tree, so nothing
    leaks between runs or into other loggers); close it with :func:`close_run_log` or use
    :func:`run_log`.
    """
    workdir = Path(workdir)
    logger = logging.Logger(f"phn_jax.run[{workdir}]", level)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers = [logging.StreamHandler(sys.stdout if stream is None else stream)]
    if to_file:
        workdir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(workdir / LOG_TXT, mode="a", encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    return logger


def close_run_log(logger: logging.Logger) -> None:
    """Flush and close the handlers of a logger from :func:`open_run_log` (stdout stays open)."""
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


@contextlib.contextmanager
def run_log(workdir: str | os.PathLike, **kwargs: Any) -> Iterator[logging.Logger]:
    """``with run_log(workdir) as log: log.info(...)`` — :func:`open_run_log`, closed on exit."""
    logger = open_run_log(workdir, **kwargs)
    try:
        yield logger
    finally:
        close_run_log(logger)


# --------------------------------------------------------------------------------------------
# Other run files
# --------------------------------------------------------------------------------------------


def event_writer(workdir: str | os.PathLike, purge_step: int | None = None):
    """A TensorBoard event file writer in ``workdir`` (tensorboardX: no TensorFlow needed). With
    ``purge_step``, TensorBoard drops the events of earlier files at and after that step (a resumed
    run writes them again)."""
    from tensorboardX import SummaryWriter  # imported here: only runs write events

    return SummaryWriter(str(workdir), purge_step=purge_step, flush_secs=60)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` (made JSON-ready by :func:`phn_jax.metrics.jsonable`) atomically to ``path``."""
    return _write_text(Path(path), json.dumps(M.jsonable(obj), indent=2, allow_nan=False) + "\n")


def write_table(path: str | os.PathLike, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``rows`` (mappings with the keys ``columns``) as a CSV atomically to ``path``."""
    return _write_text(Path(path), _csv_text(columns, [[M.jsonable(r[c]) for c in columns] for r in rows]))


def _mean_std_text(m: Mapping[str, Any], scale: float = 1.0, digits: int = 2) -> str:
    if m["mean"] is None:
        return "n/a"
    return f"{m['mean'] * scale:.{digits}f}" + ("" if m["std"] is None else f" ± {m['std'] * scale:.{digits}f}")


def aggregate_markdown(aggregate: Mapping[str, Any]) -> str:
    """Markdown tables of :func:`phn_jax.metrics.aggregate_seeds`: accuracies in %, mean ± std."""
    seeds = ", ".join(map(str, aggregate["seeds"]))
    lines = [f"# Mean ± std over seeds {seeds}", "", "| metric | mean ± std | n |", "|---|---|---|"]
    for key in M.AGGREGATED:
        if key in aggregate:
            scale, unit = (1.0, " (s)") if key == "total_time_s" else (100.0, " (%)")
            lines.append(f"| {key.removesuffix('_s').replace('_', ' ')}{unit} | {_mean_std_text(aggregate[key], scale)} | "
                         f"{aggregate[key]['n']} |")
    per = aggregate["per_experience"]
    lines += ["", "## Per experience (%)", "", "| experience | " + " | ".join(k.replace("_", " ") for k in per) + " |",
              "|---" * (len(per) + 1) + "|"]
    for i in range(aggregate["completed_experiences"]):
        lines.append(f"| {i} | " + " | ".join(_mean_std_text(per[k][i], 100.0) for k in per) + " |")
    return "\n".join(lines) + "\n"


def write_aggregate(workdir: str | os.PathLike, aggregate: Mapping[str, Any]) -> list[Path]:
    """``aggregate.json`` and ``aggregate.md`` of :func:`phn_jax.metrics.aggregate_seeds` in ``workdir``."""
    workdir = Path(workdir)
    return [write_json(workdir / AGGREGATE_JSON, aggregate),
            _write_text(workdir / AGGREGATE_MD, aggregate_markdown(aggregate))]


class WandbWriter:
    """One Weights & Biases run (a seed's results directory), written like tensorboardX's writer:
    `add_scalar(tag, value, step)`; the scalars of one step go to W&B together (`wandb.Run.log`).
    The optional extra (`pip install phn_jax[wandb]`); its files in `directory`/wandb. W&B's own
    environment applies: WANDB_MODE=offline writes the run there for `wandb sync` later. The run's id
    is the results directory's, so a resumed run continues the same W&B run."""

    def __init__(self, project: str, directory: Path, group: str, config: dict):
        import wandb  # imported here: the optional extra

        run_id = hashlib.sha256(str(Path(directory).resolve()).encode()).hexdigest()[:16]
        self.run = wandb.init(project=project, dir=str(directory), name=Path(directory).name, group=group,
                              config=config, id=run_id, resume="allow", reinit="create_new")
        self.step, self.pending = None, {}

    def add_scalar(self, tag: str, value, step: int) -> None:
        if self.pending and step != self.step:
            self.flush()
        self.step = step
        self.pending[tag] = float(value)

    def flush(self) -> None:
        if self.pending:
            self.run.log(self.pending, step=self.step)
            self.pending = {}

    def close(self) -> None:
        self.flush()
        self.run.finish()


class Events:
    """The run's scalars, per seed (process 0): TensorBoard event files in each seed's results
    directory (tensorboardX, no TensorFlow; `tensorboard --logdir runs/`), and with `wandb` (a
    project name, `config.log.wandb`) a Weights & Biases run beside each (`WandbWriter`). Step =
    epochs completed over the run (the checkpoint step). Per epoch: train/<column> for every value of
    its train_history.csv row (train/loss, train/ce, train/reg, train/cos_g1_g2, train/accuracy,
    train/time_s, ...); per experience: test/accuracy/experience_<j> for every experience seen and
    test/aca. A resumed run purges the TensorBoard events after its checkpoint's step
    (`purge_step`), which it writes again."""

    NOT_SCALARS = ("experience", "epoch")  # a history row's position, not a value

    def __init__(self, results: tuple[Path, ...], purge_step: int | None, enabled: bool, wandb: str = "",
                 group: str = "", config: dict | None = None):
        """results: each seed's results directory; wandb, group, config: the W&B project (none: ''), the
        run group (the run directory's name: a multi-seed run's seeds together) and the run's config."""
        self.writers = [[event_writer(d, purge_step)] for d in results] if enabled else []
        if enabled and wandb:
            for w, d in zip(self.writers, results):
                w.append(WandbWriter(wandb, d, group, config))

    def _add(self, writers: list, tag: str, value, step: int) -> None:
        for w in writers:
            w.add_scalar(tag, value, step)

    def epoch(self, rows: list[dict], step: int) -> None:
        for writers, row in zip(self.writers, rows):
            for k, value in row.items():
                if k not in self.NOT_SCALARS:
                    self._add(writers, "train/" + k.removeprefix("train_"), value, step)

    def experience(self, progress: list, summaries: list[dict], step: int) -> None:
        for writers, p, summary in zip(self.writers, progress, summaries):
            t = p.experience - 1
            for j in range(t + 1):
                self._add(writers, f"test/accuracy/experience_{j}", p.R[t, j], step)
            self._add(writers, "test/aca", summary["aca"], step)

    def flush(self) -> None:
        for writers in self.writers:
            for w in writers:
                w.flush()

    def close(self) -> None:
        for writers in self.writers:
            for w in writers:
                w.close()
