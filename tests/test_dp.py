"""DP-SGD through Opacus: the reported ε against the exact privacy curve of composed Gaussian mechanisms, the
target budget, utility on digits, determinism, Opacus-incompatible layers and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.optimize import brentq
from scipy.stats import norm
from torch import nn

from adverse.data import digits, purchase_like
from adverse.defenses import dp
from adverse.errors import InputError, ModelError
from adverse.zoo import MLP


def small_mlp(seed: int = 0, hidden: tuple[int, ...] = (32,)) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MLP(64, 10, hidden=hidden)


def exact_gaussian_epsilon(mu: float, delta: float) -> float:
    """ε of a μ-GDP mechanism at δ: the root of ``Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2) = δ``.

    T full-batch DP-SGD steps with noise multiplier σ compose to one Gaussian mechanism with ``μ = √T / σ``
    (Dong, Roth & Su 2019, Corollary 2.1 / Balle & Wang 2018, Theorem 8), so this is the exact ε of the run.
    """
    def excess(eps: float) -> float:
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2) - delta

    return brentq(excess, 0.0, 100.0)


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_reported_epsilon_against_exact_full_batch_curve(accountant):
    """Full batches (q = 1): PRV reports the exact ε of the composed Gaussian mechanism; RDP never less."""
    data = digits("train").subset(200)
    r = dp.train_dp(small_mlp(), data, target_epsilon=3.0, delta=1e-3, epochs=8, batch_size=200,
                    accountant=accountant, seed=0)
    assert r.sample_rate == 1.0 and r.steps == 8
    exact = exact_gaussian_epsilon(math.sqrt(r.steps) / r.noise_multiplier, r.delta)
    assert r.epsilon >= exact * (1 - 1e-3)  # no accountant under-reports the privacy spent
    if accountant == "prv":
        assert r.epsilon == pytest.approx(exact, rel=0.02)
    else:
        assert r.epsilon <= exact * 1.5
    assert r.epsilon <= r.target_epsilon * 1.01


@pytest.fixture(scope="module")
def poisson_runs():
    data = digits("train").subset(500)
    return {target: dp.train_dp(small_mlp(), data, target_epsilon=target, delta=1e-4, epochs=2, batch_size=50, seed=0)
            for target in (1.0, 8.0)}


@pytest.mark.parametrize("target", [1.0, 8.0])
def test_poisson_sampled_run_spends_the_target(target, poisson_runs):
    r = poisson_runs[target]
    assert r.sample_rate == pytest.approx(50 / 500)
    assert r.steps == 2 * 10
    assert 0.9 * target <= r.epsilon <= 1.01 * target


def test_more_privacy_more_noise(poisson_runs):
    assert poisson_runs[1.0].noise_multiplier > 2 * poisson_runs[8.0].noise_multiplier


def test_utility_on_digits_at_epsilon_8():
    """ε = 8, δ = 1e-4 on the 1,257 training digits: a useful model (chance is 0.10)."""
    train, test = digits("train"), digits("test")
    r = dp.train_dp(small_mlp(), train, target_epsilon=8.0, delta=1e-4, epochs=10, lr=1.0, batch_size=64, seed=0)
    with torch.no_grad():
        acc = float((r.model(test.x).argmax(1) == test.y).double().mean())
    assert acc >= 0.80
    assert r.epsilon <= 8.0 * 1.01
    assert not r.model.training
    assert all(p.grad is None for p in r.model.parameters())
    assert not any(hasattr(p, "grad_sample") for p in r.model.parameters())  # Opacus' hooks are gone


def test_deterministic_and_no_global_rng():
    data = digits("train").subset(200)
    state = torch.get_rng_state()
    a = dp.train_dp(small_mlp(), data, target_epsilon=4.0, delta=1e-3, epochs=2, batch_size=20, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # neither read nor advanced
    torch.manual_seed(123)  # a different global state must not matter
    b = dp.train_dp(small_mlp(), data, target_epsilon=4.0, delta=1e-3, epochs=2, batch_size=20, seed=3)
    c = dp.train_dp(small_mlp(), data, target_epsilon=4.0, delta=1e-3, epochs=2, batch_size=20, seed=4)
    wa, wb, wc = (torch.cat([p.flatten() for p in r.model.parameters()]) for r in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def bn_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(256, 10))


def test_batchnorm_is_refused_with_the_fix():
    with pytest.raises(ModelError, match=r"BatchNorm.*GroupNorm.*fix=True"):
        dp.train_dp(bn_model(), digits("train").subset(100), target_epsilon=4.0, delta=1e-3, epochs=1)
    with pytest.raises(ModelError, match="GroupNorm"):
        dp.check_dp_compatible(bn_model())


def test_fix_replaces_batchnorm_with_groupnorm():
    model = bn_model()
    r = dp.train_dp(model, digits("train").subset(100), target_epsilon=4.0, delta=1e-3, epochs=1, batch_size=20,
                    fix=True, seed=0)
    assert any(isinstance(m, nn.GroupNorm) for m in r.model.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in r.model.modules())
    assert dp.check_dp_compatible(r.model) is r.model


@pytest.mark.parametrize("kwargs, match", [
    ({"target_epsilon": 0.0}, "target_epsilon"), ({"target_epsilon": -1.0}, "target_epsilon"),
    ({"target_epsilon": float("nan")}, "target_epsilon"), ({"target_epsilon": float("inf")}, "target_epsilon"),
    ({"delta": 0.0}, "delta"), ({"delta": 1.0}, "delta"), ({"delta": float("nan")}, "delta"),
    ({"delta": 0.02}, "1/n"), ({"max_grad_norm": 0.0}, "max_grad_norm"),
    ({"max_grad_norm": float("nan")}, "max_grad_norm"), ({"batch_size": 101}, "batch_size"),
    ({"epochs": 0}, "epochs"), ({"lr": -1.0}, "lr"), ({"accountant": "moments"}, "accountant"),
])
def test_bad_parameters(kwargs, match):
    args = {"target_epsilon": 4.0, "delta": 1e-3, "epochs": 1, **kwargs}
    with pytest.raises(InputError, match=match):
        dp.train_dp(small_mlp(), digits("train").subset(100), **args)


def lira_tpr_at_1_percent(train_fn, x: torch.Tensor, y: torch.Tensor) -> float:
    """Online fixed-variance LiRA against model 0 of 6 trained on complementary halves (4 references)."""
    from adverse.privacy import ReferenceModels, evaluate, lira

    refs = ReferenceModels(train_fn, x, y, n=6, seed=0)
    target, is_member, others = refs.leave_out(0)
    scores = lira(target, x, y, others, pool_index=torch.arange(x.shape[0]), fixed_variance=True).scores
    return evaluate(scores, is_member, n_bootstrap=0).tpr_at_fpr[0.01]


def test_dp_sgd_at_epsilon_8_cuts_lira_tpr_to_a_third():
    """Privacy note §6 E3: DP-SGD at ε ≤ 8 cuts LiRA's TPR at 1 % FPR to ≤ ⅓ of the non-private model's."""
    from adverse.data import Dataset
    from adverse.zoo import train_classifier

    x, y = purchase_like()
    pool_x, pool_y = x[:2000], y[:2000]
    spent: list[float] = []

    def plain(xs: torch.Tensor, ys: torch.Tensor, seed: int) -> nn.Module:
        return train_classifier(MLP(100, 20, (128,)), Dataset(xs, ys, "purchase-like", 20), epochs=20, lr=3e-3,
                                batch_size=128, seed=seed)

    def private(xs: torch.Tensor, ys: torch.Tensor, seed: int) -> nn.Module:
        r = dp.train_dp(MLP(100, 20, (128,)), Dataset(xs, ys, "purchase-like", 20), target_epsilon=8.0,
                        delta=1e-4, epochs=15, lr=1.0, batch_size=128, seed=seed)
        spent.append(r.epsilon)
        return r.model

    tpr_plain = lira_tpr_at_1_percent(plain, pool_x, pool_y)
    tpr_private = lira_tpr_at_1_percent(private, pool_x, pool_y)
    assert tpr_plain >= 0.15  # the non-private model leaks, so the comparison means something
    assert tpr_private <= tpr_plain / 3
    assert max(spent) <= 8.0 * 1.01
