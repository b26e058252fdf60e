"""Command line: `python -m phn_jax.main --config experiments/configs/<name>.py --workdir <dir>`.

Any config field can be overridden, e.g. `--config.strategy.freeze_depth=3 --config.seed=1`;
`--resume` continues a run from its latest checkpoint. Multi-host jobs (TPU pods, SLURM, several
GPU nodes) start one process per host with `--distributed`, which calls
`jax.distributed.initialize()` (auto-detected on Cloud TPU, SLURM and Open MPI; elsewhere give
`--coordinator_address=host:port --num_processes=N --process_id=i`).

Exit codes: 0 done; 2 a clear error (bad config, missing data, a run directory in use or holding
another run); 128 + the signal's number when SIGTERM/SIGINT stopped the run after a checkpoint.
"""
from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from phn_jax import rundir, runtime, train
from phn_jax.checkpoint import CheckpointError
from phn_jax.data import DatasetNotFoundError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: config, metrics, plots, log, checkpoints.")
flags.DEFINE_bool("resume", False, "Continue the run in --workdir from its latest checkpoint.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host jobs).")
flags.DEFINE_string("coordinator_address", None, "--distributed: process 0's host:port, where not auto-detected.")
flags.DEFINE_integer("num_processes", None, "--distributed: the number of processes, where not auto-detected.")
flags.DEFINE_integer("process_id", None, "--distributed: this process's index, where not auto-detected.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax's INFO lines would drown the run's own log
    runtime.enable_compilation_cache()
    if FLAGS.distributed:
        runtime.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    try:
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir, resume=FLAGS.resume)
    except rundir.Interrupted as stop:
        print(f"{stop}: a checkpoint is saved in {FLAGS.workdir}. Resume with the same command and --resume "
              "(make ... RESUME=1).", file=sys.stderr)
        sys.exit(stop.exit_code)
    except (DatasetNotFoundError, CheckpointError, FileExistsError, rundir.RunLockedError, rundir.WorkdirError,
            train.NonFiniteLossError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
