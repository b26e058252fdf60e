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

Every consolidated task's penalty is merged into one quadratic, the same function of θ:

    Ω(θ) = Σ_i A_i (θ_i − μ_i)² + K,   A = Σ_{t'} F_{t'},  μ = Σ_{t'} F_{t'} θ*_{t'} / A,  K = Σ_{t'} Σ_i F_{t',i} (θ*_{t',i} − μ_i)²

(the parallel-axis identity; μ_i = 0 where A_i = 0), so a step reads 2|θ| values, not 2·tasks·|θ|
as Avalanche's per-task sum does. `consolidate` adds a task to (A, μ, K).

State: Naive's plus 'ewc': {'importance': A, 'center': μ (θ-shaped pytrees), 'offset': K (scalar)};
all zero before the first consolidation (Ω = 0); fixed shapes, so no experience recompiles anything.
"""
from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp

from phn_jax import data, metrics, models
from phn_jax.runtime import compiled_init, float_dtype
from phn_jax.strategies.base import masked_cross_entropy, real_batches
from phn_jax.strategies.naive import Naive


def ewc_penalty(params, importance, center, offset) -> jax.Array:
    """Ω(θ) = Σ_i A_i (θ_i − μ_i)² + K (= Σ_{t'} Σ_i F_{t',i} (θ_i − θ*_{t',i})² over the consolidated tasks).

    params, importance A, center μ: pytrees of θ's structure; offset K: a scalar.
    """
    leaf = lambda p, a, m: jnp.sum(a * jnp.square(p - m))
    return sum(jax.tree_util.tree_leaves(jax.tree_util.tree_map(leaf, params, importance, center))) + offset


def consolidate(ewc: dict, fisher, star) -> dict:
    """(A, μ, K) with one more task's importances F and parameters θ* merged in:

        A' = A + F,   δ = θ* − μ,   μ' = μ + (F / A') δ,   K' = K + Σ_i (A_i F_i / A'_i) δ_i²

    (terms with A'_i = 0 are 0), so that A'(θ − μ')² + K' = A(θ − μ)² + K + F(θ − θ*)² for every θ.
    """
    def merge(a, m, f, s):
        a_new = a + f
        share = jnp.where(a_new > 0, f / jnp.where(a_new > 0, a_new, 1), 0)  # F / A'
        delta = s - m
        return a_new, m + share * delta, jnp.sum(a * share * jnp.square(delta))

    merged = jax.tree_util.tree_map(merge, ewc["importance"], ewc["center"], fisher, star)
    parts = lambda i: jax.tree_util.tree_map(lambda _, t: t[i], ewc["importance"], merged)
    return {"importance": parts(0), "center": parts(1),
            "offset": ewc["offset"] + sum(jax.tree_util.tree_leaves(parts(2)))}


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

    @compiled_init("self")
    def init(self, key):
        state = super().init(key)
        zeros = jax.tree_util.tree_map(jnp.zeros_like, state["params"])
        return {**state, "ewc": {"importance": zeros, "center": zeros, "offset": jnp.zeros((), float_dtype())}}

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
        return self._consolidate(state, d.images, d.labels, d.tasks, d.num_valid,
                                 d.key, spec=d.preprocess)

    @partial(jax.jit, static_argnums=0, static_argnames="spec")
    def _consolidate(self, state, images, labels, tasks, num_valid, key, *, spec):
        """F_t and θ*_t = θ merged into the penalty (`consolidate`)."""
        params = state["params"]
        f = self.fisher(params, state["stats"] or None, images, labels, tasks, num_valid, key, spec=spec)
        return {**state, "ewc": consolidate(state["ewc"], f, params)}

    def memory(self, state) -> dict:
        """The model, and the merged penalty's A, μ and K (2 · |θ| + 1 values at 32 bit, for any number of tasks)."""
        n = models.count_params(state["params"])
        stored = 2 * n + 1
        return {**super().memory(state), "ewc_values": stored, "ewc_mb": metrics.hypernetwork_megabytes(stored)}
