"""Command line: `python -m phn_jax.main --config <name> --workdir <dir>` (a name of experiments/configs/,
e.g. `split_cifar100`, found from any directory; or a config file's path).

Any config field can be overridden, e.g. `--config.strategy.freeze_depth=3 --config.seed=1`;
`--resume` continues a run from its latest checkpoint; `--verify --workdir <dir>` checks every
checkpoint of a run against the checksums written with it, without training. Multi-host jobs (TPU pods, SLURM, several
GPU nodes) start one process per host with `--distributed`, which calls
`jax.distributed.initialize()` (auto-detected on Cloud TPU, SLURM and Open MPI; elsewhere give
`--coordinator_address=host:port --num_processes=N --process_id=i`).

Exit codes: 0 done; 2 a clear error (bad arguments or config, missing data, a run directory in use
or holding another run, no intact checkpoint, a full disk; `--verify`: a damaged checkpoint); 128 +
the signal's number when SIGTERM/SIGINT stopped the run after a checkpoint. A clear error ends the
terminal's output with one paragraph: what orbax, TensorStore or asyncio print after it (tracebacks
of their threads, by the thousand) goes to the run directory's checkpoint_errors.txt, with the error's
own traceback.
"""
from __future__ import annotations

import errno
import os
import re
import sys
import traceback
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from phn_jax import checkpoint, rundir, runtime, train
from phn_jax import config as config_lib
from phn_jax.checkpoint import CheckpointError
from phn_jax.data import DatasetNotFoundError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config: a file, or the name of one of "
                                "experiments/configs/*.py (e.g. split_cifar100).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: config, metrics, plots, log, checkpoints.")
flags.DEFINE_bool("resume", False, "Continue the run in --workdir from its latest checkpoint.")
flags.DEFINE_bool("verify", False, "Check every checkpoint of the run in --workdir against its checksums, without "
                  "training (no --config needed); exit code 2 if one is damaged.")
flags.DEFINE_bool("debug", False, "Show the traceback of an error instead of its one-paragraph message.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host jobs).")
flags.DEFINE_string("coordinator_address", None, "--distributed: process 0's host:port, where not auto-detected.")
flags.DEFINE_integer("num_processes", None, "--distributed: the number of processes, where not auto-detected.")
flags.DEFINE_integer("process_id", None, "--distributed: this process's index, where not auto-detected.")
flags.mark_flags_as_required(["workdir"])


def _flag_error(err: Exception, argv: list[str]) -> str:
    """One paragraph for an error while reading the command line or the config file."""
    text = str(err).replace("\\", "")
    guess = re.search(r'Did you mean "([\w.]+)" instead of "([\w.]+)"', text)
    if guess:
        given = next((a.split("=")[0] for a in argv if re.search(rf"\.{guess[2]}(=|$)", a)), guess[2])
        return (f"unknown config field in {given}: did you mean {guess[1]!r}? The fields are those of the config "
                "file (phn_jax/config.py lists them with their meaning).")
    if isinstance(err, SyntaxError):
        return (f"the config file {err.filename} has a syntax error at line {err.lineno}: {err.msg}. Fix the "
                "file, or pass another --config.")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (f"cannot read the command line or the config file: {lines[-1] if lines else type(err).__name__}. "
            "Check --config <file> (it must exist and define get_config()) and each --config.<field>=<value> "
            "(a value of the field's type).")


def _config_by_name(argv: list[str]) -> list[str]:
    """argv with `--config <name>` (`--config=<name>`) of one of phn_jax's experiment configs as its file
    (`config.config_file`), so that a name works from any directory; a path, or an unknown name, as given."""
    out = list(argv)
    for i, arg in enumerate(out):
        at, value = (i + 1, out[i + 1]) if arg == "--config" and i + 1 < len(out) else (
            (i, arg.split("=", 1)[1]) if arg.startswith("--config=") else (None, None))
        if at is None or os.path.isfile(value.split(":")[0]):
            continue
        try:
            path = str(config_lib.config_file(value.split(":")[0]))
        except FileNotFoundError:
            continue
        out[at] = (path if at == i + 1 else f"--config={path}") + value[len(value.split(":")[0]):]
    return out


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing (the config file is loaded and overridden here), its errors as one paragraph
    and exit code 2; --debug shows the traceback."""
    try:
        rest = FLAGS(_config_by_name(argv))
        path = FLAGS["config"].config_filename if FLAGS["config"].present else None
        if path is not None and not os.path.isfile(path.split(":")[0]):
            config_lib.config_file(path.split(":")[0])  # (its error names the experiment configs)
    except Exception as err:  # flags, the config file's import, overrides of unknown fields or types
        if "--debug" in argv:
            raise
        _exit_with(f"error: {_flag_error(err, argv)}", None)
    if len(rest) > 1:
        _exit_with(f"error: unexpected argument(s) {' '.join(rest[1:])}: every option is --name=value or --flag "
                   "(python -m phn_jax.main --help lists them; config fields are --config.<field>=<value>)", None)
    if not FLAGS.verify and not FLAGS["config"].present:
        _exit_with("error: --config <name or file> is required (experiments/configs/*.py), except with --verify", None)
    return rest


# Errors whose message says what is wrong and what to do: printed without a traceback, exit code 2.
CLEAR_ERRORS = (DatasetNotFoundError, CheckpointError, FileExistsError, rundir.RunLockedError, rundir.WorkdirError,
                train.NonFiniteLossError, train.DeviceMemoryError, ValueError)


def _disk_full(err: BaseException) -> bool:
    """An OSError (or one it was raised from) that says the disk is full."""
    while err is not None:
        if getattr(err, "errno", None) == errno.ENOSPC or "No space left on device" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def _exit_with(message: str, errors: Path | None, err: BaseException | None = None):
    """Ends the process with exit code 2 and `message` as the last thing on the terminal: what the
    process prints after it (orbax's, TensorStore's and asyncio's threads, their coroutines when
    collected at exit) goes to `errors`, after `err`'s traceback (None, or a file that cannot be
    written: os.devnull)."""
    print(message, file=sys.stderr, flush=True)
    f, _, _ = checkpoint.open_errors_file(
        errors, "" if err is None else "== " + message + "\n" + "".join(traceback.format_exception(err)))
    os.dup2(f.fileno(), 2)
    sys.stderr = f
    sys.exit(2)


def _errors_file(workdir: str, config, err: BaseException) -> Path | None:
    """Where what follows a clear error goes: for the failures of orbax (no intact checkpoint, a full
    disk), the run directory's checkpoint_errors.txt, beside what it printed while failing; else
    nowhere (the other errors come before anything that prints, and write nothing)."""
    if not (_disk_full(err) or isinstance(err, checkpoint.NoIntactCheckpointError)):
        return None
    where = rundir.RunDirs.of(workdir, tuple(config.seeds)).workdir
    return where / checkpoint.ERRORS_FILE if where.is_dir() else None


def run_or_exit(config, workdir: str, *, resume: bool, debug: bool = False):
    """`train.train_and_evaluate(config, workdir, resume=resume)`; a stop request or a clear error
    (CLEAR_ERRORS, a full disk) ends the process with its message and exit code (see the module's
    docstring) instead of a traceback, unless `debug`."""
    try:
        return train.train_and_evaluate(config, workdir, resume=resume)
    except rundir.Interrupted as stop:
        where = rundir.RunDirs.of(workdir, tuple(config.seeds)).workdir
        print(f"{stop}: a checkpoint is saved in {where}. Resume with the same command and --resume "
              "(make ... RESUME=1).", file=sys.stderr)
        sys.exit(stop.exit_code)
    except Exception as err:
        if debug or not (_disk_full(err) or isinstance(err, CLEAR_ERRORS)):
            raise
        message = err
        if _disk_full(err):
            message = (f"the disk holding {workdir} is full (No space left on device). Every file of a run is "
                       "written to a temporary file first, so the previous checkpoint and results are intact: "
                       "free some space, then resume with the same command and --resume (make ... RESUME=1).")
        _exit_with(f"error: {message}", _errors_file(workdir, config, err), err)


def verify_or_exit(workdir: str) -> None:
    """`--verify`: one line per checkpoint of the run in `workdir` (intact, with what was checked, or
    why it is damaged), then exit code 0 when every one is intact, else 2 (the paragraph says what
    --resume does with them)."""
    try:
        results = checkpoint.verify_run(rundir.checkpointed_run(workdir)[0])
    except CheckpointError as err:
        _exit_with(f"error: {err}", None)
    for r in results:
        print(f"checkpoint {r.step}: " + (f"DAMAGED: {r.damage}" if r.damage is not None else
                                          f"{'intact' if r.verified else 'readable, not verifiable'} ({r.description})"))
    damaged = [r.step for r in results if r.damage is not None]
    intact = [r.step for r in results if r.damage is None]
    if damaged:
        if intact:
            then = (f"--resume (RESUME=1) resumes from the newest intact one, checkpoint {max(intact)}" +
                    (", and moves the damaged ones after it to checkpoints-damaged/" if max(damaged) > max(intact) else ""))
        else:
            then = "none is intact: restore them from a backup, or start a new --workdir"
        _exit_with(f"error: {len(damaged)} of {len(results)} checkpoints of {workdir} are damaged "
                   f"({', '.join(map(str, damaged))}); {then}.", None)
    unverified = [r.step for r in results if not r.verified]
    print(f"all {len(results)} checkpoints intact" if not unverified else
          f"{len(results) - len(unverified)} of {len(results)} checkpoints verified intact; "
          f"{', '.join(map(str, unverified))} read whole but written before checksums (format 4), so not verifiable")


def main(argv):
    logging.set_verbosity(logging.WARNING)  # orbax's INFO lines would drown the run's own log
    if FLAGS.verify:
        return verify_or_exit(FLAGS.workdir)
    runtime.enable_compilation_cache()
    if FLAGS.distributed:
        runtime.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    run_or_exit(FLAGS.config, FLAGS.workdir, resume=FLAGS.resume, debug=FLAGS.debug)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
