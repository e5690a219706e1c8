"""The schema of ``results.json`` (docs/results-schema.md), checked before anything reads a file back.

``results.json`` is untrusted input once it leaves the audit that wrote it: :func:`read_results` reads one (a
regular file of at most :data:`MAX_RESULTS_BYTES`, UTF-8 JSON nested at most :data:`MAX_DEPTH` deep) and
:func:`validate_results` checks it against the documented schema, so that ``adverse report`` either renders a
correct report or refuses with an :class:`~adverse.errors.InputError` naming the JSON path at fault
(``attacks[2].robust_accuracy``) and the fix. What is checked:

* every number anywhere in the file is finite (NaN and ±Infinity are not JSON, but Python's parser accepts them);
* ``schema_version`` is 1 and ``kind`` is ``"robustness-audit"``; the fields the schema lists as always present
  are present;
* each known field has its documented type; fractions (accuracies, rates, AUCs) lie in [0, 1]; counts, budgets
  and seconds are ≥ 0; enumerations (norm, suites, check status, certify methods) hold known values;
* counts are consistent: ``robust`` ≤ ``n`` and ``robust_accuracy`` = ``robust / n``, ``success_rate`` =
  1 − ``robust_accuracy``, no attack beats the clean accuracy, the worst case is no better than any attack, the
  rows' budgets are those of ``config.eps``, ``budget`` sums the rows, per-sample lists hold ``n`` entries,
  paired lists (ROC, curves) have equal lengths;
* figures stay drawable: images have one of the shapes the report draws, the certify methods are unique.

**Unknown keys are allowed** (the schema lets a version grow fields; readers ignore what they do not know) but
they are held to the same limits (finite numbers, depth, string length); the report shows them only as escaped
text. The suite options in ``config`` (``privacy``, ``poisoning``, ``certify``, ``defense``) must have Python
identifiers as keys, because the report turns them into the Python call that reproduces the audit.

The same checkers validate the suites' parts of the audit's resume state (:func:`validate_part`).

Hand-rolled rather than ``jsonschema``: that package is not a dependency of adverse, and the consistency rules
above are not expressible in JSON Schema anyway.
"""

from __future__ import annotations

import itertools
import json
import keyword
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..files import read_regular
from .suites import KEYS, NAMES, get

SCHEMA_VERSION = 1
MAX_RESULTS_BYTES = 64 * 2**20
"""The largest results.json read back (a genuine one is well under 1 MiB for 10,000 samples)."""
MAX_DEPTH = 32
"""The deepest nesting of lists and objects accepted (a genuine file nests 6 deep)."""
MAX_STRING = 100_000
"""The longest string accepted, in characters."""
MAX_BUDGET = 1e12
"""The largest budget (eps, radius, norm) accepted: far beyond any input range, and small enough to draw."""
MAX_INT = 2**63 - 1
"""The largest integer (in magnitude) accepted anywhere: counts beyond it are not real, and Python cannot format
them as floats."""
MAX_IMAGE_SIDE = 4096
MAX_IMAGES = 10_000
SUITES = NAMES  # every registered suite (adverse.evaluation.suites)
NORMS = ("linf", "l2", "l1")
METHODS = ("ibp", "smoothing")
_TOL = 1e-6
_FIX = "the file was changed after adverse wrote it, or is not an adverse audit: rerun the audit (or restore the file)"

Check = Callable[[Any, tuple], None]


class _Bad(Exception):
    """A problem at a path (raised inside the checkers, turned into an InputError at the top)."""

    def __init__(self, path: tuple, problem: str, missing: bool = False) -> None:
        super().__init__(problem)
        self.path, self.problem, self.missing = path, problem, missing


def format_path(path: tuple) -> str:
    """``("attacks", 2, "robust_accuracy")`` → ``attacks[2].robust_accuracy``; keys that are not identifiers
    are quoted: ``tpr_at_fpr["0.01"]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.isidentifier():
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out or "(the top level)"


def _what(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return f"the number {v!r}"
    if isinstance(v, str):
        return f"the string {json.dumps(v[:40])}" + ("…" if len(v) > 40 else "")
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


# --------------------------------------------------------------------------------------------- checkers
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _obj(v: Any, p: tuple) -> None:
    if not isinstance(v, dict):
        raise _Bad(p, f"is {_what(v)}, not an object")


def _str(v: Any, p: tuple) -> None:
    if not isinstance(v, str):
        raise _Bad(p, f"is {_what(v)}, not a string")


def _bool(v: Any, p: tuple) -> None:
    if not isinstance(v, bool):
        raise _Bad(p, f"is {_what(v)}, not true or false")


def _any(v: Any, p: tuple) -> None:
    """Any JSON value (already held to the global limits)."""


def _scalar(v: Any, p: tuple) -> None:
    if not (v is None or isinstance(v, (str, int, float, bool))):
        raise _Bad(p, f"is {_what(v)}, not a string, number, boolean or null")


def integer(lo: int | None = 0, hi: int | None = None, null: bool = False) -> Check:
    def check(v: Any, p: tuple) -> None:
        if v is None and null:
            return
        if isinstance(v, bool) or not isinstance(v, int):
            raise _Bad(p, f"is {_what(v)}, not an integer" + (" or null" if null else ""))
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise _Bad(p, f"is {v}, outside [{lo if lo is not None else '-∞'}, {hi if hi is not None else '∞'}]")
    return check


def number(lo: float | None = None, hi: float | None = None, null: bool = False, above: bool = False) -> Check:
    """A finite number in ``[lo, hi]`` (``(lo, hi]`` when ``above``), or null when ``null``."""
    def check(v: Any, p: tuple) -> None:
        if v is None and null:
            return
        if not _is_number(v) or not math.isfinite(v):
            raise _Bad(p, f"is {_what(v)}, not a finite number" + (" or null" if null else ""))
        if (lo is not None and (v < lo or (above and v == lo))) or (hi is not None and v > hi):
            if lo == 0 and hi == 1:
                raise _Bad(p, f"is {v!r}, not a fraction in [0, 1]")
            raise _Bad(p, f"is {v!r}, outside {'(' if above else '['}{lo if lo is not None else '-∞'}, "
                          f"{hi if hi is not None else '∞'}]")
    return check


BUDGET = number(0.0, MAX_BUDGET)
STRING: Check = _str
OBJECT: Check = _obj
BOOLEAN: Check = _bool
ANY: Check = _any
FRACTION = number(0.0, 1.0)
FRACTION_OR_NULL = number(0.0, 1.0, null=True)
NONNEG = number(0.0)
COUNT = integer(0)


def one_of(values: tuple, null: bool = False) -> Check:
    def check(v: Any, p: tuple) -> None:
        if v is None and null:
            return
        if not isinstance(v, str) or v not in values:
            raise _Bad(p, f"is {_what(v)}, not one of {', '.join(repr(x) for x in values)}")
    return check


def list_of(item: Check, min_len: int = 0, max_len: int | None = None, unique: bool = False) -> Check:
    def check(v: Any, p: tuple) -> None:
        if not isinstance(v, list):
            raise _Bad(p, f"is {_what(v)}, not a list")
        if len(v) < min_len or (max_len is not None and len(v) > max_len):
            raise _Bad(p, f"holds {len(v)} entries; it must hold " + (
                f"at least {min_len}" if max_len is None else f"between {min_len} and {max_len}"))
        for i, x in enumerate(v):
            item(x, (*p, i))
        if unique and len({json.dumps(x, sort_keys=True) for x in v}) != len(v):
            raise _Bad(p, "lists an entry twice")
    return check


def map_of(value: Check, key: Callable[[str], bool] | None = None, what: str = "") -> Check:
    def check(v: Any, p: tuple) -> None:
        _obj(v, p)
        for k, x in v.items():
            if key is not None and not key(k):
                raise _Bad((*p, k), f"is not a valid key here ({what})")
            value(x, (*p, k))
    return check


def fields(spec: Mapping[str, tuple[Check, str]], full: bool) -> Check:
    """An object whose known keys have their checker; ``"R"`` keys are always required, ``"F"`` keys only when
    validating a whole results.json (``full``), ``"O"`` keys are optional. Unknown keys are allowed."""
    def check(v: Any, p: tuple) -> None:
        _obj(v, p)
        for k, (fn, need) in spec.items():
            if k in v:
                fn(v[k], (*p, k))
            elif need == "R" or (need == "F" and full):
                raise _Bad((*p, k), "is missing", missing=True)
    return check


def either(*checks: Check) -> Check:
    def check(v: Any, p: tuple) -> None:
        first = None
        for c in checks:
            try:
                c(v, p)
                return
            except _Bad as e:
                first = first or e
        assert first is not None
        raise first
    return check


def _pair(v: Any, p: tuple) -> None:
    list_of(number(), 2, 2)(v, p)


def _bounds(v: Any, p: tuple) -> None:
    _pair(v, p)
    if not v[0] < v[1]:
        raise _Bad(p, f"is {v}, but bounds need lo < hi")


def _sorted_budgets(v: Any, p: tuple) -> None:
    list_of(BUDGET, 1, 10_000)(v, p)
    if any(a >= b for a, b in itertools.pairwise(v)):
        raise _Bad(p, f"is {v}, not strictly increasing (the audit writes its budgets sorted, each once)")


def image_stack_shape(shape: tuple[int, ...]) -> str | None:
    """Why a stack of images of ``shape`` (k, H, W), (k, C, H, W) or (k, H, W, C) with C in {1, 3} cannot be
    drawn, or None when it can."""
    if len(shape) not in (3, 4) or shape[0] < 1:
        return f"has shape {shape}; images must be stacked as (k, H, W), (k, C, H, W) or (k, H, W, C), k ≥ 1"
    if len(shape) == 3:
        hw = shape[1:]
    elif shape[1] in (1, 3):
        hw = shape[2:]
    elif shape[3] in (1, 3):
        hw = shape[1:3]
    else:
        return f"has shape {shape}; images need 1 or 3 channels, first or last"
    if not all(1 <= s <= MAX_IMAGE_SIDE for s in hw):
        return f"has shape {shape}; image sides must lie in [1, {MAX_IMAGE_SIDE}]"
    if shape[0] > MAX_IMAGES:
        return f"holds {shape[0]} images, more than {MAX_IMAGES}"
    return None


def _images(v: Any, p: tuple) -> None:
    import numpy as np

    if not isinstance(v, list):
        raise _Bad(p, f"is {_what(v)}, not a list of images")
    try:
        a = np.asarray(v, dtype=np.float64)
    except (ValueError, TypeError):
        raise _Bad(p, "is not a stack of equally shaped numeric images") from None
    why = image_stack_shape(tuple(a.shape))
    if why is not None:
        raise _Bad(p, why)


# --------------------------------------------------------------------------------------------- the sections
def _checks(full: bool) -> Check:
    return list_of(fields({"name": (_str, "F"), "status": (one_of(("pass", "warn", "skip")), "F"),
                           "message": (_str, "F"), "evidence": (_obj, "O")}, full))


def _minimal_norm(full: bool) -> Check:
    curve = fields({"eps": (list_of(BUDGET), "R"), "robust_accuracy": (list_of(FRACTION), "R")}, True)

    def check(v: Any, p: tuple) -> None:
        fields({"attack": (_str, "O"), "norm": (one_of(NORMS), "O"), "steps": (COUNT, "O"), "seed": (COUNT, "O"),
                "norms": (list_of(number(0.0, MAX_BUDGET, null=True)), "O"), "curve": (curve, "O"),
                "median": (number(0.0, MAX_BUDGET, null=True), "O"), "forwards": (COUNT, "O"), "backwards": (COUNT, "O"),
                "seconds": (NONNEG, "O")}, full)(v, p)
        c = v.get("curve")
        if c is not None and len(c["eps"]) != len(c["robust_accuracy"]):
            raise _Bad((*p, "curve"), f"pairs {len(c['eps'])} budgets with {len(c['robust_accuracy'])} accuracies")
    return check


def _autoattack(full: bool) -> Check:
    claim = fields({"robust_accuracy": (FRACTION, "O"), "missed": (COUNT, "O")}, full)
    acceleration = fields({"layout": (one_of(("contiguous", "channels_last")), "R"), "compiled": (BOOLEAN, "R"),
                           "timings_ms": (map_of(NONNEG), "O"), "notes": (list_of(_str), "O"),
                           "seconds": (NONNEG, "O"), "unconfirmed": (COUNT, "O"),
                           "precision": (one_of(("fp32", "bf16", "fp16")), "O")}, full)

    def check(v: Any, p: tuple) -> None:
        fields({"version": (_str, "O"), "eps": (BUDGET, "O"), "n": (integer(1), "O"),
                "robust_accuracy": (FRACTION, "O"), "attacks": (list_of(_str), "O"),
                "per_attack": (either(list_of(_obj), NULL), "O"), "forwards": (COUNT, "O"),
                "backwards": (COUNT, "O"), "minimal_norm": (claim, "O"), "fixed_eps": (claim, "O"),
                "combined_robust_accuracy": (FRACTION, "O"), "missed": (COUNT, "O"),
                "status": (one_of(("pass", "warn")), "O"), "message": (_str, "O"), "seconds": (NONNEG, "O"),
                "acceleration": (acceleration, "O")},
               full)(v, p)
        if "robust_accuracy" in v and "eps" not in v:
            raise _Bad((*p, "eps"), "is missing (the report draws AutoAttack's robust accuracy at its eps)",
                       missing=True)
    return check


def _none(v: Any, p: tuple) -> None:
    if v is not None:
        raise _Bad(p, f"is {_what(v)}, not null")


NULL: Check = _none


def _privacy(full: bool) -> Check:
    fprs = map_of(FRACTION_OR_NULL)
    roc = fields({"fpr": (list_of(FRACTION), "R"), "tpr": (list_of(FRACTION), "R")}, True)

    def row(v: Any, p: tuple) -> None:
        fields({"attack": (_str, "R"), "auc": (FRACTION_OR_NULL, "O"), "balanced_accuracy": (FRACTION_OR_NULL, "O"),
                "tpr_at_fpr": (fprs, "O"), "ci": (map_of(either(list_of(FRACTION, 2, 2), NULL)), "O"),
                "confidence": (FRACTION, "O"), "n_members": (COUNT, "O"), "n_nonmembers": (COUNT, "O"),
                "roc": (roc, "O"), "warnings": (list_of(_str), "O"), "params": (_obj, "O"),
                "baseline": (fields({"auc": (FRACTION_OR_NULL, "O"), "tpr_at_fpr": (fprs, "O")}, full), "O"),
                "baseline_note": (_str, "O"), "seconds": (NONNEG, "O")}, full)(v, p)
        r = v.get("roc")
        if r is not None:
            if len(r["fpr"]) != len(r["tpr"]):
                raise _Bad((*p, "roc"), f"pairs {len(r['fpr'])} false-positive rates with {len(r['tpr'])} "
                                        "true-positive rates")
            if v.get("auc") is None:
                raise _Bad((*p, "auc"), "is missing or null, but the row has a ROC to draw", missing=True)

    def inversion(v: Any, p: tuple) -> None:
        fields({"x": (_images, "R"), "classes": (list_of(either(integer(None), _str)), "R"),
                "evaluator_accuracy": (FRACTION, "R"), "baseline_evaluator_accuracy": (FRACTION_OR_NULL, "O"),
                "chance": (FRACTION_OR_NULL, "O"), "evaluator": (_str, "O"), "attack": (_str, "O"),
                "mean_confidence": (FRACTION_OR_NULL, "O"), "params": (_obj, "O"), "seconds": (NONNEG, "O")},
               True)(v, p)
        if len(v["classes"]) < len(v["x"]):
            raise _Bad((*p, "classes"), f"names {len(v['classes'])} classes for {len(v['x'])} reconstructions")

    return fields({"attacks": (list_of(row), "O"), "inversion": (inversion, "O"), "config": (_obj, "O"),
                   "seconds": (map_of(NONNEG), "O")}, full)


def _poisoning(full: bool) -> Check:
    outcome = fields({"clean_accuracy": (FRACTION_OR_NULL, "O"), "attack_success_rate": (FRACTION_OR_NULL, "O"),
                      "removed": (COUNT, "O")}, full)
    attack = fields({"attack": (_str, "R"), "poison_rate": (FRACTION, "R"), "attack_success_rate": (FRACTION, "R"),
                     "clean_accuracy": (FRACTION_OR_NULL, "O"), "n_poison": (COUNT, "O"), "seconds": (NONNEG, "O")},
                    full)
    detector = fields({"detector": (_str, "R"), "poison_rate": (FRACTION, "R"), "params": (_obj, "O"),
                       "auroc": (FRACTION_OR_NULL, "O"), "tpr": (FRACTION_OR_NULL, "O"), "fpr": (FRACTION_OR_NULL, "O"),
                       "tpr_at_fpr": (map_of(FRACTION_OR_NULL), "O"), "before": (outcome, "O"),
                       "after": (outcome, "O"), "seconds": (NONNEG, "O")}, full)
    return fields({"attacks": (list_of(attack), "O"), "detectors": (list_of(detector), "O"), "config": (_obj, "O")},
                  full)


def _certify(full: bool) -> Check:
    ibp_row = fields({"eps": (BUDGET, "R"), "certified_accuracy": (FRACTION, "R"), "certified": (COUNT, "O")}, full)
    smooth_row = fields({"radius": (BUDGET, "R"), "certified_accuracy": (FRACTION, "R"), "certified": (COUNT, "O"),
                         "beyond_max_radius": (_bool, "O"), "linf_eps": (BUDGET, "O"), "l1_eps": (BUDGET, "O"),
                         "l2_eps": (BUDGET, "O")}, full)

    def method(v: Any, p: tuple) -> None:
        fields({"method": (one_of(METHODS), "R"), "status": (one_of(("ok", "skipped")), "O"), "reason": (_str, "O"),
                "norm": (_str, "O"), "rows": (list_of(_obj), "O"), "sigma": (number(0.0, MAX_BUDGET, above=True), "O"),
                "n0": (COUNT, "O"), "samples": (COUNT, "O"), "alpha": (FRACTION, "O"),
                "smoothed_accuracy": (FRACTION, "O"), "abstain_rate": (FRACTION, "O"),
                "max_radius": (BUDGET, "O"), "seconds": (NONNEG, "O")}, full)(v, p)
        for i, r in enumerate(v.get("rows", [])):
            (ibp_row if v["method"] == "ibp" else smooth_row)(r, (*p, "rows", i))
            if v["method"] != "ibp" and "eps" in r:
                raise _Bad((*p, "rows", i, "eps"), "is not a key of a smoothing row (its budget is `radius`)")

    def check(v: Any, p: tuple) -> None:
        fields({"n": (integer(1), "O"), "clean_accuracy": (FRACTION, "O"), "config": (_obj, "O"),
                "methods": (list_of(method, max_len=len(METHODS)), "O")}, full)(v, p)
        names = [m["method"] for m in v.get("methods", [])]
        if len(set(names)) != len(names):
            raise _Bad((*p, "methods"), f"lists a method twice: {names}")
        n = v.get("n")
        for i, m in enumerate(v.get("methods", [])):
            for j, r in enumerate(m.get("rows", [])):
                if n is not None and r.get("certified", 0) > n:
                    raise _Bad((*p, "methods", i, "rows", j, "certified"), f"is {r['certified']}, more than n={n}")
    return check


def _defense(full: bool) -> Check:
    row = fields({"eps": (BUDGET, "R"), "undefended": (FRACTION, "R"), "oblivious": (FRACTION, "R"),
                  "adaptive": (FRACTION, "R"), "attacks": (map_of(FRACTION_OR_NULL), "O")}, full)
    clean = fields({"undefended": (FRACTION_OR_NULL, "O"), "defended": (FRACTION_OR_NULL, "O"),
                    "rejected": (FRACTION_OR_NULL, "O")}, full)
    layer = fields({"name": (_str, "O"), "description": (_str, "O"), "options": (_obj, "O")}, full)
    return fields({"rows": (list_of(row), "O"), "clean_accuracy": (clean, "O"), "norm": (_str, "O"),
                   "adaptive_attacks": (list_of(_str), "O"), "layer": (layer, "O"), "retrained": (_bool, "O"),
                   "detector": (either(_str, NULL), "O"), "verdict": (_str, "O"), "n": (COUNT, "O"),
                   "eps": (list_of(BUDGET), "O"), "config": (_obj, "O"), "seconds": (map_of(NONNEG), "O")}, full)


def _identifier_keys(v: Any, p: tuple) -> None:
    map_of(_any, key=lambda k: k.isidentifier() and not keyword.iskeyword(k),
           what="suite options are Python keyword arguments")(v, p)


def _config(full: bool) -> Check:
    return fields({
        "eps": (_sorted_budgets, "F"), "norm": (one_of(NORMS), "F"), "n": (integer(1, null=True), "O"),
        "seed": (COUNT, "F"), "batch_size": (integer(1), "F"),
        "attacks": (map_of(fields({"steps": (integer(1), "O")}, full)), "F"),
        "suites": (list_of(one_of(SUITES), 1, unique=True), "O"),
        "checks": (fields({"eps": (BUDGET, "O"), "n": (integer(1), "O"), "steps": (COUNT, "O"),
                           "square_max_queries": (COUNT, "O"), "surrogate": (either(_str, NULL), "O")}, full), "O"),
        "minimal_norm": (_obj, "O"),
        "autoattack": (either(NULL, fields({"version": (one_of(("fast", "standard")), "R"),
                                              "eps": (BUDGET, "O"), "n": (integer(1), "R")}, full)), "O"),
        **{key: (_identifier_keys, "O") for key in KEYS},
    }, full)


def _top(full: bool) -> Check:
    attack_row = fields({"attack": (_str, "R"), "eps": (BUDGET, "R"), "robust_accuracy": (FRACTION, "R"),
                         "robust": (COUNT, "F"), "success_rate": (FRACTION, "O"), "forwards": (COUNT, "F"),
                         "backwards": (COUNT, "F"), "queries": (COUNT, "O"), "seconds": (NONNEG, "O"),
                         "params": (_obj, "O")}, full)
    worst_row = fields({"eps": (BUDGET, "R"), "robust_accuracy": (FRACTION, "R"), "robust": (COUNT, "F"),
                        "attacks": (list_of(_str), "O")}, full)
    return fields({
        "schema_version": (_version, "F"), "kind": (one_of(("robustness-audit",)), "F"), "created": (_str, "F"),
        "model": (fields({"name": (_str, "F"), "source": (_str, "F"), "parameters": (integer(0, null=True), "O"),
                          "file": (_str, "O"), "arch": (either(_str, NULL), "O"), "recipe": (_str, "O"),
                          "recipe_spec": (_str, "O"), "black_box": (_bool, "O")}, full), "F"),
        "data": (fields({"name": (_str, "F"), "source": (_str, "F"), "n": (COUNT, "O"), "num_classes": (COUNT, "O"),
                         "bounds": (_bounds, "O"), "shape": (list_of(integer(1)), "O"), "spec": (_str, "O"),
                         "split": (_str, "O"),
                         "images": (fields({k: (integer(1), "O") for k in ("image_size", "resize", "center_crop")},
                                           full), "O"),
                         "train": (fields({"name": (_str, "O"), "n": (COUNT, "O"), "split": (_str, "O"),
                                           "spec": (_str, "O")}, full), "O")}, full), "F"),
        "config": (_config(full), "F"),
        "environment": (map_of(_scalar), "F"),
        "n": (integer(1), "F"),
        "clean_accuracy": (FRACTION, "F"),
        "attacks": (list_of(attack_row), "F"),
        "worst_case": (list_of(worst_row), "F"),
        "budget": (fields({"forwards": (COUNT, "O"), "backwards": (COUNT, "O"), "seconds": (NONNEG, "O"),
                           "queries": (COUNT, "O")}, full), "F"),
        "seconds": (map_of(NONNEG), "F"),
        "checks": (_checks(full), "O"),
        "suites": (list_of(one_of(SUITES), 1, unique=True), "O"),
        "minimal_norm": (_minimal_norm(full), "O"),
        "autoattack": (_autoattack(full), "O"),
        **{key: (part_check(key)(full), "O") for key in KEYS},
        "samples": (map_of(COUNT, key=lambda k: k in SAMPLE_PARTS,
                           what=f"keys are suites and parts ({', '.join(SAMPLE_PARTS)})"), "O"),
    }, full)


SAMPLE_PARTS = ("evasion", "checks", "minimal_norm", "autoattack", "examples", *KEYS)
"""The keys of results.json's ``samples``: how many samples each suite and part used."""


def _version(v: Any, p: tuple) -> None:
    if isinstance(v, bool) or v != SCHEMA_VERSION:
        raise _Bad(p, f"is {_what(v)}: unsupported audit schema_version; this adverse reads version {SCHEMA_VERSION}")


def _consistent(d: Mapping[str, Any]) -> None:
    """The rules that tie fields together (counts, budgets, per-sample lengths)."""
    n = d.get("n")
    clean = d.get("clean_accuracy")
    cfg = d.get("config") if isinstance(d.get("config"), dict) else {}
    eps = cfg.get("eps")
    names = cfg.get("attacks")

    def rows(key: str) -> list[tuple[tuple, dict]]:
        return [((key, i), r) for i, r in enumerate(d.get(key) or [])]

    for p, r in rows("attacks") + rows("worst_case"):
        if isinstance(n, int) and "robust" in r:
            if r["robust"] > n:
                raise _Bad((*p, "robust"), f"is {r['robust']}, more than the {n} samples audited")
            if abs(r["robust"] / n - r["robust_accuracy"]) > _TOL:
                raise _Bad((*p, "robust_accuracy"), f"is {r['robust_accuracy']!r}, but robust / n = {r['robust']} / "
                                                    f"{n} = {r['robust'] / n!r}")
        if "success_rate" in r and abs(r["success_rate"] - (1 - r["robust_accuracy"])) > _TOL:
            raise _Bad((*p, "success_rate"), f"is {r['success_rate']!r}, but 1 − robust_accuracy = "
                                             f"{1 - r['robust_accuracy']!r}")
        if clean is not None and r["robust_accuracy"] > clean + _TOL:
            raise _Bad((*p, "robust_accuracy"), f"is {r['robust_accuracy']!r}, above the clean accuracy {clean!r} "
                                                "(an attack cannot make the model more accurate)")
        if eps is not None and r["eps"] not in eps:
            raise _Bad((*p, "eps"), f"is {r['eps']!r}, not one of the audited budgets config.eps = {eps}")
    for p, r in rows("attacks"):
        if isinstance(names, dict) and r["attack"] not in names:
            raise _Bad((*p, "attack"), f"is {json.dumps(r['attack'])}, not one of the attacks in config.attacks")
    by_eps: dict[float, float] = {}
    for _, r in rows("attacks"):
        by_eps[r["eps"]] = min(by_eps.get(r["eps"], 1.0), r["robust_accuracy"])
    for p, r in rows("worst_case"):
        if r["robust_accuracy"] > by_eps.get(r["eps"], 1.0) + _TOL:
            raise _Bad((*p, "robust_accuracy"), f"is {r['robust_accuracy']!r}, better than an attack at the same "
                                                f"eps ({by_eps[r['eps']]!r}); the worst case is the minimum")
    budget = d.get("budget")
    if isinstance(budget, dict) and "attacks" in d:
        for k in ("forwards", "backwards"):
            if k in budget and all(k in r for r in d["attacks"]) and budget[k] != sum(r[k] for r in d["attacks"]):
                raise _Bad(("budget", k), f"is {budget[k]}, but the attacks' {k} add up to "
                                          f"{sum(r[k] for r in d['attacks'])}")
    data = d.get("data")
    if isinstance(data, dict) and isinstance(n, int) and "n" in data and data["n"] != n:
        raise _Bad(("data", "n"), f"is {data['n']}, but n is {n}")
    mn = d.get("minimal_norm")
    if isinstance(mn, dict) and isinstance(n, int) and "norms" in mn and len(mn["norms"]) != n:
        raise _Bad(("minimal_norm", "norms"), f"holds {len(mn['norms'])} per-sample norms for {n} samples")
    aa = d.get("autoattack")
    if isinstance(aa, dict) and isinstance(n, int) and aa.get("n", 0) > n:
        raise _Bad(("autoattack", "n"), f"is {aa['n']}, more than the {n} samples audited")


# --------------------------------------------------------------------------------------------- the walk
def _walk(doc: Any) -> None:
    """The limits on every value, known or not: depth, finite numbers, string length (iteratively, so a deep
    document cannot exhaust the stack)."""
    stack: list[tuple[Any, tuple]] = [(doc, ())]
    while stack:
        v, p = stack.pop()
        if len(p) > MAX_DEPTH:
            raise _Bad(p, f"is nested more than {MAX_DEPTH} levels deep")
        if isinstance(v, float) and not math.isfinite(v):
            raise _Bad(p, f"is {v!r}, not a finite number (JSON has no NaN or Infinity)")
        elif isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_INT:
            raise _Bad(p, f"is an integer of {len(str(abs(v)))} digits, beyond ±2^63")
        elif isinstance(v, str):
            _text(v, p)
        elif isinstance(v, dict):
            for k, x in v.items():
                _text(k, p, "a key")
                stack.append((x, (*p, k)))
        elif isinstance(v, list):
            stack.extend((x, (*p, i)) for i, x in enumerate(v))


def _text(s: str, p: tuple, what: str = "a string") -> None:
    if len(s) > MAX_STRING:
        raise _Bad(p, f"is {what} of {len(s):,} characters, more than {MAX_STRING:,}")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise _Bad(p, f"is {what} holding an unpaired surrogate (\\ud800-\\udfff), which is not text") from None


def validate_results(d: Any, *, source: str = "results", partial: bool = False) -> None:
    """Check ``d`` (what results.json holds) against the schema; raise :class:`InputError` naming ``source``,
    the JSON path at fault and the fix.

    ``partial=True`` checks the keys that are present without requiring the always-present ones (what
    :func:`adverse.evaluation.report.render_report` accepts from Python callers: a dictionary with only some
    sections)."""
    if not isinstance(d, dict):
        raise InputError(f"{source} does not hold a JSON object ({_what(d)}); it is not an adverse audit")
    try:
        _walk(d)
        if not partial and "schema_version" not in d:
            raise _Bad(("schema_version",), "is missing", missing=True)
        if "schema_version" in d:
            _version(d["schema_version"], ("schema_version",))
        _top(not partial)(d, ())
        _consistent(d)
    except _Bad as e:
        where = format_path(e.path)
        if e.missing:
            raise InputError(f"{source}: the results lack the field {where}; {_FIX}") from None
        raise InputError(f"{source}: {where} {e.problem}; {_FIX}") from None


PART_CHECKS: dict[str, Callable[[bool], Check]] = {
    "checks": _checks, "minimal_norm": _minimal_norm, "autoattack": _autoattack, "privacy": _privacy,
    "poisoning": _poisoning, "certify": _certify, "defense": _defense,
}
"""The checks of the parts this module knows; a registered suite may bring its own (``Suite.schema``)."""


def part_check(name: str) -> Callable[[bool], Check]:
    """The check of results.json's part ``name``: this module's, else its suite's own schema, else any object."""
    if name in PART_CHECKS:
        return PART_CHECKS[name]
    suite = get(name.replace("_", "-")) if name.replace("_", "-") in NAMES else None
    if suite is not None and suite.schema is not None:
        return suite.schema
    return lambda full: _obj


def validate_part(name: str, value: Any) -> str | None:
    """Why ``value`` is not a valid stored ``name`` part (a suite's section of results.json), or None when it
    is (or when ``name`` has no checker)."""
    try:
        _walk(value)
        part_check(name)(True)(value, (name,))
    except _Bad as e:
        return f"{format_path(e.path)} {e.problem}"
    return None


def read_regular_file(path: Path, limit: int, what: str) -> bytes:
    """The bytes of ``path``, refusing anything but a regular file of at most ``limit`` bytes (a FIFO or a
    device would block or never end)."""
    return read_regular(path, what, limit, limit_hint=f"a {what} may hold; it is not one adverse wrote")


def read_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a ``results.json`` (or the folder holding one): a regular file of at most
    :data:`MAX_RESULTS_BYTES`, UTF-8 JSON, valid against the schema. Raises :class:`InputError` naming the file
    and, for a schema violation, the JSON path."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    raw = read_regular_file(p, MAX_RESULTS_BYTES, "results.json")
    try:
        d = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise InputError(f"{p} is not valid JSON (not UTF-8 text: {e.reason} at byte {e.start}); it is not an "
                         "adverse audit") from None
    except RecursionError:
        raise InputError(f"{p} is not valid JSON for an audit: it is nested too deeply (at most {MAX_DEPTH} "
                         "levels); it is not an adverse audit") from None
    except ValueError as e:  # JSONDecodeError, and integers too long to convert
        raise InputError(f"{p} is not valid JSON ({e}); it is not an adverse audit") from None
    validate_results(d, source=str(p))
    return d


__all__ = ["MAX_DEPTH", "MAX_RESULTS_BYTES", "MAX_STRING", "format_path", "image_stack_shape", "read_regular_file",
           "read_results", "validate_part", "validate_results"]
