"""Backdoor poisoning: BadNets, Blended, WaNet (dirty label) and the label-consistent attack of Turner et al.

All-to-one backdoors: a trigger stamped on any input should make the trained model predict ``target``.
Dirty-label attacks draw the poisons from the non-target classes (or from one ``source`` class), stamp the
trigger and relabel them to ``target``; the clean-label attack poisons target-class images only and keeps every
label.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Dataset
from ..errors import InputError
from ..validation import validated
from ._common import budget, check_class, check_data, check_eps, check_rate, select
from .data import PoisonedData
from .triggers import Trigger, blend_trigger, patch_trigger, warp_noise, warp_trigger


def _pool(data: Dataset, target: int, source: int | None) -> torch.Tensor:
    """Eligible dirty-label poisons: every non-target sample, or the ``source`` class only."""
    keep = data.y != target if source is None else data.y == source
    return keep.nonzero().flatten()


def _check_source(data: Dataset, target: int, rate: float, source: int | None) -> tuple[int, float, int | None]:
    check_data(data)
    target = check_class(target, data.num_classes, "target")
    rate = check_rate(rate)
    if source is not None:
        source = check_class(source, data.num_classes, "source")
        if source == target:
            raise InputError(f"source class {source} equals the target; pick a different source or None")
    return target, rate, source


def dirty_label(
    data: Dataset, trigger: Trigger, *, attack: str, target: int, rate: float, source: int | None, seed: int,
    params: dict[str, Any],
) -> PoisonedData:
    """Stamp ``trigger`` on ``round(rate · n)`` samples drawn from the non-target classes (or ``source``) and
    relabel them ``target`` — the poisoning step that BadNets, Blended and WaNet share."""
    idx = select(_pool(data, target, source), budget(rate, len(data)), seed, f"{attack} at rate {rate}")
    x, y = data.x.clone(), data.y.clone()
    if idx.numel():
        x[idx] = trigger.apply(data.x[idx])
        y[idx] = target
    return PoisonedData(x, y, idx, attack, params, data.num_classes, data.y.clone(), data.bounds, trigger)


@validated
def badnets(
    data: Dataset, *, target: int = 0, rate: float = 0.05, size: int = 2, position: str | tuple = "bottom-right",
    value: float = 1.0, source: int | None = None, seed: int = 0,
) -> PoisonedData:
    """BadNets: a fixed pixel patch on a fraction of the training images, relabelled to the target class.

    Parameters
    ----------
    data : the clean training set.
    target : the class the backdoor should predict.
    rate : fraction of the *whole* training set that is poisoned (BackdoorBench's ``pratio``), in [0, 1].
    size, position, value : the square patch (see :func:`~adverse.poisoning.triggers.patch_trigger`).
    source : poison only this class (source-specific backdoor); ``None`` draws from all non-target classes.
    seed : which samples are poisoned.

    Returns
    -------
    PoisonedData with the patch trigger.

    References
    ----------
    Gu, Dolan-Gavitt & Garg, "BadNets: Identifying Vulnerabilities in the Machine Learning Model Supply Chain",
    arXiv:1708.06733, 2017.
    """
    target, rate, source = _check_source(data, target, rate, source)
    trig = patch_trigger(tuple(data.x.shape[1:]), size=size, position=position, value=value, bounds=data.bounds)
    params = {"target": target, "rate": rate, "size": size, "position": position, "value": value,
              "source": source, "seed": seed}
    return dirty_label(data, trig, attack="badnets", target=target, rate=rate, source=source, seed=seed,
                       params=params)


@validated
def blended(
    data: Dataset, *, target: int = 0, rate: float = 0.05, alpha: float = 0.2, pattern: torch.Tensor | None = None,
    source: int | None = None, seed: int = 0,
) -> PoisonedData:
    """Blended: ``x' = (1 − α) x + α k`` with a key pattern ``k`` (random noise by default), relabelled to target.

    Parameters
    ----------
    data, target, rate, source, seed : as in :func:`badnets`.
    alpha : the blend ratio α ∈ (0, 1] used on the poisons (Chen et al. use 0.2 at training time).
    pattern : the key pattern (image shape, inside the bounds); uniform noise drawn from ``seed`` if ``None``.

    Returns
    -------
    PoisonedData with the blend trigger.

    References
    ----------
    Chen, Liu, Li, Lu & Song, "Targeted Backdoor Attacks on Deep Learning Systems Using Data Poisoning",
    arXiv:1712.05526, 2017 (blended injection strategy).
    """
    target, rate, source = _check_source(data, target, rate, source)
    trig = blend_trigger(tuple(data.x.shape[1:]), alpha=alpha, pattern=pattern, bounds=data.bounds, seed=seed)
    params = {"target": target, "rate": rate, "alpha": alpha, "pattern": "noise" if pattern is None else "given",
              "source": source, "seed": seed}
    return dirty_label(data, trig, attack="blended", target=target, rate=rate, source=source, seed=seed,
                       params=params)


@validated
def wanet(
    data: Dataset, *, target: int = 0, rate: float = 0.1, k: int = 4, s: float = 0.5, cross_ratio: float = 2.0,
    source: int | None = None, seed: int = 0,
) -> PoisonedData:
    """WaNet: warp a fraction ρ_a of the images with a fixed smooth field and relabel them; warp a further
    ``cross_ratio · ρ_a`` with the field plus random noise and keep their labels ("noise mode").

    Parameters
    ----------
    data, target, source, seed : as in :func:`badnets`.
    rate : ρ_a, the fraction of the training set carrying the backdoor warp.
    k, s : control-grid size and warping strength (Eq. 4–5 of the paper; see
        :func:`~adverse.poisoning.triggers.warp_trigger`). On 8×8 images s ≈ 1–2 is needed for a learnable warp.
    cross_ratio : noise-mode samples per poison (the paper's ρ_n = 2 ρ_a); 0 turns noise mode off.

    Returns
    -------
    PoisonedData with the warp trigger; ``indices`` lists both the backdoor poisons and the noise-mode samples,
    ``params["noise_indices"]`` the latter.

    References
    ----------
    Nguyen & Tran, "WaNet – Imperceptible Warping-based Backdoor Attack", ICLR 2021.
    """
    target, rate, source = _check_source(data, target, rate, source)
    cross = check_rate(cross_ratio * rate, "cross_ratio · rate")
    trig = warp_trigger(tuple(data.x.shape[1:]), k=k, s=s, seed=seed)
    params = {"target": target, "rate": rate, "k": k, "s": s, "cross_ratio": cross_ratio, "source": source,
              "seed": seed}
    pd = dirty_label(data, trig, attack="wanet", target=target, rate=rate, source=source, seed=seed, params=params)
    rest = (~pd.is_poison).nonzero().flatten()
    noise_idx = select(rest, budget(cross, len(data)), seed + 1, "wanet noise mode")
    if noise_idx.numel():
        grids = warp_noise(trig, noise_idx.numel(), seed=seed + 2)
        pd.x[noise_idx] = F.grid_sample(data.x[noise_idx], grids, mode="bilinear", padding_mode="border",
                                        align_corners=True)
    pd.indices = torch.cat([pd.indices, noise_idx]).sort().values
    pd.params["noise_indices"] = noise_idx.tolist()
    return pd


@validated
def clean_label(
    data: Dataset, model: nn.Module, *, target: int = 0, rate: float = 0.5, eps: float = 0.2, steps: int = 20,
    size: int = 2, position: str | tuple = "bottom-right", value: float = 1.0, seed: int = 0,
) -> PoisonedData:
    """Label-consistent backdoor: make target-class images hard to classify with an L∞ adversarial perturbation
    (PGD on ``model``, trained on clean data), then stamp the trigger; labels are never changed.

    Because the perturbed images no longer look like their class to the network, it must rely on the trigger to
    fit their (correct) labels, and learns trigger → target.

    Parameters
    ----------
    data : the clean training set.
    model : a classifier trained on clean data (the attacker's surrogate); left as found.
    target : the class whose images are poisoned and which the backdoor predicts.
    rate : fraction of the *target class* poisoned (Turner et al. report this percentage), in [0, 1].
    eps, steps : the L∞ budget and the number of PGD steps (:func:`adverse.evasion.pgd`, no early stop).
    size, position, value : the patch trigger (Turner et al. use a small patch, optionally in the four
        corners: ``position="corners"``).
    seed : which images are poisoned and PGD's random start.

    Returns
    -------
    PoisonedData; ``y`` equals ``y_clean``.

    References
    ----------
    Turner, Tsipras & Madry, "Label-Consistent Backdoor Attacks", arXiv:1912.02771, 2019.
    """
    from ..evasion import pgd

    check_data(data)
    target = check_class(target, data.num_classes, "target")
    rate = check_rate(rate)
    eps = check_eps(eps, data.bounds)
    trig = patch_trigger(tuple(data.x.shape[1:]), size=size, position=position, value=value, bounds=data.bounds)
    pool = (data.y == target).nonzero().flatten()
    idx = select(pool, budget(rate, pool.numel()), seed, f"clean_label at rate {rate}")
    x = data.x.clone()
    if idx.numel():
        r = pgd(model, data.x[idx], data.y[idx], eps=eps, norm="linf", steps=steps, early_stop=False,
                bounds=data.bounds, seed=seed)
        x[idx] = trig.apply(r.x_adv)
    params = {"target": target, "rate": rate, "eps": eps, "steps": steps, "size": size, "position": position,
              "value": value, "seed": seed}
    return PoisonedData(x, data.y.clone(), idx, "clean_label", params, data.num_classes, data.y.clone(),
                        data.bounds, trig)
