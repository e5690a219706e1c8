"""The audit's suites, registered in one place.

A suite is one module under :mod:`adverse.evaluation` that defines ``SUITE``, a :class:`Suite`: its name (for
``--suites``, the TOML table and ``results.json``), what it needs (training data, a recipe, a torch module),
whether it runs by default, ``run(ctx, **options)`` (given a :class:`~adverse.evaluation.common.SuiteContext`,
returns JSON-ready results), the function whose keyword-only parameters are its options, how many samples it
used, its report section and summary line, and the schema of its results. The orchestrator
(:func:`adverse.evaluation.audit.audit`) runs the suites the inputs allow, in the order of :data:`MODULES`, and
handles resume and progress once; it imports no suite's internals.

Adding a suite is adding its module here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError

MODULES = {
    "evasion": "evasion_suite",
    "privacy": "privacy_suite",
    "poisoning": "poisoning_suite",
    "certify": "certify_suite",
    "defense": "defense_suite",
    "corruptions": "corruptions_suite",
    "backdoor-scan": "backdoor_scan_suite",
    "dp-audit": "dp_audit_suite",
}
"""Every suite's name and module, in the order an audit runs them (and the report shows them)."""

NAMES = tuple(MODULES)
NEEDS = {
    "members": "the model's training data (train_data=, --train-data)",
    "recipe": "the training recipe (recipe=, --recipe)",
    "white-box": "a torch module (it runs the model in torch; this model is a black box, e.g. an ONNX file "
                 "without onnx2torch)",
    "images": "image data (inputs of shape (channels, height, width))",
}


@dataclass(frozen=True)
class Suite:
    """One suite's interface (see the module docstring).

    Attributes
    ----------
    name : the suite's name on the command line, in the TOML file and in ``config["suites"]``.
    key : its key in ``results.json`` and attribute of :class:`~adverse.evaluation.audit.AuditResult` (None: its
        results are the top level, as the evasion suite's are).
    function : the public function whose keyword-only parameters (but those in ``passed``) are its options.
    run : ``run(ctx, **options) -> dict`` in an audit.
    needs : what it needs beyond a model and test data: a subset of :data:`NEEDS`.
    default : whether ``suites=None`` runs it when its needs are met.
    what : what it measures, in a few words.
    samples : ``samples(result)`` — how many samples it used (None: it reports its own parts).
    check : ``check(ctx, options)``, run before any suite's work (to fail fast on bad options).
    section : ``section(results, figures) -> str``, its HTML report section (None: the report draws it).
    summary : ``summary(results) -> str | None``, its plain-language line for the report and the command line.
    schema : ``schema(full)`` → its results' check for :mod:`adverse.evaluation.schema` (None: the schema knows).
    passed : the keyword parameters of ``function`` that the audit fills in itself.
    """

    name: str
    key: str | None
    function: Callable[..., Any]
    run: Callable[..., dict[str, Any]]
    needs: frozenset[str]
    default: bool
    what: str
    samples: Callable[[Mapping[str, Any]], int | None]
    check: Callable[[Any, Mapping[str, Any]], None] | None = None
    section: Callable[[Mapping[str, Any], Any], str] | None = None
    summary: Callable[[Mapping[str, Any]], str | None] | None = None
    schema: Callable[[bool], Any] | None = None
    passed: set[str] = field(default_factory=set)

    def missing(self, have: set[str]) -> list[str]:
        """What this suite needs that ``have`` lacks."""
        return sorted(self.needs - have)


def get(name: str) -> Suite:
    """The registered suite ``name``."""
    if name not in MODULES:
        raise InputError(f"unknown suite {name!r}; choose among {', '.join(NAMES)}")
    return importlib.import_module(f"{__package__}.{MODULES[name]}").SUITE


def by_key(key: str) -> Suite | None:
    """The suite whose results live under ``key`` in ``results.json``, or None."""
    for name in NAMES:
        if key_of(name) == key:
            return get(name)
    return None


def key_of(name: str) -> str:
    """A suite's key in ``results.json``: its name with ``-`` as ``_`` (the evasion suite's results are the top
    level, under no key)."""
    return name.replace("-", "_")


KEYS = tuple(key_of(n) for n in NAMES if n != "evasion")
"""The keys of the suites' results in ``results.json`` (every suite but evasion)."""


def choose(suites: Any, have: set[str]) -> list[str]:
    """The suites to run, in :data:`NAMES` order: ``suites`` as asked (each one's needs met, or an error naming
    what is missing), or, for None, every default suite whose needs ``have`` meets."""
    if suites is None:
        return [n for n in NAMES if get(n).default and not get(n).missing(have)]
    names = [suites] if isinstance(suites, str) else list(suites)
    unknown = [s for s in names if s not in MODULES]
    if unknown or not names:
        raise InputError(f"unknown suite(s) {unknown}; choose among {', '.join(NAMES)}")
    for s in names:
        lacking = get(s).missing(have)
        if lacking:
            raise InputError(f"the {s} suite needs " + " and ".join(NEEDS[m] for m in lacking))
    return [n for n in NAMES if n in names]
