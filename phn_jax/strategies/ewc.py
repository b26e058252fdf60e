"""EWC: elastic weight consolidation (Kirkpatrick et al., 2017) on the multi-head ResNet, λ = 1 in the
paper (Hemati et al., Table 2), in the form of Avalanche's `EWCPlugin(mode='separate')`, which the
reference code used.

After experience t (task t), on its training data in minibatches B_1..B_S of the training batch
size (storage order, test-mode preprocessing, the model in eval mode, each sample's own head):

    F_{t,i} = (1/S) Σ_s (∂ L_CE(B_s; θ) / ∂θ_i)²       (squared minibatch gradients, averaged)
    θ*_t = θ                                             (the parameters after experience t)

While training experience t, with every earlier task kept separately:

    L(θ) = L_CE(θ) + λ · Ω(θ),   Ω(θ) = Σ_{t' < t} Σ_i F_{t',i} (θ_i − θ*_{t',i})²

Avalanche's exact form: no factor 1/2, a sum (not a mean) over parameters and tasks, importances
from the squared gradient of the *mean* minibatch loss divided by the number of minibatches, all
parameters (heads of other tasks get zero importance, which is Avalanche's "new parameters do not
count"). One departure: Avalanche's importance pass reads the training set with its train-time
augmentation; here it uses the test-time pipeline (deterministic; identical where there is no
augmentation, e.g. Split-Digits).

State: Naive's plus 'ewc': {'fisher': F, 'star': θ*, both θ-shaped pytrees with a leading
[num_tasks] axis, 'valid': bool [num_tasks] (which tasks are consolidated)}; fixed shapes, so no
experience recompiles anything.
"""
from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp

from phn_jax import data, metrics, models
from phn_jax.strategies.base import masked_cross_entropy, real_batches
from phn_jax.strategies.naive import Naive


def ewc_penalty(params, fisher, star, valid) -> jax.Array:
    """Ω(θ) = Σ_t valid_t Σ_i F_{t,i} (θ_i − θ*_{t,i})².

    params: a pytree θ; fisher, star: θ-shaped pytrees with a leading [T] axis; valid: bool [T].
    """
    w = valid.astype(jnp.float32)

    def leaf(p, f, s):
        return jnp.sum(w.reshape((-1,) + (1,) * p.ndim) * f * jnp.square(p[None] - s))

    return sum(jax.tree_util.tree_leaves(jax.tree_util.tree_map(leaf, params, fisher, star)))


@dataclasses.dataclass(frozen=True)
class EWC(Naive):
    """ewc_lambda: λ. fisher_batch_size: the minibatch size of the importance pass (Avalanche uses
    the training batch size)."""

    ewc_lambda: float = 1.0
    fisher_batch_size: int = 64

    def __post_init__(self):
        if not self.ewc_lambda >= 0:
            raise ValueError(f"strategy.ewc_lambda must be ≥ 0, got {self.ewc_lambda}")
        if self.fisher_batch_size < 1:
            raise ValueError(f"the Fisher batch size must be ≥ 1, got {self.fisher_batch_size}")

    @property
    def reg_weight(self) -> float:
        return self.ewc_lambda

    @models.compiled_init("self")
    def init(self, key):
        state = super().init(key)
        stacked = jax.tree_util.tree_map(lambda p: jnp.zeros((self.num_tasks,) + p.shape, p.dtype), state["params"])
        return {**state, "ewc": {"fisher": stacked, "star": stacked,
                                 "valid": jnp.zeros((self.num_tasks,), bool)}}

    def regularizer(self, params, state, key, first: bool):
        """Ω(θ) against every task consolidated so far: exactly 0 in the first experience, where no
        task is (so its step is the later experiences' program)."""
        return ewc_penalty(params, **state["ewc"])

    def fisher(self, params, stats, images, labels, tasks, num_valid, key, *, spec: data.Preprocess):
        """F = (1/S) Σ_s (∇θ L_CE(B_s))² over the S minibatches that hold real samples (θ-shaped)."""
        idx, mask = real_batches(images.shape[0], self.fisher_batch_size, num_valid)

        def step(carry, inputs):
            total, count = carry
            i, m, k = inputs
            x = data.preprocess(spec, k, images[i], train=False)
            ce = lambda p: masked_cross_entropy(
                self.model.logits(p, x, tasks[i], train=False, stats=stats, mask=m)[0], labels[i], m)
            add = lambda t: jax.tree_util.tree_map(lambda a, b: a + jnp.square(b), t, jax.grad(ce)(params))
            return (jax.lax.cond(m.any(), add, lambda t: t, total), count + m.any()), None  # skip pure padding

        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        (total, count), _ = jax.lax.scan(step, (zeros, jnp.zeros((), jnp.int32)),
                                         (idx, mask, jax.random.split(key, idx.shape[0])))
        return jax.tree_util.tree_map(lambda a: a / jnp.maximum(count, 1), total)

    def end_experience(self, state, task_id, train_data):
        d = train_data
        return self._consolidate(state, jnp.asarray(task_id, jnp.int32), d.images, d.labels, d.tasks, d.num_valid,
                                 d.key, spec=d.preprocess)

    @partial(jax.jit, static_argnums=0, static_argnames="spec")
    def _consolidate(self, state, task_id, images, labels, tasks, num_valid, key, *, spec):
        """F_t and θ*_t into row t of the state's stacks."""
        params = state["params"]
        f = self.fisher(params, state["stats"] or None, images, labels, tasks, num_valid, key, spec=spec)
        put = lambda stack, new: jax.tree_util.tree_map(lambda s, n: s.at[task_id].set(n), stack, new)
        ewc = state["ewc"]
        return {**state, "ewc": {"fisher": put(ewc["fisher"], f), "star": put(ewc["star"], params),
                                 "valid": ewc["valid"].at[task_id].set(True)}}

    def memory(self, state) -> dict:
        """The model, and F and θ* of the consolidated tasks (2 · tasks · |θ| values at 32 bit)."""
        n = models.count_params(state["params"])
        stored = 2 * int(jnp.sum(state["ewc"]["valid"])) * n
        return {**super().memory(state), "ewc_values": stored, "ewc_mb": metrics.hypernetwork_megabytes(stored)}
