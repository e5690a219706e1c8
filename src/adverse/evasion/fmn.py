"""Fast Minimum-Norm attack (FMN), in L1, L2 and L∞.

FMN steers a perturbation δ towards the decision boundary with normalized gradient steps while an adaptive
budget ε, a ball around the input, shrinks whenever δ is adversarial and grows when it is not. Each step is
projected onto the ε-ball ∩ box, so δ slides along the boundary towards the smallest adversarial norm.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import InputError
from ..results import AttackResult
from ..threat import batch_view, dual_norm, lp_norm, project
from ..validation import validated
from ._core import is_adversarial, margin_loss, setup

Tensor = torch.Tensor


@validated
def fmn(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    norm: str = "l2",
    steps: int = 100,
    alpha_init: float = 1.0,
    alpha_final: float | None = None,
    gamma_init: float = 0.05,
    gamma_final: float = 0.001,
    target: Tensor | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int | None = 0,
) -> AttackResult:
    """Fast Minimum-Norm attack: the smallest Lp perturbation that changes the decision, per sample.

    With the loss ``L(δ) = max_{j≠y} z_j − z_y`` (untargeted) or ``z_t − max_{j≠t} z_j`` (targeted), positive
    exactly when ``x + δ`` is adversarial, each step ``k = 0, …, K−1`` does (Pintor et al. 2021, Algorithm 1):

    1. ``ε_k = min(ε_{k−1} (1 − γ_k), ‖δ*‖_p)`` if ``x + δ_{k−1}`` is adversarial; otherwise
       ``ε_k = ε_{k−1} (1 + γ_k)`` once an adversarial has been found, and before that the linear extrapolation
       to the boundary ``ε_k = (‖δ_{k−1}‖_p + |L| / ‖∇L‖_q)(1 + γ_K)`` (q the dual norm, γ_K = ``gamma_final``);
       ε never exceeds the largest perturbation the box allows.
    2. ``δ_k = Π_{ε_k}(δ_{k−1} + α_k ∇L / ‖∇L‖₂)``, the exact projection onto the ε-ball ∩ box
       (:func:`adverse.threat.project`).

    ``α`` and ``γ`` decay from their initial to their final values by cosine annealing. The factor ``1 + γ_K``
    on the extrapolation is not in the paper: without it, an iterate of a (locally) linear model lands exactly
    on the boundary, and whether it ever crosses depends on rounding (the extrapolation then returns the same ε
    at every step). The projection is the exact one onto the ε-ball ∩ box, not a ball projection followed by
    clipping, which falls short of ε wherever the box binds. δ* is the adversarial perturbation of smallest
    norm seen at any step (the last iterate included). A gradient that is exactly zero is replaced by a random
    direction drawn from ``seed``.

    Parameters
    ----------
    model : torch.nn.Module
        Returns logits for inputs inside ``bounds``.
    x, y : Tensor
        Inputs of shape (n, ...) inside ``bounds`` and their integer labels of shape (n,).
    norm : {"l2", "linf", "l1"}
        The norm to minimize.
    steps : int
        Number of steps K.
    alpha_init, alpha_final : float
        Step size α at the first and last step (``alpha_final`` defaults to ``alpha_init / 100``).
    gamma_init, gamma_final : float
        Relative change γ of ε at the first and last step.
    target : Tensor or None
        Target classes of shape (n,) for a targeted attack.
    bounds : (float, float)
        The valid input range.
    seed : int or None
        Seeds the random direction that replaces an exactly-zero gradient.

    Returns
    -------
    AttackResult
        ``eps`` is None; ``norms`` holds each sample's smallest adversarial norm (0 where the clean input is
        already adversarial); use ``robust_accuracy_at(eps)`` for robust accuracy at any budget.

    References
    ----------
    Pintor, Roli, Brendel & Biggio, "Fast Minimum-norm Adversarial Attacks through Adaptive Norm
    Constraints", NeurIPS 2021.
    """
    if steps < 1:
        raise InputError(f"steps must be ≥ 1, got {steps}")
    if not (0 < gamma_final <= gamma_init < 1):
        raise InputError(f"need 0 < gamma_final ≤ gamma_init < 1, got {gamma_final}, {gamma_init}")
    α_init = float(alpha_init)
    α_final = α_init / 100 if alpha_final is None else float(alpha_final)
    if not (0 < α_final <= α_init):
        raise InputError(f"need 0 < alpha_final ≤ alpha_init, got {alpha_final}, {alpha_init}")
    γ_init, γ_final = float(gamma_init), float(gamma_final)

    with setup(model, x, y, eps=None, norm=norm, bounds=bounds, target=target, seed=seed) as s:
        p, q = s.norm, dual_norm(s.norm)
        lo, hi = s.bounds
        tr = s.tracker(minimize=True)
        idx = tr.active()  # samples not adversarial to begin with
        if idx.numel():
            x0 = s.x[idx]
            y0, t0 = s.labels(idx)

            def loss_fn(z: Tensor) -> Tensor:
                return margin_loss(z, y0, t0)

            δ = torch.zeros_like(x0)
            ε = torch.full((idx.numel(),), float("inf"), dtype=x0.dtype, device=x0.device)
            ε_max = lp_norm(torch.maximum(x0 - lo, hi - x0), p)  # the largest perturbation the box allows
            found = torch.zeros(idx.numel(), dtype=torch.bool, device=x0.device)
            for k in range(steps):
                cosine = (1 + math.cos(math.pi * k / steps)) / 2
                α = α_final + (α_init - α_final) * cosine
                γ = γ_final + (γ_init - γ_final) * cosine

                logits, L, grad = s.model.value_and_grad(x0 + δ, loss_fn)
                is_adv = is_adversarial(logits, y0, t0)
                tr.update(idx, x0 + δ, is_adv)
                found |= is_adv

                δ_norm = lp_norm(δ, p)
                to_boundary = (δ_norm + L.abs() / lp_norm(grad, q).clamp_min(1e-12)) * (1 + γ_final)
                ε = torch.where(is_adv, torch.minimum(ε * (1 - γ), tr.norms[idx]),
                                torch.where(found, ε * (1 + γ), to_boundary))
                ε = torch.minimum(ε, ε_max)

                g_norm = lp_norm(grad, "l2")
                if bool((g_norm == 0).any()):
                    noise = torch.randn(grad.shape, generator=s.generator, device=grad.device, dtype=grad.dtype)
                    grad = torch.where(batch_view(g_norm == 0, grad), noise, grad)
                    g_norm = lp_norm(grad, "l2")
                δ = δ + α * grad / batch_view(g_norm, grad)
                δ = project(δ, x0, ε, p, s.bounds)

            logits = s.model.logits(x0 + δ)
            tr.update(idx, x0 + δ, is_adversarial(logits, y0, t0))

        params = {"norm": s.norm, "steps": steps, "alpha_init": α_init, "alpha_final": α_final,
                  "gamma_init": γ_init, "gamma_final": γ_final, "targeted": target is not None}
        return s.result(tr, "fmn", params)
