"""Cheaper passes (adverse.acceleration): the layout and compiled forward passes change no answer, put the model
back as it was, fall back on a failing compiler, and AutoAttack records and confirms what they did."""

from __future__ import annotations

import importlib
import json
from typing import Any

import pytest
import torch
from resnet_models import cifar_resnet
from torch import nn
from typer.testing import CliRunner

from adverse.acceleration import (
    Accelerated,
    accelerated,
    channels_last_layout,
    channels_last_weights,
    check_mode,
)
from adverse.cli import app
from adverse.errors import InputError
from adverse.evaluation.schema import validate_results
from adverse.evasion import autoattack
from adverse.models import attack_mode


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 4)).eval()


def _data(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


def test_off_changes_nothing():
    model, (x, _) = _cnn(), _data()
    with attack_mode(model), accelerated(model, x, mode="off") as (fast, plan):
        assert fast is model
        assert plan.to_dict() == {"layout": "contiguous", "compiled": False, "timings_ms": {}, "notes": [],
                                  "seconds": 0.0}


def test_auto_does_not_compile_a_short_run():
    model, (x, _) = _cnn(), _data()
    with attack_mode(model), accelerated(model, x, mode="auto", passes=1000) as (fast, plan):
        assert not plan.compiled and plan.layout == "contiguous"  # too short to time the layouts either
        assert "pay for compiling" in plan.notes[0]
        assert torch.equal(fast(x), model(x))


@pytest.mark.parametrize("passes, gradient_passes, layout", [
    (100_000, 0, "channels_last"),  # queries only: the forward pass halves
    (0, 30_000, "contiguous"),  # gradient steps only: 8 % slower
    (100_000, 30_000, "channels_last"),  # both, as in AutoAttack: 1.29x faster in all, though one kind is slower
])
def test_layout_weighs_the_runs_passes(passes, gradient_passes, layout, monkeypatch):
    """With timings scripted (ms per sample: forward 1, forward+backward 3; in channels_last 0.5 and 3.24), the
    layout is chosen by the time of the run's own mix of passes."""
    acceleration = importlib.import_module("adverse.acceleration")
    # the order accelerated() times them in: a forward pass, then rounds of the four (a slow first round, as
    # right after a switch of layout, which the fastest round overrules)
    timed = iter([1.0, 1.2, 3.5, 6.0, 0.9] + [1.0, 3.0, 3.24, 0.5] * (acceleration.LAYOUT_ROUNDS - 1))
    monkeypatch.setattr(acceleration, "per_sample_ms", lambda fn, n, repeats=5: next(timed))
    model, (x, _) = _cnn(), _data()
    with attack_mode(model), accelerated(model, x, mode="auto", passes=passes,
                                         gradient_passes=gradient_passes) as (_, plan):
        assert plan.layout == layout and not plan.compiled
        assert plan.timings_ms == {"forward": 1.0, "forward_backward": 3.0, "forward_backward_channels_last": 3.24,
                                   "forward_channels_last": 0.5}


def test_channels_last_gives_the_same_answers_and_puts_the_model_back():
    model, (x, y) = _cnn(), _data()
    before = [(p, p.data.clone(), p.data.is_contiguous()) for p in model.parameters()]
    with attack_mode(model):
        with torch.no_grad():
            ref = model(x)
        v = x.clone().requires_grad_(True)
        (g_ref,) = torch.autograd.grad(nn.functional.cross_entropy(model(v), y), v)
        fast = Accelerated(model, channels_last=True)
        with channels_last_weights(model, True):
            assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
            with torch.no_grad():
                out = fast(x)
            v = x.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(nn.functional.cross_entropy(fast(v), y), v)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-7)
    for (p, data, contiguous), q in zip(before, model.parameters()):
        assert p is q and torch.equal(q.data, data) and q.data.is_contiguous() == contiguous


def _layouts_seen(model: nn.Module) -> tuple[list[Any], dict[str, bool]]:
    """Hooks recording whether each module's 4-d output and its gradient are channels_last (after any hook
    that converts them: these are registered last)."""
    seen: dict[str, bool] = {}

    def record(name: str):
        def hook(m, inputs, out):
            if out.dim() == 4:
                seen[f"{name} output"] = out.is_contiguous(memory_format=torch.channels_last)
                if out.requires_grad:
                    out.register_hook(lambda g: seen.__setitem__(
                        f"{name} gradient", g.is_contiguous(memory_format=torch.channels_last)))
        return hook
    return [m.register_forward_hook(record(n)) for n, m in model.named_modules() if n], seen


def test_channels_last_layout_keeps_activations_and_gradients_in_it():
    """A one-channel convolution writes its output contiguous, and a flatten sends its gradient back contiguous:
    channels_last_layout finds both and converts them, with the same answers, and removes its hooks on exit."""
    model, (x, y) = _cnn(), _data()
    with attack_mode(model):
        v = x.clone().requires_grad_(True)
        ref = model(v)
        (g_ref,) = torch.autograd.grad(nn.functional.cross_entropy(ref, y), v)
        handles, seen = _layouts_seen(model)
        xc = x.contiguous(memory_format=torch.channels_last)
        with channels_last_weights(model):  # the weights alone: both places leave the layout
            v = xc.clone().requires_grad_(True)
            torch.autograd.grad(nn.functional.cross_entropy(model(v), y), v)
        assert not seen["0 output"] and not seen["2 gradient"]
        for h in handles:
            h.remove()
        with channels_last_layout(model, x) as fixed:
            assert fixed == ["0 (output)", "2 (gradient)"]
            handles, seen = _layouts_seen(model)
            v = xc.clone().requires_grad_(True)
            out = model(v)
            (g,) = torch.autograd.grad(nn.functional.cross_entropy(out, y), v)
            for h in handles:
                h.remove()
        assert seen and all(seen.values()), seen
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-7)
    assert all(not m._forward_hooks for m in model.modules())
    assert all(p.is_contiguous() for p in model.parameters())


def test_channels_last_layout_adds_nothing_where_the_model_keeps_it():
    """A CIFAR ResNet-18 (three input channels, global average pooling to 1×1) stays in channels_last by itself:
    no hook is added, and none is left on exit."""
    torch.manual_seed(0)
    model = cifar_resnet(width=4).eval()
    with attack_mode(model), channels_last_layout(model, torch.rand(5, 3, 32, 32)) as fixed:
        assert fixed == [] and all(not m._forward_hooks for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())


class _Viewing(nn.Module):
    """A forward that calls .view() on a 4-d activation, as much published model code does: it fails on
    channels_last activations."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).view(x.shape[0], -1))


def test_a_model_failing_in_channels_last_keeps_its_layout():
    torch.manual_seed(0)
    model = _Viewing().eval()
    x = torch.rand(16, 3, 8, 8)
    y = model(x).argmax(dim=1)
    with attack_mode(model), accelerated(model, x, mode="on") as (fast, plan):
        assert plan.layout == "contiguous"
        assert "fails in channels_last (RuntimeError: view size is not compatible" in plan.notes[0]
        with torch.no_grad():
            torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-5)
    r = autoattack(model, x, y, eps=0.03, attacks=["apgd-ce"], compile="on")  # raised before
    assert r.params["acceleration"]["layout"] == "contiguous"
    assert all(p.is_contiguous() for p in model.parameters())


def test_compiled_forward_passes_match_and_gradient_passes_run_the_model():
    model, (x, y) = _cnn(), _data()
    with attack_mode(model), accelerated(model, x, mode="on") as (fast, plan):
        if not plan.compiled:  # a machine without a working compiler: the reason is recorded
            assert plan.notes, plan
            pytest.skip(f"torch.compile unavailable here: {plan.notes}")
        assert "forward_compiled" in plan.timings_ms and plan.seconds > 0
        with torch.no_grad():
            torch.testing.assert_close(fast(x[:7]), model(x[:7]), rtol=1e-5, atol=1e-5)  # another batch size
        v = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(nn.functional.cross_entropy(fast(v), y), v)
        w = x.clone().requires_grad_(True)
        (g_ref,) = torch.autograd.grad(nn.functional.cross_entropy(model(w), y), w)
        assert torch.equal(g, g_ref)  # passes with gradients never go through the compiled copy


def test_a_failing_compiler_leaves_the_model_as_it_was(monkeypatch):
    def broken(*_, **__):
        raise RuntimeError("no C++ compiler\nsecond line")

    monkeypatch.setattr(torch, "compile", broken)
    model, (x, _) = _cnn(), _data()
    with attack_mode(model), accelerated(model, x, mode="on") as (fast, plan):
        assert not plan.compiled
        assert plan.notes == ["torch.compile failed (RuntimeError: no C++ compiler); the model runs uncompiled"]
        with torch.no_grad():
            assert torch.equal(fast(x), model(x))


@pytest.mark.parametrize("bad", ["fast", 1, "ON", 0.5])
def test_bad_mode_names_the_argument(bad):
    with pytest.raises(InputError, match="compile must be one of auto, on, off"):
        check_mode(bad)
    model, (x, y) = _cnn(), _data(8)
    with pytest.raises(InputError, match="compile"):
        autoattack(model, x, y, eps=0.1, compile=bad, attacks=["apgd-ce"])


def test_autoattack_records_the_plan_and_finds_the_same_points(digits_cnn_at, digits_test):
    """A forced compile, with one attack of each kind (gradient and score-based), fools the points the uncompiled
    run fools on the PGD-trained digits CNN, and every point it fooled is confirmed by the model itself."""
    x, y = digits_test.x[:40], digits_test.y[:40]
    kw = dict(eps=0.2, attacks=["apgd-ce", "square"], square_queries=200, checks=False)
    off = autoattack(digits_cnn_at, x, y, compile="off", **kw)
    on = autoattack(digits_cnn_at, x, y, compile="on", **kw)
    assert off.params["acceleration"]["compiled"] is False and "unconfirmed" not in off.params["acceleration"]
    acc = on.params["acceleration"]
    assert set(acc) >= {"layout", "compiled", "timings_ms", "notes", "seconds"}
    if not acc["compiled"]:
        pytest.skip(f"torch.compile unavailable here: {acc['notes']}")
    assert acc["unconfirmed"] == 0
    assert 0 < int((on.success & on.clean_correct).sum()) < int(on.clean_correct.sum())
    assert torch.equal(on.success, off.success)
    with torch.no_grad():
        assert bool((digits_cnn_at(on.x_adv[on.success]).argmax(1) != y[on.success]).all())


def test_cli_compile_on_is_recorded_in_results_and_report(tmp_path):
    """``--compile on`` reaches AutoAttack; results.json carries the plan (schema-checked), the report says it."""
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["audit", "--n", "20", "--eps", "0.1", "--steps", "3", "--suites", "evasion",
                                 "--no-checks", "--compile", "on", "--out", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads((out / "results.json").read_text())
    validate_results(d)
    acc = d["autoattack"]["acceleration"]
    assert acc["layout"] in ("contiguous", "channels_last") and isinstance(acc["compiled"], bool)
    assert "forward" in acc["timings_ms"]
    assert "AutoAttack ran with inputs in" in (out / "report.html").read_text()
    bad = dict(d, autoattack=dict(d["autoattack"], acceleration=dict(acc, layout="sideways")))
    with pytest.raises(Exception, match="layout"):
        validate_results(bad)


class _TwoPixels(nn.Module):
    """Logits = (x₀, x₁, −1, −1) for a 1×1×2 image: class 1 wins by x₁ − x₀ (four classes, as DLR needs)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 4)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]))
            self.fc.bias.copy_(torch.tensor([0.0, 0.0, -1.0, -1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_a_reduced_precision_search_never_reports_a_false_adversarial():
    """Oracle: x = (0.5, 0.5 + 2⁻¹⁰) is class 1 by a margin of 2⁻¹⁰ in fp32, and no perturbation of L∞ size 10⁻⁴
    changes that (the margin can shrink by 2·10⁻⁴ at most). In bf16 both pixels round to 0.5, a tie that argmax
    gives to class 0, so every attack of the bf16 search "fools" every point; the fp32 confirmation must undo all
    of them: robust accuracy 1, and the unconfirmed finds counted per attack."""
    model = _TwoPixels().eval()
    x = torch.tensor([[0.5, 0.5 + 2 ** -10]]).repeat(6, 1).reshape(6, 1, 1, 2)
    y = torch.ones(6, dtype=torch.long)
    kw = dict(eps=1e-4, attacks=["apgd-ce", "apgd-t", "fab-t", "square"], square_queries=20, checks=False,
              compile="off")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert bool((model(x).float().argmax(1) == 0).all())  # the premise: bf16 gets every point wrong
    fp32 = autoattack(model, x, y, **kw)
    bf16 = autoattack(model, x, y, precision="bf16", **kw)
    assert fp32.robust_accuracy == 1.0 and bf16.robust_accuracy == 1.0
    assert not bool(bf16.success.any()) and torch.equal(bf16.x_adv, x)
    per = bf16.params["per_attack"]
    assert [p["unconfirmed"] for p in per] == [6, 6, 6, 6] and all(p["fooled"] == 0 for p in per)
    assert bf16.params["acceleration"]["precision"] == "bf16"
    assert bf16.params["acceleration"]["unconfirmed"] == 24
    assert "unconfirmed" not in fp32.params["acceleration"]


def test_bf16_search_on_the_pgd_trained_cnn_is_confirmed_and_as_strong(digits_cnn_at, digits_test):
    """On the PGD-trained digits CNN, AutoAttack searching in bf16 reaches fp32's robust accuracy within 2 of 60
    points (measured on four slices of 60: 0, 2, 0 and 0 apart), and every point it reports is misclassified by the
    fp32 model."""
    x, y = digits_test.x[:60], digits_test.y[:60]
    kw = dict(eps=0.2, attacks=["apgd-ce", "apgd-t"], n_target_classes=3, checks=False, compile="off")
    fp32 = autoattack(digits_cnn_at, x, y, **kw)
    bf16 = autoattack(digits_cnn_at, x, y, precision="bf16", **kw)
    assert abs(int(bf16.success.sum()) - int(fp32.success.sum())) <= 2
    assert 0 < int(bf16.success.sum()) < int(bf16.clean_correct.sum())
    with torch.no_grad():
        assert bool((digits_cnn_at(bf16.x_adv[bf16.success]).argmax(1) != y[bf16.success]).all())
    assert torch.equal(bf16.clean_correct, fp32.clean_correct)  # the clean pass is fp32's


@pytest.mark.parametrize("bad", ["int8", "fp64", "BF16"])
def test_bad_precision_names_the_argument(bad):
    model, (x, y) = _cnn(), _data(8)
    with pytest.raises(InputError, match="precision must be one of fp32, bf16, fp16"):
        autoattack(model, x, y, eps=0.1, precision=bad, attacks=["apgd-ce"])
