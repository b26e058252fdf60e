"""Clean-Digits (Noisy-Digits' classes without the transforms): the stand-in for the clean CIFAR-100
stream in `make paper QUICK=1`."""
from phn_jax.config import digits_config


def get_config():
    return digits_config("clean_digits")
