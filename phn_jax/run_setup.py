"""What a run is made of, built from its config before anything is written (`setup` -> `Setup`):
each seed's stream, the strategy, the device mesh; and the arrays the programs take from them
(`test_sets`, `train_arrays`: padded to one shape per stream, replicated on the mesh, stacked over
the seeds), the frozen part loaded from another run (`with_frozen_init`)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from phn_jax import data, rundir, runtime, task_inference
from phn_jax.config import ConfigError, check_config, seed_configs
from phn_jax.strategies import create_strategy


def _pad(a: np.ndarray, n: int) -> np.ndarray:
    return np.concatenate([a, np.zeros((n - a.shape[0],) + a.shape[1:], a.dtype)]) if a.shape[0] < n else a


def _pipeline(stream, t: int, cumulative: bool) -> data.Preprocess:
    """The input pipeline of experience t's training set; a cumulative strategy's unions need one
    pipeline for the whole stream (ValueError otherwise)."""
    specs = {e.preprocess for e in stream.experiences} if cumulative else {stream.experiences[t].preprocess}
    if len(specs) > 1:
        raise ValueError(f"a cumulative strategy (Joint) trains on the union of experiences, which needs one input "
                         f"pipeline, but the experiences of stream {stream.name!r} preprocess differently: "
                         f"{sorted(map(str, specs))}")
    return specs.pop()


def _training_set(stream, t: int, cumulative: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, data.Preprocess]:
    """What experience t trains on: (images uint8 [N, ...], labels [N], task ids int32 [N], pipeline).

    Its own training set, or for a cumulative strategy (Joint) the union of experiences 0..t, each
    sample with its experience's task id.
    """
    exps = stream.experiences[:t + 1] if cumulative else stream.experiences[t:t + 1]
    tasks = [np.full(e.train_labels.shape[0], e.task_id, np.int32) for e in exps]
    return (np.concatenate([e.train_images for e in exps]), np.concatenate([e.train_labels for e in exps]),
            np.concatenate(tasks), _pipeline(stream, t, cumulative))


@dataclasses.dataclass(frozen=True)
class Setup:
    """What a run is made of, built from its config before anything is written.

    A multi-seed run (`config.seeds`) has one config and one stream per seed (each seed draws its own
    class order or permutations, unless the config fixes `data.seed`, as permuted_mnist.py does) and one
    strategy and mesh for all; its state, data and keys carry a leading seed axis (`stacked`).
    """

    config: object
    configs: tuple           # each seed's config (seed = s); (config,) for a single run
    streams: tuple           # each seed's stream
    strategy: object
    mesh: Mesh
    cumulative: bool         # Joint: trains experience t on the union of experiences 0..t
    without_task_ids: tuple  # the matrices without task ids evaluated (eval.task_inference, if the strategy can)

    @property
    def stacked(self) -> bool:
        return bool(self.config.seeds)

    @property
    def frozen_from_start(self) -> bool:
        """strategy.frozen_init names a run: the frozen part is loaded, not trained on experience 1."""
        return self.config.strategy.frozen_init != "none"

    def first(self, t: int) -> bool:
        """Whether experience t's step is the first experience's program (it trains the frozen part
        too): the first experience of a strategy whose first step differs, unless the frozen part came
        from strategy.frozen_init (then every step freezes it)."""
        return t == 0 and not self.frozen_from_start and self.strategy.first_step_differs

    @property
    def seed_axis(self) -> str | None:
        """How the programs go over the seeds (`SEED_AXES`; None for a single run): train.seed_axis,
        where 'auto' is vmap on GPUs and TPUs and map on CPUs."""
        if not self.stacked:
            return None
        how = self.config.train.seed_axis
        return how if how != "auto" else ("map" if self.mesh.devices.flat[0].platform == "cpu" else "vmap")

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(c.seed for c in self.configs)

    @property
    def stream(self) -> data.Stream:
        """The first seed's stream: the shapes, sizes and pipelines every seed's stream shares."""
        return self.streams[0]

    @property
    def num_experiences(self) -> int:
        return self.stream.num_experiences

    @property
    def epochs(self) -> int:
        """Program calls per experience: train.epochs; with train.iterations = I > 0, ⌈I / S⌉ calls of
        S = ⌈N_pad / B⌉ steps (the last one's steps after the I-th skipped)."""
        if not self.iterations:
            return self.config.train.epochs
        return -(-self.iterations // self.steps_per_call)

    @property
    def steps_per_call(self) -> int:
        """S = ⌈N_pad / B⌉: the steps of one call of `programs.train_epoch` (N_pad: `train_arrays`' size)."""
        return data.num_batches(_padded_train_size(self.streams, self.cumulative), self.config.train.batch_size)

    @property
    def iterations(self) -> int:
        """train.iterations: steps per experience of full batches across epochs (0: whole epochs)."""
        return self.config.train.iterations

    @property
    def sweeps(self) -> int:
        """With train.iterations, the most permutations of an experience one call touches
        (`data.sweeps_per_call`, from the smallest experience); 0 for whole epochs."""
        if not self.iterations:
            return 0
        smallest = _smallest_experience(self.streams)
        return data.sweeps_per_call(self.steps_per_call, self.config.train.batch_size, smallest)

    def key(self) -> jax.Array:
        """The run's key `jax.random.key(seed)`; each seed's, stacked [S], for a multi-seed run."""
        if self.stacked:
            return jax.vmap(jax.random.key)(jnp.asarray(self.seeds))
        return jax.random.key(self.config.seed)

    def stack(self, trees: list):
        """The seeds' trees (numpy leaves) as one with a leading seed axis; the only one if not stacked."""
        return stack_seeds(trees, self.stacked)


def setup(config) -> Setup:
    """Checks the config (`phn_jax.config.RULES`), then builds each seed's stream (a missing dataset
    stops here with its clear error, before any compilation), the strategy and the mesh of every
    device (`train.num_devices`: 0 = all), and checks the batch sizes against them. Raises ConfigError."""
    check_config(config)
    configs = seed_configs(config)
    streams = [data.build_stream(c.data) for c in configs]
    strategies = {create_strategy(c, stream) for c, stream in zip(configs, streams)}
    if len(strategies) > 1:
        raise ConfigError(f"the seeds {tuple(config.seeds)} build different strategies (a seed that changes the "
                          "model's shapes?); they cannot share one program: run them one by one with --config.seed=")
    strategy = strategies.pop()
    cumulative = getattr(strategy, "cumulative", False)
    for t in range(streams[0].num_experiences):
        if len({_pipeline(stream, t, cumulative) for stream in streams}) > 1:
            raise ConfigError(f"the seeds {tuple(config.seeds)} give experience {t + 1} different input pipelines "
                              "(datasets); they cannot share one program: run them one by one with --config.seed=")
    mesh = runtime.make_mesh(config.train.num_devices)
    smallest = _smallest_experience(streams)
    problems = [f"train.{name}={config.train[name]} is not a multiple of the {mesh.size} devices (each device "
                "takes an equal share of a batch)" for name in ("batch_size", "eval_batch_size")
                if config.train[name] % mesh.size]
    if config.train.batch_size > smallest:
        problems.append(f"train.batch_size={config.train.batch_size} is larger than the smallest experience "
                        f"of stream {streams[0].name!r} ({smallest} training samples)")
    if problems:
        raise ConfigError("; ".join(problems) + ". Choose batch sizes that fit, with --config.train.batch_size= "
                          "and --config.train.eval_batch_size=.")
    without = task_inference.matrices_without_task_ids(strategy) if config.eval.task_inference else ()
    return Setup(config, tuple(configs), tuple(streams), strategy, mesh, cumulative, without)


@jax.jit
def _first_seed(tree):
    """Seed 0's slice of a stacked tree, as one program (not an eager slice per leaf)."""
    return jax.tree_util.tree_map(lambda a: a[0], tree)


def memory_of(strategy, state, stacked: bool) -> dict:
    """The strategy's memory figures (the same for every seed; `stacked`: a state with a seed axis)."""
    return strategy.memory(_first_seed(state) if stacked else state)


def with_frozen_init(s: Setup, state):
    """`state` with its frozen part (strategy.FROZEN_PARAMS' stem and stages 1..k) replaced by
    `load_frozen_part(config.strategy.frozen_init)`, the same for every seed; the shapes must agree."""
    k, where = s.config.strategy.freeze_depth, s.strategy.FROZEN_PARAMS
    part = rundir.load_frozen_part(s.config.strategy.frozen_init, k)
    if s.stacked:
        part = jax.tree_util.tree_map(lambda a: np.broadcast_to(a, (len(s.seeds),) + a.shape), part)
    current = {n: state[where][n] for n in part}
    shapes = lambda tree: jax.tree_util.tree_map(lambda a: tuple(a.shape), tree)
    if shapes(part) != shapes(current):
        raise ConfigError(f"strategy.frozen_init={s.config.strategy.frozen_init!r}: its stem and stages 1..{k} "
                          "have other shapes than this run's (model.nf, model.blocks_per_stage and the input "
                          "channels must be the same)")
    return {**state, where: {**state[where], **jax.tree_util.tree_map(jnp.asarray, part)}}


def stack_seeds(trees: list, stacked: bool):
    """The seeds' trees (numpy leaves) as one with a leading seed axis (`stacked`: a multi-seed run);
    else the only one."""
    return jax.tree_util.tree_map(lambda *a: np.stack(a), *trees) if stacked else trees[0]


def unstack_seeds(tree, seeds: tuple | None) -> list:
    """Each seed's slice of a tree with a leading seed axis (`seeds`: a multi-seed run's); [tree] for None."""
    return [jax.tree_util.tree_map(lambda a: a[i], tree) for i in range(len(seeds))] if seeds else [tree]


def test_sets(streams, mesh: Mesh, stacked: bool) -> list:
    """Each experience's test set as (images, labels, real count): padded to the `streams`' largest
    (each seed's stream), replicated on the mesh; each seed's, stacked, for a multi-seed run."""
    n_test = max(e.test_labels.shape[0] for stream in streams for e in stream.experiences)
    tests = []
    for j in range(streams[0].num_experiences):
        exps = [stream.experiences[j] for stream in streams]
        x, y = stack_seeds([(_pad(e.test_images, n_test), _pad(e.test_labels, n_test)) for e in exps], stacked)
        tests.append((*runtime.replicate((x, y), mesh), stack_seeds([e.test_labels.shape[0] for e in exps], stacked)))
    return tests


def _smallest_experience(streams) -> int:
    """The fewest training samples of any experience of the `streams` (each seed's)."""
    return min(e.train_labels.shape[0] for stream in streams for e in stream.experiences)


def _padded_train_size(streams, cumulative: bool) -> int:
    """N_pad of every experience's training arrays: the largest experience of the `streams` (each
    seed's), or for a cumulative strategy the union of all."""
    sizes = [[e.train_labels.shape[0] for e in stream.experiences] for stream in streams]
    return max(map(sum, sizes)) if cumulative else max(map(max, sizes))


def train_arrays(streams, t: int, cumulative: bool, mesh: Mesh, stacked: bool):
    """Experience t's training arrays (images, labels, tasks, num_valid), padded to the largest
    experience of the `streams` (each seed's; a cumulative strategy: to the union of all), replicated
    on the mesh; each seed's, stacked, for a multi-seed run; and their input pipeline."""
    n_train = _padded_train_size(streams, cumulative)
    sets = [_training_set(stream, t, cumulative) for stream in streams]
    images, labels, tasks = stack_seeds([tuple(_pad(a, n_train) for a in arrays[:3]) for arrays in sets], stacked)
    n_valid = stack_seeds([labels.shape[0] for _, labels, _, _ in sets], stacked)
    return (*runtime.replicate((images, labels, tasks), mesh), n_valid), sets[0][3]
