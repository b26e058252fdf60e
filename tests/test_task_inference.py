"""Task inference by predictive entropy (HNET+ENT): the pure functions on constructed logits
(HN's logits of every task: tests/test_hn_strategy.py; the engine's metrics: tests/test_train.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phn_jax.task_inference import entropy_prediction, infer_task, inferred_correct, predictive_entropy


def constructed_logits(true_task, classes, num_tasks=3, num_classes=4):
    """[T, N, C]: task t's model is confident (logit 6 on the sample's class) only on inputs of task t
    and nearly uniform (small logits) on the others'."""
    n = len(true_task)
    rng = np.random.default_rng(0)
    logits = rng.uniform(-0.3, 0.3, (num_tasks, n, num_classes))
    for i, (t, c) in enumerate(zip(true_task, classes)):
        logits[t, i, c] += 6.0
    return jnp.asarray(logits, jnp.float32)


def test_entropy_equation():
    logits = jnp.array([[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, -1.0, 0.5]])
    p = np.exp(np.asarray(logits)) / np.exp(np.asarray(logits)).sum(-1, keepdims=True)
    np.testing.assert_allclose(predictive_entropy(logits), -(p * np.log(p)).sum(-1), rtol=1e-6)
    np.testing.assert_allclose(predictive_entropy(logits)[0], np.log(4), rtol=1e-6)  # uniform: log C
    # a temperature τ divides the logits
    np.testing.assert_allclose(predictive_entropy(logits, 2.0), predictive_entropy(logits / 2), rtol=1e-6)


def test_infers_the_confident_task_among_the_learned_ones():
    true_task = np.array([0, 0, 1, 1, 2, 2])
    logits = constructed_logits(true_task, classes=[0, 3, 1, 2, 2, 0])
    np.testing.assert_array_equal(infer_task(logits, 3), true_task)
    # after experience 2 (tasks 0, 1 learned) task 2's model is never chosen, whatever its entropy
    t_hat = infer_task(logits, 2)
    np.testing.assert_array_equal(t_hat[:4], true_task[:4])
    assert np.all(t_hat[4:] < 2)
    np.testing.assert_array_equal(infer_task(logits, 1), np.zeros(6))
    # jit with a traced number of learned tasks gives the same
    np.testing.assert_array_equal(jax.jit(infer_task)(logits, jnp.int32(2)), t_hat)
    # equal entropies: the lower task id
    np.testing.assert_array_equal(infer_task(jnp.zeros((3, 2, 4)), 3), [0, 0])


def test_counts_class_incremental_task_inference_and_domain_incremental():
    # 4 inputs of task 1: input 0 right task, right class; input 1 right task, wrong class (label 3,
    # model says 1); input 2 a wrong task (task 0's model is the confident one, and says class 0 =
    # its label: right within a task, CL2); input 3 is padding.
    true_task = np.array([1, 1, 0, 1])
    logits = constructed_logits(true_task, classes=[2, 1, 0, 0])
    labels = jnp.array([2, 3, 0, 0])
    mask = jnp.array([True, True, True, False])
    t_hat, y_hat = entropy_prediction(logits, 3)
    np.testing.assert_array_equal(t_hat[:3], [1, 1, 0])
    np.testing.assert_array_equal(y_hat[:3], [2, 1, 0])
    counts = inferred_correct(t_hat, y_hat, labels, mask, task_id=1)
    # (class-incremental correct, task inferred right, class within the task right)
    np.testing.assert_array_equal(counts, [1, 2, 2])
    # with only task 0 learned nothing is inferred as task 1
    t_hat, y_hat = entropy_prediction(logits, 1)
    np.testing.assert_array_equal(inferred_correct(t_hat, y_hat, labels, mask, 1)[:2], [0, 0])
