"""``adverse audit --protocol robustbench`` end to end on digits: standard AutoAttack on every selected point at
one budget, ``robustbench.json`` shaped like a RobustBench model-info entry, AutoAttack's text log, the report's
protocol section, and bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from adverse.cli import app
from adverse.evaluation.robustbench import CAVEATS, model_info

AA = ["apgd-ce", "apgd-t", "fab-t", "square"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rb") / "out"
    r = CliRunner().invoke(app, ["audit", "--protocol", "robustbench", "--n", "24", "--eps", "0.1", "--threads",
                                 "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out, json.loads((out / "results.json").read_text())


def test_robustbench_json_is_a_model_info_entry(run):
    out, results = run
    info = json.loads((out / "robustbench.json").read_text())
    for key in ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
                "architecture", "eps", "clean_acc", "reported", "autoattack_acc", "footnote", "threat_model"):
        assert key in info
    aa = results["autoattack"]
    assert aa["version"] == "standard" and aa["n"] == 24 and aa["eps"] == 0.1  # every selected point, one budget
    assert info["dataset"] == "digits" and info["threat_model"] == "Linf" and info["eps"] == "0.1"
    assert info["clean_acc"] == f"{100 * results['clean_accuracy']:.2f}"
    assert info["autoattack_acc"] == f"{100 * aa['robust_accuracy']:.2f}"
    assert info["number_forward_passes"] == 1
    ev = info["evaluation"]
    assert [p["attack"] for p in ev["per_attack"]] == AA and ev["n_points"] == 24
    assert ev["comparable"] is False and ev["leaderboard_budget"] is None and ev["caveats"] == list(CAVEATS)
    assert ev["versions"]["adverse"] and ev["versions"]["torch"]
    assert info == model_info(results)  # rebuilt from results.json alone
    assert results["config"]["protocol"] == "robustbench" and results["suites"] == ["evasion"]
    assert "checks" not in results["config"] and "minimal_norm" not in results["config"]


def test_worst_case_per_point_and_the_log(run):
    out, results = run
    aa = results["autoattack"]
    robust = [p["robust_accuracy"] for p in aa["per_attack"]]
    assert robust == sorted(robust, reverse=True) and robust[-1] == aa["robust_accuracy"]  # per point, cumulative
    assert aa["robust_accuracy"] <= results["clean_accuracy"]
    first = aa["per_attack"][0]
    assert first["attacked"] == round(24 * results["clean_accuracy"])  # attacks start from the correct points
    for prev, p in zip(aa["per_attack"], aa["per_attack"][1:], strict=False):
        assert p["attacked"] == prev["attacked"] - prev["fooled"]  # each attacks only what is still robust
    log = (out / "autoattack.log").read_text().splitlines()
    assert log[0] == "setting parameters for standard version"
    assert log[1] == "using standard version including apgd-ce, apgd-t, fab-t, square."
    assert log[3] == f"initial accuracy: {100 * results['clean_accuracy']:.2f}%"
    afters = [line for line in log if line.startswith("robust accuracy after ")]
    assert [line.split()[3].rstrip(":") for line in afters] == [a.upper() for a in AA]
    assert log[-1] == f"robust accuracy: {100 * aa['robust_accuracy']:.2f}%"


def test_the_report_shows_the_protocol_and_its_caveats(run):
    out, _ = run
    page = (out / "report.html").read_text()
    section = page[page.index("id='protocol'"):]
    section = section[:section.index("</section>")]
    assert "Protocol: RobustBench" in section and "upper bound on robust accuracy" in section
    assert "--protocol robustbench" in page


@pytest.mark.parametrize(("args", "message"), [
    (["--protocol", "robustbench", "--eps", "0.1,0.2"], "one budget"),
    (["--protocol", "leaderboard"], "--protocol must be robustbench"),
])
def test_bad_protocol_use_exits_2(tmp_path, args, message):
    r = CliRunner().invoke(app, ["audit", *args, "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and message in r.output.replace("\n", " "), r.output
    assert not (tmp_path / "o" / "robustbench.json").exists()


def test_a_bf16_search_is_confirmed_in_fp32_and_says_so(tmp_path):
    """``--precision bf16`` under the protocol: AutoAttack searches in bf16 and every point it reports fooled is
    misclassified by the fp32 model; the entry records the precision, adds the caveat, and takes the clean accuracy
    from AutoAttack's fp32 clean pass."""
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["audit", "--protocol", "robustbench", "--n", "24", "--eps", "0.1", "--threads",
                                 "1", "--precision", "bf16", "--no-checks", "--out", str(out)])
    assert r.exit_code == 0, r.output
    results = json.loads((out / "results.json").read_text())
    info = json.loads((out / "robustbench.json").read_text())
    aa = results["autoattack"]
    assert aa["acceleration"]["precision"] == "bf16" and aa["acceleration"]["unconfirmed"] >= 0
    ev = info["evaluation"]
    assert ev["precision"] == "bf16" and len(ev["caveats"]) == len(CAVEATS) + 1 and "bf16" in ev["caveats"][-1]
    assert info["clean_acc"] == f"{100 * aa['per_attack'][0]['attacked'] / 24:.2f}"
    assert "searching in bf16 autocast" in (out / "report.html").read_text()
