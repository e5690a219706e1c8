"""The audit's suites end to end: ``adverse audit`` on the bundled demo with every suite (evasion with its
minimal-norm curve and AutoAttack confirmation, privacy with reference models, poisoning, certify) at reduced
budgets set in a TOML file; the configuration file's checks; suite selection; black-box models; resuming a
finished suite without recomputing it.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from browser import CHROMIUM, HARNESS, chromium, console
from typer.testing import CliRunner

from adverse.cli import app
from adverse.data import digits
from adverse.errors import AdverseError


@pytest.fixture(scope="module")
def digits_train():
    return digits("train")

CONFIG = """
seed = 0
threads = 1
[evasion]
n = 100
eps = [0.05, 0.1, 0.2]
steps = 5
check_n = 50
autoattack_n = 50
[privacy]
n = 150
references = 4
[poisoning]
rates = [0.0, 0.05]
detectors = ["activation_clustering"]
[certify]
n = 40
samples = 200
"""


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The demo audited with every suite through the real command, configured by a TOML file."""
    folder = tmp_path_factory.mktemp("full")
    cfg = folder / "audit.toml"
    cfg.write_text('out = "out"\n' + CONFIG, encoding="utf-8")  # a top-level key goes before the tables
    r = subprocess.run([sys.executable, "-m", "adverse.cli", "audit", "--config", str(cfg), "--json"],
                       capture_output=True, text=True, timeout=1200, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout), folder / "out"


def test_every_suite_ran_with_sane_numbers(full):
    d, out = full
    assert d["suites"] == ["evasion", "privacy", "poisoning", "certify"]
    assert d["config"]["seed"] == 0 and d["n"] == 100
    clean = d["clean_accuracy"]
    assert clean >= 0.9
    worst = [w["robust_accuracy"] for w in d["worst_case"]]
    assert all(a >= b for a, b in itertools.pairwise(worst)) and worst[0] <= clean and worst[-1] < clean - 0.3
    # the minimal-norm curve: one value per sample, falling with eps, close to the fixed-eps worst case
    mn = d["minimal_norm"]
    assert len(mn["norms"]) == 100 and mn["curve"]["robust_accuracy"][0] <= clean + 1e-9
    assert all(a >= b for a, b in itertools.pairwise(mn["curve"]["robust_accuracy"]))
    # AutoAttack at the checks' eps on 50 points never leaves more robust than the audit's attacks claimed
    aa = d["autoattack"]
    assert aa["eps"] == d["config"]["checks"]["eps"] and aa["n"] == 50 and aa["status"] in ("pass", "warn")
    assert aa["combined_robust_accuracy"] <= aa["robust_accuracy"] + 1e-12
    # privacy: AUC ≥ 0.5 for the strongest attack; LiRA and RMIA ran on 4 reference models with their baselines
    rows = {r["attack"]: r for r in d["privacy"]["attacks"]}
    assert set(rows) == {"loss", "confidence", "entropy", "modified_entropy", "lira", "rmia"}
    assert max(r["auc"] for r in rows.values()) >= 0.5
    # [privacy] n = 150 is bounded by [evasion] n = 100: n bounds every suite
    assert all(0.0 <= r["auc"] <= 1.0 and r["n_members"] == r["n_nonmembers"] == 100 for r in rows.values())
    assert d["samples"] == {"evasion": 100, "checks": 50, "minimal_norm": 100, "autoattack": 50, "examples": 8,
                            "privacy": 100, "poisoning": 100, "certify": 40}
    for name in ("lira", "rmia"):
        assert abs(rows[name]["baseline"]["auc"] - 0.5) < 0.12, name  # no membership signal without members
        assert rows[name]["params"]["n_reference"] == 4
    # model inversion: an independent classifier recognises the reconstructions far above the untrained baseline
    inv = d["privacy"]["inversion"]
    assert len(inv["x"]) == 10 and inv["evaluator_accuracy"] >= inv["baseline_evaluator_accuracy"] + 0.3
    # poisoning: the backdoor works at 5 % and not at 0 %; the detector's result is there
    by_rate = {r["poison_rate"]: r for r in d["poisoning"]["attacks"]}
    assert by_rate[0.05]["attack_success_rate"] >= 0.8 and by_rate[0.0]["attack_success_rate"] <= 0.1
    assert by_rate[0.05]["clean_accuracy"] >= clean - 0.05
    assert [r["detector"] for r in d["poisoning"]["detectors"]] == ["activation_clustering"]
    # certify: a proof never beats the attacks
    for method in d["certify"]["methods"]:
        for row in method.get("rows", []):
            assert 0.0 <= row["certified_accuracy"] <= d["certify"]["clean_accuracy"] + 1e-12
    # every suite's time is recorded
    assert {"model", "evasion", "minimal_norm", "autoattack", "privacy", "poisoning", "certify", "total"} <= set(
        d["seconds"])
    assert sorted(p.name for p in out.iterdir()) == ["examples.npz", "figures", "report.html", "results.json"]


def test_report_of_every_suite(full):
    _, out = full
    page = (out / "report.html").read_text(encoding="utf-8")
    for sid in ("summary", "curves", "checks", "privacy", "poisoning", "certify", "examples", "reproduce"):
        assert re.search(rf"<section id='{sid}'>", page), sid
    assert "minimal-norm curve" in page and "AutoAttack (fast) at eps" in page
    assert "<b>Privacy.</b>" in page and "<b>Poisoning.</b>" in page and "<h3>Model inversion</h3>" in page
    with np.load(out / "examples.npz") as z:
        assert z["x"].shape == z["x_adv"].shape == (8, 1, 8, 8)
        eps = float(z["eps"])
        assert np.abs(z["x_adv"] - z["x"]).max() <= eps + 1e-6
    # `adverse report` re-renders the same sections from the JSON, the examples included
    again = out / "again"
    r = CliRunner().invoke(app, ["report", str(out / "results.json"), "--out", str(again)])
    assert r.exit_code == 0, r.output
    page2 = (again / "report.html").read_text(encoding="utf-8")
    assert page2.count("<section id=") == page.count("<section id=") and "id='examples'" in page2


# --------------------------------------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    "text, words",
    [
        ("[evasion]\nepss = [0.1]\n", ["unknown key", "epss"]),
        ("[evasoin]\nn = 3\n", ["unknown table", "evasoin"]),
        ("[evasion]\nn = 'ten'\n", ["n must be int"]),
        ("suites = 'evasion'\n", ["suites must be list"]),
        ("[evasion\n", ["not valid TOML"]),
        ("[privacy]\nreferencez = 4\n", ["unknown privacy option", "referencez"]),
        ("suites = ['evasion', 'privcy']\n", ["unknown suite", "privcy"]),
    ],
)
def test_bad_configuration_is_refused(tmp_path, text, words):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text, encoding="utf-8")
    r = CliRunner().invoke(app, ["audit", "--config", str(cfg), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    for w in words:
        assert w in r.output, (w, r.output)
    assert not (tmp_path / "o" / "results.json").exists()


def test_missing_configuration_file(tmp_path):
    r = CliRunner().invoke(app, ["audit", "--config", str(tmp_path / "none.toml")])
    assert r.exit_code == 2 and "no such configuration file" in r.output


def test_flags_win_over_the_configuration_file(tmp_path):
    from adverse.config import load_config

    cfg = tmp_path / "c.toml"
    cfg.write_text("seed = 3\nout = 'here'\n[evasion]\nn = 30\neps = [0.2]\nsteps = 2\nautoattack = 'off'\n"
                   "minimal_norm = false\nchecks = false\nsuites = 1\n".replace("suites = 1\n", "") +
                   "[model]\nfile = 'm.safetensors'\n", encoding="utf-8")
    loaded = load_config(cfg)
    assert loaded["out"] == str(tmp_path / "here") and loaded["model"]["file"] == str(tmp_path / "m.safetensors")
    cfg.write_text("seed = 3\n[evasion]\nn = 30\neps = [0.2]\nsteps = 2\nautoattack = 'off'\nminimal_norm = false\n"
                   "checks = false\n", encoding="utf-8")
    r = CliRunner().invoke(app, ["audit", "--config", str(cfg), "--suites", "evasion", "--n", "20", "--json",
                                 "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    d = json.loads((tmp_path / "o" / "results.json").read_text())
    assert d["n"] == 20 and d["config"]["seed"] == 3 and d["config"]["eps"] == [0.2]  # --n won; the rest from the file
    assert d["suites"] == ["evasion"] and "minimal_norm" not in d and "autoattack" not in d and not d["checks"]


# --------------------------------------------------------------------------------------------- the Python API
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"suites": ["evasion", "privacy"]}, "training data"),
        ({"suites": ["poisoning"], "train_data": "TRAIN"}, "recipe"),
        ({"suites": ["robustness"]}, "unknown suite"),
        ({"privacy": {"n_refs": 3}}, "unknown privacy option"),
        ({"certify": {"eps": 0.1}}, "unknown certify option"),
        ({"autoattack": "plus"}, "autoattack"),
        ({"recipe": 3}, "recipe must be"),
    ],
)
def test_audit_suite_arguments_are_checked(digits_cnn, digits_test, kwargs, match):
    from adverse.evaluation import audit

    if kwargs.get("train_data") == "TRAIN":
        kwargs = dict(kwargs, train_data=(digits_test.x[:10], digits_test.y[:10]))
    with pytest.raises(AdverseError, match=match):
        audit(digits_cnn, (digits_test.x[:10], digits_test.y[:10]), **kwargs)


def test_user_model_with_training_data_gets_threshold_privacy(digits_cnn, digits_train, digits_test):
    """Training data without a recipe: the privacy suite runs the threshold attacks only; certify runs."""
    from adverse.evaluation import audit

    res = audit(digits_cnn, digits_test.subset(60), train_data=digits_train, eps=(0.1,), steps=2, checks=False,
                autoattack=None, minimal_norm=False, privacy={"n": 60}, certify={"n": 20, "samples": 100})
    assert res.suites == ["evasion", "privacy", "certify"]
    assert [r["attack"] for r in res.privacy["attacks"]] == ["loss", "confidence", "entropy", "modified_entropy"]
    assert all("baseline_note" in r for r in res.privacy["attacks"])
    assert res.data["train"]["n"] == len(digits_train)


def test_a_finished_suite_is_not_recomputed_on_resume(digits_cnn, digits_train, digits_test, tmp_path, monkeypatch):
    """The state keeps each finished part: interrupted in the certify suite, the rerun takes the finished privacy
    suite from the state, and the result equals an uninterrupted run's."""
    import functools

    import adverse.evaluation.privacy_suite as ps
    from adverse.evaluation import audit

    calls = []
    original = ps.privacy_suite

    @functools.wraps(original)  # the audit checks the options against the signature
    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(ps, "privacy_suite", counted)
    data = digits_test.subset(40)
    kw = {"train_data": digits_train, "eps": (0.1,), "steps": 2, "checks": False, "autoattack": None,
          "suites": ["evasion", "privacy", "certify"], "privacy": {"n": 40},
          "certify": {"n": 10, "samples": 100, "n0": 50}}
    whole = audit(digits_cnn, data, **kw)
    assert calls == [1]
    def interrupt(description, done, total):
        if calls and "certif" in description.lower():  # in the certify suite, after privacy returned
            raise KeyboardInterrupt

    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        audit(digits_cnn, data, progress=interrupt, state_dir=tmp_path, **kw)
    assert calls == [1]
    resumed = audit(digits_cnn, data, state_dir=tmp_path, **kw)
    assert calls == [1], "the finished privacy suite was computed again"
    for part in ("privacy", "certify"):
        assert _without_times(getattr(whole, part)) == _without_times(getattr(resumed, part)), part


def _without_times(value):
    """Everything but the timings (``seconds`` anywhere)."""
    if isinstance(value, dict):
        return {k: _without_times(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value


def test_black_box_onnx_model_is_audited_with_square(tmp_path, digits_train, digits_test):
    """An ONNX file without a converter loads as a black box: the audit queries it (Square), skips what needs
    gradients or a torch module, and still runs the threshold privacy attacks."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    from adverse.evaluation import audit
    from adverse.loading import is_black_box, load_model
    from adverse.zoo import MLP, train_classifier

    torch.manual_seed(0)
    net = train_classifier(MLP(64, 10, (32,)), digits_train, epochs=5)
    w1, b1, w2, b2 = (p.detach().numpy() for p in net.parameters())
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["z"], transB=1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 10])],
                              [numpy_helper.from_array(a, k) for a, k in ((w1, "w1"), (b1, "b1"), (w2, "w2"),
                                                                          (b2, "b2"))])
    path = tmp_path / "mlp.onnx"
    onnx.save(helper.make_model(graph), str(path))
    model = load_model(path)
    if not is_black_box(model):
        pytest.skip("onnx2torch is installed: the file loads white-box")
    res = audit(model, digits_test.subset(40), train_data=digits_train, eps=(0.1, 0.3), privacy={"n": 40})
    assert res.suites == ["evasion", "privacy"] and res.model["black_box"] is True
    assert [r["attack"] for r in res.attacks] == ["square", "square"]
    assert res.model["name"] == "mlp.onnx" and all(r["queries"] >= 40 for r in res.attacks)
    assert res.attacks[1]["robust_accuracy"] <= res.attacks[0]["robust_accuracy"] <= res.clean_accuracy
    with torch.no_grad():
        assert res.clean_accuracy * 40 == int((net(digits_test.x[:40]).argmax(1) == digits_test.y[:40]).sum())
    assert not res.checks and res.minimal_norm is None and res.autoattack is None
    with pytest.raises(AdverseError, match="black box"):
        audit(model, digits_test.subset(10), attacks=["pgd"])
    with pytest.raises(AdverseError, match="certify"):
        audit(model, digits_test.subset(10), suites=["certify"])


def test_recipes_and_training_data_on_the_command_line(tmp_path):
    from adverse.loading import load_recipe
    from adverse.zoo import recipe

    assert repr(load_recipe("digits-cnn")) == repr(recipe("digits-cnn"))
    assert load_recipe("adverse.zoo:train_classifier") is not None  # any importable function
    for spec, words in (("no-such-model", "unknown training recipe"), ("adverse.zoo:nothing", "cannot import"),
                        ("adverse.zoo:RECIPES", "not a function")):
        with pytest.raises(AdverseError, match=words):
            load_recipe(spec)
    r = CliRunner().invoke(app, ["audit", "--train-data", "digits:train", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--train-data needs --model" in r.output
    r = CliRunner().invoke(app, ["audit", "--recipe", "no-such-model", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "unknown training recipe" in r.output
    r = CliRunner().invoke(app, ["audit", "--autoattack", "plus", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--autoattack" in r.output


def test_zoo_recipe_trains_what_pretrained_trains():
    """``recipe(name)(digits('train'), seed)`` is the training ``pretrained(name)`` caches (checked on one epoch)."""
    from adverse import zoo

    zoo.RECIPES["one-epoch"] = dict(zoo.RECIPES["digits-cnn"], epochs=1)
    try:
        a = zoo.recipe("one-epoch")(digits("train"), zoo.training_seed("one-epoch"))
        b = zoo.pretrained("one-epoch", cache=False)
    finally:
        del zoo.RECIPES["one-epoch"]
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI installs it: apt-get install chromium)")
def test_chromium_renders_the_report_of_every_suite(full, tmp_path):
    """The real report of every suite, alone in a folder: every section, every image decoded, no console
    message, and a screenshot that is not blank."""
    _, out = full
    probe, shot = tmp_path / "probe.html", tmp_path / "shot.png"
    page = (out / "report.html").read_text(encoding="utf-8")
    probe.write_text(page.replace("</body>", HARNESS + "</body>"), encoding="utf-8")
    run = chromium("--dump-dom", f"--screenshot={shot}", "--window-size=1200,3000", probe.as_uri())
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    assert console(run.stderr) == []
    for sid in ("summary", "curves", "checks", "attacks", "privacy", "poisoning", "certify", "examples",
                "reproduce"):
        assert f'<section id="{sid}">' in run.stdout, sid
    images = page.count("<img ")
    assert images >= 6 and f'data-images="{images}:0"' in run.stdout  # 6 figures (curves, ROC, inversion, poisoning, certify, examples), none broken
    from PIL import Image

    with Image.open(shot) as im:
        px = np.asarray(im.convert("RGB")).astype(int)
    assert px.std() > 10 and len(np.unique(px.reshape(-1, 3), axis=0)) > 200
