"""Noisy-CIFAR100 (4 x 5 classes with per-experience transforms), the paper's §4.2 and Table 1."""
from phn_jax.config import base_config


def get_config():
    return base_config("noisy_cifar100")
