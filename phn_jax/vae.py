"""The conditional variational autoencoder of von Oswald et al.'s replay (ICLR 2020, HNET+TIR and HNET+R).

The generative memory of `phn_jax.strategies.replay`: an MLP encoder q(z | x) with weights of its
own, and an MLP decoder p(x | z, t) whose weights a task-conditioned hypernetwork generates
(`GenerativeMemory`), both as hypercl's `mnist/replay` builds them (`generate_replay_networks`,
`train_vae_one_t`, `sample`):

    x ∈ [0, 1]^D                                   the flattened image (D = H·W·C)
    (μ, log σ²) = Enc(x),  Enc: D -> enc dims -> 2·L (ReLU hidden layers, no output nonlinearity)
    z = μ + σ ⊙ ε,  ε ~ N(0, I_L)                   the reparameterisation
    x̂ = sigmoid(Dec([z ; c_t])),  Dec: L + K -> dec dims -> D,  c_t = one-hot(t) ∈ R^K
    L_VAE = mean_n [ (1/D) Σ_d BCE(x̂_nd, x_nd) + (1/D) KL(N(μ_n, σ_n²) ‖ N(0, I)) ]
    KL = −½ Σ_l (1 + log σ²_l − μ_l² − σ²_l)

(their reconstruction term is the BCE averaged over pixels, the KL divided by D: `compute_kld`).
Replay of task t draws z ~ N(0, I) and returns x̂ (`sample`). L = `latent_dim` (100 in hypercl),
K = `condition_dim` (100: their `conditional_dim`, a one-hot of the task, so at most K tasks).

Parameters: the encoder's and decoder's are `models.init_mlp` pytrees ({'fc1', ..., 'classifier'}).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from phn_jax import models
from phn_jax.runtime import float_dtype


@dataclasses.dataclass(frozen=True)
class VAE:
    """Static description of the conditional VAE (hypercl's MNIST defaults for SplitMNIST's HNET+TIR)."""

    in_features: int = 784
    encoder_dims: tuple[int, ...] = (400, 400)
    decoder_dims: tuple[int, ...] = (50, 150)
    latent_dim: int = 100
    condition_dim: int = 100

    @property
    def encoder(self) -> models.MLPConfig:
        """D -> encoder_dims -> 2·L (μ, then log σ²)."""
        return models.MLPConfig(self.in_features, tuple(self.encoder_dims), 2 * self.latent_dim, 1)

    @property
    def decoder(self) -> models.MLPConfig:
        """L + K -> decoder_dims -> D (logits of the pixels)."""
        return models.MLPConfig(self.latent_dim + self.condition_dim, tuple(self.decoder_dims), self.in_features, 1)

    def check_tasks(self, num_tasks: int) -> None:
        if num_tasks > self.condition_dim:
            raise ValueError(f"the VAE's condition is a one-hot of the task among condition_dim={self.condition_dim}: "
                             f"{num_tasks} tasks need condition_dim ≥ {num_tasks}")

    def encode(self, enc_params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x [N, ...] (D values each) -> (μ, log σ²), each [N, L]."""
        out = models.mlp_apply(enc_params, x.reshape(x.shape[0], -1), self.encoder)
        return out[:, :self.latent_dim], out[:, self.latent_dim:]

    def decode(self, dec_params, z: jax.Array, task_id) -> jax.Array:
        """Logits of x̂ for latents z [N, L] of task `task_id` (a scalar, or [N] ids): [N, D]."""
        c = jax.nn.one_hot(jnp.broadcast_to(task_id, z.shape[:1]), self.condition_dim, dtype=z.dtype)
        return models.mlp_apply(dec_params, jnp.concatenate([z, c], axis=1), self.decoder)

    def sample(self, dec_params, key: jax.Array, task_id, n: int) -> jax.Array:
        """n replayed inputs of task `task_id`: x̂ = sigmoid(Dec([z ; c_t])), z ~ N(0, I): [n, D]."""
        z = jax.random.normal(key, (n, self.latent_dim), float_dtype())
        return jax.nn.sigmoid(self.decode(dec_params, z, task_id))

    def loss(self, enc_params, dec_params, x: jax.Array, task_id, key: jax.Array, mask: jax.Array | None = None):
        """L_VAE of the module docstring over the real samples of a batch x [N, ...] with values in [0, 1]
        (mask [N]); returns (L_VAE, (reconstruction, KL/D)), each a mean over the samples."""
        x = x.reshape(x.shape[0], -1)
        mu, logvar = self.encode(enc_params, x)
        z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape, mu.dtype)
        logits = self.decode(dec_params, z, task_id)
        # BCE(sigmoid(l), x) = softplus(l) − x·l, without forming sigmoid(l)
        rec = jnp.mean(jax.nn.softplus(logits) - x * logits, axis=1)
        kl = -0.5 * jnp.sum(1 + logvar - mu ** 2 - jnp.exp(logvar), axis=1) / self.in_features
        m = jnp.ones(x.shape[:1], x.dtype) if mask is None else mask.astype(x.dtype)
        mean = lambda v: jnp.sum(v * m) / jnp.maximum(jnp.sum(m), 1)
        return mean(rec) + mean(kl), (mean(rec), mean(kl))
