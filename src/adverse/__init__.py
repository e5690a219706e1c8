"""adverse: attack and defend machine-learning models, and audit how robust and private they are.

Submodules load lazily, so ``import adverse`` stays fast::

    import adverse as adv
    r = adv.evasion.pgd(model, x, y, eps=0.1, norm="linf", steps=40, seed=0)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = {"errors", "threat", "models", "results", "data", "zoo", "evasion", "evaluation", "privacy", "poisoning",
               "defenses", "execution", "cli", "corruptions", "streaming"}
_NAMES = {
    "AdverseError": "errors",
    "ThreatModel": "threat",
    "Normalize": "models",
    "BlackBox": "models",
    "AttackResult": "results",
    "audit": "evaluation",
}

__all__ = sorted(_SUBMODULES | set(_NAMES) | {"__version__"})


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"adverse.{name}")
    if name in _NAMES:
        return getattr(importlib.import_module(f"adverse.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'adverse' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
