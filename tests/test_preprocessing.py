"""Preprocessing defenses: the transforms against independent oracles, their gradient modes, and the BPDA and EOT
evaluations that expose them (Athalye, Carlini & Wagner 2018)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from adverse.defenses import JPEG, BitDepth, GaussianNoise, MedianFilter, RandomResizePad
from adverse.errors import AdverseError, InputError


def _images(n=6, c=1, h=8, w=8, seed=0):
    return torch.rand((n, c, h, w), generator=torch.Generator().manual_seed(seed))


def _input_grad(module: nn.Module, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((module(xr) * v).sum(), xr)
    return g


# ----------------------------------------------------------------------------------- transforms vs oracles
def test_bit_depth_levels_and_gradients():
    x = _images()
    for bits in (1, 2, 3):
        levels = 2 ** bits - 1
        out = BitDepth(bits, gradient="exact")(x)
        assert torch.equal(out, torch.from_numpy(np.round(x.numpy() * levels) / levels).float())
    v = torch.randn_like(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(_input_grad(BitDepth(1, gradient="exact"), x, v), torch.zeros_like(x))  # naive: masked
    assert torch.equal(_input_grad(BitDepth(1, gradient="bpda"), x, v), v)  # BPDA: the identity
    assert torch.equal(BitDepth(1, gradient="bpda")(x), BitDepth(1, gradient="exact")(x))  # same forward pass


def test_bit_depth_respects_bounds():
    x = _images() * 2 - 1
    out = BitDepth(1, bounds=(-1.0, 1.0))(x)
    assert set(out.unique().tolist()) <= {-1.0, 1.0}


def test_jpeg_is_pillows_codec():
    from PIL import Image

    x = _images(4)
    out = JPEG(50)(x)
    for i in range(4):
        u8 = (x[i, 0] * 255).round().to(torch.uint8).numpy()
        buf = io.BytesIO()
        Image.fromarray(u8, "L").save(buf, format="JPEG", quality=50)
        buf.seek(0)
        ref = np.asarray(Image.open(buf)).astype(np.float32) / 255
        assert np.array_equal(out[i, 0].numpy(), ref)
    # higher quality stays closer to the input; the codec changes random images at low quality
    err = {q: float((JPEG(q)(x) - x).abs().mean()) for q in (10, 95)}
    assert err[95] < err[10]
    assert err[10] > 0.02
    rgb = _images(2, c=3, h=16, w=16)
    assert JPEG(75)(rgb).shape == rgb.shape


def test_jpeg_gradient_is_bpda():
    x = _images(3)
    v = torch.randn_like(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(_input_grad(JPEG(75, gradient="bpda"), x, v), v)
    assert torch.equal(_input_grad(JPEG(75, gradient="eot"), x, v), v)
    with pytest.raises(InputError, match="no exact gradient"):
        JPEG(75, gradient="exact")


def test_median_filter_matches_scipy():
    from scipy.ndimage import median_filter

    x = _images(5)
    out = MedianFilter(3)(x)
    ref = median_filter(x.numpy(), size=(1, 1, 3, 3), mode="mirror")  # torch's "reflect" is scipy's "mirror"
    assert np.allclose(out.numpy(), ref)


def test_median_filter_exact_gradient_routes_to_the_median_pixel():
    x = _images(2)
    xr = x.clone().requires_grad_(True)
    out = MedianFilter(3)(xr)
    (g,) = torch.autograd.grad(out[0, 0, 3, 4], xr)
    assert float(g.sum()) == 1.0 and int((g != 0).sum()) == 1
    idx = g[0, 0].nonzero()[0]
    assert float(x[0, 0, idx[0], idx[1]]) == float(out.detach()[0, 0, 3, 4])  # the median pixel of its window
    assert abs(int(idx[0]) - 3) <= 1 and abs(int(idx[1]) - 4) <= 1


def test_eot_mode_differentiates_each_draw_exactly_where_possible():
    x = _images(3)
    v = torch.randn_like(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(_input_grad(MedianFilter(3, gradient="eot"), x, v), _input_grad(MedianFilter(3), x, v))
    assert torch.equal(_input_grad(BitDepth(2, gradient="eot"), x, v), torch.zeros_like(x))
    assert not torch.equal(_input_grad(MedianFilter(3, gradient="bpda"), x, v), _input_grad(MedianFilter(3), x, v))
    # a draw's exact gradient through noise and clipping: the incoming gradient where the clip is inactive
    noisy = GaussianNoise(0.05, gradient="eot", seed=0)
    xm = torch.full((2, 1, 8, 8), 0.5)
    assert torch.equal(_input_grad(noisy, xm, v[:2]), v[:2])


def test_gaussian_noise_statistics_and_seeding():
    x = torch.full((400, 1, 8, 8), 0.5)
    g_state = torch.get_rng_state()
    m = GaussianNoise(0.05, seed=3)
    a = m(x)
    assert torch.equal(torch.get_rng_state(), g_state)  # never reads or advances the global RNG
    noise = (a - x).flatten()
    # 25,600 draws: the mean's standard error is 0.05 / 160 ≈ 3e-4
    assert abs(float(noise.mean())) < 2e-3
    assert abs(float(noise.std()) - 0.05) < 2e-3
    b = m(x)
    assert not torch.equal(a, b)  # a fresh draw per call
    m.reseed()
    assert torch.equal(m(x), a)
    assert torch.equal(GaussianNoise(0.05, seed=3)(x), a)
    assert float(GaussianNoise(1.0, seed=0)(x).min()) >= 0 and float(GaussianNoise(1.0, seed=0)(x).max()) <= 1


def test_random_resize_pad_draws():
    x = 0.5 + 0.5 * _images(64)
    m = RandomResizePad(0.6, seed=1)
    out = m(x)
    assert out.shape == x.shape
    assert bool(((out == 0) | (out >= 0.5 - 1e-6)).all())  # padding or an interpolation of pixels in [0.5, 1]
    padded = (out == 0).flatten(1).any(dim=1)
    assert 0 < int(padded.sum()) < 64  # some images were shrunk (and padded), some kept full size
    m.reseed()
    assert torch.equal(m(x), out)
    full = RandomResizePad(0.99, seed=0)(x)  # r must be h: identity
    assert torch.allclose(full, x, atol=1e-6)
    v = torch.ones_like(x)
    assert float(_input_grad(RandomResizePad(0.6, seed=1), x, v).abs().sum()) > 0  # an exact gradient exists


@pytest.mark.parametrize("make, match", [
    (lambda: BitDepth(0), "bits"),
    (lambda: BitDepth(1, gradient="identity"), "gradient mode"),
    (lambda: JPEG(0), "quality"),
    (lambda: MedianFilter(1), "kernel_size"),
    (lambda: GaussianNoise(0.0), "sigma"),
    (lambda: RandomResizePad(1.5), "min_scale"),
    (lambda: BitDepth(1, bounds=(1.0, 0.0)), "lo < hi"),
])
def test_bad_configuration(make, match):
    with pytest.raises(AdverseError, match=match):
        make()


def test_bad_shapes():
    with pytest.raises(InputError, match="images"):
        JPEG(75)(torch.rand(3, 2, 8, 8))
    with pytest.raises(InputError, match="larger than the kernel"):
        MedianFilter(5)(torch.rand(1, 1, 2, 2))


# ----------------------------------------------------------------------------------- honest evaluations
def test_bpda_exposes_bit_depth_reduction(digits_cnn, digits_test):
    """Naive PGD through 1-bit quantization reports high robust accuracy; BPDA drives it far lower; the
    evaluation checks flag the naive number."""
    from adverse.evaluation.checks import run_checks
    from adverse.evasion import pgd

    x, y = digits_test.x[:150], digits_test.y[:150]
    naive = nn.Sequential(BitDepth(1, gradient="exact"), digits_cnn).eval()
    honest = nn.Sequential(BitDepth(1, gradient="bpda"), digits_cnn).eval()
    r_naive = pgd(naive, x, y, eps=0.2, steps=20, seed=0)
    r_bpda = pgd(honest, x, y, eps=0.2, steps=20, seed=0)
    # measured (150 points): naive 0.89, BPDA 0.45; clean 0.92
    assert r_naive.robust_accuracy >= 0.75
    assert r_bpda.robust_accuracy <= r_naive.robust_accuracy - 0.3
    flags = {c.name: c.status for c in run_checks(naive, x[:60], y[:60], eps=0.2, checks=["gradients", "eps_sweep"])}
    assert flags == {"gradients": "warn", "eps_sweep": "warn"}
    ok = {c.name: c.status for c in run_checks(honest, x[:60], y[:60], eps=0.2, checks=["gradients"])}
    assert ok == {"gradients": "pass"}


def test_eot_beats_single_draw_gradients_on_a_randomized_defense(digits_cnn, digits_test):
    """Both attacks are judged by the same expected-logit classifier (EOT over 40 draws); the attack whose
    gradients average 10 draws leaves fewer points robust than the one that follows single draws."""
    from adverse.evasion import EOT, pgd

    x, y = digits_test.x[:120], digits_test.y[:120]
    defended = nn.Sequential(GaussianNoise(0.3, seed=0), digits_cnn).eval()
    single = pgd(defended, x, y, eps=0.1, steps=10, seed=0).x_adv
    eot = pgd(EOT(defended, 10), x, y, eps=0.1, steps=10, seed=0).x_adv
    judge = EOT(defended, 40)
    with torch.no_grad():
        acc_single = float((judge(single).argmax(1) == y).float().mean())
        acc_eot = float((judge(eot).argmax(1) == y).float().mean())
        acc_clean = float((judge(x).argmax(1) == y).float().mean())
    assert acc_clean >= 0.85
    assert acc_eot <= acc_single - 0.1
