"""Attribute inference: recover a record's sensitive attribute from a model, beside what imputation gets.

The attacker knows a record's other attributes and its label, can query the model, and holds auxiliary
records from the same distribution (with the sensitive attribute). Two attacks:

- **fredrikson** (Fredrikson et al. 2014, for a classifier): for each candidate value ``v`` of the sensitive
  attribute, complete the record with ``v``, and choose ``argmax_v Pr_model(y | x_{−s}, v) · π(v)``, with
  ``π`` the attribute's marginal (Laplace-smoothed) in the auxiliary data.
- **model** (the black-box attack-model variant, as in ART's ``AttributeInferenceBlackBox``): a classifier
  trained on the auxiliary records learns the attribute from the other attributes and the model's output
  (probabilities) on the record; at attack time it reads the target records' outputs.

The **imputation baseline** (Jayaraman & Evans 2022) is the same kind of classifier trained on the other
attributes and the true label only: what the attacker gets without the model. An attack that does not beat it
reveals nothing the data distribution did not already reveal; every result reports both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..validation import validated
from ._signals import check_label_range, check_xy, model_logits

Tensor = torch.Tensor

METHODS = ("fredrikson", "model")


@dataclass
class AttributeResult:
    """What :func:`attribute_inference` returns.

    Attributes
    ----------
    predicted : inferred attribute values (n,); ``truth`` the actual ones (read from ``x``).
    accuracy : fraction inferred correctly; ``baseline_accuracy`` the imputation baseline's (no model access);
    majority_accuracy : always guessing the auxiliary data's most frequent value.
    accuracy_members / accuracy_nonmembers (and baseline_*) : the same split by membership when given.
    """

    predicted: Tensor
    truth: Tensor
    accuracy: float
    baseline_predicted: Tensor
    baseline_accuracy: float
    majority_accuracy: float
    method: str
    split: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"method": self.method, "accuracy": self.accuracy, "baseline_accuracy": self.baseline_accuracy,
                "majority_accuracy": self.majority_accuracy, **self.split, "params": dict(self.params)}


def default_classifier(seed: int) -> Any:
    """A seeded scikit-learn random forest (attack and imputation models)."""
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=100, random_state=seed)


def _codes(column: Tensor, values: Tensor) -> Tensor:
    match = column[:, None] == values[None, :]
    if not bool(match.any(1).all()):
        raise InputError("the sensitive attribute takes values outside `values`; list every possible value")
    return match.double().argmax(1)


def fredrikson_inference(model: nn.Module, x: Tensor, y: Tensor, attribute: int, values: Tensor,
                         prior: Tensor) -> Tensor:
    """Indices into ``values`` of ``argmax_v Pr_model(y | x with x[:, attribute] = v) · π(v)`` (Fredrikson 2014)."""
    scores = []
    for j, v in enumerate(values):
        xv = x.clone()
        xv[:, attribute] = v
        logp = torch.log_softmax(model_logits(model, xv), dim=-1).gather(1, y[:, None]).squeeze(1)
        scores.append(logp + torch.log(prior[j]))
    return torch.stack(scores, 1).argmax(1)


@validated
def attribute_inference(
    model: nn.Module, x: Tensor, y: Tensor, *, attribute: int, values: Tensor, x_aux: Tensor, y_aux: Tensor,
    method: str = "fredrikson", classifier: Callable[[int], Any] | None = None, is_member: Tensor | None = None,
    seed: int = 0,
) -> AttributeResult:
    """Infer column ``attribute`` of tabular records ``x`` (n, d) from the model, with the imputation baseline.

    Parameters
    ----------
    model : the target ``torch.nn.Module`` (logits out; left as found).
    x, y : the target records (their true sensitive values are read from ``x[:, attribute]`` only to score the
        attack; the attacks never see them) and labels.
    attribute : the sensitive column; ``values`` its possible values (1-D tensor).
    x_aux, y_aux : the attacker's auxiliary records from the same distribution.
    method : "fredrikson" (enumerate values, weight by the prior) or "model" (attack classifier on outputs).
    classifier : ``classifier(seed) -> estimator`` (scikit-learn style) for the "model" attack and the
        imputation baseline; default :func:`default_classifier`.
    is_member : optional booleans (n,): accuracy is also reported for members and non-members.
    seed : seeds the classifiers.

    Returns
    -------
    AttributeResult

    References
    ----------
    Fredrikson, Lantz, Jha, Lin, Page & Ristenpart, "Privacy in Pharmacogenetics: An End-to-End Case Study of
    Personalized Warfarin Dosing", USENIX Security 2014. Jayaraman & Evans, "Are Attribute Inference Attacks
    Just Imputation?", ACM CCS 2022 (the imputation baseline).
    """
    x, y = check_xy(x, y)
    x_aux, y_aux = check_xy(x_aux, y_aux, "x_aux")
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}")
    if x.dim() != 2 or x_aux.dim() != 2 or x.shape[1] != x_aux.shape[1]:
        raise InputError("attribute inference works on tabular records: x and x_aux must be (n, d) with the same d")
    if isinstance(attribute, bool) or not isinstance(attribute, int) or not (0 <= attribute < x.shape[1]):
        raise InputError(f"attribute must be a column index in [0, {x.shape[1]}), got {attribute!r}")
    values = torch.as_tensor(values, dtype=x.dtype)
    if values.dim() != 1 or values.numel() < 2:
        raise InputError("values must list at least 2 possible values of the sensitive attribute")
    make = classifier or default_classifier
    truth = _codes(x[:, attribute], values)
    aux_codes = _codes(x_aux[:, attribute], values)
    counts = torch.bincount(aux_codes, minlength=values.numel()).double()
    prior = (counts + 1) / (counts.sum() + values.numel())
    others = [j for j in range(x.shape[1]) if j != attribute]
    z = model_logits(model, x)
    check_label_range(z, y)
    num_classes = z.shape[1]
    check_label_range(z, y_aux)
    if method == "fredrikson":
        pred = fredrikson_inference(model, x, y, attribute, values, prior)
    else:
        def feats(xx: Tensor) -> Any:
            return torch.cat([xx[:, others].double(), torch.softmax(model_logits(model, xx), -1)], 1).cpu().numpy()

        attack = make(seed).fit(feats(x_aux), aux_codes.cpu().numpy())
        pred = torch.as_tensor(attack.predict(feats(x)), dtype=torch.long, device=x.device)

    def base_feats(xx: Tensor, yy: Tensor) -> Any:
        return torch.cat([xx[:, others].double(), nn.functional.one_hot(yy, num_classes).double()], 1).cpu().numpy()

    imputer = make(seed + 1).fit(base_feats(x_aux, y_aux), aux_codes.cpu().numpy())
    base = torch.as_tensor(imputer.predict(base_feats(x, y)), dtype=torch.long, device=x.device)
    acc = lambda p, sel=slice(None): float((p[sel] == truth[sel]).double().mean())
    split: dict[str, float] = {}
    if is_member is not None:
        mem = torch.as_tensor(is_member)
        if mem.dtype != torch.bool or mem.shape != truth.shape:
            raise InputError(f"is_member must be a boolean tensor of shape {tuple(truth.shape)}")
        if bool(mem.any()) and bool((~mem).any()):
            split = {"accuracy_members": acc(pred, mem), "accuracy_nonmembers": acc(pred, ~mem),
                     "baseline_accuracy_members": acc(base, mem), "baseline_accuracy_nonmembers": acc(base, ~mem)}
    majority = float((truth == counts.argmax()).double().mean())
    return AttributeResult(predicted=values[pred], truth=values[truth], accuracy=acc(pred), baseline_predicted=values[base],
                           baseline_accuracy=acc(base), majority_accuracy=majority, method=method, split=split,
                           params={"attribute": attribute, "values": values.tolist(), "seed": seed,
                                   "n_aux": int(x_aux.shape[0])})
