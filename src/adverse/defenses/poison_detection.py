"""Defenses against poisoning: find the poisoned training samples (activation clustering, spectral signatures),
the triggered test inputs (STRIP), or repair a backdoored model (Neural Cleanse, Fine-Pruning).

Detectors return :class:`PoisonScores`: one suspicion score per sample (higher = more suspicious) and the
decision at the method's threshold; :meth:`PoisonScores.evaluate` gives AUROC and TPR at a chosen FPR against
the truth. Repairs return a repaired *copy* of the model; the caller's model is left exactly as found.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
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
from ..validation import validated


@dataclass
class PoisonScores:
    """Per-sample suspicion ``scores`` (higher = more suspicious), the decision ``flagged`` at ``threshold``,
    what the method computed on the way (``details``), and ``notes``: plain sentences saying where the method's
    assumptions do not hold for this model and data (empty when nothing was noticed)."""

    scores: torch.Tensor
    flagged: torch.Tensor
    threshold: float
    method: str
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

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


# ------------------------------------------------------------------------------------ activation clustering
ANALYSES = ("relative-size", "silhouette", "exclusionary")


@dataclass
class _LabelClusters:
    """One label's activations after reduction (``z``), their k-means clusters and the class silhouette."""

    label: int
    rows: np.ndarray
    z: np.ndarray
    assignment: np.ndarray
    centres: np.ndarray
    sizes: np.ndarray
    silhouette: float


def _cluster_label(label: int, rows: np.ndarray, a: np.ndarray, *, n_components: int, reduce: str,
                   n_clusters: int, seed: int) -> _LabelClusters:
    """Chen et al., Sec. 3: reduce one label's activations to ``n_components`` dimensions (FastICA in the paper,
    or PCA), split them with k-means, and measure how well the split fits with the mean silhouette score."""
    import warnings

    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA, FastICA
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import silhouette_score

    a = a[:, a.std(axis=0) > 1e-9]  # dead ReLU units carry nothing and break ICA's whitening
    if a.shape[1] == 0:
        a = np.zeros((rows.size, 1))
    k = max(1, min(n_components, a.shape[1], rows.size - 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        red = PCA(k, random_state=seed) if reduce == "pca" else FastICA(k, random_state=seed, max_iter=1000)
        z = red.fit_transform(a)
        km = KMeans(n_clusters, n_init=10, random_state=seed).fit(z)
    assignment = km.labels_
    sizes = np.bincount(assignment, minlength=n_clusters) / rows.size
    sil = (float(silhouette_score(z, assignment, sample_size=min(rows.size, 2000), random_state=seed))
           if np.count_nonzero(sizes) > 1 else float("nan"))
    return _LabelClusters(label, rows, z, assignment, km.cluster_centers_, sizes, sil)


def _relative_size_analysis(lc: _LabelClusters, reference: int, size_threshold: float) -> np.ndarray:
    """Chen et al.'s relative-size comparison: a cluster holding at most ``size_threshold`` of its label is
    poisonous (the poisons are assumed to be a minority of the label)."""
    return (lc.sizes <= size_threshold) & (np.arange(lc.sizes.size) != reference)


def _silhouette_analysis(lc: _LabelClusters, reference: int, silhouette_threshold: float) -> np.ndarray:
    """Chen et al.'s silhouette analysis: a label whose k-means split fits well (mean silhouette at least
    ``silhouette_threshold``) holds two populations; its clusters other than the legitimate one are poisonous."""
    poisoned = not math.isnan(lc.silhouette) and lc.silhouette >= silhouette_threshold
    return np.full(lc.sizes.size, poisoned) & (np.arange(lc.sizes.size) != reference)


def exclusionary_reclassification(train_fn: TrainFn, data: Dataset, excluded: list[tuple[int, np.ndarray]], *,
                                  threshold: float = 1.0, seed: int = 0) -> list[dict[str, Any]]:
    """Exclusionary reclassification (Chen et al., Sec. 3.3): train a new model by ``train_fn(dataset, seed)``
    without the ``excluded`` clusters (``(label, row indices)`` pairs), then classify each excluded cluster with it.

    Let ``l`` be how many of a cluster's samples the new model gives their label and ``p`` how many it gives the
    most frequent other label ``C``: the cluster is legitimate when ``l / p > threshold`` (the paper's T), and
    otherwise poisonous with suspected source class ``C``. Also reported: ``claim``, the mean probability the new
    model gives the best label other than the cluster's own (how strongly the other labels claim the cluster).
    """
    keep = torch.ones(len(data), dtype=torch.bool)
    for _, rows in excluded:
        keep[torch.from_numpy(rows)] = False
    if not bool(keep.any()):
        raise InputError("exclusionary reclassification would train on no data; every sample is in a tested cluster")
    model = train_fn(Dataset(data.x[keep], data.y[keep], data.name, data.num_classes, data.bounds), seed)
    out = []
    with attack_mode(model), torch.no_grad():
        for label, rows in excluded:
            prob = torch.cat([F.softmax(model(data.x[torch.from_numpy(rows[i:i + 512])]).double(), dim=1)
                              for i in range(0, rows.size, 512)])
            counts = torch.bincount(prob.argmax(1), minlength=data.num_classes)
            l_count = int(counts[label])
            counts[label] = -1
            source = int(counts.argmax())
            p_count = int(counts[source])
            others = prob.clone()
            others[:, label] = 0
            legit = p_count == 0 or l_count / p_count > threshold
            out.append({"label": label, "l": l_count, "p": p_count, "source": source, "legitimate": legit,
                        "claim": float(others.max(1).values.mean())})
    return out


def _radius(lc: _LabelClusters, j: int) -> float:
    """RMS distance of cluster ``j``'s members to its centre."""
    inside = lc.assignment == j
    return math.sqrt(float(np.mean(np.sum((lc.z[inside] - lc.centres[j]) ** 2, axis=1)))) if inside.any() else 0.0


def _reference_distance(lc: _LabelClusters, reference: int) -> np.ndarray:
    """Each sample's distance to the legitimate cluster's centre, in units of that cluster's RMS radius: the
    continuous score (poisons sit far from their label's legitimate data; samples are ranked within clusters)."""
    return np.linalg.norm(lc.z - lc.centres[reference], axis=1) / max(_radius(lc, reference), 1e-12)


def _exclusionary_decision(groups: list[_LabelClusters], train_fn: TrainFn, data: Dataset, threshold: float,
                           seed: int, notes: list[str]) -> tuple[dict[int, int], dict[int, np.ndarray], list]:
    """Run the exclusionary test on every cluster except each label's largest; where a label fails, test its
    largest cluster too. Returns the legitimate (reference) cluster and the poisonous clusters of each label."""
    def clusters(lc: _LabelClusters, which) -> list[tuple[int, np.ndarray]]:
        return [(lc.label, lc.rows[lc.assignment == j]) for j in which if lc.sizes[j] > 0]

    reference = {lc.label: int(lc.sizes.argmax()) for lc in groups}
    poisonous = {lc.label: np.zeros(lc.sizes.size, dtype=bool) for lc in groups}
    tested = [(lc, j) for lc in groups for j in range(lc.sizes.size) if j != reference[lc.label] and lc.sizes[j] > 0]
    first = exclusionary_reclassification(train_fn, data, [c for lc, j in tested for c in clusters(lc, [j])],
                                          threshold=threshold, seed=seed)
    verdicts = {(lc.label, j): v for (lc, j), v in zip(tested, first)}
    failed = [lc for lc in groups if any(not verdicts[(lc.label, j)]["legitimate"]
                                        for j in range(lc.sizes.size) if (lc.label, j) in verdicts)]
    if failed:  # is the largest cluster legitimate without the rest of its label? (not when poisons are the majority)
        second = exclusionary_reclassification(
            train_fn, data, [c for lc in failed for c in clusters(lc, [reference[lc.label]])],
            threshold=threshold, seed=seed)
        for lc, v in zip(failed, second):
            verdicts[(lc.label, reference[lc.label])] = v
    for lc in groups:
        vs = {j: verdicts[(lc.label, j)] for j in range(lc.sizes.size) if (lc.label, j) in verdicts}
        bad = [j for j, v in vs.items() if not v["legitimate"]]
        passed = [j for j, v in vs.items() if v["legitimate"]]
        if bad and passed:
            reference[lc.label] = max(passed, key=lambda j: lc.sizes[j])
        elif bad:
            radius = [_radius(lc, j) for j in range(lc.sizes.size)]
            reference[lc.label] = min(bad, key=lambda j: radius[j])
            notes.append(
                f"label {lc.label}: no cluster is given its label by a model trained without it (each is a "
                f"population of its own, so the rest of the label cannot vouch for it, as when poisons are as many "
                f"as the legitimate samples); the legitimate cluster was taken to be the tightest (RMS radii "
                f"{', '.join(f'{r:.2f}' for r in radius)}; poisons drawn from several labels spread wider)")
        poisonous[lc.label] = np.array([j in bad and j != reference[lc.label] for j in range(lc.sizes.size)])
    report = [{"label": lab, "cluster": j, **{k: v for k, v in verdict.items() if k != "label"}}
              for (lab, j), verdict in sorted(verdicts.items())]
    return reference, poisonous, report


@validated
def activation_clustering(
    model: nn.Module, data: Dataset, *, n_components: int = 10, reduce: str = "pca", n_clusters: int = 2,
    analysis: str = "relative-size", size_threshold: float = 0.35, silhouette_threshold: float = 0.35,
    train_fn: TrainFn | None = None, exclusion_threshold: float = 1.0, layer: str | nn.Module | None = None,
    seed: int = 0,
) -> PoisonScores:
    """Activation clustering: per label, reduce the activations of a late layer to ``n_components`` dimensions,
    split them with k-means into ``n_clusters`` clusters, and decide which clusters are poisonous with one of
    Chen et al.'s three analyses.

    * ``"relative-size"``: a cluster holding at most ``size_threshold`` of its label is poisonous.
    * ``"silhouette"``: the clusters of a label whose split fits well (mean silhouette at least
      ``silhouette_threshold``), other than its largest, are poisonous — whatever their size.
    * ``"exclusionary"`` (needs ``train_fn``): exclusionary reclassification (see
      :func:`exclusionary_reclassification`). Every cluster but each label's largest is tested with one
      retraining; where a label fails, its largest cluster is tested with a second one. When no cluster of a
      label passes (the poisons are at least as many as the label's legitimate samples, where the paper's test
      and the size rule both break), the legitimate cluster is the tightest one (poisons drawn from several
      labels spread wider), and ``notes`` says so.

    Score of a sample: its distance to the centre of its label's legitimate cluster (the largest one, or the one
    the exclusionary test keeps), in units of that cluster's RMS radius — continuous, comparable across labels,
    and ranking samples within a cluster by distance.

    Parameters
    ----------
    model : the classifier trained on the (possibly poisoned) data; left as found.
    data : the training set to inspect (e.g. ``PoisonedData.dataset()``).
    n_components : dimensions kept by the reduction (10 in the paper).
    reduce : "pca" (default: on digits CNNs PCA gives AUROC 1.00 where FastICA gives 0.95–0.99;
        benchmarks/BENCHMARKS.md) or "ica" (FastICA, the paper's choice).
    n_clusters : k of k-means (2 in the paper).
    analysis : "relative-size", "silhouette" or "exclusionary".
    size_threshold : the largest relative cluster size the relative-size analysis flags (0.35 in the paper).
    silhouette_threshold : the mean silhouette above which the silhouette analysis calls a label poisoned.
    train_fn : ``train_fn(dataset, seed) -> model``, the victim's training recipe (exclusionary analysis only).
    exclusion_threshold : T of the exclusionary test (legitimate when ``l / p > T``).
    layer : the module whose input is the representation (default: the last ``nn.Linear``'s input, the paper's
        "last hidden layer"). On :class:`adverse.zoo.SmallCNN` the convolutional features (``layer="head.1"``,
        :func:`adverse.evaluation.poisoning_suite.representation_layer`) separate BadNets poisons far better.
    seed : for the reduction, k-means and the retrainings.

    Returns
    -------
    PoisonScores; ``details`` has per-label cluster sizes, silhouette scores and, for the exclusionary
    analysis, each tested cluster's ``l``, ``p``, suspected source class and claim; ``notes`` says where the
    chosen analysis's assumption does not hold.

    References
    ----------
    Chen, Carvalho, Baracaldo, Ludwig, Edwards, Lee, Molloy & Srivastava, "Detecting Backdoor Attacks on Deep
    Neural Networks by Activation Clustering", AAAI SafeAI workshop 2019 (arXiv:1811.03728, 2018).
    """
    if reduce not in ("pca", "ica"):
        raise InputError(f"reduce must be 'pca' or 'ica', got {reduce!r}")
    if analysis not in ANALYSES:
        raise InputError(f"analysis must be one of {ANALYSES}, got {analysis!r}")
    if analysis == "exclusionary" and not callable(train_fn):
        raise InputError("analysis='exclusionary' retrains the model: pass train_fn(dataset, seed) -> model "
                         "(e.g. adverse.poisoning.trainer(SmallCNN, epochs=15))")
    size_threshold = check_rate(size_threshold, "size_threshold")
    if n_clusters < 2 or n_components < 1:
        raise InputError(f"need n_clusters ≥ 2 and n_components ≥ 1, got {n_clusters} and {n_components}")
    acts = _class_features(model, data, layer).cpu().numpy()
    y = data.y.cpu().numpy()
    groups = [_cluster_label(int(c), rows, acts[rows], n_components=n_components, reduce=reduce,
                             n_clusters=n_clusters, seed=seed)
              for c in np.unique(y) if (rows := np.flatnonzero(y == c)).size > n_clusters]
    notes: list[str] = []
    reference = {lc.label: int(lc.sizes.argmax()) for lc in groups}
    report: list = []
    if analysis == "exclusionary":
        reference, poisonous, report = _exclusionary_decision(groups, train_fn, data, exclusion_threshold, seed,
                                                              notes)
    elif analysis == "relative-size":
        poisonous = {lc.label: _relative_size_analysis(lc, reference[lc.label], size_threshold) for lc in groups}
    else:
        poisonous = {lc.label: _silhouette_analysis(lc, reference[lc.label], silhouette_threshold) for lc in groups}
    scores = np.zeros(len(y))
    flagged = np.zeros(len(y), dtype=bool)
    for lc in groups:
        scores[lc.rows] = _reference_distance(lc, reference[lc.label])
        flagged[lc.rows] = poisonous[lc.label][lc.assignment]
        second = np.sort(lc.sizes)[-2]
        if analysis != "exclusionary" and lc.silhouette >= silhouette_threshold and second > size_threshold:
            notes.append(
                f"label {lc.label} splits clearly (silhouette {lc.silhouette:.2f}) into clusters of relative sizes "
                f"{np.round(lc.sizes, 2).tolist()}: if one holds poisons, they are too large a share of the label "
                f"for the size rule to tell which (it assumes poisons ≤ {size_threshold:g} of their label); use "
                "analysis='exclusionary' with train_fn")
    return PoisonScores(torch.from_numpy(scores).float(), torch.from_numpy(flagged), float("nan"),
                        "activation_clustering",
                        {"cluster_sizes": {lc.label: lc.sizes.tolist() for lc in groups},
                         "silhouette": {lc.label: lc.silhouette for lc in groups},
                         "legitimate_cluster": reference, "exclusionary": report, "analysis": analysis,
                         "reduce": reduce, "n_components": n_components, "n_clusters": n_clusters}, notes)


# ------------------------------------------------------------------------------------ spectral signatures
SCORINGS = ("auto", "paper", "split")
SPLIT_D = 6.0  # Ashman's D from which a label's split along v is two populations (clean digits labels: 2.7–5.7)


def spectral_signature_scores(r: torch.Tensor, *, centre: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Tran, Li & Madry's outlier score for one label's representations ``r`` (n × d): with ``R̂`` their mean and
    ``v`` the top right singular vector of ``r − R̂``, the score is ``τ_i = ((R_i − R̂) · v)²``.

    ``centre=False`` projects the uncentred ``R_i`` instead, as the authors' released code and ART do.
    Returns ``(τ, projection)``."""
    rc = r - r.mean(0, keepdim=True)
    v = torch.linalg.svd(rc, full_matrices=False).Vh[0]
    proj = (rc if centre else r) @ v
    return proj**2, proj


def _robust_spread(x: torch.Tensor) -> torch.Tensor:
    """1.4826 × the median absolute deviation (the standard deviation for Gaussian data), or the standard
    deviation where half the values are equal."""
    mad = 1.4826 * (x - x.median()).abs().median()
    return mad if float(mad) > 1e-12 else x.std(unbiased=False).clamp_min(1e-12)


def _split_along(proj: torch.Tensor) -> torch.Tensor:
    """The optimal 1-D 2-means split of ``proj`` (least within-side sum of squares; exact, by prefix sums):
    True for the samples on the upper side."""
    n = proj.numel()
    upper = torch.zeros(n, dtype=torch.bool)
    if n < 2:
        return upper
    s, order = proj.double().sort()
    c, c2 = s.cumsum(0), (s * s).cumsum(0)
    i = torch.arange(1, n, dtype=torch.float64)  # i samples below the cut, n − i above
    below = c2[:-1] - c[:-1] ** 2 / i
    above = (c2[-1] - c2[:-1]) - (c[-1] - c[:-1]) ** 2 / (n - i)
    upper[order[int((below + above).argmin()) + 1:]] = True
    return upper


def _rms_radius(r: torch.Tensor) -> float:
    """RMS distance of the rows of ``r`` to their mean."""
    return float((r - r.mean(0)).pow(2).sum(1).mean().sqrt()) if r.shape[0] > 1 else 0.0


def _ashman_d(a: torch.Tensor, b: torch.Tensor) -> float:
    """Ashman's D of two samples: √2 |mean_a − mean_b| / √(var_a + var_b) (> 2 for a clean bimodal split)."""
    if a.numel() < 2 or b.numel() < 2:
        return 0.0
    return math.sqrt(2) * float((a.mean() - b.mean()).abs() / (a.var() + b.var()).sqrt().clamp_min(1e-12))


@validated
def spectral_signatures(
    model: nn.Module, data: Dataset, *, expected_fraction: float = 0.1, multiplier: float = 1.5,
    layer: str | nn.Module | None = None, centre: bool = True, scoring: str = "auto",
) -> PoisonScores:
    """Spectral signatures (Tran et al., Algorithm 1): per label, the top singular vector ``v`` of the centred
    representations ``R_i − R̂``; each sample is scored by its position along ``v``, and the ``multiplier · ε ·
    n_label`` highest scores are removed from every label (1.5 ε in the paper).

    The score along ``v`` (``scoring``):

    * ``"paper"``: the paper's ``τ_i = ((R_i − R̂) · v)²`` (:func:`spectral_signature_scores`), divided by the
      square of the label's robust spread along ``v`` (1.4826 × MAD) so that labels are comparable. It assumes
      the poisons are a minority of their label, outlying on one side; ``τ`` is symmetric, so when poisons are
      half of a label it cannot tell which side is poisoned, and above half it ranks the clean side first.
    * ``"split"``: split the label in two along ``v`` (exact 1-D 2-means). Where the split is two populations
      (Ashman's D ≥ 6; the clean labels of the digits CNNs give 2.7–5.7, a BadNets-poisoned one ≥ 8.8), the
      legitimate side is the larger one when ``ε < 0.5`` (the paper's assumption that poisons are a minority) and
      otherwise the tighter one in the full representation (RMS radius about its own mean: a label's own samples
      are one population, while an all-to-one backdoor's poisons come from several source labels and spread
      wider — the tie-break activation clustering's exclusionary analysis uses too), and the score is the signed
      distance along ``v`` from the legitimate side's median towards the other side, in units of the legitimate
      side's robust spread. Elsewhere the score is the paper's two-sided ``|(R_i − R̂) · v|`` in units of the
      label's robust spread (so a clean label keeps the bulk of its samples rather than one of its tails: clean
      accuracy after removal 0.84–0.88 instead of 0.62–0.70 at 10 % BadNets; benchmarks/BENCHMARKS.md).
    * ``"auto"`` (default): ``"paper"`` when ``ε < 0.5``, ``"split"`` when ``ε ≥ 0.5`` (poisons may be half
      of a label or more, outside the paper's setting, where ``τ`` cannot rank them; ``notes`` says so).

    Parameters
    ----------
    model : the classifier trained on the (possibly poisoned) data; left as found.
    data : the training set to inspect.
    expected_fraction : ε, an upper bound on the poisoned share of any one label.
    multiplier : removes ``multiplier · ε`` of every label (1.5 in the paper).
    layer : the representation (default: the last ``nn.Linear``'s input). The paper reads a late layer of its
        ResNet; on :class:`adverse.zoo.SmallCNN` the convolutional features (``"head.1"``) are where BadNets poisons
        separate (AUROC 1.00 at 1–5 % vs 0.54–0.89 on the last hidden layer; benchmarks/BENCHMARKS.md).
    centre : ``False`` ranks by the uncentred ``|R_i · v|`` instead, as the authors' released code and ART do (a
        signed score whose sign depends on the model: AUROC 0.19 on one digits CNN where the centred score gives
        1.00; benchmarks/BENCHMARKS.md); ``scoring`` is then ignored.
    scoring : "auto", "paper" or "split" (above).

    Returns
    -------
    PoisonScores (the decision removes the same share of every label, so its FPR is high by design); ``details``
    has, per label, the sizes of the two sides of the split along ``v``, their RMS radii, Ashman's D of the split
    and the side taken as legitimate; ``notes`` says when ε is beyond the paper's setting, and when a label splits
    into two populations (Ashman's D ≥ 6) each larger than the share removed (if one is poisoned, ε is too low).

    References
    ----------
    Tran, Li & Madry, "Spectral Signatures in Backdoor Attacks", NeurIPS 2018.
    """
    eps = check_rate(expected_fraction, "expected_fraction")
    if multiplier <= 0:
        raise InputError(f"multiplier must be > 0, got {multiplier!r}")
    if multiplier * eps >= 1:
        raise InputError(f"multiplier · expected_fraction = {multiplier * eps:g} would remove every sample of every "
                         "label; the method assumes poisons are a small share of their label")
    if scoring not in SCORINGS:
        raise InputError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
    rule = "uncentred" if not centre else ("split" if scoring == "split" or (scoring == "auto" and eps >= 0.5)
                                           else "paper")
    reps = _class_features(model, data, layer)
    y = data.y
    scores = torch.zeros(len(y), dtype=torch.float64)
    flagged = torch.zeros(len(y), dtype=torch.bool)
    splits: dict[int, dict[str, Any]] = {}
    notes: list[str] = []
    for c in y.unique():
        rows = (y == c).nonzero().flatten()
        r = reps[rows]
        tau, proj = spectral_signature_scores(r, centre=centre)
        upper = _split_along(proj if centre else spectral_signature_scores(r)[1])
        sides = [~upper, upper]
        sizes = [int(s.sum()) for s in sides]
        radii = [_rms_radius(r[s]) for s in sides]
        d_split = _ashman_d(proj[~upper], proj[upper])
        if rule != "split":
            legit = None
            score = tau / _robust_spread(proj) ** 2
        elif min(sizes) == 0 or d_split < SPLIT_D:  # one population along v: the paper's two-sided order
            legit = None
            score = proj.abs() / _robust_spread(proj)
        else:
            legit = int(sizes[1] > sizes[0]) if eps < 0.5 else int(radii[1] < radii[0])
            towards = 1.0 if legit == 0 else -1.0  # from the legitimate side towards the other one
            inside = proj[sides[legit]]
            score = towards * (proj - inside.median()) / _robust_spread(inside)
        scores[rows] = score
        n_remove = min(math.ceil(multiplier * eps * rows.numel() - 1e-9), rows.numel())
        flagged[rows[score.argsort(descending=True)[:n_remove]]] = True
        share = min(sizes) / max(rows.numel(), 1)
        splits[int(c)] = {"sizes": sizes, "rms_radius": radii, "ashman_d": d_split, "legitimate_side": legit}
        if d_split >= SPLIT_D and share > multiplier * eps:
            notes.append(f"label {int(c)} splits along its top singular direction into two populations (Ashman's D "
                         f"{d_split:.1f}) of {sizes[0]} and {sizes[1]} samples: if one is poisoned, poisons are "
                         f"{share:.0%} of the label or more, more than the {multiplier:g} ε = {multiplier * eps:.2g} the rule "
                         f"removes; pass expected_fraction ≥ {share:.2g}")
    if rule == "split" and eps >= 0.5:
        notes.append(f"ε = {eps:g}: poisons may be half of a label or more, beyond the paper's setting (a minority of "
                     "their label, which the symmetric squared projection ranks first); the score is one-sided instead, "
                     "away from the tighter side of each label's split along the top singular direction, taken as "
                     "the legitimate samples (the poisons of an all-to-one backdoor come from several source labels)")
    if multiplier * eps >= 0.5:
        notes.append(f"the removal takes {multiplier * eps:.0%} of every label, by design of the rule (1.5 ε); "
                     "clean labels lose as much as the poisoned one")
    return PoisonScores(scores.float(), flagged, float("nan"), "spectral_signatures",
                        {"expected_fraction": eps, "multiplier": multiplier, "centre": centre, "scoring": rule,
                         "splits": splits}, notes)


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


@validated
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


@validated
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
    activation, clean accuracy before pruning, after pruning and after fine-tuning, the ``history`` of the repair
    (one entry per pruning step and one after fine-tuning: channels pruned, clean accuracy, and whatever the
    ``monitor`` measured, e.g. ASR), and ``notes`` saying where the method's assumptions do not hold."""

    model: nn.Module
    pruned: torch.Tensor
    activation: torch.Tensor
    accuracy: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _last_conv(model: nn.Module) -> nn.Module:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise InputError("the model has no nn.Conv2d; pass layer= naming the layer whose channels to prune")
    return convs[-1]


def prune_by_activation(model: nn.Module, conv: nn.Conv2d, x_clean: torch.Tensor, y_clean: torch.Tensor, *,
                        max_accuracy_drop: float, max_fraction: float,
                        monitor: Callable[[nn.Module], dict] | None = None,
                        validation: tuple[torch.Tensor, torch.Tensor] | None = None,
                        ) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
    """The pruning defense of Liu et al. (Sec. 4.1): rank the channels of ``conv`` by their mean activation on
    clean inputs and remove them in increasing order for as long as clean accuracy stays within
    ``max_accuracy_drop`` of the unpruned model's (at most ``max_fraction`` of the channels). Clean accuracy is
    measured on ``validation = (x_val, y_val)`` when given (the paper's held-out clean validation set), otherwise
    on ``x_clean, y_clean``. Channels are removed by a gate on the layer's output during the search; the model is
    returned with the gate removed.

    Returns ``(pruned channels in order, mean activation per channel, history)``; history has one entry per
    number of pruned channels tried (``pruned``, ``clean_accuracy`` and the ``monitor``'s measurements)."""
    acts: list[torch.Tensor] = []
    handle = conv.register_forward_hook(lambda _m, _i, out: acts.append(out.clamp_min(0).mean((0, 2, 3))))
    with torch.no_grad():
        model(x_clean)
    handle.remove()
    activation = acts[0]
    order = activation.argsort()
    x_val, y_val = (x_clean, y_clean) if validation is None else validation
    keep = torch.ones(conv.out_channels)
    gate = conv.register_forward_hook(lambda _m, _i, out: out * keep.view(1, -1, 1, 1))

    def measure(n: int) -> dict[str, Any]:
        return {"stage": "pruned", "pruned": n, "clean_accuracy": clean_accuracy(model, x_val, y_val),
                **(monitor(model) if monitor is not None else {})}

    history = [measure(0)]
    n_pruned = 0
    for j in range(int(max_fraction * conv.out_channels)):
        keep[order[j]] = 0
        step = measure(j + 1)
        history.append(step)
        if step["clean_accuracy"] < history[0]["clean_accuracy"] - max_accuracy_drop:
            break
        n_pruned = j + 1
    gate.remove()
    return order[:n_pruned], activation, history


@validated
def fine_pruning(
    model: nn.Module, x_clean: torch.Tensor, y_clean: torch.Tensor, *, layer: str | nn.Module | None = None,
    max_accuracy_drop: float = 0.04, max_fraction: float = 0.9, fine_tune_epochs: int = 5, lr: float = 1e-3,
    monitor: Callable[[nn.Module], dict] | None = None, bounds: tuple[float, float] = (0.0, 1.0), seed: int = 0,
    x_val: torch.Tensor | None = None, y_val: torch.Tensor | None = None,
) -> FinePruningResult:
    """Fine-Pruning: prune the channels of the last convolutional layer that clean inputs activate least
    (backdoor neurons hide there), in increasing order of mean activation, as long as clean accuracy stays within
    ``max_accuracy_drop`` of the original (:func:`prune_by_activation`); then fine-tune on the clean data.
    Pruning uses :func:`torch.nn.utils.prune.custom_from_mask` so fine-tuning cannot regrow the pruned channels;
    the mask is made permanent at the end.

    Parameters
    ----------
    model : the suspect classifier; left as found (the repair is a deep copy).
    x_clean, y_clean : clean data the defender holds (used for ranking and fine-tuning, and for the stopping
        rule when no validation set is given).
    layer : the ``nn.Conv2d`` to prune (default: the last one, the paper's choice).
    max_accuracy_drop : the stopping rule (4 % in the paper's experiments).
    max_fraction : never prune more than this share of the channels.
    fine_tune_epochs, lr : fine-tuning with :func:`adverse.zoo.train_classifier` (0 epochs: prune only).
    monitor : ``monitor(model) -> dict`` measured after every pruning step and after fine-tuning, e.g.
        ``lambda m: {"asr": attack_success_rate(m, poisoned, x, y)}``; kept in ``history``.
    seed : fine-tuning randomness.
    x_val, y_val : a held-out clean validation set for the stopping rule and the reported accuracies (the paper's
        setting); default: ``x_clean, y_clean``.

    Returns
    -------
    FinePruningResult (``accuracy`` and ``history`` measured on the validation set); ``notes`` says when the
    layer is too small to prune (16 channels or fewer), when the stopping rule ends on the first channel or at
    ``max_fraction``, and (with a monitor that reports ``asr``) when pruning the idle channels leaves the backdoor
    in place — the paper's premise that backdoor neurons are idle on clean inputs not holding.

    References
    ----------
    Liu, Dolan-Gavitt & Garg, "Fine-Pruning: Defending Against Backdooring Attacks on Deep Neural Networks",
    RAID 2018.
    """
    from torch.nn.utils import prune

    from ..zoo import train_classifier

    x_clean, y_clean = check_inputs(x_clean, y_clean, bounds)
    if (x_val is None) != (y_val is None):
        raise InputError("pass both x_val and y_val, or neither")
    x_val, y_val = (x_clean, y_clean) if x_val is None else check_inputs(x_val, y_val, bounds)
    max_accuracy_drop = check_rate(max_accuracy_drop, "max_accuracy_drop")
    max_fraction = check_rate(max_fraction, "max_fraction")
    repaired = copy.deepcopy(model).eval()
    for p in repaired.parameters():
        p.requires_grad_(True)
        p.grad = None
    conv = _last_conv(repaired) if layer is None else resolve_layer(repaired, layer)
    if not isinstance(conv, nn.Conv2d):
        raise InputError(f"layer must be an nn.Conv2d, got {type(conv).__name__}")
    pruned, activation, history = prune_by_activation(repaired, conv, x_clean, y_clean,
                                                      max_accuracy_drop=max_accuracy_drop,
                                                      max_fraction=max_fraction, monitor=monitor,
                                                      validation=(x_val, y_val))
    mask = torch.ones_like(conv.weight)
    mask[pruned] = 0
    prune.custom_from_mask(conv, "weight", mask)
    if conv.bias is not None:
        bmask = torch.ones_like(conv.bias)
        bmask[pruned] = 0
        prune.custom_from_mask(conv, "bias", bmask)
    acc_pruned = clean_accuracy(repaired, x_val, y_val)
    if fine_tune_epochs > 0:
        n_cls = int(repaired(x_clean[:1]).shape[1])
        train_classifier(repaired, Dataset(x_clean, y_clean, "fine-pruning", n_cls, bounds),
                         epochs=fine_tune_epochs, lr=lr, seed=seed)
    prune.remove(conv, "weight")
    if conv.bias is not None:
        prune.remove(conv, "bias")
    repaired.eval()
    acc_final = clean_accuracy(repaired, x_val, y_val)
    history.append({"stage": "fine-tuned", "pruned": int(pruned.numel()), "clean_accuracy": acc_final,
                    **(monitor(repaired) if monitor is not None else {})})
    return FinePruningResult(repaired, pruned, activation,
                             {"original": history[0]["clean_accuracy"], "pruned": acc_pruned, "fine_tuned": acc_final},
                             history, _fine_pruning_notes(conv.out_channels, pruned, activation, history, max_fraction))


def _fine_pruning_notes(channels: int, pruned: torch.Tensor, activation: torch.Tensor, history: list[dict],
                        max_fraction: float) -> list[str]:
    """Where Fine-Pruning's assumptions do not hold, in words."""
    notes = []
    if channels <= 16:
        notes.append(f"the pruned layer has only {channels} channels: too few for backdoor neurons to be separate "
                     "from the ones clean inputs need (the paper's last convolutional layers are several times wider)")
    if pruned.numel() == 0:
        notes.append("removing even the least active channel costs more clean accuracy than allowed: nothing was "
                     "pruned, so the repair is fine-tuning alone")
    elif pruned.numel() >= int(max_fraction * channels):
        notes.append(f"pruning stopped at max_fraction ({max_fraction:g} of the channels), not at the accuracy drop")
    idle = int((activation[pruned] <= 1e-6).sum()) if pruned.numel() else 0
    if "asr" in history[0] and pruned.numel():
        last = next(h for h in reversed(history) if h["stage"] == "pruned" and h["pruned"] == pruned.numel())
        if last["asr"] >= 0.5 * history[0]["asr"]:
            notes.append(f"pruning {pruned.numel()} channels ({idle} of them never active on clean inputs) left the "
                         f"ASR at {last['asr']:.2f} (from {history[0]['asr']:.2f}): on this model the backdoor does "
                         "not live in the channels clean inputs leave idle, the paper's premise")
        if history[-1]["asr"] >= 0.5:
            notes.append(f"after fine-tuning the ASR is still {history[-1]['asr']:.2f}")
    return notes


__all__ = [
    "ANALYSES",
    "SCORINGS",
    "FinePruningResult",
    "NeuralCleanseResult",
    "PoisonScores",
    "activation_clustering",
    "anomaly_index",
    "exclusionary_reclassification",
    "fine_pruning",
    "neural_cleanse",
    "prune_by_activation",
    "spectral_signature_scores",
    "spectral_signatures",
    "strip",
]
