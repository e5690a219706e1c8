"""Interval bound propagation (IBP): sound output bounds over an L∞ box, verified accuracy, IBP training.

For an input box ``[z̲₀, z̄₀] = [max(x − ε, lo), min(x + ε, hi)]`` each layer ``h_k`` maps the box of its input to
a box containing every output (Gowal et al. 2018, eq. 6–7): an affine layer ``W z + b`` maps centre and radius
``μ = (z̄ + z̲)/2``, ``r = (z̄ − z̲)/2`` to ``W μ + b`` and ``|W| r``; a monotone layer (ReLU, pooling, sigmoid)
maps the two ends. The final affine layer is merged with the specification ``c = e_y − e_j`` ("elision"), which
bounds the margins ``z_y − z_j`` directly and is tighter than subtracting logit bounds.

Models are read with ``torch.fx``, so any module whose forward is traceable works: ``nn.Sequential`` nesting,
the zoo's ``MLP`` and ``SmallCNN``, or custom modules built from the supported pieces:

* layers: ``Linear``, ``Conv1d``/``Conv2d``, eval-mode ``BatchNorm1d``/``BatchNorm2d``, ``adverse.Normalize``,
  ``ReLU``, ``ReLU6``/``Hardtanh``, ``LeakyReLU``, ``Softplus``, ``Sigmoid``, ``Tanh``, ``Flatten``, ``AvgPool2d``, ``AdaptiveAvgPool2d``,
  ``MaxPool2d``, ``AdaptiveMaxPool2d``, ``Identity``, ``Dropout`` (identity in eval mode);
* functions: ``relu``, ``sigmoid``, ``tanh``, ``flatten``/``view``/``reshape``, ``+``, ``−``, scalar ``*``,
  ``@`` with a constant matrix, ``cat``.

Anything else raises :class:`~adverse.errors.ModelError` naming the layer.

References
----------
Gowal, Dvijotham, Stanforth, Bunel, Qin, Uesato, Arandjelović, Mann & Kohli, "On the Effectiveness of Interval
Bound Propagation for Training Verifiably Robust Models", arXiv:1810.12715, 2018.
Mirman, Gehr & Vechev, "Differentiable Abstract Interpretation for Provably Robust Neural Networks", ICML 2018.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ..data import Dataset
from ..errors import InputError, ModelError
from ..evasion._core import check_inputs, check_labels, make_generator
from ..models import Normalize, attack_mode
from ..threat import as_eps, batch_view


@dataclass
class Box:
    """An interval ``[lower, upper]`` over a tensor (elementwise)."""

    lower: torch.Tensor
    upper: torch.Tensor

    def map(self, fn: Any) -> Box:
        """The box of a monotone non-decreasing elementwise or pooling function: apply it to both ends.

        An in-place layer (``ReLU(inplace=True)``) changes both ends in place, so a box that another branch reads
        changes exactly as the tensor it bounds does in the model's own forward pass.
        """
        return Box(fn(self.lower), fn(self.upper))


_MONOTONE_MODULES = (nn.ReLU, nn.Hardtanh, nn.Softplus, nn.Sigmoid, nn.Tanh, nn.Flatten, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                     nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.Identity, nn.Dropout, nn.Unflatten,
                     Normalize)
_MONOTONE_FUNCTIONS = {torch.relu, F.relu, torch.sigmoid, torch.tanh, F.avg_pool2d, F.max_pool2d,
                       torch.flatten, F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
_MONOTONE_METHODS = {"relu", "sigmoid", "tanh", "flatten", "view", "reshape", "contiguous"}
SUPPORTED = ("Linear", "Conv1d", "Conv2d", "BatchNorm1d/2d (eval mode)", "Normalize", "ReLU", "ReLU6",
             "Hardtanh", "LeakyReLU", "Softplus", "Sigmoid", "Tanh", "Flatten", "AvgPool", "MaxPool", "Identity", "Dropout", "nn.Sequential")


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, Normalize) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> torch.fx.GraphModule:
    """The model's computation as a ``torch.fx`` graph, with ``adverse.Normalize`` kept as one layer."""
    tracer = _Tracer()
    if tracer.is_leaf_module(model, ""):  # a single layer: trace it as a one-layer network
        model = nn.Sequential(model)
    try:
        graph = tracer.trace(model)
    except Exception as e:  # data-dependent control flow and the like
        raise ModelError(
            f"interval bound propagation could not trace {type(model).__name__} with torch.fx ({e}); build the "
            f"model from supported layers ({', '.join(SUPPORTED)}) without data-dependent control flow"
        ) from e
    return torch.fx.GraphModule(model, graph)


def _affine_box(box: Box, fn: Any, abs_fn: Any) -> Box:
    """``W z + b`` over a box: centre through ``fn`` (with bias), radius through ``abs_fn`` (``|W|``, no bias)."""
    mu = (box.upper + box.lower) / 2
    r = (box.upper - box.lower) / 2
    centre, radius = fn(mu), abs_fn(r)
    return Box(centre - radius, centre + radius)


def _unsupported(what: str, where: str) -> ModelError:
    return ModelError(
        f"interval bound propagation does not support {what} (at '{where}'); supported layers: "
        f"{', '.join(SUPPORTED)}. Replace it, or certify this model with randomized smoothing "
        "(adverse.defenses.smoothing)"
    )


class _IntervalInterpreter(torch.fx.Interpreter):
    """Runs a traced model on :class:`Box` values; ``spec`` (n, S, K) is merged into a final ``Linear``."""

    def __init__(self, gm: torch.fx.GraphModule, spec: torch.Tensor | None = None) -> None:
        super().__init__(gm)
        self.spec = spec
        self.elided = False
        out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
        last = out if isinstance(out, torch.fx.Node) else None
        self.final = last.target if last is not None and last.op == "call_module" and isinstance(
            gm.get_submodule(str(last.target)), nn.Linear) else None

    def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
        m = self.fetch_attr(target)
        box = args[0] if args else None
        if not isinstance(box, Box):
            return super().call_module(target, args, kwargs)
        if isinstance(m, nn.Linear):
            if target == self.final and self.spec is not None:  # elision: bound c·(W z + b) directly
                self.elided = True
                w = self.spec @ m.weight  # (n, S, d)
                b = self.spec @ m.bias if m.bias is not None else None
                return _affine_box(
                    box,
                    lambda mu: torch.einsum("nsd,nd->ns", w, mu) + (b if b is not None else 0),
                    lambda r: torch.einsum("nsd,nd->ns", w.abs(), r),
                )
            return _affine_box(box, m, lambda r: F.linear(r, m.weight.abs()))
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            return _affine_box(box, m, lambda r: m._conv_forward(r, m.weight.abs(), None))
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if m.training or m.running_mean is None:
                raise ModelError(
                    f"BatchNorm '{target}' is in training mode (or keeps no running statistics): interval bounds "
                    "need eval-mode BatchNorm; call model.eval() or build the model without BatchNorm"
                )
            scale = torch.rsqrt(m.running_var + m.eps)
            if m.weight is not None:
                scale = scale * m.weight
            shift = -m.running_mean * scale + (m.bias if m.bias is not None else 0)
            shape = [1, -1] + [1] * (box.lower.dim() - 2)
            s, t = scale.reshape(shape), shift.reshape(shape)
            return _affine_box(box, lambda mu: mu * s + t, lambda r: r * s.abs())
        if isinstance(m, nn.LeakyReLU) and m.negative_slope >= 0:
            return box.map(m)
        if isinstance(m, nn.Dropout) and m.training:
            raise ModelError(f"Dropout '{target}' is in training mode; call model.eval() before bounding the model")
        if isinstance(m, _MONOTONE_MODULES):
            return box.map(m)
        raise _unsupported(f"layer {type(m).__name__}", str(target))

    def call_function(self, target: Any, args: Any, kwargs: Any) -> Any:
        flat = [b for a in args for b in (a if isinstance(a, (list, tuple)) else (a,))]
        boxes = [a for a in flat if isinstance(a, Box)]
        if not boxes:
            return super().call_function(target, args, kwargs)
        if target in _MONOTONE_FUNCTIONS and isinstance(args[0], Box) and len(boxes) == 1:
            return args[0].map(lambda t: target(t, *args[1:], **kwargs))
        if target in (operator.add, torch.add) and not kwargs:
            a, b = args
            if isinstance(a, Box) and isinstance(b, Box):
                return Box(a.lower + b.lower, a.upper + b.upper)
            box, c = (a, b) if isinstance(a, Box) else (b, a)
            return Box(box.lower + c, box.upper + c)
        if target in (operator.sub, torch.sub) and not kwargs:
            a, b = args
            if isinstance(a, Box) and isinstance(b, Box):
                return Box(a.lower - b.upper, a.upper - b.lower)
            if isinstance(a, Box):
                return Box(a.lower - b, a.upper - b)
            return Box(a - b.upper, a - b.lower)
        if target in (operator.mul, torch.mul) and len(boxes) == 1 and not kwargs:
            box, c = (args[0], args[1]) if isinstance(args[0], Box) else (args[1], args[0])
            c = torch.as_tensor(c, dtype=box.lower.dtype, device=box.lower.device)
            lo, hi = box.lower * c, box.upper * c
            return Box(torch.minimum(lo, hi), torch.maximum(lo, hi))
        if target in (operator.matmul, torch.matmul) and isinstance(args[0], Box) and len(boxes) == 1:
            w = args[1]
            return _affine_box(args[0], lambda mu: mu @ w, lambda r: r @ w.abs())
        if target is torch.cat and isinstance(args[0], (list, tuple)):
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            parts = [p if isinstance(p, Box) else Box(p, p) for p in args[0]]
            return Box(torch.cat([p.lower for p in parts], dim), torch.cat([p.upper for p in parts], dim))
        if target in (getattr, operator.getitem) and isinstance(args[0], Box) and args[1] in ("shape", "dtype"):
            return getattr(args[0].lower, args[1])
        raise _unsupported(f"function {getattr(target, '__name__', target)}", str(target))

    def call_method(self, target: Any, args: Any, kwargs: Any) -> Any:
        if not args or not isinstance(args[0], Box):
            return super().call_method(target, args, kwargs)
        box = args[0]
        if target in _MONOTONE_METHODS:
            return box.map(lambda t: getattr(t, target)(*args[1:], **kwargs))
        if target in ("size", "dim"):
            return getattr(box.lower, target)(*args[1:], **kwargs)
        raise _unsupported(f"method Tensor.{target}", str(target))


def input_box(x: torch.Tensor, eps: torch.Tensor, bounds: tuple[float, float]) -> Box:
    """``[max(x − ε, lo), min(x + ε, hi)]``: the L∞ ball of radius ε around ``x`` inside the input bounds."""
    lo, hi = bounds
    e = batch_view(eps, x)
    return Box((x - e).clamp_min(lo), (x + e).clamp_max(hi))


def propagate(gm: torch.fx.GraphModule, box: Box, spec: torch.Tensor | None = None) -> tuple[Box, bool]:
    """Push ``box`` through the traced model ``gm``; returns the output box and whether ``spec`` was elided.

    Differentiable in the model's parameters (used by :func:`ibp_train`); changes no module mode.
    """
    interp = _IntervalInterpreter(gm, spec)
    out = interp.run(box)
    if not isinstance(out, Box):
        raise ModelError("the model's output does not depend on its input; interval bounds are meaningless")
    return out, interp.elided


def _check_eps(eps: Any, x: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    e = as_eps(eps, x.shape[0], x)
    lo, hi = bounds
    if bool((e > hi - lo).any()):
        raise InputError(
            f"eps={float(e.max()):g} exceeds the width {hi - lo:g} of the input range {bounds}: give eps in input "
            "units (8/255, not 8, for [0, 1] images)"
        )
    return e


def _specification(y: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """``C`` of shape (n, K, K) with rows ``e_y − e_j``: ``C z`` holds the margins ``z_y − z_j``."""
    eye = torch.eye(num_classes, dtype=dtype, device=y.device)
    return eye[y][:, None, :] - eye[None, :, :]


def margin_bounds(gm: torch.fx.GraphModule, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor,
                  bounds: tuple[float, float], num_classes: int) -> torch.Tensor:
    """Lower bounds on ``z_y − z_j`` over the box, shape (n, K) (entry ``y`` is 0), with last-layer elision."""
    spec = _specification(y, num_classes, x.dtype)
    out, elided = propagate(gm, input_box(x, eps, bounds), spec)
    if elided:
        return out.lower
    lower_y = out.lower.gather(1, y[:, None])
    return lower_y - out.upper  # z_y − z_j ≥ z̲_y − z̄_j


def worst_case_logits(margin_lower: torch.Tensor) -> torch.Tensor:
    """``ẑ`` with ``ẑ_j = −(lower bound of z_y − z_j)``: the logits IBP's robust cross-entropy is taken on.

    Cross-entropy is shift-invariant, so this equals Gowal et al.'s ẑ (upper bounds for ``j ≠ y``, the lower bound
    for ``y``) up to a constant when no elision is done, and is tighter with it.
    """
    return -margin_lower


def _num_classes(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        out = model(x[:1])
    if out.dim() != 2:
        raise ModelError(f"the model must return logits of shape (n, classes), got {tuple(out.shape)}")
    return int(out.shape[1])


def interval_bounds(
    model: nn.Module, x: torch.Tensor, eps: float | torch.Tensor, *, bounds: tuple[float, float] = (0.0, 1.0)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise lower and upper bounds on the logits over the L∞ ball of radius ``eps`` ∩ ``bounds``.

    Parameters
    ----------
    model : a torch module made of supported layers (see the module docstring); evaluated in eval mode, its
        state restored afterwards.
    x : inputs (n, ...) inside ``bounds``.
    eps : the L∞ radius in input units, a number or a per-sample tensor of shape (n,).
    bounds : the valid input range; the box is clipped to it.

    Returns
    -------
    (lower, upper) : tensors of shape (n, classes) with ``lower ≤ model(x') ≤ upper`` for every ``x'`` in the box.

    References
    ----------
    Gowal et al., "On the Effectiveness of Interval Bound Propagation for Training Verifiably Robust Models",
    2018, eq. 6–7.
    """
    x, _ = check_inputs(x, torch.zeros(x.shape[0] if torch.is_tensor(x) and x.dim() else 0, dtype=torch.long), bounds)
    e = _check_eps(eps, x, bounds)
    gm = trace(model)
    with attack_mode(model), torch.no_grad():
        out, _ = propagate(gm, input_box(x, e, bounds))
    return out.lower, out.upper


def verify(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor, *,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """Per sample: is the model provably correct on the whole L∞ ball of radius ``eps`` (∩ ``bounds``)?

    True where the IBP lower bound of every margin ``z_y − z_j`` (``j ≠ y``), with the last layer merged into the
    specification, is positive. Sound: a True is a proof; a False may be a robust sample IBP cannot prove.

    Parameters
    ----------
    model, x, eps, bounds : as in :func:`interval_bounds`.
    y : integer labels (n,).

    Returns
    -------
    torch.Tensor
        Booleans (n,).

    References
    ----------
    Gowal et al., "On the Effectiveness of Interval Bound Propagation for Training Verifiably Robust Models",
    2018, §3 (verification of the specification ``c = e_y − e_j`` with elision of the last layer).
    """
    x, y = check_inputs(x, y, bounds)
    e = _check_eps(eps, x, bounds)
    gm = trace(model)
    with attack_mode(model), torch.no_grad():
        k = _num_classes(model, x)
        check_labels(y, k)
        m = margin_bounds(gm, x, y, e, bounds, k)
    m = m.scatter(1, y[:, None], math.inf)
    return m.amin(dim=1) > 0


def verified_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor, *,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> float:
    """Fraction of samples :func:`verify` proves correct on the L∞ ball of radius ``eps``: a lower bound on the
    accuracy under *any* attack within the budget.

    References
    ----------
    Gowal et al., "On the Effectiveness of Interval Bound Propagation for Training Verifiably Robust Models", 2018.
    """
    return float(verify(model, x, y, eps, bounds=bounds).double().mean())


def ibp_schedule(step: int, total: int, *, eps: float, warmup: float, ramp: float, kappa_end: float
                 ) -> tuple[float, float]:
    """Gowal et al.'s schedule at ``step`` of ``total``: ``(ε_t, κ_t)``.

    No perturbation and ``κ = 1`` during the first ``warmup`` fraction of steps; then over the next ``ramp`` fraction
    ε grows linearly from 0 to ``eps`` and κ falls linearly from 1 to ``kappa_end``; then both stay put.
    """
    start, length = warmup * total, max(ramp * total, 1.0)
    t = min(max((step - start) / length, 0.0), 1.0)
    return eps * t, 1.0 - (1.0 - kappa_end) * t


def ibp_train(
    model: nn.Module,
    data: Dataset,
    *,
    eps: float,
    epochs: int = 100,
    lr: float = 2e-3,
    batch_size: int = 64,
    warmup: float = 0.05,
    ramp: float = 0.5,
    kappa_end: float = 0.5,
    eps_train_factor: float = 1.1,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> nn.Module:
    """Train a verifiably robust model with interval bound propagation (Gowal et al. 2018).

    Each step minimizes ``κ ℓ(z(x), y) + (1 − κ) ℓ(ẑ(x, ε_t), y)`` with ``ℓ`` the cross-entropy, ``z`` the logits
    and ``ẑ`` the worst-case logits from IBP over the ball of radius ``ε_t`` (last layer elided); ``(ε_t, κ_t)``
    follow :func:`ibp_schedule` (warm-up, then a linear ramp of ε to ``eps_train_factor · eps`` and of κ to
    ``kappa_end``). Adam; batch order drawn from ``seed``.

    Parameters
    ----------
    model : made of supported layers, without BatchNorm (trained in place).
    data : the training set.
    eps : the L∞ radius to be verified at, in input units; training uses ``eps_train_factor · eps`` (Gowal et al.
        train at 1.1 ε on MNIST).
    epochs, lr, batch_size, weight_decay : the optimizer.
    warmup, ramp : fractions of all steps spent at ε = 0, then ramping ε up.
    kappa_end : the final weight of the clean loss (0.5 in the paper).
    seed : seeds the batch order.

    Returns
    -------
    nn.Module
        The trained model, in eval mode, with no ``.grad`` left on its parameters.

    References
    ----------
    Gowal et al., "On the Effectiveness of Interval Bound Propagation for Training Verifiably Robust Models",
    arXiv:1810.12715, 2018, eq. 8–9 and §4 (schedule).
    """
    lo, hi = data.bounds
    _check_eps(eps, data.x[:1], data.bounds)
    if not (0 <= warmup <= 1 and 0 <= ramp <= 1 and 0 <= kappa_end <= 1 and eps_train_factor > 0):
        raise InputError("warmup, ramp and kappa_end must lie in [0, 1] and eps_train_factor must be > 0")
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ModelError("ibp_train does not train BatchNorm layers (their batch statistics change the bounds); "
                         "remove BatchNorm from the model, or train it otherwise and verify it in eval mode")
    if epochs < 1 or batch_size < 1:
        raise InputError("epochs and batch_size must be positive integers")
    gm = trace(model)
    k = _num_classes(model, data.x)
    g, _ = make_generator(seed, torch.device("cpu"))
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(data)
    per_epoch = math.ceil(n / batch_size)
    total = epochs * per_epoch
    step = 0
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            b = order[i : i + batch_size].to(data.x.device)
            xb, yb = data.x[b], data.y[b]
            eps_t, kappa = ibp_schedule(step, total, eps=eps * eps_train_factor, warmup=warmup,
                                        ramp=ramp, kappa_end=kappa_end)
            eps_t = min(eps_t, hi - lo)
            loss = kappa * F.cross_entropy(model(xb), yb)
            if kappa < 1.0:
                e = torch.full((xb.shape[0],), eps_t, dtype=xb.dtype, device=xb.device)
                m = margin_bounds(gm, xb, yb, e, data.bounds, k)
                loss = loss + (1.0 - kappa) * F.cross_entropy(worst_case_logits(m), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    opt.zero_grad(set_to_none=True)
    return model.eval()
