"""The run configuration: one `ml_collections.ConfigDict` describes a run completely.

Experiment files under `experiments/configs/` (installed as `phn_jax.experiments.configs`: CONFIGS)
start from `base_config(stream)` and change what their experiment needs; `--config <name>` names one
from any directory; the command line overrides any field (`--config.strategy.freeze_depth=3`).
Defaults are the paper's hyperparameters (Hemati et al. §4, App.; docs/design.md §4): Adam lr 1e-3,
batch 64 (eval 256), 100 epochs per experience, β = 0.5, first-order look-ahead, task
embedding 32, MLP 50/32, conv-head embedding 32, 10 outputs per task head.
"""
from __future__ import annotations

import copy
import importlib.resources
import importlib.util
import json
import math
import numbers
import os
from pathlib import Path

import ml_collections

from phn_jax import hypernetwork, lookahead, models
from phn_jax.data import STREAMS, default_data_config
from phn_jax.programs import SEED_AXES
from phn_jax.strategies import MLP_ONLY, SCENARIOS as REPLAY_SCENARIOS, STRATEGIES

MLP_STRATEGIES = ("hn",) + MLP_ONLY


def base_config(stream: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # initialisation, shuffling and augmentation; also the stream's class order
    # several seeds of this config as one vmapped program (each seed's config: seed=s, seeds=()); () = just `seed`
    c.seeds = ()
    c.data = default_data_config(stream)
    c.data.seed = c.get_ref("seed")
    # The networks' defaults are their dataclasses' (stated once, there: the paper's sizes).
    resnet, mlp = models.ResNetConfig, models.MLPConfig
    trunk, heads, chunked = hypernetwork.Trunk, hypernetwork.Hypernetwork, hypernetwork.ChunkedHypernetwork
    c.model = ml_collections.ConfigDict(dict(
        arch="resnet",     # resnet: the slim ResNet-18 (the paper's) | mlp: von Oswald et al.'s MLP (hn, k = 0) | flax
        hidden_dims=mlp.hidden_dims,  # mlp: the hidden layers (ReLU, with biases); one head of num_classes per task
        nf=resnet.nf,      # slim ResNet-18: 20/40/80/160 channels
        num_classes=resnet.num_classes,  # outputs of each task head (the reference scripts use 10)
        norm="reference",  # 'reference' (batch stats frozen / per-sample generated) | 'batchnorm'
        blocks_per_stage=resnet.blocks_per_stage,  # BasicBlocks of the four stages: ResNet-18 (smoke: (1,1,1,1))
        # flax: a user's flax.linen / flax.nnx Module class, 'package.module:ClassName', and its constructor's keyword
        # arguments (phn_jax.flax_modules); its output: num_classes values (one head) or num_classes per task
        module="", module_kwargs=ml_collections.ConfigDict(),
        # flax: an optional second module g under it, trained on experience 1 and then frozen (freeze_depth=1)
        frozen_module="", frozen_module_kwargs=ml_collections.ConfigDict(),
    ))
    c.hnet = ml_collections.ConfigDict(dict(
        kind="heads",             # heads: per-tensor heads (the paper's) | chunked: von Oswald et al.'s chunks
        embedding_dim=trunk.embedding_dim,            # task embedding e_t (32)
        hidden_dims=trunk.hidden_dims,                # the MLP trunk (50, 32)
        activation=trunk.activation,                  # relu (reference code) | elu
        head_embedding_dim=heads.head_embedding_dim,  # heads: width d of the conv heads' lookup tables (32)
        chunk_dim=chunked.chunk_dim,                  # chunked: values emitted per chunk
        chunk_embedding_dim=chunked.chunk_embedding_dim,  # chunked: width of the chunk embeddings c_i
        vectors_as_tables=True,   # chunked: norm γ/β and biases as per-task tables (False: generated too)
        dense_init=trunk.dense_init,  # dense layers: pytorch (U(±1/√fan_in), the paper's code) | xavier (hypercl's)
        layout=chunked.layout,    # chunked: the chunks over the target: flax (sorted paths) | pytorch (hypercl's)
    ))
    c.strategy = ml_collections.ConfigDict(dict(
        name="hn",                  # hn | naive | ewc | lr | joint (phn_jax.strategies)
        freeze_depth=3,             # k: stem + first k stages frozen after experience 1 (hn, lr)
        beta=0.5,                   # β of the output regulariser
        order="first",              # look-ahead: none | first | second
        combine="sum",              # sum (reference code) | mean (the paper's Eq. 10)
        lookahead_step="sgd",       # sgd (reference code) | optimizer (optax's Adam) | hypercl (von Oswald et al.'s)
        reg_subset=0,               # regularise a random subset of n previous tasks (0: all)
        reg_reduce="mean",          # L_H over the regularised tasks: mean (reference code) | sum (paper's Eq. 7)
        train_old_embeddings=True,  # reference: old task embeddings stay trainable
        copy_embedding=True,        # new task embedding initialised from the previous one
        ewc_lambda=1.0,             # ewc: λ of the penalty λ Σ_t Σ_i F_t,i (θ_i − θ*_t,i)² (Avalanche 'separate')
        buffer_size=200,            # lr: samples in the class-balanced buffer, in total (TinyImageNet: 400)
        replay_batch_size=64,       # lr: buffer samples replayed per step
        replay_coef=1.0,            # lr: c in CE(current) + c·CE(replayed); 0: Naive with a frozen trunk
        # hn, lr: "none" (the paper's text: stem + stages 1..k trained on experience 1, then frozen), or a phn_jax
        # run directory (or one seed's of a multi-seed run) whose newest checkpoint gives them, frozen from the
        # start, as the reference scripts load φ from a model trained beforehand (`make pretrain`: Joint)
        frozen_init="none",
        # van de Ven & Tolias' scenario the MLP trains for (model.arch=mlp): 1 (a head per task, the task given)
        # or 3 (a head per task, the task inferred) | 2 (one head shared by all tasks); replay: 2 or 3
        scenario=1,
    ))
    # tir, replay (von Oswald et al.'s HNET+TIR and HNET+R): the generative memory, a VAE whose decoder a chunked
    # hypernetwork generates (phn_jax.strategies.replay), at hypercl's SplitMNIST values (experiments/configs)
    c.replay = ml_collections.ConfigDict(dict(
        encoder_dims=(400, 400), decoder_dims=ml_collections.ConfigDict(dict(tir=(50, 150), replay=(250, 350))),
        latent_dim=100, condition_dim=100,  # z ∈ R^L; the task's one-hot condition of the decoder ∈ R^K
        lr=1e-3, beta=0.01,                 # the VAE's Adam; β of its decoder hypernetwork's output regulariser
        replay_weight=0.5,                  # λ: (1 − λ) loss on the current batch + λ loss on the replayed one
        temperature=2.0,                    # replay: the distillation's softmax temperature τ
        hnet=ml_collections.ConfigDict(dict(embedding_dim=96, chunk_embedding_dim=96, hidden_dims=(10, 10),
                                            activation="elu", chunk_dim=50_000, vectors_as_tables=False,
                                            dense_init="xavier", layout="pytorch")),
    ))
    # adam_eps: where Adam adds ε, to √v̂ (optax) or to √v (PyTorch ≤ 1.2): `lookahead.adam`
    c.optim = ml_collections.ConfigDict(dict(lr=1e-3, eps_root=0.0, adam_eps="v_hat"))
    # num_devices: the mesh's devices (0: every device of every process); batch sizes are global
    # seed_axis: how a multi-seed run (`seeds`) goes over its seeds: vmap | map (lax.map, one after another in
    # the program) | auto (vmap on GPUs and TPUs, map on CPUs, where grouped convolutions are slow)
    # iterations: I > 0 trains each experience for I steps of full batches drawn across epochs (von Oswald et
    # al.'s loop, `data.iteration_indices`) in place of whole epochs; then epochs must be 0
    c.train = ml_collections.ConfigDict(dict(epochs=100, iterations=0, batch_size=64, eval_batch_size=256,
                                             progress=True, num_devices=0, seed_axis="auto"))
    # task_inference: also evaluate without task ids, the task inferred by predictive entropy (von
    # Oswald et al.'s HNET+ENT), for strategies that can (hn): class-incremental and task-inference accuracy
    c.eval = ml_collections.ConfigDict(dict(task_inference=True))
    # a checkpoint after every experience, and between epochs every `every_minutes`
    c.checkpoint = ml_collections.ConfigDict(dict(max_to_keep=2, every_minutes=5.0))
    # where the scalars go besides TensorBoard (always) and the CSVs: wandb, a Weights & Biases project (the
    # optional extra: pip install phn_jax[wandb]); W&B's environment applies (WANDB_MODE=offline, WANDB_ENTITY)
    c.log = ml_collections.ConfigDict(dict(wandb=""))
    return c


def with_defaults(saved: dict) -> dict:
    """A run's saved config (its config.json, or a checkpoint's) with each field it lacks, a field added
    to phn_jax after it was written, at its default (`base_config` of its stream). A new field's
    default is what phn_jax did before the field existed, so the run is the same experiment as one
    that sets the default: it resumes, and counts, as such."""
    def fill(defaults: dict, into: dict) -> dict:
        out = dict(into)
        for key, value in defaults.items():
            if key not in out:
                out[key] = value
            elif isinstance(value, dict) and isinstance(out[key], dict):
                out[key] = fill(value, out[key])
        return out

    stream = saved.get("data", {}).get("name")
    if stream not in STREAMS:
        return saved
    return fill(json.loads(json.dumps(base_config(stream).to_dict())), saved)


def digits_config(stream: str = "split_digits") -> ml_collections.ConfigDict:
    """A stream of scikit-learn's digits (split_digits, noisy_digits, clean_digits): 2 classes per
    experience, batch 32 and 15 epochs (minutes on a laptop CPU), HN-2."""
    c = base_config(stream)
    c.strategy.freeze_depth = 2
    c.model.num_classes = 2
    c.train.epochs = 15
    c.train.batch_size = 32
    return c


def smoke(c: ml_collections.ConfigDict, epochs: int = 1) -> ml_collections.ConfigDict:
    """Shrinks any experiment to a laptop-size run of the same code path (big_vision's `runlocal`)."""
    c.train.epochs = epochs
    return c


def von_oswald_hnet(c: ml_collections.ConfigDict, *, beta: float, lr: float, iterations: int, mlp: tuple[int, ...],
                    image_size: int, **chunked) -> ml_collections.ConfigDict:
    """von Oswald et al.'s (ICLR 2020) HNET recipe on `c`, as their reference code runs it on MNIST:
    their target, a multi-head MLP with hidden layers `mlp` (ReLU, biases) on the flattened image
    (MNIST zero-padded to `image_size`, one channel, pixels in [0, 1]); a chunked hypernetwork
    (`chunked`: its hnet fields) generating all of it, biases included (k = 0); the look-ahead
    through Adam's step at first order, only the current task embedding trained, a new embedding
    drawn fresh (not copied), batch 128; their β, lr and iterations: `iterations` steps a task of full
    batches drawn across epochs from one reshuffled sweep after another (`train.iterations`; their
    data/dataset.py `Dataset._get_random_batch`).

    Also as theirs: the hypernetwork's dense layers Xavier uniform with zero biases and the task and
    chunk embeddings N(0, 1) (hypercl mnist/train_utils.py `generate_classifier`); the chunks laid over
    the MLP in PyTorch's parameter order, each layer's weight [D_out, D_in] then its bias, input to
    output (`layout='pytorch'`: mnets/mlp.py `MLP.weight_shapes`, chunked_hyper_model.py `forward`);
    a fresh Adam for the hypernetwork at every task (mnist/train_splitMNIST.py `train_class_one_t`
    creates its optimizers); the look-ahead's virtual Adam step as theirs, ε added to the uncorrected
    √v (utils/optim_step.py `adam_step`: `lookahead_step='hypercl'`; optax's ε after the bias
    correction made ψ after a task's first 5 steps differ from theirs by 11-49 % of the update,
    docs/mnist.md).
    From the same weights and batches, 3 tasks × 5 steps of either stream in float64, ours equals
    hypercl's `train_class_one_t` to 2e-12 of the update (experiments/compare_hypercl.py). Where ours
    differs (none changes a step beyond rounding):
      - one Adam over ψ, the old task embeddings' gradients zeroed, where theirs has one for θ and one
        for the current embedding: the old embeddings get no update either way (their Adam moments
        stay 0, so the virtual step leaves them too), and the current one is not in the regulariser
      - the regulariser from the targets' factors (`ChunkedHypernetwork.sq_distances`), theirs from the
        full outputs: the same function (float64 tests), at a fraction of the cost
      - evaluation: theirs tests each task right after it ("during") and after the last ("after");
        our accuracy matrix holds both (its diagonal and its last row)
      - the random numbers (initial draws, batch order)
    And from the paper's runs (2019), like hypercl run today: Adam's real step with ε on √v̂ (PyTorch ≥
    1.3, optax); theirs had PyTorch ≤ 1.2's, ε on the uncorrected √v, as the virtual step still has it:
    `optim.adam_eps='v'`, measured not to help (SplitMNIST 99.67 ± 0.06 against 99.73 ± 0.08, 5
    seeds: docs/mnist.md)."""
    c.model.update(arch="mlp", hidden_dims=tuple(mlp))
    c.data.update(image_size=image_size, channels=1, normalize=False)
    c.hnet.update(kind="chunked", vectors_as_tables=False, dense_init="xavier", layout="pytorch", **chunked)
    c.strategy.update(freeze_depth=0, beta=beta, order="first", lookahead_step="hypercl",
                      train_old_embeddings=False, copy_embedding=False)
    c.optim.lr = lr
    c.train.update(epochs=0, iterations=iterations, batch_size=128)
    return c


def von_oswald_replay(c: ml_collections.ConfigDict, *, encoder_dims: tuple[int, ...], decoder_dims_tir: tuple[int, ...],
                      decoder_dims_replay: tuple[int, ...], lr: float, beta: float, **hnet) -> ml_collections.ConfigDict:
    """von Oswald et al.'s generative memory on `c` (strategies tir and replay), as hypercl's
    mnist/train_args_default.py sets it for a stream (`_set_default_split`, `_set_default_permuted`):
    the VAE's encoder (`enc_fc_arch`) and decoder (`dec_fc_arch`: one for HNET+TIR, set where
    `infer_task_id`, one for HNET+R), its Adam (`enc_lr`, `dec_lr`, `dec_lr_emb`), its decoder's
    chunked hypernetwork (`hnet`: `rp_temb_size`, `rp_emb_size`, `rp_hnet_arch`, `rp_hnet_act`,
    `rp_hyper_chunks`; β = `rp_beta`); the task-inference network as their classifier
    (`class_fc_arch`: model.hidden_dims); the rest at `base_config`'s values,
    theirs for both streams: latent 100 (`latent_dim`), a one-hot task condition of 100
    (`conditional_replay`, `conditional_dim`), λ = 0.5 (`l_rew`, mnist/train_args.py), distillation at
    τ = 2 (mnets/classifier_interface.py), Xavier init and zero biases (mnist/replay/train_utils_replay.py)."""
    c.replay.update(encoder_dims=tuple(encoder_dims), lr=lr, beta=beta)
    c.replay.decoder_dims.update(tir=tuple(decoder_dims_tir), replay=tuple(decoder_dims_replay))
    c.replay.hnet.update(**hnet)
    return c


def seed_configs(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
    """The config of each seed of `config.seeds` (seed = s, seeds = ()), or [config] when it names none.
    The stream's seed follows `seed` (base_config makes `data.seed` a reference to it, so an override of
    either sets both) unless the config file gives it a value of its own (permuted_mnist.py: 42, the
    reference's tasks for every seed)."""
    configs = []
    for s in config.seeds:
        c = copy.deepcopy(config)
        c.seed, c.seeds = s, ()
        configs.append(c)
    return configs or [config]


# The repository's experiments/configs, wherever phn_jax is installed (pyproject.toml maps it into the package).
CONFIGS = Path(str(importlib.resources.files("phn_jax.experiments"))) / "configs"


def config_file(name: str | os.PathLike) -> Path:
    """`name` where it is a file; else the experiment config of that name (CONFIGS/<name>.py: 'smoke',
    'split_cifar100', 'split_cifar100.py'), from any directory. FileNotFoundError naming the choices."""
    if Path(name).is_file():
        return Path(name)
    named = CONFIGS / f"{Path(name).stem}.py"
    if Path(name).parent == Path(".") and named.is_file():
        return named
    names = ", ".join(sorted(p.stem for p in CONFIGS.glob("*.py") if not p.stem.startswith("_")))
    raise FileNotFoundError(f"no config file {name} (a path, or the name of one of phn_jax's experiment configs: "
                            f"{names})")


def load_config(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """`get_config()` of an experiment file (a path or a name: `config_file`), as `--config` loads it on
    the command line."""
    path = config_file(path)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None:
        raise FileNotFoundError(f"no config file {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


class ConfigError(ValueError):
    """Config values that cannot run; the message says what is wrong and what to do."""


def _one_of(options):
    return lambda v: v in options, "one of " + ", ".join(map(str, options))


def _integer(low, high=None):
    ok = lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool) and low <= v <= (high or v)
    return ok, f"an integer from {low} to {high}" if high is not None else f"an integer ≥ {low}"


def _seeds():
    ok = lambda v: (isinstance(v, tuple) and len(set(v)) == len(v)
                    and all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 0 for s in v))
    return ok, "distinct integers ≥ 0, e.g. --config.seeds=0,1,2"


def _positive_ints(count: int | None, must: str):
    """A tuple of integers ≥ 1: `count` of them, or (None) one or more."""
    ok = lambda v: (isinstance(v, tuple) and (len(v) == count if count else len(v) >= 1)
                    and all(isinstance(b, numbers.Integral) and not isinstance(b, bool) and b >= 1 for b in v))
    return ok, must


def _number(low, strict):
    ok = lambda v: (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
                    and (v > low if strict else v >= low))
    return ok, f"a finite number {'>' if strict else '≥'} {low}"


# Every config value a run checks before anything is written: (field, (check, what it must be), why or
# what to do). The strategies keep their own checks for library use; this table is the command line's.
RULES = (
    ("data.name", _one_of(STREAMS), "the stream to run (see docs/data.md)"),
    ("strategy.name", _one_of(STRATEGIES), "hn is the paper's method; the rest are baselines"),
    ("strategy.order", _one_of(lookahead.ORDERS), "the look-ahead's order (none: no look-ahead)"),
    ("strategy.combine", _one_of(lookahead.COMBINES), "sum (reference code) or mean (the paper's Eq. 10)"),
    ("strategy.lookahead_step", _one_of(lookahead.LOOKAHEAD_STEPS), "the virtual step: sgd (reference code), "
     "optimizer (optax's Adam update) or hypercl (von Oswald et al.'s code: Adam with ε before the bias correction)"),
    ("optim.adam_eps", _one_of(lookahead.ADAM_EPS), "where Adam adds ε: v_hat (optax, PyTorch ≥ 1.3) or v (the "
     "uncorrected √v, PyTorch ≤ 1.2, as von Oswald et al. ran; strategies hn, naive, ewc, lr, joint)"),
    ("strategy.reg_reduce", _one_of(lookahead.REG_REDUCES), "the regulariser over previous tasks: mean (reference "
     "code) or sum (the paper's Eq. 7)"),
    ("model.norm", _one_of(models.NORM_MODES), "reference: the reference code's normalisation"),
    ("model.arch", _one_of(models.ARCHS), "resnet: the paper's slim ResNet-18; mlp: von Oswald et al.'s MLP; flax: "
     "a user's Flax module, model.module"),
    ("model.hidden_dims", _positive_ints(None, "one or more integers ≥ 1, e.g. --config.model.hidden_dims=400,400"),
     "the MLP's hidden layers (model.arch=mlp)"),
    ("hnet.kind", _one_of(hypernetwork.HNET_KINDS), "heads: the paper's per-tensor heads; chunked: von Oswald et al."),
    ("hnet.dense_init", _one_of(hypernetwork.DENSE_INITS), "the hypernetwork's dense layers: pytorch (PyTorch's "
     "default, the paper's code) or xavier (Xavier uniform, zero biases: von Oswald et al.'s code)"),
    ("hnet.layout", _one_of(hypernetwork.CHUNK_LAYOUTS), "how the chunked hypernetwork's chunks fall on the target: "
     "flax (sorted paths, our shapes) or pytorch (von Oswald et al.'s MLP order, the MLP target only)"),
    ("strategy.freeze_depth", _integer(0, 4), "k frozen residual stages: 0 generates the whole network (HN-F), "
     "4 only the classifier"),
    ("train.epochs", (_integer(0)[0], "an integer ≥ 1 (0 only with train.iterations)"),
     "epochs per experience (the paper: 100)"),
    ("train.iterations", _integer(0), "steps per experience of full batches drawn across epochs, von Oswald et al.'s "
     "n_iter (0: whole epochs, train.epochs of them)"),
    ("train.batch_size", _integer(1), "the global training batch (the paper: 64)"),
    ("train.eval_batch_size", _integer(1), "the global evaluation batch (the paper: 256)"),
    ("train.num_devices", _integer(0), "0 uses every device"),
    ("train.seed_axis", _one_of(("auto",) + SEED_AXES), "how several seeds share one program"),
    ("optim.lr", _number(0, strict=True), "Adam's learning rate (the paper: 1e-3)"),
    ("strategy.beta", _number(0, strict=False), "β of the output regulariser (the paper: 0.5; 0 turns it off)"),
    ("model.nf", _integer(1), "the slim ResNet's width (the paper: 20)"),
    ("model.num_classes", _integer(1), "outputs of each task head"),
    ("model.blocks_per_stage", _positive_ints(4, "four integers ≥ 1"),
     "the BasicBlocks of each of the four stages (the paper: 2,2,2,2)"),
    ("strategy.scenario", _one_of((1, 2, 3)), "van de Ven & Tolias' CL1, CL2 (one head for all tasks) or CL3"),
    ("replay.latent_dim", _integer(1), "the VAE's latent dimension"),
    ("replay.lr", _number(0, strict=True), "the VAE's Adam learning rate"),
    ("replay.beta", _number(0, strict=False), "β of the VAE decoder hypernetwork's output regulariser"),
    ("replay.replay_weight", _number(0, strict=False), "λ of the replayed batch's loss, in [0, 1]"),
    ("checkpoint.max_to_keep", _integer(1), "checkpoints kept; a run needs at least its latest to resume"),
    ("checkpoint.every_minutes", _number(0, strict=True), "minutes between checkpoints inside an experience"),
    ("seed", _integer(0), "the run's seed"),
    ("seeds", _seeds(), "the seeds run together in one program (empty: only `seed`)"),
)


def _length_problems(train: ml_collections.ConfigDict) -> list[str]:
    """What is wrong with the length of an experience: exactly one of train.epochs (whole epochs) and
    train.iterations (steps across epochs) must be ≥ 1."""
    epochs, iterations = train.epochs, train.get("iterations")
    if not _integer(0)[0](iterations):
        return []  # (its own rule names it)
    if epochs == 0 and iterations == 0:
        return ["train.epochs=0 must be an integer ≥ 1 (epochs per experience), or give the steps per experience "
                "with train.iterations ≥ 1"]
    if epochs and iterations:
        return [f"train.epochs={epochs} and train.iterations={iterations} both give the length of an experience: "
                "set train.epochs=0 to train for iterations, or train.iterations=0 for epochs"]
    return []


def _combination_problems(config: ml_collections.ConfigDict) -> list[str]:
    """What is wrong with how `config`'s fields go together (`check_config`)."""
    problems, m, s, hnet = [], config.model, config.strategy, config.hnet
    if m.arch == "mlp":
        if s.name not in MLP_STRATEGIES:
            problems.append(f"model.arch='mlp' runs with strategies {', '.join(MLP_STRATEGIES)} (got {s.name!r}): "
                            "the baselines use the multi-head ResNet; set --config.model.arch=resnet for them")
        if s.freeze_depth != 0:
            problems.append(f"model.arch='mlp' has no frozen part: the hypernetwork generates every layer, so "
                            f"strategy.freeze_depth must be 0 (got {s.freeze_depth!r}); drop FREEZE= (or set "
                            "FREEZE=0), or use --config.model.arch=resnet for a frozen trunk")
    if m.arch == "flax":
        if not m.module:
            problems.append("model.arch='flax' needs model.module, the import path of a flax.linen or flax.nnx "
                            "Module class ('package.module:ClassName'; examples/ has two)")
        k = 1 if m.frozen_module else 0
        if s.name == "hn" and s.freeze_depth != k or s.name == "lr" and s.freeze_depth > k:
            problems.append(f"model.arch='flax' with strategy {s.name}: strategy.freeze_depth={s.freeze_depth} must be "
                            + ("1 (model.frozen_module is g, frozen after experience 1)" if k else
                               "0: there is no model.frozen_module to freeze (name one for k = 1)"))
        if m.norm != "reference":
            problems.append(f"model.norm={m.norm!r}: a user's module (model.arch='flax') normalises as it does, "
                            "without running statistics; leave model.norm at 'reference'")
    if hnet.layout == "pytorch" and (hnet.kind != "chunked" or m.arch != "mlp"):
        problems.append(f"hnet.layout='pytorch' lays the chunks over the MLP target in its layers' order: it needs "
                        f"hnet.kind='chunked' and model.arch='mlp' (got {hnet.kind!r}, {m.arch!r}); use "
                        "hnet.layout='flax' otherwise")
    if s.name in MLP_ONLY and m.arch != "mlp":
        problems.append(f"strategy {s.name!r} (von Oswald et al.'s replay) needs model.arch='mlp' (got {m.arch!r}): use "
                        "the split_mnist or permuted_mnist config")
    if s.scenario == 2 and m.arch != "mlp":
        problems.append("strategy.scenario=2 (one head for every task) is the MLP's (model.arch='mlp'): the ResNet has a "
                        "head per task; leave SCENARIO= unset for it")
    if s.name in MLP_ONLY and config.data.get("normalize", True):  # (the streams without the field always normalise)
        problems.append(f"strategy {s.name!r}'s VAE models pixels in [0, 1] (a Bernoulli likelihood, as von "
                        "Oswald et al.'s): it needs data.normalize=False (the MNIST configs' setting)")
    if s.name in MLP_ONLY and config.optim.adam_eps != "v_hat":
        problems.append(f"strategy {s.name!r} trains its networks with optax's Adam (ε on √v̂): optim.adam_eps="
                        f"{config.optim.adam_eps!r} is for hn and the baselines; leave it at 'v_hat'")
    if s.name == "replay" and s.scenario not in REPLAY_SCENARIOS:
        problems.append(f"strategy 'replay' (HNET+R) trains for strategy.scenario 2 (one head) or 3 (a head per "
                        f"task), got {s.scenario!r}: SCENARIO=2 or SCENARIO=3")
    if config.log.wandb and importlib.util.find_spec("wandb") is None:
        problems.append(f"log.wandb={config.log.wandb!r} logs to Weights & Biases, which is not installed: pip install "
                        "'phn_jax[wandb]' (or make install WANDB=1)")
    if s.frozen_init != "none":
        if s.name not in ("hn", "lr") or not s.freeze_depth:
            problems.append(f"strategy.frozen_init={s.frozen_init!r} needs a frozen part: strategy hn or lr with "
                            f"freeze_depth ≥ 1 (got {s.name} at {s.freeze_depth})")
        elif m.arch != "resnet" or m.norm != "reference":
            problems.append(f"strategy.frozen_init={s.frozen_init!r} loads the ResNet's stem and stages: it needs "
                            f"model.norm='reference' (the paper's) and model.arch='resnet' (got {m.norm!r}, {m.arch!r}); "
                            "conventional BatchNorm's running statistics of the frozen part are not loaded with it")
        elif not Path(str(s.frozen_init)).is_dir():
            problems.append(f"strategy.frozen_init={s.frozen_init!r} must be 'none' or the directory of a finished "
                            "phn_jax run (make pretrain writes one)")
    return problems


def check_config(config: ml_collections.ConfigDict) -> None:
    """Checks every rule of RULES, then how the fields go together: the MLP target (model.arch=mlp)
    runs with hn at k = 0; a user's module (model.arch=flax) names one, at k = 1 with a frozen
    module and 0 without; hnet.layout='pytorch' has a chunked hypernetwork and the MLP; von Oswald et
    al.'s replay systems have the MLP and their scenario; a frozen_init names a run directory for a
    strategy with a frozen part (hn or lr at k ≥ 1). ConfigError naming each bad value, what it must
    be and why."""
    problems = []
    for field, (ok, must), why in RULES:
        node = config
        for part in field.split("."):
            node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
        if not ok(node):
            problems.append(f"{field}={node!r} must be {must} ({why})")
        elif field == "train.epochs":
            problems += _length_problems(config.train)
    if not problems:  # (the fields below exist and have their types)
        problems = _combination_problems(config)
    if problems:
        raise ConfigError("bad config: " + "; ".join(problems) + ". Change it in the config file or with "
                          "--config.<field>=<value> on the command line.")
