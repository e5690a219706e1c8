"""Poisoning and backdoor attacks, and how to measure them.

Backdoors (all-to-one): :func:`badnets`, :func:`blended`, :func:`wanet` (dirty label) and :func:`clean_label`
(label-consistent, Turner et al.). Availability: :func:`label_flip` (random or a → b). Targeted clean-label
poisoning of chosen test points: :func:`feature_collision` (Poison Frogs) and :func:`gradient_matching`
(Witches' Brew). Every attack returns a :class:`PoisonedData` that saves to and loads from disk.
Metrics (BackdoorBench's definitions) live in :mod:`adverse.poisoning.metrics`.
"""

from __future__ import annotations

from .backdoor import badnets, blended, clean_label, wanet
from .data import PoisonedData, load_poisoned
from .label_flip import label_flip
from .metrics import (
    attack_success_rate,
    backdoor_metrics,
    clean_accuracy,
    detection_quality,
    random_noise_control,
    retrain,
    targeted_evaluation,
    targeted_success,
    trainer,
)
from .targeted import feature_collision, gradient_matching
from .triggers import Trigger, blend_trigger, patch_trigger, warp_trigger

__all__ = [
    "PoisonedData", "Trigger", "attack_success_rate", "backdoor_metrics", "badnets", "blend_trigger", "blended",
    "clean_accuracy", "clean_label", "detection_quality", "feature_collision", "gradient_matching", "label_flip",
    "load_poisoned", "patch_trigger", "random_noise_control", "retrain", "targeted_evaluation",
    "targeted_success", "trainer", "wanet", "warp_trigger",
]
