"""The paper's numbers (`phn_jax/paper/paper_results.csv`) against cells read by hand from the paper's
text, and the report (`make report`) of constructed run directories against hand-computed cells."""
import math
from pathlib import Path

import numpy as np
import pytest

from phn_jax import metrics, paper, report
from phn_jax.progress import HISTORY_COLUMNS
from phn_jax.config import base_config, load_config

ROOT = Path(__file__).parent.parent


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
    assert len({r["table"] for r in published}) == 6 and len(published) == 206
    # von Oswald et al.'s Table 1 (table "vo1"), HNET in CL1: PermutedMNIST-10 "97.57 ± 0.02", SplitMNIST "99.79 ± 0.01"
    assert [(cell("vo1", s, "HNET", "aca")["mean"], cell("vo1", s, "HNET", "aca")["std"])
            for s in ("permuted_mnist", "split_mnist")] == [(97.57, 0.02), (99.79, 0.01)]


def test_the_cells_tables_4_and_5_print_differently_for_the_same_runs_are_noted(published):
    """Tables 4 (look-ahead) and 5 (first order) both print the first-order look-ahead runs; three of
    their cells differ, and each says so with the other table's value."""
    first = {(t, r["method"], r["metric"]): r for r in published for t in (4, 5)
             if r["table"] == t and r["setting"] == "order=first" and r["metric"] != "time"}
    differ = sorted((m, metric) for (t, m, metric), r in first.items()
                    if t == 4 and r["mean"] != first[(5, m, metric)]["mean"])
    assert differ == [("HN-1", "aca"), ("HN-3", "learning_accuracy"), ("HN-F", "aca")]
    for m, metric in differ:
        four, five = first[(4, m, metric)], first[(5, m, metric)]
        assert f"Table 5 prints {five['mean']}" in four["note"] and f"Table 4 prints {four['mean']}" in five["note"]


def _run(root, directory, seed, R, times, cos=(), **strategy):
    """A constructed run directory: its config (Split-CIFAR100 with `strategy`), its metrics, and a
    history with one epoch in experience 1 and the epochs of experience 2 with cos(g1, g2) = `cos`."""
    c = base_config("split_cifar100")
    c.seed = seed
    c.strategy.update(**strategy)
    d = root / directory
    report.write_config(d, c)
    report.write_metrics(d, metrics.summarize(np.array(R, float), times, {"hypernetwork_mb": 3.53}))
    rows = [dict.fromkeys(HISTORY_COLUMNS, 0.5) | {"experience": t, "epoch": e, "cos_g1_g2": v}
            for t, e, v in [(0, 0, 0.0)] + [(1, e, v) for e, v in enumerate(cos)]]
    report.write_table(d / "train_history.csv", HISTORY_COLUMNS, rows)


NAN = float("nan")


def test_report_of_constructed_runs(tmp_path):
    # HN-3 (first order), two seeds: ACA 0.60 and 0.56 (mean 58.0, std 2.83); times 60 + 60 s and 90 + 90 s
    _run(tmp_path, "hn3_first_seed0", 0, [[0.7, NAN], [0.6, 0.6]], [60, 60], (-0.2, -0.1, 0.3), name="hn",
         freeze_depth=3)
    _run(tmp_path, "hn3_first_seed1", 1, [[0.6, NAN], [0.52, 0.6]], [90, 90], (-0.4, 0.1), name="hn", freeze_depth=3)
    # the same with second order (Table 5), and Naive (one seed)
    _run(tmp_path, "x/hn3_second_seed0", 0, [[0.5, NAN], [0.5, 0.5]], [300, 300], name="hn", freeze_depth=3,
         order="second")
    _run(tmp_path, "naive_seed0", 0, [[0.9, NAN], [0.3, 0.8]], [30, 30], name="naive", freeze_depth=0)
    groups = paper.group_runs(paper.find_runs(tmp_path))
    assert [(g.method, g.setting, g.seeds) for g in groups] == [
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
    # the figures' data: Figure 12, cos(g1, g2) of the look-ahead epochs, mean over seeds as far as both go
    cos = paper.cos_curves(groups, "split_cifar100")
    assert list(cos) == ["HN-3 order=first"]  # the second-order run has no look-ahead epochs in its history
    np.testing.assert_allclose(cos["HN-3 order=first"], [-0.3, 0.0])
    # Figure 8: R[i, j] of the first experiences, mean over seeds
    acc = paper.accuracy_curves(groups, "split_cifar100")
    np.testing.assert_allclose(acc["HN-3 order=first"], [[0.65, np.nan], [0.56, 0.6]])
    out = paper.main([str(tmp_path)])
    text = out.read_text()
    assert text.startswith(md) and "![Figure 12, Split-CIFAR100](figure12_split_cifar100.png)" in text
    for name in ("figure8_split_cifar100.png", "figure12_split_cifar100.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_configurations_sharing_a_name_are_told_apart(tmp_path):
    _run(tmp_path, "a", 0, [[0.7, NAN], [0.6, 0.6]], [60, 60], name="hn", freeze_depth=3)
    _run(tmp_path, "b", 0, [[0.7, NAN], [0.6, 0.6]], [60, 60], name="hn", freeze_depth=3, beta=0.1)
    labels = [g.label for g in paper.group_runs(paper.find_runs(tmp_path))]
    assert labels == ["HN-3 order=first (strategy.beta=0.1)", "HN-3 order=first (strategy.beta=0.5)"]


def test_a_seed_run_twice_counts_once_with_its_newest_run(tmp_path):
    _run(tmp_path, "old", 0, [[0.2, NAN], [0.2, 0.2]], [60, 60], name="hn", freeze_depth=3)
    _run(tmp_path, "new", 0, [[0.7, NAN], [0.6, 0.6]], [60, 60], name="hn", freeze_depth=3)
    (g,) = paper.group_runs(paper.find_runs(tmp_path))
    assert g.seeds == [0] and g.dirs == [tmp_path / "new"] and g.repeated == [tmp_path / "old"]
    assert g.aggregate["aca"]["mean"] == pytest.approx(0.6)
    assert f"not counted: {tmp_path / 'old'}" in paper.report_markdown(tmp_path)


def _stream_run(root, directory, seed, R, data, **strategy):
    """A constructed run of a stream other than Split-CIFAR100 (`data`: its data config fields)."""
    c = base_config(data.pop("name"))
    c.seed = seed
    c.data.update(data)
    c.strategy.update(**strategy)
    report.write_config(root / directory, c)
    report.write_metrics(root / directory, metrics.summarize(np.array(R, float), [60.0] * len(R), {}))


def test_transfer_pairs_make_figure_4(tmp_path):
    pair = dict(name="transfer", transfer_pair=("gtsrb", "cifar100"))
    for seed, acc in ((0, 0.8), (1, 0.6)):  # LR-2 (c = 0): 70.0 ± 14.1 on B
        _stream_run(tmp_path, f"lr2_c0_seed{seed}", seed, [[0.9, NAN], [0.9, acc]], dict(pair), name="lr",
                    freeze_depth=2, replay_coef=0.0)
    _stream_run(tmp_path, "hn0_seed0", 0, [[0.9, NAN], [0.9, 0.5]], dict(pair), name="hn", freeze_depth=0)
    _stream_run(tmp_path, "other/hn0_seed0", 0, [[0.9, NAN], [0.9, 0.4]],
                dict(name="transfer", transfer_pair=("cifar10", "cifar100")), name="hn", freeze_depth=0)
    _stream_run(tmp_path, "lr2_c1_seed0", 0, [[0.9, NAN], [0.9, 0.1]], dict(pair), name="lr", freeze_depth=2)
    results = paper.transfer_results(paper.group_runs(paper.find_runs(tmp_path)))
    assert list(results) == [("cifar10", "cifar100"), ("gtsrb", "cifar100")]
    lr = results[("gtsrb", "cifar100")]["LR (c=0)"]  # (LR with c = 1 is not Figure 4's)
    assert lr[2]["mean"] == pytest.approx(70.0) and lr[2]["std"] == pytest.approx(100 * 0.2 / math.sqrt(2))
    assert lr[2]["n"] == 2 and lr[0] is lr[1] is lr[3] is lr[4] is None
    assert results[("gtsrb", "cifar100")]["HN"][0]["mean"] == pytest.approx(50.0)
    md = paper.report_markdown(tmp_path, figures_dir=tmp_path)
    assert "| gtsrb → cifar100 | LR (c=0) | — | — | 70.0 ± 14.1 (n=2) | — | — |" in md
    assert "| cifar10 → cifar100 | HN | 40.0 (n=1) | — | — | — | — |" in md
    assert "![Figure 4, transfer pairs](figure4_transfer.png)" in md
    assert (tmp_path / "figure4_transfer.png").read_bytes()[:4] == b"\x89PNG"
    assert "Table 2" not in md and "figure8_transfer" not in md  # transfer pairs are not a class-split stream


def test_quick_streams_fill_tables_1_2_4_and_figures_7_11_without_paper_columns(tmp_path):
    R2 = lambda a: [[a, NAN], [a - 0.1, a]]
    # Split-Digits: HN-3 with and without the look-ahead, LR-3 (c = 1)
    _stream_run(tmp_path, "d/hn3_first_seed0", 0, R2(0.9), dict(name="split_digits"), name="hn", freeze_depth=3)
    _stream_run(tmp_path, "d/hn3_none_seed0", 0, R2(0.7), dict(name="split_digits"), name="hn", freeze_depth=3,
                order="none")
    _stream_run(tmp_path, "d/lr3_c1_seed0", 0, R2(0.8), dict(name="split_digits"), name="lr", freeze_depth=3)
    # noisy and clean digits: LR-3 forgets more on the noisy stream
    _stream_run(tmp_path, "n/lr3", 0, [[0.9, NAN], [0.5, 0.8]], dict(name="noisy_digits"), name="lr", freeze_depth=3)
    _stream_run(tmp_path, "n/hn3", 0, [[0.9, NAN], [0.9, 0.7]], dict(name="noisy_digits"), name="hn", freeze_depth=3)
    _stream_run(tmp_path, "c/lr3", 0, [[0.9, NAN], [0.8, 0.8]], dict(name="clean_digits"), name="lr", freeze_depth=3)
    groups = paper.group_runs(paper.find_runs(tmp_path))
    md = paper.report_markdown(tmp_path, figures_dir=tmp_path)
    assert "## Table 2: Split-Digits\n\n| method | ours ACA (%) | ours forgetting (%) | ours time (min) |" in md
    assert "| HN-3 | 85.0 (n=1) | 10.0 (n=1) | 2.0 (n=1) |" in md
    assert "## Table 4: look-ahead vs none (Split-Digits)" in md and "| HN-3 | none | 65.0 (n=1) | 70.0 (n=1) |" in md
    assert "Table 5" not in md  # no second-order run
    assert "| Digits 4×2, noisy | LR-3 | 90.0 (n=1) | 80.0 (n=1) | — | — |" in md
    np.testing.assert_allclose(paper.first_experience_curves(groups, "noisy_digits")["LR-3"], [0.9, 0.5])
    np.testing.assert_allclose(paper.first_experience_curves(groups, "clean_digits")["LR-3"], [0.9, 0.8])
    (curves,) = paper.lookahead_curves(groups, "split_digits").values()
    np.testing.assert_allclose(curves["none"], [[0.7, np.nan], [0.6, 0.7]])
    for name in ("figure7_noisy_digits.png", "figure8_split_digits.png", "figure11_split_digits.png"):
        assert f"]({name})" in md and (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert list(paper.accuracy_curves(groups, "split_digits")) == ["HN-3 order=first", "HN-3 order=none",
                                                                     "LR-3 c=1"]
    page = paper.html_page(md, tmp_path)
    assert page.count("<table>") == md.count("\n## Table") + md.count("\n## Every") + md.count("\n## Figure 4")
    assert page.count('src="data:image/png;base64,') == md.count("![") and ".png\"" not in page


def test_von_oswald_table_of_mlp_runs(tmp_path):
    """HN runs with the MLP target are von Oswald et al.'s "HNET", reported beside their Table 1: CL1
    (our ACA), our learning accuracy and forgetting, and ours with the task inferred (class-incremental
    after the last task and during, task inference)."""
    for seed, acc in ((0, 0.97), (1, 0.99)):  # ACA (0.98 + acc) / 2: 97.5 and 98.5, mean 98.0 ± 0.71
        c = load_config(ROOT / "experiments" / "configs" / "permuted_mnist.py")  # their settings: β 0.1, lr 1e-4, ...
        c.seed = seed
        report.write_config(tmp_path / f"s{seed}", c)
        report.write_metrics(tmp_path / f"s{seed}", metrics.summarize(
            np.array([[0.99, NAN], [0.98, acc]]), [60.0, 60.0], {}, class_incremental=np.array([[0.99, NAN], [0.9, 0.8]]),
            task_inference=np.array([[1.0, NAN], [0.95, 0.85]])))
    groups = paper.group_runs(paper.find_runs(tmp_path))
    assert [(g.method, g.setting) for g in groups] == [("HNET", "order=first")]
    # an MLP run at Hemati et al.'s settings instead of von Oswald et al.'s: not in their table, named under it
    other = base_config("permuted_mnist")
    other.model.arch, other.strategy.freeze_depth = "mlp", 0
    report.write_config(tmp_path / "other", other)
    report.write_metrics(tmp_path / "other", metrics.summarize(np.array([[0.5, NAN], [0.5, 0.5]]), [60.0, 60.0], {}))
    text = paper.report_markdown(tmp_path)
    assert "strategy.beta=0.5 (the paper's 0.1)" in text and "train.iterations=0 (the paper's 5000)" in text
    assert "## von Oswald et al. (ICLR 2020), Table 1" in text
    # learning accuracy (0.99 + acc) / 2: 98.0 and 99.0; forgetting 0.99 − 0.98 = 1.0 in both seeds;
    # HNET+ENT after the last task (0.9 + 0.8) / 2, during (each right after it was learned) (0.99 + 0.8) / 2
    # (CL2 from a one-head run: none here)
    assert ("| PermutedMNIST-10 | HNET | 98.00 ± 0.71 (n=2) | 97.57 ± 0.02 | +0.43 | — | — | 85.00 ± 0.00 "
            "| 89.50 ± 0.00 | 90.00 ± 0.00 | heads: n=2 |") in text
    # von Oswald et al.'s replay systems: HNET+TIR (a head per task: CL3, and its CL1) and HNET+R with one
    # head (CL2: the class within the task, no task inferred) and with a head per task (CL3)
    runs = {"tir": (3, dict(class_incremental=[[0.99, NAN], [0.95, 0.7]], task_inference=[[1.0, NAN], [0.96, 0.72]],
                            domain_incremental=[[0.99, NAN], [0.97, 0.9]])),
            "replay2": (2, dict(domain_incremental=[[0.99, NAN], [0.9, 0.98]])),
            "replay3": (3, dict(class_incremental=[[0.99, NAN], [0.6, 0.98]], task_inference=[[1.0, NAN], [0.6, 0.99]],
                                domain_incremental=[[0.99, NAN], [0.8, 0.98]]))}
    for name, (scenario, without) in runs.items():
        c = load_config(ROOT / "experiments" / "configs" / "permuted_mnist.py")
        c.strategy.update(name=name[:-1] if name[-1].isdigit() else name, scenario=scenario)
        report.write_config(tmp_path / name, c)
        report.write_metrics(tmp_path / name, metrics.summarize(np.array([[0.99, NAN], [0.98, 0.98]]), [60.0] * 2, {},
                                                                **{k: np.array(v) for k, v in without.items()}))
    text = paper.report_markdown(tmp_path)
    assert ("| PermutedMNIST-10 | HNET+TIR | 98.00 (n=1) | 97.57 ± 0.02 | +0.43 | — | — | 82.50 | 84.50 | 84.00 "
            "| heads: n=1 |") in text
    assert ("| PermutedMNIST-10 | HNET+R | 98.00 (n=1) | — | — | 94.00 | 98.50 | 79.00 | 98.50 | 79.50 "
            "| heads: n=1; one head: n=1 |") in text


def test_a_paper_cell_takes_only_runs_at_the_papers_settings(tmp_path):
    """HN-3 on Split-CIFAR100 at β = 0.5 (the paper's) and, newer and with more seeds, at β = 0.1: Table 2's
    row is β = 0.5's, and the β = 0.1 configuration is named under it with the setting that keeps it
    out. On TinyImageNet LR-2 at buffers 200 and 400: the paper's 400. On a stream of our own (no
    published numbers) two configurations qualify: the one with more seeds fills the row, whose name
    says its β, and the other is named."""
    _run(tmp_path, "paper", 0, [[0.7, NAN], [0.6, 0.6]], [60, 60], name="hn", freeze_depth=3)
    for seed in (0, 1):
        _run(tmp_path, f"beta01_{seed}", seed, [[0.9, NAN], [0.9, 0.9]], [60, 60], name="hn", freeze_depth=3, beta=0.1)
    for buffer, acc in ((200, 0.3), (400, 0.5)):
        c = load_config(ROOT / "experiments" / "configs" / "split_tinyimagenet.py")
        c.strategy.update(name="lr", freeze_depth=2, buffer_size=buffer)
        report.write_config(tmp_path / f"lr2_{buffer}", c)
        report.write_metrics(tmp_path / f"lr2_{buffer}", metrics.summarize(np.array([[acc, NAN], [acc, acc]]),
                                                                            [60, 60], {}))
    for d, seeds, beta in (("d/a", (0,), 0.5), ("d/b", (0, 1), 0.1)):
        for seed in seeds:
            _stream_run(tmp_path, f"{d}{seed}", seed, [[0.8, NAN], [0.8, 0.8]], dict(name="split_digits"),
                        name="hn", freeze_depth=3, beta=beta)
    md = paper.report_markdown(tmp_path)
    assert "| HN-3 | 60.0 (n=1) | 58.8 ± 1.0 | +1.2 |" in md  # β = 0.5's ACA, not β = 0.1's 90.0
    assert ("- HN-3, Split-CIFAR100: not in the table: HN-3 order=first (strategy.beta=0.1) (seeds 0, 1), not at the "
            "paper's settings: strategy.beta=0.1 (the paper's 0.5)") in md
    assert "| LR-2 | 50.0 (n=1) |" in md and "strategy.buffer_size=200 (the paper's 400)" in md
    assert "| HN-3 (strategy.beta=0.1) | 80.0 ± 0.0 (n=2) |" in md
    assert ("- HN-3, Split-Digits: not in the table: HN-3 order=first (strategy.beta=0.5) (seeds 0), also qualifies; "
            "the row shows HN-3 (strategy.beta=0.1) (the most seeds, then the newest)") in md


def test_an_unfinished_run_fills_no_cell(tmp_path):
    """A PermutedMNIST-10 run stopped after 1 of its 10 experiences beside a finished SplitMNIST one:
    von Oswald et al.'s table has the SplitMNIST row only, the PermutedMNIST run is named under it as
    unfinished, and the list of configurations says so."""
    for stream, done in (("split_mnist", 5), ("permuted_mnist", 1)):
        c = load_config(ROOT / "experiments" / "configs" / f"{stream}.py")
        T = c.data.num_experiences
        R = np.full((T, T), NAN)
        for i in range(done):
            R[i, :i + 1] = 0.93
        report.write_config(tmp_path / stream, c)
        report.write_metrics(tmp_path / stream, metrics.summarize(R, [60.0] * done, {}))
    md = paper.report_markdown(tmp_path)
    assert "| SplitMNIST | HNET | 93.00 (n=1) | 99.79 ± 0.01 |" in md and "| PermutedMNIST-10 | HNET |" not in md
    assert ("- HNET, PermutedMNIST-10: not in the table: HNET order=first (seeds 0), unfinished: 1 of 10 "
            "experiences") in md
    assert "| permuted_mnist | HNET order=first | 0 | 1 (unfinished) |" in md
