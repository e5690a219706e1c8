"""Evasion attacks: find inputs, close to the originals, that the model gets wrong.

Fixed-budget attacks (``fgsm``, ``bim``, ``pgd``, ``mifgsm``, ``apgd``) stay inside ``eps``; minimal-norm
attacks (``cw_l2``, ``deepfool``, ``fmn``) return the smallest perturbation they find per sample, so one run
gives robust accuracy at every ``eps`` (``AttackResult.robust_accuracy_at``). Score- and decision-based
attacks (``square``, ``simba``, ``nes``, ``hopskipjump``) only query the model; ``transfer`` crafts on surrogates.

The functions are imported here, eagerly: several share their module's name (``apgd``, ``deepfool``, ``fmn``),
and importing such a module binds the module to that name in this package, so a lazy lookup would return the
function once and the module afterwards. Importing the functions last makes the names mean the functions.
"""

from __future__ import annotations

from ._core import ce_loss, dlr_loss, margin_loss
from .gradient import bim, fgsm, mifgsm, pgd
from .apgd import apgd
from .cw import cw_l2
from .deepfool import deepfool
from .fmn import fmn
from .square import square
from .simba import simba
from .nes import nes
from .hopskipjump import hopskipjump
from .fab import fab
from .transfer import transfer
from .ensemble import EOT, autoattack
from .sharded import sharded

__all__ = sorted(["fgsm", "bim", "pgd", "mifgsm", "apgd", "cw_l2", "deepfool", "fmn",
                  "margin_loss", "dlr_loss", "ce_loss", "autoattack", "EOT", "square", "simba", "nes", "hopskipjump", "fab",
                  "transfer", "sharded"])
