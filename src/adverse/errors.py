"""Errors raised by adverse.

Every problem a caller can fix is an :class:`AdverseError` (a ``ValueError``) whose message names the
problem and the fix.
"""

from __future__ import annotations


class AdverseError(ValueError):
    """Bad input or a misuse that the caller can fix; the message says how."""


class InputError(AdverseError):
    """Inputs, labels, bounds or threat-model parameters are invalid."""


class ModelError(AdverseError):
    """The model breaks the model contract (e.g. it returns probabilities instead of logits)."""


class BudgetError(AdverseError):
    """A query or iteration budget is exhausted or invalid."""
