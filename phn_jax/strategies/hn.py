"""HN-k: the partial hypernetwork strategy of Hemati et al. (Algorithm 1; docs/design.md §1).

Experience 1 (task 0): plain cross-entropy on φ (the frozen-to-be part) and ψ (Eqs. 5-6).
Experience i ≥ 2: φ frozen. Before the experience, snapshot T_j = H_ψ*(j) for every task (only
j < t are used, so the targets are computed once, not by a frozen copy at every step: same
values), and initialise the new task embedding as a copy of the previous one. Each step
applies the look-ahead gradient of `phn_jax.lookahead` to ψ with Adam.

State pytree: {'phi': φ, 'psi': ψ, 'opt': {'phi': Adam state, 'psi': Adam state},
'targets': ω of every task at the snapshot, in the hypernetwork's factored form (`snapshot`;
a conv head holds (num_tasks + C_out)·kh·kw·C_in values, not num_tasks·|ω|), 'stats': running
statistics (norm='batchnorm') or {}}. Adam's state is reset at the start of every experience,
as Avalanche's `reset_optimizer` did for the reference code.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar
from functools import partial

import jax
import jax.numpy as jnp
import optax

from phn_jax import lookahead, metrics
from phn_jax.task_inference import ByEntropy
from phn_jax.partial_hnet import PartialHypernetwork
from phn_jax.runtime import compiled_init, float_dtype
from phn_jax.strategies.base import masked_correct, masked_cross_entropy


@dataclasses.dataclass(frozen=True)
class HN(ByEntropy):
    """Static configuration of HN-k (hashable: a static argument of the jitted steps).

    beta: β of the output regulariser (0.5 in the paper). order: 'none' | 'first' | 'second'.
    combine: 'sum' (reference code) | 'mean' (Eq. 10). lookahead_step: 'sgd' | 'optimizer' |
    'hypercl' (`lookahead.LOOKAHEAD_STEPS`). adam_eps: where Adam adds ε, 'v_hat' (optax) | 'v' (PyTorch ≤ 1.2:
    `lookahead.adam`).
    reg_subset: regularise a random subset of this many previous tasks per step (0: all).
    reg_reduce: 'mean' over the regularised tasks (reference code) | 'sum' (the paper's Eq. 7).
    train_old_embeddings: old task embeddings stay trainable (reference) or are held fixed.
    copy_embedding: initialise the new task's embedding from the previous one (reference).
    input_shape: (H, W, C) of the model input; with it `memory` also reports the replay buffer a
    latent-replay run at the same freeze depth would need (the paper's Table 6 comparison).
    buffer_size: that buffer's number of samples (200 for CIFAR, 400 for TinyImageNet in the paper).
    """

    model: PartialHypernetwork
    lr: float = 1e-3
    eps_root: float = 0.0
    adam_eps: str = "v_hat"
    beta: float = 0.5
    order: str = "first"
    combine: str = "sum"
    lookahead_step: str = "sgd"
    reg_subset: int = 0
    reg_reduce: str = "mean"
    train_old_embeddings: bool = True
    copy_embedding: bool = True
    input_shape: tuple[int, int, int] | None = None
    buffer_size: int = 200

    first_step_differs: ClassVar[bool] = True  # experience 1 trains φ, without the regulariser
    FROZEN_PARAMS: ClassVar[str] = "phi"  # the state entry holding g_φ's modules (stem, stages 1..k)

    def __post_init__(self):
        if self.order not in lookahead.ORDERS:
            raise ValueError(f"order must be one of {lookahead.ORDERS}, got {self.order!r}")
        if self.combine not in lookahead.COMBINES:
            raise ValueError(f"combine must be one of {lookahead.COMBINES}, got {self.combine!r}")
        if self.reg_reduce not in lookahead.REG_REDUCES:
            raise ValueError(f"reg_reduce must be one of {lookahead.REG_REDUCES}, got {self.reg_reduce!r}")
        if self.adam_eps not in lookahead.ADAM_EPS:
            raise ValueError(f"adam_eps must be one of {lookahead.ADAM_EPS}, got {self.adam_eps!r}")
        if self.lookahead_step not in lookahead.LOOKAHEAD_STEPS:
            raise ValueError(f"lookahead_step must be one of {lookahead.LOOKAHEAD_STEPS}, got {self.lookahead_step!r}")
        if self.order == "second" and self.lookahead_step != "sgd" and self.eps_root <= 0:
            raise ValueError("second-order look-ahead through Adam needs eps_root > 0 (the gradient of √v at "
                             "v = 0 is infinite): set e.g. --config.optim.eps_root=1e-8")

    @property
    def num_tasks(self) -> int:
        return self.model.hnet.num_tasks

    @property
    def optimizer(self) -> optax.GradientTransformation:
        return lookahead.adam(self.lr, eps_root=self.eps_root, eps_on=self.adam_eps)

    def _reset_optimizer(self, state):
        return {**state, "opt": {"phi": self.optimizer.init(state["phi"]), "psi": self.optimizer.init(state["psi"])}}

    @compiled_init("self")
    def init(self, key: jax.Array):
        phi, psi = self.model.init(key)
        targets = jax.eval_shape(self.model.hnet.snapshot, psi)
        state = {"phi": phi, "psi": psi, "targets": jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), targets),
                 "stats": self.model.init_stats(phi) or {}}
        return self._reset_optimizer(state)

    @partial(jax.jit, static_argnums=0)
    def begin_experience(self, state, task_id):
        """Fresh Adam state; from task 1 on: targets T_j = H_ψ*(j) and e_t ← e_{t-1}."""
        psi = state["psi"]
        targets = self.model.hnet.snapshot(psi)
        if self.copy_embedding:
            emb = psi["embeddings"]
            psi = {**psi, "embeddings": jnp.where(task_id > 0, emb.at[task_id].set(emb[task_id - 1]), emb)}
        return self._reset_optimizer({**state, "psi": psi, "targets": targets})

    def end_experience(self, state, task_id, train_data):
        return state

    def virtual_step(self, opt_state):
        """ψ ↦ ψ' of the look-ahead (`lookahead_step`), from ψ's Adam state `opt_state`."""
        if self.lookahead_step == "sgd":
            return lookahead.sgd_step(self.lr)
        if self.lookahead_step == "hypercl":
            return lookahead.hypercl_adam_step(self.lr, opt_state, eps_root=self.eps_root)
        return lookahead.optimizer_step(self.optimizer, opt_state)

    def regularizer(self, psi, targets, weights):
        """L_H(ψ) against the snapshot targets (see `lookahead.output_regularizer`): Σ_j w_j ‖H_ψ(j) − T_j‖²₂,
        from the hypernetwork's factored outputs (`Hypernetwork.sq_distances`)."""
        return lookahead.output_regularizer(self.model.hnet.sq_distances(psi, targets), weights)

    def train_step(self, state, batch, key, task_id, first: bool):
        phi, psi, stats = state["phi"], state["psi"], state["stats"] or None
        x, y, mask = batch["x"], batch["y"], batch["mask"]

        def ce_fn(phi, psi, freeze):
            logits, new_stats = self.model.logits(phi, psi, x, task_id, train=True, stats=stats, freeze=freeze,
                                                  mask=mask)
            return masked_cross_entropy(logits, y, mask), (new_stats, logits)

        if first:
            (ce, (new_stats, logits)), (g_phi, g_psi) = jax.value_and_grad(
                ce_fn, argnums=(0, 1), has_aux=True)(phi, psi, False)
            reg = cos = jnp.zeros(())
            g = {"phi": g_phi, "psi": g_psi}
        else:
            weights = lookahead.regularized_task_weights(key, task_id, self.num_tasks, self.reg_subset,
                                                         self.reg_reduce)
            virtual = self.virtual_step(state["opt"]["psi"])
            res = lookahead.lookahead_gradient(
                lambda p: ce_fn(phi, p, True), lambda p: self.regularizer(p, state["targets"], weights), psi,
                beta=self.beta, order=self.order, combine=self.combine, virtual_step=virtual)
            ce, reg, cos, (new_stats, logits), g_psi = res.ce, res.reg, res.cos, res.aux, res.grad
            if not self.train_old_embeddings:  # only the current task's embedding moves
                g_psi = lookahead.current_embedding_only(g_psi, task_id)
            g = {"psi": g_psi}
        # φ is trained on the first experience only; once frozen it gets no update and its Adam
        # state stays as it was.
        new_state = {**state, "stats": new_stats or {}, "opt": dict(state["opt"])}
        for part, grad in g.items():
            updates, new_state["opt"][part] = self.optimizer.update(grad, state["opt"][part], state[part])
            new_state[part] = optax.apply_updates(state[part], updates)
        step_metrics = {"loss": ce + self.beta * reg, "ce": ce, "reg": reg, "cos_g1_g2": cos,
                        "correct": masked_correct(logits, y, mask), "count": jnp.sum(mask)}
        return new_state, step_metrics

    def eval_context(self, state):
        """ω of every task at once (vmapped over task ids): leaves [num_tasks, ...]."""
        return self.model.generate_all(state["psi"], jnp.arange(self.num_tasks))

    def eval_logits(self, state, omega_all, x, mask, task_id):
        stats = state["stats"] or None
        z, _ = self.model.features(state["phi"], x, train=False, stats=stats, mask=mask)
        omega = jax.tree_util.tree_map(lambda w: w[task_id], omega_all)
        logits, _ = self.model.head(omega, z, task_id, train=False, stats=stats, mask=mask)
        return logits

    def eval_logits_all_tasks(self, state, omega_all, x, mask):
        """Logits of every task's model on one batch: [num_tasks, B, C] (task inference).

        The frozen part g_φ runs once (its reference normalisation uses this batch's statistics,
        whichever task is asked); only the stateless part h_ω runs per task, vmapped over the
        weights of all tasks generated once by `eval_context`.
        """
        stats = state["stats"] or None
        z, _ = self.model.features(state["phi"], x, train=False, stats=stats, mask=mask)
        head = lambda omega, t: self.model.head(omega, z, t, train=False, stats=stats, mask=mask)[0]
        return jax.vmap(head)(omega_all, jnp.arange(self.num_tasks))

    def memory(self, state) -> dict:
        """|ψ| and its MB at 32 bit; with `input_shape`, also the buffer of a latent-replay run at the
        same freeze depth: `buffer_size` samples of the frozen part's output shape (Table 6)."""
        n = self.model.hnet.num_params()
        mem = {"hypernetwork_params": n, "hypernetwork_mb": metrics.hypernetwork_megabytes(n)}
        if self.input_shape is not None:
            x = jax.ShapeDtypeStruct((1,) + tuple(self.input_shape), float_dtype())
            z = jax.eval_shape(lambda phi, x: self.model.features(phi, x, train=False)[0], state["phi"], x)
            mem.update(metrics.replay_buffer_memory(self.buffer_size, z.shape[1:]))
        return mem
