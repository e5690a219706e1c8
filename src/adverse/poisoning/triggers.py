"""Backdoor triggers: a patch (BadNets), a blended pattern (Blended) and a warping field (WaNet).

A trigger is data, not code: its kind and its tensors, so that it can be saved with the poisoned set and applied
again to test inputs after reloading. Patch and blend triggers share one form,
``x' = (1 − m) ⊙ x + m ⊙ p`` with a mask ``m ∈ [0, 1]`` and a pattern ``p`` inside the bounds (a patch has a
binary mask; a blend has ``m = α`` everywhere); a warping trigger resamples the image along a fixed grid.

References
----------
Gu, Dolan-Gavitt & Garg, "BadNets: Identifying Vulnerabilities in the Machine Learning Model Supply Chain", 2017.
Chen, Liu, Li, Lu & Song, "Targeted Backdoor Attacks on Deep Learning Systems Using Data Poisoning", 2017.
Nguyen & Tran, "WaNet – Imperceptible Warping-based Backdoor Attack", ICLR 2021.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..validation import validated
from ._common import as_positions

KINDS = ("mask", "warp")


@dataclass
class Trigger:
    """A trigger: ``kind`` ("mask" for patch and blend triggers, "warp" for WaNet) and its tensors.

    ``mask`` and ``pattern`` have the image shape (c, h, w); ``grid`` has shape (1, h, w, 2) in the
    normalized coordinates of :func:`torch.nn.functional.grid_sample` (``align_corners=True``).
    """

    kind: str
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        need = {"mask": {"mask", "pattern"}, "warp": {"grid"}}
        if self.kind not in need:
            raise InputError(f"unknown trigger kind {self.kind!r}; use one of {KINDS}")
        missing = need[self.kind] - set(self.tensors)
        if missing:
            raise InputError(f"a {self.kind!r} trigger needs tensors {sorted(missing)}")

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The triggered inputs: a new tensor, ``x`` is not modified."""
        shape = self.image_shape
        if tuple(x.shape[1:]) != shape:
            raise InputError(f"the trigger is for images of shape {shape}, got inputs of shape {tuple(x.shape[1:])}")
        if self.kind == "mask":
            m = self.tensors["mask"].to(x)
            return (1 - m) * x + m * self.tensors["pattern"].to(x)
        grid = self.tensors["grid"].to(x).expand(x.shape[0], -1, -1, -1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)

    @property
    def image_shape(self) -> tuple[int, ...]:
        if self.kind == "mask":
            return tuple(self.tensors["mask"].shape)
        g = self.tensors["grid"]
        return (int(self.tensors.get("channels", torch.tensor(1)).item()), g.shape[1], g.shape[2])


def _check_image_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"triggers are for images of shape (channels, height, width), got {tuple(shape)}")
    return int(shape[0]), int(shape[1]), int(shape[2])


def _check_value(value: float, bounds: tuple[float, float], what: str) -> float:
    v = float(value)
    if not bounds[0] <= v <= bounds[1]:
        raise InputError(f"{what} {value!r} lies outside the input bounds {bounds}; choose a value inside them")
    return v


@validated
def patch_trigger(
    image_shape: Sequence[int], *, size: int = 2, position: str | Sequence = "bottom-right", value: float = 1.0,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> Trigger:
    """A BadNets patch: ``size × size`` pixels (all channels) set to ``value`` at ``position``.

    Parameters
    ----------
    image_shape : (c, h, w).
    size : side of the square patch in pixels, 1 ≤ size ≤ min(h, w).
    position : "bottom-right" (default), "bottom-left", "top-right", "top-left", "corners" (a patch in each of
        the four corners), a (row, col) top-left corner, or a list of these.
    value : the patch's pixel value, inside ``bounds``.

    Returns
    -------
    Trigger of kind "mask" with a binary mask.

    References
    ----------
    Gu, Dolan-Gavitt & Garg, "BadNets", 2017.
    """
    c, h, w = _check_image_shape(image_shape)
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= min(h, w):
        raise InputError(f"trigger size must be an integer in [1, {min(h, w)}] for {h}×{w} images, got {size!r}")
    v = _check_value(value, bounds, "trigger value")
    mask = torch.zeros(c, h, w)
    for r, q in as_positions(position, size, (h, w)):
        if not (0 <= r and r + size <= h and 0 <= q and q + size <= w):
            raise InputError(f"a {size}×{size} trigger at (row {r}, col {q}) falls outside the {h}×{w} image; "
                             "move it inside or make it smaller")
        mask[:, r : r + size, q : q + size] = 1.0
    return Trigger("mask", {"mask": mask, "pattern": torch.full((c, h, w), v)})


@validated
def blend_trigger(
    image_shape: Sequence[int], *, alpha: float = 0.2, pattern: torch.Tensor | None = None,
    bounds: tuple[float, float] = (0.0, 1.0), seed: int = 0,
) -> Trigger:
    """A Blended trigger: ``x' = (1 − α) x + α p`` with a key pattern ``p`` (default: uniform noise in the bounds,
    drawn from ``seed``, as in Chen et al.'s random-pattern key).

    Parameters
    ----------
    image_shape : (c, h, w).
    alpha : the blend ratio α ∈ (0, 1].
    pattern : the key pattern (shape (c, h, w), inside the bounds); noise if ``None``.

    Returns
    -------
    Trigger of kind "mask" with ``mask = α`` everywhere.

    References
    ----------
    Chen, Liu, Li, Lu & Song, "Targeted Backdoor Attacks on Deep Learning Systems Using Data Poisoning", 2017.
    """
    c, h, w = _check_image_shape(image_shape)
    a = float(alpha)
    if not 0.0 < a <= 1.0:
        raise InputError(f"blend ratio alpha must lie in (0, 1], got {alpha!r}")
    if pattern is None:
        g = torch.Generator().manual_seed(int(seed))
        pattern = bounds[0] + (bounds[1] - bounds[0]) * torch.rand((c, h, w), generator=g)
    else:
        if not torch.is_tensor(pattern) or tuple(pattern.shape) != (c, h, w):
            raise InputError(f"pattern must be a tensor of shape {(c, h, w)}")
        if not torch.isfinite(pattern).all() or pattern.min() < bounds[0] or pattern.max() > bounds[1]:
            raise InputError(f"pattern must be finite and inside the bounds {bounds}")
        pattern = pattern.detach().float().clone()
    return Trigger("mask", {"mask": torch.full((c, h, w), a), "pattern": pattern})


def identity_grid(h: int, w: int) -> torch.Tensor:
    """The sampling grid that leaves an ``h × w`` image unchanged, shape (1, h, w, 2), (x, y) order."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    return torch.stack((xs, ys), dim=-1)[None]


@validated
def warp_trigger(image_shape: Sequence[int], *, k: int = 4, s: float = 0.5, seed: int = 0) -> Trigger:
    """WaNet's warping field: ``P = ↑(ψ(rand[−1, 1]^{k×k×2}))``, ``M = clamp(I + s · P / h, −1, 1)``.

    ψ divides by the mean absolute value; ↑ is bicubic upsampling from ``k × k`` to ``h × w``; ``I`` is the
    identity grid. Displacements are about ``s / 2`` pixels on average.

    Parameters
    ----------
    image_shape : (c, h, w).
    k : control-grid size, 2 ≤ k ≤ min(h, w).
    s : warping strength (> 0).

    Returns
    -------
    Trigger of kind "warp".

    References
    ----------
    Nguyen & Tran, "WaNet – Imperceptible Warping-based Backdoor Attack", ICLR 2021 (Eq. 4–5).
    """
    c, h, w = _check_image_shape(image_shape)
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= min(h, w):
        raise InputError(f"k must be an integer in [2, {min(h, w)}] for {h}×{w} images, got {k!r}")
    if not float(s) > 0:
        raise InputError(f"warping strength s must be > 0, got {s!r}")
    g = torch.Generator().manual_seed(int(seed))
    p = torch.rand((1, 2, k, k), generator=g) * 2 - 1
    p = p / p.abs().mean()
    p = F.interpolate(p, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    grid = torch.clamp(identity_grid(h, w) + float(s) * p / h, -1, 1)
    return Trigger("warp", {"grid": grid, "channels": torch.tensor(c)})


def warp_noise(trigger: Trigger, n: int, *, seed: int = 0) -> torch.Tensor:
    """WaNet's "noise mode" grids: the trigger's grid plus uniform noise of ±1/h per sample, clamped.

    Training on inputs warped this way with their *true* labels keeps the network from learning any warp as the
    trigger, only the fixed one. Returns grids of shape (n, h, w, 2).
    """
    grid = trigger.tensors["grid"]
    h = grid.shape[1]
    g = torch.Generator().manual_seed(int(seed))
    noise = (torch.rand((n, *grid.shape[1:]), generator=g) * 2 - 1) / h
    return torch.clamp(grid + noise, -1, 1)
