"""The model contract, and the small pieces that make any model keep it.

A white-box model is a ``torch.nn.Module`` mapping inputs inside ``bounds`` to **logits**. Normalization
lives inside the model (:class:`Normalize`). A black-box model is a :class:`BlackBox` around any callable or
scikit-learn estimator; it counts its queries and refuses to exceed ``max_queries``.

:class:`Counted` wraps a model for the length of one attack: it counts forward and backward passes (per
sample) and computes input gradients with ``torch.autograd.grad``, so no ``.grad`` ever accumulates on the
model's parameters. :func:`attack_mode` puts a model in eval mode with frozen parameters and restores exactly
what it found.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import BudgetError, ModelError


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, as the first layer of a model that expects normalized inputs.

    Put it *inside* the model so attacks work in the raw input range: ``nn.Sequential(Normalize(m, s), net)``.
    """

    def __init__(self, mean: Sequence[float] | float, std: Sequence[float] | float) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        if (std_t <= 0).any():
            raise ModelError("Normalize: std must be > 0")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1, -1] + [1] * (x.dim() - 2)
        return (x - self.mean.reshape(shape).to(x.dtype)) / self.std.reshape(shape).to(x.dtype)


def is_exported(model: Any) -> bool:
    """True for a module from ``torch.export`` (``ExportedProgram.module()``): its graph keeps the mode it was
    exported in, and torch refuses ``.eval()`` and ``.train()`` on it."""
    return isinstance(model, torch.fx.GraphModule) and ("eval" in vars(model) or "train" in vars(model))


def eval_mode(model: nn.Module) -> nn.Module:
    """``model.eval()``, or, when the model is or holds an exported module (which refuses ``.eval()``), every
    module's ``training`` flag set to False, as ``.eval()`` would; returns ``model``."""
    if any(is_exported(m) for m in model.modules()):
        for m in model.modules():
            m.training = False
        return model
    return model.eval()


@contextlib.contextmanager
def attack_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and frozen parameters for the duration of an attack; restores modes and flags on exit.

    BatchNorm running statistics are not updated in eval mode, so buffers are left untouched too. Exported
    modules (``torch.export``) are handled by :func:`eval_mode`: they are already in inference form.
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        eval_mode(model)
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in flags:
            p.requires_grad_(flag)


def looks_like_probabilities(out: torch.Tensor, tol: float = 1e-4) -> bool:
    """True when every row lies in [0, 1] and sums to 1: the model ends in a softmax."""
    if out.dim() != 2 or out.shape[1] < 2 or out.shape[0] == 0:
        return False
    rows_sum_to_one = (out.sum(dim=1) - 1).abs().max() <= tol
    in_unit = (out >= -tol).all() and (out <= 1 + tol).all()
    return bool(rows_sum_to_one and in_unit)


def check_logits(out: Any, n: int | None = None, *, probabilities: bool = False) -> None:
    """Raise :class:`ModelError` unless ``out`` is logits for ``n`` inputs (any number when None): a
    floating-point tensor of shape (n, classes), finite, and not probabilities (unless ``probabilities``: then
    rows in [0, 1] summing to 1 are accepted too). The message names what came back and the fix; callers check a
    model's first batch with it."""
    if not torch.is_tensor(out):
        what = type(out).__name__ + (f" of length {len(out)}" if isinstance(out, (tuple, list, dict)) else "")
        raise ModelError(f"the model returned a {what}, not a tensor of logits; make forward return the logits "
                         "tensor of shape (n, classes)")
    if out.dim() != 2 or (n is not None and out.shape[0] != n):
        raise ModelError(
            f"the model returned shape {tuple(out.shape)} for {n if n is not None else 'a batch of'} inputs; it must "
            f"return logits of shape ({n if n is not None else 'n'}, classes), one row per input (end the model with "
            "a layer of one output per class, flattening what comes before it)")
    if not out.is_floating_point():
        raise ModelError(f"the model returned {out.dtype} values, not floating-point logits; a model that answers "
                         "with labels can only be queried: wrap it in adverse.BlackBox")
    finite = torch.isfinite(out)
    if not bool(finite.all()):
        rows = ~finite.all(dim=1)
        kinds = " and ".join(k for k, has in (("NaN", bool(torch.isnan(out).any())),
                                              ("infinite", bool(torch.isinf(out).any()))) if has)
        raise ModelError(
            f"the model returned {kinds} logits for {int(rows.sum())} of {out.shape[0]} inputs (the first at index "
            f"{int(rows.nonzero()[0, 0])}); predictions and attacks on such outputs mean nothing (argmax of NaN is 0). "
            "Check the model's weights for NaN or inf, that the inputs lie in the bounds the model expects, and "
            "layers that can overflow (exp, log of 0, division)")
    if not probabilities and looks_like_probabilities(out):
        raise ModelError(
            "the model returns probabilities (rows in [0, 1] summing to 1), not logits; remove the final "
            "softmax so gradient attacks are not weakened by saturation (or wrap it in adverse.BlackBox)"
        )


def expected_input(model: Any) -> str | None:
    """What a model's first weight layer takes, when it can be told (for messages): ``"its first weight layer,
    Linear(64 → 128), takes 64 features per input"``; None for anything else."""
    if not isinstance(model, nn.Module):
        return None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            return (f"its first weight layer, {name or 'the model'} = Linear({m.in_features} → {m.out_features}), takes "
                    f"{m.in_features} features per input")
        if isinstance(m, nn.modules.conv._ConvNd):
            return (f"its first weight layer, {name or 'the model'} = {type(m).__name__}({m.in_channels} → "
                    f"{m.out_channels}), takes inputs with {m.in_channels} channel(s)")
    return None


def forward_failed(model: Any, x: torch.Tensor, error: BaseException) -> ModelError:
    """The :class:`ModelError` for a model whose forward pass raised on ``x`` (usually: the data's shape does not
    fit the model), naming the data's shape and what the model expects when known."""
    detail = " ".join(str(error).split())[:300]
    expects = expected_input(model)
    return ModelError(
        f"the model fails on inputs of shape {tuple(x.shape[1:])} (a batch of {tuple(x.shape)}): "
        f"{type(error).__name__}: {detail}" + (f"; {expects}" if expects else "")
        + ". Pass data of the shape the model was built for (or the model, --arch, that fits the data)")


def checked_logits(model: nn.Module, x: torch.Tensor, *, probabilities: bool = False) -> torch.Tensor:
    """``model(x)`` in attack mode without gradients, checked by :func:`check_logits`; a forward pass that raises
    on ``x`` (a shape the model does not take) becomes a :class:`ModelError` (:func:`forward_failed`)."""
    from .errors import AdverseError

    try:
        with attack_mode(model), torch.no_grad():
            out = model(x)
    except AdverseError:
        raise
    except (RuntimeError, ValueError, IndexError) as e:
        raise forward_failed(model, x, e) from None
    check_logits(out, x.shape[0], probabilities=probabilities)
    return out


class Counted:
    """A model with pass counting, for the length of one attack.

    ``forwards`` and ``backwards`` count per-sample passes (a batch of 8 counts 8).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.forwards = 0
        self.backwards = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards += x.shape[0]
        return self.model(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits without building a graph."""
        with torch.no_grad():
            return self(x)

    def value_and_grad(
        self,
        x: torch.Tensor,
        loss_fn: Callable[[torch.Tensor], torch.Tensor],
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits, per-sample loss, d loss.sum() / d x)`` at ``x``: one forward and one backward pass.

        ``transform`` (differentiable) is applied to ``x`` before the model, e.g. an input-diversity map; the
        gradient is still taken with respect to ``x``."""
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self(x if transform is None else transform(x))
            loss = loss_fn(logits)
            if not loss.requires_grad:
                raise ModelError(
                    "the model's output has no gradient with respect to its input (a non-differentiable layer "
                    "such as thresholding or argmax); wrap that layer with BPDA or use a black-box attack"
                )
            (grad,) = torch.autograd.grad(loss.sum(), x)
        self.backwards += x.shape[0]
        return logits.detach(), loss.detach(), grad.detach()


class BlackBox:
    """A model that can only be queried: any callable or scikit-learn estimator returning scores or labels.

    Parameters
    ----------
    fn : a callable mapping a batch of inputs (a tensor) to scores (n, classes) or labels (n,), or a fitted
        scikit-learn estimator (``predict_proba``, else ``decision_function``, else ``predict`` is used).
    output : "scores" or "labels"; inferred from the first answer when None.
    max_queries : total per-sample queries allowed; exceeding it raises :class:`BudgetError`.
    """

    def __init__(self, fn: Any, output: str | None = None, max_queries: int | None = None) -> None:
        self.estimator = fn if not callable(fn) or hasattr(fn, "predict") else None
        if hasattr(fn, "predict_proba"):
            self._fn, output = self._sklearn(fn.predict_proba), output or "scores"
        elif hasattr(fn, "decision_function"):
            self._fn, output = self._sklearn(fn.decision_function), output or "scores"
        elif hasattr(fn, "predict"):
            self._fn, output = self._sklearn(fn.predict), output or "labels"
        elif callable(fn):
            self._fn = fn
        else:
            raise ModelError(f"BlackBox needs a callable or a scikit-learn estimator, got {type(fn).__name__}")
        if output not in (None, "scores", "labels"):
            raise ModelError(f"output must be 'scores' or 'labels', got {output!r}")
        self.output = output
        self.max_queries = max_queries
        self.queries = 0

    @staticmethod
    def _sklearn(method: Callable[[np.ndarray], np.ndarray]) -> Callable[[torch.Tensor], torch.Tensor]:
        def call(x: torch.Tensor) -> torch.Tensor:
            out = method(x.detach().flatten(1).cpu().numpy())
            return torch.as_tensor(np.asarray(out), device=x.device)

        return call

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.max_queries is not None and self.queries + n > self.max_queries:
            raise BudgetError(
                f"query budget exhausted: {self.queries} used, {n} more asked, max_queries={self.max_queries}; "
                "raise max_queries or attack fewer samples"
            )
        self.queries += n
        with torch.no_grad():  # not inference_mode: callers may modify the answer in place
            out = torch.as_tensor(self._fn(x))
        if self.output is None:
            self.output = "labels" if out.dim() == 1 else "scores"
        if out.dim() == 2 and out.shape[1] == 1 and self.output == "scores":  # binary decision_function
            out = torch.cat([-out, out], dim=1)
        elif out.dim() == 1 and self.output == "scores":
            out = torch.stack([-out, out], dim=1)
        return out

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted labels for ``x`` (one query per sample)."""
        out = self(x)
        return out if self.output == "labels" else out.argmax(dim=1)
