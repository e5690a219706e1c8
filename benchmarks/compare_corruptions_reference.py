"""adverse.corruptions against the paper's reference code (hendrycks/robustness, make_cifar_c.py), image by image.

The reference is not shipped: fetch ``ImageNet-C/create_c/make_cifar_c.py`` from github.com/hendrycks/robustness
to a throwaway place and pass its path. It needs scikit-image and OpenCV (comparison tools only, never
dependencies of adverse; e.g. ``pip install --target /tmp/refpkgs scikit-image opencv-python-headless`` and
``PYTHONPATH=/tmp/refpkgs``). Only its corruption functions are executed (the file's dataset loop is cut off), with
empty torchvision modules (only the loop uses it) and shims for what newer libraries removed: ``np.float_``, ``np.fromstring`` on bytes, ``scipy.ndimage.interpolation``, scikit-image ``gaussian``'s
``multichannel=True`` (now ``channel_axis=-1``). ImageMagick's Python binding (Wand) is stubbed when absent: then
``motion_blur`` and ``snow`` cannot run and are reported as such; ``frost`` is left out of adverse.

Images: 32×32 RGB crops of scikit-learn's two bundled sample photographs (uint8, as CIFAR's). For each corruption,
severity and image: the reference's float output / 255 (before its dataset's uint8 cast) against
``adverse.corruptions`` on the same image / 255. Random corruptions replay the same draws: the reference seeds the
global ``np.random`` (``np.random.seed(k)``); adverse gets ``np.random.RandomState(k)`` in place of its generator,
which it draws from in the reference's order and shapes. ``impulse_noise``: the reference calls scikit-image's
``random_noise(mode='s&p')``, which draws from its own fresh generator; that call is made here with
``rng=np.random.default_rng(k)`` and adverse gets the same generator.

Motion blur and snow call ImageMagick through Wand in the reference; where Wand is absent, adverse's motion blur
kernel is compared with imagecorruptions' NumPy port of ImageMagick's ``MotionBlurImage``
(bethgelab/imagecorruptions, on ``PYTHONPATH`` too; ``pip install --target … --no-deps imagecorruptions``), and that
port stands in for ImageMagick inside the reference's own motion_blur and snow (PNG round trips kept), so the rest
of those two functions — snow's draws, zoom, threshold, gray mix and 180° copy — is checked as written.

Usage::

    PYTHONPATH=/tmp/refpkgs:/tmp/icpkgs python benchmarks/compare_corruptions_reference.py --reference /tmp/make_cifar_c.py
"""

from __future__ import annotations

import argparse
import sys
import time
import types

import numpy as np
import scipy.ndimage

from adverse.corruptions import CORRUPTIONS, LEFT_OUT, _apply_array

NAMES = {  # adverse name -> reference function name
    "gaussian_noise": "gaussian_noise", "shot_noise": "shot_noise", "impulse_noise": "impulse_noise",
    "defocus_blur": "defocus_blur", "glass_blur": "glass_blur", "motion_blur": "motion_blur",
    "zoom_blur": "zoom_blur", "snow": "snow", "fog": "fog", "brightness": "brightness", "contrast": "contrast",
    "elastic_transform": "elastic_transform", "pixelate": "pixelate", "jpeg_compression": "jpeg_compression",
}


def load_reference(path: str) -> tuple[dict, bool]:
    """The reference's corruption functions (its namespace) and whether Wand (ImageMagick) is real."""
    with open(path, encoding="utf-8") as f:
        source = f.read().split("# /////////////// End Distortions")[0]
    if not hasattr(np, "float_"):
        np.float_ = np.float64  # type: ignore[attr-defined]
    sys.modules.setdefault("scipy.ndimage.interpolation", scipy.ndimage)
    try:
        import wand.api  # noqa: F401

        wand_ok = True
    except (ImportError, OSError):  # no ImageMagick: stub the names the file touches at import
        wand_ok = False
        library = types.SimpleNamespace(MagickMotionBlurImage=types.SimpleNamespace())
        image = types.ModuleType("wand.image")
        image.Image = type("Image", (), {})
        for name, attrs in (("wand", {}), ("wand.image", {"Image": image.Image}), ("wand.api", {"library": library}),
                            ("wand.color", {})):
            module = types.ModuleType(name)
            module.__dict__.update(attrs)
            sys.modules[name] = module
    for name in ("torchvision", "torchvision.datasets", "torchvision.transforms"):  # only its dataset loop uses them
        sys.modules.setdefault(name, types.ModuleType(name))
    namespace: dict = {"__name__": "make_cifar_c"}
    exec(compile(source, path, "exec"), namespace)  # noqa: S102 - a local reference file, on purpose
    from skimage.filters import gaussian as sk_gaussian

    def gaussian(image, sigma=1, multichannel=None, **kwargs):  # scikit-image >= 0.21 spells it channel_axis
        if multichannel:
            kwargs["channel_axis"] = -1
        return sk_gaussian(image, sigma=sigma, **kwargs)

    namespace["gaussian"] = gaussian
    numpy_shim = types.ModuleType("numpy_shim")  # np.fromstring(bytes, uint8) is np.frombuffer in NumPy 2
    numpy_shim.__getattr__ = lambda attr: getattr(np, attr)  # type: ignore[method-assign]
    numpy_shim.fromstring = lambda data, dtype=float: np.frombuffer(data, dtype)  # type: ignore[attr-defined]
    namespace["np"] = numpy_shim
    return namespace, wand_ok


def test_images(n: int) -> list[np.ndarray]:
    """``n`` 32×32 uint8 RGB crops of scikit-learn's sample photographs (china.jpg, flower.jpg), downsampled
    4× with Pillow's box filter from 128×128 crops."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    out = []
    photos = load_sample_images().images
    for k in range(n):
        photo = photos[k % len(photos)]
        top, left = 40 + 90 * (k // 2 % 3), 60 + 150 * (k // 6)
        crop = Image.fromarray(photo[top:top + 128, left:left + 128])
        out.append(np.asarray(crop.resize((32, 32), Image.Resampling.BOX)))
    return out


def reference_output(ref: dict, name: str, img: np.ndarray, severity: int, seed: int) -> np.ndarray:
    from PIL import Image

    if name == "impulse_noise":
        from skimage.util import random_noise

        amount = [0.01, 0.02, 0.03, 0.05, 0.07][severity - 1]  # the reference's table, checked below
        out = random_noise(img / 255.0, mode="s&p", amount=amount, rng=np.random.default_rng(seed))
        return np.clip(out, 0, 1)
    np.random.seed(seed)
    return np.asarray(ref[NAMES[name]](Image.fromarray(img), severity), dtype=np.float64) / 255.0


def adverse_output(name: str, img: np.ndarray, severity: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed) if name == "impulse_noise" else np.random.RandomState(seed)
    x = (img.astype(np.float64) / 255.0).transpose(2, 0, 1)[None]
    return _apply_array(x, name, severity, rng)[0].transpose(1, 2, 0)


def glass_blur_uint8_step(images: list[np.ndarray], ref: dict) -> str:
    """glass_blur again with the reference's uint8 step replayed (its first blur's output floored to 1/255), to show
    the remaining difference is that step alone."""
    import adverse.corruptions as ac

    blur = ac._spatial_gaussian
    calls = []

    def first_quantized(x, *a, **k):
        out = blur(x, *a, **k)
        calls.append(1)
        return np.floor(out * 255) / 255 if len(calls) % 2 == 1 else out

    ac._spatial_gaussian = first_quantized
    try:
        worst = [max(float(np.abs(reference_output(ref, "glass_blur", img, s, k)
                                  - adverse_output("glass_blur", img, s, k)).max()) for k, img in enumerate(images))
                 for s in range(1, 6)]
    finally:
        ac._spatial_gaussian = blur
    return f"| glass_blur, the reference's uint8 step replayed | {' | '.join(f'{w:.2g}' for w in worst)} | | |"


def port_motion_blur():
    """imagecorruptions' NumPy port of ImageMagick's MotionBlurImage (bethgelab/imagecorruptions, ``_motion_blur``),
    or None when that package is not importable (it needs scikit-image and OpenCV too)."""
    sys.modules.setdefault("scipy.ndimage.interpolation", scipy.ndimage)
    if "pkg_resources" not in sys.modules:  # used only to find its frost images
        stub = types.ModuleType("pkg_resources")
        stub.resource_filename = lambda *a: ""
        sys.modules["pkg_resources"] = stub
    try:
        from imagecorruptions.corruptions import _motion_blur
    except ImportError:
        return None
    return _motion_blur


def stand_in_motion_image(port):
    """A stand-in for the reference's ``MotionImage`` (Wand): decodes the PNG blob, blurs it with ``port`` (ImageMagick
    repeats edge pixels; at 32×32 the port's dropped taps do not occur, see the kernel check) and re-encodes it as
    8-bit PNG, as ImageMagick's PNG writer does, so the rest of the reference's motion_blur and snow runs as written."""
    import io

    from PIL import Image

    class MotionImage:
        def __init__(self, blob: bytes) -> None:
            self.pixels = np.asarray(Image.open(io.BytesIO(blob)), dtype=np.float64)

        def motion_blur(self, radius: float = 0.0, sigma: float = 0.0, angle: float = 0.0) -> None:
            self.pixels = port(self.pixels, radius, sigma, angle)

        def make_blob(self) -> bytes:
            out = io.BytesIO()
            Image.fromarray(np.clip(np.round(self.pixels), 0, 255).astype(np.uint8)).save(out, format="PNG")
            return out.getvalue()

    return MotionImage


def compare_motion_kernel(images: list[np.ndarray]) -> None:
    """adverse's motion blur kernel against imagecorruptions' port, same image and angle, every (radius, σ) of
    motion_blur and snow. The port drops the taps that leave the image (it breaks out of its loop) where ImageMagick
    repeats the edge; at 32×32 that happens only for snow's longest kernels at steep angles."""
    from adverse.corruptions import _MOTION_BLUR, _SNOW, _motion_blur_image

    port = port_motion_blur()
    if port is None:
        print("\nmotion blur kernel vs imagecorruptions: not run (imagecorruptions not importable)")
        return
    print("\nmotion blur kernel (motion_blur, snow) vs imagecorruptions' NumPy port of ImageMagick's MotionBlurImage,"
          "\nsame image and angle; max |difference| over images and 20 angles per image, [0, 1] units")
    rng = np.random.default_rng(0)
    for label, params, angles in (("motion_blur", _MOTION_BLUR, (-45, 45)),
                                  ("snow", [p[4:6] for p in _SNOW], (-135, -45))):
        cells = []
        for radius, sigma in params:
            worst = 0.0
            for img in images:
                x = img.astype(np.float64) / 255.0
                for angle in rng.uniform(*angles, size=20):
                    theirs = port(x, radius, sigma, angle)
                    ours = _motion_blur_image(x.transpose(2, 0, 1), radius, sigma, angle).transpose(1, 2, 0)
                    worst = max(worst, float(np.abs(theirs - ours).max()))
            cells.append(f"{worst:.2g}")
        print(f"| {label} | {' | '.join(cells)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference", required=True, help="path to make_cifar_c.py from hendrycks/robustness")
    ap.add_argument("--images", type=int, default=8)
    args = ap.parse_args()
    ref, wand_ok = load_reference(args.reference)
    stand_in = not wand_ok and port_motion_blur() is not None
    if stand_in:
        ref["MotionImage"] = stand_in_motion_image(port_motion_blur())
    images = test_images(args.images)
    import PIL
    import skimage

    print(f"reference: {args.reference}; scikit-image {skimage.__version__}, Pillow {PIL.__version__}, "
          f"Wand {'yes' if wand_ok else 'absent'}"
          f"{'; ImageMagick motion blur: imagecorruptions port stand-in' if stand_in else ''}; "
          f"{len(images)} images 32x32x3 uint8")
    print("max |reference - adverse| over images, in [0, 1] units (1/255 = 0.0039), severities 1..5")
    print("| corruption | s=1 | s=2 | s=3 | s=4 | s=5 | mean abs (all) | time |")
    print("|---|---|---|---|---|---|---|---|")
    for name in CORRUPTIONS:
        if name in ("motion_blur", "snow") and not wand_ok and not stand_in:
            print(f"| {name} | not run: the reference calls ImageMagick (Wand), absent here | | | | | | |")
            continue
        start, cells, means = time.perf_counter(), [], []
        for severity in range(1, 6):
            worst = 0.0
            for k, img in enumerate(images):
                a = reference_output(ref, name, img, severity, seed=k)
                b = adverse_output(name, img, severity, seed=k)
                worst = max(worst, float(np.abs(a - b).max()))
                means.append(float(np.abs(a - b).mean()))
            cells.append(f"{worst:.2g}")
        label = f"{name} (ImageMagick: the port, 8-bit PNG kept)" if name in ("motion_blur", "snow") and stand_in \
            else name
        print(f"| {label} | {' | '.join(cells)} | {np.mean(means):.2g} | {time.perf_counter() - start:.1f} s |")
    print(glass_blur_uint8_step(images, ref))
    for name, why in LEFT_OUT.items():
        print(f"| {name} | left out: {why} | | | | | | |")
    compare_motion_kernel(images)


if __name__ == "__main__":
    main()
