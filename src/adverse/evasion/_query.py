"""What score- and decision-based (black-box) attacks share: a counted, validated query interface.

:func:`query_setup` accepts a :class:`~adverse.models.BlackBox`, any callable, a scikit-learn estimator or a
torch module (queried without gradients, in eval mode), checks every answer (shape, NaN, labels where scores
are needed), counts queries per sample, and packages results like the white-box attacks do.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import BudgetError, InputError, ModelError
from ..models import BlackBox, as_classifier, attack_mode, looks_like_probabilities
from ..results import AttackResult
from ..threat import as_eps, check_norm, lp_norm
from ._core import Tracker, check_inputs, check_labels, make_generator


@dataclass
class QuerySetup:
    """Validated inputs of one black-box attack, the query interface and per-sample query counts."""

    box: BlackBox
    x: torch.Tensor
    y: torch.Tensor
    target: torch.Tensor | None
    eps: torch.Tensor | None
    norm: str
    bounds: tuple[float, float]
    num_classes: int | None
    clean_pred: torch.Tensor
    generator: torch.Generator
    seed: int | None
    max_queries: int
    queries: torch.Tensor = field(init=False)
    started: float = field(default_factory=time.perf_counter)
    clean_scores: torch.Tensor | None = None  # the clean query's scores (n, classes); None for labels

    def __post_init__(self) -> None:
        self.queries = torch.ones(self.x.shape[0], dtype=torch.long, device=self.x.device)  # the clean query
        # decided once, from the clean answer: a black box answers in probabilities or in logits throughout
        self.probabilities = self.clean_scores is not None and looks_like_probabilities(self.clean_scores)

    def logits(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores as logits: log-probabilities when the black box answers with probabilities (see
        :func:`as_logits`), the scores themselves otherwise."""
        return scores.clamp_min(torch.finfo(scores.dtype).tiny).log() if self.probabilities else scores

    @property
    def output(self) -> str:
        return self.box.output or "scores"

    def _ask(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        # ``idx`` may repeat a sample (several candidates of one sample in one batch): count each row
        add = torch.zeros_like(self.queries).index_add_(0, idx, torch.ones_like(idx, dtype=self.queries.dtype))
        if bool((self.queries + add > self.max_queries).any()):
            raise BudgetError("internal error: an attack asked past its per-sample max_queries")
        out = self.box(x)
        self.queries += add
        return check_answer(out, x.shape[0], self.output, self.num_classes)

    def scores(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Scores (n, classes) for candidates ``x`` of samples ``idx`` (which may repeat): one query each."""
        if self.output != "scores":
            raise ModelError("this attack needs scores, but the black box returns labels; use hopskipjump")
        return self._ask(x, idx)

    def predict(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Predicted labels for candidates ``x`` of samples ``idx`` (which may repeat): one query each."""
        out = self._ask(x, idx)
        return out.argmax(dim=1) if out.dim() == 2 else out.long()

    def is_adversarial(self, pred: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return pred != self.y[idx] if self.target is None else pred == self.target[idx]

    def left(self, idx: torch.Tensor) -> torch.Tensor:
        """Queries each sample of ``idx`` may still spend."""
        return self.max_queries - self.queries[idx]

    def tracker(self, minimize: bool = False) -> Tracker:
        idx = torch.arange(self.x.shape[0], device=self.x.device)
        return Tracker(self.x, self.is_adversarial(self.clean_pred, idx), self.norm, minimize)

    def result(self, tracker: Tracker, attack: str, params: dict[str, Any]) -> AttackResult:
        x_adv = tracker.x_adv.detach()
        lo, hi = self.bounds
        norms = lp_norm(x_adv - self.x, self.norm)
        if self.eps is not None and bool((norms > self.eps + 1e-5 * (1 + self.eps)).any()):
            raise RuntimeError(f"{attack}: internal error, a perturbation exceeds eps")
        if bool(((x_adv < lo - 1e-6) | (x_adv > hi + 1e-6)).any()):
            raise RuntimeError(f"{attack}: internal error, an output leaves the bounds")
        return AttackResult(
            x_adv=x_adv, success=tracker.success.clone(), norms=norms, clean_correct=self.clean_pred == self.y,
            attack=attack, norm=self.norm, eps=None if self.eps is None else float(self.eps.max()),
            queries=int(self.queries.sum()), seconds=time.perf_counter() - self.started,
            params=dict(params, max_queries=self.max_queries), seed=self.seed,
        )


def as_logits(scores: torch.Tensor) -> torch.Tensor:
    """Scores as logits: probabilities (rows in [0, 1] summing to 1) become log-probabilities, anything else is
    taken as logits already. Losses that are invariant to a shift of the logits (margin, cross-entropy, log-odds)
    then mean the same for a black box that answers with probabilities and one that answers with logits, and
    stay exact where a probability rounds to 1."""
    if looks_like_probabilities(scores):
        return scores.clamp_min(torch.finfo(scores.dtype).tiny).log()
    return scores


def check_answer(out: Any, n: int, output: str, num_classes: int | None) -> torch.Tensor:
    """Validate a black box's answer to ``n`` queries; raise :class:`ModelError` naming the problem."""
    if not torch.is_tensor(out):
        raise ModelError(f"the black box must return a tensor or array, got {type(out).__name__}")
    if output == "scores":
        if out.dim() != 2 or out.shape[0] != n or out.shape[1] < 2:
            raise ModelError(f"the black box must return scores of shape ({n}, classes), got {tuple(out.shape)}")
        if num_classes is not None and out.shape[1] != num_classes:
            raise ModelError(f"the black box changed its number of classes: {out.shape[1]} vs {num_classes}")
        if not out.is_floating_point() or not torch.isfinite(out).all():
            raise ModelError("the black box returned NaN, infinite or non-float scores")
        return out
    if out.dim() != 1 or out.shape[0] != n:
        raise ModelError(f"the black box must return labels of shape ({n},), got {tuple(out.shape)}")
    if out.is_floating_point() and not bool((out == out.round()).all()):
        raise ModelError("the black box returned non-integer labels; set BlackBox(output='scores') for scores")
    return out.long()


@contextlib.contextmanager
def query_setup(
    model: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | torch.Tensor | None,
    norm: str,
    max_queries: int,
    bounds: tuple[float, float] = (0.0, 1.0),
    target: torch.Tensor | None = None,
    seed: int | torch.Generator | None = 0,
    needs: str = "scores",
    norms: tuple[str, ...] = ("linf", "l2"),
) -> Iterator[QuerySetup]:
    """Validate a black-box attack's inputs and make the clean query (one per sample, counted).

    ``model`` may be a :class:`BlackBox`, a torch module (queried for logits under ``torch.no_grad`` in eval
    mode, state restored afterwards), a scikit-learn estimator or a callable. ``needs="scores"`` refuses a
    black box that returns only labels.
    """
    norm = check_norm(norm)
    if norm not in norms:
        raise InputError(f"this attack supports norms {', '.join(norms)}, not {norm!r}")
    if not isinstance(max_queries, int) or max_queries < 2:
        raise InputError(f"max_queries must be an integer ≥ 2 (one goes to the clean input), got {max_queries!r}")
    bounds = (float(bounds[0]), float(bounds[1]))
    x, y = check_inputs(x, y, bounds)
    eps_t = None if eps is None else as_eps(eps, x.shape[0], x)
    if target is not None:
        if not torch.is_tensor(target) or target.shape != y.shape:
            raise InputError(f"target must be a tensor of shape {tuple(y.shape)} (one target class per input)")
        target = target.to(device=x.device, dtype=torch.long)
    generator, seed_used = make_generator(seed, x.device)
    x = x.detach()
    module = as_classifier(model) if isinstance(model, nn.Module) else None  # its answer unwrapped to logits
    box = model if isinstance(model, BlackBox) else BlackBox(module if module is not None else model,
                                                            output="scores" if module is not None else None)
    if needs == "scores" and box.output == "labels":
        raise ModelError("this attack needs scores, but the black box returns labels; use a decision-based attack")
    with attack_mode(module) if module is not None else contextlib.nullcontext():
        clean = box(x)
        clean = check_answer(clean, x.shape[0], box.output or "scores", None)
        if needs == "scores" and clean.dim() != 2:
            raise ModelError("this attack needs scores, but the black box returns labels; use a decision-based attack")
        num_classes = clean.shape[1] if clean.dim() == 2 else None
        if num_classes is not None:
            check_labels(y, num_classes)
            if target is not None:
                check_labels(target, num_classes, "target classes")
        pred = clean.argmax(dim=1) if clean.dim() == 2 else clean
        yield QuerySetup(box, x, y, target, eps_t, norm, bounds, num_classes, pred, generator, seed_used,
                         max_queries, clean_scores=clean if clean.dim() == 2 else None)
