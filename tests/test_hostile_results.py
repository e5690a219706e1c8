"""Hostile and broken files the audit reads back, and models that break the output contract.

``adverse report`` on a tampered results.json or examples.npz exits 2 naming the JSON path (or the array) and
never shows a traceback; text from the file is drawn verbatim by matplotlib and escaped in HTML; a damaged resume
state is discarded (with a warning) and never changes results; NaN, infinite or wrongly shaped logits and data
that does not fit the model are :class:`ModelError` s (exit 2); the ``output`` check warns on NaN; the certify
suite checks labels; CLI integers that cannot be meant are refused.
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from adverse.cli import app
from adverse.errors import AdverseError, InputError, ModelError
from adverse.evaluation import audit
from adverse.evaluation.audit import STATE_FILE
from adverse.evaluation.report import _label, render_report
from adverse.evaluation.schema import MAX_DEPTH, MAX_RESULTS_BYTES, validate_results

EVIL = r"$\frac{1}{0}$ \undefined _x^2 \$ $$ 100% <script>alert('x')</script> \"q\" &amp;"
SMALL_AUDIT = {"n": 20, "eps": (0.1, 0.3), "steps": 2, "checks": False, "suites": ("evasion",), "autoattack": None,
               "minimal_norm": False}
WIDE = {"COLUMNS": "2000"}  # no line breaks inside the long paths the messages name
QUICK_CLI = ["--n", "20", "--eps", "0.1", "--steps", "1", "--suites", "evasion", "--autoattack", "off", "--no-checks"]


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A real (tiny) audit saved in a folder: (its results dict, the folder)."""
    out = tmp_path_factory.mktemp("small")
    result = audit(**SMALL_AUDIT)
    result.save(out)
    return result.to_dict(), out


def _rich(base: dict) -> dict:
    """The real results plus every optional section, consistent with them (n, eps, counts)."""
    d = copy.deepcopy(base)
    n = d["n"]
    suites = ["evasion", "privacy", "poisoning", "certify", "defense"]
    d["suites"] = suites
    d["config"].update(suites=suites, checks={"eps": 0.1, "n": n, "steps": 20, "square_max_queries": 1000,
                                               "surrogate": None},
                       autoattack={"version": "fast", "eps": 0.1, "n": n}, minimal_norm={"attack": "fmn", "steps": 100},
                       privacy={"n": 50}, certify={"n": 10}, defense={"layer": "pca:k=20"})
    d["checks"] = [
        {"name": "output", "status": "pass", "message": "the model outputs logits", "evidence": {"min": -3.5}},
        {"name": "steps", "status": "warn", "message": "not converged", "evidence": {"eps": [0.1, 0.2], "p": None}},
        {"name": "transfer", "status": "skip", "message": "no surrogate given", "evidence": {}},
    ]
    d["minimal_norm"] = {"attack": "fmn", "norm": "linf", "steps": 100, "seed": 0, "norms": [0.0] + [0.07] * (n - 2)
                         + [None], "curve": {"eps": [0.0, 0.1, 0.2], "robust_accuracy": [0.95, 0.5, 0.05]},
                         "median": 0.07, "forwards": 2000, "backwards": 2000, "seconds": 0.5}
    d["autoattack"] = {"version": "fast", "eps": 0.1, "n": n, "robust_accuracy": 0.45, "attacks": ["apgd-ce"],
                       "per_attack": [{"attack": "apgd-ce", "fooled": 9}], "forwards": 100, "backwards": 100,
                       "minimal_norm": {"robust_accuracy": 0.5, "missed": 1}, "fixed_eps": {"robust_accuracy": 0.5,
                                                                                            "missed": 1},
                       "combined_robust_accuracy": 0.45, "missed": 1, "status": "warn", "message": "AutoAttack found "
                       "more", "seconds": 1.0}
    fpr = np.concatenate([[0.0], np.logspace(-2, 0, 12)])
    d["privacy"] = {"attacks": [
        {"attack": "lira", "auc": 0.71, "balanced_accuracy": 0.66, "tpr_at_fpr": {"0.01": 0.12, "0.1": 0.3},
         "ci": {"auc": [0.69, 0.74], "tpr@0.01": [0.1, 0.15]}, "confidence": 0.95, "n_members": 50,
         "n_nonmembers": 50, "roc": {"fpr": fpr.tolist(), "tpr": np.sqrt(fpr).tolist()}, "warnings": ["few points"],
         "params": {"references": 4}, "baseline": {"auc": 0.5, "tpr_at_fpr": {"0.01": 0.01}}, "seconds": 1.0},
        {"attack": "loss", "auc": None, "balanced_accuracy": None, "tpr_at_fpr": {"0.01": None}, "n_members": 50,
         "n_nonmembers": 50, "warnings": [], "baseline_note": "no baseline"},
    ], "inversion": {"attack": "mi-face", "classes": [0, 1, 2], "x": np.linspace(0, 1, 3 * 64).reshape(3, 1, 8, 8)
                     .tolist(), "evaluator": "RBF SVM", "evaluator_accuracy": 0.6, "baseline_evaluator_accuracy": 0.1,
                     "chance": 0.1, "mean_confidence": 0.9, "params": {"steps": 300}, "seconds": 0.5},
        "config": {"n": 50}, "seconds": {"total": 2.0}}
    d["poisoning"] = {
        "attacks": [{"attack": "badnets", "poison_rate": r, "n_poison": k, "attack_success_rate": a,
                     "clean_accuracy": 0.97, "seconds": 5.0} for r, k, a in ((0.0, 0, 0.01), (0.05, 63, 0.97))],
        "detectors": [{"detector": "spectral_signatures", "poison_rate": 0.05, "params": {"layer": "head.1"},
                       "auroc": 0.9, "tpr": 1.0, "fpr": 0.02, "tpr_at_fpr": {"0.05": 1.0},
                       "before": {"clean_accuracy": 0.98, "attack_success_rate": 0.99},
                       "after": {"clean_accuracy": 0.95, "attack_success_rate": 0.0, "removed": 89}, "seconds": 4.0}],
        "config": {"layer": "head.1"}}
    d["certify"] = {"n": 10, "clean_accuracy": 1.0, "config": {"n": 10}, "methods": [
        {"method": "ibp", "norm": "linf", "status": "ok", "seconds": 0.1,
         "rows": [{"eps": 0.1, "certified_accuracy": 0.5, "certified": 5},
                  {"eps": 0.3, "certified_accuracy": 0.0, "certified": 0}]},
        {"method": "smoothing", "norm": "l2", "status": "ok", "sigma": 0.25, "n0": 50, "samples": 100,
         "alpha": 0.001, "smoothed_accuracy": 0.9, "abstain_rate": 0.1, "max_radius": 0.6, "seconds": 0.2,
         "rows": [{"radius": 0.8, "certified_accuracy": 0.0, "certified": 0, "beyond_max_radius": True,
                   "linf_eps": 0.1}]}]}
    d["defense"] = {"layer": {"name": "pca", "options": {"k": 20}, "description": "PCA(k=20)"}, "retrained": False,
                    "detector": None, "n": n, "eps": [0.1, 0.3], "norm": "linf", "adaptive_attacks": ["pgd-exact"],
                    "clean_accuracy": {"undefended": 0.95, "defended": 0.9, "rejected": None},
                    "rows": [{"eps": e, "undefended": u, "oblivious": o, "adaptive": a, "attacks": {"pgd-exact": a}}
                             for e, u, o, a in ((0.1, 0.5, 0.8, 0.45), (0.3, 0.1, 0.6, 0.05))],
                    "verdict": "the defense adds little against an adaptive attacker", "config": {"layer": "pca"},
                    "seconds": {"fit": 0.1, "retrain": 0.0, "evaluate": 1.0}}
    d["seconds"].update(checks=1.0, minimal_norm=0.5, autoattack=1.0, privacy=2.0, poisoning=3.0, certify=0.3,
                        defense=1.1)
    return d


@pytest.fixture(scope="module")
def rich(small):
    d = _rich(small[0])
    validate_results(d, source="rich")  # the fixture itself is valid
    return d


def report(folder: Path, results: dict | str | bytes | None, *, allow_nan: bool = False) -> tuple:
    """Write ``results`` as folder/results.json (as given when text or bytes) and run ``adverse report`` on it;
    returns (exit code, stderr with its line breaks joined, the run)."""
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / "results.json"
    if isinstance(results, dict):
        src.write_text(json.dumps(results, allow_nan=allow_nan), encoding="utf-8")
    elif isinstance(results, str):
        src.write_text(results, encoding="utf-8")
    elif isinstance(results, bytes):
        src.write_bytes(results)
    r = CliRunner().invoke(app, ["report", str(src)], env=WIDE)
    assert "Traceback" not in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r.exit_code, " ".join(r.stderr.split()), r


def _set(d: dict, path: tuple, value) -> dict:
    d = copy.deepcopy(d)
    target = d
    for k in path[:-1]:
        target = target[k]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return d


_DELETE = object()


# --------------------------------------------------------------------------------------------- results.json
def test_valid_rich_results_render(rich, small, tmp_path):
    folder = tmp_path / "ok"
    folder.mkdir()
    (folder / "examples.npz").write_bytes((small[1] / "examples.npz").read_bytes())
    code, _, r = report(folder, rich)
    assert code == 0, r.output
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert set(re.findall(r"<section id='([a-z]+)'>", page)) == {
        "summary", "curves", "checks", "attacks", "privacy", "poisoning", "certify", "defense", "examples",
        "reproduce"}
    assert len(list((folder / "figures").glob("*.png"))) == 7


@pytest.mark.parametrize("path, value, where", [
    (("attacks", 1, "robust_accuracy"), "0.5", "attacks[1].robust_accuracy"),
    (("attacks", 0, "robust_accuracy"), 1.5, "attacks[0].robust_accuracy"),
    (("clean_accuracy",), float("nan"), "clean_accuracy"),
    (("attacks", 0, "robust"), -3, "attacks[0].robust"),
    (("worst_case", 0, "robust"), 10**6, "worst_case[0].robust"),
    (("attacks", 0, "robust"), 3, "attacks[0].robust_accuracy"),  # no longer robust / n
    (("worst_case",), _DELETE, "worst_case"),
    (("n",), 0, "results.json: n is"),
    (("n",), True, "results.json: n is"),
    (("schema_version",), True, "schema_version"),
    (("config", "eps"), "0.1,0.3", "config.eps"),
    (("config", "norm"), "l7", "config.norm"),
    (("budget", "forwards"), 1, "budget.forwards"),
    (("seconds", "total"), "fast", "seconds.total"),
    (("seconds", "total"), float("inf"), "seconds.total"),
    (("checks", 0, "status"), "ok", "checks[0].status"),
    (("environment",), [1, 2], "environment"),
    (("model", "name"), {"a": 1}, "model.name"),
    (("minimal_norm", "curve", "eps"), [0.0, 0.1], "minimal_norm.curve"),
    (("minimal_norm", "norms"), [0.1], "minimal_norm.norms"),
    (("autoattack", "n"), 10**9, "autoattack.n"),
    (("privacy", "attacks", 0, "roc", "fpr"), [0.1], "privacy.attacks[0].roc"),
    (("privacy", "attacks", 0, "tpr_at_fpr", "0.01"), -0.5, 'privacy.attacks[0].tpr_at_fpr["0.01"]'),
    (("privacy", "inversion", "x"), [[0.0, 1.0], [2.0]], "privacy.inversion.x"),
    (("privacy", "inversion", "x"), np.zeros((2, 5, 4, 4)).tolist(), "privacy.inversion.x"),
    (("poisoning", "attacks", 1, "poison_rate"), 5, "poisoning.attacks[1].poison_rate"),
    (("certify", "methods", 0, "rows", 0, "certified_accuracy"), 2, "certify.methods[0].rows[0].certified_accuracy"),
    (("certify", "methods", 1, "method"), "ibp", "certify.methods"),
    (("config", "privacy"), {"x=__import__('os').system('touch pwned'),y": 1}, "config.privacy"),
    (("defense", "rows", 0, "adaptive"), 1.5, "defense.rows[0].adaptive"),
    (("defense", "layer"), "pca", "defense.layer"),
])
def test_tampered_results_exit_2_naming_the_path(rich, tmp_path, path, value, where):
    code, err, _ = report(tmp_path, _set(rich, path, value), allow_nan=True)
    assert code == 2, err
    assert where in err and "results.json" in err
    assert not (tmp_path / "report.html").exists() and not (tmp_path / "figures").exists()


def test_non_finite_json_literals_anywhere(rich, tmp_path):
    d = _set(rich, ("checks", 1, "evidence", "p"), float("-inf"))  # evidence is free-form, but finite
    code, err, _ = report(tmp_path, d, allow_nan=True)
    assert code == 2 and "checks[1].evidence.p" in err and "finite" in err


def test_huge_file_is_refused_before_reading(tmp_path):
    src = tmp_path / "results.json"
    with src.open("wb") as f:  # sparse: no disk space used
        f.truncate(MAX_RESULTS_BYTES + 1)
    started = time.perf_counter()
    code, err, _ = report(tmp_path, None)
    assert code == 2 and "bytes" in err and time.perf_counter() - started < 10


@pytest.mark.parametrize("depth", [MAX_DEPTH + 5, 100_000])
def test_deeply_nested_json(rich, tmp_path, depth):
    text = json.dumps(rich)[:-1] + ', "extra": ' + "[" * depth + "]" * depth + "}"
    code, err, _ = report(tmp_path, text)
    assert code == 2 and ("nested" in err or "deeply" in err), err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "results.json")
    code, err, _ = report(tmp_path, None)
    assert code == 2 and "is a FIFO; adverse reads regular files only" in err


@pytest.mark.parametrize("text, message", [
    (b"\xff\xfe{}", "UTF-8"),
    ('{"schema_version": 1, "n": ' + "9" * 5000 + "}", "not valid JSON"),
    ("[]", "JSON object"),
])
def test_undecodable_results(tmp_path, text, message):
    code, err, _ = report(tmp_path, text)
    assert code == 2 and message in err


def _strings(d, path=()):
    """Every (path, string) in ``d``, keys excluded."""
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _strings(v, (*path, k))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield from _strings(v, (*path, i))
    elif isinstance(d, str):
        yield path, d


@pytest.mark.parametrize("evil", [EVIL, "_hidden \x00\x07 $", "\\"])
def test_hostile_text_in_every_string_is_drawn_and_escaped(rich, tmp_path, evil):
    """Every string field the schema leaves free gets hostile text; the report still renders, with nothing of
    it interpreted (HTML escaped; no mathtext; no TeX)."""
    d = copy.deepcopy(rich)
    replaced = 0
    for path, _ in list(_strings(d)):
        trial = _set(d, path, evil)
        try:
            validate_results(trial)
        except InputError:
            continue  # an enumeration (norm, status, suites, ...): refused, as the other test shows
        d = trial
        replaced += 1
    assert replaced > 30
    d["checks"][0]["evidence"][evil] = 1.0  # free-form keys too
    d["attacks"][0]["params"][evil] = evil
    d["privacy"]["inversion"]["classes"] = [evil] * 3
    d["privacy"]["attacks"][0]["tpr_at_fpr"][evil] = 0.5
    import matplotlib

    with matplotlib.rc_context({"text.usetex": True}):  # a user's matplotlibrc must not hand the text to TeX
        code, _, r = report(tmp_path, d)
    assert code == 0, r.output
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert "&lt;script&gt;" in page or evil != EVIL
    pngs = sorted((tmp_path / "figures").glob("*.png"))
    assert len(pngs) == 6  # no examples.npz in this folder
    for p in pngs:
        with Image.open(p) as im:
            im.verify()


@pytest.mark.parametrize("text", ["$x$", "a\\$b$c", "\\\\$", "_lead", "$$", "\\", "\x00tab\there\n2nd line",
                                  "$\\undefinedmacro$", "50%_{x}^{y}"])
def test_label_draws_text_verbatim(text):
    from matplotlib.text import Text

    shown, math = Text()._preprocess_math(_label(text))
    assert math is False
    expected = "".join("\ufffd" if ord(c) < 32 and c != "\n" else c for c in text)
    assert shown.lstrip("\u200b") == expected
    shown, math = Text()._preprocess_math(_label(EVIL))  # a long text is cut, never interpreted
    assert math is False and shown == EVIL[:59] + "…"


def test_report_never_writes_through_a_link(rich, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "figures").symlink_to(elsewhere, target_is_directory=True)
    code, err, _ = report(folder, rich)
    assert code == 2 and "symbolic link" in err and not list(elsewhere.iterdir())


def _mutations():
    """A path into the document (as indices into its sorted keys / list positions) and what to do there."""
    leaf = st.recursive(
        st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=True, allow_infinity=True)
        | st.text(max_size=30), lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5),
                                                                                             inner, max_size=3),
        max_leaves=6)
    op = st.one_of(st.tuples(st.just("set"), leaf), st.tuples(st.just("delete"), st.none()),
                   st.tuples(st.just("duplicate"), st.none()))
    return st.tuples(st.lists(st.integers(0, 10**6), min_size=1, max_size=6), op)


def _mutate(d: dict, steps: list[int], op: tuple) -> dict:
    d = copy.deepcopy(d)
    parent, key = None, None
    node = d
    for s in steps:
        if isinstance(node, dict) and node:
            k = sorted(node)[s % len(node)]
        elif isinstance(node, list) and node:
            k = s % len(node)
        else:
            break
        parent, key, node = node, k, node[k]
    if parent is None:
        return d
    kind, value = op
    if kind == "set":
        parent[key] = value
    elif kind == "delete":
        del parent[key]
    elif isinstance(parent, list):
        parent.insert(key, copy.deepcopy(parent[key]))
    return d


@settings(max_examples=examples(8), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(mutation=_mutations())
def test_random_mutations_render_or_exit_2(rich, tmp_path, mutation):
    """Any mutation of a valid results.json either renders or is refused with an AdverseError (exit 2); never
    another exception."""
    d = _mutate(rich, *mutation)
    folder = tmp_path / f"m{abs(hash(json.dumps(mutation, default=str))) % 10**9}"
    code, err, r = report(folder, json.dumps(d, allow_nan=True))
    assert code in (0, 2), r.output
    if code == 2:
        assert "results.json" in err
    else:
        assert "<script" not in (folder / "report.html").read_text(encoding="utf-8").lower()


# --------------------------------------------------------------------------------------------- examples.npz
def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _examples(small_folder: Path) -> dict:
    with np.load(small_folder / "examples.npz") as z:
        return {k: z[k] for k in z.files}


def _huge_header_npz() -> bytes:
    """An .npz whose x.npy header declares 10^12 floats but holds none."""
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }"
    header += b" " * (64 - (10 + len(header) + 1) % 64) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("x.npy", npy)
    return buf.getvalue()


@pytest.mark.parametrize("make, message", [
    (lambda ex, raw: raw[: len(raw) // 2], "not a valid examples file"),
    (lambda ex, raw: raw[:200] + bytes(b ^ 0xFF for b in raw[200:260]) + raw[260:], "not a valid examples file"),
    (lambda ex, raw: b"not a zip at all", "not a valid examples file"),
    (lambda ex, raw: _huge_header_npz(), "not a valid examples file"),
    (lambda ex, raw: _npz(**{**ex, "x": np.full_like(ex["x"], np.nan)}), "NaN"),
    (lambda ex, raw: _npz(**{**ex, "x": np.zeros((2, 5, 8, 8)), "x_adv": np.zeros((2, 5, 8, 8))}), "channels"),
    (lambda ex, raw: _npz(**{**ex, "x_adv": ex["x_adv"][:1]}), "must match"),
    (lambda ex, raw: _npz(**{**ex, "y": ex["y"].astype(float)}), "integer labels"),
    (lambda ex, raw: _npz(**{k: v for k, v in ex.items() if k != "pred_adv"}), "pred_adv"),
    (lambda ex, raw: _npz(**{**ex, "x": np.array([{"a": 1}], dtype=object)}), "not a valid examples file"),
])
def test_tampered_examples_npz_exit_2(small, tmp_path, make, message):
    d, folder = small
    raw = (folder / "examples.npz").read_bytes()
    (tmp_path / "examples.npz").write_bytes(make(_examples(folder), raw))
    code, err, _ = report(tmp_path, d)
    assert code == 2 and "examples.npz" in err and message in err, err
    assert not (tmp_path / "report.html").exists()


# --------------------------------------------------------------------------------------------- resume state
STATE_AUDIT = {"eps": (0.1,), "n": 32, "steps": 2, "batch_size": 16, "checks": False, "suites": ("evasion",),
               "minimal_norm": True, "autoattack": None, "examples": False}


def _numbers(r) -> tuple:
    d = r.to_dict()
    return (d["clean_accuracy"], [(a["attack"], a["robust"], a["forwards"]) for a in d["attacks"]], d["worst_case"],
            d["minimal_norm"]["norms"])


@pytest.fixture(scope="module")
def stated(tmp_path_factory):
    """A finished audit's numbers and its resume state (audit() leaves it; save() would delete it)."""
    folder = tmp_path_factory.mktemp("state")
    fresh = audit(**STATE_AUDIT, state_dir=folder)
    return _numbers(fresh), json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))


def _rerun(tmp_path, state: dict):
    (tmp_path / STATE_FILE).write_text(json.dumps(state), encoding="utf-8")
    return _numbers(audit(**STATE_AUDIT, state_dir=tmp_path))


def test_intact_state_is_reused(stated, tmp_path, monkeypatch):
    numbers, state = stated
    gradient = sys.modules["adverse.evasion.gradient"]
    monkeypatch.setattr(gradient, "fgsm", lambda *a, **k: pytest.fail("a finished batch was recomputed"))
    assert _rerun(tmp_path, state) == numbers


def _flip_batch(state: dict) -> dict:
    s = copy.deepcopy(state)
    rec = next(iter(s["batches"].values()))
    rec["success"] = [1 - v for v in rec["success"]]
    return s


def _resign(state: dict) -> dict:
    from adverse.evaluation.audit import _state_digest

    return {**state, "digest": _state_digest(state)}


@pytest.mark.parametrize("tamper, why", [
    (_flip_batch, "digest"),  # the key still matches, the digest does not
    (lambda s: _set(s, ("parts", "minimal_norm", "value", "norms", 0), 0.5), "digest"),
    (lambda s: _set(s, ("digest",), _DELETE), "no digest"),
    (lambda s: _resign(_set(_flip_batch(s), ("batches", next(iter(s["batches"])), "success", 0), 2)), "valid record"),
    (lambda s: _resign(_set(s, ("batches", next(iter(s["batches"])), "success"), [0])), "outcomes"),
    (lambda s: _resign(_set(s, ("parts", "minimal_norm", "value", "curve", "robust_accuracy", 0), 7.0)),
     "minimal_norm"),
    (lambda s: _resign(_set(s, ("parts", "minimal_norm", "seconds"), float("nan"))), "valid record"),
])
def test_damaged_state_is_discarded_with_a_warning(stated, tmp_path, tamper, why):
    numbers, state = stated
    damaged = tamper(state)
    assert damaged["key"] == state["key"]
    with pytest.warns(UserWarning, match=rf"resume state is damaged.*{re.escape(why)}"):
        again = _rerun(tmp_path, damaged)
    assert again == numbers  # a fresh run's numbers, not the tampered ones
    assert json.loads((tmp_path / STATE_FILE).read_text())["digest"]  # rewritten, intact


def test_cli_shows_a_discarded_state(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / STATE_FILE).write_text('{"key": "truncat', encoding="utf-8")
    r = CliRunner().invoke(app, ["audit", *QUICK_CLI, "--out", str(out)], env=WIDE)
    assert r.exit_code == 0, r.output
    assert "Warning:" in r.stderr and "resume state is damaged" in " ".join(r.stderr.split())


# --------------------------------------------------------------------------------------------- model outputs
class Broken(nn.Module):
    """A linear model on flattened 8×8 inputs whose output is spoiled as ``how`` says."""

    def __init__(self, how: str = "nan") -> None:
        super().__init__()
        self.how = how
        self.lin = nn.Linear(64, 10)

    def forward(self, x):
        z = self.lin(x.flatten(1))
        if self.how == "nan":
            return z.index_fill(0, torch.tensor([1]), float("nan"))
        if self.how == "inf":
            return z.index_fill(0, torch.tensor([0]), float("inf"))
        if self.how == "flat":
            return z[:, 0]
        if self.how == "rows":
            return z[:-1]
        if self.how == "dict":  # a mapping without logits (one with them, or a tuple, is unwrapped: test_model_sources)
            return {"scores": z}
        if self.how == "int":
            return z.argmax(1, keepdim=True).expand(-1, 10)
        return z


@pytest.fixture(scope="module")
def digits_batch(digits_test):
    return digits_test.x[:8], digits_test.y[:8]


@pytest.mark.parametrize("how, message", [("nan", r"NaN logits for 1 of 8 inputs \(the first at index 1\)"),
                                          ("inf", "infinite logits"), ("flat", r"shape \(8,\)"),
                                          ("rows", r"shape \(7, 10\) for 8"), ("dict", r"dict with keys \['scores'\] and no 'logits'"),
                                          ("int", "int64")])
def test_bad_outputs_are_model_errors_in_attacks_and_audit(digits_batch, how, message):
    from adverse.evasion import fgsm, pgd

    x, y = digits_batch
    model = Broken(how)
    for attack in (fgsm, pgd):
        with pytest.raises(ModelError, match=message):
            attack(model, x, y, eps=0.1, steps=1) if attack is pgd else attack(model, x, y, eps=0.1)
    with pytest.raises(ModelError, match=message):
        audit(model, (x, y), eps=0.1, steps=1, **{k: v for k, v in SMALL_AUDIT.items() if k not in ("n", "eps",
                                                                                                     "steps")})


def test_output_check_warns_on_nan(digits_batch):
    from adverse.evaluation.checks import check_output, run_checks

    x, y = digits_batch
    for how in ("nan", "inf"):
        c = check_output(Broken(how), x)
        assert c.status == "warn" and "NaN or infinite" in c.message and c.evidence["nonfinite_rows"] == 1
    assert check_output(Broken("ok"), x).status == "pass"
    checks = {c.name: c for c in run_checks(Broken("nan"), x, y, eps=0.1, checks=("output", "gradients", "steps"),
                                            steps=1)}
    assert checks["output"].status == "warn"
    assert checks["steps"].status == "skip" and "NaN" in checks["steps"].message  # the attack refused the model


def test_certify_checks_labels_and_outputs(digits_batch):
    from adverse.evaluation.certify_suite import certify_suite

    x, y = digits_batch
    y_bad = y.clone()
    y_bad[3] = 12
    with pytest.raises(InputError, match=r"labels of the data must lie in \[0, 9\].*10 outputs"):
        certify_suite(Broken("ok"), (x, y_bad), n=None, samples=20, n0=10)
    with pytest.raises(ModelError, match="NaN"):
        certify_suite(Broken("nan"), (x, y), n=None, samples=20, n0=10)


def test_data_that_does_not_fit_the_model(digits_batch):
    _, y = digits_batch
    odd = torch.rand(8, 3, 4, 4)
    with pytest.raises(ModelError, match=r"inputs of shape \(3, 4, 4\).*Linear\(64 → 10\).*64 features"):
        audit(Broken("ok"), (odd, y), eps=0.1, **{k: v for k, v in SMALL_AUDIT.items() if k not in ("n", "eps")})


USER_MODELS = """
import torch
from torch import nn


class Spoiled(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 10)

    def forward(self, x):
        return self.lin(x.flatten(1)) * float("nan")


def spoiled():
    return Spoiled()


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
"""


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    (tmp_path / "hostile_user_models.py").write_text(USER_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    module = importlib.import_module("hostile_user_models")
    yield module
    sys.modules.pop("hostile_user_models", None)


@pytest.mark.parametrize("factory, data_shape, message", [
    ("spoiled", (8, 8), "NaN logits"),
    ("mlp", (3, 5, 5), r"inputs of shape \(3, 5, 5\)"),
])
def test_cli_exits_2_on_bad_outputs_and_misfit_data(user_models, tmp_path, factory, data_shape, message):
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in getattr(user_models, factory)().state_dict().items()}, str(weights))
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).random((12, *data_shape), dtype=np.float32), y=np.arange(12) % 10)
    r = CliRunner().invoke(app, ["audit", "--model", str(weights), "--arch", f"hostile_user_models:{factory}",
                                 "--data", str(data), *QUICK_CLI[2:], "--out", str(tmp_path / "o")], env=WIDE)
    assert r.exit_code == 2, r.output
    assert re.search(message, " ".join(r.stderr.split())) and "Traceback" not in r.output


# --------------------------------------------------------------------------------------------- CLI integers
@pytest.mark.parametrize("args, flag", [
    (["--threads", "0"], "--threads"), (["--threads", "-1"], "--threads"), (["--threads", str(10**6)], "--threads"),
    (["--threads", str(10**30)], "--threads"), (["--steps", str(10**7)], "--steps"),
    (["--eps", ",".join(str(i / 1000) for i in range(1, 200))], "--eps"), (["--seed", str(2**40)], "--seed"),
])
def test_cli_integers_that_cannot_be_meant(tmp_path, args, flag):
    started = time.perf_counter()
    r = CliRunner().invoke(app, ["audit", *args, "--out", str(tmp_path / "o")], env=WIDE)
    assert r.exit_code == 2 and flag in r.output and "Traceback" not in r.output
    assert time.perf_counter() - started < 5 and not (tmp_path / "o").exists()


def test_config_threads_are_bounded_too(tmp_path):
    cfg = tmp_path / "audit.toml"
    cfg.write_text("threads = 100000\n")
    r = CliRunner().invoke(app, ["audit", "--config", str(cfg), "--out", str(tmp_path / "o")], env=WIDE)
    assert r.exit_code == 2 and "--threads" in r.output


def test_adverse_error_is_what_the_api_raises(rich):
    with pytest.raises(AdverseError, match=r"attacks\[0\]\.eps"):
        render_report(_set(rich, ("attacks", 0, "eps"), -1.0), "unused-folder-never-created")
    assert not Path("unused-folder-never-created").exists()
