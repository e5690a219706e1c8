"""End-to-end tests of the ``adverse`` command and of :func:`adverse.evaluation.audit`.

Budgets are reduced (``--steps``, ``--n``) so the whole file runs in seconds once the demo model is cached.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from adverse.cli import app
from adverse.errors import AdverseError

ATTACKS = ("fgsm", "pgd", "apgd-ce")
SMALL = ["--n", "60", "--eps", "0.1,0.3", "--steps", "10", "--threads", "1", "--suites", "evasion", "--autoattack",
         "off"]
EVASION = {"suites": ("evasion",), "autoattack": None}  # the API's evasion suite alone, without AutoAttack


def adverse(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the real command in a fresh interpreter (the same code as the ``adverse`` console script)."""
    return subprocess.run([sys.executable, "-m", "adverse.cli", *args], check=False, capture_output=True, text=True,
                          timeout=timeout)


def check_consistent(d: dict, eps: list[float], n: int, steps: int = 10) -> None:
    """The invariants every audit keeps."""
    assert d["schema_version"] == 1
    assert d["n"] == n and d["config"]["eps"] == eps
    clean = d["clean_accuracy"]
    assert 0.0 <= clean <= 1.0
    by = {(r["attack"], r["eps"]): r for r in d["attacks"]}
    assert set(by) == {(a, e) for a in ATTACKS for e in eps}
    worst = {r["eps"]: r["robust_accuracy"] for r in d["worst_case"]}
    assert list(worst) == eps
    for (a, e), r in by.items():
        assert 0.0 <= r["robust_accuracy"] <= clean + 1e-12, (a, e)
        assert r["robust"] == round(r["robust_accuracy"] * n)
        assert math.isclose(r["success_rate"], 1 - r["robust_accuracy"])
        assert worst[e] <= r["robust_accuracy"] + 1e-12, (a, e)
        assert r["forwards"] >= n and r["seconds"] >= 0
    for a in ATTACKS:  # a larger budget never helps the model
        accs = [by[(a, e)]["robust_accuracy"] for e in eps]
        assert all(x >= y for x, y in itertools.pairwise(accs)), (a, accs)
    assert all(x >= y for x, y in itertools.pairwise(worst.values()))
    env = d["environment"]
    assert {"python", "torch", "adverse", "numpy"} <= set(env)
    assert d["budget"]["forwards"] == sum(r["forwards"] for r in d["attacks"])
    assert d["config"]["seed"] == 0
    assert d["config"]["attacks"]["pgd"]["steps"] == steps and d["config"]["attacks"]["apgd-ce"]["steps"] == steps


# --------------------------------------------------------------------------------------------- the command
def test_help_is_fast_and_does_not_import_torch():
    r = subprocess.run([sys.executable, "-c", "import sys, adverse.cli; print('torch' in sys.modules)"],
                       check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
    r = adverse("--help", timeout=60)
    assert r.returncode == 0, r.stderr
    assert "audit" in r.stdout
    r = adverse("audit", "--help", timeout=60)
    assert r.returncode == 0 and "--eps" in r.stdout and "--json" in r.stdout


def test_version():
    import adverse

    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0
    assert r.stdout.strip() == f"adverse {adverse.__version__}"


@pytest.fixture(scope="module")
def json_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("audit") / "out"
    r = adverse("audit", *SMALL, "--json", "--out", str(out))
    return r, out


def test_audit_json_end_to_end(json_run):
    r, out = json_run
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)  # stdout holds the JSON and nothing else
    check_consistent(d, [0.1, 0.3], 60)
    assert d["clean_accuracy"] >= 0.9
    assert d["model"]["name"] == "digits-cnn" and d["data"]["name"] == "digits"
    assert (out / "results.json").read_text(encoding="utf-8") == r.stdout
    assert "Traceback" not in r.stderr
    # the gradient-masking checks ran at one of the audited budgets and say pass or warn with their evidence
    from adverse.evaluation.checks import CHECKS

    assert [c["name"] for c in d["checks"]] == list(CHECKS)
    assert d["config"]["checks"]["eps"] in [0.1, 0.3] and d["config"]["checks"]["n"] == 60
    status = {c["name"]: c["status"] for c in d["checks"]}
    assert status["transfer"] == "pass"  # the demo's recipe trains a surrogate; transfer does not beat PGD
    assert d["config"]["checks"]["surrogate"] == "recipe, seed + 1"
    for name in ("output", "determinism", "gradients", "eps_sweep", "single_vs_iterative"):
        assert status[name] == "pass", [c for c in d["checks"] if c["name"] == name]
    assert all(isinstance(c["evidence"], dict) and c["message"] for c in d["checks"])


def test_audit_table_and_rerun_into_same_folder(tmp_path):
    out = tmp_path / "audit"
    runner = CliRunner()
    first = runner.invoke(app, ["audit", *SMALL, "--out", str(out)])
    assert first.exit_code == 0, first.output
    assert "worst case" in first.stdout and "APGD-CE" in first.stdout and "ε=0.3" in first.stdout
    assert "results.json" in first.stdout.replace("\n", "")  # a long path may wrap
    assert "Sanity checks" in first.stdout and "eps_sweep" in first.stdout
    before = json.loads((out / "results.json").read_text(encoding="utf-8"))
    second = runner.invoke(app, ["audit", *SMALL, "--json", "--no-checks", "--out", str(out)])
    assert second.exit_code == 0, second.output
    text = (out / "results.json").read_text(encoding="utf-8")
    assert text == second.stdout
    after = json.loads(text)
    # the results, the report and its figures; no temporary files left behind
    assert sorted(p.name for p in out.iterdir()) == ["examples.npz", "figures", "report.html", "results.json"]

    def numbers(d):  # everything but the timings and the date is reproducible
        return d["clean_accuracy"], [(r["attack"], r["eps"], r["robust"]) for r in d["attacks"]], d["worst_case"]

    assert numbers(before) == numbers(after)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--eps", "-1"], ["--eps", "≥ 0"]),
        (["--eps", "abc"], ["--eps", "not a number"]),
        (["--eps", "0.1,,0.2"], ["--eps"]),
        (["--eps", "nan"], ["--eps"]),
        (["--n", "0"], ["--n"]),
        (["--norm", "l3"], ["--norm"]),
        (["--no-such-flag"], ["--no-such-flag"]),
    ],
)
def test_bad_usage_exits_2_without_traceback(args, words, tmp_path):
    r = CliRunner().invoke(app, ["audit", *args, "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    assert not isinstance(r.exception, Exception) or isinstance(r.exception, SystemExit)
    assert "Traceback" not in r.output
    for w in words:
        assert w in r.output
    assert not (tmp_path / "o").exists()  # nothing written on bad usage


def test_bad_usage_exits_2_in_a_real_process(tmp_path):
    r = adverse("audit", "--eps", "-1", "--out", str(tmp_path / "o"), timeout=60)
    assert r.returncode == 2
    assert r.stdout == "" and "Traceback" not in r.stderr and "--eps" in r.stderr


def test_input_errors_exit_2(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("mine", encoding="utf-8")
    r = CliRunner().invoke(app, ["audit", "--out", str(a_file), "--n", "5"])
    assert r.exit_code == 2 and "not a folder" in r.stderr and "Traceback" not in r.output
    assert a_file.read_text(encoding="utf-8") == "mine"
    r = CliRunner().invoke(app, ["audit", "--n", "100000", "--steps", "1", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "only 540 samples" in r.stderr and "Traceback" not in r.output


def test_unexpected_error_exits_1(monkeypatch, tmp_path):
    import importlib

    audit_module = importlib.import_module("adverse.evaluation.audit")  # the module, not the function

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(audit_module, "audit", broken)
    r = CliRunner().invoke(app, ["audit", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1
    assert "boom" in r.stderr and "bug" in r.stderr and "Traceback" not in r.output


# --------------------------------------------------------------------------------------------- the Python API
def test_audit_function_small(tmp_path):
    from adverse.evaluation import AuditResult, audit

    calls = []
    res = audit(eps=(0.3, 0.1), n=40, steps=5, checks=False, **EVASION, progress=lambda d, c, t: calls.append((d, c, t)))
    d = res.to_dict()
    check_consistent(d, [0.1, 0.3], 40, steps=5)
    assert d["config"]["n"] == 40
    # progress reaches its total and never goes back
    attacks = [(c, t) for d, c, t in calls if d.split()[0] in ATTACKS]  # the fixed-eps attacks (other steps have
    # their own bars)
    done = [c for c, _ in attacks]
    assert done == sorted(done) and done[-1] == attacks[-1][1]
    # per-sample outcomes agree with the numbers
    for r in d["attacks"]:
        assert res.fooled[(r["attack"], r["eps"])].shape == (40,)
        assert int((~res.fooled[(r["attack"], r["eps"])]).sum()) == r["robust"]
    union = np.zeros(40, dtype=bool)
    for e in (0.1, 0.3):
        for a in ATTACKS:
            union |= res.fooled[(a, e)]
        assert res.robust_accuracy("worst-case", e) == 1 - union.mean()
    # save / load round trip, atomically replaced
    path = res.save(tmp_path)
    assert path == tmp_path / "results.json"
    assert json.loads(path.read_text(encoding="utf-8")) == json.loads(res.to_json())
    assert AuditResult.load(tmp_path).to_dict() == d
    res.save(tmp_path)
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["examples.npz", "results.json"]


def test_audit_function_user_model_and_numpy_data(digits_cnn, digits_test):
    import torch

    from adverse.evaluation import audit

    x, y = digits_test.x[:30].numpy(), digits_test.y[:30].numpy()
    before = {k: v.clone() for k, v in digits_cnn.state_dict().items()}
    digits_cnn.train()
    res = audit(digits_cnn, (x, y), eps=0.2, steps=3, attacks=("fgsm", "pgd"), seed=1, checks=False, **EVASION)
    assert digits_cnn.training  # the caller's mode is restored
    assert all(torch.equal(before[k], v) for k, v in digits_cnn.state_dict().items())
    d = res.to_dict()
    assert d["model"]["source"] == "user" and d["n"] == 30
    assert [r["attack"] for r in d["attacks"]] == ["fgsm", "pgd"]
    assert d["worst_case"][0]["robust_accuracy"] <= min(r["robust_accuracy"] for r in d["attacks"])
    again = audit(digits_cnn, (x, y), eps=0.2, steps=3, attacks=("fgsm", "pgd"), seed=1, checks=False, **EVASION)
    assert [r["robust"] for r in again.attacks] == [r["robust"] for r in res.attacks]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"eps": -0.1}, "eps"),
        ({"eps": ()}, "eps"),
        ({"eps": (0.1, 0.1)}, "twice"),
        ({"norm": "l3"}, "norm"),
        ({"n": 0}, "n must"),
        ({"steps": 0}, "steps"),
        ({"steps": {"cw": 3}}, "unknown"),
        ({"attacks": ("fgsm", "cw")}, "unknown attack"),
        ({"batch_size": 0}, "batch_size"),
        ({"data": ([[0.0]], [0])}, "without a model"),
    ],
)
def test_audit_function_rejects_bad_input(kwargs, match):
    from adverse.evaluation import audit

    with pytest.raises(AdverseError, match=match):
        audit(**kwargs)


def test_importing_evaluation_is_light():
    r = subprocess.run(
        [sys.executable, "-c", ("import sys, adverse, adverse.evaluation as e; "
                                "assert adverse.audit is e.audit and callable(e.audit); "
                                "print('torch' in sys.modules)")],
        check=False, capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
