"""Interval bound propagation (IBP): sound output bounds over an L∞ box, verified accuracy, IBP training.

For an input box ``[z̲₀, z̄₀] = [max(x − ε, lo), min(x + ε, hi)]`` each operation ``h_k`` maps the box of its input
to a box containing every output (Gowal et al. 2018, eq. 6–7). Each kind of operation has one rule:

* **affine layers** ``W z + b`` (``Linear``, ``Conv1d/2d/3d``, eval-mode ``BatchNorm``, ``F.linear``/``F.conv*``/
  ``F.batch_norm`` with constant weights, ``@`` a constant matrix) map centre and radius ``μ = (z̄ + z̲)/2``,
  ``r = (z̄ − z̲)/2`` to ``W μ + b`` and ``|W| r`` (Gowal et al. eq. 6; the centre–radius form of Mirman et al. 2018
  and Zhang et al. 2020). BatchNorm is per-channel ``s z + t``: a negative scale swaps the ends;
* **elementwise affine operations with a constant** ``c`` (a number, a buffer, a parameter, any tensor that does
  not depend on the input): ``z + c``, ``z − c``, ``c − z``, ``c ⊙ z``, ``z / c``, ``−z``, by interval arithmetic
  (exact elementwise). Inline normalization ``(x − mean) / std`` is of this kind;
* **sums and differences of two bounded tensors** (residual connections): ``[z̲₁ + z̲₂, z̄₁ + z̄₂]`` and
  ``[z̲₁ − z̄₂, z̄₁ − z̲₂]``;
* **monotone (non-decreasing) maps**, applied to both ends (Gowal et al. eq. 7): ``ReLU``, ``ReLU6``/``Hardtanh``,
  ``LeakyReLU`` and ``ELU`` with a non-negative slope, ``Softplus``, ``Sigmoid``, ``Hardsigmoid``, ``Tanh``,
  ``clamp``, ``adverse.Normalize``; max pooling; average pooling, adaptive (global) average pooling and
  ``mean``/``sum`` over dimensions, which are linear with non-negative weights (so ``W z̲ ≤ W z ≤ W z̄``); and shape
  operations, which only move entries (``flatten``, ``view``, ``reshape``, ``permute``, ``transpose``,
  ``squeeze``, ``unsqueeze``, indexing, ``pad``, ``Identity``, eval-mode ``Dropout``);
* **concatenation** (``cat``, ``stack``) of bounded and constant tensors (a constant is the box ``[c, c]``).

Products of two bounded tensors and division by a bounded tensor are not affine and are refused, as is anything
else, with a :class:`~adverse.errors.ModelError` naming the operation and where it is; the certify suite reports
such a model as skipped with that reason. The final ``Linear`` is merged with the specification ``c = e_y − e_j``
("elision"), which bounds the margins ``z_y − z_j`` directly and is tighter than subtracting logit bounds.

Models are read with ``torch.fx``, so any module whose ``forward`` is traceable works: ``nn.Sequential`` nesting,
the zoo's ``MLP`` and ``SmallCNN``, a ResNet with BatchNorm, 1×1-convolution shortcuts, global average pooling and
``(x − mean) / std`` in ``forward``. The bounds are exact interval arithmetic up to floating-point rounding (in
float64 they contain the outputs to within ~1e-12 of the logits' scale).

References
----------
Gowal, Dvijotham, Stanforth, Bunel, Qin, Uesato, Arandjelović, Mann & Kohli, "On the Effectiveness of Interval
Bound Propagation for Training Verifiably Robust Models", arXiv:1810.12715, 2018.
Mirman, Gehr & Vechev, "Differentiable Abstract Interpretation for Provably Robust Neural Networks", ICML 2018.
Zhang, Chen, Xiao, Gowal, Stanforth, Li, Boning & Hsieh, "Towards Stable and Efficient Training of Verifiably
Robust Neural Networks" (CROWN-IBP), ICLR 2020.
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
from ..errors import AdverseError, InputError, ModelError
from ..evasion._core import check_inputs, check_labels, make_generator
from ..models import Normalize, attack_mode
from ..threat import as_eps, batch_view
from ..validation import FRACTION, POSITIVE, validated


@dataclass
class Box:
    """An interval ``[lower, upper]`` over a tensor (elementwise)."""

    lower: torch.Tensor
    upper: torch.Tensor

    def map(self, fn: Any) -> Box:
        """The box of a monotone non-decreasing elementwise, pooling or shape function: apply it to both ends.

        An in-place layer (``ReLU(inplace=True)``) changes both ends in place, so a box that another branch reads
        changes exactly as the tensor it bounds does in the model's own forward pass.
        """
        return Box(fn(self.lower), fn(self.upper))


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


# ------------------------------------------------------------------------------------------------ the rules
# Every operation a model may apply to a bounded tensor is of one kind, and each kind has one rule, below;
# the interpreter only names the kind of each node (function, method or module alike) and calls the rule.


def _affine_box(box: Box, fn: Any, abs_fn: Any) -> Box:
    """``W z + b`` over a box: centre through ``fn`` (with bias), radius through ``abs_fn`` (``|W|``, no bias).

    Gowal et al. 2018, eq. 6; the same centre–radius form as Mirman et al. 2018 and Zhang et al. 2020 (CROWN-IBP).
    Tight for one affine map: each bound is attained at a vertex of the box.
    """
    mu = (box.upper + box.lower) / 2
    r = (box.upper - box.lower) / 2
    centre, radius = fn(mu), abs_fn(r)
    return Box(centre - radius, centre + radius)


def _batch_norm_box(box: Box, mean: torch.Tensor, var: torch.Tensor, weight: torch.Tensor | None,
                    bias: torch.Tensor | None, eps: float) -> Box:
    """Eval-mode batch normalization: per channel ``s z + t`` with ``s = γ / √(σ² + ε)``, ``t = β − s μ``; an
    affine map whose radius is scaled by ``|s|`` (a negative ``γ`` swaps the ends)."""
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale + (bias if bias is not None else 0)
    shape = [1, -1] + [1] * (box.lower.dim() - 2)
    s, t = scale.reshape(shape), shift.reshape(shape)
    return _affine_box(box, lambda mu: mu * s + t, lambda r: r * s.abs())


def _scale_box(box: Box, c: Any, *, divide: bool = False) -> Box:
    """``c ⊙ z`` (or ``z ⊘ c``) for a constant ``c`` of any sign, by interval arithmetic: both ends scaled, and
    swapped where ``c < 0``. Exact elementwise (Gowal et al. 2018, eq. 6 with a diagonal ``W``)."""
    lo, hi = (box.lower / c, box.upper / c) if divide else (box.lower * c, box.upper * c)
    return Box(torch.minimum(lo, hi), torch.maximum(lo, hi))


def _negate(value: Any) -> Any:
    """``−z``: the ends of a box swap; a constant is negated."""
    return Box(-value.upper, -value.lower) if isinstance(value, Box) else -value


def _add(a: Any, b: Any) -> Box:
    """``a + b`` with at least one bounded term: the ends add (a residual connection ``z₁ + z₂`` of two boxes, or
    a shift ``z + c`` by a constant). Subtraction is the sum with the negation, so ``z₁ − z₂`` has the bounds
    ``[z̲₁ − z̄₂, z̄₁ − z̲₂]``."""
    if isinstance(a, Box) and isinstance(b, Box):
        return Box(a.lower + b.lower, a.upper + b.upper)
    box, c = (a, b) if isinstance(a, Box) else (b, a)
    return Box(box.lower + c, box.upper + c)


def _gather(fn: Any, parts: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Box:
    """``cat``/``stack`` of bounded and constant tensors (a constant ``c`` is the box ``[c, c]``): each end is the
    concatenation of the parts' ends."""
    boxes = [p if isinstance(p, Box) else Box(p, p) for p in parts]
    return Box(fn([b.lower for b in boxes], *args, **kwargs), fn([b.upper for b in boxes], *args, **kwargs))


# ------------------------------------------------------------------------------------------------ the kinds
_MONOTONE_MODULES = (nn.ReLU, nn.Hardtanh, nn.LeakyReLU, nn.ELU, nn.Softplus, nn.Sigmoid, nn.Hardsigmoid, nn.Tanh,
                     nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.MaxPool1d,
                     nn.MaxPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Unflatten, nn.Identity,
                     nn.modules.dropout._DropoutNd, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d,
                     nn.ReflectionPad2d, nn.ReplicationPad2d, Normalize)
_MONOTONE_FUNCTIONS = {
    # activations (non-decreasing)
    torch.relu, F.relu, F.relu6, F.hardtanh, F.leaky_relu, F.elu, F.softplus, torch.sigmoid, F.sigmoid, F.hardsigmoid,
    torch.tanh, F.tanh, torch.clamp, torch.clip,
    # pooling, means and sums: max, or linear with non-negative weights
    F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.max_pool1d, F.max_pool2d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, torch.mean, torch.sum, torch.amax, torch.amin,
    # shape operations: they only move (or repeat) entries
    torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze, torch.movedim,
    torch.clone, F.pad, operator.getitem,
}
_MONOTONE_METHODS = {"relu", "relu_", "sigmoid", "tanh", "clamp", "clip", "clamp_min", "clamp_max", "mean", "sum",
                     "amax", "amin", "flatten", "view", "reshape", "permute", "transpose", "squeeze", "unsqueeze",
                     "movedim", "contiguous", "expand", "repeat", "clone", "t", "float", "double", "to", "view_as",
                     "reshape_as", "expand_as", "type_as"}
_GATHER = {torch.cat, torch.concat, torch.concatenate, torch.stack}
# F.linear / F.conv* / F.batch_norm with constant weights: their arguments, by position
_CONV_ARGS = ("weight", "bias", "stride", "padding", "dilation", "groups")
_AFFINE_FUNCTIONS: dict[Any, tuple[str, ...]] = {
    F.linear: ("weight", "bias"), F.conv1d: _CONV_ARGS, F.conv2d: _CONV_ARGS, F.conv3d: _CONV_ARGS,
    F.batch_norm: ("running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"),
}
# + − × ÷ and @ as operators, torch functions and tensor methods: one name each
_ARITHMETIC: dict[Any, str] = {
    **dict.fromkeys((operator.add, torch.add, "add"), "add"),
    **dict.fromkeys((operator.sub, torch.sub, torch.subtract, "sub", "subtract"), "sub"),
    **dict.fromkeys((operator.mul, torch.mul, torch.multiply, "mul", "multiply"), "mul"),
    **dict.fromkeys((operator.truediv, torch.div, torch.divide, torch.true_divide, "div", "divide", "true_divide"),
                    "div"),
    **dict.fromkeys((operator.neg, torch.neg, torch.negative, "neg", "negative"), "neg"),
    **dict.fromkeys((operator.matmul, torch.matmul, torch.mm, "matmul", "mm"), "matmul"),
}
_SHAPE_OF_ARGUMENT = {"view_as", "reshape_as", "expand_as", "type_as"}
_TENSOR_FACTS = {"shape", "dtype", "device", "ndim"}  # attributes that do not depend on the values
_TENSOR_FACT_METHODS = {"size", "dim", "numel"}
SUPPORTED = ("Linear", "Conv1d/2d/3d", "BatchNorm (eval mode)", "Normalize", "ReLU", "ReLU6", "Hardtanh",
             "LeakyReLU (slope ≥ 0)", "ELU (alpha ≥ 0)", "Softplus", "Sigmoid", "Hardsigmoid", "Tanh", "clamp",
             "AvgPool", "AdaptiveAvgPool", "MaxPool", "AdaptiveMaxPool", "mean/sum over dimensions", "Flatten",
             "view/reshape/permute/transpose/squeeze/indexing/pad", "Identity", "Dropout", "nn.Sequential",
             "+ and − of bounded tensors (residual connections)", "+ − × ÷ by a constant", "@ a constant matrix",
             "F.linear/F.conv/F.batch_norm with constant weights", "cat/stack")


def _unsupported(what: str, where: str, why: str = "") -> ModelError:
    return ModelError(
        f"interval bound propagation does not support {what} (at '{where}'){': ' + why if why else ''}; supported "
        f"layers: {', '.join(SUPPORTED)}. Replace it, or certify this model with randomized smoothing "
        "(adverse.defenses.smoothing)"
    )


def _boxes(*values: Any) -> list[Box]:
    """The boxes among ``values``, looking inside tuples, lists, dicts and slices."""
    found: list[Box] = []
    torch.fx.node.map_aggregate(values, lambda v: found.append(v) if isinstance(v, Box) else None)
    return found


def _name(target: Any) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def _logits(value: Any) -> Any:
    """The logits among a model's outputs: a mapping's ``logits``, a tuple's first element, or the value."""
    if isinstance(value, dict) and "logits" in value:
        return value["logits"]
    if isinstance(value, (tuple, list)) and value:
        return value[0]
    return value


class _IntervalInterpreter(torch.fx.Interpreter):
    """Runs a traced model on :class:`Box` values; ``spec`` (n, S, K) is merged into a final ``Linear``.

    Nodes whose arguments hold no box (constants, buffers, parameters, shapes) run as in the model.
    """

    def __init__(self, gm: torch.fx.GraphModule, spec: torch.Tensor | None = None) -> None:
        super().__init__(gm)
        self.spec = spec
        self.elided = False
        out = _logits(next(n for n in gm.graph.nodes if n.op == "output").args[0])
        self.final = out if isinstance(out, torch.fx.Node) and out.op == "call_module" and isinstance(
            gm.get_submodule(str(out.target)), nn.Linear) else None
        self.node: torch.fx.Node | None = None
        self.where = ""

    def run_node(self, n: torch.fx.Node) -> Any:
        self.node, self.where = n, str(n.target) if n.op == "call_module" else n.name
        try:
            return super().run_node(n)
        except AdverseError:
            raise
        except Exception as e:  # a bounded tensor where the model does something this interpreter does not know
            raise ModelError(
                f"interval bound propagation failed at '{self.where}' ({n.op} {_name(n.target)}): "
                f"{type(e).__name__}: {e}"
            ) from e

    # --------------------------------------------------------------------------------------- node → kind
    def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
        m = self.fetch_attr(target)
        if not _boxes(args, kwargs):
            return super().call_module(target, args, kwargs)
        what = f"layer {type(m).__name__}"
        box = args[0] if args else None
        if not isinstance(box, Box) or len(_boxes(args, kwargs)) > 1:
            raise _unsupported(what, self.where, "its bounded input must be its only bounded argument")
        if isinstance(m, nn.Linear):
            if self.node is self.final and self.spec is not None:  # elision: bound c·(W z + b) directly
                self.elided = True
                w = self.spec @ m.weight  # (n, S, d)
                b = self.spec @ m.bias if m.bias is not None else None
                return _affine_box(
                    box,
                    lambda mu: torch.einsum("nsd,nd->ns", w, mu) + (b if b is not None else 0),
                    lambda r: torch.einsum("nsd,nd->ns", w.abs(), r),
                )
            return _affine_box(box, m, lambda r: F.linear(r, m.weight.abs()))
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return _affine_box(box, m, lambda r: m._conv_forward(r, m.weight.abs(), None))
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.training or m.running_mean is None or m.running_var is None:
                raise ModelError(
                    f"BatchNorm '{target}' is in training mode (or keeps no running statistics): interval bounds "
                    "need eval-mode BatchNorm; call model.eval() or build the model without BatchNorm"
                )
            return _batch_norm_box(box, m.running_mean, m.running_var, m.weight, m.bias, m.eps)
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.training:
            raise ModelError(f"Dropout '{target}' is in training mode; call model.eval() before bounding the model")
        if isinstance(m, nn.LeakyReLU) and m.negative_slope < 0:
            raise _unsupported(f"{what} with negative_slope {m.negative_slope:g}", self.where, "not monotone")
        if isinstance(m, nn.ELU) and m.alpha < 0:
            raise _unsupported(f"{what} with alpha {m.alpha:g}", self.where, "not monotone")
        if isinstance(m, _MONOTONE_MODULES):
            return self._monotone(m, what, (box,), {})
        raise _unsupported(what, self.where)

    def call_function(self, target: Any, args: Any, kwargs: Any) -> Any:
        if not _boxes(args, kwargs):
            return super().call_function(target, args, kwargs)
        what = f"function {_name(target)}"
        if target is getattr and isinstance(args[0], Box) and args[1] in _TENSOR_FACTS:
            return getattr(args[0].lower, args[1])
        if target in _ARITHMETIC:
            return self._arithmetic(_ARITHMETIC[target], what, args, kwargs)
        if target in _GATHER:
            parts = args[0] if args else kwargs.get("tensors", ())
            rest = {k: v for k, v in kwargs.items() if k != "tensors"}
            if _boxes(args[1:], rest):
                raise _unsupported(what, self.where, "only its tensors may be bounded")
            return _gather(target, parts, tuple(args[1:]), rest)
        if target in _AFFINE_FUNCTIONS:
            return self._affine_function(target, what, args, kwargs)
        if target in _MONOTONE_FUNCTIONS:
            return self._monotone_function(target, what, args, kwargs)
        raise _unsupported(what, self.where)

    def call_method(self, target: Any, args: Any, kwargs: Any) -> Any:
        if not _boxes(args, kwargs):
            return super().call_method(target, args, kwargs)
        what = f"method Tensor.{target}"
        if target in _SHAPE_OF_ARGUMENT:  # y.view_as(x), c.expand_as(x): only x's shape or dtype is read
            args = (args[0], *(a.lower if isinstance(a, Box) else a for a in args[1:]))
            if not isinstance(args[0], Box):
                return super().call_method(target, args, kwargs)
        if target in _ARITHMETIC:  # x.sub(mean), x.div(std), c.mul(x), ...
            return self._arithmetic(_ARITHMETIC[target], what, args, kwargs)
        if not isinstance(args[0], Box):
            raise _unsupported(what, self.where, "a constant's method applied to a bounded tensor")
        if target in _TENSOR_FACT_METHODS:
            return getattr(args[0].lower, target)(*args[1:], **kwargs)
        if target in _MONOTONE_METHODS:
            return self._monotone(lambda t, *a, **k: getattr(t, target)(*a, **k), what, args, kwargs)
        raise _unsupported(what, self.where)

    # --------------------------------------------------------------------------------------- the kinds
    def _monotone(self, fn: Any, what: str, args: Any, kwargs: Any) -> Box:
        """A non-decreasing map, applied to both ends (Gowal et al. 2018, eq. 7): activations, max pooling,
        average pooling and means/sums (linear with non-negative weights, so ``W z̲ ≤ W z ≤ W z̄``), and shape
        operations, which move entries without changing them."""
        box, rest = args[0], tuple(args[1:])
        if not isinstance(box, Box) or _boxes(rest, kwargs):
            raise _unsupported(what, self.where, "only its input may be bounded")
        out = box.map(lambda t: fn(t, *rest, **kwargs))
        if not torch.is_tensor(out.lower):
            raise _unsupported(f"{what} returning {type(out.lower).__name__}", self.where,
                               "a bounded layer must return one tensor")
        return out

    def _monotone_function(self, fn: Any, what: str, args: Any, kwargs: Any) -> Box:
        def arg(i: int, name: str, default: float) -> Any:
            return args[i] if len(args) > i else kwargs.get(name, default)

        if fn is F.leaky_relu and arg(1, "negative_slope", 0.01) < 0:
            raise _unsupported(f"{what} with a negative slope", self.where, "not monotone")
        if fn is F.elu and arg(1, "alpha", 1.0) < 0:
            raise _unsupported(f"{what} with a negative alpha", self.where, "not monotone")
        return self._monotone(fn, what, args, kwargs)

    def _affine_function(self, fn: Any, what: str, args: Any, kwargs: Any) -> Box:
        """``F.linear``, ``F.conv*`` and ``F.batch_norm`` with constant weights: the affine rule."""
        box = args[0] if args else kwargs.get("input")
        params = {**dict(zip(_AFFINE_FUNCTIONS[fn], args[1:])), **{k: v for k, v in kwargs.items() if k != "input"}}
        if not isinstance(box, Box) or _boxes(params):
            raise _unsupported(f"{what} with bounded weights", self.where, "only its input may be bounded")
        if fn is F.batch_norm:
            if params.get("training", False) or params.get("running_mean") is None:
                raise ModelError(f"F.batch_norm at '{self.where}' uses batch statistics (training=True): interval "
                                 "bounds need running statistics; call it with training=False")
            return _batch_norm_box(box, params["running_mean"], params["running_var"], params.get("weight"),
                                   params.get("bias"), params.get("eps", 1e-5))
        weight = params["weight"]
        return _affine_box(box, lambda mu: fn(mu, **params),
                           lambda r: fn(r, **{**params, "weight": weight.abs(), "bias": None}))

    def _arithmetic(self, op: str, what: str, args: Any, kwargs: Any) -> Box:
        """``+ − × ÷ @`` in either operand order: affine when at most one factor of a product or quotient is
        bounded (and a divisor is constant); sums and differences of two bounded tensors are fine too."""
        kwargs = dict(kwargs)
        if "other" in kwargs:  # torch.add(x, other=c)
            args = (*args, kwargs.pop("other"))
        alpha = kwargs.pop("alpha", 1)  # torch.add / torch.sub: a ± alpha·b
        if kwargs.pop("rounding_mode", None) is not None:
            raise _unsupported(f"{what} with a rounding mode", self.where, "rounding is not affine")
        if kwargs or _boxes(alpha) or len(args) != (1 if op == "neg" else 2):
            raise _unsupported(f"{what} with arguments {sorted(kwargs) or len(args)}", self.where)
        if op == "neg":
            return _negate(args[0])
        a, b = args
        if op in ("add", "sub"):
            if alpha != 1:
                b = _scale_box(b, alpha) if isinstance(b, Box) else b * alpha
            return _add(a, _negate(b) if op == "sub" else b)
        if op == "mul":
            if isinstance(a, Box) and isinstance(b, Box):
                raise _unsupported(f"{what} of two bounded tensors", self.where,
                                   "the product of two input-dependent tensors is not affine; make one factor a "
                                   "constant (a number, buffer or parameter)")
            return _scale_box(a, b) if isinstance(a, Box) else _scale_box(b, a)
        if op == "div":
            if isinstance(b, Box):
                raise _unsupported(f"{what} by a bounded tensor", self.where,
                                   "division by an input-dependent tensor is not affine; only division by a constant "
                                   "(a number, buffer or parameter) is bounded")
            return _scale_box(a, b, divide=True)
        if isinstance(a, Box) and isinstance(b, Box):  # matmul
            raise _unsupported(f"{what} of two bounded tensors", self.where,
                               "the product of two input-dependent tensors is not affine")
        if isinstance(a, Box):
            return _affine_box(a, lambda mu: mu @ b, lambda r: r @ b.abs())
        return _affine_box(b, lambda mu: a @ mu, lambda r: a.abs() @ r)


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
    out = _logits(interp.run(box))
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
        out = _logits(model(x[:1]))
    if not torch.is_tensor(out) or out.dim() != 2:
        shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise ModelError(f"the model must return logits of shape (n, classes), got {shape}")
    return int(out.shape[1])


@validated
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


@validated
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


@validated
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


@validated(warmup=FRACTION, ramp=FRACTION, kappa_end=FRACTION, eps_train_factor=POSITIVE)
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
