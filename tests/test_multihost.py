"""A multi-host job for real on one CPU: 2 processes x 2 host devices each, gloo collectives, the
coordinator on localhost, as on a TPU pod or a multi-node GPU job. Its results equal the same run
as one process with 4 devices; a SIGTERM to one process stops both at the same safe point with a
checkpoint, and the job resumes from it to the same results."""
import csv
import json
import signal

import numpy as np
import pytest

import cli

pytestmark = pytest.mark.system

ARGS = ("--config.train.epochs=3", "--config.data.num_experiences=2", "--config.eval.task_inference=False")


def _history(workdir):
    with open(workdir / "train_history.csv") as f:
        return [{k: float(v) for k, v in row.items() if k != "time_s"} for row in csv.DictReader(f)]


def test_two_processes_of_two_devices_equal_one_process_of_four(tmp_path):
    one = cli.run(tmp_path / "one", *ARGS, devices=4)
    assert one.returncode == 0, one.stdout + one.stderr

    job = tmp_path / "two"
    port = cli.free_port()
    procs = [cli.start(job, *ARGS, *cli.distributed(port, i), devices=2) for i in range(2)]
    for p in procs:
        cli.wait_ready(p)
    procs[1].send_signal(signal.SIGTERM)  # preemption of one host: both stop after the same epoch
    (rc0, out0), (rc1, out1) = (cli.finish(p) for p in procs)
    assert rc0 == rc1 == 128 + signal.SIGTERM, out0 + out1
    assert "stopped by SIGTERM in experience 1, after epoch 1 of 3" in out1
    assert "stopped by a signal to another process in experience 1, after epoch 1 of 3" in out0
    assert "Traceback" not in out0 + out1 and "--resume" in out0
    assert not (job / "metrics.json").exists()  # no experience finished yet
    assert (job / "checkpoints" / "1").is_dir()

    port = cli.free_port()
    procs = [cli.start(job, *ARGS, *cli.distributed(port, i), "--resume", devices=2) for i in range(2)]
    for p in procs:
        rc, out = cli.finish(p)
        assert rc == 0, out
    runtime = json.loads((job / "runtime.json").read_text())
    assert (runtime["process_count"], runtime["device_count"], runtime["local_device_count"]) == (2, 4, 2)
    assert runtime["mesh_shape"] == {"data": 4}
    log = (job / "log.txt").read_text()  # process 0's alone
    assert log.count("resumed from the checkpoint in experience 1/2, after epoch 1/3") == 1

    # The same SPMD program on the same 4-device mesh, its all-reduce across processes: the first
    # epochs' losses and accuracies (6 steps) equal the single process's to float32 rounding.
    # Later, Adam amplifies the rounding (docs/design.md §6: entries of g below the noise flip the sign
    # of their step), as between any two device counts: the README gives what to expect.
    h1, h2 = _history(tmp_path / "one"), _history(job)
    assert len(h1) == len(h2) == 2 * 3
    for a, b in zip(h1[:2], h2[:2]):
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-7, err_msg=f"{k} in {a}")
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "one", job))
    assert m1["completed_experiences"] == m2["completed_experiences"] == 2
