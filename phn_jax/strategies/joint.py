"""Joint training, the upper bound (not in the paper's tables; docs/design.md §3): cumulative training of the
multi-head ResNet. Experience t trains on the union of the training sets of experiences 0..t, each
sample with its own task id and head, continuing from the parameters after experience t−1 (Adam
reset), so the last row of the accuracy matrix is joint training on the whole stream.

The engine builds the union (`cumulative = True`; `phn_jax.train`), padded to the whole stream's
size so that one compilation serves every experience. It needs one input pipeline for all
experiences and refuses a stream whose experiences preprocess differently (e.g. Noisy-CIFAR100).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from phn_jax.strategies.naive import Naive


@dataclasses.dataclass(frozen=True)
class Joint(Naive):
    cumulative: ClassVar[bool] = True
