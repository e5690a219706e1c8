"""Shokri et al.'s shadow-model attack: a classifier learns "member or not" from shadow models' outputs.

The reference models are the shadow models: each was trained on a known half of the pool, so its output on
every pool point comes with a label (IN or OUT). One attack classifier per class ``c`` (as in the paper)
learns ``Pr[member | f(x), y = c]`` from the shadow models' prediction vectors on points of class ``c``; the
target's prediction vector on a query of class ``y`` is then scored by attack model ``y``. Prediction vectors
enter as float64 log-probabilities, which keep the differences between confident outputs that raw
probabilities round away.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..validation import validated
from ._result import MembershipScores, with_baseline
from ._signals import check_label_range, check_xy, model_logits
from .reference import ReferenceModels

Tensor = torch.Tensor


def default_attack_model(seed: int) -> Any:
    """The default attack model: standardized features into a scikit-learn logistic regression.

    Cheap enough to fit one per class on every shadow output; pass ``attack_model`` for a stronger learner
    (Shokri et al. used small neural networks).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(solver="newton-cholesky", max_iter=200,
                                                             random_state=seed))


def features(z: Tensor) -> Tensor:
    """Attack-model features of logits ``z`` (..., C): log-probabilities in float64."""
    return torch.log_softmax(z.double(), dim=-1)


class ShadowAttack:
    """Shadow-model membership attack (Shokri et al. 2017): ``fit(refs)`` trains the attack models, ``score``.

    Parameters
    ----------
    attack_model : ``attack_model(seed) -> estimator`` with ``fit`` and ``predict_proba`` (scikit-learn
        style); default :func:`default_attack_model`.
    per_class : one attack model per class (the paper) or one for all classes (features then include the
        one-hot label).
    seed : seeds the attack models.

    References
    ----------
    Shokri, Stronati, Song & Shmatikov, "Membership Inference Attacks against Machine Learning Models",
    IEEE S&P 2017.
    """

    @validated
    def __init__(self, attack_model: Callable[[int], Any] | None = None, per_class: bool = True, seed: int = 0) -> None:
        self.attack_model = attack_model or default_attack_model
        self.per_class = per_class
        self.seed = seed
        self.models_: dict[int, Any] | None = None

    def _x(self, z: Tensor, y: Tensor) -> Any:
        f = features(z)
        if not self.per_class:
            f = torch.cat([f, torch.nn.functional.one_hot(y, z.shape[-1]).double()], dim=-1)
        return f.cpu().numpy()

    def fit(self, refs: ReferenceModels) -> ShadowAttack:
        """Train the attack model(s) on the shadow models' outputs over the pool, labelled IN/OUT."""
        if not isinstance(refs, ReferenceModels):
            raise InputError(f"ShadowAttack.fit needs ReferenceModels, got {type(refs).__name__}")
        refs.require(1, 1, "the shadow-model attack")
        z = refs.logits(refs.x_pool)  # (K, N, C)
        num_classes = z.shape[-1]
        check_label_range(z[0], refs.y_pool)
        yy = refs.y_pool.expand(z.shape[:2]).reshape(-1)
        zz, inn = z.reshape(-1, num_classes), refs.masks.reshape(-1)
        groups = range(num_classes) if self.per_class else [-1]
        self.models_ = {}
        self.num_classes_ = num_classes
        for c in groups:
            sel = yy == c if c >= 0 else torch.ones_like(yy, dtype=torch.bool)
            if not (bool(inn[sel].any()) and bool((~inn[sel]).any())):
                continue  # no IN or no OUT example of this class: the class's queries get the global model
            est = self.attack_model(self.seed + max(c, 0))
            est.fit(self._x(zz[sel], yy[sel]), inn[sel].cpu().numpy())
            self.models_[c] = est
        if not self.models_:
            raise InputError("no class has both IN and OUT shadow outputs; train more reference models")
        if self.per_class and any(c not in self.models_ for c in groups):
            est = self.attack_model(self.seed)
            est.fit(self._x(zz, yy), inn.cpu().numpy())
            self.models_[-1] = est
        return self

    def score(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Per-sample ``Pr[member]`` from the attack models (float64, higher = member)."""
        if self.models_ is None:
            raise InputError("call fit(refs) before score()")
        x, y = check_xy(x, y)
        z = model_logits(model, x)
        check_label_range(z, y)
        if z.shape[-1] != self.num_classes_:
            raise InputError(f"the model has {z.shape[-1]} classes but the shadow models had {self.num_classes_}")
        out = torch.empty(x.shape[0], dtype=torch.float64)
        keys = y.cpu().tolist() if self.per_class else [-1] * x.shape[0]
        keys = [k if k in self.models_ else -1 for k in keys]
        kt = torch.tensor(keys, dtype=torch.long, device=out.device)
        for c in set(keys):
            sel = kt == c
            prob = self.models_[c].predict_proba(self._x(z[sel.to(z.device)], y[sel.to(y.device)]))
            col = list(self.models_[c].classes_).index(True)
            out[sel] = torch.as_tensor(prob[:, col], dtype=torch.float64)
        return out.to(x.device)


@validated
def shadow_attack(
    model: nn.Module, x: Tensor, y: Tensor, refs: ReferenceModels, *,
    attack_model: Callable[[int], Any] | None = None, per_class: bool = True, seed: int = 0,
    baseline: nn.Module | None = None,
) -> MembershipScores:
    """Shokri et al.'s shadow-model attack: per-sample ``Pr[member]`` from attack classifiers.

    Parameters
    ----------
    model : the target (``torch.nn.Module`` returning logits; left as found).
    x, y : query points and their true labels.
    refs : :class:`ReferenceModels` playing the shadow models (≥ 2).
    attack_model, per_class, seed : see :class:`ShadowAttack`.
    baseline : a model trained on data disjoint from ``x``: the same attack against it is the sanity baseline
        (default: ``refs.baseline``, set by ``refs.train_disjoint``).

    Returns
    -------
    MembershipScores

    References
    ----------
    Shokri, Stronati, Song & Shmatikov, "Membership Inference Attacks against Machine Learning Models",
    IEEE S&P 2017.
    """
    att = ShadowAttack(attack_model, per_class, seed).fit(refs)
    return with_baseline(lambda m: att.score(m, x, y), model, baseline, "shadow",
                         {"per_class": per_class, "n_reference": len(refs), "seed": seed}, refs)
