"""von Oswald et al.'s PermutedMNIST-10 and SplitMNIST configs: they build the MLP target and chunked
hypernetwork they describe (no data needed), refuse a frozen part, and `make permuted-mnist` /
`make split-mnist` run them with k = 0 and their iterations (under tfds' mock MNIST in the system test)."""
import copy
import json
import os
import shlex
import shutil
import subprocess
import sys
import types
from pathlib import Path

import jax
import pytest

from phn_jax import models
from phn_jax.config import ConfigError, check_config, load_config, seed_configs
from phn_jax.hypernetwork import ChunkedHypernetwork
from phn_jax.strategies import create_strategy

ROOT = Path(__file__).resolve().parents[1]


# (stream, tasks, classes per task, input (H, W, C), hidden layers, their hypernetwork's sizes)
MNIST_SETUPS = [
    ("permuted_mnist", 10, 10, (32, 32, 1), (1000, 1000),
     dict(embedding_dim=24, chunk_embedding_dim=8, hidden_dims=(25, 25), chunk_dim=78_000, activation="elu")),
    ("split_mnist", 5, 2, (28, 28, 1), (400, 400),
     dict(embedding_dim=96, chunk_embedding_dim=96, hidden_dims=(10, 10), chunk_dim=42_000, activation="relu")),
]


@pytest.mark.parametrize("name, tasks, classes, shape, hidden, chunked", MNIST_SETUPS)
def test_config_builds_their_mlp_and_chunked_hn(name, tasks, classes, shape, hidden, chunked):
    config = load_config(ROOT / "experiments" / "configs" / f"{name}.py")
    check_config(config)
    assert (config.data.image_size, config.data.channels, config.data.normalize) == (shape[0], 1, False)
    stream = types.SimpleNamespace(num_experiences=tasks, classes_per_experience=classes, image_shape=shape)
    hn = create_strategy(config, stream)
    hnet = hn.model.hnet
    assert isinstance(hnet, ChunkedHypernetwork) and hn.model.freeze_depth == 0 and hnet.num_tasks == tasks
    assert {k: getattr(hnet, k) for k in chunked} == chunked
    # hypercl's parameter order: fc1 (weight, bias), fc2, the classifier
    assert hnet.layout == "pytorch" and [h.path for h in hnet.heads] == [
        f"{layer}/{leaf}" for layer in ("fc1", "fc2", "classifier") for leaf in ("kernel", "bias")]
    assert (hn.lookahead_step, hn.order, hn.train_old_embeddings, hn.copy_embedding) == ("hypercl", "first", False,
                                                                                          False)
    assert hn.beta == {"permuted_mnist": 0.1, "split_mnist": 0.01}[name]
    assert config.eval.task_inference and config.data.name == name
    # ω: every weight and bias of D_0-h1-h2-(C x tasks), D_0 = H·W·C, all from the chunks (hand count)
    assert hn.model.net == models.MLPConfig(shape[0] * shape[1], hidden, classes, tasks)
    want = {"permuted_mnist": 1024 * 1000 + 1000 + 1000 * 1000 + 1000 + 1000 * 100 + 100,
            "split_mnist": 784 * 400 + 400 + 400 * 400 + 400 + 400 * 10 + 10}[name]
    assert hnet.num_generated == want and all(h.kind == "chunk" for h in hnet.heads)
    assert hnet.num_chunks == -(-want // chunked["chunk_dim"])
    # PermutedMNIST: hypercl's ten tasks (its data_random_seed 42) whatever the run's seed; SplitMNIST's fixed
    # class order does not depend on it
    several = copy.deepcopy(config)
    several.seeds = (0, 3)
    assert [(c.seed, c.data.seed) for c in seed_configs(several)] == {
        "permuted_mnist": [(0, 42), (3, 42)], "split_mnist": [(0, 0), (3, 3)]}[name]
    # Table 6's comparison at k = 0: LR-0 stores 200 input images at 32 bit
    state = {"phi": jax.eval_shape(hn.model.init, jax.random.key(0))[0]}
    assert hn.memory(state)["replay_buffer_mb"] == 200 * shape[0] * shape[1] * 4 / 2**20


@pytest.mark.parametrize("overrides, message, advice", [
    ({"strategy.freeze_depth": 2}, "strategy.freeze_depth must be 0", "model.arch=resnet"),
    ({"strategy.name": "naive"}, "runs with strategies hn, tir, replay", "model.arch=resnet"),
    ({"model.arch": "resnet"}, "hnet.layout='pytorch' lays the chunks over the MLP", "hnet.layout='flax'"),
    ({"hnet.kind": "heads"}, "hnet.layout='pytorch' lays the chunks over the MLP", "hnet.layout='flax'"),
    ({"hnet.layout": "torch"}, "hnet.layout='torch' must be one of flax, pytorch", "--config.<field>"),
    ({"strategy.name": "tir", "optim.adam_eps": "v"}, "optim.adam_eps='v' is for hn and the baselines",
     "leave it at 'v_hat'"),
])
def test_mlp_config_errors_say_what_to_do(overrides, message, advice):
    config = load_config(ROOT / "experiments" / "configs" / "permuted_mnist.py")
    for field, value in overrides.items():
        section, key = field.split(".")
        config[section][key] = value
    with pytest.raises(ConfigError, match=message) as err:
        check_config(config)
    assert advice in str(err.value)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("target, config, iterations", [("permuted-mnist", "permuted_mnist", 5000),
                                                        ("split-mnist", "split_mnist", 2000)])
def test_make_targets(target, config, iterations):
    def command(*variables):
        # Under `make test` the outer make's MAKEFLAGS/MAKELEVEL would add "Entering directory" lines. The run's
        # command is the last line (make -n prints the install's lines before it where .venv is not installed).
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
        out = subprocess.run(["make", "-n", "--no-print-directory", target, *variables],
                             cwd=ROOT, capture_output=True, text=True, check=True, env=env).stdout
        return out.strip().splitlines()[-1]

    cmd = command()
    assert f"--config experiments/configs/{config}.py" in cmd and f"--workdir runs/{config}/hn0_first_seed0" in cmd
    assert "--config.strategy.freeze_depth=0" in cmd and "--config.train.epochs=0" in cmd
    assert f"--config.train.iterations={iterations}" in cmd
    cmd = command("FREEZE=2", "EPOCHS=3", "ORDER=second", "SEED=4")
    assert "--config.strategy.freeze_depth=2" in cmd and "--config.train.epochs=3 --config.train.iterations=0" in cmd
    assert "--config.train.epochs=0 --config.train.iterations=70" in command("ITERATIONS=70")
    with pytest.raises(subprocess.CalledProcessError) as both:
        command("EPOCHS=3", "ITERATIONS=70")
    assert "give EPOCHS=3 or ITERATIONS=70, not both" in both.value.stderr
    assert "--config.strategy.order=second" in cmd and f"runs/{config}/hn2_second_seed4" in cmd


@pytest.mark.system
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("target, name, tasks, classes, shape", [("permuted-mnist", "permuted_mnist", 2, 10, (32, 32, 1)),
                                                                 ("split-mnist", "split_mnist", 5, 2, (28, 28, 1))])
def test_make_target_runs_under_mock_data(target, name, tasks, classes, shape, tmp_path):
    """`make permuted-mnist` / `make split-mnist`'s command line (make -n), its MLP target shrunk to
    8-8 hidden units, 10 iterations (and 2 permutations), run under tfds' mock MNIST."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    line = subprocess.run(["make", "-n", "--no-print-directory", target], cwd=ROOT,
                          capture_output=True, text=True, check=True, env=env).stdout.strip().splitlines()[-1]
    args = shlex.split(line.split("-m phn_jax.main", 1)[1])
    args[args.index("--workdir") + 1] = str(tmp_path / "run")
    # batch 8: mock SplitMNIST's smallest experience has 9 training samples
    args += ["--config.model.hidden_dims=8,8", "--config.train.iterations=10", "--config.train.batch_size=8",
             "--config.train.eval_batch_size=32", "--config.train.progress=False"]
    if name == "permuted_mnist":
        args.append(f"--config.data.num_experiences={tasks}")
    program = ("import sys, tensorflow_datasets as tfds; from absl import app; from phn_jax import main\n"
               "with tfds.testing.mock_data(num_examples=64):\n"
               "    app.run(main.main, argv=['phn_jax.main'] + sys.argv[1:], flags_parser=main.parse_flags)")
    done = subprocess.run([sys.executable, "-c", program, *args], cwd=ROOT, capture_output=True, text=True,
                          env=env | {"PYTHONPATH": str(ROOT)}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert config["model"]["arch"] == "mlp" and config["strategy"]["freeze_depth"] == 0
    assert summary["completed_experiences"] == tasks
    for key in ("aca", "class_incremental_accuracy", "task_inference_accuracy"):
        assert 0 <= summary[key] <= 1, key
    # the MLP sees the unnormalised one-channel image: LR-0's buffer holds 200 of H×W×1 at 32 bit
    assert summary["memory"]["replay_buffer_mb"] == 200 * shape[0] * shape[1] * 4 / 2**20
    # |ψ| by hand: D_0-8-8-(C x tasks) generated in chunks of chunk_dim by the config's chunked hypernetwork
    generated = shape[0] * shape[1] * 8 + 8 + 8 * 8 + 8 + 8 * classes * tasks + classes * tasks
    h = config["hnet"]
    e, c, (h1, h2), chunk = h["embedding_dim"], h["chunk_embedding_dim"], h["hidden_dims"], h["chunk_dim"]
    chunks = -(-generated // chunk)
    want = tasks * e + (e + c) * h1 + h1 + h1 * h2 + h2 + h2 * chunk + chunk + chunks * c
    assert summary["memory"]["hypernetwork_params"] == want


def test_iterations_train_that_many_steps_of_full_batches(tmp_path):
    """train.iterations = 7 (the configs' 5,000 / 2,000 shrunk) on 2 experiences of 48 samples in batches of 20:
    each experience runs as ⌈7 / 3⌉ = 3 calls of ⌈48 / 20⌉ = 3 steps, and Adam, fresh at every experience, has
    made exactly 7 updates at the end of the last one (the 2 steps after the 7th skipped; which samples each
    batch draws: tests/test_data_transforms.py)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from runs import final_state, tiny_config

    from phn_jax import train

    mlp = {"model.arch": "mlp", "model.hidden_dims": (8,), "strategy.freeze_depth": 0, "data.normalize": False,
           "hnet.kind": "chunked", "hnet.chunk_dim": 256, "hnet.hidden_dims": (6,), "hnet.embedding_dim": 4,
           "hnet.chunk_embedding_dim": 4, "eval.task_inference": False}
    config = tiny_config(**mlp, **{"train.epochs": 0, "train.iterations": 7, "train.batch_size": 20,
                                   "data.num_experiences": 2})
    train.train_and_evaluate(config, tmp_path)
    rows = [line.split(",") for line in (tmp_path / "train_history.csv").read_text().splitlines()[1:]]
    assert [(int(r[0]), int(r[1])) for r in rows] == [(t, e) for t in range(2) for e in range(3)]
    assert int(final_state(tmp_path)["opt"]["psi"][0]["count"]) == 7
