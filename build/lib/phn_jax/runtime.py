"""Where a run executes: its device mesh, its processes, and what they must agree on.

One process per host (a TPU VM worker, a SLURM task, a GPU node), each with its local devices;
`jax.distributed.initialize` joins them into one program. Every process runs the same Python code
on the same data (each builds the same stream), so host-side values that steer the run (stop now,
write a checkpoint now) must be agreed on, or the processes diverge and hang in a collective.

Mesh: one axis `data` over `num_devices` devices (0: every device of every process). The batch
is split along it; parameters, optimizer state and the experience's arrays are replicated, so
the program is the same SPMD program on 1 device, 8 GPUs or a pod. Statistics over the batch
(reference normalisation) are means over the sharded axis, which XLA computes globally (an
all-reduce), so a step on n devices equals the step on one device up to float reassociation.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import socket
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """`jax.distributed.initialize`: arguments auto-detected on Cloud TPU, SLURM and Open MPI; given
    explicitly elsewhere (coordinator 'host:port', the number of processes, this one's id).
    On CPU, processes talk through gloo collectives (JAX's default since 0.5.1)."""
    kwargs = {k: v for k, v in dict(coordinator_address=coordinator_address, num_processes=num_processes,
                                    process_id=process_id).items() if v is not None}
    jax.distributed.initialize(**kwargs)


def enable_compilation_cache(directory: str | os.PathLike | None = None) -> str:
    """JAX's persistent compilation cache, so that a resumed run, a second run of the same
    configuration or another process of the same job loads its compiled steps instead of
    compiling them again. Directory: `directory`, else $JAX_COMPILATION_CACHE_DIR, else
    $XDG_CACHE_HOME/phn_jax/xla (~/.cache/phn_jax/xla). Returns it."""
    directory = (directory or jax.config.jax_compilation_cache_dir
                 or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "phn_jax" / "xla")
    jax.config.update("jax_compilation_cache_dir", str(directory))
    return str(directory)


# Initialisers run as one compiled program each, at XLA's optimisation level 1. Called eagerly, every
# random draw of a new shape would compile on its own (about half a second each on jax 0.11's XLA:CPU);
# level 1 halves the compile time of the random draws and gives the same bits as the default
# (tests/test_train.py checks).
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def compiled_init(*static_argnames: str):
    """Decorator: called on concrete arrays, the initialiser runs jitted with `static_argnames` static
    (its configuration, or `self` of a frozen dataclass) and INIT_COMPILER_OPTIONS; called under a
    trace (inside jit, vmap or eval_shape) it is traced inline, as the enclosing program's part
    (compiler options belong to a top-level jit only)."""
    def decorate(fn):
        jitted = jax.jit(fn, static_argnames=static_argnames, compiler_options=INIT_COMPILER_OPTIONS)

        @functools.wraps(fn)
        def init(*args, **kwargs):
            traced = any(isinstance(a, jax.core.Tracer) for a in jax.tree_util.tree_leaves((args, kwargs)))
            return (fn if traced else jitted)(*args, **kwargs)
        return init
    return decorate


def make_mesh(num_devices: int = 0) -> Mesh:
    """A 1-D mesh `data` over the first `num_devices` devices (0: all of them, of every process).

    Raises ValueError when more devices are asked for than exist, or when a multi-process run
    would leave a process without devices (every process must take part)."""
    devices = jax.devices()
    n = num_devices or len(devices)
    if not 0 < n <= len(devices):
        raise ValueError(f"train.num_devices={num_devices}, but this job has {len(devices)} devices "
                         f"({jax.process_count()} process(es)); use 0 for all of them")
    if jax.process_count() > 1 and n != len(devices):
        raise ValueError(f"train.num_devices={num_devices}: a job of {jax.process_count()} processes uses "
                         f"every device ({len(devices)}); set train.num_devices=0")
    return Mesh(np.array(devices[:n]), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimizer state, an experience's data)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis split over the `data` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(tree, mesh: Mesh):
    """Places every leaf (host NumPy, or a jax.Array on any devices) on every device of `mesh`.

    In a multi-process job each process passes the same values (its copy of the stream, the state
    all processes computed identically); leaves that are already global arrays are resharded."""
    sharding = replicated(mesh)

    def put(x):  # (states hold no PRNG keys: keys are passed to the steps, never replicated)
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.device_put(x, sharding)
        return jax.device_put(np.asarray(x), sharding)

    return jax.tree_util.tree_map(put, tree)


def is_main_process() -> bool:
    """Process 0 writes the run directory (reports, plots, log, lock); every process checkpoints."""
    return jax.process_index() == 0


def agree(stop: bool, due: bool) -> tuple[bool, bool]:
    """What every process does at a safe point: (stop: any process was asked to stop, due: process
    0's checkpoint timer has run out). One small all-gather; free with one process."""
    if jax.process_count() == 1:
        return bool(stop), bool(due)
    flags = np.asarray(multihost_utils.process_allgather(np.array([stop, due], bool))).reshape(-1, 2)
    return bool(flags[:, 0].any()), bool(flags[0, 1])


def float_dtype():
    """The dtype of every float array a run makes (parameters, optimizer state, model inputs):
    float32, or float64 where JAX_ENABLE_X64 / `jax.enable_x64` is on (a whole run in float64, for
    checking numerics). Read at each call, so that `jax.enable_x64(True)` applies inside it."""
    return jax.dtypes.canonicalize_dtype(np.float64)


def random_floats(sample, key: jax.Array, shape: tuple[int, ...], **kwargs) -> jax.Array:
    """`sample(key, shape, float32, **kwargs)` (a `jax.random` sampler or initialiser) as `float_dtype()`:
    drawn in float32 either way, so that a float64 run starts from the float32 run's very values."""
    return sample(key, shape, np.float32, **kwargs).astype(float_dtype())

@dataclasses.dataclass(frozen=True)
class Topology:
    """What a run executes on, as the log and `runtime.json` record it."""

    platform: str
    device_kind: str
    device_count: int
    local_device_count: int
    process_count: int
    process_index: int
    mesh_shape: dict
    host: str
    jax_version: str

    @classmethod
    def of(cls, mesh: Mesh) -> "Topology":
        d = mesh.devices.flat[0]
        return cls(platform=d.platform, device_kind=d.device_kind, device_count=jax.device_count(),
                   local_device_count=jax.local_device_count(), process_count=jax.process_count(),
                   process_index=jax.process_index(), mesh_shape=dict(mesh.shape), host=socket.gethostname(),
                   jax_version=jax.__version__)

    def describe(self) -> str:
        mesh = " x ".join(f"{k}={v}" for k, v in self.mesh_shape.items())
        return (f"{self.platform} ({self.device_kind}): mesh {mesh} of {self.device_count} devices, "
                f"{self.process_count} process(es), {self.local_device_count} local device(s); jax {self.jax_version}")
