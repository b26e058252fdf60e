"""Every bad input gets one paragraph (what is wrong, what to do), exit code 2, no traceback, and
nothing written: `python -m phn_jax.main` on the smoke config with one bad value each (system
tests: a process each; every case stops before anything is compiled, in seconds); the workdir's
content hash is unchanged. The rules in-process too (make test)."""
import hashlib
import subprocess
import sys

import pytest
from runs import tiny_config

import cli
from phn_jax import train
from phn_jax.config import ConfigError

# (override, words the message must contain)
BAD = [
    ("--config.data.name=cifar", "data.name='cifar' must be one of split_cifar100"),
    ("--config.strategy.name=icarl", "strategy.name='icarl' must be one of hn, naive"),
    ("--config.strategy.order=third", "strategy.order='third' must be one of none, first, second"),
    ("--config.strategy.combine=max", "strategy.combine='max' must be one of sum, mean"),
    ("--config.strategy.lookahead_step=adam", "strategy.lookahead_step='adam' must be one of sgd, optimizer, hypercl"),
    ("--config.strategy.reg_reduce=max", "strategy.reg_reduce='max' must be one of mean, sum"),
    ("--config.optim.adam_eps=eps", "optim.adam_eps='eps' must be one of v_hat, v"),
    ("--config.model.norm=layernorm", "model.norm='layernorm' must be one of reference, batchnorm"),
    ("--config.hnet.kind=lora", "hnet.kind='lora' must be one of heads, chunked"),
    ("--config.strategy.freeze_depth=5", "strategy.freeze_depth=5 must be an integer from 0 to 4"),
    ("--config.strategy.freeze_depth=-1", "strategy.freeze_depth=-1 must be an integer from 0 to 4"),
    ("--config.strategy.freeze_depth=2.5", "--config.strategy.freeze_depth=2.5: invalid literal for int()"),
    ("--config.train.epochs=0", "train.epochs=0 must be an integer ≥ 1"),
    ("--config.train.epochs=-1", "train.epochs=-1 must be an integer ≥ 1"),
    ("--config.train.iterations=-1", "train.iterations=-1 must be an integer ≥ 0"),
    ("--config.train.iterations=50", "train.epochs=5 and train.iterations=50 both give the length of an experience: "
     "set train.epochs=0"),
    ("--config.train.batch_size=0", "train.batch_size=0 must be an integer ≥ 1"),
    ("--config.train.eval_batch_size=0", "train.eval_batch_size=0 must be an integer ≥ 1"),
    ("--config.train.batch_size=100", "train.batch_size=100 is larger than the smallest experience"),
    ("--config.optim.lr=-0.001", "optim.lr=-0.001 must be a finite number > 0"),
    ("--config.optim.lr=nan", "optim.lr=nan must be a finite number > 0"),
    ("--config.strategy.beta=-1", "strategy.beta=-1.0 must be a finite number ≥ 0"),
    ("--config.model.nf=0", "model.nf=0 must be an integer ≥ 1"),
    ("--config.model.num_classes=1", "model.num_classes=1 is smaller than the stream's 2 classes per experience"),
    ("--config.checkpoint.max_to_keep=0", "checkpoint.max_to_keep=0 must be an integer ≥ 1"),
    ("--config.checkpoint.every_minutes=0", "checkpoint.every_minutes=0.0 must be a finite number > 0"),
    ("--config.seeds=0,0", "seeds=(0, 0) must be distinct integers ≥ 0"),
    ("--config.train.epoch=3", "unknown config field in --config.train.epoch: did you mean 'epochs'?"),
]


def _hash(directory):
    h = hashlib.sha256()
    for p in sorted(directory.rglob("*")):
        h.update(str(p.relative_to(directory)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _assert_refused(done, words, workdir, before):
    assert done.returncode == 2, done.stdout + done.stderr
    assert words in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") <= 2, done.stderr
    assert _hash(workdir) == before


@pytest.mark.system
@pytest.mark.parametrize("override,words", BAD, ids=[b[0].split("--config.")[1] for b in BAD])
def test_bad_config_value_is_refused_before_anything_is_written(override, words, tmp_path):
    (tmp_path / "keep.txt").write_text("a previous result")
    before = _hash(tmp_path)
    _assert_refused(cli.run(tmp_path, override, timeout=120), words, tmp_path, before)


@pytest.mark.system
def test_config_file_missing_or_broken(tmp_path):
    before = _hash(tmp_path)
    done = subprocess.run([sys.executable, "-m", "phn_jax.main", "--config", "experiments/configs/nope.py",
                           "--workdir", str(tmp_path)], cwd=cli.ROOT, capture_output=True, text=True)
    _assert_refused(done, "no config file experiments/configs/nope.py", tmp_path, before)
    broken = tmp_path.parent / "broken.py"
    broken.write_text("def get_config(:\n    pass\n")
    done = subprocess.run([sys.executable, "-m", "phn_jax.main", "--config", str(broken), "--workdir",
                           str(tmp_path)], cwd=cli.ROOT, capture_output=True, text=True)
    _assert_refused(done, f"the config file {broken} has a syntax error at line 1", tmp_path, before)


@pytest.mark.system
def test_debug_shows_the_traceback(tmp_path):
    done = cli.run(tmp_path, "--config.train.epochs=0", "--debug", timeout=120)
    assert done.returncode != 0 and "Traceback" in done.stderr and "ConfigError" in done.stderr


def test_rules_are_checked_in_process_too(tmp_path):
    with pytest.raises(ConfigError, match="train.epochs=0 .*; optim.lr=-1.0 "):
        train.train_and_evaluate(tiny_config(**{"train.epochs": 0, "optim.lr": -1.0}), tmp_path)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())
    for bad in ((0, 0), (-1,), ("0,1",)):
        with pytest.raises(ConfigError, match="seeds="):
            train.train_and_evaluate(tiny_config(seeds=bad), tmp_path)


@pytest.mark.system
def test_config_that_does_not_import_and_batches_that_do_not_fit_the_devices(tmp_path):
    before = _hash(tmp_path)
    broken = tmp_path.parent / "imports_nothing.py"
    broken.write_text("import a_module_that_does_not_exist\n")
    done = subprocess.run([sys.executable, "-m", "phn_jax.main", "--config", str(broken), "--workdir", str(tmp_path)],
                          cwd=cli.ROOT, capture_output=True, text=True)
    _assert_refused(done, "No module named 'a_module_that_does_not_exist'", tmp_path, before)
    done = cli.run(tmp_path, "--config.train.batch_size=18", devices=4, timeout=120)
    _assert_refused(done, "train.batch_size=18 is not a multiple of the 4 devices", tmp_path, before)


@pytest.mark.system
def test_a_stray_argument_or_no_config(tmp_path):
    """A word without --name= (a typo such as `--resume 1`) exits 2 in one line like every other bad input,
    not 1 after absl's usage; so does a run without --config."""
    before = _hash(tmp_path)
    _assert_refused(cli.run(tmp_path, "--resume", "1", timeout=120), "error: unexpected argument(s) 1: every option "
                    "is --name=value or --flag", tmp_path, before)
    done = subprocess.run([sys.executable, "-m", "phn_jax.main", "--workdir", str(tmp_path)], cwd=cli.ROOT,
                          capture_output=True, text=True)
    _assert_refused(done, "--config <name or file> is required", tmp_path, before)


@pytest.mark.system
def test_workdir_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("a previous result")
    before = _hash(tmp_path)
    _assert_refused(cli.run(tmp_path / "file", timeout=120), "is a file, not a directory", tmp_path, before)


@pytest.mark.system
def test_a_finished_run_without_resume_or_resumed_with_another_config(tmp_path):
    done = cli.run(tmp_path, "--config.train.epochs=1", "--config.eval.task_inference=False")
    assert done.returncode == 0, done.stdout + done.stderr
    before = _hash(tmp_path)
    again = cli.run(tmp_path, "--config.train.epochs=1", "--config.eval.task_inference=False", timeout=120)
    _assert_refused(again, "already holds a run", tmp_path, before)
    other = cli.run(tmp_path, "--config.train.epochs=1", "--config.eval.task_inference=False",
                    "--config.strategy.beta=0.25", "--resume", timeout=120)
    assert "strategy.beta: checkpoint 0.5, now 0.25" in other.stderr
    assert other.returncode == 2 and "Traceback" not in other.stderr and _hash(tmp_path) == before


@pytest.mark.system
def test_nan_loss_names_the_experience_and_keeps_what_came_before(tmp_path):
    done = cli.run(tmp_path, "--config.optim.lr=1e38", "--config.train.epochs=1", timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "the training loss became nan in experience 1, epoch 1" in done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") <= 2
    assert (tmp_path / "config.json").is_file() and not (tmp_path / "run.lock").exists()
