"""Label-only membership attacks (Choquette-Choo et al. 2021): they read only the predicted label.

- **Augmentation robustness**: a model fits its training points, so a member's label tends to survive small
  changes of the input. The score is the fraction of ``N`` perturbed copies (the original included) whose
  predicted label is still the true one. Images (4-D inputs) get the paper's translations by up to ``d``
  pixels (zero fill; horizontal flips on request); other inputs get Gaussian noise (the paper's "noise"
  perturbation for non-image data), drawn from a generator seeded by ``seed``.
- **Boundary distance**: a member sits farther from the decision boundary. The score is the L2 distance to
  the boundary found by HopSkipJump (a decision-based attack) within an explicit per-sample query budget;
  a misclassified point scores 0, and one for which no adversarial was found within the budget scores the
  box diagonal (farther than any distance found).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..models import BlackBox
from ..validation import validated
from ._result import MembershipScores, with_baseline
from ._signals import check_xy, model_logits

Tensor = torch.Tensor

METHODS = ("augmentation", "boundary")
AUGMENTS = ("auto", "translate", "noise")


def predict_labels(model: Any, x: Tensor, batch_size: int = 4096) -> Tensor:
    """Predicted labels from a torch module (state restored), a :class:`BlackBox`, an estimator or a callable."""
    if isinstance(model, nn.Module):
        return model_logits(model, x, batch_size).argmax(-1)
    box = model if isinstance(model, BlackBox) else BlackBox(model)
    return torch.cat([box.predict(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]).long()


def translations(x: Tensor, d: int, flips: bool) -> list[Tensor]:
    """Every translation of the images ``x`` (n, C, H, W) by ``(i, j)``, ``|i|, |j| ≤ d``, zero fill; with
    ``flips`` also their horizontal mirror images. The identity comes first."""
    h, w = x.shape[-2:]
    out = []
    for i in range(-d, d + 1):
        for j in range(-d, d + 1):
            shifted = torch.zeros_like(x)
            shifted[..., max(i, 0) : h + min(i, 0), max(j, 0) : w + min(j, 0)] = \
                x[..., max(-i, 0) : h + min(-i, 0), max(-j, 0) : w + min(-j, 0)]
            out.append(shifted)
    out.sort(key=lambda t: 0 if torch.equal(t, x) else 1)
    if flips:
        out += [t.flip(-1) for t in out]
    return out


def augmentation_score(model: Any, x: Tensor, y: Tensor, *, augment: str = "auto", max_shift: int = 1,
                       flips: bool = False, n_noise: int = 50, noise_std: float = 0.05,
                       bounds: tuple[float, float] | None = (0.0, 1.0), seed: int = 0) -> Tensor:
    """Fraction of augmented copies of each ``x`` still labelled ``y`` (Choquette-Choo et al., §4.1).

    ``augment="translate"`` (the default for 4-D inputs under "auto"): translations (and flips);
    ``"noise"`` (the default otherwise): ``n_noise`` Gaussian perturbations of std ``noise_std`` (clipped to
    ``bounds`` when given) plus the original.
    """
    if augment not in AUGMENTS:
        raise InputError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    if augment == "translate" and x.dim() != 4:
        raise InputError("translations need images of shape (n, channels, height, width); use augment='noise'")
    if augment == "translate" or (augment == "auto" and x.dim() == 4):
        copies = translations(x, max_shift, flips)
    else:
        g = torch.Generator(device=x.device).manual_seed(seed)
        copies = [x]
        for _ in range(n_noise):
            noisy = x + noise_std * torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
            copies.append(noisy.clamp(*bounds) if bounds is not None else noisy)
    correct = torch.stack([predict_labels(model, c) == y for c in copies])
    return correct.double().mean(0)


def boundary_score(model: Any, x: Tensor, y: Tensor, *, max_queries: int, steps: int = 40,
                   bounds: tuple[float, float] = (0.0, 1.0), seed: int = 0) -> Tensor:
    """L2 distance to the decision boundary from HopSkipJump with ``max_queries`` per sample (§4.2)."""
    from ..evasion import hopskipjump

    r = hopskipjump(model, x, y, norm="l2", max_queries=max_queries, steps=steps, bounds=bounds, seed=seed)
    far = math.sqrt(x[0].numel()) * (bounds[1] - bounds[0])
    return torch.where(r.success, r.norms.double(), torch.full_like(r.norms, far, dtype=torch.float64))


@validated
def label_only(
    model: Any, x: Tensor, y: Tensor, *, method: str = "augmentation", max_queries: int | None = None,
    steps: int = 40, augment: str = "auto", max_shift: int = 1, flips: bool = False, n_noise: int = 50, noise_std: float = 0.05,
    bounds: tuple[float, float] = (0.0, 1.0), seed: int = 0, baseline: Any = None,
) -> MembershipScores:
    """Label-only membership scores (higher = member).

    Parameters
    ----------
    model : the target: a torch module (queried for labels only; left as found), a :class:`~adverse.BlackBox`
        returning labels or scores, a scikit-learn estimator or a callable.
    x, y : query points (inside ``bounds``) and their true labels.
    method : "augmentation" (robustness to translations / noise) or "boundary" (HopSkipJump distance).
    max_queries : per-sample query budget of the boundary attack (required for ``method="boundary"``).
    steps : HopSkipJump iterations.
    augment : "auto" (translations for 4-D inputs, noise otherwise), "translate" or "noise".
    max_shift, flips : translations by up to ``max_shift`` pixels (4-D inputs), and their mirror images.
    n_noise, noise_std : the Gaussian perturbations for non-image inputs.
    bounds : the valid input range.
    seed : seeds the noise and the boundary attack.
    baseline : a model trained on data disjoint from ``x``: the same attack against it is the sanity baseline.

    Returns
    -------
    MembershipScores
        ``params["queries_per_sample"]`` is the most queries one sample may cost.

    References
    ----------
    Choquette-Choo, Tramèr, Carlini & Papernot, "Label-Only Membership Inference Attacks", ICML 2021.
    Chen, Jordan & Wainwright, "HopSkipJumpAttack", IEEE S&P 2020 (the boundary distance).
    """
    x, y = check_xy(x, y)
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}")
    if method == "boundary":
        if max_queries is None:
            raise InputError("the boundary-distance attack needs an explicit query budget: pass max_queries")
        fn = lambda m: boundary_score(m, x, y, max_queries=max_queries, steps=steps, bounds=bounds, seed=seed)
        per_sample = max_queries
        params = {"method": method, "max_queries": max_queries, "steps": steps, "seed": seed}
    else:
        if n_noise < 1 or noise_std <= 0 or max_shift < 0:
            raise InputError("need n_noise ≥ 1, noise_std > 0 and max_shift ≥ 0")
        fn = lambda m: augmentation_score(m, x, y, augment=augment, max_shift=max_shift, flips=flips,
                                          n_noise=n_noise, noise_std=noise_std, bounds=bounds, seed=seed)
        translate = augment == "translate" or (augment == "auto" and x.dim() == 4)
        per_sample = (2 * max_shift + 1) ** 2 * (2 if flips else 1) if translate else n_noise + 1
        params = {"method": method, "augment": augment, "max_shift": max_shift, "flips": flips, "n_noise": n_noise,
                  "noise_std": noise_std, "seed": seed}
    params["queries_per_sample"] = per_sample
    return with_baseline(fn, model, baseline, f"label_only:{method}", params)
