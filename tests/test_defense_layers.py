"""The dimensionality-reduction, feature-selection and learned-denoising layers (PCA, FeatureSelection, MagNet,
TVMinimization): properties (bounds kept, seeded determinism, BPDA's backward is the identity, EOT averages the
stated number of draws), oracles (a point of the PCA subspace is its own projection, as scikit-learn's PCA
computes it; a constant image is its own TV reconstruction, and the reconstruction is a minimum of Guo et al.'s
objective; the adversarial selection prefers a robust feature to a fragile one), and bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from adverse.defenses import PCA, FeatureSelection, MagNet, ReconstructionDetector, TVMinimization
from adverse.defenses.denoising import tv_minimize, tv_objective
from adverse.errors import AdverseError
from adverse.evasion import EOT

PROPS = settings(max_examples=5, deadline=None)


def _rand(shape, seed, lo=0.0, hi=1.0):
    return lo + (hi - lo) * torch.rand(shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def fitted():
    """One fitted layer of each kind on small random data (bounds (-1, 2) to catch unit-range assumptions)."""
    bounds = (-1.0, 2.0)
    x_img = _rand((80, 1, 4, 4), 0, *bounds)
    x_tab = _rand((120, 6), 1, *bounds)
    y_tab = (x_tab[:, 0] + x_tab[:, 1] > 1).long()
    return {
        "pca": PCA(5, bounds=bounds).fit(x_img),
        "feature-selection": FeatureSelection(3, bounds=bounds).fit(x_tab, y_tab),
        "magnet": MagNet(epochs=2, bounds=bounds, seed=3).fit(x_img),
        "tv": TVMinimization(0.6, 0.05, iterations=30, bounds=bounds, seed=4),
    }


def _input_for(name, seed, bounds=(-1.0, 2.0)):
    return _rand((4, 6) if name == "feature-selection" else (4, 1, 4, 4), seed, *bounds)


LAYERS = ["pca", "feature-selection", "magnet", "tv"]


# ----------------------------------------------------------------------------------- properties
@PROPS
@given(name=st.sampled_from(LAYERS), seed=st.integers(0, 2**16), spread=st.floats(0.0, 3.0))
def test_outputs_stay_inside_the_bounds(fitted, name, seed, spread):
    layer = fitted[name]
    x = _input_for(name, seed)
    x = (x + spread * (torch.rand_like(x) - 0.5)).clamp(-1.0, 2.0)  # inputs anywhere in the box, edges included
    with torch.no_grad():
        out = layer(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert float(out.min()) >= -1.0 - 1e-6 and float(out.max()) <= 2.0 + 1e-6


@PROPS
@given(name=st.sampled_from(LAYERS), seed=st.integers(0, 2**16))
def test_bpda_backward_is_the_identity(fitted, name, seed):
    layer = fitted[name]
    x = _input_for(name, seed).requires_grad_(True)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 1))
    saved = layer.gradient
    try:
        layer.gradient = "bpda"
        if layer.randomized:
            layer.reseed(seed)
        out = layer(x)
        (g,) = torch.autograd.grad((out * v).sum(), x)
    finally:
        layer.gradient = saved
    assert torch.equal(g, v)
    if layer.randomized:
        layer.reseed(seed)
    assert torch.equal(out.detach(), layer.transform(x.detach()))  # the forward pass is the real transform


@PROPS
@given(seed=st.integers(0, 2**16))
def test_randomized_tv_is_deterministic_under_a_seed_and_eot_averages_the_stated_draws(seed):
    x = _rand((3, 1, 5, 5), seed)
    a, b = TVMinimization(0.5, 0.05, iterations=20, seed=seed), TVMinimization(0.5, 0.05, iterations=20, seed=seed)
    first = a(x)
    assert torch.equal(first, b(x))  # same seed, same draws
    assert not torch.equal(a(x), first)  # a fresh mask per call
    a.reseed()
    assert torch.equal(a(x), first)  # reseed starts the draws over
    k = 1 + seed % 4
    calls = []
    a.register_forward_hook(lambda m, inp, out: calls.append(out.detach()))
    a.reseed()
    mean = EOT(nn.Sequential(a, nn.Flatten()), k)(x)
    assert len(calls) == k  # exactly the stated number of draws
    torch.testing.assert_close(mean, torch.stack(calls).mean(0).flatten(1))
    b.reseed()
    torch.testing.assert_close(torch.stack(calls), torch.stack([b(x) for _ in range(k)]))


def test_fits_are_deterministic_under_a_seed():
    x = _rand((80, 1, 4, 4), 5)
    m1, m2 = MagNet(epochs=2, seed=7).fit(x), MagNet(epochs=2, seed=7).fit(x)
    with torch.no_grad():
        assert torch.equal(m1(x), m2(x))
    assert m1.detector.threshold_ == m2.detector.threshold_
    assert not torch.equal(MagNet(epochs=2, seed=8).fit(x)(x), m1(x))
    xt, yt = _rand((150, 5), 6), (_rand((150,), 7) > 0.5).long()
    assert FeatureSelection(2, seed=1).fit(xt, yt).selected_ == FeatureSelection(2, seed=1).fit(xt, yt).selected_
    assert torch.equal(PCA(3).fit(x).components, PCA(3).fit(x).components)


def test_deterministic_layers_need_no_eot():
    x = _rand((4, 1, 4, 4), 9)
    pca = PCA(4).fit(_rand((30, 1, 4, 4), 10))
    model = nn.Sequential(pca, nn.Flatten())
    torch.testing.assert_close(EOT(model, 3)(x), model(x))


# ----------------------------------------------------------------------------------- oracles
def test_pca_projection_of_a_point_in_the_subspace_is_itself_and_matches_scikit_learn():
    from sklearn.decomposition import PCA as SkPCA

    x = _rand((200, 1, 6, 6), 11, 0.2, 0.8).double()
    pca = PCA(7).fit(x)
    assert pca.k_ == 7 and pca.components.shape == (7, 36)
    c = 0.05 * torch.randn(5, 7, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    inside = (pca.mean + c @ pca.components).reshape(5, 1, 6, 6)
    assert ((inside > 0) & (inside < 1)).all()
    torch.testing.assert_close(pca(inside), inside, rtol=0, atol=1e-12)
    sk = SkPCA(7, svd_solver="full").fit(x.flatten(1).numpy())
    q = _rand((5, 1, 6, 6), 13, 0.3, 0.7).double()
    ref = sk.inverse_transform(sk.transform(q.flatten(1).numpy()))
    torch.testing.assert_close(pca(q).flatten(1), torch.from_numpy(ref), rtol=0, atol=1e-10)


def test_pca_chooses_k_by_explained_variance():
    x = _rand((100, 20), 14)
    pca = PCA(variance=0.5).fit(x)
    ratio = pca.explained_variance_ratio_.cumsum(0)
    assert ratio[pca.k_ - 1] >= 0.5 > ratio[pca.k_ - 2]
    assert PCA(variance=1.0).fit(x).k_ == 20
    assert PCA(20).fit(x)(x).sub(x).abs().max() < 1e-5  # every component: the identity


@pytest.mark.parametrize("p", [1, 2])
def test_tv_minimization_of_a_constant_image_is_itself(p):
    for value in (0.0, 0.37, 1.0):
        x = torch.full((2, 3, 6, 5), value)
        for keep in (0.3, 0.9):
            tv = TVMinimization(keep, 0.5, p=p, iterations=50, seed=1)
            torch.testing.assert_close(tv(x), x, rtol=0, atol=1e-6)


def test_tv_reconstruction_minimizes_guo_et_al_objective():
    x = _rand((3, 1, 6, 6), 15)
    mask = (_rand((3, 1, 6, 6), 16) < 0.5).float()
    lam = 0.05
    z = tv_minimize(x, mask, lam, iterations=1000)
    best = tv_objective(z, x, mask, lam)
    assert (best <= tv_objective(x, x, mask, lam)).all()  # better than the input itself
    g = torch.Generator().manual_seed(17)
    for _ in range(40):  # convexity: no feasible point nearby is lower (up to the solver's tolerance)
        other = (z + 0.02 * torch.randn(z.shape, generator=g)).clamp(0, 1)
        assert (tv_objective(other, x, mask, lam) >= best - 1e-4).all()
    assert ((z >= 0) & (z <= 1)).all()


def test_adversarial_selection_prefers_the_robust_feature():
    # feature 0 separates the classes perfectly but by a hair (0.5 ± 0.02); feature 1 only 90% of the time but by
    # a wide margin. Accuracy alone picks feature 0; weighing security (Zhang et al.) picks feature 1.
    g = torch.Generator().manual_seed(18)
    y = torch.arange(400) % 2
    fragile = 0.5 + (2 * y - 1) * (0.02 + 0.01 * torch.rand(400, generator=g))
    flip = torch.rand(400, generator=g) < 0.1
    robust = torch.where(y.bool() ^ flip, 0.85, 0.15) + 0.05 * torch.rand(400, generator=g)
    noise = torch.rand(400, 2, generator=g)
    x = torch.stack([fragile, robust, noise[:, 0], noise[:, 1]], dim=1)
    baseline = FeatureSelection(1, lam=0.0).fit(x, y)
    adversarial = FeatureSelection(1, lam=5.0).fit(x, y)
    assert baseline.selected_ == [0] and adversarial.selected_ == [1]
    out = adversarial(x)
    assert torch.equal(out[:, 1], x[:, 1]) and torch.allclose(out[:, 0], x[:, 0].mean().expand(400))
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(adversarial(xr).sum(), xr)
    assert torch.equal(grad, torch.tensor([0.0, 1.0, 0.0, 0.0]).expand(400, 4))  # dropped features: no influence


def test_magnet_detector_score_is_the_reconstruction_error_at_the_calibrated_rate():
    x = _rand((120, 1, 4, 4), 19, 0.0, 1.0)
    mg = MagNet(epochs=3, fpr=0.1, seed=2).fit(x)
    det = mg.detector
    with torch.no_grad():
        ref = (x - mg(x)).square().flatten(1).mean(1)
        torch.testing.assert_close(det.score(x), ref)
    assert 0 <= det.threshold_ <= 1 and det.realised_fpr_ <= 0.1
    fixed = ReconstructionDetector(mg.autoencoder, threshold=0.5).fit(x[:60], x_calibration=x[60:])
    assert fixed.threshold_ == 0.5


# ----------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("make, words", [
    (lambda: PCA(80).fit(_rand((100, 64), 0)), ["k=80", "dimension 64", "k ≤ 64"]),
    (lambda: PCA(30).fit(_rand((20, 64), 0)), ["k=30", "training samples 20"]),
    (lambda: PCA(3)(_rand((2, 8), 0)), ["not fitted", "fit("]),
    (lambda: PCA(3, variance=0.5), ["not both"]),
    (lambda: FeatureSelection(9).fit(_rand((50, 4), 0), torch.arange(50) % 2), ["k=9", "features 4"]),
    (lambda: FeatureSelection(2)(_rand((2, 4), 0)), ["not fitted", "fit("]),
    (lambda: MagNet()(_rand((2, 1, 4, 4), 0)), ["not fitted", "fit("]),
    (lambda: MagNet().detector, ["not fitted", "fit("]),
    (lambda: MagNet(threshold=1.5), ["threshold", "[0, 1]", "fpr="]),
    (lambda: ReconstructionDetector(nn.Identity(), threshold=-0.1), ["threshold", "[0, 1]"]),
    (lambda: ReconstructionDetector(nn.Identity(), fpr=1.5), ["fpr"]),
    (lambda: MagNet(p=3), ["p must be 1 or 2"]),
    (lambda: TVMinimization(keep=0.0), ["keep"]),
    (lambda: TVMinimization(keep=1.5), ["keep"]),
    (lambda: TVMinimization(p=3), ["p must be 1 or 2"]),
    (lambda: TVMinimization(gradient="identity"), ["gradient mode"]),
    (lambda: TVMinimization()(_rand((2, 16), 0)), ["images"]),
])
def test_bad_input_is_refused_with_the_fix(make, words):
    with pytest.raises(AdverseError) as info:
        make()
    for w in words:
        assert w in str(info.value), (w, str(info.value))
