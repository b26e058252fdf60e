"""A synthetic continual-learning stream for unit tests: class prototypes plus Gaussian noise.

Each class is a prototype image p ∈ [0, 1]^{S×S×channels} with pixels drawn uniformly; an example
is clip(p + noise_std · ε, 0, 1) with ε ~ N(0, I), stored as uint8. Tasks are easy to learn alone.

With `conflict=True` all experiences share the same C prototypes, and experience t calls
prototype (k + t) mod C "label k": consecutive experiences give every input a different label,
so a network trained on them in turn without protection (or without task conditioning) forgets.
With `conflict=False` every (experience, class) pair has its own prototype.
"""

from __future__ import annotations

import numpy as np


def synthetic_experiences(
    num_experiences: int,
    classes_per_experience: int,
    train_per_class: int,
    test_per_class: int,
    image_size: int,
    channels: int,
    noise_std: float,
    conflict: bool,
    seed: int,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """The arrays of every experience, deterministic in `seed`.

    Returns:
      One (train_images uint8[T_n, S, S, channels], train_labels int32[T_n], test_images,
      test_labels) per experience, T_n = classes_per_experience · train_per_class (test alike);
      labels are 0..C−1 and sorted by class.
    """
    if min(num_experiences, classes_per_experience, train_per_class, test_per_class, image_size) < 1:
        raise ValueError("synthetic stream sizes must all be positive")
    if noise_std < 0:
        raise ValueError(f"noise_std must be ≥ 0, got {noise_std}")
    rng = np.random.default_rng(seed)
    c = classes_per_experience
    num_prototypes = c if conflict else num_experiences * c
    prototypes = rng.uniform(size=(num_prototypes, image_size, image_size, channels))

    def sample(prototype_ids: np.ndarray, per_class: int) -> tuple[np.ndarray, np.ndarray]:
        centres = np.repeat(prototypes[prototype_ids], per_class, axis=0)
        x = np.clip(centres + noise_std * rng.standard_normal(centres.shape), 0.0, 1.0)
        labels = np.repeat(np.arange(c, dtype=np.int32), per_class)
        return np.rint(x * 255.0).astype(np.uint8), labels

    experiences = []
    for t in range(num_experiences):
        if conflict:
            prototype_ids = (np.arange(c) + t) % c
        else:
            prototype_ids = t * c + np.arange(c)
        experiences.append((*sample(prototype_ids, train_per_class), *sample(prototype_ids, test_per_class)))
    return experiences
