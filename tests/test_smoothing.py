"""Randomized smoothing (Cohen et al. 2019): coverage against a linear model whose true radius is known,
Clopper-Pearson against scipy's exact interval, batching, determinism, mode hygiene and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import binom, binomtest, norm
from torch import nn

from adverse.data import digits
from adverse.defenses import smoothing
from adverse.errors import AdverseError, InputError
from adverse.zoo import MLP


class Halfspace(nn.Module):
    """Binary logits ``(−s, s)`` with ``s = w·x + b``: the smoothed classifier is known in closed form.

    ``P(f(x + δ) = 1) = Φ(s / (σ‖w‖))``, so ``g(x) = [s > 0]`` and its exact L2 radius is ``|s| / ‖w‖``.
    """

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(w)
        self.b = nn.Parameter(torch.tensor(b, dtype=w.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1) @ self.w + self.b
        return torch.stack([-s, s], dim=1)


def halfspace_problem(trials: int, d: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    model = Halfspace(w, float(-0.5 * w.sum()))
    x = 0.25 + 0.5 * torch.rand((trials, 1, 8, 8), generator=g, dtype=torch.float64)
    with torch.no_grad():
        s = x.flatten(1) @ w + model.b
    return model, x, (s > 0).long(), s.abs() / w.norm()


def wrong_rate(cert: smoothing.Certificates, true_class: torch.Tensor, true_radius: torch.Tensor) -> float:
    """Share of certificates that name the wrong class or claim more than the true radius (abstain = not wrong)."""
    issued = cert.prediction >= 0
    wrong = issued & ((cert.prediction != true_class) | (cert.radius > true_radius + 1e-9))
    return float(wrong.double().mean())


def exact_wrong_rate(true_radius: torch.Tensor, sigma: float, n: int, alpha: float) -> tuple[float, float]:
    """Expected share of over-claimed radii and its standard deviation over the trials, from binomial sums.

    Trial i fails when ``p_lower(n_A) > p_A,i`` with ``n_A ~ Bin(n, p_A,i)``, ``p_A,i = Φ(R*_i / σ)``.
    """
    p_a = norm.cdf((true_radius / sigma).numpy())
    k = np.arange(n + 1)
    over = smoothing.lower_confidence_bound(k, n, alpha)[None, :] > p_a[:, None]
    fail = (binom.pmf(k[None, :], n, p_a[:, None]) * over).sum(axis=1)
    return float(fail.mean()), float(np.sqrt((fail * (1 - fail)).sum()) / len(fail))


def test_coverage_on_halfspace():
    """Theorem 1: over 2,000 trials the share of wrong certificates is at most alpha (alpha 0.1, n 100)."""
    sigma, alpha, n = 0.15, 0.1, 100
    model, x, true_class, true_radius = halfspace_problem(2_000)
    cert = smoothing.certify(model, x, sigma=sigma, n0=100, n=n, alpha=alpha, batch_size=20_000, seed=1)
    rate = wrong_rate(cert, true_class, true_radius)
    expected, sd = exact_wrong_rate(true_radius, sigma, n, alpha)
    assert alpha - expected > 4 * sd  # so "rate ≤ alpha" is a sharp check, not luck
    assert rate <= alpha
    assert abs(rate - expected) <= 4 * sd
    # the trials are informative: most inputs get a certificate, and radii are tight, not trivially small
    issued = cert.prediction >= 0
    assert float(issued.double().mean()) > 0.6
    assert float((cert.radius[issued] / true_radius[issued]).median()) > 0.5


@pytest.mark.parametrize("alpha, n", [(0.01, 100), (0.01, 1_000), (0.001, 1_000), (0.001, 5_000)])
def test_expected_wrong_rate_is_below_alpha(alpha, n):
    """The exact expected share of wrong certificates over the 2,000 halfspace inputs is ≤ alpha."""
    _, _, _, true_radius = halfspace_problem(2_000)
    expected, _ = exact_wrong_rate(true_radius, 0.15, n, alpha)
    assert expected <= alpha


def test_coverage_at_small_alpha_matches_the_exact_rate():
    """alpha 0.01, n 1,000: the realized rate of 2,000 trials agrees with the exact expected rate (≤ alpha).

    The expected rate here is 0.0088, within one standard deviation (0.0021) of alpha, so a single run of 2,000
    trials may land above alpha by chance; the check is agreement with the exact rate.
    """
    sigma, alpha, n = 0.15, 0.01, 1_000
    model, x, true_class, true_radius = halfspace_problem(2_000)
    cert = smoothing.certify(model, x, sigma=sigma, n0=100, n=n, alpha=alpha, batch_size=20_000, seed=1)
    expected, sd = exact_wrong_rate(true_radius, sigma, n, alpha)
    assert expected <= alpha
    assert abs(wrong_rate(cert, true_class, true_radius) - expected) <= 4 * sd


def test_coverage_test_has_power():
    """The same trials with the point estimate p̂ = nA/n in place of the lower bound fail far above alpha."""
    sigma, alpha, n = 0.15, 0.1, 100
    model, x, true_class, true_radius = halfspace_problem(2_000)
    cert = smoothing.certify(model, x, sigma=sigma, n0=100, n=n, alpha=alpha, batch_size=20_000, seed=1)
    p_hat = (cert.counts.double() / n).clamp(max=1 - 1e-12)
    naive = smoothing.Certificates(
        prediction=torch.where(p_hat > 0.5, cert.prediction.clamp_min(0), torch.full_like(cert.prediction, -1)),
        radius=torch.as_tensor(sigma * norm.ppf(p_hat.clamp_min(0.5).numpy())),
        p_lower=p_hat, counts=cert.counts, sigma=sigma, n0=100, n=n, alpha=alpha, seed=1,
    )
    assert wrong_rate(naive, true_class, true_radius) > 3 * alpha


@pytest.mark.parametrize("n_a, n, alpha", [(0, 100, 0.01), (1, 100, 0.05), (57, 100, 0.001), (100, 100, 0.001),
                                           (9_990, 10_000, 0.001), (50_000, 100_000, 0.1)])
def test_clopper_pearson_matches_scipy_exact_interval(n_a, n, alpha):
    """One-sided (1 − alpha) lower bound = lower end of scipy's exact two-sided (1 − 2 alpha) interval."""
    expected = binomtest(n_a, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
    got = float(smoothing.lower_confidence_bound(np.array([n_a]), n, alpha)[0])
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)


class Constant(nn.Module):
    def __init__(self, cls: int, classes: int = 3) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(classes))
        with torch.no_grad():
            self.logits[cls] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1)


def test_constant_model_reaches_max_radius():
    cert = smoothing.certify(Constant(2), torch.full((4, 3), 0.5), sigma=0.5, n0=10, n=10_000, alpha=0.001, seed=0)
    assert cert.prediction.tolist() == [2, 2, 2, 2]
    expected = 0.5 * norm.ppf(0.001 ** (1 / 10_000))
    assert torch.allclose(cert.radius, torch.full((4,), expected))
    assert cert.max_radius == pytest.approx(expected)
    with pytest.warns(UserWarning, match="exceeds the largest certifiable radius"):
        assert cert.certified_accuracy(torch.tensor([2, 2, 2, 2]), radius=2.0) == 0.0


def test_abstentions_count_as_failures():
    cert = smoothing.Certificates(prediction=torch.tensor([1, -1, 0, 1]), radius=torch.tensor([0.3, 0.0, 0.1, 0.9]),
                                  p_lower=torch.zeros(4), counts=torch.zeros(4), sigma=0.25, n0=1, n=100_000,
                                  alpha=0.001, seed=0)
    y = torch.tensor([1, 0, 0, 0])
    assert cert.certified_accuracy(y, 0.0) == 0.5
    assert cert.certified_accuracy(y, 0.2) == 0.25
    with pytest.raises(InputError, match="labels"):  # a label of -1 would match an abstention
        cert.certified_accuracy(torch.tensor([1, -1, 0, 0]))


def test_predict_on_halfspace():
    model, x, true_class, true_radius = halfspace_problem(300, seed=3)
    pred = smoothing.predict(model, x, sigma=0.15, n=1_000, alpha=0.001, batch_size=50_000, seed=0)
    issued = pred >= 0
    assert bool((pred[issued] == true_class[issued]).all())
    far = true_radius > 0.15 * 0.5  # p_A ≥ Φ(0.5) = 0.69: the test should almost never abstain
    assert float(issued[far].double().mean()) > 0.95


def test_predict_wrong_answer_rate_on_the_boundary():
    """Proposition 1: on the decision boundary (p_A = p_B = ½) any answer is wrong; it comes with rate ≤ alpha."""
    model, x, _, _ = halfspace_problem(1, seed=4)
    w = model.w.detach()
    x0 = x[0].flatten() - ((x[0].flatten() @ w + model.b.detach()) / (w @ w)) * w  # project onto s = 0
    xs = x0.reshape(1, 1, 8, 8).expand(1_000, -1, -1, -1).clamp(0, 1)
    alpha = 0.05
    pred = smoothing.predict(model, xs, sigma=0.15, n=100, alpha=alpha, batch_size=50_000, seed=5)
    rate = float((pred >= 0).double().mean())
    assert rate <= alpha + 3 * (alpha * (1 - alpha) / 1_000) ** 0.5


class Spy(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        return self.inner(x)


def test_noise_is_drawn_in_bounded_batches():
    spy = Spy(MLP(12, 3, hidden=(8,)))
    x = torch.rand(3, 1, 3, 4, generator=torch.Generator().manual_seed(0))
    smoothing.certify(spy, x, sigma=0.25, n0=50, n=5_000, batch_size=256, seed=0)
    assert max(spy.sizes) <= 256
    assert sum(spy.sizes) == 3 * (50 + 5_000)


def test_deterministic_and_no_global_rng():
    model, x, _, _ = halfspace_problem(20, seed=6)
    state = torch.get_rng_state()
    a = smoothing.certify(model, x, sigma=0.2, n0=20, n=500, alpha=0.01, batch_size=333, seed=7)
    b = smoothing.certify(model, x, sigma=0.2, n0=20, n=500, alpha=0.01, batch_size=333, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.prediction, b.prediction) and torch.equal(a.radius, b.radius)
    c = smoothing.predict(model, x, sigma=0.2, n=500, seed=torch.Generator().manual_seed(7))
    d = smoothing.predict(model, x, sigma=0.2, n=500, seed=torch.Generator().manual_seed(7))
    assert torch.equal(c, d)
    assert torch.equal(torch.get_rng_state(), state)


def test_model_state_left_as_found(tiny_net):
    tiny_net.train()
    before = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    flags = [p.requires_grad for p in tiny_net.parameters()]
    x = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    smoothing.certify(tiny_net, x, sigma=0.25, n0=10, n=100, seed=0)
    smoothing.predict(tiny_net, x, sigma=0.25, n=100, seed=0)
    assert tiny_net.training and all(m.training for m in tiny_net.modules())
    assert [p.requires_grad for p in tiny_net.parameters()] == flags
    assert all(p.grad is None for p in tiny_net.parameters())
    after = tiny_net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_noise_trained_digits_mlp_certifies():
    """Gaussian augmentation at σ = 0.25 (E3): most test digits certified, many beyond radius 0.25."""
    train, test = digits("train"), digits("test")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MLP(64, 10, hidden=(128,))
    smoothing.train_noisy(model, train, sigma=0.25, epochs=10, seed=0)
    x, y = test.x[:100], test.y[:100]
    cert = smoothing.certify(model, x, sigma=0.25, n0=100, n=1_000, alpha=0.001, batch_size=10_000, seed=0)
    assert cert.certified_accuracy(y, 0.0) >= 0.85
    assert cert.certified_accuracy(y, 0.25) >= 0.6
    assert cert.certified_accuracy(y, 0.5) < cert.certified_accuracy(y, 0.25)


@pytest.mark.parametrize("kwargs, match", [
    ({"sigma": -0.1}, "sigma"), ({"sigma": 0.0}, "sigma"), ({"sigma": float("nan")}, "sigma"),
    ({"sigma": float("inf")}, "sigma"), ({"sigma": 64.0}, "input units"),
    ({"alpha": 0.0}, "alpha"), ({"alpha": 1.0}, "alpha"), ({"alpha": -0.5}, "alpha"),
    ({"alpha": float("nan")}, "alpha"),
    ({"n0": 200, "n": 100}, "n0"), ({"n0": 0}, "n0"), ({"n": 0}, "n "), ({"n": 10.5}, "n "),
    ({"batch_size": 0}, "batch_size"),
])
def test_bad_parameters(kwargs, match):
    model, x, _, _ = halfspace_problem(2)
    args = {"sigma": 0.25, "n0": 10, "n": 100, "alpha": 0.01, **kwargs}
    with pytest.raises(InputError, match=match):
        smoothing.certify(model, x, **args)


@pytest.mark.parametrize("fn", [smoothing.certify, smoothing.predict])
def test_bad_inputs(fn):
    model, x, _, _ = halfspace_problem(2)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(AdverseError, match="NaN"):
        fn(model, bad, sigma=0.25, n=100)
    with pytest.raises(AdverseError, match="outside bounds"):
        fn(model, x + 2, sigma=0.25, n=100)
    with pytest.raises(AdverseError, match="alpha"):
        fn(model, x, sigma=0.25, n=100, alpha=2.0)
