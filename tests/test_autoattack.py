"""AutoAttack: worst case per sample, later attacks only on robust points, resumable state, versions."""

from __future__ import annotations

import pytest
import torch

from adverse.errors import AdverseError
from adverse.evasion.ensemble import EOT, autoattack, versions


def _cheap(name, steps, calls=None, fail_on_call=None):
    from adverse.evasion import apgd

    def run(model, x, y, *, eps, norm, bounds, seed):
        if calls is not None:
            calls.append((name, x.shape[0]))
            if fail_on_call is not None and len(calls) == fail_on_call:
                raise KeyboardInterrupt
        return apgd(model, x, y, eps=eps, norm=norm, steps=steps, loss=name, bounds=bounds, seed=seed)

    return (name, run)


def test_standard_version_is_the_reference_plan():
    names = [n for n, _ in versions("linf")["standard"]]
    assert names == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert [n for n, _ in versions("l2")["plus"]] == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]


def test_worst_case_and_only_robust_points_attacked(digits_cnn_at, digits_test):
    x, y = digits_test.x[:80], digits_test.y[:80]
    calls = []
    r = autoattack(digits_cnn_at, x, y, eps=0.2, attacks=[_cheap("ce", 10, calls), _cheap("dlr", 10, calls)])
    per = r.params["per_attack"]
    assert calls[0][1] == int(r.clean_correct.sum())  # the first attack sees every correctly classified point
    assert calls[1][1] == per[0]["attacked"] - per[0]["fooled"]  # the second only those still robust
    assert per[1]["robust_accuracy"] == pytest.approx(r.robust_accuracy)
    assert per[1]["robust_accuracy"] <= per[0]["robust_accuracy"]
    with torch.no_grad():
        pred = digits_cnn_at(r.x_adv).argmax(1)
    assert torch.equal(r.success, pred != y)  # every reported error is real, every robust point is classified right
    assert bool(((r.x_adv - x).abs().flatten(1).amax(1) <= 0.2 + 1e-6).all())
    assert bool((r.x_adv >= 0).all() and (r.x_adv <= 1).all())


def test_resume_after_interruption_equals_uninterrupted_run(digits_cnn_at, digits_test, tmp_path):
    x, y = digits_test.x[:60], digits_test.y[:60]
    full = autoattack(digits_cnn_at, x, y, eps=0.2, attacks=[_cheap("ce", 10), _cheap("dlr", 10)])
    state = tmp_path / "aa.pt"
    calls = []
    with pytest.raises(KeyboardInterrupt):
        autoattack(digits_cnn_at, x, y, eps=0.2, state_path=state,
                   attacks=[_cheap("ce", 10, calls, fail_on_call=2), _cheap("dlr", 10, calls, fail_on_call=2)])
    assert state.is_file() and len(calls) == 2
    calls.clear()
    resumed = autoattack(digits_cnn_at, x, y, eps=0.2, state_path=state,
                         attacks=[_cheap("ce", 10, calls), _cheap("dlr", 10, calls)])
    assert [c[0] for c in calls] == ["dlr"]  # the finished attack is not run again
    assert torch.equal(resumed.success, full.success)
    assert torch.equal(resumed.x_adv, full.x_adv)
    # a different budget does not reuse the state
    calls.clear()
    autoattack(digits_cnn_at, x, y, eps=0.1, state_path=state, attacks=[_cheap("ce", 5, calls)])
    assert [c[0] for c in calls] == ["ce"]


def test_eot_averages_outputs_and_gradients():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)

    class Noisy(torch.nn.Module):
        def forward(self, x):
            return net(x) + torch.randn(x.shape[0], 3)

    x = torch.rand(5, 4)
    m = EOT(Noisy(), samples=2000)
    assert torch.allclose(m(x), net(x), atol=0.1)


def test_bad_arguments(digits_cnn, digits_test):
    x, y = digits_test.x[:4], digits_test.y[:4]
    with pytest.raises(AdverseError):
        autoattack(digits_cnn, x, y, eps=0.1, version="fast")
    with pytest.raises(AdverseError):
        autoattack(digits_cnn, x, y, eps=0.1, attacks=["pgd-7"])
    with pytest.raises(AdverseError):
        autoattack(digits_cnn, x, y, eps=-0.1)
    with pytest.raises(AdverseError):
        autoattack(digits_cnn, x, y, eps=0.1, norm="l3")


class _Rounded(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.round(x))


class _Noisy(_Rounded):
    def forward(self, x):
        return self.net(x + 0.05 * torch.randn_like(x))


def test_flags_masked_gradients_and_randomness(digits_cnn, digits_cnn_at, digits_test):
    x, y = digits_test.x[:30], digits_test.y[:30]
    plan = [_cheap("ce", 5)]
    honest = autoattack(digits_cnn_at, x, y, eps=0.2, attacks=plan)
    assert honest.params["flags"] == [] and {c["status"] for c in honest.params["checks"]} == {"pass"}
    masked = autoattack(_Rounded(digits_cnn), x, y, eps=0.2, attacks=plan)
    assert any("gradients are zero" in f for f in masked.params["flags"])
    noisy = autoattack(_Noisy(digits_cnn), x, y, eps=0.2, attacks=plan)
    assert any("randomized" in f and "version='rand'" in f for f in noisy.params["flags"])
    quiet = autoattack(_Noisy(digits_cnn), x, y, eps=0.2, attacks=plan, checks=False)
    assert quiet.params["flags"] == [] and quiet.params["checks"] == []
