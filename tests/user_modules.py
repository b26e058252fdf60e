"""A user's own Flax modules, as the tests name them (model.module='user_modules:...'): tiny, one of
each kind, a frozen stem, and modules the engine must refuse."""
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx


class LinenStem(nn.Module):
    """g: [N, H, W, C] -> [N, H/2, W/2, features]."""

    features: int = 3

    @nn.compact
    def __call__(self, x):
        return jnp.tanh(nn.Conv(self.features, (3, 3), strides=2)(x))


class LinenHead(nn.Module):
    """h: a convolution, LayerNorm, global pool and a dense layer of num_outputs."""

    features: int = 4
    num_outputs: int = 2

    @nn.compact
    def __call__(self, z):
        z = jnp.tanh(nn.LayerNorm()(nn.Conv(self.features, (3, 3))(z)))
        return nn.Dense(self.num_outputs)(z.mean(axis=(1, 2)))


class NnxCNN(nnx.Module):
    """[N, H, W, in_channels] -> [N, num_outputs]."""

    def __init__(self, in_channels: int, features: int = 4, num_outputs: int = 2, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(in_channels, features, (3, 3), strides=2, rngs=rngs)
        self.norm = nnx.GroupNorm(features, num_groups=2, rngs=rngs)
        self.out = nnx.Linear(features, num_outputs, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.norm(self.conv(x))).mean(axis=(1, 2)))


class LinenBatchNorm(nn.Module):
    """Refused: running statistics ('batch_stats')."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(2)(nn.BatchNorm(use_running_average=True)(x).mean(axis=(1, 2)))


class NnxDropout(nnx.Module):
    """Refused: rngs held by the module."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.out = nnx.Linear(3, 2, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return self.out(self.drop(x.mean(axis=(1, 2))))


def not_a_module(x):
    return jax.nn.relu(x)
