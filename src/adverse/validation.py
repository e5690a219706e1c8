"""One validation layer for the public entry points: every numeric argument is checked before any work starts.

:func:`validated` decorates a public function (or a class's ``__init__``). When it is called, each argument the
caller passed whose parameter is numeric is checked against a :class:`Rule`:

* its **type**: a parameter annotated ``int`` takes integers only (Python or NumPy, never ``bool`` or ``2.5``);
  one annotated ``float`` takes real numbers (``"0.1"``, a tensor or ``True`` are refused); one annotated
  ``bool`` takes True or False; ``| None`` admits None; ``bounds`` is two finite numbers with lo < hi;
* its **finiteness**: NaN and ±inf are refused unless the rule admits infinity;
* its **range**: the rule registered for the parameter's name in :data:`RULES` (one meaning per name across the
  library, scikit-learn style), or an override given to the decorator where a name means something else.

A refusal is an :class:`~adverse.errors.InputError` naming the function, the argument, what it must be and the
value received. Tensors (inputs, labels, per-sample ``eps``) are checked where they are used
(``evasion._core.check_inputs``, :func:`adverse.threat.as_eps`).

This module imports nothing from the rest of the package but :mod:`adverse.errors`, so any module may use it.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import InputError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Rule:
    """What a numeric argument must be: ``kind`` "int" or "real", inside ``[low, high]`` (ends excluded where
    ``open_low`` / ``open_high``), ``None`` allowed when ``none``, ``+inf`` allowed when ``inf``."""

    kind: str = "real"
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    none: bool = False
    inf: bool = False

    def describe(self) -> str:
        if self.kind == "bool":
            return "True or False" + (" or None" if self.none else "")
        what = "an integer" if self.kind == "int" else "a finite number" if not self.inf else "a number"
        lo = None if self.low is None else f"{'>' if self.open_low else '≥'} {_fmt(self.low)}"
        hi = None if self.high is None else f"{'<' if self.open_high else '≤'} {_fmt(self.high)}"
        if lo and hi:
            where = (f" in {'(' if self.open_low else '['}{_fmt(self.low)}, {_fmt(self.high)}"
                     f"{')' if self.open_high else ']'}")
        else:
            where = f" {lo or hi}" if lo or hi else ""
        return what + where + (" or None" if self.none else "")

    def check(self, value: Any, name: str, where: str) -> None:
        """Raise :class:`InputError` unless ``value`` obeys the rule."""
        if value is None:
            if self.none:
                return
            self._fail(value, name, where)
        if self.kind == "bool":
            if type(value).__name__ not in ("bool", "bool_"):
                self._fail(value, name, where, hint="pass True or False")
            return
        if self.kind == "bounds":
            self._check_bounds(value, name, where)
            return
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            self._fail(value, name, where, hint=self._type_hint(value))
        if self.kind == "int" and not isinstance(value, numbers.Integral):
            self._fail(value, name, where, hint="pass a whole number, e.g. int(value)")
        v = float(value)
        if math.isnan(v) or (math.isinf(v) and not (self.inf and v > 0)):
            self._fail(value, name, where)
        if self.low is not None and (v < self.low or (self.open_low and v == self.low)):
            self._fail(value, name, where)
        if self.high is not None and (v > self.high or (self.open_high and v == self.high)):
            self._fail(value, name, where)

    def _check_bounds(self, value: Any, name: str, where: str) -> None:
        ok = isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v)) for v in value)
        if not ok or not float(value[0]) < float(value[1]):
            raise InputError(f"{where}: {name} must be two finite numbers (lo, hi) with lo < hi, e.g. (0.0, 1.0), "
                             f"got {value!r}")

    def _type_hint(self, value: Any) -> str:
        if isinstance(value, str):
            return f"pass a number, not the string {value!r}"
        if hasattr(value, "shape"):
            return "pass a Python number (e.g. float(t)), not an array or tensor"
        return "pass a number"

    def _fail(self, value: Any, name: str, where: str, hint: str = "") -> None:
        shown = repr(value) if not hasattr(value, "shape") else f"a {type(value).__name__}"
        raise InputError(f"{where}: {name} must be {self.describe()}, got {shown}" + (f"; {hint}" if hint else ""))


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


# Ranges by parameter name: one meaning per name across the library. Functions where a name means something
# else override it in their decorator.
COUNT = Rule("int", low=1)
COUNT0 = Rule("int", low=0)
POSITIVE = Rule("real", low=0.0, open_low=True)
NONNEG = Rule("real", low=0.0)
FRACTION = Rule("real", low=0.0, high=1.0)
OPEN_FRACTION = Rule("real", low=0.0, high=1.0, open_low=True, open_high=True)
SEED = Rule("int", low=0, high=2**63 - 1, none=True)

RULES: dict[str, Rule] = {
    # iterations, sizes and budgets
    **dict.fromkeys(("steps", "restarts", "n_target_classes", "max_queries", "square_queries", "eot_samples",
                     "samples", "binary_search_steps", "candidates", "init_evals", "max_evals", "init_tries",
                     "chunk_size", "batch_size", "n_noise", "patience", "size", "reference_size", "val_steps",
                     "monitor_size", "n_components", "epochs", "queries", "n_classes", "k", "n", "bits"), COUNT),
    **dict.fromkeys(("retrains", "augment", "vmi_samples", "n_bootstrap", "max_shift", "fine_tune_epochs",
                     "unlearn_epochs", "target", "kernel_size"), COUNT0),
    # step sizes, learning rates, scales
    **dict.fromkeys(("lr", "alpha_init", "initial_const", "sigma", "step", "unlearn_lr", "tau", "multiplier",
                     "gamma"), POSITIVE),
    **dict.fromkeys(("eps", "kappa", "overshoot", "decay", "noise_std", "tv", "l2", "weight_decay", "init_cost",
                     "vmi_beta", "beta0", "noise", "cross_ratio", "s", "threshold_sigma"), NONNEG),
    # shares and probabilities
    **dict.fromkeys(("rate", "alpha_max", "diversity_prob", "opacity", "co_drop", "max_accuracy_drop",
                     "max_fraction", "success_threshold", "unlearn_fraction"), FRACTION),
    **dict.fromkeys(("fpr", "frr", "confidence", "calibration", "expected_fraction", "size_threshold"),
                    OPEN_FRACTION),
    "rho": Rule("real", low=0.0, high=1.0, open_low=True),
    "p_init": Rule("real", low=0.0, high=1.0, open_low=True),
    "gamma_init": Rule("real", low=0.0, high=1.0, open_low=True),
    "gamma_final": Rule("real", low=0.0, high=1.0, open_low=True),
    "l1_sparsity": Rule("real", low=0.0, high=1.0, open_high=True),
    "eta": Rule("real", low=1.0),
    "quality": Rule("int", low=1, high=100),
    "severity": Rule("int", low=1, high=5),
    "min_scale": Rule("real", low=0.0, high=1.0, open_low=True),
    "resize_rate": Rule("real", low=0.0, high=4.0, open_low=True),
    "seed": SEED,
    "bounds": Rule("bounds"),
    "alpha": POSITIVE,
    # backdoor scan (defenses.backdoor_scan)
    **dict.fromkeys(("starts", "nc_steps", "mm_steps"), COUNT),
    "nc_threshold": NONNEG,
    "significance": OPEN_FRACTION,
}

_NUMERIC = {"int": "int", "float": "real", "bool": "bool"}


def _rule_from_annotation(annotation: Any, default: Any) -> Rule | None:
    """The type part of a rule from a parameter's annotation (a string under ``from __future__ import
    annotations``): ``int``, ``float``, ``int | None`` or ``float | None``. Annotations naming anything else (a
    tensor, a sequence, a generator) leave the argument to the function. Without an annotation, a numeric
    default (not a bool) gives the kind."""
    if annotation is inspect.Parameter.empty:
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            return None
        return Rule("int" if isinstance(default, int) else "real")
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    parts = {p.strip() for p in text.replace("Optional[", "").replace("]", "").split("|")}
    kinds = parts - {"None"}
    if len(kinds) != 1 or not kinds <= set(_NUMERIC):
        return None
    return Rule(_NUMERIC[kinds.pop()], none="None" in parts)


def _merge(base: Rule, by_name: Rule | None) -> Rule:
    """The type from the annotation, the range from the name's rule (an integer parameter keeps ``int``)."""
    if by_name is None:
        return base
    return Rule(base.kind, by_name.low, by_name.high, by_name.open_low, by_name.open_high, base.none or by_name.none,
                by_name.inf)


def rules_for(fn: Callable[..., Any], overrides: dict[str, Rule | None]) -> dict[str, Rule]:
    """The rule of each numeric parameter of ``fn`` (overrides win; an override of None turns a check off)."""
    out: dict[str, Rule] = {}
    for p in inspect.signature(fn).parameters.values():
        if p.name in overrides:
            if overrides[p.name] is not None:
                out[p.name] = overrides[p.name]
            continue
        if p.name in ("seed", "bounds"):
            out[p.name] = RULES[p.name]
            continue
        base = _rule_from_annotation(p.annotation, p.default)
        if base is not None:
            out[p.name] = _merge(base, RULES.get(p.name))
    return out


def validated(fn: F | None = None, /, **overrides: Rule | None) -> Any:
    """Decorate a public function (or ``__init__``) so its numeric arguments are checked on every call.

    ``overrides`` give the rule of a parameter whose name means something else here than in :data:`RULES`
    (e.g. ``beta=NONNEG`` where β weighs a loss term); ``name=None`` leaves that argument to the function.
    """

    def wrap(f: F) -> F:
        sig = inspect.signature(f)
        rules = rules_for(f, overrides)
        where = f.__qualname__.replace(".__init__", "")

        @functools.wraps(f)
        def checked(*args: Any, **kwargs: Any) -> Any:
            try:
                bound = sig.bind(*args, **kwargs)
            except TypeError:
                return f(*args, **kwargs)  # Python's own error for a wrong call
            for name, value in bound.arguments.items():
                rule = rules.get(name)
                if rule is not None and not (name == "seed" and _is_generator(value)):
                    rule.check(value, name, where)
            return f(*args, **kwargs)

        checked.rules = rules  # type: ignore[attr-defined]
        return checked  # type: ignore[return-value]

    return wrap(fn) if fn is not None else wrap


def _is_generator(value: Any) -> bool:
    return type(value).__name__ == "Generator" and hasattr(value, "manual_seed")
