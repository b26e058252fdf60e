"""Transfer pair A -> B (the paper's §4.1, Figure 4): 5 random classes of dataset A, then 5 of B, all
32x32x3; the learning accuracy on the second experience for each freeze depth. `make transfer`.

`--config.data.transfer_pair="('gtsrb', 'cifar100')"` (a Python tuple, quoted for the shell) chooses the
pair (A, B among fashion_mnist, svhn_cropped, gtsrb, cifar10, cifar100; digits and synthetic need no
download); `make transfer PAIRS=gtsrb:cifar100` runs it at every freeze depth.
"""
from phn_jax.config import base_config


def get_config():
    return base_config("transfer")
