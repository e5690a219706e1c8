"""The model contract, and the small pieces that make any model keep it.

A white-box model is a ``torch.nn.Module`` mapping inputs inside ``bounds`` to **logits**. Normalization
lives inside the model (:class:`Normalize`). A black-box model is a :class:`BlackBox` around any callable or
scikit-learn estimator; it counts its queries and refuses to exceed ``max_queries``.

:class:`Counted` wraps a model for the length of one attack: it counts forward and backward passes (per
sample) and computes input gradients with ``torch.autograd.grad``, so no ``.grad`` ever accumulates on the
model's parameters. :func:`attack_mode` puts a model in eval mode with frozen parameters and restores exactly
what it found.

A model may answer with a logits tensor, a mapping or ``transformers`` ``ModelOutput`` holding ``logits``, or a
tuple/list whose first element is the logits. :func:`as_classifier` is the one place where such an answer is
unwrapped: every attack, sanity check and suite applies it where a user's model comes in (it wraps the model in
:class:`LogitsOnly`, whose forward calls :func:`logits_of`); anything else is refused with a :class:`ModelError`
naming what came back and the fix.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import BudgetError, InputError, ModelError
from .validation import validated


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, as the first layer of a model that expects normalized inputs.

    Put it *inside* the model so attacks work in the raw input range: ``nn.Sequential(Normalize(m, s), net)``.
    """

    def __init__(self, mean: Sequence[float] | float, std: Sequence[float] | float) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        if mean_t.numel() == 0 or std_t.numel() == 0:
            raise ModelError("Normalize: mean and std need at least one value (one per channel, or one for all)")
        if not (bool(torch.isfinite(mean_t).all()) and bool(torch.isfinite(std_t).all())):
            raise ModelError(f"Normalize: mean and std must be finite numbers, got mean={mean_t.flatten().tolist()} "
                             f"and std={std_t.flatten().tolist()}")
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
        raise ModelError(f"the model returned {_describe(out)}, not a tensor of logits; {ACCEPTED_OUTPUTS}")
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


ACCEPTED_OUTPUTS = ("make forward return the logits: a tensor of shape (n, classes), a mapping or transformers "
                    "ModelOutput with a 'logits' entry, or a tuple/list whose first element is the logits tensor")
"""The fix named when a model's answer holds no logits adverse can find."""


def _describe(out: Any) -> str:
    """What a model returned, in a few words, for messages: ``a str ('abc')``, ``a dict with keys ['a']``."""
    name = type(out).__name__
    a = f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"
    if isinstance(out, Mapping):
        keys = [repr(k) for k in list(out.keys())[:8]]
        more = ", ..." if len(out) > 8 else ""
        return f"{a} with keys [{', '.join(keys)}{more}]" if keys else f"an empty {name}"
    if isinstance(out, (tuple, list)):
        if not out:
            return f"an empty {name}"
        kinds = ", ".join(type(v).__name__ for v in out[:4]) + (", ..." if len(out) > 4 else "")
        return f"{a} of length {len(out)} ({kinds})"
    if isinstance(out, (str, bytes)):
        text = repr(out[:40]) + ("..." if len(out) > 40 else "")
        return f"{a} ({text})"
    if out is None:
        return "None"
    return a


def _is_logits_like(v: Any) -> bool:
    return torch.is_tensor(v) or isinstance(v, torch.fx.Proxy)


@validated
def logits_of(out: Any) -> torch.Tensor:
    """The logits in a model's answer; the one place where adverse unwraps a model's output.

    ``out`` may be a tensor (returned as it is), a mapping with a ``"logits"`` entry (a dict, or a
    ``transformers`` ``ModelOutput`` such as ``ImageClassifierOutput``: its ``logits``), or a tuple or list whose
    first element is the logits tensor (what ``transformers`` models return with ``return_dict=False``; a named
    tuple with a ``logits`` field gives that field). The value is taken as it is, without a copy, so gradients
    flow through it; its shape and values are checked by :func:`check_logits` where a batch's answer is checked.
    Anything else raises :class:`ModelError` naming what came back and the fix. (``torch.fx`` proxies pass
    through, so a model wrapped by :class:`LogitsOnly` traces as the model itself.)
    """
    if _is_logits_like(out):
        return out
    if isinstance(out, Mapping):
        if "logits" not in out:
            raise ModelError(f"the model returned {_describe(out)} and no 'logits' entry; {ACCEPTED_OUTPUTS}")
        value, where = out["logits"], "its 'logits' entry"
    elif isinstance(out, (tuple, list)) and out:
        fields = getattr(out, "_fields", None)
        if fields is not None and "logits" in fields:
            value, where = out.logits, "its 'logits' field"
        else:
            value, where = out[0], "its first element"
    else:
        raise ModelError(f"the model returned {_describe(out)}, not logits; {ACCEPTED_OUTPUTS}")
    if not _is_logits_like(value):
        raise ModelError(f"the model returned {_describe(out)} whose logits ({where}) are {_describe(value)}, not a "
                         f"tensor; {ACCEPTED_OUTPUTS}")
    return value


class LogitsOnly(nn.Module):
    """A model whose answer is reduced to its logits by :func:`logits_of`; build it with :func:`as_classifier`.

    It adds no parameters, buffers or state: the user's model is its one submodule, ``.model``, so
    :func:`attack_mode`, :func:`eval_mode` (exported modules included), ``parameters()``, ``buffers()`` and the
    training flags are the model's own. ``torch.fx`` traces through it to the model's graph (submodules named
    ``model.<name>``); :func:`base_model` gives the model back.
    """

    @validated
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ModelError(f"LogitsOnly wraps a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.training = bool(getattr(model, "training", False))  # its own flag only: the model's are not touched

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model(x))


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""The precisions a model may run in (``--precision``): ``torch.autocast`` dtypes (fp32: none)."""


class Autocast(LogitsOnly):
    """A :class:`LogitsOnly` whose forward pass runs under ``torch.autocast`` in ``precision`` ("bf16" or
    "fp16"), with the logits returned in float32: the model's matrix products and convolutions run in the reduced
    precision, while everything the attacks do with the logits (losses, gradients' projections, bookkeeping)
    stays in float32. Inputs stay float32 too, so input gradients come back in float32 (they can still
    underflow inside an fp16 model: :func:`adverse.evaluation.checks.check_precision` measures it)."""

    @validated
    def __init__(self, model: nn.Module, precision: str = "bf16") -> None:
        if precision not in PRECISIONS or PRECISIONS[precision] is None:
            raise InputError(f"precision must be 'bf16' or 'fp16' for Autocast, got {precision!r}")
        super().__init__(base_model(model))
        self.precision, self.dtype = precision, PRECISIONS[precision]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, dtype=self.dtype):
            out = logits_of(self.model(x))
        return out.float()


def device_of(model: nn.Module) -> torch.device | None:
    """The device of a module's first parameter (else its first buffer); None for a module with neither."""
    for tensors in (model.parameters(), model.buffers()):
        first = next(iter(tensors), None)
        if first is not None:
            return first.device
    return None


def resolve_device(device: Any) -> torch.device:
    """``device`` ("auto", "cpu", "cuda", "cuda:N", "mps" or a ``torch.device``) as a ``torch.device`` that exists
    here; "auto" is the first GPU, else Apple's MPS, else the CPU. An :class:`InputError` names the fix when the
    device is not available."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise InputError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {type(device).__name__}")
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps is not None and mps.is_available())
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    try:
        d = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"device {device!r} is not a device name; use auto, cpu, cuda, cuda:N or mps") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} asked for CUDA, but this torch ({torch.__version__}) sees no CUDA "
                             "GPU; use --device cpu (or auto), or install a CUDA build of torch on a machine with "
                             "a GPU")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise InputError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                             f"numbered 0…{torch.cuda.device_count() - 1}")
    elif d.type == "mps" and not has_mps:
        raise InputError(f"device {device!r}: Apple's MPS backend is not available here; use --device cpu")
    elif d.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"device {device!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    return d


@validated
def as_classifier(model: Any) -> Any:
    """``model`` as a module whose forward returns a logits tensor: a ``torch.nn.Module`` is wrapped in
    :class:`LogitsOnly` (once: a wrapped model comes back as it is); anything else (a :class:`BlackBox`, a
    callable) is returned unchanged for the caller to judge.

    Attacks (``evasion`` setup), the sanity checks, the audit and the privacy, poisoning and certification entry
    points apply it to the model they are given, so a model returning a ``transformers`` ``ModelOutput``, a dict
    with ``logits`` or a tuple works everywhere, and one returning anything else is refused with a
    :class:`ModelError` at its first forward pass."""
    if isinstance(model, LogitsOnly) or not isinstance(model, nn.Module):
        return model
    return LogitsOnly(model)


@validated
def base_model(model: Any) -> Any:
    """The user's model inside :func:`as_classifier`'s wrapper (``model`` itself when it is not wrapped): for
    names in messages, layer lookups by name and the model's file digest."""
    while isinstance(model, LogitsOnly):
        model = model.model
    return model


def expected_input(model: Any) -> str | None:
    """What a model's first weight layer takes, when it can be told (for messages): ``"its first weight layer,
    Linear(64 → 128), takes 64 features per input"``; None for anything else."""
    model = base_model(model)
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
    """``model(x)``'s logits (unwrapped by :func:`as_classifier`) in attack mode without gradients, checked by
    :func:`check_logits`; a forward pass that raises on ``x`` (a shape the model does not take) becomes a
    :class:`ModelError` (:func:`forward_failed`)."""
    from .errors import AdverseError

    model = as_classifier(model)
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
