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

A strategy offers task inference by having a method
`eval_logits_all_tasks(state, ctx, x, mask) -> [num_tasks, B, C]` (the logits of every task's
model on a batch; HN runs its frozen part once per batch and only the stateless part per task).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def supports_task_inference(strategy) -> bool:
    """Whether `strategy` can evaluate without task ids (it has `eval_logits_all_tasks`)."""
    return callable(getattr(strategy, "eval_logits_all_tasks", None))


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


def inferred_correct(logits_per_task: jax.Array, labels: jax.Array, mask: jax.Array, task_id, num_learned,
                     temperature: float = 1.0) -> jax.Array:
    """Counts on one batch of task `task_id`: int32 [2] = (class-incremental correct, task inferred right).

    logits_per_task [T, N, C], labels [N] (class within the task), mask [N] (real samples).
    """
    t_hat = infer_task(logits_per_task, num_learned, temperature)
    chosen = jnp.take_along_axis(logits_per_task, t_hat[None, :, None], axis=0)[0]  # [N, C]
    task_right = (t_hat == task_id) & mask
    class_right = task_right & (jnp.argmax(chosen, axis=-1) == labels)
    return jnp.stack([jnp.sum(class_right), jnp.sum(task_right)]).astype(jnp.int32)
