"""report.html with the certification suite and the poisoning suite's detectors: sections, figures, numbers."""

from __future__ import annotations

import copy
import re

import pytest

from adverse.data import digits
from adverse.evaluation.certify_suite import certify_suite
from adverse.evaluation.report import render_report
from adverse.zoo import pretrained

EVIL = '<script>alert("x")</script>'
POISONING = {
    "attacks": [{"attack": "badnets", "poison_rate": r, "n_poison": k, "attack_success_rate": a,
                 "clean_accuracy": 0.97, "seconds": 5.0} for r, k, a in ((0.0, 0, 0.0021), (0.05, 63, 0.9712))],
    "detectors": [
        {"detector": "activation_clustering", "poison_rate": 0.05, "params": {"layer": "head.1"}, "auroc": 0.9782,
         "tpr": 1.0, "fpr": 0.0218, "tpr_at_fpr": {"0.05": 1.0},
         "before": {"clean_accuracy": 0.9833, "attack_success_rate": 0.9938},
         "after": {"clean_accuracy": 0.9574, "attack_success_rate": 0.0, "removed": 89}, "seconds": 17.7},
        {"detector": EVIL, "poison_rate": 0.05, "params": {"layer": "head.1"}, "auroc": None, "tpr": 0.4613,
         "fpr": 0.4791, "tpr_at_fpr": {"0.05": 0.0476},
         "after": {"clean_accuracy": 0.9, "attack_success_rate": 0.8883, "removed": 635}, "seconds": 4.2},
    ],
    "config": {"layer": "head.1"},
}


@pytest.fixture(scope="module")
def certified():
    return certify_suite(pretrained("digits-cnn"), digits("test"), eps=(0.0, 0.05, 0.1), n=10, samples=100, n0=50)


def _section(page: str, sid: str) -> str:
    return page.split(f"<section id='{sid}'>")[1].split("</section>")[0]


def test_certify_and_detectors_render(certified, tmp_path):
    path = render_report({"certify": certified, "poisoning": POISONING}, tmp_path)
    page = path.read_text(encoding="utf-8")
    assert set(re.findall(r"<section id='([a-z]+)'>", page)) == {"poisoning", "certify"}
    assert page.index("<section id='poisoning'>") < page.index("<section id='certify'>")
    assert len(re.findall(r"<img src='data:image/png;base64,", page)) == 2
    assert {f.name for f in (tmp_path / "figures").glob("*.png")} == {"poisoning_asr.png", "certified_accuracy.png"}

    cert = _section(page, "certify")
    assert "proven lower bound" in cert and "<img" in cert
    ibp, smooth = certified["methods"]
    for r in ibp["rows"]:
        assert f"L∞ ε={r['eps']:.4g}</td><td class='r'>{100 * r['certified_accuracy']:.1f}%" in cert
    for r in smooth["rows"]:
        assert f"L2 radius {r['radius']:.4g} (covers L∞ ε={r['linf_eps']:.4g})" in cert
    assert f"right on {100 * smooth['smoothed_accuracy']:.1f}%" in cert and "ε√d" in cert

    poison = _section(page, "poisoning")
    assert "<h3>Finding the poisons</h3>" in poison and "<th>TPR at FPR 0.05</th>" in poison
    assert "<td class='r'>0.978</td><td class='r'>100.0% / 2.2%</td>" in poison and "99.4% → 0.0%" in poison and "98.3% → 95.7%" in poison and "<td class='r'>88.8%</td>" in poison
    assert "n/a" in poison and "<script" not in page.lower() and "&lt;script&gt;" in poison


def test_skipped_ibp_and_missing_parts(certified, tmp_path):
    d = copy.deepcopy(certified)
    d["methods"][0] = {"method": "ibp", "status": "skipped", "reason": f"unsupported {EVIL}"}
    only_attacks = {"attacks": POISONING["attacks"]}
    page = render_report({"certify": d, "poisoning": only_attacks}, tmp_path).read_text(encoding="utf-8")
    cert = _section(page, "certify")
    assert "ibp was skipped: unsupported &lt;script&gt;" in cert and "<td>ibp</td>" not in cert
    assert len(re.findall(r"<img ", cert)) == 1
    assert "Finding the poisons" not in _section(page, "poisoning")
    # detectors alone still render; no certify key, no certify section
    page = render_report({"poisoning": {"detectors": POISONING["detectors"]}}, tmp_path / "b").read_text(
        encoding="utf-8")
    assert "Finding the poisons" in _section(page, "poisoning") and "<section id='certify'>" not in page
    both_skipped = {"methods": [d["methods"][0], {"method": "smoothing", "status": "skipped", "reason": "no"}]}
    page = render_report({"certify": both_skipped}, tmp_path / "c").read_text(encoding="utf-8")
    assert "<img" not in _section(page, "certify") and "<table" not in _section(page, "certify")
