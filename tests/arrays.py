"""Random test inputs from NumPy: `jax.random` called outside jit compiles one XLA program per new
shape (about half a second each on jax 0.11's XLA:CPU), which adds up over the suite."""
import jax
import numpy as np


def normal(seed: int, shape, dtype=np.float32, scale: float = 1.0) -> np.ndarray:
    """scale · N(0, 1) of `shape` from NumPy's generator seeded with `seed`."""
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)


def perturbed(tree, seed: int, scale: float):
    """Every leaf plus its own scale · N(0, 1) draw (one generator, leaves in tree order)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda x: x + (scale * rng.standard_normal(x.shape)).astype(x.dtype), tree)
