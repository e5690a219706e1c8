"""Evaluation: the audit that runs attacks on a model and collects the evidence.

Importing this package is cheap: :mod:`adverse.evaluation.audit` imports torch only when an audit runs.
(Its names are bound here eagerly rather than through a module ``__getattr__``, because importing the
submodule ``audit`` would otherwise bind the package attribute ``audit`` to the module, not the function.)

    import adverse as adv
    result = adv.evaluation.audit(eps=(0.1, 0.2), n=100)   # the bundled digits model and data
    result.save("adverse-audit/")                          # results.json, written atomically
"""

from __future__ import annotations

from .audit import ATTACKS, DEFAULT_EPS, SCHEMA_VERSION, AuditResult, audit

__all__ = ["ATTACKS", "DEFAULT_EPS", "SCHEMA_VERSION", "AuditResult", "audit"]
