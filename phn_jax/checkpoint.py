"""Checkpoints of a continual-learning run: orbax `CheckpointManager`.

A checkpoint holds everything the run needs to go on from where it was written (after an
experience, or between two epochs of one; the engine numbers steps by epochs completed):
  state  the strategy's state pytree (parameters, optimizer state, targets, statistics),
         restored into the structure, dtypes and shardings of a freshly initialised one;
  meta   JSON: the resolved config, the run's progress (accuracy matrices, times, training
         history, experience and epoch), and a format version.
Every process of a multi-process run calls `save` and `restore_latest` (orbax coordinates them).
orbax writes a step to a temporary directory and renames it when complete, so a run killed
while saving leaves the previous checkpoints intact.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import orbax.checkpoint as ocp

FORMAT_VERSION = 2
CHECKPOINT_DIR = "checkpoints"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used for this run (corrupt, or from another config)."""


def manager(workdir: str | os.PathLike, max_to_keep: int = 2) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        Path(workdir).absolute() / CHECKPOINT_DIR,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))


def save(mngr: ocp.CheckpointManager, step: int, state, meta: dict) -> None:
    """Saves (state, meta) as `step` and waits until it is on disk."""
    meta = {**meta, "format_version": FORMAT_VERSION}
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    mngr.wait_until_finished()


def _config_diff(saved: dict, current: dict, prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _config_diff(a, b, f"{prefix}{key}.")
        elif json.dumps(a) != json.dumps(b):
            diffs.append(f"{prefix}{key}: checkpoint {a!r}, now {b!r}")
    return diffs


def restore_latest(mngr: ocp.CheckpointManager, abstract_state, config: dict, ignore: tuple[str, ...] = ()):
    """(step, state, meta) of the latest checkpoint, or None if there is none.

    Raises CheckpointError if the checkpoint was written by a different config (fields listed in
    `ignore`, e.g. the number of epochs' progress bar, may differ), or cannot be read into the
    structure of `abstract_state`.
    """
    step = mngr.latest_step()
    if step is None:
        return None
    where = Path(mngr.directory) / str(step)
    try:
        meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as err:  # orbax raises many types for a damaged directory
        raise CheckpointError(f"cannot read the checkpoint metadata in {where}: {err}. The directory is "
                              "damaged: delete it to resume from the previous checkpoint, or start a new "
                              "--workdir") from err
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {where} has format version {meta.get('format_version')!r}, "
                              f"this phn_jax writes {FORMAT_VERSION}: start a new --workdir")
    diffs = [d for d in _config_diff(meta.get("config", {}), config) if not d.startswith(ignore)]
    if diffs:
        raise CheckpointError(f"checkpoint {where} belongs to a different config:\n  " + "\n  ".join(diffs) +
                              "\nResume with the config the run started with, or start a new --workdir.")
    # the shardings of `abstract_state` too (replicated over the run's mesh), not the saving run's devices
    abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                                      abstract_state)
    try:
        state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    except Exception as err:
        raise CheckpointError(f"cannot restore the state in {where} into this run's structure: {err}. "
                              "The checkpoint is damaged or from another version of the code: delete it to "
                              "resume from the previous one, or start a new --workdir") from err
    return step, state, meta
