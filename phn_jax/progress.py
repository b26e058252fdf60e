"""Where a run stands (`Progress`, one per seed) and its JSON in a checkpoint; a training epoch's row
of the history (`HISTORY_COLUMNS`, `epoch_row`)."""
from __future__ import annotations

import dataclasses

import numpy as np

from phn_jax import metrics

HISTORY_COLUMNS = ("experience", "epoch", "loss", "ce", "reg", "cos_g1_g2", "train_accuracy", "time_s")
# The losses of systems beside the classifier, where a strategy's step reports them (tir, replay: the
# generative memory's L_VAE and L_H at its look-ahead; tir: the task-inference network's loss).
EXTRA_HISTORY_COLUMNS = ("vae_loss", "vae_reg", "inference_loss")


def history_columns(rows: list[dict]) -> tuple[str, ...]:
    """HISTORY_COLUMNS and the EXTRA_HISTORY_COLUMNS the rows have."""
    return HISTORY_COLUMNS + tuple(c for c in EXTRA_HISTORY_COLUMNS if rows and c in rows[0])


def epoch_row(t: int, epoch: int, step_metrics: dict, seconds: float) -> dict:
    """Per-epoch means over the steps that ran (weighted by their real samples for accuracy)."""
    m = step_metrics
    ran = m["count"] > 0
    mean = lambda k: float(np.mean(m[k][ran]))
    return {"experience": t, "epoch": epoch, "loss": mean("loss"), "ce": mean("ce"), "reg": mean("reg"),
            "cos_g1_g2": mean("cos_g1_g2"), "train_accuracy": float(m["correct"].sum() / m["count"].sum()),
            "time_s": seconds, **{k: mean(k) for k in EXTRA_HISTORY_COLUMNS if k in m}}


@dataclasses.dataclass
class Progress:
    """Where a run (one seed) stands; a checkpoint's metadata holds it (JSON).

    R: accuracy matrix [T, T] (NaN where not evaluated); inferred: the matrices without task ids the
    run evaluates, by name (`metrics.WITHOUT_TASK_IDS`; {} when none); times: seconds of each
    completed experience; history: one row per epoch (HISTORY_COLUMNS); experience: the one being
    trained (T when the run is done); epoch: its epochs completed; elapsed_s: the program's time
    spent in it. The seeds of a multi-seed run have one Progress each, at the same experience and
    epoch; the times of each (`times`, the history's `time_s`) are its share of the program's, the
    program's seconds over its S seeds, so that they add up to the program's.
    """

    R: np.ndarray
    inferred: dict
    times: list
    history: list
    experience: int = 0
    epoch: int = 0
    elapsed_s: float = 0.0

    @classmethod
    def start(cls, num_experiences: int, without_task_ids: tuple[str, ...] = ()) -> "Progress":
        """Before the first experience of a stream of T = `num_experiences`, with the matrices
        `without_task_ids` names (those the run evaluates without task ids)."""
        T = num_experiences
        return cls(metrics.empty_accuracy_matrix(T), {m: metrics.empty_accuracy_matrix(T) for m in without_task_ids},
                   [], [])

    def step(self, epochs: int) -> int:
        """The checkpoint step: epochs completed over the run."""
        return self.experience * epochs + self.epoch

    def to_json(self) -> dict:
        return {"accuracy_matrix": metrics.jsonable(self.R), "without_task_ids": metrics.jsonable(self.inferred),
                "times_s": self.times, "history": self.history, "experience": self.experience,
                "epoch": self.epoch, "elapsed_s": self.elapsed_s}

    @classmethod
    def from_json(cls, d: dict) -> "Progress":
        return cls(metrics.as_accuracy_matrix(d["accuracy_matrix"]),
                   {m: metrics.as_accuracy_matrix(v) for m, v in d["without_task_ids"].items()},
                   list(d["times_s"]), list(d["history"]), d["experience"], d["epoch"], d["elapsed_s"])

    def summary(self, memory: dict) -> dict:
        return metrics.summarize(self.R, self.times, memory, **self.inferred)


def progress_json(progress: list[Progress], stacked: bool):
    """A checkpoint's progress: one seed's JSON, or a multi-seed (`stacked`) run's list of them."""
    return [p.to_json() for p in progress] if stacked else progress[0].to_json()


def progress_from_json(saved, stacked: bool) -> list[Progress]:
    """`progress_json`'s inverse: each seed's Progress."""
    return [Progress.from_json(d) for d in (saved if stacked else [saved])]
