"""What every membership attack returns: per-sample scores, the parameters, and the disjoint-data baseline."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .metrics import MembershipEvaluation, evaluate

Tensor = torch.Tensor

NO_BASELINE = ("no disjoint-data model was given (baseline=None): pass baseline=refs.train_disjoint(x_other, "
               "y_other) to get the sanity baseline")


@dataclass
class MembershipScores:
    """Per-sample membership scores (higher = more likely a member) and how they were made.

    Attributes
    ----------
    scores : float64 tensor (n,) for the attacked model.
    attack : the attack's name; ``params`` its parameters.
    baseline_scores : the same attack's scores against a model trained on data disjoint from ``x``
        (membership cannot show there, so its AUC should be ≈ 0.5), or None with ``baseline_note`` saying why.
    seconds : wall-clock time of the attack on the target (baseline excluded).
    """

    scores: Tensor
    attack: str
    params: dict[str, Any] = field(default_factory=dict)
    baseline_scores: Tensor | None = None
    baseline_note: str = ""
    seconds: float = 0.0

    def evaluate(self, is_member: Any, **kwargs: Any) -> MembershipEvaluation:
        """:func:`~adverse.privacy.evaluate` of ``scores``."""
        return evaluate(self.scores, is_member, **kwargs)

    def evaluate_baseline(self, is_member: Any, **kwargs: Any) -> MembershipEvaluation | None:
        """:func:`~adverse.privacy.evaluate` of the disjoint-data baseline's scores (None when absent)."""
        return None if self.baseline_scores is None else evaluate(self.baseline_scores, is_member, **kwargs)


def with_baseline(score_fn: Callable[[Any], Tensor], target: Any, baseline: nn.Module | None, attack: str,
                  params: dict[str, Any], refs: Any = None) -> MembershipScores:
    """Run ``score_fn`` on the target and on the disjoint-data baseline model: ``baseline`` when given, else
    the one ``refs.train_disjoint`` made (if any)."""
    if baseline is None and refs is not None:
        baseline = getattr(refs, "baseline", None)
    t0 = time.perf_counter()
    scores = score_fn(target)
    seconds = time.perf_counter() - t0
    base = None if baseline is None else score_fn(baseline)
    return MembershipScores(scores=scores, attack=attack, params=params, baseline_scores=base,
                            baseline_note="" if baseline is not None else NO_BASELINE, seconds=seconds)
