"""How a poisoning is measured, the way BackdoorBench measures it: clean accuracy, attack success rate (ASR) on
triggered *non-target* test inputs, source-specific ASR, robust accuracy on triggered inputs; for targeted
poisoning the success rate over many targets next to a control with the same budget of random noise; for
defenses, per-sample detection quality (AUROC, TPR at a chosen FPR).

References
----------
Wu, Chen, Wei, Zhang, Lu, Wu & Zha, "BackdoorBench: A Comprehensive Benchmark of Backdoor Learning",
NeurIPS 2022 Datasets and Benchmarks (metric definitions: C-Acc, ASR, R-Acc).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..data import Dataset
from ..errors import InputError
from ..validation import validated
from ._common import check_class, check_rate, predict
from .data import PoisonedData

TrainFn = Callable[[Dataset, int], nn.Module]


@validated
def clean_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy on clean inputs."""
    return float((predict(model, x) == y).float().mean())


@validated
def attack_success_rate(
    model: nn.Module, poisoned: PoisonedData, x: torch.Tensor, y: torch.Tensor, *, source: int | None = None,
) -> float:
    """ASR: the fraction of triggered test inputs whose true class is not the target (or is ``source``) that the
    model classifies as the target. NaN when no input qualifies."""
    target = int(poisoned.params["target"])
    keep = y != target if source is None else y == check_class(source, poisoned.num_classes, "source")
    if not bool(keep.any()):
        return float("nan")
    return float((predict(model, poisoned.apply_trigger(x[keep])) == target).float().mean())


@validated
def backdoor_metrics(model: nn.Module, poisoned: PoisonedData, test: Dataset) -> dict:
    """Clean accuracy, ASR on non-target inputs, R-Acc (triggered non-target inputs still given their true
    class), and ASR per source class."""
    target = int(poisoned.params["target"])
    keep = test.y != target
    pred_trig = predict(model, poisoned.apply_trigger(test.x[keep]))
    y = test.y[keep]
    per_source = {int(c): float((pred_trig[y == c] == target).float().mean()) for c in y.unique()}
    return {
        "clean_accuracy": clean_accuracy(model, test.x, test.y),
        "asr": float((pred_trig == target).float().mean()),
        "robust_accuracy": float((pred_trig == y).float().mean()),
        "asr_by_source": per_source,
    }


def class_recall(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cls: int) -> float:
    """Recall of class ``cls``: the fraction of its test inputs classified as ``cls``."""
    keep = y == cls
    return float((predict(model, x[keep]) == cls).float().mean())


@validated
def trainer(build: Callable[[], nn.Module], *, augment: int = 0, **train_kwargs) -> TrainFn:
    """A victim's training recipe as a ``train_fn(dataset, seed) -> model``: ``build()`` under
    ``torch.manual_seed(seed)`` (inside a forked RNG, so the caller's global state is untouched), then
    :func:`adverse.zoo.train_classifier` with ``seed`` and ``train_kwargs`` (epochs, lr, ...).

    ``augment > 0`` trains with data augmentation, as the Witches' Brew victims do: every batch randomly
    shifted by up to ``augment`` pixels (:func:`adverse.poisoning.targeted.shift_augmentation`, seeded with
    ``seed``, so a run is still deterministic per seed)."""
    from ..zoo import train_classifier
    from .targeted import shift_augmentation

    if augment and "perturb" in train_kwargs:
        raise InputError("augment and perturb cannot be combined; pass one")

    def train_fn(data: Dataset, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build()
        extra = {"perturb": shift_augmentation(augment, seed, data.bounds[0])} if augment else {}
        return train_classifier(model, data, seed=seed, **extra, **train_kwargs)

    return train_fn


@validated
def retrain(train_fn: TrainFn, poisoned: PoisonedData, *, keep: torch.Tensor | None = None, seed: int = 0) -> nn.Module:
    """Train a fresh model on the poisoned set (optionally only on the samples ``keep`` selects, e.g. after a
    detection defense removed the flagged ones): ``train_fn(dataset, seed) -> model``."""
    return train_fn(poisoned.dataset(keep), seed)


# ------------------------------------------------------------------------------------------ targeted poisoning
@validated
def targeted_success(model: nn.Module, poisoned: PoisonedData) -> torch.Tensor:
    """Per target: does the model give the target input the adversarial label?"""
    if "x" not in poisoned.targets:
        raise InputError(f"a {poisoned.attack!r} poisoning has no targets; only targeted poisoning does")
    return predict(model, poisoned.targets["x"]) == poisoned.targets["adv_label"]


@validated
def random_noise_control(poisoned: PoisonedData, *, seed: int = 0) -> PoisonedData:
    """The control for a targeted poisoning: the same samples perturbed by the same L∞ budget of random sign
    noise (``±eps`` per pixel, clipped to the bounds) instead of the crafted perturbation."""
    eps = float(poisoned.params["eps"])
    idx = poisoned.indices
    base = _clean_inputs(poisoned)
    g = torch.Generator().manual_seed(int(seed))
    noise = (torch.randint(0, 2, base.shape, generator=g).to(base.dtype) * 2 - 1) * eps
    x = poisoned.x.clone()
    x[idx] = torch.clamp(base + noise, *poisoned.bounds)
    params = dict(poisoned.params, control="random sign noise", control_seed=seed)
    return PoisonedData(x, poisoned.y.clone(), idx, poisoned.attack + "-control", params, poisoned.num_classes,
                        poisoned.y_clean.clone(), poisoned.bounds, None, dict(poisoned.targets))


def _clean_inputs(poisoned: PoisonedData) -> torch.Tensor:
    if "x_clean" not in poisoned.targets:
        raise InputError("this PoisonedData does not keep the clean poison inputs (targets['x_clean'])")
    return poisoned.targets["x_clean"]


@validated
def targeted_evaluation(train_fn: TrainFn, poisoned: list[PoisonedData], *, seed: int = 0,
                        control: bool = True) -> dict:
    """Success rate of targeted poisonings over many targets, each retrained from scratch with ``seed``, and of
    the random-noise control at the same budget (same samples, same eps)."""
    hits, ctrl = [], []
    for i, pd in enumerate(poisoned):
        hits.append(bool(targeted_success(retrain(train_fn, pd, seed=seed), pd).all()))
        if control:
            c = random_noise_control(pd, seed=seed + i)
            ctrl.append(bool(targeted_success(retrain(train_fn, c, seed=seed), c).all()))
    out = {"targets": len(poisoned), "success_rate": float(np.mean(hits)) if hits else float("nan"),
           "per_target": hits}
    if control:
        out.update(control_rate=float(np.mean(ctrl)) if ctrl else float("nan"), control_per_target=ctrl)
    return out


# ------------------------------------------------------------------------------------------ detection quality
@validated
def detection_quality(scores: torch.Tensor, is_poison: torch.Tensor, *, fpr: float = 0.05,
                      flagged: torch.Tensor | None = None) -> dict:
    """Per-sample detection quality of suspicion ``scores`` (higher = more suspicious) against the truth.

    Returns AUROC, the TPR at the largest threshold whose FPR is ≤ ``fpr`` (from the ROC curve), and, when a
    decision ``flagged`` is given, its TPR and FPR.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr = check_rate(fpr, "fpr")
    s = scores.detach().double().cpu().numpy()
    t = torch.as_tensor(is_poison, dtype=torch.bool).cpu().numpy()
    if s.shape != t.shape:
        raise InputError(f"scores and is_poison must have the same shape, got {s.shape} and {t.shape}")
    out: dict = {"n": int(t.size), "n_poison": int(t.sum())}
    if 0 < t.sum() < t.size:
        out["auroc"] = float(roc_auc_score(t, s))
        f, tp, _ = roc_curve(t, s)
        out[f"tpr_at_fpr_{fpr:g}"] = float(tp[f <= fpr].max())
    else:
        out["auroc"] = float("nan")
        out[f"tpr_at_fpr_{fpr:g}"] = float("nan")
    if flagged is not None:
        fl = torch.as_tensor(flagged, dtype=torch.bool).cpu().numpy()
        out["tpr"] = float(fl[t].mean()) if t.any() else float("nan")
        out["fpr"] = float(fl[~t].mean()) if (~t).any() else float("nan")
        out["flagged"] = int(fl.sum())
    return out
