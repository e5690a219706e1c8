"""The certification suite: proven lower bounds on robust accuracy, by interval bound propagation (L∞) and by
randomized smoothing (L2).

:func:`certify_suite` is a pure function of a model and data; it returns the JSON-ready dictionary that the
audit stores as ``results["certify"]`` and that :func:`adverse.evaluation.report.render_report` draws. It runs
the certifiers of :mod:`adverse.defenses` and never re-implements one:

* IBP (:func:`adverse.defenses.bounds.verify`): a sample counts at ε when the interval bounds prove the model's
  prediction is the label on the whole L∞ ball of radius ε (∩ the input bounds). Only for ``norm="linf"``; a model
  with layers IBP cannot bound is reported as skipped, with the reason.
* Randomized smoothing (:func:`adverse.defenses.smoothing.certify`): certifies the *smoothed* classifier
  ``g(x) = argmax_c P(f(x + δ) = c)``, ``δ ~ N(0, σ² I)`` — not the model itself — within an L2 radius, each
  certificate wrong with probability at most ``alpha``. An L2 ball of radius ``r`` contains the L∞ ball of radius
  ``r / √d`` (``d`` input dimensions) and the L1 ball of radius ``r``, so an L∞ budget ε is certified at L2 radius
  ``ε √d`` and an L1 budget at radius ε; each row says which budget it stands for.

Certified accuracy at a budget counts a sample only when the certified prediction equals its label and the
certified radius reaches the budget (abstentions count as wrong): a lower bound on the accuracy under any attack
within the budget (with probability ``1 − alpha`` per sample for smoothing).

References
----------
Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized Smoothing", ICML 2019.
Gowal, Dvijotham, Stanforth, Bunel, Qin, Uesato, Arandjelović, Mann & Kohli, "On the Effectiveness of Interval
Bound Propagation for Training Verifiably Robust Models", arXiv:1810.12715, 2018.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import InputError, ModelError
from . import html
from .common import DEFAULT_EPS, ProgressFn, SuiteContext, check_int
from .common import check_eps as check_budgets
from .suites import Suite

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..data import Dataset

METHODS = ("ibp", "smoothing")


def _budget_radius(norm: str, eps: float, dim: int) -> float:
    """The L2 radius whose ball contains the ``norm`` ball of radius ``eps`` in ``dim`` dimensions."""
    return eps * math.sqrt(dim) if norm == "linf" else eps


def _ibp_method(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: Sequence[float],
                bounds: tuple[float, float], batch_size: int, step: ProgressFn) -> dict[str, Any]:
    """IBP-verified accuracy at each L∞ ``eps`` (Gowal et al. 2018), or a "skipped" entry naming the layer IBP
    cannot bound."""
    import torch

    from ..defenses.bounds import verify

    started = time.perf_counter()
    rows = []
    try:
        for i, e in enumerate(eps):
            step(f"IBP at eps {e:g}", i)
            ok = torch.cat([verify(model, x[a : a + batch_size], y[a : a + batch_size], e, bounds=bounds)
                            for a in range(0, x.shape[0], batch_size)])
            rows.append({"eps": e, "certified_accuracy": float(ok.double().mean()), "certified": int(ok.sum())})
    except ModelError as err:
        return {"method": "ibp", "norm": "linf", "status": "skipped", "reason": str(err)}
    return {"method": "ibp", "norm": "linf", "status": "ok", "rows": rows,
            "seconds": time.perf_counter() - started}


def _smoothing_method(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps: Sequence[float], *,
                      sigma: float, n0: int, samples: int, alpha: float, batch_size: int,
                      bounds: tuple[float, float], seed: int) -> dict[str, Any]:
    """Randomized-smoothing certified accuracy (Cohen et al. 2019) at the L2 radius that covers each budget."""
    from ..defenses.smoothing import certify

    started = time.perf_counter()
    certs = certify(model, x, sigma=sigma, n0=n0, n=samples, alpha=alpha, batch_size=batch_size, bounds=bounds,
                    seed=seed)
    dim = int(x[0].numel())

    def accuracy(radius: float) -> float:
        with warnings.catch_warnings():  # beyond max_radius the answer is 0; the row says so
            warnings.simplefilter("ignore")
            return certs.certified_accuracy(y, radius)

    rows = []
    for e in eps:
        radius = _budget_radius(norm, e, dim)
        acc = accuracy(radius)
        row: dict[str, Any] = {"radius": radius, "certified_accuracy": acc, "certified": round(acc * len(y)),
                               "beyond_max_radius": radius > certs.max_radius}
        if norm != "l2":
            row[f"{norm}_eps"] = e
        rows.append(row)
    return {
        "method": "smoothing", "norm": "l2", "status": "ok", "sigma": float(sigma), "n0": n0, "samples": samples,
        "alpha": float(alpha), "smoothed_accuracy": accuracy(0.0), "rows": rows,
        "abstain_rate": float((certs.prediction == -1).double().mean()), "max_radius": certs.max_radius,
        "seconds": time.perf_counter() - started,
    }


def certify_suite(
    model: nn.Module,
    data: Dataset | tuple[Any, Any],
    *,
    norm: str = "linf",
    eps: float | Iterable[float] = DEFAULT_EPS,
    n: int | None = 100,
    sigma: float = 0.25,
    n0: int = 100,
    samples: int = 1000,
    alpha: float = 0.001,
    batch_size: int = 1000,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Certified accuracy of ``model`` on the first ``n`` samples of ``data`` at each budget ``eps``: by IBP
    (L∞ only; Gowal et al. 2018) and by randomized smoothing (L2; Cohen et al. 2019).

    Parameters
    ----------
    model : a torch module returning logits; left as found.
    data : an :class:`adverse.data.Dataset` or a pair ``(x, y)``.
    norm : the threat model of ``eps``: "linf" (IBP, and smoothing at L2 radius ``ε √d``), "l2" (smoothing at
        radius ε; IBP skipped) or "l1" (smoothing at radius ε; IBP skipped).
    eps : the budgets, in input units.
    n : how many samples, from the start of ``data`` (None: all).
    sigma, n0, samples, alpha : smoothing's noise level, selection and estimation samples per input, and
        failure probability per certificate (:func:`adverse.defenses.smoothing.certify`'s ``sigma``, ``n0``,
        ``n``, ``alpha``).
    batch_size : inputs per IBP pass and noisy inputs per smoothing forward pass.
    seed : the smoothing noise; the same call gives the same numbers.
    progress : ``progress(description, completed, total)``.

    Returns
    -------
    dict
        ``{"n", "clean_accuracy", "methods": [ibp, smoothing], "config"}`` with plain numbers only. The IBP
        entry holds ``rows`` of ``{"eps", "certified_accuracy", "certified"}`` or ``status: "skipped"`` with a
        ``reason``; the smoothing entry ``smoothed_accuracy`` (radius 0, abstentions wrong), ``abstain_rate``,
        ``max_radius`` (the most ``samples`` can certify) and ``rows`` of ``{"radius", "certified_accuracy",
        "certified", "beyond_max_radius"}`` plus ``"linf_eps"``/``"l1_eps"``, the budget a row stands for.

    Raises
    ------
    InputError : a bad model, data, norm, budget or smoothing parameter (raised before any work).

    References
    ----------
    Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized Smoothing", ICML 2019.
    Gowal et al., "On the Effectiveness of Interval Bound Propagation for Training Verifiably Robust Models",
    arXiv:1810.12715, 2018.
    """
    import torch

    from ..defenses.smoothing import _check, _check_count, _device
    from ..evasion._core import check_labels
    from ..models import as_classifier, checked_logits
    from ..poisoning._common import check_eps, predict
    from ..threat import check_norm

    if not isinstance(model, torch.nn.Module):
        raise InputError(f"model must be a torch.nn.Module returning logits, got {type(model).__name__}")
    model = as_classifier(model)  # a ModelOutput, a dict with logits or a tuple: its logits (IBP traces through)
    from ..streaming import Stream, as_data

    dataset = as_data(data)
    if isinstance(dataset, Stream):  # certification holds its samples in memory: the first n of them
        dataset = dataset.take(len(dataset) if n is None else n)
    norm = check_norm(norm)
    eps_list = check_budgets(eps)
    if norm == "linf":
        eps_list = [check_eps(e, dataset.bounds) for e in eps_list]
    if n is not None:
        if check_int("n", n, 1) > len(dataset):
            raise InputError(f"n={n} but the data has only {len(dataset)} samples; pass n ≤ {len(dataset)}")
        dataset = dataset.subset(n)
    seed = check_int("seed", seed, 0)
    _check(model, dataset.x, sigma, alpha, batch_size, dataset.bounds)
    _check_count("n0", n0)
    _check_count("samples", samples)
    if n0 > samples:
        raise InputError(f"n0={n0} selection samples exceeds samples={samples}; use n0 ≤ samples")

    steps = len(eps_list) * (norm == "linf") + 1

    def step(description: str, done: int) -> None:
        if progress is not None:
            progress(description, done, steps)

    device = _device(model, dataset.x)
    x, y = dataset.x.to(device), dataset.y.to(device)
    # the model's answer on the first batch: logits of the right shape, finite, and classes the labels index
    classes = checked_logits(model, x[:batch_size], probabilities=True).shape[1]
    check_labels(y, classes, "labels of the data")
    clean = float((predict(model, x) == y).double().mean())
    ibp = (_ibp_method(model, x, y, eps_list, dataset.bounds, batch_size, step) if norm == "linf" else
           {"method": "ibp", "status": "skipped",
            "reason": f"interval bound propagation certifies L∞ budgets only; norm is {norm}"})
    step(f"randomized smoothing (sigma {sigma:g}, {samples} samples per input)", steps - 1)
    smooth = _smoothing_method(model, x, y, norm, eps_list, sigma=sigma, n0=n0, samples=samples, alpha=alpha,
                               batch_size=batch_size, bounds=dataset.bounds, seed=seed)
    step("certification done", steps)
    return {
        "n": len(dataset), "clean_accuracy": clean, "methods": [ibp, smooth],
        "config": {"norm": norm, "eps": eps_list, "n": n, "sigma": float(sigma), "n0": n0, "samples": samples,
                   "alpha": float(alpha), "batch_size": batch_size, "seed": seed,
                   "input_dim": int(x[0].numel()), "bounds": [float(b) for b in dataset.bounds]},
    }


__all__ = ["METHODS", "certify_suite"]


def _run(ctx: SuiteContext, **options: Any) -> dict[str, Any]:
    """The certify suite in an audit: the first ``n`` samples (at most the audit's ``n``) in memory."""
    k = ctx.take_n(options, certify_suite)
    data = ctx.data.take(min(len(ctx.data), k or len(ctx.data)))
    return certify_suite(ctx.model, data, norm=ctx.norm, eps=ctx.eps, seed=ctx.seed, progress=ctx.progress, n=k,
                         **options)


def _summary(results: Mapping[str, Any]) -> str | None:
    """Per method, the largest budget with a certified accuracy above 0, in words."""
    out = []
    for m in results.get("methods") or []:
        rows = m.get("rows") or [] if isinstance(m, Mapping) else []
        if rows:
            key = "eps" if "eps" in rows[0] else "radius"
            best = max(rows, key=lambda r: r[key] if r.get("certified_accuracy", 0) > 0 else -1)
            out.append(f"<b>Certified ({html.escape(m.get('method'))}).</b> Proven correct on "
                       f"{html.pct(best['certified_accuracy'])} of the samples against any perturbation up to "
                       f"{html.escape(key)} {html.escape(html.num(best[key]))} ({html.escape(m.get('norm', ''))}).")
    return " ".join(out) or None


SUITE = Suite(
    name="certify", key="certify", function=certify_suite, run=_run, needs=frozenset({"white-box"}), default=True,
    what="certified accuracy (IBP, randomized smoothing)", samples=lambda result: result["n"], summary=_summary,
    passed={"model", "data", "norm", "eps", "seed", "progress"},
)
