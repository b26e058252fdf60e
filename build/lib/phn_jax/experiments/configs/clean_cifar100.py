"""Clean-CIFAR100 (Noisy-CIFAR100's 4 x 5 classes without the transforms), the paper's §4.2 and Table 1."""
from phn_jax.config import base_config


def get_config():
    return base_config("clean_cifar100")
