"""The paper's queues (`make paper`, `make transfer`, phn_jax/suite.py): what they hold, where they
write (the Makefile's own directories), what counts as finished, and the queue's order and skips."""
import io
import itertools
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from phn_jax import config as config_lib
from phn_jax import metrics, report, suite
from phn_jax.data import DatasetNotFoundError
from phn_jax.data.streams import TRANSFER_DATASETS

ROOT = Path(__file__).resolve().parents[1]


def _count(queue, **where):
    def value(e, field):
        return e.config.data.name if field == "stream" else e.config.strategy[field]
    return sum(all(value(e, f) == v for f, v in where.items()) for e in queue)


def test_paper_queue_holds_every_configuration_of_the_papers_tables_and_figures():
    queue = suite.paper_queue("runs", (0, 1, 2))
    # Table 2: 2 streams × 11 methods; Tables 4, 5: 5 + 5; Table 1: 2 streams × 6; Figure 4: 20 pairs × 5 k × 2
    assert len(queue) == 22 + 10 + 12 + 200
    assert _count(queue, stream="split_cifar100") == 11 + 10 and _count(queue, stream="split_tinyimagenet") == 11
    assert _count(queue, stream="split_cifar100", name="hn", order="second") == 5
    assert _count(queue, stream="noisy_cifar100", name="lr", replay_coef=1.0) == 3
    assert _count(queue, stream="transfer", name="lr", replay_coef=0.0) == _count(queue, stream="transfer", name="hn") == 100
    pairs = {tuple(e.config.data.transfer_pair) for e in queue if e.config.data.name == "transfer"}
    assert pairs == set(itertools.permutations(TRANSFER_DATASETS, 2))
    assert len({e.workdir for e in queue}) == len(queue)  # one directory each
    assert all(tuple(e.config.seeds) == (0, 1, 2) and e.config.train.epochs == 100 for e in queue)


def test_quick_queue_is_the_same_queue_on_embedded_streams():
    quick = suite.paper_queue("runs/quick", (0, 1, 2), quick=True)
    assert len(quick) == 11 + 10 + 12 + 2 * 5 * 2  # no second Table 2 stream
    assert {e.config.data.name for e in quick} == {"split_digits", "noisy_digits", "clean_digits", "transfer"}
    assert all(e.config.train.epochs == suite.QUICK_EPOCHS and e.config.model.nf == 8 for e in quick)
    assert {tuple(e.config.data.transfer_pair) for e in quick if e.config.data.name == "transfer"} == set(suite.QUICK_PAIRS)
    assert all(e.config.data.image_size == 16 for e in quick if e.config.data.name == "transfer")
    one = suite.transfer_queue("r", (3,), epochs=7, pairs="gtsrb:cifar100")
    assert len(one) == 10 and one[0].workdir == "r/transfer/gtsrb_to_cifar100/lr0_c0_seed3"
    assert (one[0].config.seed, tuple(one[0].config.seeds), one[0].config.train.epochs) == (3, (), 7)
    with pytest.raises(ValueError, match="--pairs"):
        suite.transfer_pairs("gtsrb:imagenet")


def _make_workdir(*variables):
    """The --workdir that `make -n <variables>` gives phn_jax.main."""
    out = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(ROOT), *variables],
                         capture_output=True, text=True, check=True).stdout
    return re.search(r"phn_jax\.main .*--workdir (\S+)", out)[1]


@pytest.mark.parametrize("variables, stream, method", [
    (("cifar100", "STRATEGY=lr", "FREEZE=2", "SEEDS=0,1,2"), "split_cifar100", suite.Method("lr", 2)),
    (("cifar100", "STRATEGY=hn", "FREEZE=0", "ORDER=second", "SEEDS=0,1,2"), "split_cifar100",
     suite.Method("hn", 0, "second")),
    (("tinyimagenet", "STRATEGY=naive", "SEED=1"), "split_tinyimagenet", suite.Method("naive")),
    (("noisy", "CLEAN=1", "STRATEGY=hn", "FREEZE=4", "SEEDS=0,1,2"), "clean_cifar100", suite.Method("hn", 4)),
])
def test_queue_entries_write_where_the_makefile_targets_do(variables, stream, method):
    seeds = (1,) if "SEED=1" in variables else (0, 1, 2)
    assert suite.entry("runs", stream, method, seeds).workdir == _make_workdir(*variables)


def _finish(e: suite.Entry, completed: int | None = None):
    """Each seed's config.json and metrics.json as a finished run (or one after `completed` experiences) of `e`."""
    T = 2
    for c, d in zip(config_lib.seed_configs(e.config), e.dirs.results):
        report.write_config(d, c)
        R = np.full((T, T), np.nan)
        for i in range(T if completed is None else completed):
            R[i, : i + 1] = 0.5
        report.write_metrics(d, metrics.summarize(R, [1.0] * (T if completed is None else completed), {}))


def test_finished_means_every_seed_complete_with_the_entrys_config(tmp_path):
    e = suite.entry(tmp_path, "transfer", suite.Method("hn", 2), (0, 1), pair=("digits", "synthetic"), quick=True)
    assert not suite.finished(e)
    _finish(e)
    assert suite.finished(e)
    e.config.train.progress = False  # not a results field: still the same experiment
    assert suite.finished(e)
    longer = suite.entry(tmp_path, "transfer", suite.Method("hn", 2), (0, 1), pair=("digits", "synthetic"), epochs=5)
    assert longer.workdir == e.workdir and not suite.finished(longer)  # same directory, another config
    _finish(e, completed=1)  # seed 1 stopped after experience 1
    assert not suite.finished(e)


def test_run_queue_skips_finished_entries_and_runs_the_rest_in_order(tmp_path, monkeypatch):
    queue = suite.transfer_queue(tmp_path, (0, 1), quick=True, pairs="digits:synthetic")[:4]
    _finish(queue[1])
    ran = []
    monkeypatch.setattr(suite.cli, "run_or_exit", lambda config, workdir, resume: ran.append((workdir, resume)))
    out = io.StringIO()
    suite.run_queue(queue, out=out)
    assert ran == [(queue[i].workdir, True) for i in (0, 2, 3)]
    assert out.getvalue().startswith("4 configurations: 1 finished, 3 to run\n")
    listing = io.StringIO()
    assert suite.run_queue(queue, list_only=True, out=listing) == [] and len(ran) == 3
    assert f"[2/4] done   {queue[1].dirs.workdir}" in listing.getvalue()


def test_missing_data_stops_the_queue_before_any_run(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no_data"))
    queue = suite.transfer_queue(tmp_path, (0,), pairs="digits:synthetic,gtsrb:cifar100")
    ran = []
    monkeypatch.setattr(suite.cli, "run_or_exit", lambda *a, **k: ran.append(a))
    with pytest.raises(DatasetNotFoundError, match="gtsrb"):
        suite.run_queue(queue, out=io.StringIO())
    assert ran == []
    assert suite.main(["transfer", "--runs", str(tmp_path), "--pairs", "gtsrb:cifar100", "--seeds", "0"]) == 2


def test_a_multi_seed_entry_uses_the_engines_directories(tmp_path):
    """The queue's directories are the engine's: a two-seed entry's seeds land in <name>_seed<s>."""
    e = suite.entry(tmp_path, "split_digits", suite.Method("lr", 3), (4, 5))
    assert [d.name for d in e.dirs.results] == ["lr3_c1_seed4", "lr3_c1_seed5"]
    assert e.dirs.workdir.name == "lr3_c1_seeds4-5"
    assert json.loads(json.dumps(report.results_fields(e.config)))["strategy.replay_coef"] == 1.0


def test_a_run_from_before_a_new_config_field_counts_as_that_fields_default(tmp_path):
    """config.with_defaults: a config.json without a field added later (here strategy.frozen_init and
    data.image_size) is the same experiment as the entry with their defaults, and finished."""
    e = suite.entry(tmp_path, "transfer", suite.Method("hn", 2), (0,), pair=("digits", "synthetic"))
    _finish(e)
    d = e.dirs.results[0]
    old = json.loads((d / report.CONFIG_JSON).read_text())
    del old["strategy"]["frozen_init"], old["data"]["image_size"]
    (d / report.CONFIG_JSON).write_text(json.dumps(old))
    assert suite.finished(e)
    assert config_lib.with_defaults(old)["strategy"]["frozen_init"] == "none"
    old["data"]["image_size"] = 16  # a value it did set is kept, and differs from the entry's
    (d / report.CONFIG_JSON).write_text(json.dumps(old))
    assert not suite.finished(e)
