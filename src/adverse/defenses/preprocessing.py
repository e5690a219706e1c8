"""Input-preprocessing defenses as ``nn.Module`` layers that go inside the model, with explicit gradients.

Put a preprocessor first in the model (``nn.Sequential(BitDepth(1, gradient="bpda"), classifier)``) so that every
attack sees the whole pipeline. ``gradient`` says what an attack differentiates:

``"exact"``  autograd through the real transform. For bit-depth reduction this is the *naive* gradient (zero almost
             everywhere: the masked gradient that made these defenses look robust). JPEG has none (it runs in
             Pillow) and refuses this mode.
``"bpda"``   Backward Pass Differentiable Approximation with the identity: the forward pass runs the real
             transform, the backward pass treats it as ``g(x) = x`` (Athalye, Carlini & Wagner 2018).
``"eot"``    for Expectation over Transformation: the gradient of one draw is exact where the transform is
             differentiable and BPDA where it is not; evaluate and attack the enclosing model through
             :class:`adverse.evasion.EOT` (``EOT(model, samples)``), which averages ``samples`` draws. The
             randomized transforms (:class:`GaussianNoise`, :class:`RandomResizePad`) need it; for a
             deterministic transform one draw is the expectation, so "eot" equals "exact" (or "bpda" where no
             exact gradient exists).

Randomized preprocessors draw from their own generator, seeded at construction (``seed``); they never read the
global RNG, and the same seed gives the same sequence of draws. :meth:`Preprocessor.reseed` starts it over.

References
----------
Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security: Circumventing Defenses to
Adversarial Examples", ICML 2018. Xu, Evans & Qi, "Feature Squeezing: Detecting Adversarial Examples in Deep Neural
Networks", NDSS 2018 (bit depth, median smoothing). Guo, Rana, Cisse & van der Maaten, "Countering Adversarial
Images using Input Transformations", ICLR 2018 (bit depth, JPEG). Dziugaite, Ghahramani & Roy, "A study of the
effect of JPG compression on adversarial images", 2016. Xie, Wang, Zhang, Ren & Yuille, "Mitigating Adversarial
Effects Through Randomization", ICLR 2018 (random resize and pad).
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..validation import validated

Tensor = torch.Tensor
GRADIENTS = ("exact", "bpda", "eot")


class _Identity(torch.autograd.Function):
    """Forward: the transformed input ``t`` (given, detached); backward: the incoming gradient, unchanged (BPDA
    with ``g(x) = x``)."""

    @staticmethod
    def forward(ctx, x: Tensor, t: Tensor) -> Tensor:
        return t.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


def bpda(x: Tensor, transform) -> Tensor:
    """``transform(x)`` in the forward pass, the identity in the backward pass (Athalye et al. 2018)."""
    with torch.no_grad():
        t = transform(x.detach())
    return _Identity.apply(x, t)


class Preprocessor(nn.Module):
    """Base class: subclasses implement :meth:`transform` (the real operation) and say whether it has an exact
    gradient (``differentiable``) and whether it is randomized (``randomized``)."""

    differentiable = True
    randomized = False

    def __init__(self, gradient: str = "exact", bounds: tuple[float, float] = (0.0, 1.0), seed: int = 0) -> None:
        super().__init__()
        if gradient not in GRADIENTS:
            raise InputError(f"unknown gradient mode {gradient!r}; use one of {', '.join(GRADIENTS)}")
        if gradient == "exact" and not self.differentiable:
            raise InputError(f"{type(self).__name__} has no exact gradient (it is not a torch operation); "
                             "use gradient='bpda' (or 'eot')")
        lo, hi = float(bounds[0]), float(bounds[1])
        if not lo < hi:
            raise InputError(f"bounds must satisfy lo < hi, got {bounds!r}")
        self.gradient = gradient
        self.bounds = (lo, hi)
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def reseed(self, seed: int | None = None) -> None:
        """Restart the transform's random draws (from ``seed``, default the construction seed)."""
        self.seed = self.seed if seed is None else int(seed)
        self.generator.manual_seed(self.seed)

    def transform(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        if self.gradient == "bpda" or not self.differentiable:
            return bpda(x, self.transform)
        return self.transform(x)

    def extra_repr(self) -> str:
        return f"gradient={self.gradient!r}"

    def _unit(self, x: Tensor) -> Tensor:
        lo, hi = self.bounds
        return (x - lo) / (hi - lo)

    def _from_unit(self, u: Tensor) -> Tensor:
        lo, hi = self.bounds
        return u * (hi - lo) + lo


class BitDepth(Preprocessor):
    """Reduce each input value to ``bits`` bits: ``round(u · (2^b − 1)) / (2^b − 1)`` with ``u`` the input scaled
    to [0, 1]. The exact gradient is zero almost everywhere (``gradient="exact"`` is the naive attack);
    ``gradient="bpda"`` is the attack of Athalye et al.

    Parameters
    ----------
    bits : 1 to 8.
    gradient : "exact", "bpda" or "eot" (see the module docstring).
    bounds : the input range.

    References
    ----------
    Xu, Evans & Qi, NDSS 2018; Athalye, Carlini & Wagner, ICML 2018.
    """

    @validated
    def __init__(self, bits: int = 1, gradient: str = "bpda", bounds: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__(gradient, bounds)
        if not isinstance(bits, int) or not 1 <= bits <= 8:
            raise InputError(f"bits must be an integer in [1, 8], got {bits!r}")
        self.bits = bits

    def transform(self, x: Tensor) -> Tensor:
        levels = 2 ** self.bits - 1
        return self._from_unit(torch.round(self._unit(x) * levels) / levels)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, gradient={self.gradient!r}"


class JPEG(Preprocessor):
    """JPEG compression and decompression with Pillow's codec at ``quality`` (1–95), image by image.

    Inputs of 1 channel are encoded as greyscale, 3 channels as RGB; values are scaled to 8 bits first. The codec is
    not differentiable, so the gradient is BPDA ("bpda" or "eot"); "exact" is refused.

    References
    ----------
    Dziugaite, Ghahramani & Roy, arXiv:1608.00853, 2016; Guo et al., ICLR 2018; Athalye et al., ICML 2018.
    """

    differentiable = False

    @validated
    def __init__(self, quality: int = 75, gradient: str = "bpda", bounds: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__(gradient, bounds)
        if not isinstance(quality, int) or not 1 <= quality <= 95:
            raise InputError(f"quality must be an integer in [1, 95] (Pillow's range), got {quality!r}")
        self.quality = quality

    def transform(self, x: Tensor) -> Tensor:
        from PIL import Image

        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise InputError(f"JPEG needs images of shape (n, 1 or 3, h, w), got {tuple(x.shape)}")
        u8 = (self._unit(x).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        out = np.empty_like(u8)
        for i, img in enumerate(u8):
            pil = Image.fromarray(img[..., 0], "L") if img.shape[-1] == 1 else Image.fromarray(img, "RGB")
            buf = io.BytesIO()
            pil.save(buf, format="JPEG", quality=self.quality)
            buf.seek(0)
            dec = np.asarray(Image.open(buf).convert(pil.mode))
            out[i] = dec.reshape(img.shape)
        t = torch.from_numpy(out).to(device=x.device).permute(0, 3, 1, 2).to(x.dtype) / 255
        return self._from_unit(t)

    def extra_repr(self) -> str:
        return f"quality={self.quality}, gradient={self.gradient!r}"


class MedianFilter(Preprocessor):
    """Median smoothing over ``kernel_size`` × ``kernel_size`` windows per channel, with reflected borders (for an
    even size the window reaches one more pixel right/down; the lower median is taken). Differentiable almost
    everywhere: the gradient flows to the median pixel of each window, and that exact gradient is often
    *stronger* than BPDA.

    References
    ----------
    Xu, Evans & Qi, NDSS 2018.
    """

    @validated
    def __init__(self, kernel_size: int = 3, gradient: str = "exact", bounds: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__(gradient, bounds)
        if not isinstance(kernel_size, int) or kernel_size < 2:
            raise InputError(f"kernel_size must be an integer ≥ 2, got {kernel_size!r}")
        self.kernel_size = kernel_size

    def transform(self, x: Tensor) -> Tensor:
        k = self.kernel_size
        if x.dim() != 4 or min(x.shape[2:]) <= k // 2:
            raise InputError(f"MedianFilter({k}) needs images (n, c, h, w) larger than the kernel, got {tuple(x.shape)}")
        a, b = (k - 1) // 2, k // 2
        xp = F.pad(x, (a, b, a, b), mode="reflect")
        patches = xp.unfold(2, k, 1).unfold(3, k, 1)  # (n, c, h, w, k, k)
        return patches.reshape(*patches.shape[:4], k * k).median(dim=-1).values

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, gradient={self.gradient!r}"


class GaussianNoise(Preprocessor):
    """Add ``sigma · N(0, I)`` (a fresh draw on every call) and clip to the bounds: a randomized defense, attacked
    with EOT (``adverse.evasion.EOT(model, samples)``).

    Parameters
    ----------
    sigma : the noise scale, in input units (> 0).
    gradient : "exact" or "eot" give the exact gradient of one draw; "bpda" the identity.
    seed : seeds the module's own generator.
    """

    randomized = True

    @validated
    def __init__(self, sigma: float = 0.1, gradient: str = "eot", bounds: tuple[float, float] = (0.0, 1.0),
                 seed: int = 0) -> None:
        super().__init__(gradient, bounds, seed)
        if not (isinstance(sigma, (int, float)) and 0 < sigma < float("inf")):
            raise InputError(f"sigma must be a finite number > 0 (in input units), got {sigma!r}")
        self.sigma = float(sigma)

    def transform(self, x: Tensor) -> Tensor:
        noise = torch.randn(x.shape, generator=self.generator, dtype=x.dtype).to(x.device)
        return (x + self.sigma * noise).clamp(*self.bounds)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, gradient={self.gradient!r}, seed={self.seed}"


class RandomResizePad(Preprocessor):
    """Xie et al.'s randomization, size-preserving: resize each image (bilinear) to a random ``r × r'`` with
    ``r ∈ [⌈min_scale · h⌉, h]`` (same scale for the width), then zero-pad it at a random offset back to
    ``h × w``. A fresh draw per image and call; attack it with EOT.

    Parameters
    ----------
    min_scale : the smallest scale, in (0, 1).
    pad_value : the padding value (input units; default the lower bound).
    gradient : "exact"/"eot" (bilinear resizing is linear, so the exact gradient of a draw exists) or "bpda".
    seed : seeds the module's own generator.

    References
    ----------
    Xie, Wang, Zhang, Ren & Yuille, ICLR 2018; Athalye et al., ICML 2018 (EOT breaks it).
    """

    randomized = True

    @validated
    def __init__(self, min_scale: float = 0.75, pad_value: float | None = None, gradient: str = "eot",
                 bounds: tuple[float, float] = (0.0, 1.0), seed: int = 0) -> None:
        super().__init__(gradient, bounds, seed)
        if not (isinstance(min_scale, (int, float)) and 0 < min_scale < 1):
            raise InputError(f"min_scale must lie in (0, 1), got {min_scale!r}")
        self.min_scale = float(min_scale)
        self.pad_value = self.bounds[0] if pad_value is None else float(pad_value)
        if not self.bounds[0] <= self.pad_value <= self.bounds[1]:
            raise InputError(f"pad_value {pad_value} lies outside bounds {self.bounds}")

    def transform(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise InputError(f"RandomResizePad needs images of shape (n, c, h, w), got {tuple(x.shape)}")
        n, _, h, w = x.shape
        r_min = max(1, math.ceil(self.min_scale * h))
        rows = torch.randint(r_min, h + 1, (n,), generator=self.generator)
        cols = torch.clamp(torch.round(rows.double() * w / h).long(), 1, w)
        top = (torch.rand(n, generator=self.generator) * (h - rows + 1)).floor().long()
        left = (torch.rand(n, generator=self.generator) * (w - cols + 1)).floor().long()
        out = torch.full_like(x, self.pad_value)
        keys = torch.stack([rows, cols, top, left], dim=1)
        for key in torch.unique(keys, dim=0).tolist():
            r, c, t, lf = key
            idx = (keys == torch.tensor(key)).all(dim=1).nonzero().squeeze(1).to(x.device)
            small = F.interpolate(x[idx], size=(r, c), mode="bilinear", align_corners=False)
            out = out.index_put((idx,), F.pad(small, (lf, w - c - lf, t, h - r - t), value=self.pad_value))
        return out

    def extra_repr(self) -> str:
        return f"min_scale={self.min_scale}, gradient={self.gradient!r}, seed={self.seed}"
