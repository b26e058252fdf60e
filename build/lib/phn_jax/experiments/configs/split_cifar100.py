"""Split-CIFAR100 (20 x 5 classes), HN-k of the paper's Table 2. `make cifar100 FREEZE=3`."""
from phn_jax.config import base_config


def get_config():
    return base_config("split_cifar100")
