"""Continual-learning metrics on the accuracy matrix (NumPy, pure functions).

Definitions follow Avalanche, which the paper (Hemati et al., CoLLAs 2023) uses; see
docs/design.md §4. Experiences are indexed from 0 here, so experience ``e_{i+1}`` of the paper is
row/column ``i`` and its task id is ``i``.

The accuracy matrix ``R`` has shape ``[T, T]``::

    R[i, j] = test accuracy on experience j after training experience i.

Only the lower triangle ``j <= i`` is ever read. Entries that do not exist yet (``j > i``, and
whole rows of experiences not trained yet) are ``NaN``. Values may be fractions in [0, 1] or
percentages; the metrics are in the same unit as ``R``.

A partially filled matrix (the engine logs metrics after every experience) has its first ``n``
rows complete (``R[i, :i+1]`` finite for ``i < n``) and the rest ``NaN``. Every metric takes an
optional ``i`` (the experience *after* which it is measured, default the last completed one),
so ``metric(R, i)`` equals ``metric(R[:i+1, :i+1])``.

Forgetting after the first experience (``i = 0``) is a mean over an empty set: it is ``NaN``
(and so is BWT), encoded as ``null`` in JSON. It is not reported as 0, which would claim a
measurement that was never made.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "BYTES_PER_MIB",
    "aggregate_seeds",
    "describe_aggregate",
    "mean_std",
    "as_accuracy_matrix",
    "average_classification_accuracy",
    "backward_transfer",
    "buffer_megabytes",
    "completed_experiences",
    "empty_accuracy_matrix",
    "forgetting",
    "hypernetwork_megabytes",
    "jsonable",
    "learning_accuracy",
    "metrics_after",
    "summarize",
]

#: Megabytes are MiB: 1 MB = 2**20 bytes. This convention reproduces every MB value of the
#: paper's Table 6 (e.g. HN-F: 1,272,877 params * 4 B / 2**20 = 4.86 MB; with 10**6 it would
#: be 5.09 MB).
BYTES_PER_MIB = 2**20


def _check_count(name: str, value: Any) -> int:
    """``value`` as an int, or ``ValueError`` unless it is a non-negative integer (not a bool)."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# The accuracy matrix
# --------------------------------------------------------------------------------------------


def empty_accuracy_matrix(num_experiences: int) -> np.ndarray:
    """A ``[T, T]`` float64 matrix of ``NaN`` (no experience trained yet), ``T = num_experiences``."""
    T = _check_count("num_experiences", num_experiences)
    if T == 0:
        raise ValueError("num_experiences must be at least 1")
    return np.full((T, T), np.nan)


def as_accuracy_matrix(R: Any) -> np.ndarray:
    """``R`` as a float64 ``[T, T]`` array (nested lists with ``None`` for missing entries are fine).

    Raises ``ValueError`` if ``R`` is not numeric, not 2-D, not square or empty.
    """
    try:
        arr = np.asarray(R, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"accuracy matrix must be numeric (None/NaN for missing): {err}") from None
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] == 0:
        raise ValueError(f"accuracy matrix must be square [T, T] with T >= 1, got shape {arr.shape}")
    return arr


def completed_experiences(R: Any) -> int:
    """Number ``n`` of experiences whose row is complete: ``R[i, :i+1]`` finite for all ``i < n``.

    Rows after the first incomplete one must be entirely missing (``NaN``) in their lower
    triangle; a row that is only partly filled, or a filled row after a missing one, is an error
    (``ValueError``) because no metric of it would be meaningful.
    """
    R = as_accuracy_matrix(R)
    T = R.shape[0]
    filled = [np.isfinite(R[i, : i + 1]) for i in range(T)]
    for i, row in enumerate(filled):
        if row.any() and not row.all():
            missing = [int(j) for j in np.flatnonzero(~row)]
            raise ValueError(f"row {i} of the accuracy matrix is partly filled: R[{i}, {missing}] missing")
    n = next((i for i, row in enumerate(filled) if not row.all()), T)
    later = [i for i in range(n, T) if filled[i].any()]
    if later:
        raise ValueError(f"accuracy matrix rows {later} are filled but row {n} is missing")
    return n


def _after(R: Any, i: int | None) -> tuple[np.ndarray, int]:
    """Validated matrix and experience index ``i`` (default: the last completed experience)."""
    R = as_accuracy_matrix(R)
    n = completed_experiences(R)
    if n == 0:
        raise ValueError("the accuracy matrix has no completed experience (row 0 is missing)")
    if i is None:
        return R, n - 1
    if not isinstance(i, (int, np.integer)) or isinstance(i, bool) or not 0 <= i < n:
        raise ValueError(f"experience index i must be an int in [0, {n - 1}] (completed rows), got {i!r}")
    return R, int(i)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def average_classification_accuracy(R: Any, i: int | None = None) -> float:
    """ACA after experience ``i``: accuracy averaged over the experiences seen so far.

    ``ACA_i = 1/(i+1) * sum_{j=0..i} R[i, j]``; with ``i = T-1`` this is the paper's ACA,
    ``mean_j R[T-1, j]``.
    """
    R, i = _after(R, i)
    return float(np.mean(R[i, : i + 1]))


def learning_accuracy(R: Any, i: int | None = None) -> float:
    """Learning accuracy after experience ``i``: accuracy of each experience just after learning it.

    ``LA_i = 1/(i+1) * sum_{j=0..i} R[j, j]`` (the mean of the diagonal; paper: ``mean_j R[j, j]``).
    """
    R, i = _after(R, i)
    return float(np.mean(np.diag(R)[: i + 1]))


def forgetting(R: Any, i: int | None = None) -> float:
    """Forgetting after experience ``i``: drop from just-learned to current accuracy, averaged.

    ``F_i = 1/i * sum_{j=0..i-1} (R[j, j] - R[i, j])`` for ``i >= 1``; ``NaN`` for ``i = 0``
    (no previous experience). With ``i = T-1`` this is the paper's / docs/design.md §4 definition
    ``mean_{j<T-1} (R[j, j] - R[T-1, j])`` (Avalanche's stream forgetting: accuracy when learned
    minus last accuracy). It is *not* the max-over-past variant of Chaudhry et al.
    (``max_{l<i} R[l, j] - R[i, j]``), which this module does not implement.
    Positive values mean forgetting; negative values mean the past improved.
    """
    R, i = _after(R, i)
    if i == 0:
        return math.nan
    return float(np.mean(np.diag(R)[:i] - R[i, :i]))


def backward_transfer(R: Any, i: int | None = None) -> float:
    """Backward transfer after experience ``i``: ``BWT_i = -F_i`` (see :func:`forgetting`).

    ``BWT_i = 1/i * sum_{j=0..i-1} (R[i, j] - R[j, j])``; ``NaN`` for ``i = 0``.
    """
    return 0.0 - forgetting(R, i)  # 0.0 - x keeps NaN and avoids -0.0


def metrics_after(R: Any, i: int | None = None) -> dict[str, float]:
    """All scalar metrics after experience ``i``: ``{"aca", "learning_accuracy", "forgetting", "bwt"}``.

    Values are floats (``NaN`` where undefined); use :func:`jsonable` before ``json.dumps``.
    """
    R, i = _after(R, i)
    return {
        "aca": average_classification_accuracy(R, i),
        "learning_accuracy": learning_accuracy(R, i),
        "forgetting": forgetting(R, i),
        "bwt": backward_transfer(R, i),
    }


# --------------------------------------------------------------------------------------------
# Memory (paper Table 6)
# --------------------------------------------------------------------------------------------


def _megabytes(num_values: int, bytes_per_value: int) -> float:
    """``num_values * bytes_per_value / 2**20`` (MiB)."""
    return num_values * _check_count("bytes_per_value", bytes_per_value) / BYTES_PER_MIB


def hypernetwork_megabytes(num_params: int, bytes_per_value: int = 4) -> float:
    """Memory of a stored hypernetwork in MB (MiB, 2**20 bytes) at 32 bit by default.

    ``MB = num_params * bytes_per_value / 2**20``. Paper Table 6: the converged hypernetwork of
    the previous experience must be stored for the regulariser, e.g. HN-3 with 924,322
    parameters takes ``924322 * 4 / 2**20 = 3.53`` MB.
    """
    return _megabytes(_check_count("num_params", num_params), bytes_per_value)


def buffer_megabytes(num_samples: int, sample_shape: Sequence[int], bytes_per_value: int = 4) -> float:
    """Memory of a replay buffer's exemplars in MB (MiB, 2**20 bytes), 32 bit by default.

    ``MB = num_samples * prod(sample_shape) * bytes_per_value / 2**20``; labels are not counted
    (as in the paper's Table 6). E.g. LR-0 on CIFAR-100, 200 images of 3x32x32:
    ``200 * 3072 * 4 / 2**20 = 2.34`` MB.
    """
    values = math.prod(_check_count("sample_shape entries", d) for d in sample_shape)
    return _megabytes(_check_count("num_samples", num_samples) * values, bytes_per_value)


def replay_buffer_memory(num_samples: int, sample_shape: Sequence[int]) -> dict[str, Any]:
    """The metrics entries of a replay buffer of `num_samples` samples of `sample_shape` at 32 bit:
    ``replay_buffer_samples``, ``replay_feature_shape`` and ``replay_buffer_mb`` (Table 6), the
    same keys for a latent-replay run and for the buffer an HN run at the same depth replaces."""
    return {"replay_buffer_samples": num_samples, "replay_feature_shape": [int(d) for d in sample_shape],
            "replay_buffer_mb": buffer_megabytes(num_samples, sample_shape)}


# --------------------------------------------------------------------------------------------
# JSON-ready summary
# --------------------------------------------------------------------------------------------


def jsonable(obj: Any, default: Callable[[Any], Any] | None = None) -> Any:
    """``obj`` as plain JSON types: dicts (str keys), lists, str, int, float, bool, None.

    NumPy arrays and scalars become lists and Python numbers; tuples become lists; non-finite
    floats (NaN, ±inf) become ``None`` (JSON ``null``), so ``json.dumps(..., allow_nan=False)``
    succeeds. Anything else goes through ``default`` or raises ``TypeError``.
    """
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist(), default)
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v, default) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, default) for v in obj]
    if default is not None:
        return jsonable(default(obj))
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable: {obj!r}")


# The accuracy matrices of an evaluation without task ids (`phn_jax.task_inference`), and the scenario of
# van de Ven & Tolias (2019) each one's accuracy is: CL2 (the class within the task, the task neither given
# nor needed), CL3 (the global class: task and class both right). CL1, the task given, is R itself.
WITHOUT_TASK_IDS = ("class_incremental", "task_inference", "domain_incremental")
SCENARIO_OF = {"domain_incremental": "CL2", "class_incremental": "CL3"}


def summarize(
    R: Any,
    times_s: Sequence[float],
    memory: Mapping[str, Any] | None = None,
    task_ids: Sequence[int] | None = None,
    **without_task_ids: Any,
) -> dict[str, Any]:
    """Everything a run reports, as a JSON-ready dict (plain floats/lists, ``NaN`` as ``None``).

    Args:
      R: accuracy matrix ``[T, T]``, possibly partial (first ``n`` rows complete).
      times_s: wall time in seconds of each completed experience, length ``n``.
      memory: e.g. ``{"hypernetwork_params": 924322, "hypernetwork_mb": 3.53}``; stored as is.
      task_ids: task id of each completed experience, length ``n``; default ``0..n-1``.

    Returns a dict with: ``num_experiences`` (T), ``completed_experiences`` (n); ``aca``,
    ``learning_accuracy``, ``forgetting``, ``bwt`` after the last completed experience;
    ``accuracy_matrix`` (T lists of T, ``None`` where undefined); ``per_experience``: lists of
    length n indexed by experience ``i`` — ``experience``, ``task_id``, ``time_s``, ``aca``,
    ``learning_accuracy``, ``forgetting``, ``bwt`` (each *after* experience i),
    ``accuracy_when_learned`` (``R[i, i]``) and ``final_accuracy`` (``R[n-1, i]``);
    ``total_time_s``; ``memory``.

    Evaluation without task ids (the task inferred, e.g. by predictive entropy, see
    ``phn_jax.task_inference``), any of the matrices ``WITHOUT_TASK_IDS`` as keywords (same shape and
    completed rows as ``R``): ``class_incremental[i, j]`` = accuracy on experience j after experience
    i counting a sample right when its task is inferred right and its class is right (accuracy on
    the global label (task, class): van de Ven & Tolias' CL3), ``task_inference[i, j]`` = fraction of
    experience j's samples whose task is inferred right, ``domain_incremental[i, j]`` = a sample
    right when its class within its task is right, whichever task was inferred (CL2). For each
    given, the summary also holds ``<name>_accuracy`` (its ACA: ``mean_j M[n-1, j]``),
    ``<name>_during`` (each experience tested right after it was learned, the inference over the
    experiences learned so far: ``mean_j M[j, j]``, von Oswald et al.'s "during" accuracy, hypercl's
    ``acc_during_mean``), ``<name>_matrix`` and a ``per_experience`` list of the accuracy after each
    experience. ``scenarios`` gathers them by scenario: {"CL1": the task given (R), "CL2", "CL3"}, each
    {"accuracy", "during"}, for those evaluated.
    """
    R = as_accuracy_matrix(R)
    n = completed_experiences(R)
    if n == 0:
        raise ValueError("cannot summarise an accuracy matrix with no completed experience")
    times = [float(t) for t in times_s]
    if len(times) != n:
        raise ValueError(f"times_s has {len(times)} entries, expected one per completed experience ({n})")
    if any(not math.isfinite(t) or t < 0 for t in times):
        raise ValueError(f"times_s must be finite and non-negative, got {times}")
    tasks = list(range(n)) if task_ids is None else [int(t) for t in task_ids]
    if len(tasks) != n:
        raise ValueError(f"task_ids has {len(tasks)} entries, expected {n}")
    if memory is not None and not isinstance(memory, Mapping):
        raise ValueError(f"memory must be a mapping of name -> value, got {type(memory).__name__}")

    after = [metrics_after(R, i) for i in range(n)]
    per_experience: dict[str, list] = {"experience": list(range(n)), "task_id": tasks, "time_s": times}
    for key in after[0]:
        per_experience[key] = [m[key] for m in after]
    per_experience["accuracy_when_learned"] = np.diag(R)[:n]
    per_experience["final_accuracy"] = R[n - 1, :n]

    lower = lambda M: np.where(np.tril(np.ones_like(M, dtype=bool)), M, np.nan)  # j > i is undefined
    unknown = sorted(set(without_task_ids) - set(WITHOUT_TASK_IDS))
    if unknown:
        raise ValueError(f"unknown matrices without task ids {unknown}; use {WITHOUT_TASK_IDS}")
    without, scenarios = {}, {"CL1": {"accuracy": after[-1]["aca"], "during": after[-1]["learning_accuracy"]}}
    for name in WITHOUT_TASK_IDS:
        if without_task_ids.get(name) is None:
            continue
        M = as_accuracy_matrix(without_task_ids[name])
        if M.shape != R.shape or completed_experiences(M) != n:
            raise ValueError(f"the {name} matrix must have the accuracy matrix's shape {R.shape} and its "
                             f"{n} completed rows; got shape {M.shape}")
        per_experience[f"{name}_accuracy"] = [average_classification_accuracy(M, i) for i in range(n)]
        without[f"{name}_accuracy"] = per_experience[f"{name}_accuracy"][-1]
        without[f"{name}_during"] = learning_accuracy(M, n - 1)
        without[f"{name}_matrix"] = lower(M)
        if name in SCENARIO_OF:
            scenarios[SCENARIO_OF[name]] = {"accuracy": without[f"{name}_accuracy"],
                                            "during": without[f"{name}_during"]}
    return jsonable(
        {
            "num_experiences": R.shape[0],
            "completed_experiences": n,
            **after[-1],
            "accuracy_matrix": lower(R),
            **without,
            "scenarios": scenarios,
            "per_experience": per_experience,
            "total_time_s": math.fsum(times),
            "memory": dict(memory or {}),
        }
    )


# --------------------------------------------------------------------------------------------
# Over seeds
# --------------------------------------------------------------------------------------------

#: The summary values `aggregate_seeds` reports as mean ± std (those a summary holds).
AGGREGATED = ("aca", "learning_accuracy", "forgetting", "bwt", "class_incremental_accuracy",
              "task_inference_accuracy", "class_incremental_during", "task_inference_during",
              "domain_incremental_accuracy", "domain_incremental_during", "total_time_s")
#: The per-experience lists it reports, experience by experience.
AGGREGATED_PER_EXPERIENCE = ("accuracy_when_learned", "final_accuracy", "aca")


def mean_std(values: Sequence[Any]) -> dict[str, Any]:
    """``{"mean", "std", "n"}`` of the defined values (``None`` and NaN left out).

    mean = Σ x_s / n; std = sqrt(Σ (x_s − mean)² / (n − 1)), the sample standard deviation over
    seeds (``None`` for n < 2; the mean is ``None`` for n = 0).
    """
    x = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = x.size
    return {"mean": float(x.mean()) if n else None, "std": float(x.std(ddof=1)) if n > 1 else None, "n": n}


def aggregate_seeds(summaries: Sequence[Mapping[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    """Mean ± std over the seeds' ``summarize`` outputs of one configuration.

    Returns ``seeds``, ``completed_experiences`` (the fewest any seed completed: the per-experience
    lists stop there), a :func:`mean_std` of each value of ``AGGREGATED`` the summaries hold, and
    ``per_experience``: for each of ``AGGREGATED_PER_EXPERIENCE`` a list of :func:`mean_std` per
    experience i (the accuracy on i when learned, R[i, i]; the final accuracy on i, R[n−1, i]; the
    ACA after i).
    """
    if len(summaries) != len(seeds) or not summaries:
        raise ValueError(f"give one summary per seed: {len(summaries)} summaries for seeds {list(seeds)}")
    n = min(s["completed_experiences"] for s in summaries)
    out: dict[str, Any] = {"seeds": [int(s) for s in seeds], "completed_experiences": n}
    for key in AGGREGATED:
        if any(key in s for s in summaries):
            out[key] = mean_std([s.get(key) for s in summaries])
    out["per_experience"] = {key: [mean_std([s["per_experience"][key][i] for s in summaries]) for i in range(n)]
                             for key in AGGREGATED_PER_EXPERIENCE}
    return out


def describe_aggregate(aggregate: Mapping[str, Any]) -> str:
    """One line: each aggregated value as mean ± std."""
    def one(m):
        if m["mean"] is None:
            return "n/a"
        return f"{m['mean']:.4f}" + ("" if m["std"] is None else f" ± {m['std']:.4f}")
    keys = [k for k in AGGREGATED if k in aggregate and k != "total_time_s"]
    return ", ".join(f"{k.replace('_', ' ')} {one(aggregate[k])}" for k in keys) + f" (n = {len(aggregate['seeds'])})"
