"""Naive: fine-tuning of the multi-head slim ResNet-18 (one classifier head per task), the paper's
lower baseline, and the training step the other multi-head baselines (EWC, LR-k, Joint) extend.

Every experience trains the network with cross-entropy and Adam (reset at each experience, as for
HN); nothing protects earlier tasks. The step, for a batch of samples (x_n, y_n, t_n):

    L(θ) = L_CE(θ) + c · R(θ),    L_CE = mean_n CE(f(x_n; θ)[head t_n], y_n)

where Naive has c = 0; a subclass gives the regulariser R (`regularizer`, e.g. EWC's penalty or
LR's replay loss) and its weight c (`reg_weight`), and may freeze the trunk at a depth k
(`frozen_depth`: stem + stages 1..k get no gradient and no update; LR-k after experience 1).

State pytree: {'params': θ (the uncut ResNet's params with 'classifier' {'kernel': [T, D, C],
'bias': [T, C]}), 'opt': Adam state, 'stats': running statistics (norm='batchnorm') or {}}, plus
what a subclass adds.
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import ClassVar

import jax
import jax.numpy as jnp
import optax

from phn_jax import lookahead, metrics, models
from phn_jax.runtime import compiled_init
from phn_jax.strategies.base import masked_correct, masked_cross_entropy
from phn_jax.strategies.multihead import MultiHeadResNet
from phn_jax.task_inference import ByEntropy


@dataclasses.dataclass(frozen=True)
class Naive(ByEntropy):
    """Multi-head fine-tuning. model: the multi-head ResNet; lr, eps_root, adam_eps: Adam's (`lookahead.adam`)."""

    model: MultiHeadResNet
    lr: float = 1e-3
    eps_root: float = 0.0
    adam_eps: str = "v_hat"

    cumulative: ClassVar[bool] = False  # Joint: train experience t on the union of experiences 0..t
    # Whether the first experience's step is a program of its own (LR-k: the trunk trains only then); when
    # False, one compiled step serves every experience.
    first_step_differs: ClassVar[bool] = False
    FROZEN_PARAMS: ClassVar[str] = "params"  # the state entry holding the network (its stem, stages 1..k: LR-k's trunk)

    @property
    def num_tasks(self) -> int:
        return self.model.num_tasks

    @property
    def optimizer(self) -> optax.GradientTransformation:
        return lookahead.adam(self.lr, eps_root=self.eps_root, eps_on=self.adam_eps)

    @property
    def reg_weight(self) -> float:
        """c, the weight of `regularizer` in the loss (Naive: 0)."""
        return 0.0

    def frozen_depth(self, first: bool) -> int:
        """The freeze depth k of this experience's step (0: everything trains)."""
        return 0

    def regularizer(self, params, state, key, first: bool) -> jax.Array:
        """R(θ), unweighted; Naive has none."""
        return jnp.zeros(())

    @compiled_init("self")
    def init(self, key: jax.Array):
        params, stats = self.model.init(key)
        return {"params": params, "opt": self.optimizer.init(params), "stats": stats or {}}

    @partial(jax.jit, static_argnums=0)
    def begin_experience(self, state, task_id):
        return {**state, "opt": self.optimizer.init(state["params"])}

    def end_experience(self, state, task_id, train_data):
        return state

    def train_step(self, state, batch, key, task_id, first: bool):
        """One Adam step on L = L_CE + c·R; batch['task'] (optional, [B]) picks each sample's head."""
        x, y, mask = batch["x"], batch["y"], batch["mask"]
        task = batch.get("task", task_id)
        depth = self.frozen_depth(first)

        def loss_fn(params):
            logits, new_stats = self.model.logits(params, x, task, train=True, stats=state["stats"] or None,
                                                  mask=mask, freeze_depth=depth)
            ce = masked_cross_entropy(logits, y, mask)
            reg = self.regularizer(params, state, key, first)
            return ce + self.reg_weight * reg, (ce, reg, new_stats, logits)

        (loss, (ce, reg, new_stats, logits)), g = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt = self.optimizer.update(g, state["opt"], state["params"])
        frozen, _ = models.part_names(depth)
        updates = {n: jax.tree_util.tree_map(jnp.zeros_like, u) if n in frozen else u for n, u in updates.items()}
        new_state = {**state, "params": optax.apply_updates(state["params"], updates), "opt": opt,
                     "stats": new_stats or {}}
        return new_state, {"loss": loss, "ce": ce, "reg": reg, "cos_g1_g2": jnp.zeros(()),
                           "correct": masked_correct(logits, y, mask), "count": jnp.sum(mask)}

    def eval_context(self, state):
        return None

    def eval_logits(self, state, context, x, mask, task_id):
        return self.model.logits(state["params"], x, task_id, train=False, stats=state["stats"] or None,
                                 mask=mask)[0]

    def eval_logits_all_tasks(self, state, context, x, mask):
        """[T, B, C]: every task's head on x, for evaluation without task ids (entropy task inference)."""
        return self.model.logits_all_tasks(state["params"], x, stats=state["stats"] or None, mask=mask)

    def memory(self, state) -> dict:
        n = models.count_params(state["params"])
        return {"model_params": n, "model_mb": metrics.hypernetwork_megabytes(n)}
