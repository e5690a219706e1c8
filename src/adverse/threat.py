"""Threat models: the norm, the budget ``eps`` and the input bounds, and exact projections onto them.

A perturbation ``delta`` of an input ``x`` is admissible when ``‖delta‖_p ≤ eps`` and
``lo ≤ x + delta ≤ hi``. :func:`project` returns the Euclidean projection of a perturbation onto that set
(the L∞ ball ∩ box, the L2 ball ∩ box and the L1 ball ∩ box), exactly, for every sample of a batch.

References
----------
Croce & Hein, "Mind the box: l1-APGD for sparse adversarial attacks on image classifiers", ICML 2021
(the projection onto the L1 ball intersected with the box).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Union

import torch

from .errors import InputError

NORMS = ("linf", "l2", "l1")
_ALIASES = {"linf": "linf", "inf": "linf", "l_inf": "linf", "l2": "l2", "2": "l2", "l1": "l1", "1": "l1"}

Eps = Union[float, torch.Tensor]


def check_norm(norm: str) -> str:
    """Return the canonical name of ``norm`` ("linf", "l2" or "l1") or raise :class:`InputError`."""
    key = str(norm).lower().replace("∞", "inf")
    if key not in _ALIASES:
        raise InputError(f"unknown norm {norm!r}; use one of {', '.join(NORMS)}")
    return _ALIASES[key]


def dual_norm(norm: str) -> str:
    """The dual norm: ``linf`` ↔ ``l1``, ``l2`` ↔ ``l2``."""
    return {"linf": "l1", "l2": "l2", "l1": "linf"}[check_norm(norm)]


def batch_view(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample vector ``t`` of shape (n,) so it broadcasts against ``like`` of shape (n, ...)."""
    return t.reshape(-1, *([1] * (like.dim() - 1)))


def lp_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample Lp norm of a batch ``delta`` (shape (n, ...)) → shape (n,)."""
    flat = delta.flatten(1)
    norm = check_norm(norm)
    if norm == "linf":
        return flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    if norm == "l2":
        return flat.norm(p=2, dim=1)
    return flat.abs().sum(dim=1)


def as_eps(eps: Eps, n: int, like: torch.Tensor) -> torch.Tensor:
    """Validate ``eps`` (a float or a per-sample tensor) and return it as a tensor of shape (n,)."""
    if not torch.is_tensor(eps) and (isinstance(eps, bool) or not isinstance(eps, numbers.Real)):
        raise InputError(f"eps must be a number or a tensor of shape ({n},), got {eps!r}; pass eps in input units as "
                         "a number (e.g. 8/255 for [0, 1] images)")
    if torch.is_tensor(eps) and (eps.dtype == torch.bool or eps.is_complex()):
        raise InputError(f"eps must be a real number or a real tensor of shape ({n},), got a {eps.dtype} tensor")
    e = torch.as_tensor(eps, dtype=like.dtype, device=like.device)
    if e.dim() == 0:
        e = e.expand(n)
    if e.shape != (n,):
        raise InputError(f"eps must be a number or a tensor of shape ({n},), got shape {tuple(e.shape)}")
    if not torch.isfinite(e).all() or (e < 0).any():
        raise InputError("eps must be finite and ≥ 0; pass eps in input units (e.g. 8/255 for [0, 1] images)")
    return e.clone()


@dataclass(frozen=True)
class ThreatModel:
    """What the adversary may do: change an input by at most ``eps`` in ``norm``, staying inside ``bounds``.

    Parameters
    ----------
    norm : "linf", "l2" or "l1".
    eps : the budget, in input units (8/255 for [0, 1] images means 8/255, not 8).
    bounds : (lo, hi), the valid input range; the adversarial input always lies inside it.
    """

    norm: str = "linf"
    eps: float = 8 / 255
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", check_norm(self.norm))
        if not (isinstance(self.eps, (int, float)) and self.eps >= 0 and self.eps < float("inf")):
            raise InputError(f"eps must be a finite number ≥ 0, got {self.eps!r}")
        lo, hi = self.bounds
        if not lo < hi:
            raise InputError(f"bounds must satisfy lo < hi, got {self.bounds!r}")

    def project(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """Project ``x_adv`` onto the admissible set around ``x``."""
        delta = project(x_adv - x, x, self.eps, self.norm, self.bounds)
        return x + delta

    def contains(self, x: torch.Tensor, x_adv: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
        """Per-sample: is ``x_adv`` admissible (within ``eps`` + ``tol`` and inside the bounds)?"""
        lo, hi = self.bounds
        inside = ((x_adv >= lo - tol) & (x_adv <= hi + tol)).flatten(1).all(dim=1)
        return inside & (lp_norm(x_adv - x, self.norm) <= self.eps + tol)


def project(
    delta: torch.Tensor, x: torch.Tensor, eps: Eps, norm: str, bounds: tuple[float, float] = (0.0, 1.0)
) -> torch.Tensor:
    """Euclidean projection of ``delta`` onto ``{d : ‖d‖_p ≤ eps, lo ≤ x + d ≤ hi}``, per sample.

    ``eps`` is a number or a per-sample tensor of shape (n,). Exact for all three norms.
    """
    norm = check_norm(norm)
    if torch.is_tensor(eps):  # per-sample budgets, already validated by the caller (no device sync here)
        eps_t = eps.to(device=delta.device, dtype=delta.dtype)
        if eps_t.dim() == 0:
            eps_t = eps_t.expand(delta.shape[0])
        if eps_t.shape != (delta.shape[0],):
            raise InputError(f"eps must be a number or a tensor of shape ({delta.shape[0]},), got {tuple(eps.shape)}")
    else:
        eps_t = as_eps(eps, delta.shape[0], delta)
    if norm == "linf":
        return clip_to_box(delta, *linf_box(x, eps_t, bounds))
    lo, hi = bounds
    lower, upper = lo - x, hi - x  # box for delta; lower ≤ 0 ≤ upper for x inside the bounds
    if norm == "l2":
        return _project_l2_box(delta, lower, upper, eps_t)
    return _project_l1_box(delta, lower, upper, eps_t)


def linf_box(
    x: torch.Tensor, eps: torch.Tensor, bounds: tuple[float, float] = (0.0, 1.0)
) -> tuple[torch.Tensor, torch.Tensor]:
    """The L∞ ball ∩ box around ``x`` as per-coordinate limits ``(lower, upper)`` on a perturbation, for a
    per-sample ``eps`` of shape (n,): ``max(−eps, lo − x) ≤ delta ≤ min(eps, hi − x)``.

    :func:`clip_to_box` with these limits is the L∞ projection; an iterative attack can compute them once per
    batch rather than once per step (row ``i`` of the limits belongs to row ``i`` of ``x``, so they index alike).
    """
    lo, hi = bounds
    e = batch_view(eps.to(x.dtype), x)
    return torch.maximum(-e, lo - x), torch.minimum(e, hi - x)


def clip_to_box(delta: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """``min(max(delta, lower), upper)``: the projection onto the L∞ ball ∩ box given by :func:`linf_box`."""
    return torch.clamp(delta, lower, upper)  # one pass; equal to min(max(·)) even where lower > upper


def _project_l2_box(v: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Exact projection onto the L2 ball ∩ box.

    The KKT conditions give ``d(t) = clip(t·v, lower, upper)`` with ``t = 1 / (1 + λ) ∈ (0, 1]``; ``‖d(t)‖²``
    is piecewise quadratic in ``t`` with a breakpoint where each coordinate starts to clip, so sorting the
    breakpoints locates the ``t`` with ``‖d(t)‖ = eps`` in closed form.
    """
    shape = v.shape
    v, lower, upper = v.flatten(1), lower.flatten(1).expand_as(v.flatten(1)), upper.flatten(1).expand_as(v.flatten(1))
    d0 = v.clamp(lower, upper)
    inside = d0.norm(dim=1) <= eps
    if bool(inside.all()):
        return d0.reshape(shape)
    cap = torch.where(v >= 0, upper, -lower)  # how far each coordinate may move in the direction of v
    a = v.abs()
    t_break = torch.where(a > 0, cap / a.clamp_min(torch.finfo(v.dtype).tiny), torch.full_like(a, float("inf")))
    order = t_break.argsort(dim=1)
    tb = t_break.gather(1, order)
    a2 = (a * a).gather(1, order)
    c2 = (cap * cap).gather(1, order)
    # For t in [tb[k-1], tb[k]): coordinates 0..k-1 (sorted) are clipped.
    clipped_c2 = torch.cumsum(c2, dim=1) - c2  # Σ_{j<k} c_j²
    free_a2 = a2.sum(dim=1, keepdim=True) - (torch.cumsum(a2, dim=1) - a2)  # Σ_{j≥k} a_j²
    e2 = (eps * eps).unsqueeze(1)
    # ‖d‖² at the breakpoint tb[k] (start clipping k): clipped_c2 + tb² free_a2 (k free at that point)
    g_at = clipped_c2 + torch.where(torch.isinf(tb), torch.full_like(tb, float("inf")), tb * tb * free_a2)
    k = (g_at <= e2).sum(dim=1, keepdim=True).clamp(max=v.shape[1] - 1)  # first breakpoint exceeding eps²
    t = torch.sqrt(((e2 - clipped_c2.gather(1, k)).clamp_min(0)) / free_a2.gather(1, k).clamp_min(1e-30))
    d = (v * t).clamp(lower, upper)
    return torch.where(inside.unsqueeze(1), d0, d).reshape(shape)


def _project_l1_box(v: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Exact projection onto the L1 ball ∩ box (Croce & Hein 2021).

    The KKT conditions give ``|d_i(λ)| = min(max(|v_i| − λ, 0), c_i)`` where ``c_i`` is the room in the box in
    the direction of ``v_i``; ``‖d(λ)‖₁`` is piecewise linear and non-increasing in λ with breakpoints
    ``|v_i| − c_i`` (slope −1 starts) and ``|v_i|`` (slope −1 ends). Sorting the breakpoints gives λ exactly.
    """
    shape, dtype = v.shape, v.dtype
    v, lower, upper = v.flatten(1), lower.flatten(1).expand_as(v.flatten(1)), upper.flatten(1).expand_as(v.flatten(1))
    d0 = v.clamp(lower, upper)
    inside = d0.abs().sum(dim=1) <= eps
    if bool(inside.all()):
        return d0.reshape(shape)
    if v.device.type != "mps":  # ‖d(λ)‖₁ sums the whole box room: float32 rounding there would exceed eps
        v, lower, upper, eps = v.double(), lower.double(), upper.double(), eps.double()
    a = v.abs()
    cap = torch.where(v >= 0, upper, -lower).clamp_min(0)
    bp = torch.cat([a - cap, a], dim=1)
    slope_change = torch.cat([-torch.ones_like(a), torch.ones_like(a)], dim=1)
    order = bp.argsort(dim=1)
    bp = bp.gather(1, order)
    slope = torch.cumsum(slope_change.gather(1, order), dim=1)  # slope on [bp[k], bp[k+1])
    seg = (bp[:, 1:] - bp[:, :-1]) * slope[:, :-1]
    f = cap.sum(dim=1, keepdim=True) + torch.cat([torch.zeros_like(bp[:, :1]), torch.cumsum(seg, dim=1)], dim=1)
    e = eps.unsqueeze(1)
    k = ((f > e).sum(dim=1, keepdim=True) - 1).clamp(0, bp.shape[1] - 2)  # last breakpoint with f > eps
    lam = bp.gather(1, k) + (f.gather(1, k) - e) / (-slope.gather(1, k)).clamp_min(1)
    lam = lam.clamp_min(0)
    d = (torch.sign(v) * torch.minimum((a - lam).clamp_min(0), cap)).to(dtype)
    return torch.where(inside.unsqueeze(1), d0, d).reshape(shape)


def random_in_ball(
    x: torch.Tensor, eps: torch.Tensor, norm: str, generator: torch.Generator, bounds: tuple[float, float]
) -> torch.Tensor:
    """A random perturbation inside the ball ∩ box, drawn uniformly in the ball before the box clip."""
    norm = check_norm(norm)
    n, dim = x.shape[0], x[0].numel()
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
        delta = u * batch_view(eps, x)
    else:
        g = torch.randn((n, dim), generator=generator, device=x.device, dtype=x.dtype)
        if norm == "l1":  # uniform on the L1 ball: Laplace direction, radius r = U^(1/d)
            u = torch.rand((n, dim), generator=generator, device=x.device, dtype=x.dtype)
            g = torch.sign(g) * (-torch.log(u.clamp_min(1e-12)))
        direction = g / lp_norm(g, norm).clamp_min(1e-12).unsqueeze(1)
        r = torch.rand(n, generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / dim)
        delta = (direction * (r * eps).unsqueeze(1)).reshape(x.shape)
    lo, hi = bounds
    return (x + delta).clamp(lo, hi) - x
