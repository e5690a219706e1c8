"""Threshold (metric-based) membership attacks: loss, confidence, entropy and modified entropy.

Each attack computes one number per sample from the target's output and calls the sample a member when the
number passes a threshold. The score returned is oriented so that higher means "member"; with reference
models, Song & Mittal's class-dependent thresholds ``τ_y`` are learned on the references' IN/OUT outputs and
the score becomes ``signal − τ_y``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..validation import validated
from ._result import MembershipScores, with_baseline
from ._signals import check_label_range, check_xy, model_logits, scaled_logit
from .reference import ReferenceModels

Tensor = torch.Tensor

SIGNALS = ("loss", "confidence", "entropy", "modified_entropy")


def log1mexp(a: Tensor) -> Tensor:
    """``log(1 − exp(a))`` for ``a ≤ 0``, accurate near 0 and at −∞ (Mächler 2012)."""
    return torch.where(a > -0.6931471805599453, torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def signal(z: Tensor, y: Tensor, kind: str) -> Tensor:
    """Per-sample membership signal from logits ``z`` (..., n, C) and labels ``y`` (n,), float64, higher = member.

    - ``loss``: ``log p_y`` (minus the cross-entropy loss; Yeom et al. 2018), as ``−softplus(−φ)`` with φ the
      scaled logit, so that confident members do not tie at 0.
    - ``confidence``: ``p_y`` (Song & Mittal 2021, M_conf).
    - ``entropy``: ``Σ_k p_k log p_k`` (minus the prediction entropy; Song & Mittal, M_entr).
    - ``modified_entropy``: minus ``Mentr = −(1 − p_y) log p_y − Σ_{k≠y} p_k log(1 − p_k)`` (Song & Mittal,
      M_Mentr), with ``log(1 − p_k)`` computed from ``log p_k`` without cancellation.
    """
    idx = y.expand(z.shape[:-1]).unsqueeze(-1)
    # log p_y = −log(1 + e^{−φ}) = −softplus(−φ) keeps members apart where 1 − p_y is below float64's epsilon
    logp_y = -torch.nn.functional.softplus(-scaled_logit(z, y))
    logp = torch.log_softmax(z.double(), dim=-1).scatter(-1, idx, logp_y.unsqueeze(-1))
    p = logp.exp()
    if kind == "loss":
        return logp_y
    if kind == "confidence":
        return logp_y.exp()
    if kind == "entropy":
        return (p * logp).sum(-1)
    if kind == "modified_entropy":
        true = torch.zeros_like(p, dtype=torch.bool).scatter(-1, idx, True)
        log_1mp = log1mexp(logp.clamp_max(0.0))
        term = torch.where(true, -(1.0 - p) * logp, -p * log_1mp)
        return -term.sum(-1)
    raise InputError(f"signal must be one of {SIGNALS}, got {kind!r}")


def class_thresholds(s: Tensor, y: Tensor, is_in: Tensor, num_classes: int) -> Tensor:
    """Song & Mittal's class-dependent thresholds: per class, the τ maximizing balanced accuracy of
    ``signal ≥ τ ⇒ member`` on reference IN/OUT signals ``s`` (models, points) with labels ``y`` (points).

    Classes with no IN or no OUT reference signal get the global threshold.
    """
    from sklearn.metrics import roc_curve

    def best(sv: Tensor, mv: Tensor) -> float:
        fpr, tpr, thr = roc_curve(mv.cpu().numpy(), sv.cpu().numpy(), drop_intermediate=False)
        i = int((tpr - fpr).argmax())
        return float(min(thr[i], sv.max()))  # roc_curve's first threshold is +inf

    yy = y.expand_as(s)
    tau = torch.full((num_classes,), best(s.flatten(), is_in.flatten()), dtype=torch.float64)
    for c in range(num_classes):
        sel = yy == c
        if bool(is_in[sel].any()) and bool((~is_in[sel]).any()):
            tau[c] = best(s[sel], is_in[sel])
    return tau


class ThresholdAttack:
    """A metric-based attack: configure the signal, optionally ``fit`` class thresholds, then ``score``.

    Parameters
    ----------
    signal : "loss" | "confidence" | "entropy" | "modified_entropy" (see :func:`signal`).
    class_dependent : learn per-class thresholds on reference models in :meth:`fit` (Song & Mittal).

    References
    ----------
    Yeom, Giacomelli, Fredrikson & Jha, "Privacy Risk in Machine Learning: Analyzing the Connection to
    Overfitting", IEEE CSF 2018. Song & Mittal, "Systematic Evaluation of Privacy Risks of Machine Learning
    Models", USENIX Security 2021.
    """

    @validated
    def __init__(self, signal: str = "loss", class_dependent: bool = False) -> None:
        if signal not in SIGNALS:
            raise InputError(f"signal must be one of {SIGNALS}, got {signal!r}")
        self.signal = signal
        self.class_dependent = class_dependent
        self.tau_: Tensor | None = None

    def fit(self, refs: ReferenceModels | None = None) -> ThresholdAttack:
        """Learn class-dependent thresholds from ``refs`` (needed only when ``class_dependent``)."""
        if self.class_dependent:
            if refs is None:
                raise InputError("class_dependent thresholds are learned on reference models: fit(refs)")
            refs.require(1, 1, f"{self.signal} attack with class-dependent thresholds")
            z = refs.logits(refs.x_pool)
            s = signal(z, refs.y_pool, self.signal)
            self.tau_ = class_thresholds(s, refs.y_pool, refs.masks, z.shape[-1])
        return self

    def score(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Per-sample scores (float64, higher = member)."""
        x, y = check_xy(x, y)
        z = model_logits(model, x)
        check_label_range(z, y)
        s = signal(z, y, self.signal)
        if self.class_dependent:
            if self.tau_ is None:
                raise InputError("call fit(refs) before score() when class_dependent=True")
            tau = self.tau_.to(s.device)
            if int(y.max()) >= tau.shape[0]:
                raise InputError("labels exceed the classes seen by fit()")
            s = s - tau[y]
        return s


@validated
def threshold_attack(
    model: nn.Module, x: Tensor, y: Tensor, *, signal: str = "loss", refs: ReferenceModels | None = None,
    class_dependent: bool = False, baseline: nn.Module | None = None,
) -> MembershipScores:
    """A metric-based membership attack: one threshold on a per-sample signal of the model's output.

    Parameters
    ----------
    model : the target, a ``torch.nn.Module`` returning logits (its state is left as found).
    x, y : query points and their true labels (tensors).
    signal : "loss" | "confidence" | "entropy" | "modified_entropy".
    refs : reference models, needed for ``class_dependent`` thresholds.
    class_dependent : score ``signal − τ_y`` with per-class thresholds learned on ``refs`` (Song & Mittal).
    baseline : a model trained on data disjoint from ``x`` (e.g. ``refs.train_disjoint(...)``); the same attack
        is run against it as a sanity check (its AUC should be ≈ 0.5).

    Returns
    -------
    MembershipScores

    References
    ----------
    Yeom et al., IEEE CSF 2018 (loss). Song & Mittal, USENIX Security 2021 (confidence, entropy, modified
    entropy, class-dependent thresholds).
    """
    att = ThresholdAttack(signal, class_dependent).fit(refs)
    return with_baseline(lambda m: att.score(m, x, y), model, baseline, f"threshold:{signal}",
                         {"signal": signal, "class_dependent": class_dependent}, refs)


@validated
def loss_attack(model: nn.Module, x: Tensor, y: Tensor, *, baseline: nn.Module | None = None,
                **kwargs: Any) -> MembershipScores:
    """Yeom et al.'s loss attack: member when the loss is low; score = ``log p_y`` (float64, from logits).

    Parameters / Returns as :func:`threshold_attack` with ``signal="loss"``.

    References
    ----------
    Yeom, Giacomelli, Fredrikson & Jha, "Privacy Risk in Machine Learning: Analyzing the Connection to
    Overfitting", IEEE CSF 2018.
    """
    return threshold_attack(model, x, y, signal="loss", baseline=baseline, **kwargs)
