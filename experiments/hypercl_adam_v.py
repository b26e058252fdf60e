"""Run one of hypercl's MNIST scripts with PyTorch's Adam as it was before pytorch/pytorch#22628 (Aug.
2019, after PyTorch 1.2): ε added to the uncorrected √v, the Adam von Oswald et al.'s runs had and that
hypercl's own virtual step (`utils/optim_step.py adam_step`) copies. Ours: `--config.optim.adam_eps=v`.

    cd hypercl/mnist && /path/to/hypercl-venv/bin/python /path/to/phn_jax/experiments/hypercl_adam_v.py \\
        train_splitMNIST.py --infer_task_id --cl_scenario 1 --random_seed 0 --out_dir /tmp/hc_split_v_0

Every `torch.optim.Adam` the script creates is then `AdamEpsOnV`, a subclass (so hypercl's
`isinstance(optimizer, optim.Adam)` checks and its virtual step, which reads the optimizer's state,
work unchanged):

    m_k = β₁ m + (1−β₁) g     v_k = β₂ v + (1−β₂) g²     p ← p − α √(1−β₂ᵏ)/(1−β₁ᵏ) · m_k / (√v_k + ε)

where today's PyTorch (and optax) take p ← p − α m̂_k / (√v̂_k + ε), m̂ = m/(1−β₁ᵏ), v̂ = v/(1−β₂ᵏ).
Everything else is hypercl's own. Not a test (CI has neither PyTorch nor hypercl); docs/mnist.md has
the figures.
"""
from __future__ import annotations

import math
import runpy
import sys
from pathlib import Path

import torch


class AdamEpsOnV(torch.optim.Adam):
    """torch.optim.Adam with ε on the uncorrected √v (no amsgrad)."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["amsgrad"]:
                raise ValueError("AdamEpsOnV has no amsgrad")
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                k, g = state["step"], p.grad
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                state["exp_avg"].mul_(b1).add_(g, alpha=1 - b1)
                state["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
                step_size = group["lr"] * math.sqrt(1 - b2 ** k) / (1 - b1 ** k)
                p.addcdiv_(state["exp_avg"], state["exp_avg_sq"].sqrt().add_(group["eps"]), value=-step_size)
        return loss


def main(argv: list[str]) -> None:
    if not argv or not argv[0].endswith(".py"):
        raise SystemExit("usage: hypercl_adam_v.py <hypercl script.py> [its arguments]  (run from hypercl/mnist)")
    script = Path(argv[0]).resolve()
    torch.optim.Adam = AdamEpsOnV
    sys.argv = [str(script)] + argv[1:]
    sys.path.insert(0, str(script.parent))
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
