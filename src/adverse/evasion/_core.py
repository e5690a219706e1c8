"""What every evasion attack shares: input checks, losses, ascent directions and per-sample bookkeeping.

Attack functions call :func:`setup` once (it validates everything and runs the clean forward pass), keep their
per-sample best results in a :class:`Tracker`, and end with :meth:`Setup.result`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, ModelError
from ..models import BlackBox, Counted, as_classifier, attack_mode, check_logits
from ..results import AttackResult
from ..threat import as_eps, batch_view, check_norm, lp_norm

LOSSES = ("ce", "margin", "dlr")
LossFn = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------- validation
def check_inputs(x: Any, y: Any, bounds: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a batch and its labels; raise :class:`InputError` naming the fix."""
    if not torch.is_tensor(x):
        raise InputError(f"x must be a torch.Tensor, got {type(x).__name__}; convert with torch.as_tensor(x)")
    if not torch.is_tensor(y):
        raise InputError(f"y must be a torch.Tensor of labels, got {type(y).__name__}; use torch.as_tensor(y)")
    if not x.is_floating_point():
        raise InputError(f"x must be a floating-point tensor, got {x.dtype}; use x.float()")
    if x.dim() < 2 or x.shape[0] == 0:
        raise InputError(f"x must be a non-empty batch of shape (n, ...), got shape {tuple(x.shape)}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise InputError(
            f"y must have shape ({x.shape[0]},) to match x's batch, got {tuple(y.shape)}; pass one label per input"
        )
    if y.is_floating_point() or y.dtype == torch.bool:
        raise InputError(f"labels must be integers, got {y.dtype}; pass class indices (y.long())")
    if not torch.isfinite(x).all():
        raise InputError("x contains NaN or infinite values; clean or drop those inputs before attacking")
    lo, hi = bounds
    if not lo < hi:
        raise InputError(f"bounds must satisfy lo < hi, got {bounds!r}")
    below, above = float(x.min()), float(x.max())
    if below < lo - 1e-6 or above > hi + 1e-6:
        raise InputError(
            f"x lies outside bounds {bounds} (min {below:.4g}, max {above:.4g}); scale inputs into the bounds and "
            "put normalization inside the model with adverse.Normalize, or pass the right bounds"
        )
    return x, y.to(device=x.device, dtype=torch.long)


def check_labels(y: torch.Tensor, num_classes: int, what: str = "labels") -> None:
    if bool(((y < 0) | (y >= num_classes)).any()):
        raise InputError(
            f"{what} must lie in [0, {num_classes - 1}] for a model with {num_classes} outputs, "
            f"got values in [{int(y.min())}, {int(y.max())}]"
        )


# --------------------------------------------------------------------------------------------- losses
def _other_max(logits: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """max_{j ≠ cls} z_j, excluding ``cls`` with −∞ (never with a multiplicative mask)."""
    masked = logits.scatter(1, cls.unsqueeze(1), float("-inf"))
    return masked.amax(dim=1)


def margin_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Carlini-Wagner margin, to maximize: ``max_{j≠y} z_j − z_y`` (untargeted), ``z_t − max_{j≠t} z_j``
    (targeted). Positive exactly when the attack succeeds."""
    if target is None:
        return _other_max(logits, y) - logits.gather(1, y.unsqueeze(1)).squeeze(1)
    return logits.gather(1, target.unsqueeze(1)).squeeze(1) - _other_max(logits, target)


def dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020), to maximize; invariant to shifts and scales of the logits.

    Untargeted: ``−(z_y − max_{j≠y} z_j) / (z_π1 − z_π3)``; targeted: ``−(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2)``
    where π sorts the logits in decreasing order.
    """
    z = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y.unsqueeze(1)).squeeze(1)
    if target is None:
        return -(z_y - _other_max(logits, y)) / (z[:, 0] - z[:, 2] + 1e-12)
    z_t = logits.gather(1, target.unsqueeze(1)).squeeze(1)
    return -(z_y - z_t) / (z[:, 0] - 0.5 * (z[:, 2] + z[:, 3]) + 1e-12)


def ce_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy, to maximize: CE(z, y) untargeted, −CE(z, t) targeted."""
    if target is None:
        return F.cross_entropy(logits, y, reduction="none")
    return -F.cross_entropy(logits, target, reduction="none")


def get_loss(name: str, num_classes: int, targeted: bool) -> Callable[..., torch.Tensor]:
    if name not in LOSSES:
        raise InputError(f"unknown loss {name!r}; use one of {', '.join(LOSSES)}")
    need = 4 if targeted else 3
    if name == "dlr" and num_classes < need:
        raise InputError(f"the DLR loss needs ≥ {need} classes, the model has {num_classes}; use loss='margin'")
    return {"ce": ce_loss, "margin": margin_loss, "dlr": dlr_loss}[name]


# --------------------------------------------------------------------------------------------- directions
def ascent_direction(grad: torch.Tensor, norm: str, x: torch.Tensor | None = None,
                     bounds: tuple[float, float] = (0.0, 1.0), sparsity: float = 0.95) -> torch.Tensor:
    """The steepest-ascent direction of unit ``norm`` for gradient ``grad``.

    L∞: ``sign(g)``. L2: ``g / ‖g‖₂``. L1: the sign of the largest ``1 − sparsity`` share of coordinates that can
    still move inside the box, scaled to unit L1 norm (Tramèr & Boneh 2019; Croce & Hein 2021). A zero
    gradient gives a zero direction.
    """
    if norm == "linf":
        return grad.sign()
    if norm == "l2":
        n = lp_norm(grad, "l2")
        return grad / batch_view(n.clamp_min(1e-12), grad)
    g = grad
    if x is not None:  # coordinates already at the bound they would move towards cannot help
        lo, hi = bounds
        stuck = ((x <= lo) & (g < 0)) | ((x >= hi) & (g > 0))
        g = g.masked_fill(stuck, 0)
    flat = g.abs().flatten(1)
    k = max(1, int(math.ceil((1 - sparsity) * flat.shape[1])))
    thresh = flat.topk(k, dim=1).values[:, -1:]
    mask = (flat >= thresh) & (flat > 0)
    d = torch.sign(g).flatten(1) * mask
    return (d / d.abs().sum(dim=1, keepdim=True).clamp_min(1)).reshape(grad.shape)


def momentum_update(g: torch.Tensor, grad: torch.Tensor, mu: float) -> torch.Tensor:
    """MI-FGSM's accumulator (Dong et al. 2018): ``g ← μ·g + ∇ / ‖∇‖₁``, the L1 norm taken per sample."""
    l1 = grad.abs().flatten(1).sum(dim=1).clamp_min(1e-12)
    return mu * g + grad / batch_view(l1, grad)


def relative_scale(eps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Step sizes are relative to eps: a (n, 1, ...) factor ``eps / max(eps)`` for per-sample budgets."""
    return batch_view(eps / eps.max().clamp_min(1e-12), like)


# --------------------------------------------------------------------------------------------- bookkeeping
def is_adversarial(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    pred = logits.argmax(dim=1)
    return pred != y if target is None else pred == target


class Tracker:
    """Per-sample best adversarial so far.

    ``minimize=False`` (fixed-budget attacks): the first adversarial found for a sample is kept; samples not yet
    fooled hold the latest candidate. ``minimize=True`` (minimal-norm attacks): the adversarial of smallest norm
    is kept. Either way a sample once fooled stays fooled.
    """

    def __init__(self, x: torch.Tensor, success: torch.Tensor, norm: str, minimize: bool) -> None:
        self.x = x
        self.norm = norm
        self.minimize = minimize
        self.x_adv = x.clone()
        self.success = success.clone()
        self.norms = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        if minimize:
            self.norms = torch.where(success, self.norms, torch.full_like(self.norms, float("inf")))

    def update(self, idx: torch.Tensor | None, x_cand: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
        """Offer candidates ``x_cand`` for samples ``idx`` (None: every sample, in order) with their adversarial
        flags; returns the flags of ``idx`` that are now successful."""
        if idx is None:  # the whole batch: update in place, no gathering
            cand_norm = lp_norm(x_cand - self.x, self.norm)
            old_success = self.success
            take = adv & (cand_norm < self.norms) if self.minimize else adv | ~old_success
            self.x_adv.copy_(torch.where(batch_view(take, x_cand), x_cand, self.x_adv))
            self.norms.copy_(torch.where(take, cand_norm, self.norms))
            now = old_success | adv
            self.success.copy_(now)
            return now
        cand_norm = lp_norm(x_cand - self.x[idx], self.norm)
        old_success = self.success[idx]
        if self.minimize:
            take = adv & (cand_norm < self.norms[idx])
        else:
            take = adv | ~old_success
        take_v = batch_view(take, x_cand)
        self.x_adv[idx] = torch.where(take_v, x_cand, self.x_adv[idx])
        self.norms[idx] = torch.where(take, cand_norm, self.norms[idx])
        now = old_success | adv
        self.success[idx] = now
        return now

    def active(self) -> torch.Tensor:
        """Indices of samples not yet fooled."""
        return (~self.success).nonzero().squeeze(1)


# --------------------------------------------------------------------------------------------- set-up
@dataclass
class Setup:
    """Validated inputs of one attack run, the counted model and the clean predictions."""

    model: Counted
    x: torch.Tensor
    y: torch.Tensor
    target: torch.Tensor | None
    eps: torch.Tensor | None
    norm: str
    bounds: tuple[float, float]
    num_classes: int
    clean_logits: torch.Tensor
    generator: torch.Generator
    seed: int | None
    started: float = field(default_factory=time.perf_counter)

    @property
    def clean_correct(self) -> torch.Tensor:
        return self.clean_logits.argmax(dim=1) == self.y

    @property
    def clean_adversarial(self) -> torch.Tensor:
        """Inputs that are adversarial as given (a clean error, or already the target class)."""
        return is_adversarial(self.clean_logits, self.y, self.target)

    def tracker(self, minimize: bool = False) -> Tracker:
        return Tracker(self.x, self.clean_adversarial, self.norm, minimize)

    def labels(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.y[idx], None if self.target is None else self.target[idx]

    def admissible(self, x_adv: torch.Tensor, norms: torch.Tensor | None = None) -> tuple[bool, bool]:
        """Whether every row of ``x_adv`` lies inside its eps ball (always true without eps) and inside the
        bounds, up to float round-off. ``norms``: the perturbations' norms, if already computed."""
        lo, hi = self.bounds
        if self.eps is None:
            ball = True
        else:
            norms = lp_norm(x_adv - self.x, self.norm) if norms is None else norms
            ball = not bool((norms > self.eps + 1e-5 * (1 + self.eps)).any())
        return ball, not bool(((x_adv < lo - 1e-6) | (x_adv > hi + 1e-6)).any())

    def result(self, tracker: Tracker, attack: str, params: dict[str, Any]) -> AttackResult:
        """Package the tracker's best results, after checking the threat model one last time.

        Minimal-norm attacks (``eps=None``) end on the decision boundary, where the logits of a point computed
        inside a smaller batch can differ in the last bit from those of the whole batch and flip the argmax. Their
        outputs are classified once more, as one batch (one forward pass per sample, counted): ``success`` is
        exactly "the returned ``x_adv`` is adversarial", and a point that is not keeps ``x``."""
        x_adv = tracker.x_adv.detach()
        success = tracker.success.clone()
        if self.eps is None and bool((success & ~self.clean_adversarial).any()):
            still = is_adversarial(self.model.logits(x_adv), self.y, self.target)
            lost = success & ~still
            if bool(lost.any()):
                x_adv = torch.where(batch_view(lost, x_adv), self.x, x_adv)
                success = success & ~lost
        norms = lp_norm(x_adv - self.x, self.norm)
        inside_ball, inside_box = self.admissible(x_adv, norms)
        if not inside_ball:
            raise RuntimeError(f"{attack}: internal error, a perturbation exceeds eps")  # a bug, never input
        if not inside_box:
            raise RuntimeError(f"{attack}: internal error, an output leaves the bounds")
        eps = None if self.eps is None else float(self.eps.max()) if self.eps.numel() else 0.0
        return AttackResult(
            x_adv=x_adv, success=success, norms=norms, clean_correct=self.clean_correct,
            attack=attack, norm=self.norm, eps=eps, forwards=self.model.forwards,
            backwards=self.model.backwards, seconds=time.perf_counter() - self.started,
            params=params, seed=self.seed,
        )


def first_pass(model: Counted, x: torch.Tensor) -> torch.Tensor:
    """The clean logits, where a model that cannot take ``x`` is a :class:`ModelError` naming the inputs' shape
    and dtype: a floating-point dtype other than the model's parameters' is refused before the pass (nothing is
    converted silently), and an error the model raises on the batch is reported with what it said."""
    dtypes = {p.dtype for p in model.model.parameters() if p.is_floating_point()}
    if dtypes and x.dtype not in dtypes:
        want = ", ".join(sorted(str(d) for d in dtypes))
        raise InputError(f"x is {x.dtype} but the model's parameters are {want}; convert one to match "
                         f"(x.to({want.split(', ')[0]}) or model.to(x.dtype))")
    try:
        return model.logits(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        if isinstance(e, ModelError | InputError):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"the model fails on inputs of shape {tuple(x.shape)} and dtype {x.dtype} "
                         f"({type(e).__name__}: {first}); pass inputs of the shape and scale the model was built "
                         "for") from e


def make_generator(seed: int | torch.Generator | None, device: torch.device) -> tuple[torch.Generator, int | None]:
    """A private generator: nothing reads or advances the global RNG."""
    if isinstance(seed, torch.Generator):
        return seed, None
    g = torch.Generator(device=device)
    g.manual_seed(0 if seed is None else int(seed))
    return g, (0 if seed is None else int(seed))


@contextlib.contextmanager
def setup(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | torch.Tensor | None,
    norm: str,
    bounds: tuple[float, float] = (0.0, 1.0),
    target: torch.Tensor | None = None,
    seed: int | torch.Generator | None = 0,
    norms: tuple[str, ...] = ("linf", "l2", "l1"),
) -> Iterator[Setup]:
    """Validate an attack's inputs, put the model in attack mode, run the clean forward pass.

    ``eps=None`` marks a minimal-norm attack. The model's answer is unwrapped to its logits by
    :func:`adverse.models.as_classifier` (a ``ModelOutput``, a dict with ``logits``, a tuple). Raises
    :class:`InputError` / :class:`ModelError` on bad input.
    """
    if isinstance(model, BlackBox) or not isinstance(model, nn.Module):
        raise ModelError(
            "this attack needs gradients: pass a torch.nn.Module returning logits "
            "(use a score- or decision-based attack for a BlackBox)"
        )
    model = as_classifier(model)
    norm = check_norm(norm)
    if norm not in norms:
        raise InputError(f"this attack supports norms {', '.join(norms)}, not {norm!r}")
    bounds = (float(bounds[0]), float(bounds[1]))
    x, y = check_inputs(x, y, bounds)
    eps_t = None if eps is None else as_eps(eps, x.shape[0], x)
    if target is not None:
        if not torch.is_tensor(target) or target.shape != y.shape:
            raise InputError(f"target must be a tensor of shape {tuple(y.shape)} (one target class per input)")
        target = target.to(device=x.device, dtype=torch.long)
    generator, seed_used = make_generator(seed, x.device)
    x = x.detach()
    with attack_mode(model):
        counted = Counted(model)
        clean = first_pass(counted, x)
        check_logits(clean, x.shape[0])  # a tensor (n, classes), finite, not probabilities
        check_labels(y, clean.shape[1])
        if target is not None:
            check_labels(target, clean.shape[1], "target classes")
        yield Setup(counted, x, y, target, eps_t, norm, bounds, clean.shape[1], clean, generator, seed_used)
