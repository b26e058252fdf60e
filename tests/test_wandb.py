"""The optional Weights & Biases logger (`--config.log.wandb=<project>`, `report.WandbWriter`) in W&B's
offline mode: its run files, read back here with a reader of their record format, hold the scalars of
train_history.csv and the accuracies. make test-system (CI) runs it with the extra installed
(`make install WANDB=1`; PHN_REQUIRE_WANDB=1 turns a missing wandb into a failure)."""
import csv
import os

import numpy as np
import pytest

from phn_jax import train
from phn_jax.config import ConfigError, check_config
from runs import tiny_config

pytestmark = pytest.mark.system


def _wandb():
    if os.environ.get("PHN_REQUIRE_WANDB"):
        import wandb  # noqa: F401  (fails the test where it must run)
        return
    pytest.importorskip("wandb", reason="the optional extra: make install WANDB=1")


def _records(path):
    """The payloads of a .wandb file: a ':W&B' header (7 bytes), then LevelDB's log format: 32 KiB
    blocks of records, each a 7-byte header (CRC-32C, length uint16 little-endian, type: 1 full,
    2 first, 3 middle, 4 last piece) and its bytes; a block's last < 7 bytes are padding."""
    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, pieces = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        payload, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            yield payload
        elif kind in (2, 3):
            pieces = (b"" if kind == 2 else pieces) + payload
        elif kind == 4:
            yield pieces + payload


def _history(run_dir) -> dict[int, dict]:
    """{step: {tag: value}} of every offline W&B run under run_dir/wandb."""
    import json

    from wandb.proto import wandb_internal_pb2 as pb

    out = {}
    files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert files, f"no offline W&B run in {run_dir}"
    for f in files:
        for payload in _records(f):
            record = pb.Record.FromString(payload)
            if record.WhichOneof("record_type") == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                out.setdefault(int(items.pop("_step")), {}).update(
                    {k: v for k, v in items.items() if not k.startswith("_")})
    return out


def test_wandb_offline_run_files_hold_the_history_and_accuracies(tmp_path, monkeypatch):
    _wandb()
    for var, sub in (("WANDB_MODE", None), ("WANDB_DIR", "w"), ("WANDB_CACHE_DIR", "c"), ("WANDB_CONFIG_DIR", "g"),
                     ("WANDB_DATA_DIR", "d")):
        monkeypatch.setenv(var, "offline" if sub is None else str(tmp_path / sub))
    monkeypatch.setenv("WANDB_SILENT", "true")
    workdir = tmp_path / "run"
    summary = train.train_and_evaluate(tiny_config(**{"train.epochs": 3, "log.wandb": "phn-test"}), workdir)
    logged = _history(workdir)
    with open(workdir / "train_history.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(logged) == list(range(1, 10))  # step = epochs completed: 3 experiences × 3 epochs
    for step, row in enumerate(rows, 1):
        for column, value in row.items():
            if column not in ("experience", "epoch"):
                tag = "train/" + column.removeprefix("train_")
                assert logged[step][tag] == pytest.approx(float(value), rel=1e-6), (step, tag)
    R = np.array(summary["accuracy_matrix"], float)
    for t in range(3):
        for j in range(t + 1):
            assert logged[3 * (t + 1)][f"test/accuracy/experience_{j}"] == pytest.approx(R[t, j])
    assert logged[9]["test/aca"] == pytest.approx(summary["aca"])


def test_wandb_not_installed_is_a_config_error(monkeypatch):
    import importlib.util
    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'phn_jax\[wandb\]'"):
        check_config(tiny_config(**{"log.wandb": "p"}))
