"""Split-Digits (scikit-learn's handwritten digits, 5 x 2 classes, 16x16): the demo stream, no download.

Fewer epochs than the paper's 100 so that the demo takes minutes on a laptop CPU.
"""
from phn_jax.config import digits_config


def get_config():
    return digits_config("split_digits")
