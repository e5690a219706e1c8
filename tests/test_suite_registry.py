"""The audit's suites as one shape (issue 16): every suite is one registered module with the same interface; the
orchestrator and the suites share only :mod:`adverse.evaluation.common` and public names; the three suites added
through the registry (corruptions, backdoor-scan, dp-audit) run in an audit, from the command line and a TOML
file, land in results.json (schema-checked, hostile values refused), and draw their report sections."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import adverse as adv
from adverse.cli import app
from adverse.errors import InputError
from adverse.evaluation import suites
from adverse.evaluation.report import render_report
from adverse.evaluation.schema import read_results, validate_results

PACKAGE = Path(adv.__file__).parent / "evaluation"
NEW = ("corruptions", "backdoor-scan", "dp-audit")
FAST = {"corruptions": {"n": 30, "severities": (1, 5)},
        "backdoor-scan": {"n": 30, "nc_steps": 20, "mm_steps": 30, "starts": 5},
        "dp-audit": {"canaries": 100}}


def _imports(path: Path) -> list[tuple[str, str]]:
    """(sibling module, imported name) for every ``from .module import name`` in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            found += [(node.module, a.name) for a in node.names]
    return found


def test_no_module_of_the_audit_package_imports_a_private_name_from_a_sibling():
    modules = sorted(PACKAGE.glob("*.py"))
    assert len(modules) >= 10
    private = [(m.name, mod, name) for m in modules for mod, name in _imports(m) if name.startswith("_")]
    assert private == []


def test_common_imports_nothing_from_the_audit_package_and_the_orchestrator_no_suite_internals():
    assert _imports(PACKAGE / "common.py") == []
    suite_modules = set(suites.MODULES.values())
    from_suites = [(mod, name) for mod, name in _imports(PACKAGE / "audit.py") if mod in suite_modules]
    assert all(not name.startswith("_") for _, name in from_suites)
    # the orchestrator names no suite but the evasion suite (whose results are the top level): it goes through
    # the registry for the rest
    assert {mod for mod, _ in from_suites} <= {"evasion_suite"}


@pytest.mark.parametrize("name", suites.NAMES)
def test_every_suite_is_one_module_with_the_same_interface(name):
    suite = suites.get(name)
    assert suite.name == name and (PACKAGE / f"{suites.MODULES[name]}.py").is_file()
    assert suite.needs <= set(suites.NEEDS) and callable(suite.run) and callable(suite.samples)
    assert suite.passed <= set(__import__("inspect").signature(suite.function).parameters)
    if name in NEW:  # the suites added through the registry bring their own section, summary and schema
        assert suite.section and suite.summary and suite.schema and suite.key == name.replace("-", "_")
        assert not suite.default  # each costs minutes at scale: asked for by name or by its options


@pytest.fixture(scope="module")
def audited():
    torch.manual_seed(0)
    return adv.evaluation.audit(eps=(0.1,), n=30, steps=3, suites=["evasion", *NEW], checks=False,
                                minimal_norm=False, autoattack=None, options=FAST)


def test_the_new_suites_run_in_an_audit_and_validate(audited, tmp_path):
    r = audited
    assert r.suites == ["evasion", *NEW]
    assert r.samples["corruptions"] == r.samples["backdoor_scan"] == r.samples["dp_audit"] == 30  # n bounds each
    c = r.corruptions
    assert c["severities"] == [1, 5] and len(c["corruptions"]) == 14 and c["n"] == 30
    assert all(0 <= a <= 1 for row in c["accuracy"].values() for a in row.values())
    assert c["severity_mean"]["5"] <= c["severity_mean"]["1"] <= c["clean_accuracy"] + 1e-9
    scan = r.backdoor_scan
    assert len(scan["per_class"]) == 10 and scan["verdict"] and scan["false_positive_rate"]["scanned"] == 100
    dp = r.dp_audit
    assert dp["epsilon_lower"] >= 0 and dp["method"] == "one-run" and dp["claimed_epsilon"] is None
    d = r.to_dict()
    validate_results(d)
    assert d["config"]["corruptions"] == {"n": 30, "severities": [1, 5]}
    again = adv.evaluation.AuditResult.from_dict(json.loads(json.dumps(d)))
    assert again.corruptions == c and again.dp_audit == dp


def test_the_new_suites_draw_their_report_sections(audited, tmp_path):
    d = audited.to_dict()
    render_report(d, tmp_path)
    page = (tmp_path / "report.html").read_text()
    for key, heading, words in (("corruptions", "Common corruptions", "images corrupted"),
                                ("backdoor_scan", "Backdoor scan", "clean images"),
                                ("dp_audit", "Differential-privacy audit", "training records")):
        section = page[page.index(f"id='{key}'"):]
        section = section[:section.index("</section>")]
        assert heading in section and f"30 {words}" in section and "data:image/png;base64," in section
        assert (tmp_path / "figures" / f"{key}.png").is_file()
    summary = page[page.index("id='summary'"):]
    assert all(s in summary[:summary.index("</section>")] for s in ("<b>Corruptions.</b>", "<b>Backdoor scan.</b>",
                                                                    "<b>DP audit.</b>"))


def test_a_suites_results_are_schema_checked(audited, tmp_path):
    d = audited.to_dict()
    for change, where in ((lambda d: d["corruptions"]["accuracy"]["fog"].update({"5": 1.5}), "corruptions.accuracy"),
                          (lambda d: d["backdoor_scan"].update(suspected="yes"), "backdoor_scan.suspected"),
                          (lambda d: d["dp_audit"].update(epsilon_lower=-1.0), "dp_audit.epsilon_lower"),
                          (lambda d: d["samples"].update(dp_audt=3), "samples")):
        bad = json.loads(json.dumps(d))
        change(bad)
        path = tmp_path / "results.json"
        path.write_text(json.dumps(bad))
        with pytest.raises(InputError, match=where.replace(".", r"\.")):
            read_results(path)
        r = CliRunner().invoke(app, ["report", str(path), "--out", str(tmp_path / "out")])
        assert r.exit_code == 2 and not (tmp_path / "out" / "report.html").exists()


def test_a_suites_needs_and_options_are_checked_before_any_work():
    from adverse.zoo import pretrained

    model, test = pretrained("digits-cnn"), adv.data.digits("test")
    with pytest.raises(InputError, match="dp-audit suite needs the model's training data"):
        adv.evaluation.audit(model, test, suites=["dp-audit"])
    with pytest.raises(InputError, match=r"unknown corruptions option\(s\) \['sevrity'\]"):
        adv.evaluation.audit(model, test, suites=["corruptions"], options={"corruptions": {"sevrity": 1}})
    with pytest.raises(InputError, match="unknown suite 'corruption'"):
        adv.evaluation.audit(model, test, options={"corruption": {}})
    # each suite's options are checked before any suite runs (the evasion suite first would take minutes)
    for suite, options, message in (
            ("corruptions", {"corruptions": ["frost"]}, "frost' is left out"),
            ("corruptions", {"severities": [0]}, "severities must be distinct integers in 1..5"),
            ("backdoor-scan", {"methods": ["strip"]}, "methods must be a non-empty selection"),
            ("dp-audit", {"canary": "dirac"}, "canary must be one of"),
            ("dp-audit", {"n": 0}, "n must be an integer ≥ 1")):
        calls = []
        with pytest.raises(InputError, match=message):
            adv.evaluation.audit(model, test, train_data=adv.data.digits("train"), recipe=lambda d, s: model,
                                 suites=["evasion", suite], options={suite: options},
                                 progress=lambda *a: calls.append(a))
        assert calls == []  # refused before any work was reported


def test_corruptions_baseline_gives_relative_mce_and_the_config_names_it(tmp_path):
    from adverse.zoo import SmallCNN, pretrained

    model, test = pretrained("digits-cnn"), adv.data.digits("test")
    torch.manual_seed(0)
    untrained = SmallCNN()
    r = adv.evaluation.audit(model, test, n=40, suites=["corruptions"],
                             options={"corruptions": {"baseline": untrained, "corruptions": ["fog", "contrast"],
                                                      "severities": [3, 5]}})
    c = r.corruptions
    assert c["baseline_clean_accuracy"] < 0.5 < c["clean_accuracy"]
    errors = {k: sum(1 - a for a in c["accuracy"][k].values()) for k in ("fog", "contrast")}
    base = {k: sum(1 - a for a in c["baseline_accuracy"][k].values()) for k in ("fog", "contrast")}
    assert c["mce"] == pytest.approx(sum(errors[k] / base[k] for k in errors) / 2) and c["mce"] < 1
    assert "relative_mce" in c
    assert "SmallCNN" in r.config["corruptions"]["baseline"]  # a model in the configuration: named, not stored
    r.save(tmp_path)
    validate_results(json.loads((tmp_path / "results.json").read_text()))


def test_the_new_suites_from_the_command_line_and_a_toml_file(tmp_path):
    cfg = tmp_path / "audit.toml"
    cfg.write_text("""
suites = ["corruptions", "backdoor-scan"]
threads = 1
out = "toml"
[evasion]
n = 20
[corruptions]
severities = [2]
corruptions = ["gaussian_noise", "fog"]
[backdoor-scan]
methods = ["mm-bd"]
starts = 3
mm_steps = 20
""")
    r = CliRunner().invoke(app, ["audit", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert "Corruptions. Under 2 common corruptions" in r.output and "Backdoor scan." in r.output
    res = json.loads((tmp_path / "toml" / "results.json").read_text())
    assert res["corruptions"]["corruptions"] == ["gaussian_noise", "fog"] and res["samples"]["corruptions"] == 20
    assert res["backdoor_scan"]["methods"] == ["mm-bd"] and res["config"]["backdoor_scan"]["starts"] == 3
    assert "id='backdoor_scan'" in (tmp_path / "toml" / "report.html").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text('suites = ["corruptions"]\n[corruptions]\nseverities = [7]\n')
    r = CliRunner().invoke(app, ["audit", "--config", str(bad), "--out", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "severities must be distinct integers in 1..5" in r.output
    assert not (tmp_path / "bad" / "results.json").exists()


def test_dp_audit_suite_with_a_dp_recipe_and_gradient_canaries():
    """The suite on a DP-SGD recipe (Opacus, ε = 8 claimed): white-box gradient canaries give a bound that is
    positive, below the claim, and stated beside it."""
    from adverse.defenses import DPRecipe
    from adverse.zoo import pretrained

    train, test = adv.data.digits("train"), adv.data.digits("test")
    r = adv.evaluation.audit(pretrained("digits-cnn"), test, train_data=train, recipe=DPRecipe(8.0, 1e-5, epochs=5),
                             n=400, suites=["dp-audit"], options={"dp-audit": {"canary": "gradient"}})
    dp = r.dp_audit
    assert dp["canary"] == "gradient" and dp["n"] == 400 and r.samples == {"dp_audit": 400}
    assert dp["claimed_epsilon"] == pytest.approx(8.0, abs=0.05) and dp["delta"] == 1e-5
    assert 0 < dp["epsilon_lower"] < dp["claimed_epsilon"]
    assert "claimed ε = 7.99" in dp["summary"] or "claimed ε = 8" in dp["summary"]
