"""How membership-inference scores are judged: exact ROC, AUC, TPR at low FPR, balanced accuracy, bootstrap CIs.

Members are the positive class and a higher score means "more likely a member", everywhere in
:mod:`adverse.privacy`. The ROC is the exact empirical one (``sklearn.metrics.roc_curve`` with every
threshold kept); TPR at a target FPR is the largest TPR among ROC points whose FPR does not exceed the target
(as ML Privacy Meter and the LiRA paper report it). Confidence intervals are percentile bootstrap intervals
from ``scipy.stats.bootstrap``, resampling members and non-members separately, so the membership prior
stays fixed. When a requested FPR lies below ``1 / #non-members`` the empirical ROC cannot resolve it: the
result says so in ``warnings`` and a :class:`UserWarning` is issued.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..validation import validated

DEFAULT_FPRS = (0.001, 0.01)


def _as_numpy(a: Any, name: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def check_membership(scores: Any, is_member: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate per-sample scores and membership labels; return them as float64 / bool numpy arrays.

    Raises :class:`~adverse.errors.InputError` when the scores are not a finite 1-D numeric array, the labels
    are not boolean, their lengths differ, or one of the two classes is missing.
    """
    s = _as_numpy(scores, "scores")
    m = _as_numpy(is_member, "is_member")
    if s.ndim != 1 or not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)):
        raise InputError(f"scores must be a 1-D array of numbers (one per sample), got shape {s.shape} of {s.dtype}")
    if not np.isfinite(s).all():
        bad = int((~np.isfinite(s)).sum())
        raise InputError(f"scores contain {bad} NaN or infinite value(s); fix the attack's inputs or drop those samples")
    if m.dtype != np.bool_:
        raise InputError(
            f"is_member must be boolean (True = member), got dtype {m.dtype}; convert with is_member == 1 "
            "after checking which class your labels call 'member'"
        )
    if m.shape != s.shape:
        raise InputError(f"is_member has shape {m.shape} but scores have shape {s.shape}; give one label per score")
    if m.all() or not m.any():
        raise InputError("is_member must contain both members and non-members to evaluate an attack")
    return s.astype(np.float64), m


def _roc(s: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.metrics import roc_curve

    return roc_curve(m, s, drop_intermediate=False)


def tpr_at(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """The largest TPR among ROC points with FPR ≤ ``target`` (the ROC always holds the point (0, 0))."""
    return float(tpr[fpr <= target + 1e-15].max())


def _summary(s_in: np.ndarray, s_out: np.ndarray, fprs: tuple[float, ...]) -> np.ndarray:
    """[AUC, balanced accuracy, TPR at each fpr] from member and non-member scores."""
    from sklearn.metrics import auc as area

    s = np.concatenate([s_in, s_out])
    m = np.concatenate([np.ones(len(s_in), bool), np.zeros(len(s_out), bool)])
    fpr, tpr, _ = _roc(s, m)
    auc = area(fpr, tpr)  # trapezoids of the exact ROC: the Mann-Whitney AUC, ties counted one half
    balanced = float(np.max(1.0 + tpr - fpr) / 2.0)
    return np.array([auc, balanced, *(tpr_at(fpr, tpr, f) for f in fprs)])


@dataclass
class MembershipEvaluation:
    """What :func:`evaluate` returns.

    Attributes
    ----------
    auc : area under the exact ROC (ties count one half).
    balanced_accuracy : ``max over thresholds of 1 − (FPR + FNR) / 2``.
    tpr_at_fpr : {target FPR: the largest TPR whose FPR ≤ target}.
    fpr, tpr, thresholds : the exact ROC (every threshold kept), numpy arrays.
    ci : {"auc" | "balanced_accuracy" | "tpr@<fpr>": (low, high)} percentile bootstrap intervals at
        ``confidence``; empty when ``n_bootstrap`` is 0.
    n_members, n_nonmembers : how many of each were evaluated.
    warnings : human-readable caveats (FPRs below the resolution ``1 / n_nonmembers``).
    """

    auc: float
    balanced_accuracy: float
    tpr_at_fpr: dict[float, float]
    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    n_members: int
    n_nonmembers: int
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    confidence: float = 0.95
    n_bootstrap: int = 0
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers."""
        return {
            "auc": self.auc, "balanced_accuracy": self.balanced_accuracy,
            "tpr_at_fpr": {str(k): v for k, v in self.tpr_at_fpr.items()},
            "ci": {k: list(v) for k, v in self.ci.items()}, "confidence": self.confidence,
            "n_members": self.n_members, "n_nonmembers": self.n_nonmembers, "warnings": list(self.warnings),
        }

    def figure(self, path: str | Path | None = None, label: str | None = None, ax: Any = None) -> Any:
        """The ROC on log-log axes as a matplotlib ``Figure`` (Agg canvas; never shown).

        FPR = 0 points cannot sit on a log axis; the curve starts at the first positive FPR. Passing ``ax``
        draws into an existing axes (to overlay attacks); ``path`` saves the figure (PNG, PDF, SVG, ...).
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        if ax is None:
            fig = Figure(figsize=(4.5, 4.5))
            FigureCanvasAgg(fig)
            ax = fig.add_subplot(1, 1, 1)
            floor = 1.0 / max(self.n_nonmembers, 1)
            ax.plot([floor, 1], [floor, 1], ls="--", color="gray", lw=0.8, label="chance")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlim(floor / 2, 1)
            ax.set_ylim(1.0 / max(self.n_members, 1) / 2, 1)
            ax.set_xlabel("false-positive rate")
            ax.set_ylabel("true-positive rate")
        else:
            fig = ax.figure
        keep = self.fpr > 0
        ax.plot(self.fpr[keep], np.maximum(self.tpr[keep], 1e-12), lw=1.2,
                label=f"{label + ', ' if label else ''}AUC {self.auc:.3f}")
        ax.legend(loc="lower right", fontsize=8)
        if path is not None:
            fig.savefig(str(path), dpi=120, bbox_inches="tight")
        return fig


@validated
def evaluate(
    scores: Any,
    is_member: Any,
    *,
    fprs: tuple[float, ...] = DEFAULT_FPRS,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> MembershipEvaluation:
    """Judge membership scores: exact ROC, AUC, TPR at low FPR, balanced accuracy and bootstrap CIs.

    Parameters
    ----------
    scores : per-sample membership scores (tensor or array, shape (n,)); higher means "member".
    is_member : per-sample booleans, True for members (the positive class).
    fprs : target false-positive rates at which TPR is reported.
    n_bootstrap : bootstrap resamples for the confidence intervals (0 skips them).
    confidence : the intervals' confidence level.
    seed : seeds the bootstrap's generator.

    Returns
    -------
    MembershipEvaluation

    Raises
    ------
    InputError : NaN or infinite scores, labels that are not boolean or of the wrong length, one class only,
        target FPRs outside [0, 1].

    References
    ----------
    Carlini et al., "Membership Inference Attacks From First Principles", IEEE S&P 2022 (TPR at low FPR on
    log-log ROC curves). Efron & Tibshirani, "An Introduction to the Bootstrap", 1993 (percentile intervals).
    """
    from scipy.stats import bootstrap

    s, m = check_membership(scores, is_member)
    fprs = tuple(float(f) for f in fprs)
    if any(not (0.0 <= f <= 1.0) for f in fprs):
        raise InputError(f"fprs must lie in [0, 1], got {fprs}")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 0:
        raise InputError(f"n_bootstrap must be an integer ≥ 0, got {n_bootstrap!r}")
    if not (0.0 < confidence < 1.0):
        raise InputError(f"confidence must lie in (0, 1), got {confidence!r}")
    s_in, s_out = s[m], s[~m]
    notes = []
    for f in fprs:
        if 0.0 < f < 1.0 / len(s_out):
            notes.append(
                f"FPR {f:g} is below the resolution 1/{len(s_out)} of {len(s_out)} non-members: TPR there is the "
                "TPR at FPR 0; evaluate on more non-members (pool several target models) for this FPR"
            )
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    fpr, tpr, thr = _roc(s, m)
    point = _summary(s_in, s_out, fprs)
    ci: dict[str, tuple[float, float]] = {}
    if n_bootstrap:
        res = bootstrap((s_in, s_out), lambda a, b: _summary(a, b, fprs), n_resamples=n_bootstrap,
                        confidence_level=confidence, method="percentile", vectorized=False, paired=False,
                        rng=np.random.default_rng(seed))
        names = ["auc", "balanced_accuracy", *(f"tpr@{f:g}" for f in fprs)]
        lo, hi = np.atleast_1d(res.confidence_interval.low), np.atleast_1d(res.confidence_interval.high)
        ci = {k: (float(a), float(b)) for k, a, b in zip(names, lo, hi)}
    return MembershipEvaluation(
        auc=float(point[0]), balanced_accuracy=float(point[1]),
        tpr_at_fpr={f: float(v) for f, v in zip(fprs, point[2:])},
        fpr=fpr, tpr=tpr, thresholds=thr, n_members=int(m.sum()), n_nonmembers=int((~m).sum()),
        ci=ci, confidence=confidence, n_bootstrap=n_bootstrap, warnings=notes,
    )
