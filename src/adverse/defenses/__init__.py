"""Defenses against evasion, poisoning and inference attacks.

Names load lazily from their modules:

* ``training``: ``adversarial_training``, ``adversarial_step`` (PGD-AT, TRADES, MART, FGSM-RS, N-FGSM);
* ``regularization``: input-gradient regularization (double backpropagation) and a Lipschitz-margin option;
* ``preprocessing``: ``BitDepth``, ``JPEG``, ``MedianFilter``, ``GaussianNoise``, ``RandomResizePad``
  (``gradient="exact" | "bpda" | "eot"``);
* ``detection``: ``FeatureSqueezing``, ``Mahalanobis``, ``LID``;
* ``dimensionality``: ``PCA`` (Bhagoji et al. 2018); ``feature_selection``: ``FeatureSelection``,
  ``adversarial_feature_selection`` (Zhang et al. 2016); ``denoising``: ``MagNet`` with its
  ``ReconstructionDetector`` (Meng & Chen 2017), ``TVMinimization`` (Guo et al. 2018);
* ``evaluation``: ``evaluate`` (undefended vs oblivious vs adaptive attacker, with a verdict);
* ``poison_detection``: ``activation_clustering``, ``spectral_signatures``, ``strip``, ``neural_cleanse``,
  ``fine_pruning``;
* ``backdoor_scan``: ``scan_backdoor`` (is this trained model backdoored? Neural Cleanse + MM-BD, clean data
  only), ``mm_bd``, ``mm_bd_p_value``;
* ``smoothing`` (randomized smoothing), ``bounds`` (interval bound propagation), ``dp`` (DP-SGD through Opacus)
  as submodules.
"""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULES = {"training", "regularization", "preprocessing", "detection", "poison_detection",
               "smoothing", "bounds", "dp", "dimensionality", "feature_selection", "denoising", "evaluation",
               "backdoor_scan"}
_NAMES = {
    "adversarial_training": "training",
    "adversarial_step": "training",
    "BitDepth": "preprocessing",
    "JPEG": "preprocessing",
    "MedianFilter": "preprocessing",
    "GaussianNoise": "preprocessing",
    "RandomResizePad": "preprocessing",
    "FeatureSqueezing": "detection",
    "Mahalanobis": "detection",
    "LID": "detection",
    "PCA": "dimensionality",
    "FeatureSelection": "feature_selection",
    "adversarial_feature_selection": "feature_selection",
    "MagNet": "denoising",
    "ReconstructionDetector": "denoising",
    "TVMinimization": "denoising",
    "evaluate": "evaluation",
    "activation_clustering": "poison_detection",
    "spectral_signatures": "poison_detection",
    "strip": "poison_detection",
    "neural_cleanse": "poison_detection",
    "fine_pruning": "poison_detection",
    "scan_backdoor": "backdoor_scan",
    "mm_bd": "backdoor_scan",
    "mm_bd_p_value": "backdoor_scan",
    "DPRecipe": "dp",
}

__all__ = sorted(_SUBMODULES | set(_NAMES))


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"adverse.defenses.{name}")
    if name in _NAMES:
        return getattr(importlib.import_module(f"adverse.defenses.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'adverse.defenses' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
