"""Split-TinyImageNet (20 x 10 classes, 64 -> 32 pixels), HN-k of the paper's Table 2."""
from phn_jax.config import base_config


def get_config():
    c = base_config("split_tinyimagenet")
    c.strategy.buffer_size = 400  # LR-k: the paper's buffer for TinyImageNet (CIFAR: 200)
    return c
