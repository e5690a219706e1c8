"""Auto-PGD (APGD): projected gradient ascent that sets its own step size, in L∞, L2 and L1.

APGD is PGD with a budget-aware schedule: the step size η starts large and is halved at checkpoints where the
loss stopped improving, each halving restarts from the best point seen so far, and every step mixes in the
previous one (momentum). With the DLR loss and targeted versions (APGD-T) it is the core of AutoAttack.
fra31/auto-attack (``autoattack/autopgd_base.py``) is the numerical reference for its schedules and defaults.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import InputError
from ..results import AttackResult
from ..threat import batch_view, lp_norm, project
from ..validation import validated
from ._core import Setup, Tracker, ascent_direction, get_loss, is_adversarial, setup

Tensor = torch.Tensor

ALPHA = 0.75  # momentum weight α of the current step (1 − α for the previous one)


@validated
def apgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Tensor,
    norm: str = "linf",
    steps: int = 100,
    restarts: int = 1,
    loss: str | None = None,
    targeted: bool = False,
    n_target_classes: int = 9,
    target: Tensor | None = None,
    rho: float = 0.75,
    early_stop: bool = True,
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int | None = 0,
) -> AttackResult:
    """Auto-PGD: maximize a loss f inside the ε-ball ∩ box with an automatic step-size schedule.

    Let ``S = {x' : ‖x' − x‖_p ≤ ε, lo ≤ x' ≤ hi}`` and ``P_S`` the exact Euclidean projection onto it
    (:func:`adverse.threat.project`). From a random ``x^(0)`` on the sphere of radius ε (L∞, L2; the
    projection of Gaussian noise onto S for L1), with ``η^(0) = 2ε`` (L∞, L2) or ``ε`` (L1), each of the
    ``N = steps`` iterations ``k = 0, …, N−1`` does (Croce & Hein 2020, Algorithm 1)::

        z^(k+1) = P_S(x^(k) + η^(k) s(∇f(x^(k))))
        x^(k+1) = P_S(x^(k) + α (z^(k+1) − x^(k)) + (1 − α)(x^(k) − x^(k−1)))

    with ``α = 1`` at ``k = 0`` and ``α = 0.75`` after, and ``s`` the steepest-ascent direction of unit norm
    (``sign(g)`` for L∞, ``g / ‖g‖₂`` for L2). The step size is checked at the checkpoints ``w_j ≈ p_j N``,
    ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)`` (rounded as in the
    reference: 22, 41, 57, 70, 80, 87, 93, 99 for N = 100); it is halved, and the iterate set back to the best
    point ``x_max`` (and its gradient), when

    1. ``Σ_{i=w_{j−1}}^{w_j−1} 1[f(x^(i+1)) > f(x^(i))] ≤ ρ · (w_j − w_{j−1})`` (the loss went up in too few
       steps), or
    2. the step size was not halved at ``w_{j−1}`` and ``f_max`` has not grown since ``w_{j−1}`` (from the
       second checkpoint on).

    For L1 (Croce & Hein 2021) the step moves only the coordinates with the largest share ``q`` of gradient
    magnitudes, ``s(g) = sign(g ⊙ m) / ‖sign(g ⊙ m)‖₁`` with ``m`` the top-``q`` mask, without momentum. Every
    ``⌊0.04 N⌋`` iterations the sparsity adapts to the best point, ``q = ‖x_max − x‖₀ / (1.5 d)``; if
    ``‖x_max − x‖₀`` shrank by more than 5 % the step size is reset to ``ε`` and the iterate to ``x_max``,
    otherwise ``η`` is divided by 1.5, within ``[ε/10, ε]``.

    Every iterate is checked; a sample once adversarial stays adversarial and, with ``early_stop``, drops out
    of the batch. Restarts (and targets, for APGD-T) run only on the samples still robust. A sample the attack
    does not fool returns the point of highest loss found.

    Parameters
    ----------
    model : torch.nn.Module
        Returns logits for inputs inside ``bounds``.
    x, y : Tensor
        Inputs inside ``bounds``, shape (n, ...), and their integer labels, shape (n,).
    eps : float or Tensor
        The budget ε in input units, a number or a per-sample tensor of shape (n,).
    norm : {"linf", "l2", "l1"}
    steps : int
        Iterations N per run (100 in AutoAttack).
    restarts : int
        Runs from fresh random starts, each on the samples still robust (per target for APGD-T).
    loss : {"ce", "dlr", "margin"} or None
        The loss f to maximize: cross-entropy, the Difference of Logits Ratio (Croce & Hein 2020, invariant to
        shifts and rescalings of the logits) or the Carlini-Wagner margin. Targeted versions use −CE(z, t),
        the targeted DLR ``−(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2)`` or ``z_t − max_{j≠t} z_j``. None means "ce"
        for the untargeted attack and "dlr" for the targeted ones.
    targeted : bool
        With ``target=None``, APGD-T as in AutoAttack: one targeted run against each of the
        ``n_target_classes`` non-true classes of highest clean logit in turn, each on the samples still
        robust. It looks for *untargeted* errors, so success means ``predicted ≠ y``.
    n_target_classes : int
        How many target classes APGD-T tries (9 in AutoAttack); capped at ``classes − 1``.
    target : Tensor or None
        Target classes, shape (n,), for a targeted attack in the strict sense: success means
        ``predicted == target``. Given a target, ``targeted`` does not matter.
    rho : float
        The threshold ρ of condition 1.
    early_stop : bool
        Stop working on a sample once it is fooled, and restart only robust samples. False runs every
        sample through every run (to maximize the loss, e.g. in adversarial training); a fooled sample then
        returns the point of highest loss if that point is adversarial, else its last adversarial iterate.
    bounds : (float, float)
        The valid input range.
    seed : int
        Seed of the random starts.

    Returns
    -------
    AttackResult
        ``params`` records the loss, steps, restarts, ρ and targets.

    Notes
    -----
    AutoAttack's APGD-CE is ``apgd(model, x, y, eps=ε)``, its APGD-T ``apgd(model, x, y, eps=ε,
    targeted=True)``. Each run costs ``N + 1`` forward and ``N`` backward passes per sample still attacked
    (the last iterate only needs its logits).

    Differences from the reference code (fra31/auto-attack): the projection onto the L2 ball ∩ box is exact
    (the reference rescales onto the ball, then clips to the box); condition 1 at the first checkpoint counts
    ``f(x^(1)) > f(x^(0))`` as in the paper, where the reference compares ``f(x^(1))`` with 0; APGD-T takes
    its targets from the clean logits already computed; a sample not fooled returns ``x_max`` rather than
    ``x``. With the same seed, the random starts are the reference's (for float32 inputs on the CPU).

    The sparse L1 steps can stop at a vertex of the ball that is a local maximum of the loss without being
    adversarial (with three or more classes, even for a linear model); more ``restarts`` help (AutoAttack's
    L1 version uses 5).

    References
    ----------
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
    attacks", ICML 2020.
    Croce & Hein, "Mind the box: l1-APGD for sparse adversarial attacks on image classifiers", ICML 2021.
    """
    if steps < 1 or restarts < 1:
        raise InputError(f"steps and restarts must be ≥ 1, got steps={steps}, restarts={restarts}")
    if not 0.0 < rho < 1.0:
        raise InputError(f"rho must lie in (0, 1), got {rho}")
    if targeted and target is None and n_target_classes < 1:
        raise InputError(f"n_target_classes must be ≥ 1, got {n_target_classes}")
    with setup(model, x, y, eps=eps, norm=norm, bounds=bounds, target=target, seed=seed) as s:
        specific = s.target is not None
        multi = bool(targeted) and not specific
        loss_name = loss if loss is not None else ("dlr" if (multi or specific) else "ce")
        loss_fn = get_loss(loss_name, s.num_classes, multi or specific)
        if multi:
            n_targets = min(int(n_target_classes), s.num_classes - 1)
            # the non-true classes by decreasing clean logit
            others = s.clean_logits.scatter(1, s.y.unsqueeze(1), float("-inf"))
            ranked = others.argsort(dim=1, descending=True)[:, :n_targets]
            runs: list[Tensor | None] = [ranked[:, r] for r in range(n_targets) for _ in range(restarts)]
        else:
            n_targets = 0
            runs = [s.target] * restarts
        tr = s.tracker()
        best_f = torch.full((s.x.shape[0],), float("-inf"), dtype=s.x.dtype, device=s.x.device)
        for t_all in runs:
            idx = tr.active() if early_stop else torch.arange(s.x.shape[0], device=s.x.device)
            if idx.numel() == 0:
                break
            _run(s, tr, best_f, idx, None if t_all is None else t_all[idx], loss_fn,
                 steps=steps, rho=rho, early_stop=early_stop, strict=specific)
        params = {
            "loss": loss_name, "steps": steps, "restarts": restarts, "rho": rho, "targeted": multi or specific,
            "n_target_classes": n_targets if multi else None, "early_stop": early_stop,
            "eps": float(s.eps.max()), "norm": s.norm,
        }
        return s.result(tr, "apgd-t" if multi else f"apgd-{loss_name}", params)


def _checkpoints(steps: int, norm: str) -> dict[int, int]:
    """``{w_j: w_j − w_{j−1}}``: after how many steps the step size is checked, and the window length.

    The reference's integer form of ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)``:
    windows of ⌊0.22 N⌋, then 0.03 N shorter each time, down to ⌊0.06 N⌋. L1 checks every ⌊0.04 N⌋ steps.
    """
    if norm == "l1":
        first, decr, least = max(int(0.04 * steps), 1), 0, 1
    else:
        first, decr, least = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    out, w, h = {}, 0, first
    while w + h < steps:  # a check after the last step would change nothing
        w += h
        out[w] = h
        h = max(h - decr, least)
    return out


def _start(s: Setup, x0: Tensor, eps: Tensor) -> Tensor:
    """x^(0): a random point on the ε-sphere (L∞: scaled uniform noise, L2: Gaussian), clipped to the box, or
    for L1 the projection of Gaussian noise onto the ε-ball ∩ box (as in the reference code)."""
    g = s.generator
    if s.norm == "linf":
        u = 2 * torch.rand(x0.shape, generator=g, device=x0.device, dtype=x0.dtype) - 1
    else:
        u = torch.randn(x0.shape, generator=g, device=x0.device, dtype=x0.dtype)
    if s.norm != "l1":
        u = u * batch_view(eps / lp_norm(u, s.norm).clamp_min(1e-12), u)
    return x0 + project(u, x0, eps, s.norm, s.bounds)


def _sparse_direction(grad: Tensor, q: Tensor) -> Tensor:
    """L1 step direction: the signs of the top-``q`` share of gradient magnitudes (per sample), unit L1 norm."""
    flat = grad.flatten(1)
    d = flat.shape[1]
    k = ((1 - q) * d).clamp(0, d - 1).long().unsqueeze(1)  # index of the threshold in ascending order
    thresh = flat.abs().sort(dim=1).values.gather(1, k)
    signs = torch.sign(flat) * (flat.abs() >= thresh)
    return (signs / (signs.abs().sum(dim=1, keepdim=True) + 1e-10)).reshape(grad.shape)


def _run(
    s: Setup,
    tr: Tracker,
    best_f: Tensor,
    idx: Tensor,
    t: Tensor | None,
    loss_fn: Callable[..., Tensor],
    *,
    steps: int,
    rho: float,
    early_stop: bool,
    strict: bool,
) -> None:
    """One APGD run on the samples ``idx`` (with loss targets ``t``); results go to ``tr``.

    ``strict``: success means reaching ``t`` (a given target) rather than leaving ``y`` (untargeted, APGD-T).
    """
    norm, l1 = s.norm, s.norm == "l1"
    x0, eps, y = s.x[idx], s.eps[idx], s.y[idx]
    d = x0[0].numel()
    checks = _checkpoints(steps, norm)

    def P(v: Tensor) -> Tensor:
        return x0 + project(v - x0, x0, eps, norm, s.bounds)

    def evaluate(v: Tensor, with_grad: bool) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
        fn = lambda z: loss_fn(z, y, t)
        if with_grad:
            logits, f, g = s.model.value_and_grad(v, fn)
        else:
            logits = s.model.logits(v)
            f, g = fn(logits), None
        adv = is_adversarial(logits, y, t if strict else None)
        return f, g, adv, tr.update(idx, torch.where(batch_view(adv, v), v, tr.x_adv[idx]), adv)

    x = _start(s, x0, eps)
    f, g, adv, fooled = evaluate(x, True)
    x_prev = x
    x_max, g_max, f_max, adv_max = x, g, f, adv
    eta = (1.0 if l1 else 2.0) * eps
    n_up = torch.zeros_like(f)  # loss increases in the current window
    f_max_last, reduced_last = f_max, torch.ones_like(adv)
    q = torch.full_like(eps, 0.2)  # L1: share of coordinates a step moves
    l0_last = torch.full_like(eps, float(d))
    for k in range(steps):
        if early_stop and bool(fooled.any()):
            keep = ~fooled
            (idx, x0, eps, y, t, x, x_prev, g, f, x_max, g_max, f_max, adv_max, eta, n_up, f_max_last,
             reduced_last, q, l0_last) = (
                None if v is None else v[keep]
                for v in (idx, x0, eps, y, t, x, x_prev, g, f, x_max, g_max, f_max, adv_max, eta, n_up,
                          f_max_last, reduced_last, q, l0_last)
            )
            if idx.numel() == 0:
                return
        step = _sparse_direction(g, q) if l1 else ascent_direction(g, norm)
        z = P(x + batch_view(eta, x) * step)
        x_next = z if (l1 or k == 0) else P(x + ALPHA * (z - x) + (1 - ALPHA) * (x - x_prev))
        x_prev, x = x, x_next
        last = k == steps - 1
        f_new, g, adv, fooled = evaluate(x, not last)
        n_up = n_up + (f_new > f).to(n_up.dtype)
        f = f_new
        better = f > f_max
        bv = batch_view(better, x)
        x_max, f_max = torch.where(bv, x, x_max), torch.where(better, f, f_max)
        adv_max = torch.where(better, adv, adv_max)
        if last:
            break
        g_max = torch.where(bv, g, g_max)
        window = checks.get(k + 1)
        if window is None:
            continue
        if l1:  # adapt the sparsity to the best point; reset η where it got sparser
            l0 = ((x_max - x0) != 0).flatten(1).sum(dim=1).to(eps.dtype)
            reset = l0 / l0_last < 0.95
            q = l0 / d / 1.5
            eta = torch.minimum(torch.maximum(torch.where(reset, eps, eta / 1.5), eps / 10), eps)
            l0_last = l0
        else:
            reset = (n_up <= rho * window) | (~reduced_last & (f_max_last >= f_max))
            eta = torch.where(reset, eta / 2, eta)
            reduced_last, f_max_last = reset, f_max
            n_up = torch.zeros_like(n_up)
        rv = batch_view(reset, x)
        x, g = torch.where(rv, x_max, x), torch.where(rv, g_max, g)
    # samples not fooled return the point of highest loss over all runs
    improve = f_max > best_f[idx]
    best_f[idx] = torch.where(improve, f_max, best_f[idx])
    tr.update(idx, torch.where(batch_view(improve, x_max), x_max, tr.x_adv[idx]), adv_max & improve)
