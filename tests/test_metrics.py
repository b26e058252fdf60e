"""Tests of phn_jax.metrics: every value below is computed by hand (arithmetic in comments)."""

import json
import math

import numpy as np
import pytest

from phn_jax import metrics as M

nan = math.nan

# R[i, j] = accuracy on experience j after training experience i (T = 4).
R4 = np.array(
    [
        [0.80, nan, nan, nan],
        [0.60, 0.90, nan, nan],
        [0.50, 0.70, 0.85, nan],
        [0.40, 0.65, 0.75, 0.95],
    ]
)

# Hand-computed values after each experience i = 0, 1, 2, 3.
# ACA_i = mean(R[i, :i+1]):
#   i=0: 0.80
#   i=1: (0.60 + 0.90) / 2 = 1.50 / 2 = 0.75
#   i=2: (0.50 + 0.70 + 0.85) / 3 = 2.05 / 3 = 0.68333...
#   i=3: (0.40 + 0.65 + 0.75 + 0.95) / 4 = 2.75 / 4 = 0.6875
ACA = [0.80, 0.75, 2.05 / 3, 0.6875]
# LA_i = mean(diag[:i+1]), diag = 0.80, 0.90, 0.85, 0.95:
#   i=0: 0.80;  i=1: 1.70 / 2 = 0.85;  i=2: 2.55 / 3 = 0.85;  i=3: 3.50 / 4 = 0.875
LA = [0.80, 0.85, 0.85, 0.875]
# F_i = mean_{j<i} (R[j, j] - R[i, j]):
#   i=0: undefined (NaN)
#   i=1: 0.80 - 0.60 = 0.20
#   i=2: ((0.80 - 0.50) + (0.90 - 0.70)) / 2 = (0.30 + 0.20) / 2 = 0.25
#   i=3: ((0.80 - 0.40) + (0.90 - 0.65) + (0.85 - 0.75)) / 3 = (0.40 + 0.25 + 0.10) / 3 = 0.25
FORGETTING = [nan, 0.20, 0.25, 0.25]

approx = lambda x: pytest.approx(x, rel=1e-12, abs=1e-12)  # noqa: E731


def test_final_metrics_of_full_matrix():
    assert M.average_classification_accuracy(R4) == approx(0.6875)
    assert M.learning_accuracy(R4) == approx(0.875)
    assert M.forgetting(R4) == approx(0.25)
    assert M.backward_transfer(R4) == approx(-0.25)


@pytest.mark.parametrize("i", range(4))
def test_metrics_after_each_experience(i):
    got = M.metrics_after(R4, i)
    assert got["aca"] == approx(ACA[i])
    assert got["learning_accuracy"] == approx(LA[i])
    if i == 0:
        assert math.isnan(got["forgetting"]) and math.isnan(got["bwt"])
    else:
        assert got["forgetting"] == approx(FORGETTING[i])
        assert got["bwt"] == approx(-FORGETTING[i])
    # A metric after experience i only sees the top-left (i+1) x (i+1) block.
    assert M.metrics_after(R4[: i + 1, : i + 1]) == pytest.approx(got, nan_ok=True)


def test_percentages_scale_linearly():
    assert M.average_classification_accuracy(100 * R4) == approx(68.75)
    assert M.forgetting(100 * R4) == approx(25.0)


def test_negative_forgetting_when_the_past_improves():
    # F = (0.50 - 0.70) / 1 = -0.20, BWT = +0.20
    R = [[0.50, None], [0.70, 0.90]]
    assert M.forgetting(R) == approx(-0.20)
    assert M.backward_transfer(R) == approx(0.20)


def test_bwt_of_zero_forgetting_is_positive_zero():
    R = [[0.5, nan], [0.5, 0.7]]
    assert M.backward_transfer(R) == 0.0 and math.copysign(1.0, M.backward_transfer(R)) == 1.0


def test_partial_matrix_defaults_to_last_completed_experience():
    R = M.empty_accuracy_matrix(4)
    R[0, 0] = 0.80
    R[1, :2] = [0.60, 0.90]
    assert M.completed_experiences(R) == 2
    assert M.average_classification_accuracy(R) == approx(0.75)  # (0.60 + 0.90) / 2
    assert M.learning_accuracy(R) == approx(0.85)  # (0.80 + 0.90) / 2
    assert M.forgetting(R) == approx(0.20)  # 0.80 - 0.60
    assert M.average_classification_accuracy(R, 0) == approx(0.80)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.average_classification_accuracy(R, 2)  # row 2 not trained yet


def test_upper_triangle_is_ignored():
    R = R4.copy()
    R[0, 1:] = 0.11  # e.g. an evaluation of experiences not trained yet
    R[2, 3] = 0.99
    assert M.metrics_after(R) == pytest.approx(M.metrics_after(R4))
    summary = M.summarize(R, [1.0] * 4)
    assert summary["accuracy_matrix"][0] == [0.80, None, None, None]
    assert summary["accuracy_matrix"][2][3] is None


def test_nested_lists_with_none_are_accepted():
    rows = [[0.8, None], [0.6, 0.9]]
    np.testing.assert_array_equal(M.as_accuracy_matrix(rows), [[0.8, nan], [0.6, 0.9]])
    assert M.forgetting(rows) == approx(0.20)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((2, 3)), "square"),
        (np.zeros(3), "square"),
        (np.zeros((0, 0)), "square"),
        ([["a", "b"], ["c", "d"]], "numeric"),
        ([[0.8, nan], [0.6, nan]], r"row 1 .*partly filled"),
        ([[0.8, nan, nan], [nan, nan, nan], [0.5, 0.6, 0.7]], r"rows \[2\] are filled but row 1"),
    ],
)
def test_bad_matrices_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        M.forgetting(bad)


def test_no_completed_experience_raises():
    with pytest.raises(ValueError, match="no completed experience"):
        M.average_classification_accuracy(M.empty_accuracy_matrix(3))
    with pytest.raises(ValueError):
        M.summarize(M.empty_accuracy_matrix(3), [])
    assert M.completed_experiences(M.empty_accuracy_matrix(3)) == 0


@pytest.mark.parametrize("i", [-1, 4, 1.0, True, "0"])
def test_bad_experience_index_raises(i):
    with pytest.raises(ValueError, match="experience index"):
        M.learning_accuracy(R4, i)


def test_empty_accuracy_matrix():
    R = M.empty_accuracy_matrix(3)
    assert R.shape == (3, 3) and np.isnan(R).all()
    for bad in (0, -1, 2.0):
        with pytest.raises(ValueError):
            M.empty_accuracy_matrix(bad)


def test_summarize_values_and_json_round_trip():
    memory = {"hypernetwork_params": np.int64(924_322), "hypernetwork_mb": M.hypernetwork_megabytes(924_322)}
    summary = M.summarize(R4, [10.0, 20.5, 30.0, 40.25], memory)
    # Plain JSON: survives a strict dump/load unchanged (NaN would make allow_nan=False raise).
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary
    assert summary["num_experiences"] == 4 and summary["completed_experiences"] == 4
    assert summary["aca"] == approx(0.6875)
    assert summary["learning_accuracy"] == approx(0.875)
    assert summary["forgetting"] == approx(0.25) and summary["bwt"] == approx(-0.25)
    assert summary["total_time_s"] == 100.75  # 10 + 20.5 + 30 + 40.25
    assert summary["memory"] == {"hypernetwork_params": 924322, "hypernetwork_mb": 924322 * 4 / 2**20}
    assert type(summary["memory"]["hypernetwork_params"]) is int
    per = summary["per_experience"]
    assert per["experience"] == [0, 1, 2, 3] and per["task_id"] == [0, 1, 2, 3]
    assert per["time_s"] == [10.0, 20.5, 30.0, 40.25]
    assert per["aca"] == approx(ACA)
    assert per["learning_accuracy"] == approx(LA)
    assert per["forgetting"][0] is None and per["forgetting"][1:] == approx(FORGETTING[1:])
    assert per["bwt"][0] is None and per["bwt"][1:] == approx([-f for f in FORGETTING[1:]])
    assert per["accuracy_when_learned"] == [0.80, 0.90, 0.85, 0.95]
    assert per["final_accuracy"] == [0.40, 0.65, 0.75, 0.95]
    assert summary["accuracy_matrix"] == [
        [0.80, None, None, None],
        [0.60, 0.90, None, None],
        [0.50, 0.70, 0.85, None],
        [0.40, 0.65, 0.75, 0.95],
    ]


def test_summarize_partial_matrix():
    R = R4.copy()
    R[2:] = nan
    summary = M.summarize(R, [1.0, 2.0], {}, task_ids=[7, 9])
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary
    assert summary["num_experiences"] == 4 and summary["completed_experiences"] == 2
    assert summary["aca"] == approx(0.75) and summary["forgetting"] == approx(0.20)
    assert summary["per_experience"]["task_id"] == [7, 9]
    assert summary["per_experience"]["final_accuracy"] == [0.60, 0.90]
    assert summary["accuracy_matrix"][2:] == [[None] * 4, [None] * 4]


def test_summarize_first_experience_only_has_null_forgetting():
    summary = M.summarize([[0.7, nan], [nan, nan]], [3.0])
    assert summary["forgetting"] is None and summary["bwt"] is None
    assert summary["aca"] == approx(0.7) and summary["learning_accuracy"] == approx(0.7)
    assert "NaN" not in json.dumps(summary)


def test_summarize_without_task_ids():
    """Class-incremental and task-inference matrices: their ACA, matrices and per-experience lists."""
    R = R4.copy()
    R[3] = nan  # 3 completed experiences
    R_class = np.where(np.isnan(R), nan, R - 0.1)
    R_task = np.array([[1.0, nan, nan, nan], [0.5, 0.8, nan, nan], [0.6, 0.7, 0.9, nan], [nan] * 4])
    summary = M.summarize(R, [1.0] * 3, class_incremental=R_class, task_inference=R_task)
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary
    assert summary["class_incremental_accuracy"] == approx((0.40 + 0.60 + 0.75) / 3)
    assert summary["task_inference_accuracy"] == approx((0.6 + 0.7 + 0.9) / 3)
    # "during": each experience right after it was learned, the diagonal (hypercl's acc_during_mean)
    assert summary["task_inference_during"] == approx((1.0 + 0.8 + 0.9) / 3)
    assert summary["class_incremental_during"] == approx(np.mean([R4[i, i] - 0.1 for i in range(3)]))
    assert summary["per_experience"]["task_inference_accuracy"] == approx([1.0, 0.65, 2.2 / 3])
    assert summary["per_experience"]["class_incremental_accuracy"] == approx(
        [0.7, (0.5 + 0.8) / 2, (0.40 + 0.60 + 0.75) / 3])
    assert summary["task_inference_matrix"][1] == [0.5, 0.8, None, None]
    assert summary["aca"] == approx(M.average_classification_accuracy(R))  # the oracle-id metrics unchanged
    assert "class_incremental_accuracy" not in M.summarize(R, [1.0] * 3)
    alone = M.summarize(R, [1.0] * 3, domain_incremental=R_class)  # any of them alone (HNET+R in CL2: only CL2)
    assert alone["domain_incremental_accuracy"] == summary["class_incremental_accuracy"]
    assert "class_incremental_accuracy" not in alone and set(alone["scenarios"]) == {"CL1", "CL2"}
    assert alone["scenarios"]["CL2"]["during"] == approx((0.7 + 0.8 + 0.75) / 3)
    with pytest.raises(ValueError, match="unknown matrices"):
        M.summarize(R, [1.0] * 3, class_incremental_typo=R_class)
    with pytest.raises(ValueError, match="task_inference matrix must have .* 3 completed rows"):
        M.summarize(R, [1.0] * 3, class_incremental=R_class, task_inference=R4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(times_s=[1.0, 2.0]), "times_s has 2 entries"),
        (dict(times_s=[1.0, 2.0, 3.0, -1.0]), "non-negative"),
        (dict(times_s=[1.0] * 4, task_ids=[0]), "task_ids has 1"),
        (dict(times_s=[1.0] * 4, memory=[1, 2]), "mapping"),
    ],
)
def test_summarize_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        M.summarize(R4, **kwargs)


def test_jsonable():
    obj = {1: (np.float32(0.5), np.array([1.0, np.nan, np.inf])), "b": np.bool_(True), "i": np.int32(3)}
    assert M.jsonable(obj) == {"1": [0.5, [1.0, None, None]], "b": True, "i": 3}
    with pytest.raises(TypeError, match="object"):
        M.jsonable({"x": object()})
    assert M.jsonable({"f": len}, default=lambda o: "fn") == {"f": "fn"}


# Paper Table 6 (CIFAR-100, C = 100 outputs, 20 tasks): # of HN parameters -> MB at 32 bit.
TABLE6_HN = [
    ("HN-F", 1_272_877, 4.86),
    ("HN-1", 1_217_122, 4.64),
    ("HN-2", 1_119_522, 4.27),
    ("HN-3", 924_322, 3.53),
    ("HN-4", 533_922, 2.04),
]
# Table 6 replay buffers: (buffer size, exemplar shape, MB). The paper prints LR-2 on CIFAR-100 as
# 4x16x16, a typo: its 7.81 MB is 200 * 40*16*16 * 4 / 2**20 = 7.8125 (stage 2 has 40 channels).
TABLE6_LR = [
    ("CIFAR LR-0", 200, (3, 32, 32), 2.34),
    ("CIFAR LR-1", 200, (20, 32, 32), 15.62),
    ("CIFAR LR-2", 200, (40, 16, 16), 7.81),
    ("CIFAR LR-3", 200, (80, 8, 8), 3.91),
    ("CIFAR LR-4", 200, (160, 4, 4), 1.95),
    ("TinyImageNet LR-0", 400, (3, 64, 64), 18.75),
    ("TinyImageNet LR-1", 400, (20, 64, 64), 125.0),
    ("TinyImageNet LR-2", 400, (40, 32, 32), 62.50),
    ("TinyImageNet LR-3", 400, (80, 16, 16), 31.25),
    ("TinyImageNet LR-4", 400, (160, 8, 8), 15.62),
]
HALF_LAST_DIGIT = 0.005 + 1e-12  # the table rounds to 2 decimals (15.625 is printed 15.62)


@pytest.mark.parametrize("name, params, table_mb", TABLE6_HN)
def test_hypernetwork_megabytes_reproduce_table6(name, params, table_mb):
    mb = M.hypernetwork_megabytes(params)
    assert mb == params * 4 / 2**20
    assert abs(mb - table_mb) <= HALF_LAST_DIGIT, (name, mb)
    # The decimal convention (10**6 bytes) would not reproduce the table, e.g. HN-F: 5.09 != 4.86.
    assert abs(params * 4 / 1e6 - table_mb) > HALF_LAST_DIGIT


@pytest.mark.parametrize("name, n, shape, table_mb", TABLE6_LR)
def test_buffer_megabytes_reproduce_table6(name, n, shape, table_mb):
    mb = M.buffer_megabytes(n, shape)
    assert abs(mb - table_mb) <= HALF_LAST_DIGIT, (name, mb)


def test_megabytes_exact_values_and_errors():
    assert M.buffer_megabytes(200, (3, 32, 32)) == 2.34375  # 200 * 3072 * 4 = 2,457,600 B / 2**20
    assert M.buffer_megabytes(400, (20, 64, 64)) == 125.0  # 400 * 81920 * 4 = 131,072,000 B / 2**20
    assert M.hypernetwork_megabytes(2**20, bytes_per_value=2) == 2.0  # 16-bit
    assert M.buffer_megabytes(10, (), bytes_per_value=1) == 10 / 2**20  # scalars
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError):
            M.hypernetwork_megabytes(bad)
    with pytest.raises(ValueError, match="sample_shape"):
        M.buffer_megabytes(10, (3, -1))
    with pytest.raises(ValueError, match="bytes_per_value"):
        M.buffer_megabytes(10, (3,), bytes_per_value=0.5)


def test_mean_and_sample_std_over_seeds_by_hand():
    m = M.mean_std([0.5, 0.7, None, 0.9, float("nan")])  # None and NaN (undefined) are left out
    assert m["n"] == 3 and m["mean"] == pytest.approx(0.7) and m["std"] == pytest.approx(0.2)  # sqrt(0.08 / 2)
    assert M.mean_std([0.4]) == {"mean": 0.4, "std": None, "n": 1}
    assert M.mean_std([]) == {"mean": None, "std": None, "n": 0}
    R1 = np.array([[0.9, np.nan], [0.7, 0.8]])
    R2 = np.array([[0.8, np.nan], [0.8, 0.6]])
    agg = M.aggregate_seeds([M.summarize(R1, [1.0, 2.0]), M.summarize(R2, [3.0, 4.0])], [0, 1])
    # ACA 0.75 and 0.7; forgetting 0.2 and 0.0; R[1, 0]: 0.7 and 0.8
    assert agg["aca"]["mean"] == pytest.approx(0.725) and agg["aca"]["std"] == pytest.approx(0.05 / math.sqrt(2))
    assert agg["forgetting"]["mean"] == pytest.approx(0.1) and agg["total_time_s"]["mean"] == pytest.approx(5.0)
    assert [m["mean"] for m in agg["per_experience"]["final_accuracy"]] == pytest.approx([0.75, 0.7])
    assert [m["mean"] for m in agg["per_experience"]["accuracy_when_learned"]] == pytest.approx([0.85, 0.7])
    assert "class_incremental_accuracy" not in agg and agg["completed_experiences"] == 2
    with pytest.raises(ValueError, match="one summary per seed"):
        M.aggregate_seeds([M.summarize(R1, [1.0, 2.0])], [0, 1])
