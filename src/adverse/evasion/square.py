"""Square Attack: score-based black-box random search over localized square updates, in L∞ and L2.

Each iteration proposes one random change of the current best point, confined to a square window of side
``s`` (per sample, at a random position), queries the model once and keeps the change only if the loss
improved. The fraction ``p`` of pixels a window covers shrinks on a fixed schedule. fra31/auto-attack
(``autoattack/square.py``) and max-andr/square-attack (``attack.py``) are the numerical references for the
initializations, the schedule and the updates.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import InputError
from ..results import AttackResult
from ..threat import batch_view, clip_to_box, linf_box, lp_norm
from ..validation import validated
from ._core import Tracker, ce_loss, margin_loss
from ._query import QuerySetup, query_setup

Tensor = torch.Tensor

# iterations (out of 10 000) after which p is halved; the schedule is rescaled to the budget
P_BREAKPOINTS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


@validated
def square(
    model: Any,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Tensor,
    norm: str = "linf",
    max_queries: int = 5000,
    p_init: float = 0.8,
    loss: str = "margin",
    target: Tensor | None = None,
    restarts: int = 1,
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int | None = 0,
) -> AttackResult:
    """Square Attack: random search for a point of higher loss inside the ε-ball ∩ box, one query a step.

    For an image ``x`` of shape ``(c, h, w)`` with ``n = c·h·w`` features and a loss ``L`` to minimize
    (``L = −f``, ``f`` the margin or the cross-entropy below), the attack (Andriushchenko et al. 2020,
    Algorithm 1) starts from ``x̂ = x + δ⁰`` and repeats, for ``i = 0, 1, …``::

        δ  ~ P(ε, s_i, x̂ − x)                       (a change inside one s_i × s_i window)
        x̃  = x + δ,  query L(x̃)
        if L(x̃) < L(x̂): x̂ = x̃

    until the sample is misclassified or its budget is spent. The window side is
    ``s_i = max(round(√(p_i n / c)), 1)`` (at most ``min(h, w)``), with ``p_i = p_init / 2^k``, ``k`` the
    number of breakpoints 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 below ``⌊10⁴ i / max_queries⌋``
    (the schedule for 10 000 iterations, rescaled to the budget).

    **L∞.** ``δ⁰``: vertical stripes, ``±ε`` drawn per column and channel. Update: a window at a random
    position ``(r, t) ∈ {0..h−s} × {0..w−s}`` is set to ``±ε`` (one sign per channel), the rest of ``x̂ − x``
    is kept; the result is clipped to the box. A proposal that would leave ``x̂`` unchanged draws new signs.

    **L2.** ``δ⁰``: a grid of squares of side ``⌊h/5⌋`` centred in the image, each filled with the
    "meta pseudo-gaussian" pattern ``η`` (two halves of opposite sign whose magnitude decays as ``1/(k+1)²``
    with the distance ``k`` from their centres, unit L2 norm, transposed at random) times a random sign per
    channel; rescaled to norm ε and clipped to the box. Update (``s ≥ 3`` and odd): two random windows
    ``W₁``, ``W₂``; the perturbation in ``W₁`` becomes ``η ± δ_{W₁}/‖δ_{W₁}‖`` rescaled, per channel, to the
    norm ``√(max(ε² − ‖δ‖², 0)/c + ‖δ_{W₁∪W₂}‖²)``, the perturbation in ``W₂ \\ W₁`` is set to zero (its mass
    moves to ``W₁``), and the whole perturbation is rescaled to norm ε and clipped to the box.

    Samples already misclassified are not attacked; a sample stops as soon as it is fooled, and only
    still-robust samples are queried.

    Parameters
    ----------
    model : BlackBox, callable, scikit-learn estimator or torch.nn.Module
        Queried for scores (logits or probabilities), never for gradients. A black box that only returns
        labels is refused.
    x, y : Tensor
        Images inside ``bounds``, shape (n, c, h, w), and their integer labels, shape (n,). Other shapes
        are refused: the windows are squares of pixels. Reshape tabular or flattened inputs to
        (n, c, h, w) and reshape back inside the callable (a (n, 1, 1, d) view makes every window a single
        feature).
    eps : float or Tensor
        The budget ε in input units, a number or a per-sample tensor of shape (n,).
    norm : {"linf", "l2"}
    max_queries : int
        Queries per sample, all included: the clean query, one per (re)start and one per iteration.
        Never exceeded.
    p_init : float
        Initial fraction of the image a window covers, in (0, 1] (0.8 in AutoAttack; 0.05 for L∞ and 0.1
        for L2 on undefended ImageNet models in the paper).
    loss : {"margin", "ce"}
        ``f``, to maximize: the margin ``max_{j≠y} z_j − z_y`` (targeted: ``z_t − max_{j≠t} z_j``) or the
        cross-entropy ``CE(z, y)`` (targeted: ``−CE(z, t)``). Scores that are probabilities (rows in
        [0, 1] summing to 1) are replaced by their logarithms, logits of the same softmax, so that neither
        loss saturates.
    target : Tensor or None
        Target classes, shape (n,), for a targeted attack: success means ``predicted == target``.
    restarts : int
        Fresh starts, each on the samples still robust, sharing ``max_queries`` equally: each restart gets
        ``(max_queries − 1) // restarts`` queries and its own rescaled schedule.
    bounds : (float, float)
        The valid input range.
    seed : int
        Seed of the private generator behind every random draw.

    Returns
    -------
    AttackResult
        ``queries`` is the total over samples; ``params`` holds the settings and the per-sample query counts
        ``queries_mean`` and ``queries_median`` (all samples, the clean query included) and, when some
        correctly classified sample was fooled, ``queries_mean_fooled`` and ``queries_median_fooled`` over
        those samples.

    Notes
    -----
    Differences from the reference code: windows are drawn per sample (AutoAttack draws one position per
    batch) over every position ``0 … h − s`` as in the paper (both reference codes never place a window on the
    last row or column); the L∞ update redraws signs that would leave the point unchanged (as
    max-andr/square-attack does, AutoAttack spends a query on such proposals); ``max_queries`` counts the clean
    query and is the budget across restarts (AutoAttack's ``n_queries`` is per restart and excludes the
    clean query); the L2 initial grid skips squares that would not fit in the image (the reference fails on
    them) and uses squares of side 1 for images smaller than 5 pixels; probabilities are turned into
    log-probabilities before the loss (the reference applies its losses to whatever the model returns).

    References
    ----------
    Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box adversarial
    attack via random search", ECCV 2020.
    """
    if loss not in ("margin", "ce"):
        raise InputError(f"unknown loss {loss!r}; Square supports 'margin' and 'ce'")
    if not isinstance(restarts, int) or restarts < 1:
        raise InputError(f"restarts must be an integer ≥ 1, got {restarts!r}")
    if not 0.0 < float(p_init) <= 1.0:
        raise InputError(f"p_init must lie in (0, 1], got {p_init}")
    if torch.is_tensor(x) and x.dim() != 4:
        raise InputError(
            f"Square needs images of shape (n, c, h, w), got shape {tuple(x.shape)}; reshape the inputs "
            "(e.g. x.reshape(n, 1, h, w)) and reshape back inside the model's callable"
        )
    if isinstance(max_queries, int) and 2 <= max_queries <= restarts:
        raise InputError(f"max_queries={max_queries} leaves no query for some of the {restarts} restarts "
                         "(one goes to the clean input); raise max_queries or lower restarts")
    with query_setup(model, x, y, eps=eps, norm=norm, max_queries=max_queries, bounds=bounds, target=target,
                     seed=seed, needs="scores") as s:
        tr = s.tracker()
        share = (max_queries - 1) // restarts
        for _ in range(restarts):
            idx = tr.active()
            if idx.numel() == 0:
                break
            _run(s, tr, idx, share, float(p_init), loss)
        done = s.queries.double()
        fooled = tr.success & (s.clean_pred == s.y if s.target is None else s.clean_pred != s.target)
        params: dict[str, Any] = {
            "loss": loss, "p_init": float(p_init), "restarts": restarts, "eps": float(s.eps.max()),
            "norm": s.norm, "probabilities": s.probabilities,
            "queries_mean": float(done.mean()), "queries_median": float(done.median()),
        }
        if bool(fooled.any()):
            params.update(queries_mean_fooled=float(done[fooled].mean()),
                          queries_median_fooled=float(done[fooled].median()))
        return s.result(tr, f"square-{s.norm}", params)


def p_selection(p_init: float, it: int, n_iters: int) -> float:
    """``p`` at iteration ``it`` of ``n_iters``: ``p_init`` halved at each breakpoint of the 10 000-iteration
    schedule (10, 50, …, 8000) that ``⌊10⁴ it / n_iters⌋`` has passed."""
    i = int(it / n_iters * 10000)
    return p_init / 2 ** sum(i > b for b in P_BREAKPOINTS)


def pseudo_gaussian(a: int, b: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """An ``a × b`` bump of unit L2 norm: the pixel at Chebyshev distance ``d`` from the centre
    ``(a//2, b//2)`` weighs ``Σ_{k=d}^{K−1} 1/(k+1)²`` with ``K = max(a//2, b//2) + 1``."""
    if a == 0 or b == 0:
        return torch.zeros(a, b, dtype=dtype, device=device)
    k_max = max(a // 2, b // 2) + 1
    w = 1.0 / torch.arange(1, k_max + 1, dtype=dtype, device=device) ** 2
    tail = w.flip(0).cumsum(0).flip(0)  # tail[d] = Σ_{k ≥ d} w_k
    di = (torch.arange(a, device=device) - a // 2).abs()
    dj = (torch.arange(b, device=device) - b // 2).abs()
    d = torch.maximum(di.unsqueeze(1), dj.unsqueeze(0))
    bump = tail[d]
    return bump / bump.norm()


def meta_pseudo_gaussian(side: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The L2 update pattern η of side ``side``: the top ``side//2`` rows a positive bump, the rest a negative
    one, unit L2 norm."""
    top = pseudo_gaussian(side // 2, side, dtype, device)
    bottom = -pseudo_gaussian(side - side // 2, side, dtype, device)
    eta = torch.cat([top, bottom], dim=0)
    return eta / eta.norm()


# --------------------------------------------------------------------------------------------- one run
def _run(s: QuerySetup, tr: Tracker, idx: Tensor, share: int, p_init: float, loss: str) -> None:
    """One start on samples ``idx`` with ``share`` queries each (the initial point included)."""
    x = s.x[idx]
    eps = s.eps[idx]
    y = s.y[idx]
    t = None if s.target is None else s.target[idx]
    g = s.generator
    c, w = x.shape[1], x.shape[3]
    lo, hi = s.bounds
    lower, upper = linf_box(x, eps, s.bounds) if s.norm == "linf" else (None, None)

    def objective(z: Tensor, rows: Tensor) -> Tensor:
        z = s.logits(z)  # probabilities become log-probabilities, logits of the same softmax
        yy, tt = y[rows], None if t is None else t[rows]
        return margin_loss(z, yy, tt) if loss == "margin" else ce_loss(z, yy, tt)

    # the initial point
    if s.norm == "linf":
        stripes = _signs((x.shape[0], c, 1, w), g, x) * batch_view(eps, x)
        x_best = x + clip_to_box(stripes.expand_as(x), lower, upper)
    else:
        x_best = _l2_rescale(x, _l2_init(x, g), eps, lo, hi)
    rows = torch.arange(x.shape[0], device=x.device)
    z = s.scores(x_best, idx)
    f_best = objective(z, rows)
    robust = ~tr.update(idx, x_best, s.is_adversarial(z.argmax(dim=1), idx))

    # the samples still attacked, kept as a compact working set: gathered again only when one leaves
    act = rows[robust & (s.left(idx) > 0)]
    at, xa, xb, fa, ea, la, ua = idx[act], x[act], x_best[act], f_best[act], eps[act], None, None
    if s.norm == "linf":
        la, ua = lower[act], upper[act]
    for it in range(share - 1):
        if act.numel() == 0:
            break
        p = p_selection(p_init, it, share)
        if s.norm == "linf":
            x_new = _linf_proposal(xa, xb, ea, la, ua, p, g)
        else:
            x_new = _l2_proposal(xa, xb, ea, p, g, lo, hi)
        z = s.scores(x_new, at)
        f = objective(z, act)
        adv = s.is_adversarial(z.argmax(dim=1), at)
        better = (f > fa) | adv
        fa = torch.where(better, f, fa)
        xb = torch.where(batch_view(better, xb), x_new, xb)
        leave = adv | (s.left(at) <= 0)
        if bool(leave.any()):
            f_best[act], x_best[act] = fa, xb
            tr.update(at[leave], xb[leave], adv[leave])
            keep = ~leave
            act, at, xa, xb, fa, ea = act[keep], at[keep], xa[keep], xb[keep], fa[keep], ea[keep]
            if s.norm == "linf":
                la, ua = la[keep], ua[keep]
    if act.numel():
        f_best[act], x_best[act] = fa, xb
        tr.update(at, xb, torch.zeros_like(at, dtype=torch.bool))


def _signs(shape: tuple[int, ...], g: torch.Generator, like: Tensor) -> Tensor:
    """Independent random ±1 of ``shape``."""
    return torch.randint(0, 2, shape, generator=g, device=like.device).to(like.dtype) * 2 - 1


def _positions(n: int, limit: int, g: torch.Generator, device: torch.device) -> Tensor:
    """``n`` window offsets drawn uniformly from ``{0, …, limit}``."""
    return torch.randint(0, limit + 1, (n,), generator=g, device=device)


def _window_mask(r: Tensor, t: Tensor, side: int, h: int, w: int) -> Tensor:
    """Per-sample masks (n, 1, h, w) of the ``side × side`` windows at rows ``r``, columns ``t``."""
    i = torch.arange(h, device=r.device).view(1, h, 1)
    j = torch.arange(w, device=r.device).view(1, 1, w)
    rr, tt = r.view(-1, 1, 1), t.view(-1, 1, 1)
    m = (i >= rr) & (i < rr + side) & (j >= tt) & (j < tt + side)
    return m.unsqueeze(1)


def _window_index(r: Tensor, t: Tensor, side: int, c: int) -> tuple[Tensor, ...]:
    """Advanced-indexing tuple selecting the (n, c, side, side) windows at rows ``r``, columns ``t``."""
    ar = torch.arange(side, device=r.device)
    n_i = torch.arange(r.shape[0], device=r.device).view(-1, 1, 1, 1)
    c_i = torch.arange(c, device=r.device).view(1, -1, 1, 1)
    rows = (r.view(-1, 1) + ar).view(-1, 1, side, 1)
    cols = (t.view(-1, 1) + ar).view(-1, 1, 1, side)
    return n_i, c_i, rows, cols


def _linf_proposal(x: Tensor, x_best: Tensor, eps: Tensor, lower: Tensor, upper: Tensor, p: float,
                   g: torch.Generator) -> Tensor:
    """x̂ with one random window per sample set to ±ε per channel, inside the box.

    A sign vector that would leave x̂ unchanged is replaced by one drawn uniformly from the other 2^c − 1
    (for ε > 0 at most one sign vector is a no-op: the window then holds one clipped ±ε per channel); this is
    the reference's redraw-until-it-changes loop without the loop."""
    n, c, h, w = x.shape
    side = min(max(round(math.sqrt(p * h * w)), 1), h, w)
    mask = _window_mask(_positions(n, h - side, g, x.device), _positions(n, w - side, g, x.device), side, h, w)
    delta = x_best - x
    e = batch_view(eps, x)
    signs = _signs((n, c, 1, 1), g, x)
    x_new = x + clip_to_box(torch.where(mask, signs * e, delta), lower, upper)
    same = (x_new == x_best).flatten(1).all(dim=1) & (eps > 0)
    if bool(same.any()):
        redo = same.nonzero().squeeze(1)
        signs[redo] = signs[redo] * (1 - 2 * _nonzero_bits(redo.numel(), c, g, x))
        x_new[redo] = x[redo] + clip_to_box(torch.where(mask[redo], signs[redo] * e[redo], delta[redo]),
                                            lower[redo], upper[redo])
    return x_new


def _nonzero_bits(n: int, c: int, g: torch.Generator, like: Tensor) -> Tensor:
    """(n, c, 1, 1) masks of 0/1, uniform over the masks that are not all zero (exactly for c ≤ 24; above,
    the channels past the 24th are fair coins and the first 24 are not all zero)."""
    k = min(c, 24)
    code = torch.randint(1, 2 ** k, (n, 1), generator=g, device=like.device)
    bits = (code >> torch.arange(k, device=like.device)) & 1
    if c > k:
        bits = torch.cat([bits, torch.randint(0, 2, (n, c - k), generator=g, device=like.device)], dim=1)
    return bits.to(like.dtype).view(n, c, 1, 1)


def _l2_init(x: Tensor, g: torch.Generator) -> Tensor:
    """The L2 starting direction: a grid of squares of side ⌊min(h, w)/5⌋ centred in the image, each the
    pattern η (transposed at random per sample) times a random sign per sample and channel."""
    n, c, h, w = x.shape
    side = max(min(h, w) // 5, 1)
    eta = meta_pseudo_gaussian(side, x.dtype, x.device)
    delta = torch.zeros_like(x)

    def starts(dim: int) -> list[int]:
        first = max((dim - 5 * side) // 2, 0)
        return [first + k * side for k in range(dim // side) if first + (k + 1) * side <= dim]

    for r in starts(h):
        for t in starts(w):
            flip = torch.rand(n, generator=g, device=x.device) > 0.5
            pattern = torch.where(flip.view(-1, 1, 1, 1), eta.T, eta)  # (n, 1, side, side)
            delta[:, :, r:r + side, t:t + side] += pattern * _signs((n, c, 1, 1), g, x)
    return delta


def _l2_rescale(x: Tensor, delta: Tensor, eps: Tensor, lo: float, hi: float) -> Tensor:
    """``clip(x + ε δ/‖δ‖₂)`` to the box: on the ε-sphere before the clip, inside the ball ∩ box after."""
    unit = delta / batch_view(lp_norm(delta, "l2") + 1e-12, delta)
    return (x + unit * batch_view(eps, x)).clamp(lo, hi)


def _l2_proposal(x: Tensor, x_best: Tensor, eps: Tensor, p: float, g: torch.Generator, lo: float,
                 hi: float) -> Tensor:
    """The L2 update: mass of window W₂ moved into window W₁, W₁ refilled with η plus its old content."""
    n, c, h, w = x.shape
    side = max(round(math.sqrt(p * h * w)), 3)
    side = min(side + 1 if side % 2 == 0 else side, h, w)
    r1, t1 = _positions(n, h - side, g, x.device), _positions(n, w - side, g, x.device)
    r2, t2 = _positions(n, h - side, g, x.device), _positions(n, w - side, g, x.device)
    m1, m2 = _window_mask(r1, t1, side, h, w), _window_mask(r2, t2, side, h, w)
    w1 = _window_index(r1, t1, side, c)
    delta = x_best - x
    old = delta[w1]  # (n, c, side, side)
    norm_w1 = old.pow(2).sum(dim=(2, 3), keepdim=True).sqrt()
    norm_img = batch_view(lp_norm(delta, "l2"), delta)
    norm_ws = (delta * (m1 | m2)).pow(2).sum(dim=(2, 3), keepdim=True).sqrt()
    eta = meta_pseudo_gaussian(side, x.dtype, x.device)
    flip = torch.rand(n, generator=g, device=x.device) > 0.5
    new = torch.where(flip.view(-1, 1, 1, 1), eta.T, eta) * _signs((n, c, 1, 1), g, x)
    new = new + old / (norm_w1 + 1e-12)
    room = ((batch_view(eps, x) ** 2 - norm_img ** 2).clamp_min(0) / c + norm_ws ** 2).sqrt()
    new = new / (new.pow(2).sum(dim=(2, 3), keepdim=True).sqrt() + 1e-12) * room
    delta = delta.masked_fill(m2, 0.0)
    delta[w1] = new
    return _l2_rescale(x, delta, eps, lo, hi)
