"""Issue 14 (part): ``--device``, ``--batch-size`` and ``--precision`` (autocast for the model, the rest in fp32,
a check against fp32 that catches changed numbers and fp16 gradient underflow), budgets written as fractions
(``--eps 8/255``), the attacks table in words, and the bad input for each."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import adverse as adv
from adverse.cli import app
from adverse.errors import InputError
from adverse.evaluation.checks import check_precision
from adverse.evaluation.report import settings_in_words
from adverse.models import Autocast, as_classifier, resolve_device

FAST = {"eps": (0.1,), "n": 40, "steps": 5, "checks": False, "autoattack": None, "suites": ["evasion"],
        "minimal_norm": False, "examples": False}


@pytest.fixture(scope="module")
def model_and_data():
    return adv.zoo.pretrained("digits-cnn"), adv.data.digits("test")


def _numbers(r):
    return r.clean_accuracy, [(a["attack"], a["robust"]) for a in r.attacks], [w["robust"] for w in r.worst_case]


def test_explicit_cpu_device_and_batch_size_give_the_same_numbers(model_and_data):
    model, test = model_and_data
    plain = adv.audit(model, test, **FAST)
    on_cpu = adv.audit(model, test, device="cpu", **FAST)
    assert _numbers(on_cpu) == _numbers(plain)
    assert next(model.parameters()).device.type == "cpu"
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu") or \
        resolve_device("auto").type == "mps"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_runs_on_cpu_and_is_checked_against_fp32(model_and_data, precision):
    model, test = model_and_data
    wrapped = Autocast(model, precision)
    x = test.x[:8]
    assert wrapped(x).dtype == torch.float32  # logits come back in fp32 for the losses
    with torch.no_grad():
        assert (wrapped(x).argmax(1) == model(x).argmax(1)).float().mean() >= 0.75
    r = adv.audit(model, test, precision=precision, **FAST)
    check = next(c for c in r.checks if c["name"] == "precision")
    assert check["evidence"]["precision"] == precision and check["evidence"]["n"] == 40
    assert check["evidence"]["fp32"]["robust_accuracy"] == pytest.approx(
        _pgd_robust(model, test.x[:40], test.y[:40], check["evidence"]["eps"]))
    assert abs(check["evidence"]["difference"]) <= 1 and check["status"] in ("pass", "warn")
    assert r.config["precision"] == precision
    assert (check["status"] == "warn") == (abs(check["evidence"]["difference"]) > 0.01
                                           or check["evidence"][precision]["zero_gradient_share"]
                                           > check["evidence"]["fp32"]["zero_gradient_share"])


def _pgd_robust(model, x, y, eps):
    from adverse.evasion import pgd

    return float((~pgd(model, x, y, eps=eps, steps=20, seed=0).success).float().mean())


def test_fp16_gradient_underflow_is_detected_and_reported():
    """Two linear layers with weights scaled by 1e-4: the input gradient is ~1e-9 — fine in fp32 and bf16, zero
    after fp16's backward matrix products (fp16 has no numbers below 6e-8)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    with torch.no_grad():
        model[1].weight.mul_(1e-4)
        model[3].weight.mul_(1e-4)
        model[1].bias.fill_(0.1)
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    fp16 = check_precision(as_classifier(model), Autocast(model, "fp16"), x, y, eps=0.1, norm="linf", steps=5)
    assert fp16.status == "warn" and "underflow" in fp16.message
    assert fp16.evidence["fp16"]["zero_gradient_share"] == 1.0 and fp16.evidence["fp32"]["zero_gradient_share"] == 0
    bf16 = check_precision(as_classifier(model), Autocast(model, "bf16"), x, y, eps=0.1, norm="linf", steps=5)
    assert bf16.evidence["bf16"]["zero_gradient_share"] == 0.0  # bf16 keeps fp32's exponent range


def test_cli_device_batch_size_precision_and_fraction_budgets(tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["audit", "--n", "24", "--eps", "8/255,0.1", "--steps", "3", "--suites", "evasion",
                                 "--autoattack", "off", "--no-checks", "--device", "cpu", "--batch-size", "10",
                                 "--precision", "bf16", "--out", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads((out / "results.json").read_text())
    assert d["config"]["eps"] == [8 / 255, 0.1] and d["config"]["batch_size"] == 10
    assert d["config"]["precision"] == "bf16" and d["environment"]["device"] == "cpu"
    assert [c["name"] for c in d["checks"]] == ["precision"]
    page = (out / "report.html").read_text()
    assert "--precision bf16 --batch-size 10" in page and "3 steps of size" in page  # reproducible; settings in words


@pytest.mark.parametrize(("args", "message"), [
    (["--device", "cuda:7" if torch.cuda.is_available() else "cuda"], "CUDA"),
    (["--device", "tpu"], "not a device name"),
    (["--eps", "8/0"], "denominator must be a finite number > 0"),
    (["--eps", "8/255/2"], "is not a number or a fraction"),
    (["--batch-size", "0"], "--batch-size"),
    (["--precision", "fp8"], "--precision must be fp32, bf16 or fp16"),
    (["--compile", "fast"], "--compile must be auto, on or off"),
])
def test_bad_device_precision_batch_size_and_eps_exit_2(tmp_path, args, message):
    r = CliRunner().invoke(app, ["audit", *args, "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    assert message in r.output.replace("\n", " ").replace("  ", " ") or message in r.output
    assert not (tmp_path / "o" / "results.json").exists()


def test_python_refuses_bad_precision_and_device(model_and_data):
    model, test = model_and_data
    with pytest.raises(InputError, match="precision must be one of fp32, bf16, fp16"):
        adv.audit(model, test, precision="half", **FAST)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="sees no CUDA GPU"):
            adv.audit(model, test, device="cuda", **FAST)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_audit_matches_cpu_and_moves_the_model_back(model_and_data):
    model, test = model_and_data
    cpu = adv.audit(model, test, **FAST)
    gpu = adv.audit(model, test, device="cuda", **FAST)
    assert gpu.clean_accuracy == cpu.clean_accuracy
    assert all(abs(a["robust"] - b["robust"]) <= 1 for a, b in zip(gpu.attacks, cpu.attacks, strict=True))
    assert next(model.parameters()).device.type == "cpu"


def test_attack_settings_in_words():
    assert settings_in_words({"steps": 5, "alpha": 0.025, "restarts": 1, "loss": "ce", "random_start": True,
                              "early_stop": True}) == \
        "5 steps of size 0.025, 1 restart, cross-entropy loss, random start, early stop"
    assert settings_in_words({"steps": 100, "loss": "dlr", "n_target_classes": 9}) == \
        "100 steps, 9 target classes, difference of logits ratio loss"
    assert settings_in_words({"eps": 0.1, "norm": "linf"}) == "single step"
    assert settings_in_words("not a mapping") == ""
