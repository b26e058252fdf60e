"""Task inference by predictive entropy (von Oswald et al. 2020, "HNET+ENT"): evaluation without task ids.

A test input x is run through the model of every learned task t ∈ {0..i} (after experience i),
each with its own generated weights ω_t = H_ψ(t) and its own head. The inferred task is the one
whose prediction is the most confident, i.e. of the lowest predictive entropy:

    p_t(x)  = softmax(f(x; ω_t) / τ)                 τ: softmax temperature (1 in the reference)
    H_t(x)  = −Σ_c p_t,c(x) log p_t,c(x)
    t̂(x)    = argmin_{t ≤ i} H_t(x)
    ŷ(x)    = argmax_c f(x; ω_t̂)_c                    the class within task t̂

Accuracies on experience j (task j) without its task id:
  task-inference accuracy    mean_x [t̂(x) = j]
  class-incremental accuracy mean_x [t̂(x) = j ∧ ŷ(x) = y]   (accuracy on the global label (task, class))
so class-incremental ≤ min(task-inference, task-incremental) sample by sample.

The entropy is over all C outputs of a task's head (e.g. 10 outputs for 5 classes per CIFAR
experience: the unused outputs were trained towards zero probability with the others).

and, whichever task was inferred, the class within the task ŷ(x) = y: the domain-incremental
accuracy (van de Ven & Tolias' CL2, the task neither given nor needed).

A strategy evaluates without task ids by having a method
`predict_without_task_id(state, ctx, x, mask, num_learned) -> (t̂ [B], ŷ [B])` (HN: `entropy_prediction`
of the logits of every task's model; HNET+TIR and HNET+R: `phn_jax.strategies.replay`), and says which
of the matrices `metrics.WITHOUT_TASK_IDS` its predictions make in `without_task_ids` (default: all).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from phn_jax.metrics import WITHOUT_TASK_IDS


def supports_task_inference(strategy) -> bool:
    """Whether `strategy` can evaluate without task ids (it has `predict_without_task_id`)."""
    return callable(getattr(strategy, "predict_without_task_id", None))


def matrices_without_task_ids(strategy) -> tuple[str, ...]:
    """The matrices of `metrics.WITHOUT_TASK_IDS` that `strategy`'s predictions without task ids make
    (its `without_task_ids`; all of them by default); () when it cannot evaluate without task ids."""
    if not supports_task_inference(strategy):
        return ()
    names = tuple(getattr(strategy, "without_task_ids", WITHOUT_TASK_IDS))
    assert set(names) <= set(WITHOUT_TASK_IDS), names
    return names


def predictive_entropy(logits: jax.Array, temperature: float = 1.0) -> jax.Array:
    """H = −Σ_c p_c log p_c with p = softmax(logits / τ) over the last axis: [..., C] -> [...]."""
    log_p = jax.nn.log_softmax(logits / temperature, axis=-1)
    return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


def infer_task(logits_per_task: jax.Array, num_learned, temperature: float = 1.0) -> jax.Array:
    """t̂(x) = argmin_{t < num_learned} H(softmax(logits_per_task[t, x] / τ)): [T, N, C] -> int32 [N].

    num_learned (may be traced): the tasks learned so far, 0..num_learned−1; the others' rows are
    ignored. Ties go to the lower task id.
    """
    entropy = predictive_entropy(logits_per_task, temperature)  # [T, N]
    learned = jnp.arange(logits_per_task.shape[0])[:, None] < num_learned
    return jnp.argmin(jnp.where(learned, entropy, jnp.inf), axis=0).astype(jnp.int32)


def entropy_prediction(logits_per_task: jax.Array, num_learned, temperature: float = 1.0):
    """(t̂, ŷ) of HNET+ENT: the task of the lowest predictive entropy among the learned ones and the class
    its model predicts: [T, N, C] -> (int32 [N], int32 [N])."""
    t_hat = infer_task(logits_per_task, num_learned, temperature)
    return t_hat, class_of(logits_per_task, t_hat)


def class_of(logits_per_task: jax.Array, task_hat: jax.Array) -> jax.Array:
    """ŷ = argmax_c of each sample's model of its inferred task: [T, N, C], t̂ [N] -> int32 [N]."""
    chosen = jnp.take_along_axis(logits_per_task, task_hat[None, :, None], axis=0)[0]  # [N, C]
    return jnp.argmax(chosen, axis=-1).astype(jnp.int32)


def inferred_correct(task_hat: jax.Array, class_hat: jax.Array, labels: jax.Array, mask: jax.Array,
                     task_id) -> jax.Array:
    """Counts on one batch of task `task_id` from the predictions without its id (t̂, ŷ, each [N]):
    int32 [3] in the order of `metrics.WITHOUT_TASK_IDS` = (class-incremental right: t̂ = task_id and
    ŷ = y; task inferred right: t̂ = task_id; domain-incremental right: ŷ = y). labels [N]: the class
    within the task; mask [N]: the real samples."""
    task_right = (task_hat == task_id) & mask
    class_right = (class_hat == labels) & mask
    counts = {"class_incremental": task_right & class_right, "task_inference": task_right,
              "domain_incremental": class_right}
    return jnp.stack([jnp.sum(counts[m]) for m in WITHOUT_TASK_IDS]).astype(jnp.int32)


class ByEntropy:
    """A strategy's `predict_without_task_id` by predictive entropy (HNET+ENT), from its
    `eval_logits_all_tasks(state, ctx, x, mask) -> [T, B, C]` (HN, the multi-head baselines)."""

    def predict_without_task_id(self, state, ctx, x, mask, num_learned):
        """(t̂ [B], ŷ [B]): `entropy_prediction` of every task's logits."""
        return entropy_prediction(self.eval_logits_all_tasks(state, ctx, x, mask), num_learned)
