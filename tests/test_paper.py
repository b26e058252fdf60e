"""The paper's numbers (`phn_jax/paper_results.csv`) against cells read by hand from the paper's
text, and the report (`make report`) of constructed run directories against hand-computed cells."""
import math

import numpy as np
import pytest

from phn_jax import metrics, paper, report
from phn_jax.config import base_config


@pytest.fixture(scope="module")
def published():
    return paper.load_paper_results()


def test_typed_cells_equal_the_papers_text(published):
    cell = lambda *key, **kw: paper.paper_value(published, *key, **kw)
    # Table 2, read from the paper: HN-3 on CIFAR-100 "58.8 ± 1.0", Naive on TinyImagenet "~ 371 Min",
    # HN-1 TinyImagenet forgetting printed "08.0 ± 1.4"
    assert (cell(2, "split_cifar100", "HN-3", "aca")["mean"], cell(2, "split_cifar100", "HN-3", "aca")["std"]) == (58.8, 1.0)
    assert cell(2, "split_tinyimagenet", "Naive", "time")["mean"] == 371
    assert cell(2, "split_tinyimagenet", "HN-1", "forgetting")["mean"] == 8.0
    assert cell(2, "split_cifar100", "HN-F", "forgetting")["std"] == 1.4
    # Table 1: ResNet-3* (HN-3), noisy stream, e4 "68.1 ± 0.9"; e1 is the same in both streams
    noisy = cell(1, "noisy_cifar100", "HN-3", "learning_accuracy_e4")
    assert (noisy["mean"], noisy["std"], noisy["row"]) == (68.1, 0.9, "ResNet-3* Noisy")
    assert cell(1, "noisy_cifar100", "LR-2", "learning_accuracy_e1")["mean"] == \
        cell(1, "clean_cifar100", "LR-2", "learning_accuracy_e1")["mean"] == 93.2
    # Tables 4 and 5: ResNet-0 second order "2406 Min", ResNet-1 look-ahead learning accuracy printed "66.2.0"
    assert cell(5, "split_cifar100", "HN-F", "time", setting="order=second")["mean"] == 2406
    la = cell(4, "split_cifar100", "HN-1", "learning_accuracy", setting="order=first")
    assert la["mean"] == 66.2 and "66.2.0" in la["note"]
    # Table 6 against an independent computation: |ψ| × 4 bytes in MiB, rounded as printed
    for k, method in enumerate(("HN-F", "HN-1", "HN-2", "HN-3", "HN-4")):
        n = cell(6, "split_cifar100", method, "hypernetwork_params")["mean"]
        assert cell(6, "split_cifar100", method, "memory")["mean"] == round(metrics.hypernetwork_megabytes(int(n)), 2)
    assert cell(6, "split_tinyimagenet", "LR-3", "memory")["mean"] == pytest.approx(400 * 80 * 16 * 16 * 4 / 2**20, abs=0.01)
    assert cell(2, "split_cifar100", "Joint", "aca") is None  # the paper has no Joint row
    assert len({r["table"] for r in published}) == 5 and len(published) == 204


def _run(root, directory, seed, R, times, **strategy):
    """A constructed run directory: its config (Split-CIFAR100 with `strategy`) and its metrics."""
    c = base_config("split_cifar100")
    c.seed = seed
    c.strategy.update(**strategy)
    d = root / directory
    report.write_config(d, c)
    report.write_metrics(d, metrics.summarize(np.array(R, float), times, {"hypernetwork_mb": 3.53}))


NAN = float("nan")


def test_report_of_constructed_runs(tmp_path):
    # HN-3 (first order), two seeds: ACA 0.60 and 0.56 (mean 58.0, std 2.83); times 60 + 60 s and 90 + 90 s
    _run(tmp_path, "hn3_first_seed0", 0, [[0.7, NAN], [0.6, 0.6]], [60, 60], name="hn", freeze_depth=3)
    _run(tmp_path, "hn3_first_seed1", 1, [[0.6, NAN], [0.52, 0.6]], [90, 90], name="hn", freeze_depth=3)
    # the same with second order (Table 5), and Naive (one seed)
    _run(tmp_path, "x/hn3_second_seed0", 0, [[0.5, NAN], [0.5, 0.5]], [300, 300], name="hn", freeze_depth=3,
         order="second")
    _run(tmp_path, "naive_seed0", 0, [[0.9, NAN], [0.3, 0.8]], [30, 30], name="naive", freeze_depth=0)
    groups = paper.group_runs(paper.find_runs(tmp_path))
    assert [(g["method"], g["setting"], g["seeds"]) for g in groups] == [
        ("HN-3", "order=first", [0, 1]), ("HN-3", "order=second", [0]), ("Naive", "", [0])]
    md = paper.report_markdown(tmp_path)
    std = 100 * math.sqrt(((0.60 - 0.58) ** 2 + (0.56 - 0.58) ** 2) / 1)  # sample std, n − 1 = 1
    assert f"| HN-3 | 58.0 ± {std:.1f} (n=2) | 58.8 ± 1.0 | -0.8 |" in md
    # forgetting: 0.1 and 0.08 → 9.0 ± 1.4 against 7.4 ± 0.9; time: 2 and 3 minutes
    assert "| 9.0 ± 1.4 (n=2) | 7.4 ± 0.9 | +1.6 | 2.5 ± 0.7 (n=2) | 243.0 | -240.5 |" in md
    assert "| Naive | 55.0 (n=1) | 33.7 ± 0.7 | +21.3 | 60.0 (n=1) | 58.9 ± 2.1 | +1.1 |" in md
    assert "| HN-3 | second | 50.0 (n=1) | 56.6 | -6.6 |" in md  # Table 5's row
    assert "Table 2: Split-TinyImageNet" not in md and "Table 1" not in md  # no runs for those
    assert "| split_cifar100 | HN-3 order=first | 0, 1 | 2 |" in md
    # Table 6: our hypernetwork's MB beside the paper's
    assert "| Split-CIFAR100 | HN-3 | 3.53 (n=2) | 3.53 | +0.00 |" in md
    out = paper.main([str(tmp_path)])
    assert out.read_text() == md


def test_configurations_sharing_a_name_are_told_apart(tmp_path):
    _run(tmp_path, "a", 0, [[0.7, NAN], [0.6, 0.6]], [60, 60], name="hn", freeze_depth=3)
    _run(tmp_path, "b", 0, [[0.7, NAN], [0.6, 0.6]], [60, 60], name="hn", freeze_depth=3, beta=0.1)
    labels = [g["label"] for g in paper.group_runs(paper.find_runs(tmp_path))]
    assert labels == ["HN-3 order=first (strategy.beta=0.1)", "HN-3 order=first (strategy.beta=0.5)"]
