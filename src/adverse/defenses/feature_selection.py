"""Feature selection as a defense for tabular models: train on a subset of the features chosen for robustness as
well as accuracy (Zhang et al. 2016), with the accuracy-only selection (``lam=0``) as the baseline.

:func:`adversarial_feature_selection` is the wrapper search; :class:`FeatureSelection` is the layer that keeps the
chosen features and replaces the others by their training mean, so that a model trained behind it (the paper's
classifier trained on the subset) never sees them. The layer is linear, so its exact gradient is the adaptive
attacker's: a dropped feature genuinely has no influence, which is not gradient masking.

References
----------
Zhang, Chan, Biggio, Yeung & Roli, "Adversarial Feature Selection Against Evasion Attacks", IEEE Transactions on
Cybernetics 46(3), 2016.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from ..threat import check_norm
from ..validation import Rule, validated
from .preprocessing import Preprocessor

Tensor = torch.Tensor
_DUAL = {"linf": 1, "l2": 2, "l1": np.inf}


def _linear_wrapper(x: np.ndarray, y: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The wrapper's classifier: multinomial logistic regression (scikit-learn, L-BFGS, deterministic); returns
    one weight row and one bias per class in ``classes`` (a binary model as two rows, ``0`` and ``w``)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=500).fit(x, y)
    w, b = clf.coef_, clf.intercept_
    if w.shape[0] == 1:  # binary: z_1 − z_0 = w·x + b
        w, b = np.vstack([np.zeros_like(w), w]), np.concatenate([[0.0], b])
    index = {c: i for i, c in enumerate(clf.classes_)}
    rows = np.array([index.get(c, -1) for c in classes])
    w_full = np.where(rows[:, None] >= 0, w[np.maximum(rows, 0)], 0.0)
    b_full = np.where(rows >= 0, b[np.maximum(rows, 0)], -np.inf)
    return w_full, b_full


def _generalization_and_security(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray,
                                 q: float) -> tuple[float, float]:
    """``G(θ)``: accuracy on the validation inputs. ``S(θ)``: their mean minimal evasion distance, the exact
    distance to the linear decision boundary ``min_{j≠y} (z_y − z_j) / ‖w_y − w_j‖_q`` (q the dual of the
    threat norm) for correctly classified inputs and 0 for the others."""
    z = x @ w.T + b
    correct = z.argmax(axis=1) == y
    gap = z[np.arange(len(y)), y][:, None] - z                       # (n, C)
    dw = np.linalg.norm(w[y][:, None, :] - w[None, :, :], ord=q, axis=2)  # (n, C)
    with np.errstate(invalid="ignore"):
        dist = np.where(np.arange(w.shape[0])[None, :] == y[:, None], np.inf, gap / np.maximum(dw, 1e-12))
    dist = dist.min(axis=1)
    return float(correct.mean()), float(np.where(correct & np.isfinite(dist), dist, 0.0).mean())


@validated(lam=Rule("real", low=0.0), validation=Rule("real", low=0.0, high=1.0, open_low=True, open_high=True))
def adversarial_feature_selection(x: Tensor, y: Tensor, k: int, *, lam: float = 1.0, norm: str = "linf",
                                  validation: float = 0.3, seed: int = 0) -> list[int]:
    """Zhang et al.'s wrapper feature selection: grow ``θ ∈ {0, 1}^d`` one feature at a time (forward
    selection), each time adding the feature that maximizes ``G(θ) + λ · S(θ)``, until ``k`` are chosen.

    ``G(θ)`` is the generalization capability (validation accuracy of a multinomial logistic regression trained
    on the features in ``θ``) and ``S(θ)`` the security (the mean minimal ``norm`` perturbation that evades that
    classifier on the validation inputs, exact for a linear model; 0 for inputs it already misclassifies).
    ``lam = 0`` is the plain accuracy-only wrapper selection, the baseline the paper compares against.

    Parameters
    ----------
    x, y : training inputs (n, ...) and integer labels; inputs are flattened to d features.
    k : the number of features to select (1 ≤ k ≤ d).
    lam : ``λ``, the weight of security against accuracy (security is in input units).
    norm : the attacker's norm: "linf", "l2" or "l1".
    validation : the share of ``(x, y)`` held out (seeded, stratified) to estimate ``G`` and ``S``.
    seed : the split.

    Returns
    -------
    The selected feature indices, in the order they were chosen.

    References
    ----------
    Zhang, Chan, Biggio, Yeung & Roli, "Adversarial Feature Selection Against Evasion Attacks", IEEE Trans.
    Cybernetics 2016.
    """
    from sklearn.model_selection import train_test_split

    q = _DUAL[check_norm(norm)]
    if not (torch.is_tensor(x) and torch.is_tensor(y)) or x.dim() < 2 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise InputError("adversarial_feature_selection needs tensors x (n, ...) and integer labels y (n,)")
    flat = x.detach().flatten(1).double().cpu().numpy()
    labels = y.detach().cpu().numpy().astype(np.int64)
    d = flat.shape[1]
    if k > d:
        raise InputError(f"k={k} exceeds the number of features {d}; pass k ≤ {d}")
    if not np.isfinite(flat).all():
        raise InputError("the training inputs hold NaN or infinite values")
    x_tr, x_va, y_tr, y_va = train_test_split(flat, labels, test_size=validation, random_state=seed,
                                              stratify=labels)
    classes = np.unique(labels)
    y_va_idx = np.searchsorted(classes, y_va)
    chosen: list[int] = []
    for _ in range(k):
        best, best_value = -1, -np.inf
        for j in range(d):
            if j in chosen:
                continue
            theta = [*chosen, j]
            w, b = _linear_wrapper(x_tr[:, theta], y_tr, classes)
            g, s = _generalization_and_security(w, b, x_va[:, theta], y_va_idx, q)
            if g + lam * s > best_value + 1e-12:
                best, best_value = j, g + lam * s
        chosen.append(best)
    return chosen


class FeatureSelection(Preprocessor):
    """Keep ``k`` features chosen by :func:`adversarial_feature_selection` and set every other feature to its
    training mean: train the classifier behind this layer and it learns from the subset only.

    Parameters
    ----------
    k : the number of features kept.
    lam : ``λ`` of the selection; 0 gives the accuracy-only baseline.
    norm : the attacker's norm the selection guards against.
    validation : the held-out share used by the selection.
    gradient : "exact" (the mask's own gradient: the adaptive attack), "bpda" (identity) or "eot" (= "exact").
    bounds : the input range. seed : the selection's split.

    Attributes (after :meth:`fit`)
    ------------------------------
    selected_ : the kept feature indices (in the order chosen). ``keep`` (bool mask) and ``fill`` (the training
    means) are buffers of the flattened input's size.

    References
    ----------
    Zhang, Chan, Biggio, Yeung & Roli, "Adversarial Feature Selection Against Evasion Attacks", IEEE Trans.
    Cybernetics 2016.
    """

    @validated(lam=Rule("real", low=0.0), validation=Rule("real", low=0.0, high=1.0, open_low=True, open_high=True))
    def __init__(self, k: int, *, lam: float = 1.0, norm: str = "linf", validation: float = 0.3,
                 gradient: str = "exact", bounds: tuple[float, float] = (0.0, 1.0), seed: int = 0) -> None:
        super().__init__(gradient, bounds, seed)
        self.k, self.lam, self.norm, self.validation = k, float(lam), check_norm(norm), float(validation)
        self.selected_: list[int] | None = None
        self.register_buffer("keep", None)
        self.register_buffer("fill", None)

    def fit(self, x: Tensor, y: Tensor) -> FeatureSelection:
        """Select the features on training data ``(x, y)``; the dropped features' fill value is their training
        mean. Returns self."""
        if y is None:
            raise InputError("FeatureSelection.fit needs the labels y: the selection trains classifiers")
        self.selected_ = adversarial_feature_selection(x, y, self.k, lam=self.lam, norm=self.norm,
                                                       validation=self.validation, seed=self.seed)
        flat = x.detach().flatten(1)
        keep = torch.zeros(flat.shape[1], dtype=torch.bool, device=x.device)
        keep[self.selected_] = True
        self.keep, self.fill = keep, flat.mean(dim=0).to(x.dtype)
        return self

    def transform(self, x: Tensor) -> Tensor:
        if self.keep is None:
            raise InputError("FeatureSelection is not fitted; call fit(x_train, y_train) first")
        flat = x.flatten(1)
        if flat.shape[1] != self.keep.numel():
            raise InputError(f"FeatureSelection was fitted on {self.keep.numel()} features, got {flat.shape[1]}")
        return torch.where(self.keep.to(x.device), flat, self.fill.to(x)).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"k={self.k}, lam={self.lam}, norm={self.norm!r}, gradient={self.gradient!r}, seed={self.seed}"


__all__ = ["FeatureSelection", "adversarial_feature_selection"]
