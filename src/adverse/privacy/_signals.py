"""Per-sample signals that membership attacks read from a model's logits, all in float64.

Computing in float64 from logits matters: a well-fit model gives members a softmax probability that rounds to
exactly 1 in float32, so losses tie at 0 and the ranking that low-FPR attacks need is lost (Carlini et al.
2022 compute their statistic the same way).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import InputError, ModelError
from ..models import as_classifier, attack_mode, check_logits

Tensor = torch.Tensor


def check_xy(x: Any, y: Any, name: str = "x") -> tuple[Tensor, Tensor]:
    """Inputs as a finite float tensor and labels as a 1-D integer tensor of the same length."""
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise InputError(f"{name} and its labels must be torch tensors; convert numpy arrays with torch.as_tensor")
    if x.dim() < 1 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise InputError(f"{name} must be (n, ...) and its labels (n,); got {tuple(x.shape)} and {tuple(y.shape)}")
    if not torch.is_floating_point(x) or not bool(torch.isfinite(x).all()):
        raise InputError(f"{name} must hold finite floating-point values (no NaN or inf)")
    if y.dtype in (torch.bool,) or torch.is_floating_point(y) or torch.is_complex(y):
        raise InputError(f"labels must be integer class indices, got dtype {y.dtype}")
    if y.numel() and int(y.min()) < 0:
        raise InputError("labels must be ≥ 0")
    return x, y.long()


def model_logits(model: Any, x: Tensor, batch_size: int = 1024) -> Tensor:
    """The model's logits on ``x`` as float64, in eval mode, without gradients; the model's state is restored.

    ``model`` is a ``torch.nn.Module`` (or a callable) returning logits (n, classes); a module's answer is
    unwrapped by :func:`adverse.models.as_classifier` (a ``ModelOutput``, a dict with logits, a tuple).
    """
    if not isinstance(model, nn.Module) and not callable(model):
        raise ModelError(f"the model must be a torch.nn.Module returning logits, got {type(model).__name__}")
    outs = []
    if isinstance(model, nn.Module):
        model = as_classifier(model)
        with attack_mode(model), torch.no_grad():
            for i in range(0, x.shape[0], batch_size):
                outs.append(model(x[i : i + batch_size]))
    else:
        with torch.no_grad():
            for i in range(0, x.shape[0], batch_size):
                outs.append(torch.as_tensor(model(x[i : i + batch_size])))
    z = torch.cat(outs) if outs else torch.empty(0, 0)
    if z.dim() != 2 or z.shape[0] != x.shape[0]:
        raise ModelError(f"the model must return logits of shape (n, classes), got {tuple(z.shape)}")
    if not bool(torch.isfinite(z).all()):
        raise ModelError("the model returned NaN or infinite logits")
    check_logits(z)
    return z.double()


def check_label_range(z: Tensor, y: Tensor) -> None:
    if y.numel() and int(y.max()) >= z.shape[1]:
        raise InputError(f"labels go up to {int(y.max())} but the model has {z.shape[1]} classes")


def log_softmax_true(z: Tensor, y: Tensor, temperature: float = 1.0) -> Tensor:
    """``log p_y`` with ``p = softmax(z / T)``, float64; ``z`` (..., n, C), ``y`` (n,)."""
    idx = y.expand(z.shape[:-1]).unsqueeze(-1)
    return torch.log_softmax(z.double() / temperature, dim=-1).gather(-1, idx).squeeze(-1)


def scaled_logit(z: Tensor, y: Tensor) -> Tensor:
    """LiRA's statistic ``φ = log p_y − log Σ_{k≠y} p_k = z_y − logsumexp_{k≠y} z_k`` in float64.

    Works on logits of shape (..., n, C) with labels (n,); the softmax normalizer cancels, so members whose
    ``p_y`` rounds to 1 keep distinct, finite values.
    """
    z = z.double()
    idx = y.expand(z.shape[:-1]).unsqueeze(-1)
    z_y = z.gather(-1, idx).squeeze(-1)
    others = z.scatter(-1, idx, float("-inf"))
    return z_y - torch.logsumexp(others, dim=-1)
