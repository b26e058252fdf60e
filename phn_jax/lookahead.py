"""The output regulariser of the hypernetwork and the look-ahead gradient (Hemati et al. §3, Eqs. 7-10;
von Oswald et al. 2020).

    L_H(ψ) = (1/|S|) Σ_{j∈S} ‖T_j − H_ψ(j)‖²₂          T_j = H_ψ*(j), ψ* the snapshot before the experience

(reduce='mean', the reference code's average over the regularised tasks S; reduce='sum' drops
the 1/|S|, the paper's Eq. 7: Σ_{j<t} ‖T_j − H_ψ(j)‖²₂, which grows with the number of tasks.)

Look-ahead with the cross-entropy L_CE of the current batch:

    g1 = ∇ψ L_CE(ψ)                                   (Eq. 8)
    ψ' = ψ − α g1            lookahead_step='sgd'     (the reference code: a plain SGD step, α = lr)
    ψ' = ψ + Δ(g1)           lookahead_step='optimizer' (the optimizer's update, its state not
                                                     advanced; Adam: Δ = −α m̂/(√v̂ + ε))
    ψ' = ψ + Δ_h(g1)         lookahead_step='hypercl'  (von Oswald et al.'s code, hypercl's
                             `utils/optim_step.py adam_step`: Adam's update with ε on the uncorrected
                             √v, Δ_h = −α √(1−β₂ᵏ)/(1−β₁ᵏ) · m/(√v + ε), k the step it would be)
    g2 = ∇ψ [β L_H(ψ')]                               (Eq. 9)
    order='first':  g1 is a constant in ψ', so g2 = β ∇L_H(ψ') (∂ψ'/∂ψ = I)
    order='second': g2 differentiates through g1 exactly (jax.grad of a function that calls
                    jax.grad), g2 = (I − α ∇²L_CE(ψ)) β ∇L_H(ψ') for the SGD step
    g = g1 + g2              combine='sum'  (the reference code: one backward of L_CE + β L_H(ψ'))
    g = (g1 + g2) / 2        combine='mean' (the paper's Eq. 10)
    order='none':   no look-ahead, g = ∇ψ [L_CE(ψ) + β L_H(ψ)] = g1 + β ∇L_H(ψ) (combine ignored).

Through Adam the second order needs `eps_root > 0` (the derivative of √v at v = 0 is infinite).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from phn_jax.runtime import float_dtype

ORDERS = ("none", "first", "second")
COMBINES = ("sum", "mean")
LOOKAHEAD_STEPS = ("sgd", "optimizer", "hypercl")
REG_REDUCES = ("mean", "sum")


def output_regularizer(sq_distances: jax.Array, weights: jax.Array) -> jax.Array:
    """L_H = Σ_j w_j ‖T_j − H_ψ(j)‖²₂ from the distances d_j = ‖T_j − H_ψ(j)‖²₂ of every task j.

    sq_distances [num_tasks]: the hypernetwork's `sq_distances(ψ, targets)` (or
    `hypernetwork.output_sq_distances` of full outputs); weights [num_tasks]: 1/|S| for the
    regularised tasks S, 0 for the others.
    """
    return jnp.sum(weights * sq_distances)


def regularized_task_weights(key: jax.Array, task_id: jax.Array, num_tasks: int, subset: int = 0,
                             reduce: str = "mean") -> jax.Array:
    """[num_tasks] weights on S ⊆ {j < task_id}, 0 elsewhere: 1/|S| (reduce='mean', the reference
    code) or 1 (reduce='sum', the paper's Eq. 7).

    subset = 0: S is every previous task; subset = n > 0: a uniformly random subset of
    min(n, task_id) previous tasks (the reference code's `hnet_reg_ntasks`), drawn with `key`.
    """
    prev = jnp.arange(num_tasks) < task_id
    if subset > 0:
        scores = jnp.where(prev, jax.random.uniform(key, (num_tasks,), jnp.float32), jnp.inf)
        rank = jnp.argsort(jnp.argsort(scores))
        prev = prev & (rank < subset)
    if reduce not in REG_REDUCES:
        raise ValueError(f"reduce must be one of {REG_REDUCES}, got {reduce!r}")
    return prev / jnp.maximum(prev.sum(), 1) if reduce == "mean" else prev.astype(float_dtype())


def current_embedding_only(g_psi, task_id):
    """ψ's gradient with the task embeddings' rows zeroed but row `task_id`: only the current task's
    embedding moves (the old ones stay as they were learned; von Oswald et al.'s recipe)."""
    keep = (jnp.arange(g_psi["embeddings"].shape[0]) == task_id)[:, None]
    return {**g_psi, "embeddings": g_psi["embeddings"] * keep}


def tree_cosine(a, b) -> jax.Array:
    """cos(a, b) of two pytrees seen as flat vectors (0 when either is zero)."""
    dot = sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
    norm = optax.global_norm(a) * optax.global_norm(b)
    return jnp.where(norm > 0, dot / jnp.where(norm > 0, norm, 1.0), 0.0)


class LookaheadResult(NamedTuple):
    grad: object        # g, the gradient to apply, same pytree as ψ
    g1: object          # ∇L_CE(ψ)
    g2: object          # ∇[β L_H(ψ')] (order='none': β ∇L_H(ψ))
    ce: jax.Array       # L_CE(ψ)
    reg: jax.Array      # L_H(ψ') (L_H(ψ) for order='none')
    aux: object         # the cross-entropy function's aux output at ψ
    cos: jax.Array      # cos(g1, g2), logged (negative: the paper's Fig. 12)


def lookahead_gradient(ce_fn: Callable, reg_fn: Callable, psi, *, beta: float, order: str = "first",
                       combine: str = "sum", virtual_step: Callable | None = None) -> LookaheadResult:
    """The look-ahead gradient of the module docstring.

    ce_fn(ψ) -> (L_CE, aux); reg_fn(ψ) -> L_H; virtual_step(ψ, g1) -> ψ' (default: SGD with α = 1e-3,
    see `sgd_step` / `optimizer_step`). `order`, `combine` are static.
    """
    if order not in ORDERS or combine not in COMBINES:
        raise ValueError(f"order must be one of {ORDERS} and combine one of {COMBINES}; got {order!r}, {combine!r}")
    virtual_step = virtual_step or sgd_step(1e-3)
    if order == "none":  # g = ∇L_CE(ψ) + β ∇L_H(ψ): the regulariser at ψ itself
        (ce, aux), g1 = jax.value_and_grad(ce_fn, has_aux=True)(psi)
        reg, g_reg = jax.value_and_grad(reg_fn)(psi)
        g2 = jax.tree_util.tree_map(lambda g: beta * g, g_reg)
        g = jax.tree_util.tree_map(jnp.add, g1, g2)
        return LookaheadResult(g, g1, g2, ce, reg, aux, tree_cosine(g1, g2))

    def regularizer_at_lookahead(p):
        (ce, aux), g1 = jax.value_and_grad(ce_fn, has_aux=True)(p)
        reg = reg_fn(virtual_step(p, g1))
        return beta * reg, (ce, aux, g1, reg)

    if order == "second":
        g2, (ce, aux, g1, reg) = jax.grad(regularizer_at_lookahead, has_aux=True)(psi)
    else:  # ∂ψ'/∂ψ = I with g1 held constant: differentiate L_H at ψ' directly
        (ce, aux), g1 = jax.value_and_grad(ce_fn, has_aux=True)(psi)
        psi_prime = virtual_step(psi, jax.lax.stop_gradient(g1))
        reg, g2 = jax.value_and_grad(reg_fn)(psi_prime)
        g2 = jax.tree_util.tree_map(lambda g: beta * g, g2)
    scale = 0.5 if combine == "mean" else 1.0
    g = jax.tree_util.tree_map(lambda a, b: scale * (a + b), g1, g2)
    return LookaheadResult(g, g1, g2, ce, reg, aux, tree_cosine(g1, g2))


def sgd_step(lr: float) -> Callable:
    """ψ' = ψ − α g1 (the reference code's virtual step)."""
    return lambda p, g: jax.tree_util.tree_map(lambda x, y: x - lr * y, p, g)


def optimizer_step(optimizer: optax.GradientTransformation, opt_state) -> Callable:
    """ψ' = ψ + Δ with Δ the update `optimizer` would make from `opt_state`; the state is not advanced."""
    def step(p, g):
        updates, _ = optimizer.update(g, opt_state, p)
        return optax.apply_updates(p, updates)
    return step


ADAM_EPS = ("v_hat", "v")  # where Adam adds ε: to √v̂ (Kingma & Ba, optax, PyTorch ≥ 1.3) or to √v (PyTorch ≤ 1.2)


def _adam_eps_on_v(m, v, g, k, *, b1: float, b2: float, eps: float, eps_root: float) -> tuple:
    """One leaf of Adam with ε on the uncorrected √v (PyTorch's Adam before pytorch/pytorch#22628, Aug.
    2019; hypercl's `adam_step`): the moments advanced by g and the direction,

        m_k = β₁ m + (1−β₁) g     v_k = β₂ v + (1−β₂) g²     d = √(1−β₂ᵏ)/(1−β₁ᵏ) · m_k / (√(v_k + eps_root) + ε)

    (m_k, v_k, d), the step being −α d. Elementwise in one function, so that XLA fuses it into one pass."""
    m_k, v_k = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
    scale = (jnp.sqrt(1 - b2 ** k) / (1 - b1 ** k)).astype(m_k.dtype)
    return m_k, v_k, scale * m_k / (jnp.sqrt(v_k + eps_root) + eps)


def adam(lr: float, *, eps_root: float = 0.0, eps_on: str = "v_hat", b1: float = 0.9, b2: float = 0.999,
         eps: float = 1e-8) -> optax.GradientTransformation:
    """Adam with ε where `eps_on` says (ADAM_EPS):

        'v_hat':  Δ = −α m̂_k / (√(v̂_k + eps_root) + ε)                   optax.adam itself (PyTorch ≥ 1.3)
        'v':      Δ = −α √(1−β₂ᵏ)/(1−β₁ᵏ) · m_k / (√(v_k + eps_root) + ε)   PyTorch ≤ 1.2

    m̂ = m/(1−β₁ᵏ), v̂ = v/(1−β₂ᵏ). 'v' is Adam as von Oswald et al. (2020) ran it: their code's
    virtual step (`hypercl_adam_step`) copies PyTorch's Adam of 2019, whose ε is ε/√(1−β₂ᵏ) after
    the correction (3.2e-7 at a task's first step, 1e-8 once k ≫ 1/(1−β₂)). Both keep optax.adam's
    state (ScaleByAdamState, then the learning rate's), so checkpoints and `hypercl_adam_step` read
    either."""
    if eps_on not in ADAM_EPS:
        raise ValueError(f"eps_on must be one of {ADAM_EPS}, got {eps_on!r}")
    if eps_on == "v_hat":
        return optax.adam(lr, b1=b1, b2=b2, eps=eps, eps_root=eps_root)

    def init(params):
        return optax.scale_by_adam(b1, b2, eps, eps_root).init(params)

    def update(grads, state, params=None):
        count = optax.safe_int32_increment(state.count)
        k = count.astype(float_dtype())
        leaves = jax.tree_util.tree_map(
            lambda m, v, g: _adam_eps_on_v(m, v, g, k, b1=b1, b2=b2, eps=eps, eps_root=eps_root), state.mu, state.nu, grads)
        mu, nu, direction = jax.tree_util.tree_transpose(jax.tree_util.tree_structure(grads),
                                                         jax.tree_util.tree_structure((0, 0, 0)), leaves)
        return direction, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)
    return optax.chain(optax.GradientTransformation(init, update), optax.scale_by_learning_rate(lr))


def hypercl_adam_step(lr: float, opt_state, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                      eps_root: float = 0.0) -> Callable:
    """ψ' = ψ + Δ_h, the virtual Adam step of von Oswald et al.'s code (hypercl `utils/optim_step.py`
    `adam_step`, a copy of PyTorch's Adam of 2019), from the moments m, v and count k−1 of the optax
    Adam state `opt_state` (not advanced):

        m_k = β₁ m + (1−β₁) g1      v_k = β₂ v + (1−β₂) g1²
        Δ_h = −α √(1−β₂ᵏ)/(1−β₁ᵏ) · m_k / (√(v_k + eps_root) + ε)

    It is Adam's Δ = −α m̂/(√v̂ + ε) with ε added before the bias correction, an effective
    ε/√(1−β₂ᵏ) after it: 3.2e-7 at k = 1 for ε = 1e-8, so at a task's first steps every weight whose
    |g1| is not ≫ 3e-7 moves less than under `optimizer_step` (on PermutedMNIST the hypernetwork's
    output layer has many such weights: docs/mnist.md). The update `adam(eps_on='v')` would make,
    its state not advanced. b1, b2, eps: the optimizer's (optax.adam's defaults); eps_root (inside
    the root, for the second order) as optax's.
    """
    state = next(s for s in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
                 if isinstance(s, optax.ScaleByAdamState))

    def step(p, g):
        k = (state.count + 1).astype(float_dtype())
        leaf = lambda x, gi, m, v: x - lr * _adam_eps_on_v(m, v, gi, k, b1=b1, b2=b2, eps=eps, eps_root=eps_root)[2].astype(x.dtype)
        return jax.tree_util.tree_map(leaf, p, g, state.mu, state.nu)
    return step
