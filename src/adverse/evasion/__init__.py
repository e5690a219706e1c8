"""Evasion attacks: find inputs, close to the originals, that the model gets wrong.

Fixed-budget attacks (``fgsm``, ``bim``, ``pgd``, ``mifgsm``, ``apgd``) stay inside ``eps``; minimal-norm
attacks (``cw_l2``, ``deepfool``, ``fmn``) return the smallest perturbation they find per sample, so one run
gives robust accuracy at every ``eps`` (``AttackResult.robust_accuracy_at``).
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "fgsm": "gradient",
    "bim": "gradient",
    "pgd": "gradient",
    "mifgsm": "gradient",
    "apgd": "apgd",
    "cw_l2": "cw",
    "deepfool": "deepfool",
    "fmn": "fmn",
    "margin_loss": "_core",
    "dlr_loss": "_core",
    "ce_loss": "_core",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"adverse.evasion.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'adverse.evasion' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
