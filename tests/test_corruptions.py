"""Common corruptions (Hendrycks & Dietterich 2019): bounds, determinism, severity trend, corruption accuracy, mCE.

The parameters are checked against the reference code in benchmarks/compare_corruptions_reference.py (it needs
the reference file, scikit-image and OpenCV, so it is not a test).
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from torch import nn

from adverse.corruptions import (
    CORRUPTIONS,
    LEFT_OUT,
    RANDOM_CORRUPTIONS,
    CorruptionResult,
    corrupt,
    corruption_accuracy,
)
from adverse.data import digits
from adverse.errors import InputError

SEVERITIES = (1, 2, 3, 4, 5)


def images(n: int, c: int, h: int, w: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand((n, c, h, w), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def smooth_rgb(n: int = 24, size: int = 32) -> torch.Tensor:
    """Smooth colour images in [0, 1] (blurred noise, stretched): stand-ins for natural 32×32 photos."""
    noise = np.random.default_rng(0).random((n, 3, size, size))
    return torch.from_numpy(np.clip(ndimage.gaussian_filter(noise, (0, 0, 2, 2)) * 4 - 1.5, 0, 1))


def distances(x: torch.Tensor, name: str) -> list[float]:
    return [float((corrupt(x, name, s, seed=0) - x).abs().mean()) for s in SEVERITIES]


def test_names():
    assert len(CORRUPTIONS) == 14 and "frost" not in CORRUPTIONS and set(LEFT_OUT) == {"frost"}
    assert set(RANDOM_CORRUPTIONS) < set(CORRUPTIONS)


@pytest.mark.parametrize("shape", [(3, 1, 8, 8), (2, 3, 32, 32)])
def test_every_corruption_and_severity_keeps_shape_dtype_bounds(shape):
    x = images(*shape)
    x[0, :, :2] = 0.0
    x[0, :, -2:] = 1.0  # saturated pixels
    for name in CORRUPTIONS:
        for s in SEVERITIES:
            out = corrupt(x, name, s, seed=3)
            assert out.shape == x.shape and out.dtype == x.dtype, (name, s)
            assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1, (name, s)


@settings(max_examples=examples(60))
@given(name=st.sampled_from(CORRUPTIONS), severity=st.integers(1, 5), c=st.sampled_from((1, 3)),
       h=st.integers(8, 32), w=st.integers(8, 32), n=st.integers(1, 3), seed=st.integers(0, 2**31),
       bounds=st.sampled_from(((0.0, 1.0), (-1.0, 1.0), (0.0, 255.0))),
       fill=st.sampled_from(("rand", "zeros", "ones")), dtype=st.sampled_from((torch.float32, torch.float64)))
def test_property_outputs_inside_bounds(name, severity, c, h, w, n, seed, bounds, fill, dtype):
    lo, hi = bounds
    unit = {"rand": images(n, c, h, w, seed, dtype), "zeros": torch.zeros(n, c, h, w, dtype=dtype),
            "ones": torch.ones(n, c, h, w, dtype=dtype)}[fill]
    x = lo + (hi - lo) * unit
    out = corrupt(x, name, severity, seed=seed % 1000, bounds=bounds)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.isfinite(out).all() and out.min() >= lo and out.max() <= hi



def test_seeded_and_deterministic():
    x = images(3, 3, 16, 16)
    for name in CORRUPTIONS:
        a, b = corrupt(x, name, 3, seed=5), corrupt(x, name, 3, seed=5)
        assert torch.equal(a, b), name
        other = corrupt(x, name, 3, seed=6)
        if name in RANDOM_CORRUPTIONS:
            assert not torch.equal(a, other), name
        else:
            assert torch.equal(a, other), name
    # the global RNGs are neither used nor disturbed
    torch.manual_seed(0)
    np.random.seed(0)
    before = (torch.rand(1), np.random.rand())
    torch.manual_seed(0)
    np.random.seed(0)
    corrupt(x, "gaussian_noise", 1, seed=1)
    assert (torch.rand(1), np.random.rand()) == before


def test_bounds_are_scaled():
    x = images(2, 3, 12, 12, dtype=torch.float64)
    for name in CORRUPTIONS:
        unit = corrupt(x, name, 4, seed=2)
        scaled = corrupt(x * 255, name, 4, seed=2, bounds=(0, 255))
        tol = 1.01 if name == "jpeg_compression" else 1e-6  # 8-bit rounding of x·255 vs (x·255)/255·255
        assert (scaled - unit * 255).abs().max() <= tol, name


# Severity trend: the mean |corrupted − clean| grows with severity where the reference's parameters grow together.
# Not monotone in the reference's parameters (so not asserted step by step):
# * glass_blur: σ 0.05, 0.25, 0.4, 0.25, 0.4 with 1, 1, 1, 2, 2 iterations — asserted: 2 iterations move more;
# * elastic_transform: the random affine jitter shrinks (0.08 → 0.03 of the side) as the elastic displacement
#   grows (α 0 → 0.1, σ 0.2 → 0.03 of the side), so the pixel distance can fall — asserted: every severity moves;
# * snow's zoom (1, 1, 1.75, 2.25, 1.25) and threshold (0.6, 0.5, 0.55, 0.6, 0.65) — measured monotone here;
# * motion_blur severities 3 and 4 differ only in the radius (6 → 8) at σ = 2, whose extra taps weigh < 1e-3:
#   equal up to the random angle, hence the 2 % slack for random corruptions;
# * pixelate at 8×8: int(8·ratio) = 7, 7, 6, 6, 5 and box resampling 8 → 5 → 8 loses less than 8 → 6 → 8 on digits;
#   zoom_blur severity 1 at 8×8 is the identity (the reference's crop ⌈8/z⌉ = 8 for every z ≤ 1.06).
NOT_MONOTONE = {"glass_blur", "elastic_transform"}


@pytest.mark.parametrize("images_name", ["digits", "smooth_rgb"])
def test_distance_grows_with_severity(images_name):
    x = digits("test").x[:64].double() if images_name == "digits" else smooth_rgb()
    for name in CORRUPTIONS:
        d = distances(x, name)
        assert min(d[1:]) > 0, (name, d)
        if name == "glass_blur":
            assert min(d[3:]) > max(d[:3]), d
        elif name == "elastic_transform":
            continue  # every severity moves the image (above); no order holds
        elif name == "pixelate" and images_name == "digits":
            assert d[0] == d[1] < d[2] == d[3] and d[4] > d[0], d  # 7, 7, 6, 6, 5 pixels
        else:
            slack = 0.98 if name in RANDOM_CORRUPTIONS else 1.0
            assert all(b >= a * slack for a, b in itertools.pairwise(d)), (name, d)


# ----------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, words", [
    ({"name": "fog_machine"}, ["name", "fog_machine", "gaussian_noise"]),
    ({"name": "frost"}, ["frost", "left out", "frost1.png"]),
    ({"severity": 0}, ["severity", "[1, 5]"]),
    ({"severity": 6}, ["severity", "[1, 5]"]),
    ({"severity": 2.5}, ["severity", "integer"]),
    ({"severity": True}, ["severity"]),
    ({"seed": -1}, ["seed"]),
    ({"seed": None}, ["seed"]),
    ({"bounds": (1.0, 0.0)}, ["bounds"]),
])
def test_bad_arguments(kwargs, words):
    args = {"name": "fog", "severity": 1, **kwargs}
    with pytest.raises(InputError) as e:
        corrupt(images(1, 1, 8, 8), args.pop("name"), args.pop("severity"), **args)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_bad_images():
    nan = images(1, 1, 8, 8)
    nan[0, 0, 0, 0] = float("nan")
    for x, words in [(nan, ["NaN"]), (images(1, 1, 8, 8) * 2, ["outside bounds", "bounds="]),
                     (torch.zeros(1, 1, 8, 8, dtype=torch.uint8), ["floating"]), (images(1, 1, 8, 8)[0], ["(N, C, H, W)"]),
                     (np.zeros((1, 1, 8, 8)), ["torch.Tensor"]), (images(1, 1, 2, 8), ["4×4"])]:
        with pytest.raises(InputError) as e:
            corrupt(x, "contrast", 1)
        assert all(w in str(e.value) for w in words), str(e.value)
    with pytest.raises(InputError, match="C = 1 or 3"):
        corrupt(images(1, 2, 8, 8), "snow", 1)
    assert corrupt(images(1, 2, 8, 8), "fog", 1).shape == (1, 2, 8, 8)  # other C work where they can


# ------------------------------------------------------------------------------------ corruption accuracy
class Tiny(nn.Module):
    """A fixed random linear classifier on 1×8×8 images, with dropout so eval mode matters."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(x.flatten(1)))


def test_corruption_accuracy_oracles():
    x = images(30, 1, 8, 8, seed=1)
    y = torch.randint(0, 4, (30,), generator=torch.Generator().manual_seed(2))
    model, other = Tiny(0).train(), Tiny(1)
    names, sev = ("gaussian_noise", "glass_blur", "contrast", "pixelate"), (1, 3, 5)
    res = corruption_accuracy(model, x, y, corruptions=names, severities=sev, seed=4, batch_size=7, baseline=model)
    assert isinstance(res, CorruptionResult) and model.training  # mode restored
    model.eval()
    with torch.no_grad():
        assert res.clean_accuracy == int((model(x).argmax(1) == y).sum()) / 30
        for name in names:
            for s in sev:  # batch by batch, the same images as one corrupt() call
                acc = int((model(corrupt(x, name, s, seed=4)).argmax(1) == y).sum()) / 30
                assert res.accuracy[name][s] == acc, (name, s)
                assert 0 <= res.accuracy[name][s] <= 1
    assert res.mce == 1.0 and all(v == 1.0 for v in res.ce.values())  # a model against itself
    for c, v in res.relative_ce.items():  # 1, or undefined where the errors under c sum to the clean ones
        undefined = round(sum(30 * (1 - res.accuracy[c][s]) for s in sev)) == round(3 * 30 * (1 - res.clean_accuracy))
        assert v == 1.0 if not undefined else math.isnan(v), (c, v)
    assert 1.0 in res.relative_ce.values() and math.isnan(res.relative_ce["glass_blur"])
    assert math.isclose(res.mean_accuracy, np.mean([res.accuracy[c][s] for c in names for s in sev]))
    assert math.isclose(res.severity_mean[3], np.mean([res.accuracy[c][3] for c in names]))
    json.dumps(res.to_dict(), allow_nan=False)

    res2 = corruption_accuracy(model, x, y, corruptions=names, severities=sev, seed=4, batch_size=256,
                               baseline=other)
    assert res2.accuracy == res.accuracy  # independent of the batch size
    err = {c: sum(1 - res2.accuracy[c][s] for s in sev) for c in names}
    base = {c: sum(1 - res2.baseline_accuracy[c][s] for s in sev) for c in names}
    expected = np.mean([err[c] / base[c] for c in names])
    assert math.isclose(res2.mce, expected, rel_tol=1e-12)
    assert res2.to_dict()["accuracy"]["contrast"]["3"] == res2.accuracy["contrast"][3]


def test_corruption_accuracy_bad_arguments():
    x, y = images(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    model = Tiny(0)
    for kwargs, word in [({"severities": (0, 1)}, "severities"), ({"severities": ()}, "severities"),
                         ({"corruptions": ("frost",)}, "frost"), ({"corruptions": ("fog", "fog")}, "distinct"),
                         ({"batch_size": 0}, "batch_size"), ({"seed": 1.5}, "seed")]:
        with pytest.raises(InputError, match=word):
            corruption_accuracy(model, x, y, **kwargs)
    with pytest.raises(InputError, match="labels"):
        corruption_accuracy(model, x, y[:3])
