"""Defenses against poisoning: find the poisoned training samples (activation clustering, spectral signatures),
the triggered test inputs (STRIP), or repair a backdoored model (Neural Cleanse, Fine-Pruning).

Detectors return :class:`PoisonScores`: one suspicion score per sample (higher = more suspicious) and the
decision at the method's threshold; :meth:`PoisonScores.evaluate` gives AUROC and TPR at a chosen FPR against
the truth. Repairs return a repaired *copy* of the model; the caller's model is left exactly as found.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import Dataset
from ..errors import InputError
from ..evasion._core import check_inputs
from ..models import attack_mode
from ..poisoning._common import check_data, check_rate, features, resolve_layer
from ..poisoning.data import PoisonedData
from ..poisoning.metrics import TrainFn, backdoor_metrics, clean_accuracy, detection_quality, retrain


@dataclass
class PoisonScores:
    """Per-sample suspicion ``scores`` (higher = more suspicious), the decision ``flagged`` at ``threshold``,
    and what the method computed on the way (``details``)."""

    scores: torch.Tensor
    flagged: torch.Tensor
    threshold: float
    method: str
    details: dict[str, Any] = field(default_factory=dict)

    def evaluate(self, is_poison: torch.Tensor, *, fpr: float = 0.05) -> dict:
        """AUROC, TPR at ``fpr`` and the decision's TPR/FPR against the true poison mask."""
        return detection_quality(self.scores, is_poison, fpr=fpr, flagged=self.flagged)

    def outcome(self, train_fn: TrainFn, poisoned: PoisonedData, test: Dataset, *, fpr: float = 0.05,
                seed: int = 0) -> dict:
        """End to end: detection quality against ``poisoned.is_poison``, then the backdoor metrics (clean
        accuracy, ASR, ...) of a model retrained by ``train_fn(dataset, seed)`` without the flagged samples."""
        if self.flagged.shape != (len(poisoned),):
            raise InputError(f"these scores cover {self.flagged.shape[0]} samples, the poisoned set {len(poisoned)}")
        model = retrain(train_fn, poisoned, keep=~self.flagged, seed=seed)
        return {"detection": self.evaluate(poisoned.is_poison, fpr=fpr),
                "after_removal": backdoor_metrics(model, poisoned, test)}


def _class_features(model: nn.Module, data: Dataset, layer: str | nn.Module | None) -> torch.Tensor:
    check_data(data)
    with attack_mode(model):
        return features(model, data.x, layer).double()


def activation_clustering(
    model: nn.Module, data: Dataset, *, n_components: int = 10, reduce: str = "pca", n_clusters: int = 2,
    size_threshold: float = 0.35, layer: str | nn.Module | None = None, seed: int = 0,
) -> PoisonScores:
    """Activation clustering: per label, reduce the last hidden layer's activations to ``n_components``
    dimensions, split them with k-means into ``n_clusters`` clusters, and flag a cluster holding at most
    ``size_threshold`` of its label (the relative-size analysis of Chen et al.).

    Score of sample ``i`` in cluster ``c`` of its label: ``1 − |c| / n_label`` (the share of its label outside
    its cluster), plus a tie-break in [−0.01, 0.01] — the normalized distance margin toward the smaller cluster
    — so that samples within a cluster are ranked too. The decision is ``|c| / n_label ≤ size_threshold``.

    Parameters
    ----------
    model : the classifier trained on the (possibly poisoned) data; left as found.
    data : the training set to inspect (e.g. ``PoisonedData.dataset()``).
    n_components : dimensions kept by the reduction.
    reduce : "pca" (stable on small CNNs) or "ica" (FastICA, the paper's choice).
    n_clusters : k of k-means (2 in the paper).
    size_threshold : the largest relative cluster size that is flagged (the paper uses 0.35).
    layer : the module whose input is the representation (default: the last ``nn.Linear``'s input, the paper's
        "last hidden layer"). On :class:`adverse.zoo.SmallCNN` and 5 % BadNets on digits the convolutional
        features (``layer="head.1"``) separate the poisons far better (TPR 1.00 vs 0.62; benchmarks/BENCHMARKS.md).
    seed : for the reduction and k-means.

    Notes
    -----
    The relative-size rule cannot flag poisons that make up more than ``size_threshold`` of their label: at 10 %
    BadNets on digits they are half of the target label and nothing is found.

    Returns
    -------
    PoisonScores; ``details`` has per-label cluster sizes and silhouette scores.

    References
    ----------
    Chen, Carvalho, Baracaldo, Ludwig, Edwards, Lee, Molloy & Srivastava, "Detecting Backdoor Attacks on Deep
    Neural Networks by Activation Clustering", AAAI SafeAI workshop 2019 (arXiv:1811.03728, 2018).
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA, FastICA
    from sklearn.metrics import silhouette_score

    if reduce not in ("pca", "ica"):
        raise InputError(f"reduce must be 'pca' or 'ica', got {reduce!r}")
    size_threshold = check_rate(size_threshold, "size_threshold")
    if n_clusters < 2 or n_components < 1:
        raise InputError(f"need n_clusters ≥ 2 and n_components ≥ 1, got {n_clusters} and {n_components}")
    acts = _class_features(model, data, layer).cpu().numpy()
    y = data.y.cpu().numpy()
    scores = np.zeros(len(y))
    flagged = np.zeros(len(y), dtype=bool)
    sizes, silhouettes = {}, {}
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        if rows.size <= n_clusters:
            continue
        a = acts[rows]
        a = a[:, a.std(axis=0) > 1e-9]  # dead ReLU units carry nothing and break ICA's whitening
        if a.shape[1] == 0:
            continue
        k = min(n_components, a.shape[1], rows.size - 1)
        red = PCA(k, random_state=seed) if reduce == "pca" else FastICA(k, random_state=seed, max_iter=1000)
        z = red.fit_transform(a)
        km = KMeans(n_clusters, n_init=10, random_state=seed).fit(z)
        lab = km.labels_
        rel = np.bincount(lab, minlength=n_clusters) / rows.size
        dist = np.linalg.norm(z[:, None, :] - km.cluster_centers_[None], axis=2)
        d_own = dist[np.arange(rows.size), lab]
        d_other = np.where(np.eye(n_clusters, dtype=bool)[lab], np.inf, dist).min(axis=1)
        sign = np.where(rel[lab] <= 0.5, 1.0, -1.0)
        scores[rows] = (1 - rel[lab]) + 0.01 * sign * (d_other - d_own) / (d_other + d_own + 1e-12)
        flagged[rows] = rel[lab] <= size_threshold
        sizes[int(c)] = rel.tolist()
        silhouettes[int(c)] = float(silhouette_score(z, lab)) if len(set(lab)) > 1 else float("nan")
    return PoisonScores(torch.from_numpy(scores).float(), torch.from_numpy(flagged), 1 - size_threshold,
                        "activation_clustering",
                        {"cluster_sizes": sizes, "silhouette": silhouettes, "reduce": reduce,
                         "n_components": n_components, "n_clusters": n_clusters})


def spectral_signatures(
    model: nn.Module, data: Dataset, *, expected_fraction: float = 0.1, multiplier: float = 1.5,
    layer: str | nn.Module | None = None,
) -> PoisonScores:
    """Spectral signatures: per label, the squared projection of each centred representation on the top
    singular vector, ``τ_i = ((R_i − R̄) · v)²``; the ``multiplier · ε · n_label`` highest are removed.

    Scores are ``τ_i`` divided by their label's mean (``σ₁² / n``), so that labels are comparable for AUROC.

    Parameters
    ----------
    model : the classifier trained on the (possibly poisoned) data; left as found.
    data : the training set to inspect.
    expected_fraction : ε, an upper bound on the poisoned share of a label.
    multiplier : removes ``multiplier · ε`` of every label (1.5 in the paper).
    layer : the representation layer (default: the last ``nn.Linear``'s input).

    Returns
    -------
    PoisonScores (the decision removes the same share of every label, so its FPR is high by design).

    References
    ----------
    Tran, Li & Madry, "Spectral Signatures in Backdoor Attacks", NeurIPS 2018.
    """
    eps = check_rate(expected_fraction, "expected_fraction")
    if multiplier <= 0:
        raise InputError(f"multiplier must be > 0, got {multiplier!r}")
    reps = _class_features(model, data, layer)
    y = data.y
    scores = torch.zeros(len(y), dtype=torch.float64)
    flagged = torch.zeros(len(y), dtype=torch.bool)
    for c in y.unique():
        rows = (y == c).nonzero().flatten()
        r = reps[rows] - reps[rows].mean(0, keepdim=True)
        v = torch.linalg.svd(r, full_matrices=False).Vh[0]
        tau = (r @ v) ** 2
        scores[rows] = tau / tau.mean().clamp_min(1e-300)
        n_remove = min(math.ceil(multiplier * eps * rows.numel()), rows.numel())
        flagged[rows[tau.argsort(descending=True)[:n_remove]]] = True
    return PoisonScores(scores.float(), flagged, float("nan"), "spectral_signatures",
                        {"expected_fraction": eps, "multiplier": multiplier})


def _strip_entropy(model: nn.Module, x: torch.Tensor, overlays: torch.Tensor, n: int, blend: str,
                   bounds: tuple[float, float], g: torch.Generator) -> torch.Tensor:
    """Mean prediction entropy (bits) of each input superimposed on ``n`` random overlays."""
    out = torch.empty(x.shape[0], dtype=torch.float64)
    pick = torch.randint(0, overlays.shape[0], (x.shape[0], n), generator=g)
    with torch.no_grad():
        for i in range(0, x.shape[0], 64):
            xb = x[i : i + 64, None]
            ob = overlays[pick[i : i + 64]]
            mix = torch.clamp(xb + ob, *bounds) if blend == "add" else 0.5 * (xb + ob)
            p = F.softmax(model(mix.flatten(0, 1)).double(), dim=1)
            h = -(p * torch.log2(p.clamp_min(1e-300))).sum(1)
            out[i : i + 64] = h.view(-1, n).mean(1)
    return out


def strip(
    model: nn.Module, x: torch.Tensor, x_clean: torch.Tensor, *, n: int = 32, frr: float = 0.05,
    blend: str = "add", bounds: tuple[float, float] = (0.0, 1.0), seed: int = 0,
) -> PoisonScores:
    """STRIP: superimpose each test input on ``n`` random clean images and measure the entropy of the
    predictions; a trigger keeps predicting the target whatever it is blended with, so low entropy is suspicious.

    The threshold is the ``frr`` quantile of the entropies of held-out clean inputs (half of ``x_clean``,
    each blended with images from the other half), i.e. the false-rejection rate on clean inputs.

    Parameters
    ----------
    model : the (possibly backdoored) classifier; left as found.
    x : the inputs to screen at test time.
    x_clean : clean inputs the defender holds (at least 4).
    n : superimpositions per input (N in the paper).
    frr : false-rejection rate that sets the threshold.
    blend : "add" (``clip(x + x')``, as the authors' implementation saturates) or "average" (``(x + x') / 2``).
    seed : which overlays are drawn.

    Returns
    -------
    PoisonScores over ``x`` with score ``−H`` (negated mean entropy); ``details["clean_entropy"]``.

    References
    ----------
    Gao, Xu, Wang, Chen, Ranasinghe & Nepal, "STRIP: A Defence Against Trojan Attacks on Deep Neural
    Networks", ACSAC 2019.
    """
    dummy = torch.zeros(x.shape[0] if torch.is_tensor(x) else 0, dtype=torch.long)
    check_inputs(x, dummy, bounds)
    check_inputs(x_clean, torch.zeros(x_clean.shape[0] if torch.is_tensor(x_clean) else 0, dtype=torch.long),
                 bounds)
    if x_clean.shape[1:] != x.shape[1:] or x_clean.shape[0] < 4:
        raise InputError("x_clean must hold at least 4 inputs of the same shape as x")
    if blend not in ("add", "average"):
        raise InputError(f"blend must be 'add' or 'average', got {blend!r}")
    frr = check_rate(frr, "frr")
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(x_clean.shape[0], generator=g)
    half = x_clean.shape[0] // 2
    held, overlays = x_clean[perm[:half]], x_clean[perm[half:]]
    with attack_mode(model):
        h_clean = _strip_entropy(model, held, overlays, n, blend, bounds, g)
        h = _strip_entropy(model, x, overlays, n, blend, bounds, g)
    tau = float(torch.quantile(h_clean, frr))
    return PoisonScores((-h).float(), h < tau, -tau, "strip", {"clean_entropy": h_clean.float(), "n": n,
                                                                "blend": blend, "frr": frr})


# ------------------------------------------------------------------------------------------ model repair
@dataclass
class NeuralCleanseResult:
    """Per-class reverse-engineered triggers, their L1 norms and anomaly indices, the flagged classes, and the
    repaired copy of the model (``None`` if nothing was flagged or ``unlearn=False``)."""

    l1_norms: torch.Tensor
    anomaly_index: torch.Tensor
    flagged: torch.Tensor
    masks: torch.Tensor
    patterns: torch.Tensor
    success: torch.Tensor
    model: nn.Module | None
    details: dict[str, Any] = field(default_factory=dict)


def _reverse_trigger(model: nn.Module, x: torch.Tensor, target: int, *, steps: int, lr: float, init_cost: float,
                     batch_size: int, success_threshold: float, patience: int, bounds: tuple[float, float],
                     g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Optimization (3) of Wang et al. for one label: ``min_{m,Δ} CE(f((1 − m) x + m Δ), t) + λ |m|₁`` with
    ``m = (tanh(w_m) + 1) / 2`` and ``Δ`` squashed into the bounds, and λ adjusted as in the authors' code (×1.5
    after ``patience`` steps at ≥ ``success_threshold`` success, ÷1.5^1.5 after ``patience`` below)."""
    lo, hi = bounds
    c, h, w = x.shape[1:]
    w_m = (torch.rand((1, h, w), generator=g) * 2 - 1).mul(0.5).requires_grad_(True)
    w_p = (torch.rand((c, h, w), generator=g) * 2 - 1).mul(0.5).requires_grad_(True)
    opt = torch.optim.Adam([w_m, w_p], lr=lr, betas=(0.5, 0.9))
    cost, up, down = init_cost, 0, 0
    best = (None, None, float("inf"), 0.0)
    y_t = torch.full((batch_size,), target, dtype=torch.long)
    for _ in range(steps):
        xb = x[torch.randint(0, x.shape[0], (batch_size,), generator=g)]
        m = (torch.tanh(w_m) + 1) / 2
        p = lo + (hi - lo) * (torch.tanh(w_p) + 1) / 2
        logits = model((1 - m) * xb + m * p)
        ce = F.cross_entropy(logits, y_t)
        l1 = m.abs().sum()
        opt.zero_grad(set_to_none=True)
        (ce + cost * l1).backward()
        opt.step()
        acc = float((logits.argmax(1) == target).float().mean())
        if acc >= success_threshold and float(l1.detach()) < best[2]:
            best = (m.detach().clone(), p.detach().clone(), float(l1.detach()), acc)
        up, down = (up + 1, 0) if acc >= success_threshold else (0, down + 1)
        if up >= patience:
            cost, up = cost * 1.5, 0
        elif down >= patience:
            cost, down = cost / 1.5 ** 1.5, 0
    if best[0] is None:  # never reached the threshold: report the last mask, with its (low) success
        m = ((torch.tanh(w_m) + 1) / 2).detach()
        p = (lo + (hi - lo) * (torch.tanh(w_p) + 1) / 2).detach()
        with torch.no_grad():
            acc = float((model((1 - m) * x + m * p).argmax(1) == target).float().mean())
        return m, p, acc
    return best[0], best[1], best[3]


def anomaly_index(values: torch.Tensor) -> torch.Tensor:
    """MAD-based anomaly index: ``|v − median| / (1.4826 · MAD)`` (Wang et al., Sec. IV)."""
    med = values.median()
    mad = 1.4826 * (values - med).abs().median()
    return (values - med).abs() / mad.clamp_min(1e-12)


def neural_cleanse(
    model: nn.Module, x_clean: torch.Tensor, y_clean: torch.Tensor, *, num_classes: int | None = None,
    steps: int = 300, lr: float = 0.1, init_cost: float = 1e-3, batch_size: int = 64,
    success_threshold: float = 0.99, patience: int = 5, threshold: float = 2.0, unlearn: bool = True,
    unlearn_fraction: float = 0.2, unlearn_epochs: int = 5, unlearn_lr: float = 1e-3,
    bounds: tuple[float, float] = (0.0, 1.0), seed: int = 0,
) -> NeuralCleanseResult:
    """Neural Cleanse: reverse-engineer, for every label, the smallest mask-and-pattern trigger that sends
    clean inputs to it; a backdoored label needs an anomalously small one. Labels whose L1 norm lies below the
    median with anomaly index > ``threshold`` are flagged; with ``unlearn=True`` a copy of the model is
    fine-tuned on the clean data with ``unlearn_fraction`` of it stamped with the flagged triggers and correct
    labels ("unlearning", Sec. VI-C).

    Parameters
    ----------
    model : the suspect classifier; left as found (the repair is a deep copy).
    x_clean, y_clean : clean data the defender holds.
    num_classes : number of labels (default: the model's output size).
    steps, lr, init_cost, batch_size, success_threshold, patience : the trigger optimization per label.
    threshold : anomaly index above which a label is flagged (2 in the paper, i.e. > 95 % confidence).
    unlearn, unlearn_fraction, unlearn_epochs, unlearn_lr : the repair.
    seed : optimization and repair randomness.

    Returns
    -------
    NeuralCleanseResult.

    References
    ----------
    Wang, Yao, Shan, Li, Viswanath, Zheng & Zhao, "Neural Cleanse: Identifying and Mitigating Backdoor Attacks
    in Neural Networks", IEEE S&P 2019.
    """
    from ..zoo import train_classifier

    x_clean, y_clean = check_inputs(x_clean, y_clean, bounds)
    g = torch.Generator().manual_seed(int(seed))
    with attack_mode(model):
        with torch.no_grad():
            k = int(model(x_clean[:1]).shape[1]) if num_classes is None else int(num_classes)
        masks, patterns, success = [], [], []
        for t in range(k):
            m, p, acc = _reverse_trigger(model, x_clean, t, steps=steps, lr=lr, init_cost=init_cost,
                                         batch_size=batch_size, success_threshold=success_threshold,
                                         patience=patience, bounds=bounds, g=g)
            masks.append(m)
            patterns.append(p)
            success.append(acc)
    masks_t, patterns_t = torch.stack(masks), torch.stack(patterns)
    l1 = masks_t.flatten(1).abs().sum(1)
    idx = anomaly_index(l1)
    flagged = (idx > threshold) & (l1 < l1.median())
    repaired = None
    if unlearn and bool(flagged.any()):
        repaired = copy.deepcopy(model)
        n_stamp = round(check_rate(unlearn_fraction, "unlearn_fraction") * x_clean.shape[0])
        perm = torch.randperm(x_clean.shape[0], generator=g)[:n_stamp]
        classes = flagged.nonzero().flatten()
        which = classes[torch.randint(0, classes.numel(), (n_stamp,), generator=g)]
        x_mix = x_clean.clone()
        m, p = masks_t[which], patterns_t[which]
        x_mix[perm] = (1 - m) * x_clean[perm] + m * p
        train_classifier(repaired, Dataset(x_mix, y_clean, "neural-cleanse-unlearning", k, bounds),
                         epochs=unlearn_epochs, lr=unlearn_lr, seed=seed)
    return NeuralCleanseResult(l1, idx, flagged, masks_t, patterns_t, torch.tensor(success), repaired,
                               {"threshold": threshold, "steps": steps})


@dataclass
class FinePruningResult:
    """The repaired copy of the model, the pruned channels (in pruning order), each channel's mean clean
    activation, and clean accuracy before pruning, after pruning and after fine-tuning."""

    model: nn.Module
    pruned: torch.Tensor
    activation: torch.Tensor
    accuracy: dict[str, float]


def _last_conv(model: nn.Module) -> nn.Module:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise InputError("the model has no nn.Conv2d; pass layer= naming the layer whose channels to prune")
    return convs[-1]


def fine_pruning(
    model: nn.Module, x_clean: torch.Tensor, y_clean: torch.Tensor, *, layer: str | nn.Module | None = None,
    max_accuracy_drop: float = 0.04, max_fraction: float = 0.9, fine_tune_epochs: int = 5, lr: float = 1e-3,
    bounds: tuple[float, float] = (0.0, 1.0), seed: int = 0,
) -> FinePruningResult:
    """Fine-Pruning: prune the channels of the last convolutional layer that clean inputs activate least
    (backdoor neurons hide there), in increasing order of mean activation, as long as clean accuracy stays within
    ``max_accuracy_drop`` of the original (and at most ``max_fraction`` of the channels); then fine-tune on the
    clean data. Pruning uses :func:`torch.nn.utils.prune.custom_from_mask` so fine-tuning cannot regrow the
    pruned channels; the mask is made permanent at the end.

    Parameters
    ----------
    model : the suspect classifier; left as found (the repair is a deep copy).
    x_clean, y_clean : clean data the defender holds (used for ranking, the stopping rule and fine-tuning).
    layer : the ``nn.Conv2d`` to prune (default: the last one).
    max_accuracy_drop, max_fraction : the stopping rule.
    fine_tune_epochs, lr : fine-tuning with :func:`adverse.zoo.train_classifier` (0 epochs: prune only).
    seed : fine-tuning randomness.

    Returns
    -------
    FinePruningResult.

    References
    ----------
    Liu, Dolan-Gavitt & Garg, "Fine-Pruning: Defending Against Backdooring Attacks on Deep Neural Networks",
    RAID 2018.
    """
    from torch.nn.utils import prune

    from ..zoo import train_classifier

    x_clean, y_clean = check_inputs(x_clean, y_clean, bounds)
    max_accuracy_drop = check_rate(max_accuracy_drop, "max_accuracy_drop")
    max_fraction = check_rate(max_fraction, "max_fraction")
    repaired = copy.deepcopy(model).eval()
    for p in repaired.parameters():
        p.requires_grad_(True)
        p.grad = None
    conv = _last_conv(repaired) if layer is None else resolve_layer(repaired, layer)
    if not isinstance(conv, nn.Conv2d):
        raise InputError(f"layer must be an nn.Conv2d, got {type(conv).__name__}")
    acts: list[torch.Tensor] = []
    handle = conv.register_forward_hook(lambda _m, _i, out: acts.append(out.clamp_min(0).mean((0, 2, 3))))
    with torch.no_grad():
        repaired(x_clean)
    handle.remove()
    activation = acts[0]
    order = activation.argsort()
    keep = torch.ones(conv.out_channels)
    gate = conv.register_forward_hook(lambda _m, _i, out: out * keep.view(1, -1, 1, 1))
    acc0 = clean_accuracy(repaired, x_clean, y_clean)
    n_pruned = 0
    for j in range(int(max_fraction * conv.out_channels)):
        keep[order[j]] = 0
        if clean_accuracy(repaired, x_clean, y_clean) < acc0 - max_accuracy_drop:
            keep[order[j]] = 1
            break
        n_pruned = j + 1
    gate.remove()
    pruned = order[:n_pruned]
    mask = torch.ones_like(conv.weight)
    mask[pruned] = 0
    prune.custom_from_mask(conv, "weight", mask)
    if conv.bias is not None:
        bmask = torch.ones_like(conv.bias)
        bmask[pruned] = 0
        prune.custom_from_mask(conv, "bias", bmask)
    acc_pruned = clean_accuracy(repaired, x_clean, y_clean)
    if fine_tune_epochs > 0:
        n_cls = int(repaired(x_clean[:1]).shape[1])
        train_classifier(repaired, Dataset(x_clean, y_clean, "fine-pruning", n_cls, bounds),
                         epochs=fine_tune_epochs, lr=lr, seed=seed)
    prune.remove(conv, "weight")
    if conv.bias is not None:
        prune.remove(conv, "bias")
    repaired.eval()
    return FinePruningResult(repaired, pruned, activation,
                             {"original": acc0, "pruned": acc_pruned,
                              "fine_tuned": clean_accuracy(repaired, x_clean, y_clean)})


__all__ = [
    "FinePruningResult",
    "NeuralCleanseResult",
    "PoisonScores",
    "activation_clustering",
    "anomaly_index",
    "fine_pruning",
    "neural_cleanse",
    "spectral_signatures",
    "strip",
]
