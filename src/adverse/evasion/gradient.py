"""Fixed-budget gradient attacks: FGSM, BIM, PGD and MI-FGSM, in L∞, L2 and L1.

All four are one loop (:func:`_ascend`): a gradient of the loss, an optional momentum, a steepest-ascent
step of size ``alpha`` in the threat model's norm, a projection onto the ball ∩ box. They differ only in
their start, step size, step count and momentum.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..threat import clip_to_box, linf_box, project, random_in_ball
from ..validation import validated
from ._core import Setup, ascent_direction, get_loss, is_adversarial, momentum_update, relative_scale, setup

Tensor = torch.Tensor


def _ascend(
    s: Setup,
    *,
    steps: int,
    alpha: float,
    loss: str,
    random_start: bool,
    restarts: int,
    momentum: float | None,
    early_stop: bool,
    l1_sparsity: float,
):
    """Projected steepest ascent with per-sample best-so-far and early stop; returns the tracker."""
    if steps < 1 or restarts < 1:
        raise InputError("steps and restarts must be ≥ 1")
    loss_fn = get_loss(loss, s.num_classes, s.target is not None)
    tr = s.tracker()
    for _ in range(restarts):
        # idx None: every sample, in order (no early stop), so nothing needs gathering or scattering
        idx = tr.active() if early_stop else None
        if idx is not None and idx.numel() == 0:
            break
        if idx is None:
            x0, eps, (y, t) = s.x, s.eps, (s.y, s.target)
        else:
            x0, eps, (y, t) = s.x[idx], s.eps[idx], s.labels(idx)
        delta = random_in_ball(x0, eps, s.norm, s.generator, s.bounds) if random_start else torch.zeros_like(x0)
        g_acc = torch.zeros_like(x0) if momentum is not None else None
        # constant while the active set is: the step factor and, in L∞, the limits of the projection
        scale = alpha * relative_scale(eps, x0)
        box = linf_box(x0, eps, s.bounds) if s.norm == "linf" else None
        for k in range(steps + 1):
            x_k = x0 + delta
            if k == steps:  # evaluate the last iterate; no gradient needed
                logits = s.model.logits(x_k)
                tr.update(idx, x_k, is_adversarial(logits, y, t))
                break
            logits, _, grad = s.model.value_and_grad(x_k, lambda z, y=y, t=t: loss_fn(z, y, t))
            fooled = tr.update(idx, x_k, is_adversarial(logits, y, t))
            if early_stop and bool(fooled.any()):
                keep = ~fooled
                idx, x0, eps, delta, grad, x_k = idx[keep], x0[keep], eps[keep], delta[keep], grad[keep], x_k[keep]
                y, t = y[keep], None if t is None else t[keep]
                g_acc = None if g_acc is None else g_acc[keep]
                if idx.numel() == 0:
                    break
                scale = alpha * relative_scale(eps, x0)
                box = None if box is None else (box[0][keep], box[1][keep])
            if g_acc is not None:  # MI-FGSM: accumulate L1-normalized gradients
                g_acc = grad = momentum_update(g_acc, grad, momentum)
            step = ascent_direction(grad, s.norm, x_k, s.bounds, l1_sparsity)
            if box is not None:
                delta = clip_to_box(delta + scale * step, *box)
            else:
                delta = project(delta + scale * step, x0, eps, s.norm, s.bounds)
    return tr


def _run(name: str, model: nn.Module, x: Tensor, y: Tensor, *, eps, norm, bounds, target, seed, **kw):
    with setup(model, x, y, eps=eps, norm=norm, bounds=bounds, target=target, seed=seed) as s:
        alpha = kw.pop("alpha")
        eps_max = float(s.eps.max())
        kw["alpha"] = alpha if alpha is not None else kw.pop("rel_alpha") * eps_max
        kw.pop("rel_alpha", None)
        tr = _ascend(s, **kw)
        params = dict(kw, eps=eps_max, norm=s.norm, targeted=target is not None)
        return s.result(tr, name, params)


@validated
def fgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Tensor,
    norm: str = "linf",
    loss: str = "ce",
    target: Tensor | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int | None = 0,
):
    """Fast Gradient Sign Method: one step of size ``eps`` along the steepest-ascent direction.

    ``x_adv = Π(x + ε · sign(∇ₓ L(x, y)))`` for L∞; for L2 and L1 the step is the normalized gradient
    (Fast Gradient Method). With ``target`` the step descends the loss of the target class.

    Parameters
    ----------
    model : a torch module returning logits.
    x, y : inputs inside ``bounds`` and their integer labels.
    eps : the budget, a number or a per-sample tensor.
    norm : "linf", "l2" or "l1".
    loss : "ce", "margin" or "dlr".
    target : target classes for a targeted attack, or None.

    Returns
    -------
    AttackResult

    References
    ----------
    Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015.
    """
    return _run("fgsm", model, x, y, eps=eps, norm=norm, bounds=bounds, target=target, seed=seed,
                steps=1, alpha=None, rel_alpha=1.0, loss=loss, random_start=False, restarts=1, momentum=None,
                early_stop=True, l1_sparsity=0.95)


@validated
def bim(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Tensor,
    norm: str = "linf",
    steps: int = 10,
    alpha: float | None = None,
    loss: str = "ce",
    target: Tensor | None = None,
    early_stop: bool = True,
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int | None = 0,
):
    """Basic Iterative Method (I-FGSM): ``steps`` FGSM steps of size ``alpha`` (default ``eps / steps``) from
    the clean input, each followed by the projection onto the ball ∩ box.

    References
    ----------
    Kurakin, Goodfellow & Bengio, "Adversarial examples in the physical world", ICLR workshop 2017.
    """
    return _run("bim", model, x, y, eps=eps, norm=norm, bounds=bounds, target=target, seed=seed,
                steps=steps, alpha=alpha, rel_alpha=1.0 / max(steps, 1), loss=loss, random_start=False,
                restarts=1, momentum=None, early_stop=early_stop, l1_sparsity=0.95)


@validated
def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Tensor,
    norm: str = "linf",
    steps: int = 40,
    alpha: float | None = None,
    restarts: int = 1,
    random_start: bool = True,
    loss: str = "ce",
    target: Tensor | None = None,
    early_stop: bool = True,
    l1_sparsity: float = 0.95,
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int | None = 0,
):
    """Projected Gradient Descent: from a uniform random point of the ball, ``steps`` steepest-ascent steps of
    size ``alpha`` (default ``2.5 · eps / steps``), each projected onto the ball ∩ box; ``restarts`` runs, each
    only on the samples still robust. Every iterate is checked, so an adversarial found at any step is kept.

    Parameters
    ----------
    model : a torch module returning logits.
    x, y : inputs inside ``bounds`` and their integer labels.
    eps : the budget in input units (a number or a per-sample tensor).
    norm : "linf", "l2" or "l1" (L1 takes sparse steps on the top ``1 − l1_sparsity`` coordinates and
        projects exactly onto the L1 ball ∩ box).
    steps, alpha, restarts, random_start : the optimizer.
    loss : "ce", "margin" (Carlini-Wagner) or "dlr".
    target : target classes for a targeted attack, or None.
    early_stop : stop working on a sample once it is fooled (set False to maximize the loss, e.g. in training).
    seed : the seed of the random start.

    Returns
    -------
    AttackResult

    References
    ----------
    Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models Resistant to Adversarial Attacks",
    ICLR 2018.
    """
    return _run("pgd", model, x, y, eps=eps, norm=norm, bounds=bounds, target=target, seed=seed,
                steps=steps, alpha=alpha, rel_alpha=2.5 / max(steps, 1), loss=loss, random_start=random_start,
                restarts=restarts, momentum=None, early_stop=early_stop, l1_sparsity=l1_sparsity)


@validated
def mifgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Tensor,
    norm: str = "linf",
    steps: int = 10,
    alpha: float | None = None,
    decay: float = 1.0,
    loss: str = "ce",
    target: Tensor | None = None,
    early_stop: bool = True,
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int | None = 0,
):
    """Momentum Iterative FGSM: ``g ← μ·g + ∇L / ‖∇L‖₁`` (per sample), then an FGSM step of size ``alpha``
    (default ``eps / steps``) along ``g``, projected onto the ball ∩ box.

    References
    ----------
    Dong, Liao, Pang, Su, Zhu, Hu & Li, "Boosting Adversarial Attacks with Momentum", CVPR 2018.
    """
    return _run("mifgsm", model, x, y, eps=eps, norm=norm, bounds=bounds, target=target, seed=seed,
                steps=steps, alpha=alpha, rel_alpha=1.0 / max(steps, 1), loss=loss, random_start=False,
                restarts=1, momentum=decay, early_stop=early_stop, l1_sparsity=0.95)
