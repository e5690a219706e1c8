"""Detectors of adversarial inputs: estimators against closed forms, threshold calibration at a stated false-positive
rate, detection against oblivious attacks, and the union with adaptive attacks that also fool the detector."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from adverse.data import digits
from adverse.defenses import LID, FeatureSqueezing, Mahalanobis
from adverse.defenses.detection import attack_detector, evaluate_detector, lid_mle
from adverse.errors import AdverseError, InputError, ModelError


@pytest.fixture(scope="module")
def clean():
    d = digits("train")
    return d.x[:500], d.y[:500]


# ----------------------------------------------------------------------------------- estimators
def test_lid_mle_recovers_the_intrinsic_dimension():
    """Points uniform in a 3-dimensional cube embedded in 12 dimensions have LID 3 (away from the borders)."""
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(12, 3, generator=g, dtype=torch.float64))[0]
    ref = torch.rand((4000, 3), generator=g, dtype=torch.float64) @ basis.T
    query = (0.3 + 0.4 * torch.rand((300, 3), generator=g, dtype=torch.float64)) @ basis.T
    lid = lid_mle(torch.cdist(query, ref), k=20)
    # −Σ_{i<k} log(r_i / r_k) is a sum of k − 1 Exp(d) variables, so E[k / Σ] = d·k / (k − 2) = 3.33
    # (the per-point sd is ≈ 0.8, so the mean of 300 has sd ≈ 0.05)
    assert abs(float(lid.mean()) - 3.0 * 20 / 18) < 0.2
    lid5 = lid_mle(torch.cdist(query, torch.rand((4000, 5), generator=g, dtype=torch.float64)
                               @ torch.linalg.qr(torch.randn(12, 5, generator=g, dtype=torch.float64))[0].T), k=20)
    assert float(lid5.mean()) > float(lid.mean()) + 1.0


def test_lid_skips_the_point_itself():
    ref = torch.randn(50, 4, generator=torch.Generator().manual_seed(1))
    with_self = lid_mle(torch.cdist(ref[:5], ref), k=10)
    without = lid_mle(torch.cdist(ref[:5], ref[5:]), k=10)
    assert torch.isfinite(with_self).all() and torch.isfinite(without).all()


def test_mahalanobis_distances_match_numpy():
    """With the identity as 'network', the layer score is min_c (x − μ_c)ᵀ Σ⁻¹ (x − μ_c), Σ the tied covariance."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 3
    x = (torch.randn((300, 1, 2, 2), generator=g) + y.reshape(-1, 1, 1, 1).float() * 2).double()
    model = nn.Sequential(nn.Flatten()).double()
    det = Mahalanobis(model, layers=["output"]).fit(x, y, x_calibration=x[:40])
    xs, ys = x.flatten(1).numpy(), y.numpy()
    mu = np.stack([xs[ys == c].mean(0) for c in range(3)])
    cen = xs - mu[ys]
    prec = np.linalg.inv(cen.T @ cen / len(xs))
    q = np.random.default_rng(0).normal(size=(10, 4)) * 2
    expected = np.min([np.einsum("nk,kl,nl->n", q - m, prec, q - m) for m in mu], axis=0)
    got = det._distances(torch.from_numpy(q).reshape(10, 1, 2, 2))[:, 0].numpy()
    assert np.allclose(got, expected)


# ----------------------------------------------------------------------------------- calibration
@pytest.mark.parametrize("make", [lambda m: FeatureSqueezing(m), lambda m: Mahalanobis(m), lambda m: LID(m)])
def test_threshold_at_the_stated_false_positive_rate(make, digits_cnn, clean, digits_test):
    det = make(digits_cnn).fit(*clean)
    m_cal = round(0.5 * clean[0].shape[0])
    # on the calibration data the rate is at most the stated one and less than one point below it
    assert det.fpr - 1 / m_cal - 1e-9 <= det.realised_fpr_ <= det.fpr
    # on fresh clean data: binomial, n = 540, p = 0.05, sd ≈ 0.0094; the threshold itself is estimated from 250
    rate = float(det.predict(digits_test.x).float().mean())
    assert abs(rate - 0.05) < 0.045
    det.calibrate(clean[0][:200], fpr=0.2)
    assert 0.195 <= det.realised_fpr_ <= 0.2


def test_detectors_leave_the_model_as_found(digits_cnn, clean):
    digits_cnn.train()
    flags = [p.requires_grad for p in digits_cnn.parameters()]
    try:
        for det in (FeatureSqueezing(digits_cnn), Mahalanobis(digits_cnn, noise=0.01), LID(digits_cnn)):
            det.fit(*clean)
            det.score(clean[0][:10])
            assert digits_cnn.training
            assert [p.requires_grad for p in digits_cnn.parameters()] == flags
            assert all(p.grad is None for p in digits_cnn.parameters())
    finally:
        digits_cnn.eval()


def test_scores_are_differentiable(digits_cnn, clean):
    x = clean[0][:8].clone().requires_grad_(True)
    for det in (FeatureSqueezing(digits_cnn), Mahalanobis(digits_cnn), LID(digits_cnn)):
        det.fit(*clean)
        (g,) = torch.autograd.grad(det.score(x).sum(), x)
        assert torch.isfinite(g).all() and float(g.abs().sum()) > 0


def test_logistic_combination_with_adversarial_data(digits_cnn, clean, digits_test):
    """Given adversarial fitting data, layer scores are combined by logistic regression (Lee et al., Ma et al.)."""
    from adverse.evasion import pgd

    x_adv = pgd(digits_cnn, clean[0][:200], clean[1][:200], eps=0.2, steps=10, seed=0).x_adv
    det = Mahalanobis(digits_cnn).fit(*clean, x_adv=x_adv)
    assert det._lr is not None
    adv_test = pgd(digits_cnn, digits_test.x[:100], digits_test.y[:100], eps=0.2, steps=10, seed=1).x_adv
    rep = evaluate_detector(det, digits_cnn, digits_test.x[:100], digits_test.y[:100], {"pgd": adv_test})
    assert rep["attacks"]["pgd"]["auroc"] > 0.9


# ----------------------------------------------------------------------------------- detection and adaptive attacks
def test_detection_against_oblivious_and_adaptive_attacks(digits_cnn, clean, digits_test):
    """Oblivious PGD at L∞ 0.2 on the undefended CNN: Mahalanobis detects it well (measured AUROC 0.98, 10 % of
    inputs fooled undetected); adding adaptive attacks that also push the score under the threshold, the union
    fools it undetected on most inputs (measured 0.96)."""
    x, y = digits_test.x[:100], digits_test.y[:100]
    det = Mahalanobis(digits_cnn).fit(*clean)
    advs = attack_detector(det, digits_cnn, x, y, eps=0.2, steps=20, weights=(0.3, 3.0), seed=0)
    for xa in advs.values():
        assert float((xa - x).abs().max()) <= 0.2 + 1e-6 and float(xa.min()) >= 0 and float(xa.max()) <= 1
    rep = evaluate_detector(det, digits_cnn, x, y, advs)
    obl = rep["attacks"]["oblivious"]
    assert obl["success_rate"] > 0.9 and obl["auroc"] > 0.9 and obl["undetected_success"] < 0.35
    union = rep["union_undetected_success"]
    assert all(union >= a["undetected_success"] for a in rep["attacks"].values())
    assert union >= obl["undetected_success"] + 0.4


@pytest.mark.parametrize("make, floor", [(lambda m: FeatureSqueezing(m), 0.6), (lambda m: LID(m), 0.7)])
def test_oblivious_detection_auroc(make, floor, digits_cnn, clean, digits_test):
    """Measured on 200 test points (PGD-20, L∞ 0.2): feature squeezing 0.72, LID 0.83."""
    from adverse.evasion import pgd

    x, y = digits_test.x[:150], digits_test.y[:150]
    det = make(digits_cnn).fit(*clean)
    adv = pgd(digits_cnn, x, y, eps=0.2, steps=20, seed=0).x_adv
    rep = evaluate_detector(det, digits_cnn, x, y, {"oblivious": adv})
    assert rep["attacks"]["oblivious"]["auroc"] > floor


# ----------------------------------------------------------------------------------- bad input
def test_bad_input(digits_cnn, clean):
    with pytest.raises(InputError, match="fpr"):
        LID(digits_cnn, fpr=0.0)
    with pytest.raises(InputError, match="unknown layer"):
        Mahalanobis(digits_cnn, layers=["nope"])
    with pytest.raises(InputError, match="reference_size"):
        LID(digits_cnn, k=20, reference_size=10)
    with pytest.raises(InputError, match="not fitted"):
        Mahalanobis(digits_cnn).score(clean[0][:4])
    with pytest.raises(InputError, match="not fitted"):
        FeatureSqueezing(digits_cnn).predict(clean[0][:4])
    with pytest.raises(InputError, match="at least 20"):
        LID(digits_cnn).fit(clean[0][:30])
    with pytest.raises(InputError, match="x_adv"):
        FeatureSqueezing(digits_cnn).fit(*clean, x_adv=clean[0][:10])
    with pytest.raises(ModelError, match="nn.Module"):
        FeatureSqueezing(lambda x: x)
    det = FeatureSqueezing(digits_cnn).fit(*clean)
    with pytest.raises(AdverseError, match="input units"):
        attack_detector(det, digits_cnn, clean[0][:4], clean[1][:4], eps=8)
    with pytest.raises(InputError, match="shape"):
        evaluate_detector(det, digits_cnn, clean[0][:4], clean[1][:4], {"bad": clean[0][:3]})
    with pytest.raises(InputError, match="NaN"):
        det.predict(torch.full((2, 1, 8, 8), float("nan")))
