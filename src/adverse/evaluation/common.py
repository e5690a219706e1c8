"""What the audit and its suites share: argument checks, JSON helpers, atomic writes, progress reporting, and the
:class:`SuiteContext` every suite receives.

This module imports nothing from the rest of :mod:`adverse.evaluation` (only :mod:`adverse.errors`), so every
suite and the orchestrator may import it, and nothing here imports them back.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError

DEFAULT_EPS = (0.05, 0.1, 0.2, 0.3)

ProgressFn = Callable[[str, float, float], None]
"""``progress(description, completed, total)``: work done so far, in arbitrary units that add up to ``total``."""


def check_eps(eps: Any) -> list[float]:
    """``eps`` (a number or numbers, in input units) as a sorted list of distinct finite values ≥ 0."""
    if isinstance(eps, (int, float)) and not isinstance(eps, bool):
        eps = (eps,)
    try:
        values = [float(e) for e in eps]
    except (TypeError, ValueError) as e:
        raise InputError(f"eps must be a number or a sequence of numbers, got {eps!r}") from e
    if not values:
        raise InputError("eps is empty; pass at least one budget, e.g. eps=(0.1,)")
    bad = [e for e in values if not math.isfinite(e) or e < 0]
    if bad:
        raise InputError(f"every eps must be finite and ≥ 0, got {bad}; eps is in input units (e.g. 8/255)")
    if len(set(values)) != len(values):
        raise InputError(f"eps lists a value twice: {values}; list each budget once")
    return sorted(values)


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` if it is an integer (not a bool) ≥ ``minimum``; else an :class:`InputError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return value


def json_safe(value: Any) -> Any:
    """Numbers JSON can hold: NaN and infinities become None (``results.json`` is strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def json_value(value: Any) -> Any:
    """``value`` as results.json can hold it: JSON's own types as they are (non-finite floats as None), anything
    else (a model, a function) as its ``repr`` — the configuration says what was passed, it does not rebuild it."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return json_safe(value)
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    return repr(value)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` through a temporary file in the same folder and a rename: a
    reader never sees a half-written file, and an interruption leaves the previous file intact."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass
class SuiteContext:
    """What the orchestrator hands every suite: the inputs, the shared settings, and the audit's services.

    Attributes
    ----------
    model : the audited model, its output already unwrapped to logits (a torch module or a ``BlackBox``).
    black_box : True when the model can only be queried.
    data : the test data: an in-memory :class:`adverse.data.Dataset` or a streamed
        :class:`adverse.streaming.Stream` (both read with ``batches``, ``take`` and ``select``); all of it.
    n : the audit's bound on the samples any suite or part uses (None: no bound).
    members : the model's training data, or None.
    recipe : ``recipe(dataset, seed) -> model``, or None.
    norm, eps, seed, batch_size : the audit's threat model, budgets (sorted), seed and batch size.
    executor : where batches and reference models run (:mod:`adverse.execution`).
    progress : ``progress(description, completed, total)`` (never None: a no-op when nobody listens).
    part : ``part(name, compute)`` — a finished part from the resume state, else ``compute()`` saved there as soon
        as it returns (JSON-ready values only); its time is added to the audit's ``seconds[name]``.
    state : the resume state (for suites that save finer-grained work, e.g. the evasion suite's batches).
    extra : anything the orchestrator learned that a later suite may use (e.g. the evasion suite's checks eps).
    """

    model: Any
    black_box: bool
    data: Any
    n: int | None
    members: Any
    recipe: Any
    norm: str
    eps: list[float]
    seed: int
    batch_size: int
    executor: Any
    progress: ProgressFn
    part: Callable[[str, Callable[[], Any]], Any]
    state: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def take_n(self, options: dict[str, Any], fn: Callable[..., Any]) -> int | None:
        """How many test samples a suite uses, removing its ``n`` option from ``options``: its ``n`` as given (at
        most the audit's ``n``; the suite refuses more than the data holds), else its default at most the audit's
        ``n`` and the data."""
        if "n" not in options:
            return self.bounded(option_default(fn, "n"))
        own = options.pop("n")
        if own is not None:
            check_int("n", own, 1)
        return own if self.n is None else self.n if own is None else min(own, self.n)

    def bounded(self, own: int | None, data: Any = None) -> int:
        """How many samples a suite whose own limit is ``own`` (None: no limit) uses: at most ``n``, at most
        ``own``, at most the data (the test data, or ``data``, e.g. the members)."""
        k = len(self.data if data is None else data)
        for limit in (own, self.n):
            if limit is not None:
                k = min(k, limit)
        return k


def keyword_options(fn: Callable[..., Any], passed: set[str]) -> set[str]:
    """The keyword-only parameters of ``fn`` that a user may set (all but those in ``passed``)."""
    import inspect

    return {p.name for p in inspect.signature(fn).parameters.values() if p.kind == p.KEYWORD_ONLY} - passed


def option_default(fn: Callable[..., Any], name: str) -> Any:
    """The default of ``fn``'s keyword option ``name``."""
    import inspect

    return inspect.signature(inspect.unwrap(fn)).parameters[name].default


def check_options(suite: str, fn: Callable[..., Any], options: Mapping[str, Any] | None,
                  passed: set[str]) -> dict[str, Any]:
    """A suite's keyword options, checked against ``fn``'s signature before any work starts."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise InputError(f"{suite} options must be a mapping of keyword arguments, got {type(options).__name__}")
    allowed = keyword_options(fn, passed)
    bad = sorted(set(options) - allowed)
    if bad:
        raise InputError(f"unknown {suite} option(s) {bad}; the {suite} suite takes {', '.join(sorted(allowed))} "
                         "(the audit itself passes the model, data, seed, norm and eps)")
    return dict(options)
