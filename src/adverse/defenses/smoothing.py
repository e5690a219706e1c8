"""Randomized smoothing: an L2 certificate for any classifier (Cohen, Rosenfeld & Kolter 2019).

The smoothed classifier ``g(x) = argmax_c P(f(x + δ) = c)``, ``δ ~ N(0, σ² I)``, returns class ``c_A`` with
probability ``p_A``; if ``p_A ≥ p_A_lower > ½`` then ``g`` is constant within the L2 ball of radius
``R = σ Φ⁻¹(p_A_lower)``. :func:`certify` estimates ``p_A_lower`` by Monte Carlo with **separate** selection
(``n0``) and estimation (``n``) samples and a one-sided Clopper-Pearson bound (``scipy.stats.beta``), so the
certificate is wrong with probability at most ``alpha``. :func:`predict` is the paper's PREDICT: a two-sided
binomial test (``scipy.stats.binomtest``) between the two most frequent classes. Both abstain with class ``-1``.

Noise is drawn in batches of at most ``batch_size`` noisy inputs on the model's device, several inputs sharing
a batch when ``n`` is small, so memory is O(batch_size × input), never O(n × input).

References
----------
Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized Smoothing", ICML 2019.
Clopper & Pearson, "The use of confidence or fiducial limits illustrated in the case of the binomial",
Biometrika 1934.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import beta, binomtest, norm
from torch import nn

from ..data import Dataset
from ..errors import InputError
from ..evasion._core import check_inputs, make_generator
from ..models import as_classifier, attack_mode
from ..zoo import train_classifier

# σ larger than this many input ranges is almost surely given in the wrong units (e.g. 0–255 pixels).
_SIGMA_RANGES = 4.0


@dataclass
class Certificates:
    """What :func:`certify` returns, one entry per input.

    Attributes
    ----------
    prediction : the certified class ``ĉ_A``, or ``-1`` where the smoothed classifier abstains.
    radius : the certified L2 radius ``σ Φ⁻¹(p_A_lower)``; 0 where it abstains.
    p_lower : the one-sided ``1 − alpha`` Clopper-Pearson lower bound on ``p_A``.
    counts : how many of the ``n`` estimation samples the model put in class ``ĉ_A``.
    sigma, n0, n, alpha : the parameters used; ``seed`` the seed.
    """

    prediction: torch.Tensor
    radius: torch.Tensor
    p_lower: torch.Tensor
    counts: torch.Tensor
    sigma: float
    n0: int
    n: int
    alpha: float
    seed: int | None

    @property
    def max_radius(self) -> float:
        """The largest radius these parameters can certify: ``σ Φ⁻¹(alpha^(1/n))`` (all n samples agree)."""
        return max_radius(self.sigma, self.n, self.alpha)

    def certified_accuracy(self, y: torch.Tensor, radius: float = 0.0) -> float:
        """Fraction of inputs certified correct at L2 ``radius``; abstentions count as failures.

        Warns when ``radius`` exceeds :attr:`max_radius`, where the answer is 0 by construction.
        """
        y = torch.as_tensor(y, device=self.prediction.device)
        if y.shape != self.prediction.shape:
            raise InputError(f"y must have shape {tuple(self.prediction.shape)}, got {tuple(y.shape)}")
        if y.is_floating_point() or bool((y < 0).any()):
            raise InputError("labels y must be integer class indices ≥ 0 (−1 marks an abstention)")
        if radius > self.max_radius:
            warnings.warn(
                f"radius {radius:g} exceeds the largest certifiable radius σ·Φ⁻¹(alpha^(1/n)) = "
                f"{self.max_radius:.4g} for sigma={self.sigma}, n={self.n}, alpha={self.alpha}; certified accuracy "
                "there is 0 by construction: raise n or sigma",
                stacklevel=2,
            )
        ok = (self.prediction == y) & (self.radius >= radius)
        return float(ok.double().mean())


def max_radius(sigma: float, n: int, alpha: float) -> float:
    """``σ Φ⁻¹(alpha^(1/n))``: the radius certified when all ``n`` estimation samples agree."""
    return float(sigma * norm.ppf(alpha ** (1.0 / n)))


def lower_confidence_bound(n_a: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """One-sided ``(1 − alpha)`` Clopper-Pearson lower bound on a binomial proportion, ``nA`` of ``n``.

    ``p_lower = Beta⁻¹(alpha; nA, n − nA + 1)`` (and 0 when ``nA = 0``); equal to the lower end of the two-sided
    ``1 − 2 alpha`` interval that the reference code takes from statsmodels.
    """
    n_a = np.asarray(n_a, dtype=np.float64)
    safe = np.maximum(n_a, 1.0)
    return np.where(n_a > 0, beta.ppf(alpha, safe, n - n_a + 1.0), 0.0)


def _check(model: nn.Module, x: torch.Tensor, sigma: float, alpha: float, batch_size: int,
           bounds: tuple[float, float]) -> None:
    check_inputs(x, torch.zeros(x.shape[0] if torch.is_tensor(x) and x.dim() else 0, dtype=torch.long), bounds)
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module returning logits, got {type(model).__name__}")
    lo, hi = bounds
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise InputError(f"sigma must be a finite number > 0, got {sigma!r}")
    if sigma > _SIGMA_RANGES * (hi - lo):
        raise InputError(
            f"sigma={sigma} is more than {_SIGMA_RANGES:g}× the input range {bounds}: give sigma in input units "
            f"(for [0, 1] images sigma=0.5, not 127)"
        )
    if not (isinstance(alpha, float | int) and 0 < alpha < 1):
        raise InputError(f"alpha must lie in (0, 1) (e.g. 0.001), got {alpha!r}")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")


def _check_count(name: str, value: int) -> None:
    if not (isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= 1):
        raise InputError(f"{name} must be a positive integer number of noise samples, got {value!r}")


def _device(model: nn.Module, x: torch.Tensor) -> torch.device:
    p = next(iter(model.parameters()), None)
    if p is None:
        p = next(iter(model.buffers()), None)
    return p.device if p is not None else x.device


def sample_noise(model: nn.Module, x: torch.Tensor, num: int, sigma: float, batch_size: int,
                 generator: torch.Generator) -> torch.Tensor:
    """Class counts of ``f(x_i + δ)`` over ``num`` draws ``δ ~ N(0, σ² I)`` per input: shape (m, classes).

    The ``m × num`` noisy inputs are formed ``batch_size`` at a time on the generator's device (several inputs
    share a batch when ``num < batch_size``); only the counts are kept.
    """
    m = x.shape[0]
    total = m * num
    counts: torch.Tensor | None = None
    for start in range(0, total, batch_size):
        idx = torch.arange(start, min(start + batch_size, total), device=x.device) // num
        noise = torch.randn((idx.shape[0], *x.shape[1:]), generator=generator, device=x.device, dtype=x.dtype)
        logits = model(x[idx] + sigma * noise)
        if counts is None:
            counts = torch.zeros((m, logits.shape[1]), dtype=torch.long, device=x.device)
        pred = logits.argmax(dim=1)
        counts.index_put_((idx, pred), torch.ones_like(pred), accumulate=True)
    assert counts is not None
    return counts


def certify(
    model: nn.Module,
    x: torch.Tensor,
    *,
    sigma: float,
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    batch_size: int = 1_000,
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int | torch.Generator | None = 0,
) -> Certificates:
    """CERTIFY of Cohen et al. (2019): a class and an L2 radius per input, or an abstention.

    For each input: draw ``n0`` noisy copies and take ``ĉ_A``, the most frequent class (selection only); draw
    ``n`` **fresh** copies and count ``n_A``, how many land in ``ĉ_A``; ``p_A_lower`` is the one-sided
    ``(1 − alpha)`` Clopper-Pearson lower bound; abstain (class ``-1``, radius 0) if ``p_A_lower < ½``, else return
    ``(ĉ_A, σ Φ⁻¹(p_A_lower))``. With probability at least ``1 − alpha`` a returned class equals the smoothed
    classifier's and the radius is valid.

    Parameters
    ----------
    model : a torch module returning logits (the base classifier ``f``); run in eval mode, state restored.
    x : inputs (m, ...) inside ``bounds``.
    sigma : the noise level σ, in input units (0.25 or 0.5 for [0, 1] images).
    n0 : selection samples per input.
    n : estimation samples per input (``n0 ≤ n``).
    alpha : the failure probability of each certificate, in (0, 1).
    batch_size : noisy inputs per forward pass; peak memory grows with it, not with ``n``.
    bounds : the valid input range (σ is checked against it).
    seed : an int or a ``torch.Generator`` on the model's device; the global RNG is never read.

    Returns
    -------
    Certificates
        ``prediction`` (−1 for abstain), ``radius``, ``p_lower`` and ``counts`` on ``x``'s device.

    References
    ----------
    Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized Smoothing", ICML 2019,
    Algorithm CERTIFY and Theorem 1.
    """
    _check(model, x, sigma, alpha, batch_size, bounds)
    model = as_classifier(model)  # a ModelOutput, a dict with logits or a tuple: its logits
    _check_count("n0", n0)
    _check_count("n", n)
    if n0 > n:
        raise InputError(f"n0={n0} selection samples exceeds n={n} estimation samples; use n0 ≤ n (e.g. 100 and "
                         "100,000)")
    device = _device(model, x)
    generator, seed_used = make_generator(seed, device)
    xd = x.to(device)
    with attack_mode(model), torch.no_grad():
        c_hat = sample_noise(model, xd, n0, sigma, batch_size, generator).argmax(dim=1)
        counts = sample_noise(model, xd, n, sigma, batch_size, generator)
    n_a = counts.gather(1, c_hat[:, None]).squeeze(1)
    p_lower = lower_confidence_bound(n_a.cpu().numpy(), n, alpha)
    certified = p_lower >= 0.5
    radius = np.where(certified, sigma * norm.ppf(np.clip(p_lower, 0.5, 1.0)), 0.0)
    prediction = torch.where(torch.as_tensor(certified, device=device), c_hat, torch.full_like(c_hat, -1))
    return Certificates(
        prediction=prediction.to(x.device),
        radius=torch.as_tensor(radius, dtype=x.dtype, device=x.device),
        p_lower=torch.as_tensor(p_lower, dtype=torch.float64, device=x.device),
        counts=n_a.to(x.device),
        sigma=float(sigma), n0=int(n0), n=int(n), alpha=float(alpha), seed=seed_used,
    )


def predict(
    model: nn.Module,
    x: torch.Tensor,
    *,
    sigma: float,
    n: int = 1_000,
    alpha: float = 0.001,
    batch_size: int = 1_000,
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int | torch.Generator | None = 0,
) -> torch.Tensor:
    """PREDICT of Cohen et al. (2019): the smoothed classifier's class per input, or ``-1`` (abstain).

    Draw ``n`` noisy copies, take the two most frequent classes with counts ``n_A ≥ n_B``, and return the first
    unless the two-sided binomial test of ``n_A`` successes in ``n_A + n_B`` trials at ½ has p-value > ``alpha``.
    The probability of returning a class other than ``g(x)`` is at most ``alpha``.

    Parameters
    ----------
    model, x, sigma, batch_size, bounds, seed : as in :func:`certify`.
    n : noise samples per input.
    alpha : the probability of a wrong (non-abstaining) answer, in (0, 1).

    Returns
    -------
    torch.Tensor
        Predicted classes (m,), ``-1`` where the test abstains, on ``x``'s device.

    References
    ----------
    Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized Smoothing", ICML 2019,
    Algorithm PREDICT and Proposition 1.
    """
    _check(model, x, sigma, alpha, batch_size, bounds)
    model = as_classifier(model)
    _check_count("n", n)
    device = _device(model, x)
    generator, _ = make_generator(seed, device)
    with attack_mode(model), torch.no_grad():
        counts = sample_noise(model, x.to(device), n, sigma, batch_size, generator)
    if counts.shape[1] < 2:
        return counts.argmax(dim=1).to(x.device)
    top2 = counts.topk(2, dim=1)
    n_a, n_b = top2.values[:, 0].tolist(), top2.values[:, 1].tolist()
    pvalues = [binomtest(a, a + b, 0.5).pvalue for a, b in zip(n_a, n_b)]
    abstain = torch.as_tensor([p > alpha for p in pvalues], device=device)
    out = torch.where(abstain, torch.full_like(top2.indices[:, 0], -1), top2.indices[:, 0])
    return out.to(x.device)


def train_noisy(
    model: nn.Module,
    data: Dataset,
    *,
    sigma: float,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> nn.Module:
    """Train the base classifier with Gaussian data augmentation at the smoothing σ (Cohen et al. 2019, §4).

    Each batch is replaced by ``x + δ``, ``δ ~ N(0, σ² I)``, in input space (normalization lives inside the
    model), drawn from a generator seeded by ``seed``; training itself is :func:`adverse.zoo.train_classifier`
    (Adam on cross-entropy).

    Parameters
    ----------
    model : the base classifier (trained in place).
    data : the training set, inputs inside ``data.bounds``.
    sigma : the noise level, in input units; train at the σ you will certify with.
    epochs, lr, batch_size, weight_decay : the optimizer.
    seed : seeds the batch order and the noise.

    Returns
    -------
    nn.Module
        The trained model, in eval mode.

    References
    ----------
    Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized Smoothing", ICML 2019
    (training with Gaussian data augmentation); Lecuyer et al., "Certified Robustness to Adversarial Examples
    with Differential Privacy", S&P 2019.
    """
    _check(model, data.x[:1], sigma, 0.5, batch_size, data.bounds)
    device = _device(model, data.x)
    generator, _ = make_generator(seed + 1, device)

    def gaussian(_: nn.Module, xb: torch.Tensor, __: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(xb.shape, generator=generator, device=device, dtype=xb.dtype)
        return xb + sigma * noise.to(xb.device)

    return train_classifier(model, data, epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay,
                            seed=seed, perturb=gaussian)
