"""The evasion suite beyond fixed budgets: robust accuracy as a function of eps from a minimal-norm attack, its
confirmation at a fixed eps by AutoAttack, and a few adversarial examples to look at.

* :func:`minimal_norm_curve`: FMN (Pintor et al. 2021) finds, per sample, the smallest adversarial perturbation;
  the fraction of samples whose smallest perturbation exceeds eps is the robust accuracy at every eps at once.
* :func:`autoattack_confirmation`: AutoAttack (Croce & Hein 2020) at one fixed eps on the first points, compared
  sample by sample with what the curve and the audit's fixed-eps attacks claim there. A minimal-norm attack can
  overshoot (it minimizes a norm, it does not maximize the loss within a budget); AutoAttack is the reference.
* :func:`adversarial_examples`: PGD at one eps on the first few points, kept as images for the report.

Every function returns JSON-ready values (per-sample lists included) and never mutates the model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from .common import json_safe

if TYPE_CHECKING:
    import torch
    from torch import nn

AUTOATTACK_VERSIONS = ("fast", "standard")
FAST_ATTACKS = ("apgd-ce", "apgd-t")
"""The gradient-based half of AutoAttack: what ``version="fast"`` runs (FAB-T and Square add little on models
without gradient masking, and the audit's black-box check runs Square separately)."""


def minimal_norm_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str,
                       bounds: tuple[float, float], steps: int = 100, batch_size: int = 256, seed: int = 0,
                       grid: int = 101, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Per-sample smallest adversarial perturbation (FMN) and the robust-accuracy-vs-eps curve it implies.

    Returns ``{"attack": "fmn", "norm", "steps", "norms"}`` (per sample: 0 for a clean error, None where FMN
    found nothing) plus ``"curve": {"eps": [...], "robust_accuracy": [...]}`` on ``grid`` budgets from 0 to the
    largest norm found, ``"median"`` (over clean-correct samples, None when most were never fooled),
    ``forwards``, ``backwards`` and ``seconds``. ``progress(done, total)`` is called after each batch, in samples.

    References
    ----------
    Pintor, Roli, Brendel & Biggio, "Fast Minimum-norm Adversarial Attacks through Adaptive Norm Constraints",
    NeurIPS 2021.
    """
    batches = ((a, min(a + batch_size, x.shape[0]), x[a:a + batch_size], y[a:a + batch_size])
               for a in range(0, x.shape[0], batch_size))
    return minimal_norm_from_batches(model, batches, x.shape[0], norm=norm, bounds=bounds, steps=steps, seed=seed,
                                     grid=grid, progress=progress)


def minimal_norm_from_batches(model: nn.Module, batches: Iterable[tuple[int, int, torch.Tensor, torch.Tensor]],
                              total: int, *, norm: str, bounds: tuple[float, float], steps: int = 100,
                              seed: int = 0, grid: int = 101, progress: Callable[[int, int], None] | None = None
                              ) -> dict[str, Any]:
    """:func:`minimal_norm_curve` over ``(start, stop, x, y)`` batches of ``total`` samples (e.g. those of
    :meth:`adverse.streaming.Stream.batches`), so the data need not be in memory."""
    import torch

    from ..evasion.fmn import fmn

    started = time.perf_counter()
    norms, fw, bw = [], 0, 0
    for _, b, xb, yb in batches:
        r = fmn(model, xb, yb, norm=norm, steps=steps, bounds=bounds, seed=seed)
        norms.append(torch.where(r.success, r.norms, torch.full_like(r.norms, float("inf"))).cpu())
        fw, bw = fw + r.forwards, bw + r.backwards
        if progress is not None:
            progress(b, total)
    d = torch.cat(norms).double().numpy()
    finite = d[np.isfinite(d)]
    top = float(finite.max()) if finite.size else 0.0
    eps = np.linspace(0.0, top * 1.02 if top > 0 else 1.0, grid)
    robust = [(d > e + 1e-9).mean() for e in eps]
    positive = d[d > 0]
    median = float(np.median(positive)) if positive.size else None
    return json_safe({
        "attack": "fmn", "norm": norm, "steps": steps, "seed": seed, "norms": [float(v) for v in d],
        "curve": {"eps": [float(e) for e in eps], "robust_accuracy": [float(r) for r in robust]},
        "median": median, "forwards": fw, "backwards": bw, "seconds": time.perf_counter() - started,
    })


def robust_at(norms: Sequence[float | None], eps: float) -> np.ndarray:
    """Per sample, robust at ``eps`` according to minimal norms (None = never fooled)."""
    d = np.array([np.inf if v is None else v for v in norms], dtype=np.float64)
    return d > eps + 1e-9


def autoattack_confirmation(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str,
                            bounds: tuple[float, float], version: str = "fast", seed: int = 0,
                            curve_robust: np.ndarray | None = None, fixed_robust: np.ndarray | None = None,
                            margin: float = 0.02, progress: Callable[[str, int, int], None] | None = None,
                            compile: str = "auto") -> dict[str, Any]:
    """AutoAttack at ``eps`` on ``x, y``, compared with the robust accuracy the minimal-norm curve
    (``curve_robust``, per sample) and the fixed-eps attacks (``fixed_robust``) claim on the same points.

    ``version``: "standard" (APGD-CE, APGD-T, FAB-T, Square: Croce & Hein's reference) or "fast" (APGD-CE and
    APGD-T only). The status is "warn" when AutoAttack fools more than a ``margin`` share of the points that the
    audit's own attacks left robust (the audit's numbers over-estimate robustness), else "pass".
    ``progress(attack, done, total)`` is AutoAttack's, called as each of its attacks starts. ``compile`` is
    AutoAttack's (:func:`adverse.acceleration.accelerated`); what it chose is in ``acceleration``. A model run in
    reduced precision (:class:`adverse.models.Autocast`, the audit's ``precision``) is searched in that precision
    and every point it fools is confirmed by the model in fp32 (``autoattack(precision=...)``).

    References
    ----------
    Croce & Hein, "Reliable Evaluation of Adversarial Robustness with an Ensemble of Diverse Parameter-free
    Attacks", ICML 2020.
    """
    from ..evasion.ensemble import autoattack
    from ..models import Autocast, base_model

    if version not in AUTOATTACK_VERSIONS:
        raise InputError(f"autoattack version must be one of {', '.join(AUTOATTACK_VERSIONS)}, got {version!r}")
    kw: dict[str, Any] = {"version": "standard"} if version == "standard" else {"attacks": list(FAST_ATTACKS)}
    if isinstance(model, Autocast):  # search in its precision, decide in fp32
        kw["precision"] = model.precision
        model = base_model(model)
    started = time.perf_counter()
    r = autoattack(model, x, y, eps=eps, norm=norm, bounds=bounds, seed=seed, checks=False, progress=progress,
                   compile=compile, **kw)
    aa_robust = (r.clean_correct & ~r.success).cpu().numpy()
    out: dict[str, Any] = {
        "version": version, "eps": float(eps), "n": int(x.shape[0]), "robust_accuracy": float(aa_robust.mean()),
        "attacks": list(r.params.get("attacks", [])), "per_attack": r.params.get("per_attack"),
        "forwards": r.forwards, "backwards": r.backwards, "acceleration": r.params["acceleration"],
    }
    claims = {}
    if curve_robust is not None:
        claims["minimal_norm"] = curve_robust
    if fixed_robust is not None:
        claims["fixed_eps"] = fixed_robust
    for name, claim in claims.items():
        out[name] = {"robust_accuracy": float(claim.mean()),
                     "missed": int((claim & ~aa_robust).sum())}  # robust by the claim, fooled by AutoAttack
    worst_claim = np.logical_and.reduce(list(claims.values())) if claims else None
    if worst_claim is not None:
        combined = worst_claim & aa_robust
        extra = int((worst_claim & ~aa_robust).sum())  # robust by the audit's attacks, fooled by AutoAttack
        out["combined_robust_accuracy"] = float(combined.mean())
        out["missed"] = extra
        out["status"] = "warn" if extra > margin * len(aa_robust) else "pass"
        out["message"] = (
            f"AutoAttack ({version}) at eps {eps:g} on {len(aa_robust)} points: {aa_robust.mean():.1%} robust; "
            f"the audit's attacks claimed {worst_claim.mean():.1%}"
            + (f", and AutoAttack fooled {extra} more: the audit's numbers over-estimate robustness"
               if out["status"] == "warn" else
               f"; AutoAttack confirms them ({extra} sample(s) more fooled, within the {margin:.0%} margin)")
        )
    out["seconds"] = time.perf_counter() - started
    return json_safe(out)


def adversarial_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str,
                         bounds: tuple[float, float], k: int = 8, steps: int = 40, seed: int = 0) -> dict[str, Any]:
    """PGD at ``eps`` on the first ``k`` points, as numpy arrays ``x``, ``x_adv``, ``y``, ``pred_adv`` (images for
    the report's grid; saved next to ``results.json`` as ``examples.npz``)."""
    import torch

    from ..evasion.gradient import pgd
    from ..models import as_classifier, attack_mode

    model = as_classifier(model)
    r = pgd(model, x[:k], y[:k], eps=eps, norm=norm, steps=steps, bounds=bounds, seed=seed)
    with attack_mode(model), torch.no_grad():
        pred = model(r.x_adv).argmax(1)
    return {"x": x[:k].cpu().numpy(), "x_adv": r.x_adv.detach().cpu().numpy(), "y": y[:k].cpu().numpy(),
            "pred_adv": pred.cpu().numpy(), "eps": np.float64(eps)}
