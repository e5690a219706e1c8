"""MI-Face model inversion (Fredrikson, Jha & Ristenpart 2015): reconstruct a class's typical input.

Gradient descent on the input minimizes ``c(x) = 1 − f̃_t(x) + AuxTerm(x)``, with ``f̃_t`` the model's
softmax confidence in the target class ``t`` and ``AuxTerm`` an optional prior: total variation
``λ_TV · TV(x)`` (anisotropic, images) and ``λ_2 ‖x‖²``. Algorithm 1 of the paper:

    x₀ ← init;  for i = 1..α:  x_i ← Process(x_{i−1} − λ ∇c(x_{i−1}))
                               stop if c(x_i) ≥ max(c(x_{i−1}), …, c(x_{i−β}))  or  c(x_i) ≤ γ
    return argmin_{x_i} c(x_i)

where ``Process`` projects onto the valid input range. Every sample runs its own stopping rule in one batch.

A reconstruction is only evidence when something other than the attacked model recognises it, and when an
untrained model of the same architecture does not yield equally "recognisable" images. Every result
therefore carries (i) the accuracy of an **independent evaluator** classifier (trained by the user on other
data, ideally with another architecture) on the reconstructions, and (ii) the same attack run against an
**untrained copy** of the model (re-initialized from ``seed``), scored by the same evaluator: chance level is
what a meaningless inversion gets.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import InputError, ModelError
from ..models import as_classifier, attack_mode, eval_mode
from ..validation import validated
from .label_only import predict_labels

Tensor = torch.Tensor

INITS = ("zeros", "uniform")


@dataclass
class InversionResult:
    """What :func:`miface` returns.

    Attributes
    ----------
    x : reconstructions (m, *shape), one per requested class.
    classes : the target classes (m,).
    cost : final ``c(x)`` per reconstruction; ``confidence`` the attacked model's ``f̃_t(x)``.
    iterations : gradient steps each reconstruction ran before its stopping rule fired.
    evaluator_accuracy : fraction of reconstructions the independent evaluator labels as their class.
    baseline_x, baseline_evaluator_accuracy : the same for the untrained copy (the sanity baseline).
    chance : 1 / number of classes.
    """

    x: Tensor
    classes: Tensor
    cost: Tensor
    confidence: Tensor
    iterations: Tensor
    evaluator_accuracy: float
    baseline_x: Tensor | None
    baseline_evaluator_accuracy: float | None
    chance: float
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"evaluator_accuracy": self.evaluator_accuracy,
                "baseline_evaluator_accuracy": self.baseline_evaluator_accuracy, "chance": self.chance,
                "mean_confidence": float(self.confidence.mean()), "params": dict(self.params),
                "seconds": self.seconds}


def untrained_copy(model: nn.Module, seed: int) -> nn.Module:
    """A deep copy of ``model`` with every ``reset_parameters()`` re-run under ``seed`` (caller's RNG untouched)."""
    clone = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in clone.modules():
            if callable(getattr(m, "reset_parameters", None)):
                m.reset_parameters()
    return eval_mode(clone)  # an exported module refuses .eval()


def total_variation(x: Tensor) -> Tensor:
    """Anisotropic total variation per sample: ``Σ |Δ_h x| + Σ |Δ_w x|`` over the last two dimensions."""
    if x.dim() < 3:
        return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).sum(1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).sum(1)
    return dh + dw


def mi_face_descent(model: nn.Module, t: Tensor, x0: Tensor, *, alpha: int, lam: float, beta: int, gamma: float,
                    tv: float, l2: float, bounds: tuple[float, float]) -> tuple[Tensor, Tensor, Tensor]:
    """Algorithm 1 of Fredrikson et al. 2015, batched: returns (argmin x, its cost, iterations run)."""

    def cost(x: Tensor) -> Tensor:
        p = torch.softmax(model(x), dim=-1).gather(1, t[:, None]).squeeze(1)
        return 1.0 - p + tv * total_variation(x) + l2 * x.flatten(1).pow(2).sum(1)

    x = x0.clone()
    with torch.no_grad():
        c = cost(x)
    best_x, best_c = x.clone(), c.clone()
    history = torch.full((beta, x.shape[0]), float("inf"), dtype=c.dtype, device=c.device)
    history[-1] = c
    active = torch.ones(x.shape[0], dtype=torch.bool, device=c.device)
    iters = torch.zeros(x.shape[0], dtype=torch.long, device=c.device)
    view = (-1,) + (1,) * (x.dim() - 1)
    for _ in range(alpha):
        if not bool(active.any()):
            break
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(cost(xg).sum(), xg)
        x_new = (x - lam * g).clamp(*bounds)
        x = torch.where(active.view(view), x_new, x)
        with torch.no_grad():
            c_new = cost(x)
        iters += active.long()
        improved = active & (c_new < best_c)
        best_x = torch.where(improved.view(view), x, best_x)
        best_c = torch.where(improved, c_new, best_c)
        stalled = c_new >= history.max(0).values
        active = active & ~stalled & (c_new > gamma)
        history = torch.cat([history[1:], c_new[None]])
    return best_x.detach(), best_c.detach(), iters


@validated
def miface(
    model: nn.Module, classes: Tensor, *, shape: tuple[int, ...], evaluator: Any, steps: int = 1000,
    lr: float = 0.1, patience: int = 100, threshold: float = 0.0, tv: float = 0.0, l2: float = 0.0,
    init: str | Tensor = "zeros", bounds: tuple[float, float] = (0.0, 1.0), baseline: bool = True, seed: int = 0,
) -> InversionResult:
    """MI-Face: reconstruct an input for each class in ``classes`` by gradient descent on the model's confidence.

    Parameters
    ----------
    model : the attacked ``torch.nn.Module`` (logits out); used in eval mode and left as found.
    classes : target classes (m,), one reconstruction each.
    shape : the shape of one input, e.g. (1, 8, 8).
    evaluator : the independent classifier that scores reconstructions (a torch module, a scikit-learn
        estimator, a :class:`~adverse.BlackBox` or a callable returning labels or scores); not the attacked model.
    steps : α, the most gradient steps; ``lr`` λ the step size.
    patience : β, the window of the "no improvement" stopping rule; ``threshold`` γ the cost to stop at.
    tv, l2 : weights of the total-variation and squared-L2 priors (``AuxTerm``).
    init : "zeros" (the paper), "uniform" (seeded) or a tensor (m, *shape) inside ``bounds``.
    bounds : the valid input range (``Process`` projects onto it).
    baseline : also invert an untrained copy of the model (the sanity baseline).
    seed : seeds the uniform init and the untrained copy.

    Returns
    -------
    InversionResult

    References
    ----------
    Fredrikson, Jha & Ristenpart, "Model Inversion Attacks that Exploit Confidence Information and Basic
    Countermeasures", ACM CCS 2015 (Algorithm 1).
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"miface needs gradients: model must be a torch.nn.Module, got {type(model).__name__}")
    if evaluator is None or evaluator is model:
        raise InputError("miface needs an independent evaluator classifier (not the attacked model) to score "
                         "reconstructions; train one on other data, ideally with another architecture")
    model = as_classifier(model)  # a ModelOutput, a dict with logits or a tuple: its logits
    t = torch.as_tensor(classes)
    if t.dim() != 1 or t.dtype in (torch.bool, torch.float32, torch.float64) or t.numel() == 0:
        raise InputError("classes must be a non-empty 1-D integer tensor of target classes")
    for name, v, least in (("steps", steps, 1), ("patience", patience, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            raise InputError(f"{name} must be an integer ≥ {least}, got {v!r}")
    if not (lr > 0) or tv < 0 or l2 < 0:
        raise InputError("need lr > 0, tv ≥ 0 and l2 ≥ 0")
    m = t.shape[0]
    shape = tuple(shape)
    if isinstance(init, Tensor):
        if tuple(init.shape) != (m, *shape) or not bool(torch.isfinite(init).all()):
            raise InputError(f"init must be a finite tensor of shape {(m, *shape)}")
        x0 = init.detach().float().clamp(*bounds)
    elif init == "zeros":
        x0 = torch.zeros((m, *shape)).clamp(*bounds)
    elif init == "uniform":
        g = torch.Generator().manual_seed(seed)
        x0 = bounds[0] + (bounds[1] - bounds[0]) * torch.rand((m, *shape), generator=g)
    else:
        raise InputError(f"init must be one of {INITS} or a tensor, got {init!r}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x0, t = x0.to(device), t.to(device)
    t0 = time.perf_counter()
    kw = {"alpha": steps, "lam": lr, "beta": patience, "gamma": threshold, "tv": tv, "l2": l2, "bounds": bounds}

    def invert(net: nn.Module) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        with attack_mode(net):
            with torch.no_grad():
                out = net(x0[:1])
            if out.dim() != 2 or int(t.max()) >= out.shape[1] or int(t.min()) < 0:
                raise InputError(f"classes must lie in [0, {out.shape[1]}) for this model")
            x, c, it = mi_face_descent(net, t.long(), x0, **kw)  # type: ignore[arg-type]
            with torch.no_grad():
                conf = torch.softmax(net(x), -1).gather(1, t.long()[:, None]).squeeze(1)
        return x, c, it, conf

    x, c, it, conf = invert(model)
    seconds = time.perf_counter() - t0
    num_classes = _num_classes(model, x0)
    acc = float((predict_labels(evaluator, x) == t).double().mean())
    bx, bacc = None, None
    if baseline:
        bx, *_ = invert(untrained_copy(model, seed))
        bacc = float((predict_labels(evaluator, bx) == t).double().mean())
    params = {"steps": steps, "lr": lr, "patience": patience, "threshold": threshold, "tv": tv, "l2": l2,
              "init": init if isinstance(init, str) else "tensor", "bounds": bounds, "seed": seed}
    return InversionResult(x=x, classes=t, cost=c, confidence=conf, iterations=it, evaluator_accuracy=acc,
                           baseline_x=bx, baseline_evaluator_accuracy=bacc, chance=1.0 / num_classes,
                           params=params, seconds=seconds)


def _num_classes(model: nn.Module, x0: Tensor) -> int:
    with attack_mode(model), torch.no_grad():
        return int(model(x0[:1]).shape[1])
