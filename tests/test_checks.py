"""The evaluation checks fire on gradient-masking models and stay quiet on an honest adversarially trained one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adverse.errors import AdverseError
from adverse.evaluation.checks import CHECKS, run_checks


class Quantized(nn.Module):
    """1-bit input quantization inside the model: zero gradients almost everywhere."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.round(x))


class Thresholded(Quantized):
    """Thresholding with no gradient graph at all."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x > 0.5).to(x.dtype))


class SoftmaxOfLargeLogits(Quantized):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(100 * self.net(x), dim=1)


class Noisy(Quantized):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x + 0.05 * torch.randn_like(x))


FAST = dict(eps=0.2, steps=10)
CHEAP = ("output", "determinism", "gradients")


def _status(checks):
    return {c.name: c.status for c in checks}


@pytest.fixture(scope="module")
def points(digits_test):
    return digits_test.x[:100], digits_test.y[:100]


def test_quiet_on_pgd_trained_model(digits_cnn_at, digits_cnn, points):
    x, y = points
    checks = run_checks(digits_cnn_at, x, y, checks=[c for c in CHECKS if c != "black_box"], surrogate=digits_cnn,
                        **FAST)
    assert all(c.status == "pass" for c in checks), [(c.name, c.message, c.evidence) for c in checks]
    sweep = next(c for c in checks if c.name == "eps_sweep")
    assert sweep.evidence["robust_accuracy"][-1] <= 0.05


def test_fires_on_input_quantization(digits_cnn, points):
    x, y = points
    status = _status(run_checks(Quantized(digits_cnn), x, y, checks=CHEAP + ("eps_sweep",), **FAST))
    assert status["gradients"] == "warn"
    assert status["eps_sweep"] == "warn"
    assert status["output"] == "pass" and status["determinism"] == "pass"


def test_transfer_check_fires_when_the_own_gradients_mislead(digits_cnn, points):
    """Rounding inside the model zeroes its gradients; the same network without rounding, as a surrogate, still
    finds adversarial inputs that survive the rounding."""
    x, y = points
    check = run_checks(Quantized(digits_cnn), x, y, checks=("transfer",), surrogate=digits_cnn, eps=0.4, steps=10)[0]
    assert check.status == "warn", check.evidence
    assert check.evidence["transfer_extra_fooled_share"] > 0.2


def test_black_box_check_fires_on_masked_gradients_and_not_on_adversarial_training(digits_cnn, digits_cnn_at,
                                                                                   points):
    x, y = points
    masked = run_checks(Quantized(digits_cnn), x, y, checks=("black_box",), max_queries=300, eps=0.4, steps=10)[0]
    assert masked.status == "warn", masked.evidence
    assert masked.evidence["square_extra_fooled_share"] > 0.2
    honest = run_checks(digits_cnn_at, x, y, checks=("black_box",), max_queries=300, **FAST)[0]
    assert honest.status == "pass", honest.evidence
    assert honest.evidence["white_box_robust_accuracy"] > 0.4  # there were robust points for Square to try


def test_transfer_check_is_skipped_without_a_surrogate(digits_cnn, points):
    x, y = points
    check = run_checks(digits_cnn, x, y, checks=("transfer",), **FAST)[0]
    assert check.status == "skip" and "surrogate" in check.message


def test_fires_on_thresholding_without_graph(digits_cnn, points):
    x, y = points
    status = _status(run_checks(Thresholded(digits_cnn), x, y, checks=CHEAP + ("eps_sweep",), **FAST))
    assert status["gradients"] == "warn"
    assert status["eps_sweep"] in ("warn", "skip")  # the attack refuses a model without gradients


def test_fires_on_softmax_of_large_logits(digits_cnn, points):
    x, y = points
    checks = run_checks(SoftmaxOfLargeLogits(digits_cnn), x, y, checks=CHEAP + ("eps_sweep",), **FAST)
    status = _status(checks)
    assert status["output"] == "warn" and status["gradients"] == "warn"
    assert status["eps_sweep"] == "skip"
    assert "logits" in next(c for c in checks if c.name == "eps_sweep").message


def test_fires_on_randomized_model(digits_cnn, points):
    x, y = points
    assert _status(run_checks(Noisy(digits_cnn), x, y, checks=("determinism",), **FAST))["determinism"] == "warn"


def test_checks_are_json_ready_and_validated(digits_cnn, points):
    x, y = points
    import json

    checks = run_checks(digits_cnn, x, y, checks=CHEAP, **FAST)
    json.dumps([c.to_dict() for c in checks])
    with pytest.raises(AdverseError):
        run_checks(digits_cnn, x, y, checks=("nope",), **FAST)
    with pytest.raises(AdverseError):
        run_checks(digits_cnn, x * 3, y, checks=CHEAP, **FAST)
