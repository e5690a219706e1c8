"""HopSkipJumpAttack (Chen, Jordan & Wainwright 2020): a decision-based attack, in L2 and L∞.

Only the predicted label of each query is used. From an adversarial starting point the attack alternates a
binary search to the decision boundary, a Monte-Carlo estimate of the direction of the boundary's normal at
that point, and a step along it whose length is found by a geometric search; the perturbation shrinks towards
the smallest one the boundary allows. It is a minimal-norm attack by nature: with ``eps`` it stops a sample as
soon as its adversarial lies within ``eps``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import InputError
from ..results import AttackResult
from ..threat import batch_view, lp_norm
from ..validation import validated
from ._core import Tracker
from ._query import QuerySetup, query_setup

Tensor = torch.Tensor

BLEND_TOL = 1e-3  # the initialization's blend search stops at this precision (as the authors' code)
MAX_HALVINGS = 30  # geometric step search: at most this many halvings of ξ per iteration


@validated
def hopskipjump(
    model: Any,
    x: Tensor,
    y: Tensor,
    *,
    norm: str = "l2",
    eps: float | Tensor | None = None,
    max_queries: int = 20_000,
    steps: int = 40,
    init_evals: int = 100,
    max_evals: int = 10_000,
    gamma: float = 1.0,
    init_tries: int = 100,
    target: Tensor | None = None,
    x_init: Tensor | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int | None = 0,
) -> AttackResult:
    """HopSkipJumpAttack: the smallest L2 or L∞ perturbation that changes the decision, from labels only.

    With ``φ(x') = 1`` when ``x'`` is adversarial (``C(x') ≠ y``, or ``C(x') = t`` when targeted) and ``−1``
    otherwise, ``d`` the input dimension and ``θ = γ d^{−3/2}`` (L2) or ``θ = γ d^{−2}`` (L∞), each sample runs
    (Chen et al. 2020, Algorithm 2):

    0. **Initialization.** ``x_init`` when given and adversarial; otherwise uniform noise in ``bounds``, drawn
       until adversarial (at most ``init_tries`` draws), then a binary search on the blend
       ``(1 − α) x + α noise`` to precision 10⁻³. The result is x̃₀.
    1. **Boundary search** ``x_t = BIN-SEARCH(x̃_{t−1})``: L2 bisects the blend ``(1 − α) x + α x̃``,
       α ∈ [0, 1], to precision θ; L∞ bisects the clip ``clip(x̃, x − α, x + α)``, α ∈ [0, ‖x̃ − x‖∞], to
       precision ``θ‖x̃ − x‖∞``. Both take ``⌈log₂ 1/θ⌉`` queries and return the last adversarial point.
    2. **Gradient-direction estimate** at ``x_t`` from ``B_t = min(B₀ √t, max_evals)`` queries:
       ``ṽ_t = (1/B) Σ_b (φ(x_t + δ_t u_b) − φ̄) u_b`` with ``u_b`` uniform on the unit L2 sphere (L2) or
       uniform in the cube and then L2-normalized (L∞), clipped to ``bounds``, and the baseline ``φ̄`` the mean
       of the ``φ``; when all ``φ`` agree, ``ṽ = ±(1/B) Σ u_b``. The probe radius is ``δ₁ = 0.1 (hi − lo)``,
       then ``δ_t = √d θ d_{t−1}`` (L2) or ``d θ d_{t−1}`` (L∞) with ``d_{t−1} = ‖x̃_{t−1} − x‖``. The update
       direction is ``v_t = ṽ / ‖ṽ‖₂`` (L2) or ``sign(ṽ)`` (L∞).
    3. **Geometric step-size search**: ``ξ_t = ‖x_t − x‖ / √t``, halved until ``clip(x_t + ξ_t v_t)`` is
       adversarial; that point is x̃_t.

    and ends with the boundary search on the last x̃ (steps 1–3 repeat ``steps`` times; each iteration's
    boundary search serves as the next one's step 1). Every point the attack keeps has been queried and found
    adversarial; the adversarial of smallest norm seen is returned.

    All samples run in one batch: every phase queries the candidates of all active samples together.
    **Budget.** ``max_queries`` is per sample, the clean query included, and never exceeded: an iteration
    starts only when the sample can afford one estimate query, one step query and the boundary search; the
    estimate uses ``B_t`` queries or what is left after that reserve; a step search that would eat into the
    reserve gives up (x̃_t = x_t), and a search cut short by the budget returns its last adversarial point.
    A sample stops once its budget cannot pay for another iteration, when it has run ``steps`` iterations, or
    (with ``eps``) once its adversarial lies within ``eps``.

    **With eps.** ``success`` is "adversarial and ``‖x_adv − x‖ ≤ eps``"; a sample whose best adversarial lies
    outside ``eps`` gets ``x_adv = x`` (a zero perturbation, not adversarial), so every output lies inside the
    threat model. Without ``eps`` (``result.eps`` None), ``norms`` are the per-sample minimal norms found and
    :meth:`AttackResult.robust_accuracy_at` gives robust accuracy at any budget.

    Deviations from the authors' code: the L∞ boundary search's precision is ``θ min(‖x̃ − x‖∞, hi − lo)``
    (theirs: ``θ min(‖x̃ − x‖∞, 1)``, the same for [0, 1] inputs), so it does not depend on the scale of
    ``bounds``; the geometric search stops after 30 halvings (theirs loops until success); an ``x_init`` that
    is not adversarial falls back to the random initialization; initialization can fail (no adversarial noise
    in ``init_tries`` draws), and the sample then keeps ``x`` and counts as not fooled.

    Parameters
    ----------
    model : a :class:`~adverse.BlackBox` (returning scores or labels), a callable, a scikit-learn estimator
        (``predict`` alone suffices) or a torch module (queried without gradients, in eval mode). Only the
        predicted labels are used.
    x, y : inputs inside ``bounds`` and their integer labels.
    norm : "l2" or "linf".
    eps : None (minimal-norm: run the full budget) or a budget, a number or a per-sample tensor: stop a sample
        once its adversarial lies within it; success then means "adversarial and within eps".
    max_queries : per-sample query budget, the clean query included.
    steps : T, the number of iterations (gradient estimate, step, boundary search).
    init_evals : B₀, the number of queries of the first gradient estimate; iteration t uses B₀ √t.
    max_evals : the most queries of one gradient estimate.
    gamma : γ, sets the precision of the boundary search θ (above).
    init_tries : the most random-noise draws of the initialization.
    target : target classes for a targeted attack, or None (untargeted).
    x_init : starting points (same shape as ``x``, inside ``bounds``), e.g. images of the target classes for a
        targeted attack; each is queried once, and a sample whose ``x_init`` is not adversarial starts from noise.
    bounds : the valid input range.
    seed : seeds the private generator (noise, probe directions).

    Returns
    -------
    AttackResult
        ``queries`` is the total over the samples; ``norms`` the per-sample norms of ``x_adv − x``.

    References
    ----------
    Chen, Jordan & Wainwright, "HopSkipJumpAttack: A Query-Efficient Decision-Based Attack", IEEE Symposium on
    Security and Privacy 2020 (arXiv:1904.02144).
    """
    for name, value, least in (("steps", steps, 1), ("init_evals", init_evals, 1), ("max_evals", max_evals, 1),
                               ("init_tries", init_tries, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InputError(f"{name} must be an integer ≥ {least}, got {value!r}")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not (math.isfinite(gamma) and gamma > 0):
        raise InputError(f"gamma must be a finite number > 0 (it sets the boundary search's precision), got {gamma!r}")
    with query_setup(model, x, y, eps=eps, norm=norm, max_queries=max_queries, bounds=bounds, target=target,
                     seed=seed, needs="labels", norms=("l2", "linf")) as s:
        start = _check_x_init(x_init, s)
        d = s.x[0].numel()
        theta = gamma / d ** 1.5 if s.norm == "l2" else gamma / d ** 2
        bisections = max(0, math.ceil(math.log2(1.0 / theta) - 1e-9))
        tr = _attack(s, start, theta=theta, bisections=bisections, steps=steps, init_evals=init_evals,
                     max_evals=max_evals, init_tries=init_tries)
        if s.eps is not None:
            tr = _within_eps(s, tr)
        params = {"norm": s.norm, "eps": None if s.eps is None else float(s.eps.max()), "steps": steps,
                  "init_evals": init_evals, "max_evals": max_evals, "gamma": float(gamma), "theta": theta,
                  "bisections": bisections, "init_tries": init_tries, "targeted": target is not None,
                  "x_init": x_init is not None}
        return s.result(tr, "hopskipjump", params)


# --------------------------------------------------------------------------------------------- the loop
def _attack(s: QuerySetup, start: Tensor | None, *, theta: float, bisections: int, steps: int, init_evals: int,
            max_evals: int, init_tries: int) -> Tracker:
    """Algorithm 2 for every sample of the batch at once; returns the tracker of smallest adversarials."""
    tr = s.tracker(minimize=True)
    lo, hi = s.bounds
    n, d = s.x.shape[0], s.x[0].numel()
    rows = max(1, min(4096, 2 ** 24 // max(d, 1)))  # candidates per call to the black box
    idx = tr.active()
    if idx.numel() == 0:
        return tr
    x_tilde, found = _initialize(s, idx, start, init_tries, rows)
    idx = idx[found]
    x_tilde = x_tilde[found]
    if idx.numel() == 0:
        return tr
    tr.update(idx, x_tilde, torch.ones_like(idx, dtype=torch.bool))
    d_tilde = lp_norm(x_tilde - s.x[idx], s.norm)  # d_{t−1}: the distance of x̃ (before its boundary search)
    x_t = _bin_search(s, idx, x_tilde, bisections, rows)
    tr.update(idx, x_t, torch.ones_like(idx, dtype=torch.bool))
    state_x = s.x.clone()  # x_t of every sample (rows of inactive samples unused)
    state_x[idx] = x_t
    state_d = torch.zeros(n, dtype=s.x.dtype, device=s.x.device)
    state_d[idx] = d_tilde
    alive = torch.zeros(n, dtype=torch.bool, device=s.x.device)
    alive[idx] = True
    for t in range(1, steps + 1):
        alive &= s.left(torch.arange(n, device=s.x.device)) >= bisections + 2  # one estimate + one step query
        if s.eps is not None:
            alive &= ~(tr.success & (tr.norms <= s.eps))
        idx = alive.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        x0, x_t = s.x[idx], state_x[idx]
        # gradient-direction estimate
        if t == 1:
            delta = torch.full_like(state_d[idx], 0.1 * (hi - lo))
        else:
            delta = (math.sqrt(d) if s.norm == "l2" else d) * theta * state_d[idx]
        budget = torch.clamp(s.left(idx) - bisections - 1, max=min(int(init_evals * math.sqrt(t)), max_evals))
        v = _direction(s, idx, x_t, delta, budget, rows)
        # geometric step-size search
        xi = lp_norm(x_t - x0, s.norm) / math.sqrt(t)
        x_tilde = _step_search(s, idx, x_t, v, xi, bisections, rows)
        state_d[idx] = lp_norm(x_tilde - x0, s.norm)
        # boundary search
        x_t = _bin_search(s, idx, x_tilde, bisections, rows)
        tr.update(idx, x_t, torch.ones_like(idx, dtype=torch.bool))
        state_x[idx] = x_t
    return tr


def _decide(s: QuerySetup, cand: Tensor, idx: Tensor, rows: int) -> Tensor:
    """φ: is each candidate ``cand[i]`` (of sample ``idx[i]``) adversarial? One query per row, in chunks."""
    out = [s.is_adversarial(s.predict(cand[a:a + rows], idx[a:a + rows]), idx[a:a + rows])
           for a in range(0, cand.shape[0], rows)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool, device=cand.device)


def _initialize(s: QuerySetup, idx: Tensor, start: Tensor | None, tries: int, rows: int) -> tuple[Tensor, Tensor]:
    """x̃₀ for samples ``idx``: ``x_init`` where adversarial, else uniform noise found adversarial and blended
    towards x by binary search. Returns (x̃₀, found) aligned with ``idx``."""
    lo, hi = s.bounds
    x0 = s.x[idx]
    x_tilde = x0.clone()
    found = torch.zeros(idx.shape[0], dtype=torch.bool, device=x0.device)
    if start is not None:
        adv = _decide(s, start[idx], idx, rows)
        x_tilde[adv] = start[idx][adv]
        found |= adv
    noise = x0.clone()
    from_noise = torch.zeros_like(found)
    for _ in range(tries):
        pending = (~found & (s.left(idx) >= 1)).nonzero().squeeze(1)
        if pending.numel() == 0:
            break
        u = torch.rand(x0[pending].shape, generator=s.generator, device=x0.device, dtype=x0.dtype)
        u = lo + (hi - lo) * u
        adv = _decide(s, u, idx[pending], rows)
        hit = pending[adv]
        noise[hit] = u[adv]
        found[hit] = True
        from_noise[hit] = True
    # binary search on the blend (1 − α) x + α noise, α ∈ [0, 1], to precision BLEND_TOL
    j = from_noise.nonzero().squeeze(1)
    if j.numel():
        x_tilde[j] = _bisect(s, idx[j], x0[j], noise[j], torch.ones(j.shape[0], dtype=x0.dtype, device=x0.device),
                             math.ceil(math.log2(1.0 / BLEND_TOL)), "l2", rows)
    return x_tilde, found


def _bin_search(s: QuerySetup, idx: Tensor, x_tilde: Tensor, bisections: int, rows: int) -> Tensor:
    """BIN-SEARCH(x̃, x, θ, ℓp): the boundary point between x and the adversarial x̃, on the adversarial side
    (``bisections = ⌈log₂ 1/θ⌉`` halvings of the interval)."""
    x0 = s.x[idx]
    if s.norm == "l2":
        high = torch.ones(idx.shape[0], dtype=x0.dtype, device=x0.device)
    else:
        high = lp_norm(x_tilde - x0, "linf")
    return _bisect(s, idx, x0, x_tilde, high, bisections, s.norm, rows)


def _bisect(s: QuerySetup, idx: Tensor, x0: Tensor, x_adv: Tensor, high: Tensor, count: int, kind: str,
            rows: int) -> Tensor:
    """``count`` bisections of α ∈ [0, high] on the path from x0 (α = 0) to the adversarial x_adv (α = high):
    ``(1 − α) x0 + α x_adv`` ("l2") or ``clip(x_adv, x0 − α, x0 + α)`` ("linf"). Returns the adversarial point
    of the smallest α queried (x_adv if none); a sample stops bisecting when its budget is spent."""
    low = torch.zeros_like(high)
    high = high.clone()
    best = x_adv.clone()
    for _ in range(count):
        j = (s.left(idx) >= 1).nonzero().squeeze(1)
        if j.numel() == 0:
            break
        mid = (low[j] + high[j]) / 2
        m = batch_view(mid, x0[j])
        if kind == "l2":
            cand = (1 - m) * x0[j] + m * x_adv[j]
        else:
            cand = torch.clamp(x_adv[j], x0[j] - m, x0[j] + m)
        adv = _decide(s, cand, idx[j], rows)
        high[j] = torch.where(adv, mid, high[j])
        low[j] = torch.where(adv, low[j], mid)
        best[j[adv]] = cand[adv]
    return best


def _direction(s: QuerySetup, idx: Tensor, x_t: Tensor, delta: Tensor, budget: Tensor, rows: int) -> Tensor:
    """The update direction v_t from ``budget[i]`` probes of radius ``delta[i]`` around each boundary point x_t,
    with baseline subtraction (Equation (12) of the paper); unit L2 norm (L2) or its sign (L∞)."""
    lo, hi = s.bounds
    n_a = idx.shape[0]
    flat = x_t.flatten(1)
    sum_fu = torch.zeros_like(flat)
    sum_u = torch.zeros_like(flat)
    sum_f = torch.zeros(n_a, dtype=flat.dtype, device=flat.device)
    owner = torch.repeat_interleave(torch.arange(n_a, device=flat.device), budget)
    for a in range(0, owner.shape[0], rows):
        k = owner[a:a + rows]
        if s.norm == "l2":
            u = torch.randn((k.shape[0], flat.shape[1]), generator=s.generator, device=flat.device, dtype=flat.dtype)
        else:
            u = torch.rand((k.shape[0], flat.shape[1]), generator=s.generator, device=flat.device,
                           dtype=flat.dtype) * 2 - 1
        u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-12)
        dk = delta[k].unsqueeze(1)
        probe = (flat[k] + dk * u).clamp(lo, hi)
        u = (probe - flat[k]) / dk
        f = _decide(s, probe.reshape(-1, *x_t.shape[1:]), idx[k], rows).to(flat.dtype) * 2 - 1
        sum_fu.index_add_(0, k, f.unsqueeze(1) * u)
        sum_u.index_add_(0, k, u)
        sum_f.index_add_(0, k, f)
    b = budget.to(flat.dtype).clamp_min(1)
    mean_u = sum_u / b.unsqueeze(1)
    f_bar = (sum_f / b).unsqueeze(1)
    g = torch.where(sum_f.unsqueeze(1) == b.unsqueeze(1), mean_u,  # every probe adversarial
                    torch.where(sum_f.unsqueeze(1) == -b.unsqueeze(1), -mean_u,  # none adversarial
                                sum_fu / b.unsqueeze(1) - f_bar * mean_u))  # (1/B) Σ (φ_b − φ̄) u_b
    g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-30)
    v = g if s.norm == "l2" else g.sign()
    return v.reshape(x_t.shape)


def _step_search(s: QuerySetup, idx: Tensor, x_t: Tensor, v: Tensor, xi: Tensor, reserve: int,
                 rows: int) -> Tensor:
    """x̃_t = clip(x_t + ξ v) with ξ halved until adversarial; x_t where no ξ succeeds within MAX_HALVINGS
    halvings or before the budget would eat into the ``reserve`` kept for the boundary search."""
    lo, hi = s.bounds
    x_tilde = x_t.clone()
    pending = torch.ones(idx.shape[0], dtype=torch.bool, device=x_t.device)
    xi = xi.clone()
    for _ in range(MAX_HALVINGS + 1):
        pending &= s.left(idx) > reserve
        j = pending.nonzero().squeeze(1)
        if j.numel() == 0:
            break
        cand = (x_t[j] + batch_view(xi[j], x_t[j]) * v[j]).clamp(lo, hi)
        adv = _decide(s, cand, idx[j], rows)
        x_tilde[j[adv]] = cand[adv]
        pending[j[adv]] = False
        xi[j] = torch.where(adv, xi[j], xi[j] / 2)
    return x_tilde


# --------------------------------------------------------------------------------------------- helpers
def _check_x_init(x_init: Tensor | None, s: QuerySetup) -> Tensor | None:
    if x_init is None:
        return None
    if not torch.is_tensor(x_init) or x_init.shape != s.x.shape or not x_init.is_floating_point():
        raise InputError(f"x_init must be a floating-point tensor of shape {tuple(s.x.shape)} (one starting "
                         "point per input)")
    if not torch.isfinite(x_init).all():
        raise InputError("x_init contains NaN or infinite values")
    lo, hi = s.bounds
    if bool(((x_init < lo) | (x_init > hi)).any()):
        raise InputError(f"x_init lies outside bounds {s.bounds}; pass starting points inside the bounds")
    return x_init.detach().to(device=s.x.device, dtype=s.x.dtype)


def _within_eps(s: QuerySetup, tr: Tracker) -> Tracker:
    """The fixed-budget view of a minimal-norm tracker: the best adversarial where it lies within eps, else x."""
    assert s.eps is not None
    ok = tr.success & (tr.norms <= s.eps)
    out = s.tracker()
    out.update(None, torch.where(batch_view(ok, s.x), tr.x_adv, s.x), ok)
    return out
