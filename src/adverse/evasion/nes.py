"""Score-based gradient estimation feeding projected gradient steps: NES (Ilyas et al. 2018) and SPSA
(Uesato et al. 2018).

Both estimate the gradient of a loss on the black box's scores from finite differences along random
directions, sampled in antithetic pairs ``±u``: Gaussian ``u`` for NES, Rademacher ``u`` for SPSA. The
estimate then takes the place of the true gradient in PGD: a sign step (L∞) or a normalized step (L2),
projected onto the ball ∩ box.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import InputError
from ..threat import batch_view, project
from ..validation import validated
from ._core import ascent_direction, get_loss
from ._query import query_setup

Tensor = torch.Tensor

METHODS = ("nes", "spsa")


@validated
def nes(
    model: Any,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Tensor,
    norm: str = "linf",
    steps: int | None = None,
    samples: int = 50,
    sigma: float = 0.001,
    alpha: float | None = None,
    loss: str = "margin",
    method: str = "nes",
    max_queries: int = 10_000,
    target: Tensor | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int | None = 0,
):
    """Projected gradient ascent on a loss whose gradient is estimated from score queries (NES or SPSA).

    At the iterate ``x_k`` the gradient of the loss ``L`` is estimated from ``N = samples`` antithetic
    pairs,

    ``ĝ = 1 / (2 N σ) · Σ_{i=1}^{N} [L(x_k + σ u_i) − L(x_k − σ u_i)] u_i``,

    with ``u_i ~ N(0, I)`` (NES) or ``u_i`` uniform on ``{−1, +1}^d`` (SPSA), and the iterate moves by PGD:
    ``x_{k+1} = x + Π(x_k + α·sign(ĝ) − x)`` for L∞, ``α·ĝ/‖ĝ‖₂`` for L2, ``Π`` the exact projection onto
    the ``eps`` ball ∩ ``bounds``. One iteration costs ``2N`` queries per sample for the estimate and one to
    check the new iterate; a sample stops once that check finds it misclassified (classified as ``target``),
    and no sample ever exceeds ``max_queries`` (the last estimate uses fewer pairs where the budget left calls
    for it). Query points ``x_k ± σ u`` are clipped to ``bounds`` so the black box only ever sees valid
    inputs.

    Parameters
    ----------
    model : a :class:`~adverse.BlackBox` returning scores, a callable, a scikit-learn estimator with
        ``predict_proba`` or ``decision_function``, or a torch module (queried without gradients, in eval
        mode).
    x, y : inputs inside ``bounds`` and their integer labels.
    eps : the budget, a number or a per-sample tensor.
    norm : "linf" or "l2".
    steps : the most iterations; None: as many as ``max_queries`` allows.
    samples : N, the antithetic pairs per gradient estimate (2N queries).
    sigma : σ, the finite-difference radius in input units.
    alpha : the step size in input units; None: ``eps / 5`` (L∞) or ``eps / 4`` (L2). A per-sample ``eps``
        scales it by ``eps_i / max(eps)``.
    loss : "margin" (Carlini-Wagner margin) or "ce" (cross-entropy), on the logits or, for a black box that
        answers with probabilities, on the log-probabilities (both losses are then the same function of the
        input).
    method : "nes" (Gaussian directions) or "spsa" (Rademacher directions).
    max_queries : per-sample query budget, the clean query included.
    target : target classes for a targeted attack, or None.
    bounds : the valid input range.
    seed : seeds the private generator that draws the directions.

    Returns
    -------
    AttackResult
        ``queries`` is the total over the samples; ``params`` holds the settings.

    References
    ----------
    Ilyas, Engstrom, Athalye & Lin, "Black-box Adversarial Attacks with Limited Queries and Information",
    ICML 2018 (NES with antithetic sampling).
    Uesato, O'Donoghue, van den Oord & Kohli, "Adversarial Risk and the Dangers of Evaluating Against Weak
    Attacks", ICML 2018 (SPSA).
    Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models Resistant to Adversarial Attacks",
    ICLR 2018 (the projected steps).
    """
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if not isinstance(samples, int) or samples < 1:
        raise InputError(f"samples must be an integer ≥ 1 (antithetic pairs per estimate), got {samples!r}")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise InputError(f"steps must be an integer ≥ 1 or None (as many as max_queries allows), "
                         f"got {steps!r}")
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise InputError(f"sigma must be a finite number > 0, got {sigma!r}")
    if alpha is not None and not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise InputError(f"alpha must be a finite number > 0 or None, got {alpha!r}")
    if isinstance(max_queries, int) and 2 <= max_queries < 4:
        raise InputError(f"max_queries must be ≥ 4 (the clean query, one pair and one check), "
                         f"got {max_queries}")
    with query_setup(model, x, y, eps=eps, norm=norm, max_queries=max_queries, bounds=bounds, target=target,
                     seed=seed) as s:
        loss_fn = get_loss(loss, s.num_classes, target is not None)  # type: ignore[arg-type]
        eps_max = float(s.eps.max())
        alpha_used = alpha if alpha is not None else eps_max / (5.0 if s.norm == "linf" else 4.0)
        lo, hi = s.bounds
        tr = s.tracker()
        idx = tr.active()
        x0, eps_a, y_a = s.x[idx], s.eps[idx], s.y[idx]
        t_a = None if s.target is None else s.target[idx]
        delta = torch.zeros_like(x0)
        it = 0
        while idx.numel() > 0 and (steps is None or it < steps):
            can = s.left(idx) >= 3  # one pair and the check
            if not bool(can.all()):
                idx, x0, eps_a, y_a, delta = idx[can], x0[can], eps_a[can], y_a[can], delta[can]
                t_a = None if t_a is None else t_a[can]
                if idx.numel() == 0:
                    break
            pairs = min(samples, int((s.left(idx).min() - 1) // 2))
            m = idx.shape[0]
            shape = (m, pairs, *x0.shape[1:])
            if method == "nes":
                u = torch.randn(shape, generator=s.generator, device=x0.device, dtype=x0.dtype)
            else:
                u = torch.randint(0, 2, shape, generator=s.generator, device=x0.device).to(x0.dtype) * 2 - 1
            x_k = (x0 + delta).unsqueeze(1)
            probe = torch.cat([(x_k + sigma * u).clamp(lo, hi), (x_k - sigma * u).clamp(lo, hi)], dim=1)
            rows = idx.repeat_interleave(2 * pairs)
            z = s.logits(s.scores(probe.flatten(0, 1), rows))
            if z.device.type != "mps":  # float64 losses: a confident model's cross-entropy lies below
                z = z.double()  # float32's resolution near 0, where the estimate's differences would vanish
            values = loss_fn(z, y_a.repeat_interleave(2 * pairs),
                             None if t_a is None else t_a.repeat_interleave(2 * pairs)).view(m, 2, pairs)
            diff = (values[:, 0] - values[:, 1]).to(x0.dtype).view(m, pairs, *([1] * (x0.dim() - 1)))
            grad = (diff * u).sum(dim=1) / (2 * pairs * sigma)
            scale = batch_view(alpha_used * eps_a / max(eps_max, 1e-12), x0)
            delta = project(delta + scale * ascent_direction(grad, s.norm), x0, eps_a, s.norm, s.bounds)
            x_new = x0 + delta
            adv = s.is_adversarial(s.scores(x_new, idx).argmax(dim=1), idx)
            tr.update(idx, x_new, adv)
            it += 1
            if bool(adv.any()):
                keep = ~adv
                idx, x0, eps_a, y_a, delta = idx[keep], x0[keep], eps_a[keep], y_a[keep], delta[keep]
                t_a = None if t_a is None else t_a[keep]
        spent = s.queries.double()
        params = {"eps": eps_max, "norm": s.norm, "steps": steps, "samples": samples, "sigma": sigma,
                  "alpha": alpha_used, "loss": loss, "method": method, "targeted": target is not None,
                  "queries_mean": float(spent.mean()), "queries_median": float(spent.median())}
        return s.result(tr, method, params)


__all__ = ["nes"]
