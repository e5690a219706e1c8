"""Privacy attacks: membership inference, reference (shadow) models, model inversion, attribute inference.

Membership attacks return :class:`MembershipScores` (per-sample scores, higher = member, with the
disjoint-data sanity baseline when a baseline model is given); :func:`evaluate` judges scores against the
true membership (exact ROC, AUC, TPR at 0.1 % / 1 % FPR, balanced accuracy, bootstrap CIs, log-log ROC
figure); :func:`audit_dp` bounds a training recipe's differential-privacy ε from below with canaries (the
one-run and the Clopper–Pearson audits)::

    import adverse as adv
    refs = adv.privacy.ReferenceModels(train_fn, x_pool, y_pool, n=16, seed=0)
    target, is_member, others = refs.leave_out(0)
    r = adv.privacy.lira(target, x_pool, y_pool, others, pool_index=torch.arange(len(y_pool)))
    adv.privacy.evaluate(r.scores, is_member).tpr_at_fpr
"""

from __future__ import annotations

from ._result import MembershipScores
from .attribute import AttributeResult, attribute_inference
from .dp_audit import DPAuditResult, audit_dp, eps_lower_bound_clopper_pearson, eps_lower_bound_one_run
from .inversion import InversionResult, miface
from .label_only import label_only
from .lira import LiRA, lira
from .metrics import MembershipEvaluation, evaluate
from .reference import ReferenceModels
from .rmia import RMIA, rmia
from .shadow import ShadowAttack, shadow_attack
from .threshold import ThresholdAttack, loss_attack, threshold_attack

__all__ = [
    "RMIA",
    "AttributeResult",
    "DPAuditResult",
    "InversionResult",
    "LiRA",
    "MembershipEvaluation",
    "MembershipScores",
    "ReferenceModels",
    "ShadowAttack",
    "ThresholdAttack",
    "attribute_inference",
    "audit_dp",
    "eps_lower_bound_clopper_pearson",
    "eps_lower_bound_one_run",
    "evaluate",
    "label_only",
    "lira",
    "loss_attack",
    "miface",
    "rmia",
    "shadow_attack",
    "threshold_attack",
]
