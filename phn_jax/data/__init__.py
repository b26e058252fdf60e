"""Continual-learning streams, their on-device input pipeline, and dataset preparation.

  stream = build_stream(config.data)                 # config.data: default_data_config(name)
  exp = stream.experiences[t]                        # uint8 arrays, labels 0..C-1, task id t
  idx, mask = epoch_indices(key, n, batch_size)      # static-shape batches of a permutation
  x = preprocess(exp.preprocess, key, images[idx[s]], train=True)   # inside jax.jit
"""

from phn_jax.data.batching import epoch_indices, eval_indices, iteration_indices, num_batches, sweeps_per_call
from phn_jax.data.streams import (
    STREAMS,
    Experience,
    Stream,
    build_stream,
    check_datasets,
    default_data_config,
    seeded_class_order,
)
from phn_jax.data.tfds_io import DatasetNotFoundError
from phn_jax.data.transforms import Preprocess, preprocess

__all__ = [
    "STREAMS",
    "DatasetNotFoundError",
    "Experience",
    "Preprocess",
    "Stream",
    "build_stream",
    "check_datasets",
    "default_data_config",
    "epoch_indices",
    "eval_indices",
    "iteration_indices",
    "num_batches",
    "preprocess",
    "seeded_class_order",
    "sweeps_per_call",
]
