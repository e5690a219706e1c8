"""The inner maximisation shared by every adversarial trainer and by the adaptive detector attack.

``maximize`` runs projected steepest ascent on an arbitrary per-sample loss inside the ε-ball ∩ box (or the box
alone, for N-FGSM), with the directions and projections of :mod:`adverse.evasion._core` and
:mod:`adverse.threat`. Unlike the evasion attacks it keeps no best-so-far and never stops early: training
wants the point of highest loss after the last step, not the first misclassified one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..errors import InputError
from ..evasion._core import ascent_direction
from ..models import Counted
from ..threat import check_norm, clip_to_box, linf_box, project, random_in_ball

Tensor = torch.Tensor
INITS = ("zero", "uniform", "normal")


def check_eps(eps: float, norm: str, bounds: tuple[float, float], shape: tuple[int, ...]) -> float:
    """Validate an adversarial-training budget against the input range; return it as a float.

    Raises :class:`InputError` for a non-finite, zero or negative ``eps``, and for an ``eps`` so large that the
    ball covers the whole box (usually a budget in 0–255 units given for inputs in [0, 1]).
    """
    norm = check_norm(norm)
    try:
        e = float(eps)
    except (TypeError, ValueError):
        raise InputError(f"eps must be a number, got {type(eps).__name__}") from None
    if not math.isfinite(e) or e <= 0:
        raise InputError(f"eps must be a finite number > 0 for adversarial training, got {eps!r}; "
                         "train without a defense for eps = 0")
    lo, hi = bounds
    d = math.prod(shape)
    reach = {"linf": hi - lo, "l2": (hi - lo) * math.sqrt(d), "l1": (hi - lo) * d}[norm]
    if e >= reach:
        raise InputError(
            f"eps={e:g} in {norm} reaches every input in bounds {bounds} (any point is within {reach:g}); pass eps "
            f"in input units (for [0, 1] images 8/255, not 8)"
        )
    return e


def initial_delta(x: Tensor, eps: Tensor, norm: str, init: str, generator: torch.Generator,
                  bounds: tuple[float, float], scale: float = 1.0, sigma: float = 1e-3) -> Tensor:
    """The starting perturbation: ``zero``, ``uniform`` in the ball of radius ``scale · eps`` (clipped to the
    box), or ``normal`` (``sigma · N(0, I)``, TRADES' start, clipped to the box)."""
    if init == "zero":
        return torch.zeros_like(x)
    if init == "uniform":
        return random_in_ball(x, eps * scale, norm, generator, bounds)
    noise = sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    lo, hi = bounds
    return (x + noise).clamp(lo, hi) - x


def maximize(
    model: Counted,
    x: Tensor,
    loss_fn: Callable[[Tensor], Tensor],
    *,
    eps: float,
    norm: str,
    steps: int,
    alpha: float,
    bounds: tuple[float, float],
    generator: torch.Generator,
    init: str = "uniform",
    init_scale: float = 1.0,
    project_ball: bool = True,
    on_iterate: Callable[[Tensor, Tensor], None] | None = None,
) -> Tensor:
    """Approximately solve ``max_{δ ∈ S} ℓ(f(x + δ))`` by ``steps`` steps of projected steepest ascent.

    ``δ⁰`` from :func:`initial_delta`; ``δ^{k+1} = Π(δ^k + α · s(∇_δ ℓ(f(x + δ^k))))`` with ``s`` the unit
    steepest-ascent direction of ``norm`` (``sign`` for L∞) and ``Π`` the projection onto the ball ∩ box
    (``project_ball=True``) or onto the box only (N-FGSM). ``loss_fn`` maps logits to a per-sample loss to
    maximise. The model must already be in attack mode; each step is one counted forward+backward pass.
    ``on_iterate(x_k, logits_k)``, when given, sees every iterate that was evaluated (for best-so-far bookkeeping).

    Returns
    -------
    ``x + δ^K``, detached.
    """
    if init not in INITS:
        raise InputError(f"unknown init {init!r}; use one of {', '.join(INITS)}")
    eps_t = torch.full((x.shape[0],), float(eps), dtype=x.dtype, device=x.device)
    delta = initial_delta(x, eps_t, norm, init, generator, bounds, init_scale)
    box = linf_box(x, eps_t, bounds) if norm == "linf" and project_ball else None
    lo, hi = bounds
    for _ in range(steps):
        logits, _, grad = model.value_and_grad(x + delta, loss_fn)
        if on_iterate is not None:
            on_iterate(x + delta, logits)
        delta = delta + alpha * ascent_direction(grad, norm, x + delta, bounds)
        if not project_ball:
            delta = (x + delta).clamp(lo, hi) - x
        elif box is not None:
            delta = clip_to_box(delta, *box)
        else:
            delta = project(delta, x, eps_t, norm, bounds)
    return (x + delta).detach()

