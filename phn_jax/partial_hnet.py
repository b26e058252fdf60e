"""The partial hypernetwork model of the paper (Eqs. 2-4): ŷ = h(g(x; φ); H_ψ(t)).

g_φ is the frozen part of the slim ResNet-18 at freeze depth k (trained on the first experience,
then frozen); h_ω its stateless part whose weights ω = H_ψ(t) the hypernetwork generates once per
(task, step), never once per sample. φ and ψ are separate pytrees; so are the running statistics
of the conventional-BatchNorm option (frozen part: one set; generated part: one set per task).

The target may instead be von Oswald et al.'s fully connected network (`models.MLPConfig`): then
k = 0, g is the identity (φ = {}), and H_ψ(t) generates every layer; h_ω(z) is the MLP's head t.
Or a user's Flax modules (`flax_modules.FlaxNetwork`, model.arch='flax'): H_ψ(t) generates the module
h; g is a second module (k = 1) or the identity (k = 0); no running statistics.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from phn_jax import models
from phn_jax.flax_modules import FlaxNetwork
from phn_jax.runtime import compiled_init
from phn_jax.hypernetwork import ChunkedHypernetwork, Hypernetwork, build_hypernetwork


@dataclasses.dataclass(frozen=True)
class PartialHypernetwork:
    """Static description of HN-k: the target network (a ResNet, or an MLP at k = 0), the freeze
    depth k, the norm mode (the ResNet's; the MLP has no norm layers) and H_ψ."""

    net: models.ResNetConfig | models.MLPConfig | FlaxNetwork
    freeze_depth: int
    hnet: Hypernetwork | ChunkedHypernetwork
    norm: str = "reference"

    @classmethod
    def create(cls, net: models.ResNetConfig | models.MLPConfig | FlaxNetwork, freeze_depth: int, num_tasks: int,
               norm: str = "reference", kind: str = "heads", **hnet_kwargs) -> "PartialHypernetwork":
        """Builds H_ψ of `kind` ('heads' | 'chunked', see `build_hypernetwork`) for the stateless
        part's parameter shapes at depth k (from eval_shape: no FLOPs). An MLP target needs k = 0; a
        user's modules k = 1 (with a frozen module) or 0."""
        models.check_norm(norm)
        if isinstance(net, FlaxNetwork):
            if norm != "reference":
                raise ValueError(f"model.norm={norm!r}: a user's module (model.arch='flax') normalises as it does, "
                                 "without running statistics; leave model.norm at 'reference'")
            k = net.check_freeze_depth(freeze_depth)
            if k != net.has_frozen_part:
                raise ValueError(f"freeze depth k={k}: HN with a user's modules freezes g_φ, model.frozen_module, "
                                 "after experience 1, so k must be 1 with one and 0 without")
            return cls(net, k, build_hypernetwork(kind, net.generated_shapes(), num_tasks, (), **hnet_kwargs), norm)
        k = models.check_freeze_depth(freeze_depth)
        mlp = isinstance(net, models.MLPConfig)
        if mlp and k != 0:
            raise ValueError(f"the MLP target has no frozen part: freeze depth k={k} must be 0 (the hypernetwork "
                             "generates every layer); use the ResNet for k ≥ 1")
        shapes = jax.eval_shape(lambda: cls._init_net(jax.random.key(0), net))
        omega_shapes = shapes if mlp else models.split_params(shapes, k)[1]
        layer_order = tuple(name for name, _, _ in net.layers()) if mlp else ()
        return cls(net, k, build_hypernetwork(kind, omega_shapes, num_tasks, layer_order, **hnet_kwargs), norm)

    @staticmethod
    def _init_net(key, net) -> dict:
        return models.init_mlp(key, net) if isinstance(net, models.MLPConfig) else models.init_resnet(key, net)

    @property
    def is_mlp(self) -> bool:
        return isinstance(self.net, models.MLPConfig)

    @property
    def is_flax(self) -> bool:
        """A user's modules (`FlaxNetwork`)."""
        return isinstance(self.net, FlaxNetwork)

    @compiled_init("self")
    def init(self, key: jax.Array) -> tuple[dict, dict]:
        """(φ, ψ): the frozen part's initial weights ({} for the MLP) and the hypernetwork's."""
        k_model, k_hnet = jax.random.split(key)
        if self.is_flax:
            return self.net.init_frozen(k_model), self.hnet.init(k_hnet)
        phi = {} if self.is_mlp else models.split_params(self._init_net(k_model, self.net), self.freeze_depth)[0]
        return phi, self.hnet.init(k_hnet)

    def init_stats(self, phi) -> dict[str, Any] | None:
        """Running statistics for norm='batchnorm': {'frozen': φ's, 'stateless': [num_tasks, ...]}
        (None for the MLP, which has no norm layers)."""
        if self.norm != "batchnorm" or self.is_mlp or self.is_flax:
            return None
        omega = jax.eval_shape(self.hnet.apply, self.hnet.init(jax.random.key(0)), 0)
        per_task = models.init_batch_stats(jax.tree_util.tree_map(jnp.zeros_like, omega))
        return {"frozen": models.init_batch_stats(phi),
                "stateless": jax.tree_util.tree_map(
                    lambda s: jnp.broadcast_to(s, (self.hnet.num_tasks,) + s.shape), per_task)}

    def features(self, phi, x, *, train: bool, stats=None, freeze: bool = False, mask=None):
        """z = g_φ(x): [N, H, W, 3] -> [N, H', W', C_k].

        freeze=True: no gradient reaches φ, and with conventional BatchNorm the frozen part runs in
        eval mode (its running statistics are frozen with it). Reference norm uses batch
        statistics either way.
        """
        if self.is_mlp:  # g = identity
            return x, None
        if freeze:
            phi, train = jax.lax.stop_gradient(phi), False
        if self.is_flax:
            return self.net.features(phi, x), None
        z, new = models.frozen_apply(phi, x, self.freeze_depth, self.net, norm=self.norm, train=train,
                                     stats=stats and stats["frozen"], mask=mask)
        return z, new

    def head(self, omega, z, task_id, *, train: bool, stats=None, mask=None):
        """logits = h_ω(z) with the generated ω of task `task_id` (scalar); [N, C]. The MLP's: its
        head `task_id` (`models.mlp_apply`)."""
        if self.is_mlp:
            return models.mlp_apply(omega, z, self.net, task_id), None
        if self.is_flax:
            return self.net.apply_generated(omega, z, task_id), None
        s_t = stats and jax.tree_util.tree_map(lambda s: s[task_id], stats["stateless"])
        logits, new_t = models.stateless_apply(omega, z, self.freeze_depth, self.net, norm=self.norm,
                                               train=train, stats=s_t, mask=mask)
        new = stats and jax.tree_util.tree_map(lambda s, n: s.at[task_id].set(n), stats["stateless"], new_t)
        return logits, new

    def logits(self, phi, psi, x, task_id, *, train: bool, stats=None, freeze: bool = False, mask=None):
        """ŷ = h(g(x; φ); H_ψ(t)) for a batch of one task: x [N,H,W,3], scalar t -> ([N, C], new_stats).

        mask [N] marks the real samples of a padded batch (batch statistics ignore the rest).
        """
        z, s_frozen = self.features(phi, x, train=train, stats=stats, freeze=freeze, mask=mask)
        logits, s_stateless = self.head(self.hnet.apply(psi, task_id), z, task_id, train=train, stats=stats,
                                        mask=mask)
        return logits, (stats and {"frozen": s_frozen, "stateless": s_stateless})

    def generate_all(self, psi, task_ids: jax.Array):
        """ω for a vector of task ids at once: every leaf gets a leading [len(task_ids)] axis."""
        return jax.vmap(self.hnet.apply, in_axes=(None, 0))(psi, task_ids)
