"""Common corruptions: the ImageNet-C / CIFAR-10-C benchmark of Hendrycks & Dietterich (ICLR 2019) on tensors.

Fourteen of the paper's fifteen corruptions at its five severities, on batches ``(N, C, H, W)`` inside ``bounds``
(``[0, 1]`` by default; other bounds are scaled to ``[0, 1]`` and back), with every random draw taken from a seeded
NumPy ``Generator`` (never the global state):

* noise: ``gaussian_noise``, ``shot_noise``, ``impulse_noise``;
* blur: ``defocus_blur``, ``glass_blur``, ``motion_blur``, ``zoom_blur``;
* weather: ``snow``, ``fog``;
* digital: ``brightness``, ``contrast``, ``elastic_transform``, ``pixelate``, ``jpeg_compression``.

**Left out** (:data:`LEFT_OUT`): ``frost``. The reference blends a random crop of one of six photographs of frost
(``frost1.png`` … ``frost6.jpg`` in hendrycks/robustness) into the image; the corruption *is* those photographs,
which cannot be shipped here, and no generated texture reproduces them, so a substitute would be a different
corruption under the same name. Means over corruptions (mean accuracy, mCE) are over the fourteen.

**Parameters** are those of the reference code's CIFAR-10-C tables (``ImageNet-C/create_c/make_cifar_c.py`` in
hendrycks/robustness), which were set for 32×32 images. Parameters in pixels (blur radii and σ, glass-blur shift,
motion-blur length) are applied as they are at every size — at 8×8 a blur covers more of the image; relative ones
(zoom factors, pixelation ratio) and the elastic transform's (defined as fractions of the image side in the
reference) scale with the image; fog's plasma fractal is drawn on the smallest power-of-two square that covers the
image (32 for CIFAR, as in the reference). On 8×8 digits this means: zoom blur's severity 1 is the identity (the
reference's centre crop ⌈8/z⌉ is the whole image for every z ≤ 1.06, as ⌈32/z⌉ is at 32×32 for z ≤ 1.03),
pixelate goes through 7, 7, 6, 6, 5 pixels, and glass blur's one-pixel moves and the blurs are relatively 4× larger
than on CIFAR (``benchmarks/BENCHMARKS.md``, "Corruptions", has the digits accuracy per corruption and severity).

**Faithfulness.** Each corruption follows the reference's arithmetic and the order and shape of its random draws:
with a ``numpy.random.RandomState`` in place of the generator the noises, glass blur, fog and the elastic transform
reproduce the reference's output exactly up to the reference's uint8 storage steps and OpenCV's fixed-point
interpolation (``benchmarks/compare_corruptions_reference.py`` measures it). Where the reference calls libraries
that are not used here the operation is re-implemented from its definition: OpenCV's ``filter2D`` / ``GaussianBlur``
(correlation with reflect-101 borders), scikit-image's HSV round trip (brightness adds ``c`` to V = max over channels,
which scales each pixel's channels by V'/V), its salt-and-pepper noise, and ImageMagick's ``MotionBlurImage`` (a
one-sided Gaussian of ``2⌈radius⌉+1`` taps along the angle, edge pixels repeated) for motion blur and snow —
ImageMagick was not available to run, so that kernel was checked against imagecorruptions' NumPy port of it
(identical to 1e-15), which then stood in for ImageMagick inside the reference's motion_blur and snow. Two
reference quirks are kept because CIFAR-10-C was made with them: glass blur's "swap" copies the neighbour into the pixel and leaves the neighbour unchanged
(NumPy views on the right-hand side), and its shifts are drawn from ``randint(-1, 1)``, i.e. −1 or 0. The reference
stores intermediates as uint8 (glass blur, snow's layer, the PNG round trips of ImageMagick); here they stay floats,
so outputs are not quantized except by JPEG. Grayscale (C = 1) images are corrupted as one channel (snow's gray
mix uses the channel itself; JPEG encodes a grayscale image).

References:
    D. Hendrycks and T. Dietterich. Benchmarking Neural Network Robustness to Common Corruptions and Perturbations.
    ICLR 2019. https://arxiv.org/abs/1903.12261 — reference code: https://github.com/hendrycks/robustness
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from .errors import InputError
from .validation import Rule, validated

SEVERITIES = (1, 2, 3, 4, 5)
LEFT_OUT: dict[str, str] = {
    "frost": "blends crops of six frost photographs shipped with the reference code (frost1.png ... frost6.jpg), "
             "which cannot be shipped here; no generated texture reproduces them",
}
Rng = Any  # numpy Generator, or RandomState to reproduce the reference's global-state draws

# ------------------------------------------------------------------------------------------------- parameters
# make_cifar_c.py, hendrycks/robustness (CIFAR-10-C), severities 1..5.
_GAUSSIAN_NOISE = (0.04, 0.06, 0.08, 0.09, 0.10)  # σ
_SHOT_NOISE = (500, 250, 100, 75, 50)  # photons per unit intensity
_IMPULSE_NOISE = (0.01, 0.02, 0.03, 0.05, 0.07)  # fraction of values hit
_DEFOCUS_BLUR = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))  # disk radius, anti-alias σ
_GLASS_BLUR = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))  # σ, max shift, iterations
_MOTION_BLUR = ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))  # ImageMagick radius, σ
_ZOOM_BLUR = tuple(np.arange(1, stop, 0.01) for stop in (1.06, 1.11, 1.16, 1.21, 1.26))  # zoom factors
# loc, scale, zoom, threshold, blur radius, blur σ, image weight
_SNOW = ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
         (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8))
_FOG = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))  # strength, wibble decay
_BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)  # added to V
_CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)  # factor around the channel mean
# alpha, sigma, affine jitter — as fractions of the image side (IMSIZE × … in the reference)
_ELASTIC = ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))
_PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)  # side ratio of the low-resolution image
_JPEG = (80, 65, 58, 50, 40)  # quality


# ---------------------------------------------------------------------------------------------------- helpers
def _nchw(a: np.ndarray) -> np.ndarray:
    """Draws are taken in the reference's (…, H, W, C) order so a RandomState reproduces them; back to NCHW."""
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


def _nhwc(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 2, 3, 1)


def _nhwc_shape(x: np.ndarray) -> tuple[int, int, int, int]:
    n, c, h, w = x.shape
    return n, h, w, c


def _integers(rng: Rng, low: int, high: int, size: Any) -> np.ndarray:
    """Integers in [low, high): Generator.integers or RandomState.randint."""
    draw = getattr(rng, "integers", None) or rng.randint
    return np.asarray(draw(low, high, size=size))


def _spatial_gaussian(x: np.ndarray, sigma: float, mode: str, truncate: float = 4.0) -> np.ndarray:
    """Gaussian filter over the last two axes only (scikit-image's ``gaussian`` with channels kept apart)."""
    sig = (0.0,) * (x.ndim - 2) + (sigma, sigma)
    return ndimage.gaussian_filter(x, sig, mode=mode, truncate=truncate)


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    """The reference's anti-aliased disk: a normalized aliased disk on a ≥ 17×17 grid, blurred by a 3×3 (5×5 for
    radius > 8) Gaussian of σ ``alias_blur`` — OpenCV's ``GaussianBlur`` — then cropped to its non-zero support."""
    half = max(8, math.ceil(radius))
    grid = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(grid, grid)
    disk = (xx ** 2 + yy ** 2 <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    k = 1 if radius <= 8 else 2
    g = np.exp(-np.arange(-k, k + 1) ** 2 / (2.0 * alias_blur ** 2))
    g /= g.sum()
    kernel = ndimage.correlate(disk, np.outer(g, g), mode="mirror")  # disk is zero near the grid's edge
    rows, cols = np.nonzero(kernel.any(axis=1))[0], np.nonzero(kernel.any(axis=0))[0]
    return kernel[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def _clipped_zoom(a: np.ndarray, factor: float) -> np.ndarray:
    """Zoom into the centre of the last two axes by ``factor`` (bilinear, scipy), cropped back to the input size."""
    h, w = a.shape[-2:]
    ch, cw = math.ceil(h / factor), math.ceil(w / factor)
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = a[..., top:top + ch, left:left + cw]
    zoomed = ndimage.zoom(crop, (1,) * (a.ndim - 2) + (factor, factor), order=1)
    trim_top, trim_left = (zoomed.shape[-2] - h) // 2, (zoomed.shape[-1] - w) // 2
    return zoomed[..., trim_top:trim_top + h, trim_left:trim_left + w]


def _motion_blur_image(img: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick's ``MotionBlurImage`` on an (…, H, W) array: out(p) = Σ_i k_i · img(p + offset_i), k_i ∝
    exp(−i²/2σ²) for i < 2⌈radius⌉+1, offsets along ``angle`` (degrees) rounded as ImageMagick does, edge pixels
    repeated beyond the border."""
    width = int(2 * math.ceil(radius) + 1)
    taps = np.arange(width, dtype=np.float64)
    kernel = np.exp(-taps ** 2 / (2.0 * sigma ** 2))
    kernel /= kernel.sum()
    px, py = width * math.sin(math.radians(angle)), width * math.cos(math.radians(angle))
    norm = math.hypot(px, py)
    h, w = img.shape[-2:]
    rows, cols = np.arange(h), np.arange(w)
    out = np.zeros_like(img, dtype=np.float64)
    for i in range(width):
        dx = math.ceil(i * py / norm - 0.5)
        dy = math.ceil(i * px / norm - 0.5)
        out += kernel[i] * img[..., np.clip(rows + dy, 0, h - 1)[:, None], np.clip(cols + dx, 0, w - 1)[None, :]]
    return out


def _plasma_fractal(size: int, decay: float, rng: Rng) -> np.ndarray:
    """Diamond-square height map on a ``size``×``size`` grid (``size`` a power of two), scaled to [0, 1]; the
    reference's draws in its order (``wibble`` starts at 100 and is divided by ``decay`` per level)."""
    grid = np.zeros((size, size))
    step, wibble = size, 100.0

    def noisy_mean(total: np.ndarray) -> np.ndarray:
        return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        corners = grid[0:size:step, 0:size:step]
        square = corners + np.roll(corners, -1, axis=0)
        square = square + np.roll(square, -1, axis=1)
        grid[half:size:step, half:size:step] = noisy_mean(square)
        centres = grid[half:size:step, half:size:step]
        corners = grid[0:size:step, 0:size:step]
        grid[0:size:step, half:size:step] = noisy_mean(
            centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1))
        grid[half:size:step, 0:size:step] = noisy_mean(
            centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0))
        step //= 2
        wibble /= decay
    grid -= grid.min()
    return grid / grid.max()


def _gray(x: np.ndarray) -> np.ndarray:
    """Luma (ITU-R 601, OpenCV's RGB2GRAY) of an (N, C, H, W) batch with C = 3, or the channel itself for C = 1."""
    if x.shape[1] == 1:
        return x
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _box_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Pillow's BOX resampling from ``n_in`` to ``n_out`` samples as an (n_out, n_in) matrix (read off Pillow's own
    float resize of an identity image, so the weights are Pillow's)."""
    from PIL import Image

    eye = Image.fromarray(np.eye(n_in, dtype=np.float32), mode="F")
    return np.asarray(eye.resize((n_out, n_in), Image.Resampling.BOX), dtype=np.float64).T


def _per_image(x: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Apply ``fn`` to each (C, H, W) image in turn (random draws per image, in the reference's order)."""
    return np.stack([fn(img) for img in x]) if len(x) else x.copy()


# ------------------------------------------------------------------------------------------------ corruptions
# Each takes an (N, C, H, W) float64 array in [0, 1], its severity's parameters and a generator, and returns an
# array of the same shape (clipped to [0, 1] by the caller).
def _gaussian_noise(x: np.ndarray, sigma: float, rng: Rng) -> np.ndarray:
    """Additive Gaussian noise of standard deviation ``sigma``."""
    return x + _nchw(rng.normal(0.0, sigma, size=_nhwc_shape(x)))


def _shot_noise(x: np.ndarray, photons: float, rng: Rng) -> np.ndarray:
    """Poisson (shot) noise: intensity × ``photons`` counts, divided back."""
    return _nchw(rng.poisson(_nhwc(x) * photons)) / photons


def _impulse_noise(x: np.ndarray, amount: float, rng: Rng) -> np.ndarray:
    """Salt-and-pepper noise: each value, with probability ``amount``, set to 0 or 1 with equal odds
    (scikit-image's ``random_noise(mode='s&p')``)."""
    shape = _nhwc_shape(x)
    flipped = _nchw(rng.random(size=shape) <= amount)
    salted = _nchw(rng.random(size=shape) <= 0.5)
    return np.where(flipped, salted.astype(np.float64), x)


def _defocus_blur(x: np.ndarray, params: tuple[float, float], rng: Rng) -> np.ndarray:
    """Correlation with an anti-aliased disk (radius, anti-alias σ), reflect-101 borders (OpenCV's ``filter2D``)."""
    kernel = _disk(*params)
    return ndimage.correlate(x, kernel[None, None], mode="mirror")


def _glass_blur(x: np.ndarray, params: tuple[float, int, int], rng: Rng) -> np.ndarray:
    """Gaussian blur, ``iterations`` passes of local pixel moves (each pixel from bottom-right to top-left takes
    its neighbour at a shift drawn from ``randint(-delta, delta)``), Gaussian blur again."""
    sigma, delta, iterations = params
    n, _, h, w = x.shape
    out = _spatial_gaussian(x, sigma, mode="nearest")
    rows, cols = range(h - delta, delta, -1), range(w - delta, delta, -1)
    shifts = _integers(rng, -delta, delta, size=(n, iterations, len(rows), len(cols), 2))  # (dx, dy)
    batch = np.arange(n)
    for it in range(iterations):
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                dx, dy = shifts[:, it, i, j, 0], shifts[:, it, i, j, 1]
                out[:, :, r, c] = out[batch, :, r + dy, c + dx]
    return _spatial_gaussian(out, sigma, mode="nearest")


def _motion_blur(x: np.ndarray, params: tuple[float, float], rng: Rng) -> np.ndarray:
    """ImageMagick motion blur (radius, σ) at an angle drawn uniformly from [−45°, 45°] per image."""
    radius, sigma = params
    return _per_image(x, lambda img: _motion_blur_image(img, radius, sigma, rng.uniform(-45, 45)))


def _zoom_blur(x: np.ndarray, factors: np.ndarray, rng: Rng) -> np.ndarray:
    """Mean of the image and its centre zooms by each of ``factors``."""
    total = x.copy()
    for factor in factors:
        total += _clipped_zoom(x, factor)
    return total / (len(factors) + 1)


def _snow(x: np.ndarray, params: tuple[float, ...], rng: Rng) -> np.ndarray:
    """A thresholded, zoomed Gaussian snow layer, motion-blurred at an angle in [−135°, −45°], added twice (as is
    and rotated 180°) to the image brightened toward its gray level."""
    loc, scale, zoom, threshold, radius, sigma, weight = params

    def flakes(img: np.ndarray) -> np.ndarray:
        layer = _clipped_zoom(rng.normal(loc, scale, size=img.shape[-2:]), zoom)
        layer = np.clip(np.where(layer < threshold, 0.0, layer), 0.0, 1.0)
        return _motion_blur_image(layer, radius, sigma, rng.uniform(-135, -45))[None]

    layer = _per_image(x, flakes)
    x = weight * x + (1 - weight) * np.maximum(x, _gray(x) * 1.5 + 0.5)
    return x + layer + layer[..., ::-1, ::-1]


def _fog(x: np.ndarray, params: tuple[float, float], rng: Rng) -> np.ndarray:
    """Plasma-fractal fog of strength ``c`` (wibble decay ``d``), rescaled by max / (max + c) per image."""
    strength, decay = params
    h, w = x.shape[-2:]
    size = 1 << max(1, math.ceil(math.log2(max(h, w))))

    def one(img: np.ndarray) -> np.ndarray:
        peak = img.max()
        return (img + strength * _plasma_fractal(size, decay, rng)[:h, :w]) * peak / (peak + strength)

    return _per_image(x, one)


def _brightness(x: np.ndarray, shift: float, rng: Rng) -> np.ndarray:
    """V += ``shift`` in HSV (clipped to 1): hue and saturation kept, so channels scale by V'/V (gray V' for
    black pixels)."""
    value = x.max(axis=1, keepdims=True)
    brighter = np.clip(value + shift, 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(value > 0, x * (brighter / value), brighter)


def _contrast(x: np.ndarray, factor: float, rng: Rng) -> np.ndarray:
    """(x − mean) × ``factor`` + mean, the mean per image and channel."""
    mean = x.mean(axis=(2, 3), keepdims=True)
    return (x - mean) * factor + mean


def _elastic_transform(x: np.ndarray, params: tuple[float, float, float], rng: Rng) -> np.ndarray:
    """A random affine warp (three points jittered by up to ``jitter`` px, reflect-101 borders) then a smooth
    random displacement field (uniform noise, Gaussian σ ``sigma`` px, scaled by ``alpha`` px; bilinear,
    reflected borders). The three parameters are fractions of the image side, as in the reference."""
    h, w = x.shape[-2:]
    alpha, sigma, jitter = (side_frac * min(h, w) for side_frac in params)
    centre = np.float32((h, w)) // 2
    third = min(h, w) // 3
    src = np.float32([centre + third, [centre[0] + third, centre[1] - third], centre - third])
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")

    def one(img: np.ndarray) -> np.ndarray:
        dst = src + rng.uniform(-jitter, jitter, size=src.shape).astype(np.float32)
        # the affine map src -> dst (OpenCV getAffineTransform); warpAffine samples the input at its inverse
        forward = np.linalg.solve(np.c_[src.astype(np.float64), np.ones(3)], dst.astype(np.float64)).T
        inverse = np.linalg.inv(np.vstack([forward, [0.0, 0.0, 1.0]]))[:2]
        sx = inverse[0, 0] * cols + inverse[0, 1] * rows + inverse[0, 2]
        sy = inverse[1, 0] * cols + inverse[1, 1] * rows + inverse[1, 2]
        warped = np.stack([ndimage.map_coordinates(ch, [sy, sx], order=1, mode="mirror") for ch in img])
        dx = _spatial_gaussian(rng.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3) * alpha
        dy = _spatial_gaussian(rng.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3) * alpha
        return np.stack([ndimage.map_coordinates(ch, [rows + dy, cols + dx], order=1, mode="reflect")
                         for ch in warped])

    return _per_image(x, one)


def _pixelate(x: np.ndarray, ratio: float, rng: Rng) -> np.ndarray:
    """Pillow BOX downsampling to ``int(side × ratio)`` and BOX upsampling back."""
    h, w = x.shape[-2:]
    sh, sw = max(1, int(h * ratio)), max(1, int(w * ratio))
    rows = _box_resize_matrix(sh, h) @ _box_resize_matrix(h, sh)
    cols = _box_resize_matrix(sw, w) @ _box_resize_matrix(w, sw)
    return rows @ x @ cols.T


def _jpeg_compression(x: np.ndarray, quality: int, rng: Rng) -> np.ndarray:
    """Pillow JPEG round trip at ``quality`` (Pillow's default chroma subsampling), on the image rounded to 8 bits
    (RGB for C = 3, grayscale for C = 1)."""
    from PIL import Image

    def one(img: np.ndarray) -> np.ndarray:
        pixels = np.round(img.transpose(1, 2, 0) * 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels[..., 0] if img.shape[0] == 1 else pixels).save(buffer, "JPEG", quality=quality)
        decoded = np.asarray(Image.open(buffer), dtype=np.float64) / 255
        return decoded[None] if decoded.ndim == 2 else decoded.transpose(2, 0, 1)

    return _per_image(x, one)


_TABLE: dict[str, tuple[Callable[[np.ndarray, Any, Rng], np.ndarray], Sequence[Any]]] = {
    "gaussian_noise": (_gaussian_noise, _GAUSSIAN_NOISE),
    "shot_noise": (_shot_noise, _SHOT_NOISE),
    "impulse_noise": (_impulse_noise, _IMPULSE_NOISE),
    "defocus_blur": (_defocus_blur, _DEFOCUS_BLUR),
    "glass_blur": (_glass_blur, _GLASS_BLUR),
    "motion_blur": (_motion_blur, _MOTION_BLUR),
    "zoom_blur": (_zoom_blur, _ZOOM_BLUR),
    "snow": (_snow, _SNOW),
    "fog": (_fog, _FOG),
    "brightness": (_brightness, _BRIGHTNESS),
    "contrast": (_contrast, _CONTRAST),
    "elastic_transform": (_elastic_transform, _ELASTIC),
    "pixelate": (_pixelate, _PIXELATE),
    "jpeg_compression": (_jpeg_compression, _JPEG),
}
CORRUPTIONS: tuple[str, ...] = tuple(_TABLE)
RANDOM_CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow", "fog",
                      "elastic_transform")
_PAPER_ORDER = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
                "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
                "jpeg_compression")
_THREE_CHANNEL = ("snow", "jpeg_compression")  # gray mix / JPEG colour model: C must be 1 or 3


def _apply_array(x: np.ndarray, name: str, severity: int, rng: Rng) -> np.ndarray:
    """Corrupt an (N, C, H, W) float64 array in [0, 1] with generator ``rng`` (a ``Generator``, or a
    ``RandomState`` to replay the reference's global-state draws); returns it clipped to [0, 1]. No checks: the
    tensor entry point :func:`corrupt` validates."""
    fn, table = _TABLE[name]
    return np.clip(fn(x, table[severity - 1], rng), 0.0, 1.0)


def _rng(seed: int, name: str, severity: int) -> np.random.Generator:
    """One stream per (seed, corruption, severity): severities and corruptions never share draws."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_PAPER_ORDER.index(name), severity)))


# --------------------------------------------------------------------------------------------------- checks
def _check_name(name: Any, where: str) -> str:
    if not isinstance(name, str):
        raise InputError(f"{where}: name must be a corruption's name (a string), got {type(name).__name__}; choose "
                         f"one of {', '.join(CORRUPTIONS)}")
    if name in LEFT_OUT:
        raise InputError(f"{where}: name {name!r} is left out of adverse's corruptions: it {LEFT_OUT[name]}; "
                         f"choose one of {', '.join(CORRUPTIONS)}")
    if name not in _TABLE:
        raise InputError(f"{where}: name {name!r} is not a corruption; choose one of {', '.join(CORRUPTIONS)}")
    return name


def check_selection(corruptions: Any, severities: Any, where: str = "corruptions") -> tuple[tuple[str, ...],
                                                                                        tuple[int, ...]]:
    """``corruptions`` (a name or names from :data:`CORRUPTIONS`, distinct) and ``severities`` (distinct integers
    in 1..5) as tuples; an :class:`InputError` naming ``where`` and the fix otherwise."""
    if isinstance(corruptions, str):
        corruptions = (corruptions,)
    if not isinstance(corruptions, (tuple, list)):
        raise InputError(f"{where}: corruptions must be names from {', '.join(CORRUPTIONS)}, got {corruptions!r}")
    names = tuple(_check_name(c, where) for c in corruptions)
    if not names or len(set(names)) != len(names):
        raise InputError(f"{where}: corruptions must be distinct names from {', '.join(CORRUPTIONS)}, got "
                         f"{corruptions!r}")
    sev = tuple(severities) if isinstance(severities, (tuple, list)) else (severities,)
    if not sev or len(set(sev)) != len(sev) or any(isinstance(s, bool) or not isinstance(s, (int, np.integer))
                                                    or not 1 <= s <= 5 for s in sev):
        raise InputError(f"{where}: severities must be distinct integers in 1..5, got {severities!r}")
    return names, tuple(int(s) for s in sev)


def _check_images(x: Any, bounds: tuple[float, float], where: str, names: Sequence[str]) -> None:
    if not torch.is_tensor(x):
        raise InputError(f"{where}: x must be a torch.Tensor, got {type(x).__name__}; use torch.as_tensor(x)")
    if not x.is_floating_point():
        raise InputError(f"{where}: x must be a floating-point tensor, got {x.dtype}; use x.float()")
    if x.dim() != 4:
        raise InputError(f"{where}: x must be a batch of images (N, C, H, W), got shape {tuple(x.shape)}; "
                         "add the batch axis with x.unsqueeze(0)")
    if min(x.shape[2:]) < 4:
        raise InputError(f"{where}: images must be at least 4×4 pixels, got {tuple(x.shape[2:])}")
    channel_bound = [n for n in names if n in _THREE_CHANNEL]
    if x.shape[1] not in (1, 3) and channel_bound:
        raise InputError(f"{where}: {', '.join(channel_bound)} need grayscale or RGB images (C = 1 or 3), got "
                         f"C = {x.shape[1]}; leave them out of the corruptions")
    if x.numel() == 0:
        return
    x = x.detach()
    if torch.isnan(x).any():
        raise InputError(f"{where}: x contains NaN; clean or drop those images first")
    lo, hi = float(bounds[0]), float(bounds[1])
    below, above = float(x.min()), float(x.max())
    if below < lo or above > hi:
        raise InputError(f"{where}: x lies outside bounds ({lo:g}, {hi:g}) (min {below:.4g}, max {above:.4g}); "
                         "pass the bounds the images live in, e.g. bounds=(0, 255), or scale them into [0, 1]")


def _corrupt_batch(x: torch.Tensor, name: str, severity: int, rng: Rng, bounds: tuple[float, float]) -> torch.Tensor:
    lo, hi = float(bounds[0]), float(bounds[1])
    unit = (x.detach().cpu().double().numpy() - lo) / (hi - lo)
    out = _apply_array(np.clip(unit, 0.0, 1.0), name, severity, rng) * (hi - lo) + lo
    return torch.from_numpy(np.clip(out, lo, hi)).to(device=x.device, dtype=x.dtype)


# ------------------------------------------------------------------------------------------------------- API
@validated(seed=Rule("int", low=0, high=2**63 - 1))
def corrupt(x: torch.Tensor, name: str, severity: int, *, seed: int = 0,
            bounds: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """One of the common corruptions of Hendrycks & Dietterich at one severity, on a batch of images.

    Parameters
    ----------
    x : Tensor (N, C, H, W), floating point, inside ``bounds``; C = 1 (grayscale) or 3 (RGB) — other C work for
        every corruption but snow and JPEG. Any size from 4×4; parameters are CIFAR-10-C's (32×32).
    name : one of :data:`CORRUPTIONS` (``frost`` is left out, see :data:`LEFT_OUT`).
    severity : 1 … 5.
    seed : seeds the corruption's random draws (one stream per seed, corruption and severity), so the same call
        gives the same output; the deterministic corruptions ignore it.
    bounds : the range of ``x``; images are scaled to [0, 1], corrupted with the paper's parameters, and scaled
        back, so e.g. ``bounds=(0, 255)`` gives what the reference gives on 8-bit images, in floats.

    Returns
    -------
    Tensor of the same shape, dtype and device as ``x``, inside ``bounds``; not differentiable (the corruptions
    run in NumPy / SciPy / Pillow on a detached copy).

    References
    ----------
    Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and Perturbations",
    ICLR 2019; parameters from hendrycks/robustness ``ImageNet-C/create_c/make_cifar_c.py``.
    """
    _check_name(name, "corrupt")
    _check_images(x, bounds, "corrupt", [name])
    if x.numel() == 0:
        return x.clone()
    return _corrupt_batch(x, name, severity, _rng(seed, name, severity), bounds)


def _json_float(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


@dataclass
class CorruptionResult:
    """Accuracy under each corruption and severity (:func:`corruption_accuracy`).

    ``accuracy[name][severity]``; ``corruption_mean[name]`` (over severities); ``severity_mean[severity]`` (over
    corruptions); ``mean_accuracy`` (over both). With a baseline: its accuracies, ``ce[name]`` = Σ_s E_{s,c} /
    Σ_s E^base_{s,c}, ``relative_ce[name]`` = Σ_s (E_{s,c} − E_clean) / Σ_s (E^base_{s,c} − E^base_clean), and
    their means over corruptions ``mce`` and ``relative_mce`` (NaN where a baseline sum is 0)."""

    corruptions: tuple[str, ...]
    severities: tuple[int, ...]
    n: int
    seed: int
    clean_accuracy: float
    accuracy: dict[str, dict[int, float]]
    corruption_mean: dict[str, float] = field(default_factory=dict)
    severity_mean: dict[int, float] = field(default_factory=dict)
    mean_accuracy: float = float("nan")
    baseline_clean_accuracy: float | None = None
    baseline_accuracy: dict[str, dict[int, float]] | None = None
    ce: dict[str, float] | None = None
    relative_ce: dict[str, float] | None = None
    mce: float | None = None
    relative_mce: float | None = None
    left_out: dict[str, str] = field(default_factory=lambda: dict(LEFT_OUT))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: string keys, floats (NaN and ±inf as None)."""

        def table(t: dict[str, dict[int, float]] | None) -> dict[str, dict[str, float | None]] | None:
            return None if t is None else {c: {str(s): _json_float(a) for s, a in row.items()} for c, row in t.items()}

        def flat(d: dict[Any, float] | None) -> dict[str, float | None] | None:
            return None if d is None else {str(k): _json_float(v) for k, v in d.items()}

        return {
            "corruptions": list(self.corruptions), "severities": list(self.severities), "n": self.n,
            "seed": self.seed, "clean_accuracy": _json_float(self.clean_accuracy), "accuracy": table(self.accuracy),
            "corruption_mean": flat(self.corruption_mean), "severity_mean": flat(self.severity_mean),
            "mean_accuracy": _json_float(self.mean_accuracy),
            "baseline_clean_accuracy": _json_float(self.baseline_clean_accuracy),
            "baseline_accuracy": table(self.baseline_accuracy), "ce": flat(self.ce),
            "relative_ce": flat(self.relative_ce), "mce": _json_float(self.mce),
            "relative_mce": _json_float(self.relative_mce), "left_out": dict(self.left_out),
        }


def _ratio(num: float, den: float) -> float:
    return num / den if den != 0 else float("nan")


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


class _Counter:
    """Correct predictions of one model, batch by batch, in eval mode (its mode restored afterwards)."""

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.model = model
        params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
        self.device = params[0].device if params else None

    def correct(self, x: torch.Tensor, y: torch.Tensor) -> int:
        if self.device is not None:
            x, y = x.to(self.device), y.to(self.device)
        logits = self.model(x)
        if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            raise InputError(f"corruption_accuracy: the model must return logits of shape (n, classes), got "
                             f"{tuple(logits.shape)}")
        return int((logits.argmax(dim=1) == y).sum())


@validated(seed=Rule("int", low=0, high=2**63 - 1))
def corruption_accuracy(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, *,
                        corruptions: Sequence[str] = CORRUPTIONS, severities: Sequence[int] = SEVERITIES,
                        seed: int = 0, batch_size: int = 256, baseline: Callable[[torch.Tensor], torch.Tensor]
                        | None = None, bounds: tuple[float, float] = (0.0, 1.0)) -> CorruptionResult:
    """Accuracy of ``model`` on ``x`` under each corruption and severity, with the mCE of Hendrycks & Dietterich
    when a ``baseline`` model is given.

    Parameters
    ----------
    model : maps (n, C, H, W) inputs to (n, classes) logits; run in eval mode, without gradients.
    x, y : test images inside ``bounds`` and their integer labels.
    corruptions : names from :data:`CORRUPTIONS` (default all fourteen; frost is left out, see :data:`LEFT_OUT`).
    severities : a subset of 1 … 5.
    seed : the corrupted images are exactly ``corrupt(x, name, s, seed=seed)`` whatever ``batch_size``.
    batch_size : images corrupted and classified at a time.
    baseline : a second model scored on the same corrupted images; gives ``ce``/``mce`` (Σ_s E_{s,c}^f /
        Σ_s E_{s,c}^base, mean over c) and ``relative_ce``/``relative_mce`` (Σ_s (E_{s,c}^f − E_clean^f) /
        Σ_s (E_{s,c}^base − E_clean^base)). The paper's baseline is AlexNet.
    bounds : the range of ``x``.

    Returns
    -------
    :class:`CorruptionResult` (accuracies in [0, 1]; ``to_dict()`` for JSON).

    References
    ----------
    Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and Perturbations",
    ICLR 2019 (mCE and relative mCE: section 3).
    """
    where = "corruption_accuracy"
    names, sev = check_selection(corruptions, severities, where)
    _check_images(x, bounds, where, names)
    if not torch.is_tensor(y) or y.dim() != 1 or y.shape[0] != x.shape[0] or y.is_floating_point():
        raise InputError(f"{where}: y must be a 1-D integer tensor of {x.shape[0]} labels, got "
                         f"{tuple(y.shape) if torch.is_tensor(y) else type(y).__name__}; use y.long()")
    n = int(x.shape[0])
    if n == 0:
        raise InputError(f"{where}: x is empty; pass at least one image")
    y = y.long()
    models = [_Counter(model)] + ([_Counter(baseline)] if baseline is not None else [])
    modes = [(m, m.training) for m in (model, baseline) if isinstance(m, torch.nn.Module)]
    try:
        for m, _ in modes:
            m.eval()
        with torch.no_grad():  # correct predictions, counted: CE ratios are exact (a zero sum is exactly 0)
            clean = [sum(c.correct(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, n, batch_size))
                     for c in models]
            hits: list[dict[str, dict[int, int]]] = [{name: {} for name in names} for _ in models]
            for name in names:
                for s in sev:
                    rng = _rng(seed, name, s)  # one stream across batches: same images as corrupt(x, ...)
                    for k in range(len(models)):
                        hits[k][name][s] = 0
                    for i in range(0, n, batch_size):
                        xc = _corrupt_batch(x[i:i + batch_size], name, s, rng, bounds)
                        for k, c in enumerate(models):
                            hits[k][name][s] += c.correct(xc, y[i:i + batch_size])
    finally:
        for m, was in modes:
            m.train(was)
    acc = [{c: {s: h[c][s] / n for s in sev} for c in names} for h in hits]
    result = CorruptionResult(names, sev, n, seed, clean[0] / n, acc[0],
                              corruption_mean={c: _mean(list(acc[0][c].values())) for c in names},
                              severity_mean={s: _mean([acc[0][c][s] for c in names]) for s in sev},
                              mean_accuracy=_mean([a for c in names for a in acc[0][c].values()]))
    if baseline is not None:
        # error counts: Σ_s E_{s,c} ∝ Σ_s (n − hits), Σ_s (E_{s,c} − E_clean) ∝ Σ_s (clean − hits); n cancels
        f, b = hits
        result.baseline_clean_accuracy = clean[1] / n
        result.baseline_accuracy = acc[1]
        result.ce = {c: _ratio(sum(n - f[c][s] for s in sev), sum(n - b[c][s] for s in sev)) for c in names}
        result.relative_ce = {c: _ratio(sum(clean[0] - f[c][s] for s in sev), sum(clean[1] - b[c][s] for s in sev))
                              for c in names}
        result.mce = _mean(list(result.ce.values()))
        result.relative_mce = _mean(list(result.relative_ce.values()))
    return result
