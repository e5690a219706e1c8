"""report.html: sections, numbers from results.json, embedded PNGs, escaping, the optional suites, the
``adverse report`` command, and how headless Chromium renders it."""

from __future__ import annotations

import base64
import copy
import html
import io
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from browser import CHROMIUM, HARNESS, chromium, console
from PIL import Image
from typer.testing import CliRunner

import adverse
from adverse.cli import app
from adverse.errors import InputError
from adverse.evaluation.report import render_report

EVIL = '<script>alert("x")</script>'
IMG = re.compile(r"<img src='([^']*)'")
SECTIONS = {"summary": "Summary", "curves": "Robust accuracy against ε", "checks": "Sanity checks",
            "attacks": "Attacks × ε", "privacy": "Privacy: membership inference",
            "poisoning": "Poisoning and backdoors", "examples": "Examples", "reproduce": "Reproduce"}


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """A small real audit of the bundled model: its results.json and its report."""
    out = tmp_path_factory.mktemp("audit")
    result = adverse.evaluation.audit(n=40, eps=(0.1, 0.3), steps=3, checks=False, suites=("evasion",), autoattack=None)
    result.save(out)
    return result.to_dict(), render_report(result.to_dict(), out)


@pytest.fixture(scope="module")
def examples():
    from adverse.data import digits
    from adverse.evasion import pgd
    from adverse.zoo import pretrained

    model, data = pretrained("digits-cnn"), digits("test")
    x, y = data.x[:4], data.y[:4]
    r = pgd(model, x, y, eps=0.3, steps=3, seed=0)
    with torch.no_grad():
        pred = model(r.x_adv).argmax(1)
    return {"x": x.numpy(), "x_adv": r.x_adv.numpy(), "y": y.numpy(), "pred_adv": pred.numpy()}


def _hand_made(base: dict) -> dict:
    """The real results with hostile text, checks that pass, warn and skip, and the privacy and poisoning keys."""
    d = copy.deepcopy(base)
    d["model"]["name"] = EVIL
    d["data"]["name"] = "digits & <friends>"
    d["checks"] = [
        {"name": "gradients", "status": "pass", "message": "input gradients are informative",
         "evidence": {"share_zero": 0.0125, "share_nonfinite": 0.0}},
        {"name": "eps_sweep", "status": "warn", "message": f"robust accuracy stays at 0.42 {EVIL}",
         "evidence": {"eps": [0.1, 0.5, 1.0], "robust_accuracy": [0.61, 0.42, 0.4175], EVIL: 1}},
        {"name": "transfer", "status": "skip", "message": "no surrogate given", "evidence": {}},
    ]
    d["config"]["checks"] = {"eps": 0.3, "n": 40, "steps": 20, "square_max_queries": 1000}
    fpr = np.concatenate([[0.0], np.logspace(-3, 0, 30)])
    d["privacy"] = {"attacks": [
        {"attack": "lira", "auc": 0.7312, "balanced_accuracy": 0.6621, "tpr_at_fpr": {"0.001": 0.0371, "0.01": 0.1283},
         "ci": {"auc": [0.7101, 0.7533], "tpr@0.01": [0.1011, 0.1502]}, "confidence": 0.95, "n_members": 500,
         "n_nonmembers": 500, "roc": {"fpr": fpr.tolist(), "tpr": np.sqrt(fpr).tolist()}, "warnings": []},
        {"attack": EVIL, "auc": 0.5523, "balanced_accuracy": 0.5311, "tpr_at_fpr": {"0.001": 0.0019, "0.01": 0.0147},
         "n_members": 500, "n_nonmembers": 500, "warnings": [f"FPR 0.001 is below the resolution {EVIL}"]},
    ]}
    d["poisoning"] = {"attacks": [
        {"attack": "badnets $\\undefinedmacro$", "poison_rate": rate, "attack_success_rate": asr, "clean_accuracy": 0.9712, "n_poison": k}
        for rate, asr, k in ((0.001, 0.1337, 1), (0.01, 0.8642, 12), (0.05, 0.9931, 60))
    ]}
    return d


@pytest.fixture(scope="module")
def hand_made(audited, examples, tmp_path_factory):
    d = _hand_made(audited[0])
    return d, render_report(d, tmp_path_factory.mktemp("hand"), examples=examples)


def _section_ids(page: str) -> set[str]:
    return set(re.findall(r"<section id='([a-z]+)'>", page))


def _embedded_pngs(path: Path) -> list[bytes]:
    srcs = IMG.findall(path.read_text(encoding="utf-8"))
    assert all(s.startswith("data:image/png;base64,") for s in srcs), [s[:40] for s in srcs]
    return [base64.b64decode(s.split(",", 1)[1], validate=True) for s in srcs]


# --------------------------------------------------------------------------------------------- content
def test_real_audit_report_holds_its_numbers(audited):
    d, path = audited
    page = path.read_text(encoding="utf-8")
    assert _section_ids(page) == {"summary", "curves", "attacks", "reproduce"}  # no checks ran, no other suite
    assert "were not run" in page and "class='warnbox'" not in page
    summary = page.split("<section id='summary'>")[1].split("</section>")[0]
    assert f"{100 * d['clean_accuracy']:.1f}%" in summary
    for w in d["worst_case"]:
        assert f"<b>{100 * w['robust_accuracy']:.1f}%</b><span>worst-case robust accuracy at ε={w['eps']:.4g}" in summary
    rows = page.split("<section id='attacks'>")[1].split("</section>")[0].split("<tr>")[2:]
    assert len(rows) == len(d["attacks"]) + len(d["worst_case"])
    for r in d["attacks"]:
        cells = (f"<td class='r'>{r['eps']:.4g}</td><td class='r'>{100 * r['robust_accuracy']:.1f}%</td>"
                 f"<td class='r'>{r['robust']} / 40</td><td class='r'>{100 * r['success_rate']:.1f}%</td>"
                 f"<td class='r'>{r['forwards']:,}</td><td class='r'>{r['backwards']:,}</td>")
        assert sum(cells in row for row in rows) == 1, cells
    for key, value in d["environment"].items():
        assert f"<td>{key}</td>" in page and str(value).split()[0] in page


def test_reproduce_command_reproduces_the_numbers(audited, tmp_path):
    d, path = audited
    cmd = re.search(r"<pre>(adverse audit [^<]*)</pre>", path.read_text(encoding="utf-8")).group(1)
    assert cmd == ("adverse audit --eps 0.1,0.3 --norm linf --n 40 --steps 3 --seed 0 --suites evasion --autoattack off "
                   "--no-checks")
    res = CliRunner().invoke(app, [*shlex.split(cmd)[1:], "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "results.json").read_text())
    assert [(r["attack"], r["eps"], r["robust"]) for r in again["attacks"]] == \
           [(r["attack"], r["eps"], r["robust"]) for r in d["attacks"]]
    assert (tmp_path / "report.html").is_file() and (tmp_path / "figures" / "robust_accuracy.png").is_file()
    # and so does the Python call
    code = html.unescape(re.search(r"<pre>(import adverse\n[^<]*)</pre>", path.read_text(encoding="utf-8")).group(1))
    scope: dict = {}
    exec(code, scope)  # noqa: S102  (the report's own text, checked to be what it claims)
    assert scope["result"].to_dict()["attacks"] == [{**r, "seconds": s["seconds"]} for r, s in
                                                    zip(d["attacks"], scope["result"].to_dict()["attacks"])]


@pytest.mark.parametrize("which", ["audited", "hand_made"])
def test_every_image_is_an_embedded_png_also_saved(which, request):
    _, path = request.getfixturevalue(which)
    pngs = _embedded_pngs(path)
    files = sorted((path.parent / "figures").glob("*.png"))
    assert len(pngs) == len(files) == (1 if which == "audited" else 4)
    assert sorted(pngs) == sorted(f.read_bytes() for f in files)
    for data in pngs:
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "PNG"
            im.verify()
        with Image.open(io.BytesIO(data)) as im:
            px = np.asarray(im.convert("RGB"))
            assert px.shape[0] > 100 and px.shape[1] > 100 and px.std() > 10  # a drawing, not a blank canvas
    page = path.read_text(encoding="utf-8")
    assert not re.search(r"(src|href)=['\"](?!data:)", page) and "<script" not in page.lower()
    assert not list(path.parent.glob(".*.tmp"))


def test_text_is_escaped(hand_made):
    _, path = hand_made
    page = path.read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert page.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;") >= 6  # title, h1, checks, privacy
    assert "digits &amp; &lt;friends&gt;" in page


def test_warn_checks_privacy_poisoning_and_examples(hand_made):
    d, path = hand_made
    page = path.read_text(encoding="utf-8")
    assert _section_ids(page) == set(SECTIONS)
    summary = page.split("<section id='summary'>")[1].split("</section>")[0]
    assert "class='warnbox'" in summary and "1 sanity check(s) warn (eps_sweep)" in summary
    checks = page.split("<section id='checks'>")[1].split("</section>")[0]
    assert "at ε=0.3 on 40 points" in checks
    for status in ("pass", "warn", "skip"):
        assert f"<span class='{status}'>{status}</span>" in checks
    assert "<li>robust_accuracy: [0.61, 0.42, 0.4175]</li>" in checks and "<li>share_zero: 0.0125</li>" in checks
    privacy = page.split("<section id='privacy'>")[1].split("</section>")[0]
    assert "0.731 [0.710, 0.753]" in privacy and "12.8% [10.1%, 15.0%]" in privacy and "3.7%" in privacy
    assert "<th>TPR at FPR 0.001</th><th>TPR at FPR 0.01</th>" in privacy
    poisoning = page.split("<section id='poisoning'>")[1].split("</section>")[0]
    assert all(s in poisoning for s in ("13.4%", "86.4%", "99.3%", "97.1%"))
    names = {f.name for f in (path.parent / "figures").glob("*.png")}
    assert names == {"robust_accuracy.png", "privacy_roc.png", "poisoning_asr.png", "examples.png"}
    # a report whose checks all pass says so, without the warning
    ok = copy.deepcopy(d)
    ok["checks"] = [c for c in ok["checks"] if c["status"] != "warn"]
    page = render_report(ok, path.parent / "ok").read_text(encoding="utf-8")
    assert "class='okbox'" in page and "class='warnbox'" not in page


def test_bad_arguments(audited, tmp_path):
    d, path = audited
    with pytest.raises(InputError, match="not a folder"):
        render_report(d, path)
    with pytest.raises(InputError, match="x_adv"):
        render_report(d, tmp_path, examples={"x": np.zeros((2, 8, 8))})
    with pytest.raises(InputError, match="dictionary"):
        render_report([d], tmp_path)


# --------------------------------------------------------------------------------------------- the command
def test_report_command_regenerates_the_report(audited, tmp_path):
    d, path = audited
    (tmp_path / "results.json").write_text(json.dumps(d))
    res = CliRunner().invoke(app, ["report", str(tmp_path / "results.json")])
    assert res.exit_code == 0, res.output
    assert "report.html" in res.output
    assert (tmp_path / "report.html").read_text(encoding="utf-8") == path.read_text(encoding="utf-8")
    assert (tmp_path / "figures" / "robust_accuracy.png").read_bytes() == \
           (path.parent / "figures" / "robust_accuracy.png").read_bytes()
    res = CliRunner().invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "elsewhere")])
    assert res.exit_code == 0 and (tmp_path / "elsewhere" / "report.html").is_file()


@pytest.mark.parametrize("text, message", [
    ('{"schema_version": 1, "n": ', "not valid JSON"),
    ('[1, 2]', "JSON object"),
    ('{"schema_version": 99}', "schema_version"),
    ('{"schema_version": 1, "n": 3}', "lack the field"),
    (None, "no such file"),
])
def test_report_command_refuses_bad_json(tmp_path, text, message):
    src = tmp_path / "results.json"
    if text is not None:
        src.write_text(text)
    res = CliRunner().invoke(app, ["report", str(src)])
    assert res.exit_code == 2
    assert message in " ".join(res.output.split())
    assert not (tmp_path / "report.html").exists()


# --------------------------------------------------------------------------------------------- in a browser
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI installs it: apt-get install chromium)")
def test_chromium_renders_the_report(hand_made, tmp_path):
    _, path = hand_made
    # the probes see failures: on a page that throws and holds a broken image, both are caught
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><img src='data:image/png;base64,AAAA'>"
                   f"<script>undefinedFunction();</script>{HARNESS}</body></html>")
    run = chromium("--dump-dom", bad.as_uri())
    assert any("Uncaught" in line for line in console(run.stderr)) and 'data-images="1:1"' in run.stdout

    # one run on a copy of the report, alone in a folder (no figures/ beside it: self-contained), with the image
    # probe appended (the report itself has no script): the DOM holds every section heading, every image
    # decoded, no console message; and a screenshot of the page
    probe, shot = tmp_path / "probe.html", tmp_path / "shot.png"
    probe.write_text(path.read_text(encoding="utf-8").replace("</body>", HARNESS + "</body>"), encoding="utf-8")
    run = chromium("--dump-dom", f"--screenshot={shot}", "--window-size=1200,2000", probe.as_uri())
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    assert console(run.stderr) == []
    for sid, heading in SECTIONS.items():
        assert re.search(rf'<section id="{sid}"><h2>{re.escape(heading)}</h2>', run.stdout), heading
    assert 'data-images="4:0"' in run.stdout  # 4 images, none broken

    # the screenshot is not blank; the warning box and the figure's curves are painted
    with Image.open(shot) as im:
        px = np.asarray(im.convert("RGB")).astype(int)
    assert px.shape[:2] == (2000, 1200) and px.std() > 10
    assert len(np.unique(px.reshape(-1, 3), axis=0)) > 200

    def painted(rgb: tuple[int, int, int]) -> int:
        return int((np.abs(px - np.array(rgb)).sum(-1) <= 12).sum())

    assert painted((255, 244, 214)) > 5000  # the warning box's background (#fff4d6)
    assert painted((31, 119, 180)) > 100  # matplotlib's first line colour: the robustness figure was drawn
