"""``adverse.defenses.evaluate`` and the audit's ``defense`` suite: the undefended / oblivious / adaptive rows and
their invariants, the adaptive attacks each kind of layer calls for (exact and BPDA, EOT, the joint detector
attack), the verdict, the suite end to end from the command line and from a TOML file with its report section,
and bad input."""

from __future__ import annotations

import json

import pytest
from torch import nn
from typer.testing import CliRunner

from adverse.cli import app
from adverse.data import digits
from adverse.defenses import PCA, BitDepth, MagNet, TVMinimization, evaluate
from adverse.errors import AdverseError
from adverse.evaluation.defense_suite import defense_suite, parse_layer

EPS = (0.1, 0.3)


@pytest.fixture(scope="module")
def data():
    return digits("train"), digits("test")


def _check_rows(r, n):
    clean = r["clean_accuracy"]
    assert r["n"] == n and [row["eps"] for row in r["rows"]] == list(EPS)
    for row in r["rows"]:
        assert 0 <= row["adaptive"] <= row["oblivious"] <= clean["defended"]  # the adaptive attacker also transfers
        assert row["undefended"] <= clean["undefended"]
        assert all(row["adaptive"] <= a for a in row["attacks"].values())  # worst case over the adaptive attacks
        for key in ("undefended", "oblivious", "adaptive"):
            assert row[key] * n == round(row[key] * n)  # counts over n samples
    for key in ("undefended", "oblivious", "adaptive"):  # cumulative over budgets
        values = [row[key] for row in r["rows"]]
        assert values == sorted(values, reverse=True)
    json.dumps(r, allow_nan=False)


def test_deterministic_layers_get_exact_and_bpda_attacks(digits_cnn, data):
    train, test = data
    x, y = test.x[:40], test.y[:40]
    layer = BitDepth(1, gradient="exact")
    defended = nn.Sequential(layer, digits_cnn)
    modes = [m.training for m in defended.modules()]
    r = evaluate(defended, x, y, eps=EPS, steps=10, seed=0)
    _check_rows(r, 40)
    assert r["adaptive_attacks"] == ["pgd-bpda", "pgd-exact"]
    last = r["rows"][-1]
    assert last["attacks"]["pgd-bpda"] < last["attacks"]["pgd-exact"]  # the naive gradient of rounding is masked
    assert last["oblivious"] > last["adaptive"] + 0.2  # the oblivious attacker overstates the defense
    assert layer.gradient == "exact" and [m.training for m in defended.modules()] == modes  # left as found
    assert evaluate(defended, x, y, eps=EPS, steps=10, seed=0)["rows"] == r["rows"]  # same seed, same numbers
    # a defense that changes nothing (PCA keeping every component) is worth nothing, and the verdict says so
    full = nn.Sequential(PCA(64).fit(train.x), digits_cnn)
    none = evaluate(full, x, y, eps=EPS, steps=10, seed=0)
    assert all(abs(row["adaptive"] - row["undefended"]) <= 0.05 for row in none["rows"])
    assert none["verdict"].startswith("Worth nothing once the attacker adapts")


def test_randomized_layers_are_attacked_through_eot_and_judged_by_expected_logits(digits_cnn, data):
    _, test = data
    x, y = test.x[:24], test.y[:24]
    layer = TVMinimization(iterations=30, seed=5)
    r = evaluate(nn.Sequential(layer, digits_cnn), x, y, eps=EPS, steps=5, eot_samples=2, judge_samples=3, seed=1)
    _check_rows(r, 24)
    assert r["adaptive_attacks"] == ["pgd-eot2"] and r["attack"]["judge_samples"] == 3
    assert r["rows"][-1]["adaptive"] <= 0.25  # EOT + BPDA at ε = 0.3 (Athalye et al.: TV minimization falls)
    assert layer.gradient == "eot"


def test_detect_and_reject_is_attacked_jointly(digits_cnn, data):
    train, test = data
    x, y = test.x[:30], test.y[:30]
    magnet = MagNet(epochs=15, fpr=0.05, seed=0).fit(train.x)
    r = evaluate(nn.Sequential(magnet, digits_cnn), x, y, detector=magnet.detector, eps=EPS, steps=8, seed=0)
    _check_rows(r, 30)
    assert r["clean_accuracy"]["rejected"] is not None and r["detector"].startswith("ReconstructionDetector")
    assert {"pgd-exact:oblivious", "pgd-exact:adaptive-w1", "pgd-bpda:adaptive-w3"} <= set(r["adaptive_attacks"])
    assert r["rows"][-1]["adaptive"] <= 0.1  # bypassed at ε = 0.3 (Carlini & Wagner 2017, "MagNet ... not robust")


@pytest.mark.parametrize("call, words", [
    (lambda m, x, y: evaluate(m, x, y), ["no preprocessing layer", "nn.Sequential(layer, classifier)"]),
    (lambda m, x, y: evaluate(nn.Sequential(BitDepth(1), m), x, y, eps=0.0), ["eps", "> 0"]),
    (lambda m, x, y: evaluate(nn.Sequential(BitDepth(1), m), x, y, detector=MagNet().__class__),
     ["detector", "fit"]),
    (lambda m, x, y: evaluate(nn.Sequential(PCA(5), m), x, y), ["not fitted"]),
])
def test_evaluate_bad_input(digits_cnn, data, call, words):
    _, test = data
    with pytest.raises(AdverseError) as info:
        call(digits_cnn, test.x[:4], test.y[:4])
    for w in words:
        assert w in str(info.value)


def test_layer_specs():
    assert parse_layer("pca:k=20") == ("pca", {"k": 20})
    assert parse_layer({"name": "tv", "keep": 0.5, "p": 1}) == ("tv", {"keep": 0.5, "p": 1})
    assert parse_layer("MagNet:fpr=0.05,gradient=bpda") == ("magnet", {"fpr": 0.05, "gradient": "bpda"})
    for spec, words in (("pcb", ["unknown defense", "pca"]), ("pca:q=3", ["unknown option", "variance"]),
                        ("pca:seed=3", ["sets bounds and seed"]), ("pca:k", ["key=value"]),
                        ({"k": 3}, ["name"])):
        with pytest.raises(AdverseError) as info:
            parse_layer(spec)
        assert all(w in str(info.value) for w in words), str(info.value)


def test_suite_bad_input(digits_cnn, data):
    train, test = data
    cases = [
        ({"layer": "pca:k=20"}, ["training data", "--train-data"]),
        ({"layer": "feature-selection:k=5", "train": train}, ["recipe"]),
        ({"layer": "magnet:threshold=2", "train": train}, ["threshold", "[0, 1]"]),
        ({"layer": None, "train": train}, ["needs a layer", "--defense"]),
        ({"layer": "feature-selection", "train": train}, ["needs k", "feature-selection:k="]),
        ({"layer": "pca:k=twenty", "train": train}, ["k"]),
    ]
    for kwargs, words in cases:
        with pytest.raises(AdverseError) as info:
            defense_suite(digits_cnn, test, **kwargs)
        assert all(w in str(info.value) for w in words), str(info.value)


def test_suite_from_the_command_line(tmp_path):
    out = tmp_path / "cli"
    r = CliRunner().invoke(app, ["audit", "--suites", "defense", "--defense", "bit-depth:bits=1", "--eps", "0.3",
                                 "--threads", "1", "--json", "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert res["suites"] == ["defense"] and res["config"]["defense"] == {"layer": "bit-depth:bits=1"}
    d = res["defense"]
    assert d["layer"]["name"] == "bit-depth" and not d["retrained"] and d["n"] == 200
    assert d["rows"][0]["adaptive"] < d["rows"][0]["oblivious"]
    html = (out / "report.html").read_text()
    assert "id='defense'" in html and "BitDepth(bits=1" in html
    again = CliRunner().invoke(app, ["audit", "--suites", "defense", "--out", str(tmp_path / "none")])
    assert again.exit_code == 2 and "--defense" in again.output


def test_suite_from_a_toml_file_with_its_report_section(tmp_path):
    cfg = tmp_path / "audit.toml"
    cfg.write_text("""
suites = ["defense"]
seed = 1
threads = 1
out = "toml"
[evasion]
eps = [0.1, 0.3]
[defense]
layer = { name = "magnet", epochs = 10, fpr = 0.05 }
n = 40
steps = 5
""")
    r = CliRunner().invoke(app, ["audit", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert "Defense (MagNet" in r.output
    out = tmp_path / "toml"
    res = json.loads((out / "results.json").read_text())
    d = res["defense"]
    assert d["config"]["options"] == {"epochs": 10, "fpr": 0.05} and d["config"]["seed"] == 1
    assert d["clean_accuracy"]["rejected"] is not None and d["rows"][-1]["adaptive"] <= d["rows"][-1]["oblivious"]
    html = (out / "report.html").read_text()
    section = html[html.index("id='defense'"):]
    section = section[:section.index("</section>")]
    assert "oblivious attacker" in section and "adaptive attacker" in section and "rejected" in section
    assert d["verdict"].split(":")[0] in section and "data:image/png;base64," in section
    assert (out / "figures" / "defense.png").is_file()
    rerendered = CliRunner().invoke(app, ["report", str(out / "results.json"), "--out", str(tmp_path / "again")])
    assert rerendered.exit_code == 0, rerendered.output
    bad = tmp_path / "bad.toml"
    bad.write_text('[defense]\nlayer = "magnet"\nsteepness = 3\n')
    r = CliRunner().invoke(app, ["audit", "--config", str(bad), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "steepness" in r.output


def test_giving_a_defense_to_the_audit_runs_its_suite(digits_cnn, data):
    from adverse.evaluation import audit

    train, test = data
    r = audit(digits_cnn, test.subset(20), train_data=train, eps=0.3, attacks=["fgsm"], checks=False,
              minimal_norm=False, autoattack=None, examples=False, suites=None, certify={"n": 5, "n0": 10, "samples": 10},
              defense={"layer": "median:kernel_size=2", "n": 10, "steps": 2})
    assert r.suites[-1] == "defense" and r.defense["n"] == 10 and r.config["defense"]["layer"].startswith("median")
    assert r.defense["adaptive_attacks"] == ["pgd-bpda", "pgd-exact"]
    with pytest.raises(AdverseError, match="black box"):
        from adverse.models import BlackBox

        audit(BlackBox(lambda x: digits_cnn(x)), test.subset(5), suites=["defense"], defense={"layer": "jpeg"})
