"""Noisy-Digits (4 x 2 digit classes with Noisy-CIFAR100's transforms, no download): the stand-in for
Noisy-CIFAR100 in `make paper QUICK=1`."""
from phn_jax.config import digits_config


def get_config():
    return digits_config("noisy_digits")
