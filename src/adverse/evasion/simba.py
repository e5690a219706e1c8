"""SimBA: Simple Black-box Adversarial Attacks (Guo et al. 2019), in the pixel basis and the low-frequency
DCT basis.

Each iteration takes the next direction ``q`` of an orthonormal basis, tries ``x − εq`` and then ``x + εq``,
and keeps the first step that lowers the probability of the true class (raises that of the target class).
Every candidate is projected onto the threat model (the ``eps`` ball ∩ the bounds), so the result is a
fixed-budget attack like every other in this package.

:func:`dct_basis` (the orthonormal DCT-II matrix, in torch) and :func:`dct_directions` (the 2-D DCT basis
images of given frequencies) are shared helpers for any attack that searches in frequency space.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import InputError
from ..threat import project
from ..validation import validated
from ._query import QuerySetup, as_logits, query_setup

Tensor = torch.Tensor

BASES = ("pixel", "dct")
ORDERS = ("random", "strided")


# --------------------------------------------------------------------------------------------- DCT helpers
def dct_basis(n: int, *, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> Tensor:
    """The orthonormal DCT-II matrix ``D`` (n × n): ``D[k, i] = c_k cos(π (2i + 1) k / (2n))`` with
    ``c_0 = √(1/n)``, ``c_k = √(2/n)``. Row ``k`` is the k-th frequency; ``D @ D.T = I``, so
    ``D.T @ coefficients`` is the inverse DCT.
    """
    if n < 1:
        raise InputError(f"the DCT needs a size ≥ 1, got {n}")
    k = torch.arange(n, dtype=torch.float64, device=device).unsqueeze(1)
    i = torch.arange(n, dtype=torch.float64, device=device).unsqueeze(0)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(dtype)


def dct_directions(shape: tuple[int, ...], index: Tensor, dh: Tensor, dw: Tensor) -> Tensor:
    """The 2-D DCT basis images of flat coefficient indices ``index`` (m,) for inputs of ``shape`` (C, H, W):
    coefficient ``(c, u, v)`` (flat index ``(c·H + u)·W + v``) is the image ``D_H[u] ⊗ D_W[v]`` in channel
    ``c``, zero elsewhere. Unit L2 norm, mutually orthogonal. Returns (m, C, H, W)."""
    c_dim, h, w = shape
    c, rest = index // (h * w), index % (h * w)
    u, v = rest // w, rest % w
    img = dh[u].unsqueeze(2) * dw[v].unsqueeze(1)  # (m, H, W)
    out = img.new_zeros((index.shape[0], c_dim, h, w))
    out[torch.arange(index.shape[0], device=index.device), c] = img
    return out


def _order(basis: str, order: str, shape: tuple[int, ...], freq: tuple[int, int] | None, stride: int,
           generator: torch.Generator, device: torch.device) -> Tensor:
    """One pass over the search directions, as flat coefficient (or pixel) indices, drawn with ``generator``.

    pixel: a random permutation of all coordinates. dct + random: a random permutation of the low-frequency
    block (the ``fh × fw`` lowest frequencies of every channel). dct + strided: that block first, then rings
    of ``stride`` further frequencies, each in random order (the paper's block order): every frequency, low
    first.
    """
    if basis == "pixel":
        d = math.prod(shape)
        return torch.randperm(d, generator=generator, device=device)
    c_dim, h, w = shape
    fh, fw = freq  # type: ignore[misc]
    u = torch.arange(h, device=device).view(1, h, 1).expand(c_dim, h, w).reshape(-1)
    v = torch.arange(w, device=device).view(1, 1, w).expand(c_dim, h, w).reshape(-1)
    flat = torch.arange(c_dim * h * w, device=device)
    noise = torch.rand(flat.shape[0], generator=generator, device=device)
    if order == "random":
        keep = (u < fh) & (v < fw)
        flat, noise = flat[keep], noise[keep]
        return flat[noise.argsort()]
    # ring 0: the low-frequency block; ring r ≥ 1: frequencies that the r-th expansion by ``stride`` adds
    over = torch.maximum(u - fh + 1, v - fw + 1).clamp_min(0)
    ring = torch.div(over + stride - 1, stride, rounding_mode="floor")
    return flat[(ring.to(noise.dtype) + noise).argsort()]  # noise ∈ [0, 1): random order inside each ring


def _log_odds(scores: Tensor, cls: Tensor) -> Tensor:
    """``log(p_c / (1 − p_c))`` of class ``cls`` per row: monotone in ``p_c``, and exact where ``p_c`` rounds
    to 1 in floating point (SimBA's comparisons of ``p_c`` then still tell steps apart)."""
    z = as_logits(scores)
    z_c = z.gather(1, cls.unsqueeze(1)).squeeze(1)
    return z_c - z.scatter(1, cls.unsqueeze(1), float("-inf")).logsumexp(dim=1)


# --------------------------------------------------------------------------------------------- the attack
@validated
def simba(
    model: Any,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Tensor,
    norm: str = "linf",
    step: float = 0.2,
    basis: str = "pixel",
    freq_dims: int | None = None,
    order: str = "random",
    stride: int | None = None,
    max_queries: int = 10_000,
    target: Tensor | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int | None = 0,
):
    """SimBA: coordinate search along an orthonormal basis with score queries.

    With ``δ`` the current perturbation and ``q`` the next basis direction, SimBA queries
    ``x + Π(δ − ε q)`` and, unless that lowered the true-class probability ``p_y``, ``x + Π(δ + ε q)``; an
    improving step becomes the new ``δ``. ``Π`` is the exact projection onto ``{‖δ‖ ≤ eps} ∩ bounds``, so
    every output lies in the threat model. Directions are never repeated within a pass; a pass ends when every
    direction of the basis (or of the low-frequency block) has been tried, and the next pass draws a new
    order.
    A sample stops as soon as a queried candidate is misclassified (classified as ``target``), when it has
    spent ``max_queries``, or when a whole pass of directions in a row brought no improvement (its iterate is
    then a local optimum that another pass would only query again). A candidate that the projection maps back
    onto the current iterate (a pixel already at its bound, say) is not queried.

    **Threat model.** SimBA is natively an L2 attack: every accepted step adds ``ε`` along a new orthogonal
    direction, so without projection ``‖δ‖₂ = ε·√(#accepted steps)``. Here ``eps`` is the *budget* (in
    ``norm``) and ``step`` is the paper's ``ε``, the length of one step. For the paper's unbounded attack pass
    ``norm="l2"`` with an ``eps`` larger than ``step·√(max_queries)``; the paper's L∞-bounded SimBA-DCT
    (which clips the pixel perturbation to ``±linf_bound``) is ``norm="linf", eps=linf_bound``.

    **Scores.** Decisions compare the true class's probability (the target's, when targeted). A black box
    that returns logits (a torch module, a ``decision_function``) has its scores read through a softmax; the
    comparison uses the log-odds ``log p/(1 − p)``, a monotone function of ``p``, so it is the paper's rule
    and does not stall where ``p`` rounds to 1.

    Parameters
    ----------
    model : a :class:`~adverse.BlackBox` returning scores, a callable, a scikit-learn estimator with
        ``predict_proba`` or ``decision_function``, or a torch module (queried without gradients, in eval
        mode).
    x, y : inputs inside ``bounds`` and their integer labels.
    eps : the budget, a number or a per-sample tensor, in ``norm``.
    norm : "linf" or "l2".
    step : ε, the length of one step along a basis direction (input units; the paper uses 0.2 for [0, 1]
        images).
    basis : "pixel" (SimBA: the coordinate basis; any input shape, the default) or "dct" (SimBA-DCT: the
        2-D orthonormal DCT-II basis of the last two dimensions, per channel; inputs must be images (n, H, W)
        or (n, C, H, W); the paper's choice for large natural images, where low frequencies fool a model
        sooner).
    freq_dims : DCT only, the side of the low-frequency block searched first (``order="strided"``) or only
        (``order="random"``); None: the whole image with "random", an eighth of the side with "strided".
    order : DCT only: "random" (a random permutation of the low-frequency block) or "strided" (the block in
        random order, then rings of ``stride`` higher frequencies, each in random order).
    stride : "strided" only, the width of each ring; None: a thirty-second of the side (at least 1).
    max_queries : per-sample query budget, the clean query included.
    target : target classes for a targeted attack, or None.
    bounds : the valid input range.
    seed : seeds the private generator that draws the orders.

    Returns
    -------
    AttackResult
        ``queries`` is the total over the samples; ``params`` holds the settings.

    References
    ----------
    Guo, Gardner, You, Wilson & Weinberger, "Simple Black-box Adversarial Attacks", ICML 2019.
    """
    if basis not in BASES:
        raise InputError(f"unknown basis {basis!r}; use one of {', '.join(BASES)}")
    if order not in ORDERS:
        raise InputError(f"unknown order {order!r}; use one of {', '.join(ORDERS)}")
    if not (isinstance(step, (int, float)) and math.isfinite(step) and step > 0):
        raise InputError(f"step must be a finite number > 0 (the length of one SimBA step), got {step!r}")
    if freq_dims is not None and (not isinstance(freq_dims, int) or freq_dims < 1):
        raise InputError(f"freq_dims must be an integer ≥ 1 or None, got {freq_dims!r}")
    if stride is not None and (not isinstance(stride, int) or stride < 1):
        raise InputError(f"stride must be an integer ≥ 1 or None, got {stride!r}")
    if basis == "dct" and torch.is_tensor(x) and x.dim() not in (3, 4):  # before the clean query is spent
        raise InputError(f"basis='dct' needs images of shape (n, H, W) or (n, C, H, W), got "
                         f"{tuple(x.shape)}; use basis='pixel' for other inputs")
    with query_setup(model, x, y, eps=eps, norm=norm, max_queries=max_queries, bounds=bounds, target=target,
                     seed=seed) as s:
        shape = tuple(s.x.shape[1:])
        freq, dh, dw, stride_used = None, None, None, None
        if basis == "dct":
            shape = shape if len(shape) == 3 else (1, *shape)
            h, w = shape[1], shape[2]
            default = (h, w) if order == "random" else (math.ceil(h / 8), math.ceil(w / 8))
            freq = default if freq_dims is None else (min(freq_dims, h), min(freq_dims, w))
            stride_used = stride if stride is not None else max(1, math.ceil(max(h, w) / 32))
            dh = dct_basis(h, dtype=s.x.dtype, device=s.x.device)
            dw = dct_basis(w, dtype=s.x.dtype, device=s.x.device)
        tr = _search(s, step, basis, order, shape, freq, stride_used, dh, dw)
        spent = s.queries.double()
        params = {"eps": float(s.eps.max()), "norm": s.norm, "step": step, "basis": basis,
                  "freq_dims": None if freq is None else freq[0], "order": order if basis == "dct" else None,
                  "stride": stride_used if basis == "dct" and order == "strided" else None,
                  "targeted": target is not None, "queries_mean": float(spent.mean()),
                  "queries_median": float(spent.median())}
        return s.result(tr, "simba", params)


def _search(s: QuerySetup, step: float, basis: str, order: str, shape: tuple[int, ...],
            freq: tuple[int, int] | None, stride: int | None, dh: Tensor | None, dw: Tensor | None):
    """SimBA's loop over directions with per-sample early stop; returns the tracker."""
    tr = s.tracker()
    idx = tr.active()
    targeted = s.target is not None
    cls_all = s.y if not targeted else s.target
    sign = 1.0 if not targeted else -1.0  # minimize sign · log-odds(cls): p_y down, or p_t up
    assert s.clean_scores is not None
    x0, eps, cls = s.x[idx], s.eps[idx], cls_all[idx]
    delta = torch.zeros_like(x0)
    f = sign * _log_odds(s.clean_scores[idx], cls)
    dims = s.x[0].numel()
    perm = _order(basis, order, shape, freq, stride or 1, s.generator, s.x.device)
    passes = perm.numel()
    stale = torch.zeros(idx.shape[0], dtype=torch.long, device=s.x.device)  # directions since an improvement
    k = 0
    while idx.numel() > 0:
        # samples with no query left stop, and so do samples a whole pass of directions did not improve
        can = (s.left(idx) >= 1) & (stale < passes)
        if not bool(can.all()):
            idx, x0, eps, cls, delta, f, stale = (t[can] for t in (idx, x0, eps, cls, delta, f, stale))
            if idx.numel() == 0:
                break
        if k == passes:  # a pass is over: a new order
            perm = _order(basis, order, shape, freq, stride or 1, s.generator, s.x.device)
            k = 0
        j = perm[k : k + 1]
        k += 1
        if basis == "pixel":
            q = torch.zeros(dims, dtype=s.x.dtype, device=s.x.device).index_fill_(0, j, step)
        else:
            q = step * dct_directions(shape, j, dh, dw)  # type: ignore[arg-type]
        q = q.view(1, *x0.shape[1:])
        fooled = torch.zeros(idx.shape[0], dtype=torch.bool, device=s.x.device)
        accepted = torch.zeros_like(fooled)
        for direction in (-1.0, 1.0):
            # the second try only for samples the first did not improve, with a query left
            ask = ~accepted if direction < 0 else ~accepted & (s.left(idx) >= 1)
            cand = project(delta[ask] + direction * q, x0[ask], eps[ask], s.norm, s.bounds)
            moved = (cand != delta[ask]).flatten(1).any(dim=1)  # a step the projection undoes: no query
            sub = ask.nonzero().squeeze(1)[moved]
            if sub.numel() == 0:
                continue
            cand = cand[moved]
            scores = s.scores(x0[sub] + cand, idx[sub])
            adv = s.is_adversarial(scores.argmax(dim=1), idx[sub])
            f_new = sign * _log_odds(scores, cls[sub])
            better = (f_new < f[sub]) | adv
            take = sub[better]
            delta[take] = cand[better]
            f[take] = f_new[better]
            accepted[take] = True
            fooled[take] = adv[better]
        stale = torch.where(accepted, 0, stale + 1)
        if bool(accepted.any()):
            tr.update(idx[accepted], x0[accepted] + delta[accepted], fooled[accepted])
        if bool(fooled.any()):
            keep = ~fooled
            idx, x0, eps, cls, delta, f, stale = (t[keep] for t in (idx, x0, eps, cls, delta, f, stale))
    return tr


__all__ = ["dct_basis", "dct_directions", "simba"]
