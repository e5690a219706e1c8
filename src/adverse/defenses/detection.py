"""Detectors of adversarial inputs: feature squeezing, Mahalanobis confidence and local intrinsic dimensionality.

Every detector follows scikit-learn's habits: configure in ``__init__``, learn from clean data in :meth:`fit`
(which holds out part of it to calibrate the threshold), give per-sample scores from :meth:`Detector.score`
(higher = more suspicious; differentiable in the input, so adaptive attacks can use them), and flag inputs with
:meth:`Detector.predict` at the threshold chosen for the stated false-positive rate. ``realised_fpr_`` is the
rate actually obtained on the calibration data; :func:`evaluate_detector` reports it again on test data.

Evaluation follows Carlini & Wagner (2017) and Athalye et al. (2018): :func:`attack_detector` runs the oblivious
attack and adaptive attacks that also push the detector score below its threshold, and :func:`evaluate_detector`
reports the detection AUROC for each attack and the undetected-success rate (misclassified *and* not flagged)
for each attack and for their per-sample union.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, ModelError
from ..evasion._core import check_inputs, make_generator, margin_loss
from ..models import Counted, attack_mode
from ..validation import validated
from ._at import check_eps, maximize

Tensor = torch.Tensor


# ----------------------------------------------------------------------------------- features
def _layer_modules(model: nn.Module, layers: Sequence[str] | None) -> list[tuple[str, nn.Module | None]]:
    """The layers to read: names of ``model.named_modules()`` or "output"; default every ReLU and the output."""
    named = dict(model.named_modules())
    if layers is None:
        chosen = [n for n, m in named.items() if isinstance(m, nn.ReLU)] + ["output"]
    else:
        chosen = list(layers)
    if not chosen:
        raise InputError("layers must name at least one layer")
    out = []
    for n in chosen:
        if n == "output":
            out.append((n, None))
        elif n in named and n != "":
            out.append((n, named[n]))
        else:
            raise InputError(f"unknown layer {n!r}; use names from model.named_modules() or 'output'")
    return out


def _features(model: nn.Module, layers: list[tuple[str, nn.Module | None]], x: Tensor) -> tuple[list[Tensor], Tensor]:
    """Run the model once and return the chosen layers' outputs and the logits (graph kept if grad is on)."""
    got: dict[int, Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, i=i: got.__setitem__(i, out))
             for i, (_, m) in enumerate(layers) if m is not None]
    try:
        logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    feats = []
    for i, (name, m) in enumerate(layers):
        if m is None:
            feats.append(logits)
        elif i in got:
            feats.append(got[i])
        else:
            raise ModelError(f"layer {name!r} did not run in the forward pass; pick another layer")
    return feats, logits


# ----------------------------------------------------------------------------------- the common part
class Detector:
    """Shared machinery: the train/calibration split, the threshold at a chosen false-positive rate, the
    optional logistic-regression combination of per-layer scores, and ``predict``.

    Subclasses implement ``_fit(x, y)`` and ``_layer_scores(x) -> (n, L)`` (one column per layer or squeezer).
    """

    def __init__(self, model: nn.Module, *, fpr: float = 0.05, calibration: float = 0.5, seed: int = 0) -> None:
        if not isinstance(model, nn.Module):
            raise ModelError(f"detectors need a torch.nn.Module returning logits, got {type(model).__name__}")
        if not 0 < fpr < 1:
            raise InputError(f"fpr must lie in (0, 1), got {fpr!r}")
        if not 0 < calibration < 1:
            raise InputError(f"calibration (the share of clean data held out for the threshold) must lie in "
                             f"(0, 1), got {calibration!r}")
        self.model = model
        self.fpr = float(fpr)
        self.calibration = float(calibration)
        self.seed = int(seed)
        self.threshold_: float | None = None
        self.realised_fpr_: float | None = None
        self.score_scale_: float = 1.0
        self._mean: Tensor | None = None
        self._std: Tensor | None = None
        self._lr: tuple[Tensor, Tensor] | None = None

    # -- to implement
    def _fit(self, x: Tensor, y: Tensor | None) -> None:
        pass

    def _layer_scores(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    # -- public
    def fit(self, x_clean: Tensor, y: Tensor | None = None, *, x_adv: Tensor | None = None,
            x_calibration: Tensor | None = None) -> Detector:
        """Learn from clean inputs and calibrate the threshold.

        Parameters
        ----------
        x_clean : clean inputs. Unless ``x_calibration`` is given, a seeded random share ``calibration`` of them
            is held out to set the threshold and never used for fitting.
        y : their labels (Mahalanobis's class means); default the model's predictions.
        x_adv : optional adversarial inputs: per-layer scores are then combined by logistic regression trained
            to separate them from the clean fitting inputs (as in Lee et al. and Ma et al.); otherwise by the mean
            of the per-layer scores standardised on the clean fitting inputs (no adversarial data needed).
        x_calibration : clean inputs for the threshold (then all of ``x_clean`` is used for fitting).

        Returns
        -------
        self, with ``threshold_`` and ``realised_fpr_`` set.
        """
        x_fit, y_fit, x_cal = self._split(x_clean, y, x_calibration)
        if y_fit is None:
            with attack_mode(self.model), torch.no_grad():
                y_fit = self.model(x_fit).argmax(dim=1)
        self._fit(x_fit, y_fit)
        with torch.no_grad():
            s = self._layer_scores(x_fit)
        self._mean, self._std = s.mean(dim=0), s.std(dim=0).clamp_min(1e-12)
        self._lr = None
        if x_adv is not None:
            x_adv, _ = check_inputs(x_adv, torch.zeros(x_adv.shape[0], dtype=torch.long), (-math.inf, math.inf))
            self._lr = self._logistic(s, self._layer_scores_nograd(x_adv))
        return self.calibrate(x_cal)

    def calibrate(self, x_clean: Tensor, fpr: float | None = None) -> Detector:
        """Set ``threshold_`` so that at most a share ``fpr`` (default the configured one) of ``x_clean`` scores
        above it; ``realised_fpr_`` is the share that does."""
        if fpr is not None:
            if not 0 < fpr < 1:
                raise InputError(f"fpr must lie in (0, 1), got {fpr!r}")
            self.fpr = float(fpr)
        x_clean, _ = check_inputs(x_clean, torch.zeros(x_clean.shape[0], dtype=torch.long), (-math.inf, math.inf))
        with torch.no_grad():
            s = self.score(x_clean)
        m = s.numel()
        allowed = math.floor(self.fpr * m + 1e-9)
        srt = s.sort().values
        self.threshold_ = float(srt[m - allowed - 1])
        self.realised_fpr_ = int((s > self.threshold_).sum()) / m
        self.score_scale_ = float(s.std().clamp_min(1e-12))
        return self

    def score(self, x: Tensor) -> Tensor:
        """Per-sample detection scores (higher = more likely adversarial), differentiable in ``x``."""
        if self._mean is None:
            raise InputError(f"{type(self).__name__} is not fitted; call fit(x_clean) first")
        s = self._layer_scores(x)
        if self._lr is not None:
            w, b = self._lr
            return s @ w.to(s) + b.to(s)
        return ((s - self._mean.to(s)) / self._std.to(s)).mean(dim=1)

    def predict(self, x: Tensor) -> Tensor:
        """Per-sample bool: True where the input is flagged as adversarial (score above ``threshold_``)."""
        if self.threshold_ is None:
            raise InputError(f"{type(self).__name__} is not fitted; call fit(x_clean) first")
        x, _ = check_inputs(x, torch.zeros(x.shape[0] if torch.is_tensor(x) else 0, dtype=torch.long),
                            (-math.inf, math.inf))
        with torch.no_grad():
            return self.score(x) > self.threshold_

    # -- helpers
    def _split(self, x: Tensor, y: Tensor | None, x_cal: Tensor | None):
        labels = y if y is not None else torch.zeros(x.shape[0] if torch.is_tensor(x) else 0, dtype=torch.long)
        x, labels = check_inputs(x, labels, (-math.inf, math.inf))
        if x_cal is not None:
            check_inputs(x_cal, torch.zeros(x_cal.shape[0], dtype=torch.long), (-math.inf, math.inf))
            return x, (labels if y is not None else None), x_cal
        n_cal = round(self.calibration * x.shape[0])
        if n_cal < 20 or x.shape[0] - n_cal < 20:
            raise InputError(f"need at least 20 clean inputs for fitting and 20 for calibration, got {x.shape[0]} "
                             "in all; pass more clean data or x_calibration")
        perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(self.seed)).to(x.device)
        fit_idx, cal_idx = perm[n_cal:], perm[:n_cal]
        return x[fit_idx], (labels[fit_idx] if y is not None else None), x[cal_idx]

    def _layer_scores_nograd(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self._layer_scores(x)

    def _logistic(self, s_clean: Tensor, s_adv: Tensor) -> tuple[Tensor, Tensor]:
        from sklearn.linear_model import LogisticRegression

        feats = torch.cat([(s_clean - self._mean) / self._std, (s_adv - self._mean) / self._std]).cpu().double()
        labels = torch.cat([torch.zeros(s_clean.shape[0]), torch.ones(s_adv.shape[0])]).numpy()
        lr = LogisticRegression(max_iter=1000).fit(feats.numpy(), labels)
        w = torch.as_tensor(lr.coef_[0], dtype=s_clean.dtype) / self._std.cpu()
        b = torch.as_tensor(lr.intercept_[0], dtype=s_clean.dtype) - (w * self._mean.cpu()).sum()
        return w, b


# ----------------------------------------------------------------------------------- feature squeezing
class FeatureSqueezing(Detector):
    """Feature squeezing: the L1 distance between the model's softmax on ``x`` and on each squeezed ``x``; the
    joint detector takes the maximum over squeezers (Xu et al.'s MNIST configuration by default: 1-bit depth and
    a 2×2 median filter).

    Parameters
    ----------
    model : the classifier (logits).
    squeezers : preprocessing modules (:mod:`adverse.defenses.preprocessing`); default
        ``[BitDepth(1, gradient="bpda"), MedianFilter(2)]`` so the score has a gradient for adaptive attacks.
    fpr, calibration, seed : see :class:`Detector`.

    References
    ----------
    Xu, Evans & Qi, "Feature Squeezing: Detecting Adversarial Examples in Deep Neural Networks", NDSS 2018.
    """

    @validated
    def __init__(self, model: nn.Module, squeezers: Sequence[nn.Module] | None = None, *, fpr: float = 0.05,
                 calibration: float = 0.5, seed: int = 0) -> None:
        super().__init__(model, fpr=fpr, calibration=calibration, seed=seed)
        from .preprocessing import BitDepth, MedianFilter

        self.squeezers = list(squeezers) if squeezers is not None else [BitDepth(1, gradient="bpda"), MedianFilter(2)]
        if not self.squeezers:
            raise InputError("squeezers must hold at least one squeezer")

    def fit(self, x_clean: Tensor, y: Tensor | None = None, *, x_adv: Tensor | None = None,
            x_calibration: Tensor | None = None) -> FeatureSqueezing:
        """Calibrate the threshold on clean inputs (the joint detector learns nothing else; see
        :meth:`Detector.fit`)."""
        if x_adv is not None:
            raise InputError("FeatureSqueezing takes the maximum over its squeezers (Xu et al.) and learns nothing "
                             "from x_adv; drop x_adv")
        return super().fit(x_clean, y, x_calibration=x_calibration)

    def score(self, x: Tensor) -> Tensor:
        """max over squeezers of ‖softmax(f(x)) − softmax(f(squeeze(x)))‖₁ (the joint detector)."""
        return self._layer_scores(x).amax(dim=1)

    def _layer_scores(self, x: Tensor) -> Tensor:
        with attack_mode(self.model):
            p = F.softmax(self.model(x), dim=1)
            return torch.stack([(p - F.softmax(self.model(sq(x)), dim=1)).abs().sum(dim=1)
                                for sq in self.squeezers], dim=1)


# ----------------------------------------------------------------------------------- Mahalanobis
class Mahalanobis(Detector):
    """Mahalanobis confidence score: class-conditional Gaussians with one covariance shared by the classes, per
    layer, on channel-averaged features; the layer score is ``min_c (f − μ_c)ᵀ Σ⁻¹ (f − μ_c)`` at an input
    moved by ``noise`` against the gradient of that distance (Lee et al.'s input pre-processing).

    Parameters
    ----------
    model : the classifier (logits).
    layers : names from ``model.named_modules()`` or "output"; default every ReLU and the output.
    noise : the input pre-processing step (0 disables it; in input units).
    fpr, calibration, seed : see :class:`Detector`.

    References
    ----------
    Lee, Lee, Lee & Shin, "A Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial
    Attacks", NeurIPS 2018 (``pokaxpoka/deep_Mahalanobis_detector``).
    """

    @validated
    def __init__(self, model: nn.Module, layers: Sequence[str] | None = None, *, noise: float = 0.0,
                 fpr: float = 0.05, calibration: float = 0.5, seed: int = 0) -> None:
        super().__init__(model, fpr=fpr, calibration=calibration, seed=seed)
        if not (isinstance(noise, (int, float)) and noise >= 0):
            raise InputError(f"noise must be a number ≥ 0, got {noise!r}")
        self.layers = _layer_modules(model, layers)
        self.noise = float(noise)
        self.means_: list[Tensor] = []
        self.precisions_: list[Tensor] = []

    @staticmethod
    def _pool(f: Tensor) -> Tensor:
        return f.flatten(2).mean(dim=2) if f.dim() > 2 else f

    def _fit(self, x: Tensor, y: Tensor) -> None:
        with attack_mode(self.model), torch.no_grad():
            feats, _ = _features(self.model, self.layers, x)
        classes = torch.unique(y)
        self.means_, self.precisions_ = [], []
        for f in feats:
            f = self._pool(f).double()
            mu = torch.stack([f[y == c].mean(dim=0) for c in classes])
            centred = f - mu[torch.searchsorted(classes, y)]
            cov = centred.T @ centred / f.shape[0]
            self.means_.append(mu)
            self.precisions_.append(torch.linalg.pinv(cov, hermitian=True))

    def _distances(self, x: Tensor) -> Tensor:
        """(n, L): min over classes of the Mahalanobis distance, per layer."""
        feats, _ = _features(self.model, self.layers, x)
        cols = []
        for f, mu, prec in zip(feats, self.means_, self.precisions_):
            d = self._pool(f).to(mu.dtype).unsqueeze(1) - mu.unsqueeze(0)  # (n, C, k)
            cols.append(torch.einsum("nck,kl,ncl->nc", d, prec, d).amin(dim=1))
        return torch.stack(cols, dim=1).to(x.dtype)

    def _layer_scores(self, x: Tensor) -> Tensor:
        if not self.means_:
            raise InputError("Mahalanobis is not fitted; call fit(x_clean) first")
        with attack_mode(self.model):
            if self.noise == 0:
                return self._distances(x)
            with torch.enable_grad():
                xr = x if x.requires_grad else x.detach().requires_grad_(True)
                dist = self._distances(xr)
                cols = []
                for j in range(dist.shape[1]):
                    (g,) = torch.autograd.grad(dist[:, j].sum(), xr, retain_graph=True, create_graph=x.requires_grad)
                    cols.append(self._distances(x - self.noise * g.sign())[:, j])
            out = torch.stack(cols, dim=1)
            return out if x.requires_grad else out.detach()


# ----------------------------------------------------------------------------------- LID
def lid_mle(dist: Tensor, k: int) -> Tensor:
    """Maximum-likelihood LID estimate from distances to reference points, per row:
    ``LID = −((1/k) Σᵢ log(rᵢ / r_k))⁻¹`` over the ``k`` smallest non-zero distances ``r₁ ≤ … ≤ r_k``
    (a zero distance is the point itself and is skipped). Amsaleg et al. 2015; Ma et al. 2018."""
    d = torch.where(dist <= 1e-10, torch.full_like(dist, float("inf")), dist)
    r = (-(-d).topk(k, dim=1).values)  # k smallest, ascending
    r_k = r[:, -1:].clamp_min(1e-12)
    mean_log = torch.log(r.clamp_min(1e-12) / r_k).mean(dim=1)
    return -1.0 / mean_log.clamp(max=-1e-12)


class LID(Detector):
    """Local intrinsic dimensionality of each layer's activations, estimated against a fixed reference set of
    clean inputs (the role of Ma et al.'s clean minibatch), by maximum likelihood over ``k`` nearest neighbours.

    Parameters
    ----------
    model : the classifier (logits).
    layers : names from ``model.named_modules()`` or "output"; default every ReLU and the output.
    k : neighbours (Ma et al.: 20 for a minibatch of 100).
    reference_size : clean fitting inputs kept as the reference set (seeded random choice).
    fpr, calibration, seed : see :class:`Detector`.

    References
    ----------
    Ma, Li, Wang, Erfani, Wijewickrema, Schoenebeck, Song, Houle & Bailey, "Characterizing Adversarial Subspaces
    Using Local Intrinsic Dimensionality", ICLR 2018 (``xingjunm/lid_adversarial_subspace_detection``).
    """

    @validated
    def __init__(self, model: nn.Module, layers: Sequence[str] | None = None, *, k: int = 20,
                 reference_size: int = 100, fpr: float = 0.05, calibration: float = 0.5, seed: int = 0) -> None:
        super().__init__(model, fpr=fpr, calibration=calibration, seed=seed)
        if not isinstance(k, int) or k < 2:
            raise InputError(f"k must be an integer ≥ 2, got {k!r}")
        if not isinstance(reference_size, int) or reference_size <= k:
            raise InputError(f"reference_size must be an integer > k ({k}), got {reference_size!r}")
        self.layers = _layer_modules(model, layers)
        self.k = k
        self.reference_size = reference_size
        self.reference_: list[Tensor] = []

    def _fit(self, x: Tensor, y: Tensor) -> None:
        if x.shape[0] <= self.k + 1:
            raise InputError(f"LID needs more than k + 1 = {self.k + 1} clean fitting inputs, got {x.shape[0]}")
        perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(self.seed + 1))
        ref = x[perm[: self.reference_size].to(x.device)]
        with attack_mode(self.model), torch.no_grad():
            feats, _ = _features(self.model, self.layers, ref)
        self.reference_ = [f.flatten(1) for f in feats]

    def _layer_scores(self, x: Tensor) -> Tensor:
        if not self.reference_:
            raise InputError("LID is not fitted; call fit(x_clean) first")
        with attack_mode(self.model):
            feats, _ = _features(self.model, self.layers, x)
            k = min(self.k, self.reference_[0].shape[0] - 1)
            return torch.stack([lid_mle(torch.cdist(f.flatten(1), ref.to(f)), k)
                                for f, ref in zip(feats, self.reference_)], dim=1)


# ----------------------------------------------------------------------------------- evaluation
class _Remembering(nn.Module):
    """The model, remembering the input of its last forward pass (for the detector term of an adaptive loss)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.last: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        self.last = x
        return self.model(x)


def _adaptive_pgd(detector: Detector, model: nn.Module, x: Tensor, y: Tensor, w: float, *, eps: float, norm: str,
                  steps: int, kappa: float, bounds: tuple[float, float], generator: torch.Generator) -> Tensor:
    """One adaptive run of :func:`attack_detector` at penalty weight ``w``."""
    tau, scale = detector.threshold_, detector.score_scale_
    wrapped = _Remembering(model)
    best, done = x.clone(), torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

    def loss_fn(z: Tensor) -> Tensor:
        return margin_loss(z, y).clamp(max=kappa) - w * ((detector.score(wrapped.last) - tau) / scale).clamp_min(0)

    def track(xk: Tensor, logits: Tensor) -> None:
        nonlocal best, done
        with torch.no_grad():
            ok = (logits.argmax(dim=1) != y) & ~detector.predict(xk) & ~done
        best = torch.where(ok.reshape(-1, *([1] * (x.dim() - 1))), xk.detach(), best)
        done = done | ok

    with attack_mode(model):
        last = maximize(Counted(wrapped), x, loss_fn, eps=eps, norm=norm, steps=steps, alpha=2.5 * eps / steps,
                        bounds=bounds, generator=generator, init="uniform", on_iterate=track)
    return torch.where(done.reshape(-1, *([1] * (x.dim() - 1))), best, last)


def attack_detector(detector: Detector, model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str = "linf",
                    steps: int = 50, weights: Sequence[float] = (0.3, 1.0, 3.0), kappa: float = 1.0,
                    bounds: tuple[float, float] = (0.0, 1.0), seed: int = 0) -> dict[str, Tensor]:
    """The attacks a detector must survive: oblivious PGD (cross-entropy, the detector ignored) and one adaptive
    PGD per weight ``w`` that maximises ``min(m(x'), κ) − w · max(s(x') − τ, 0) / σ_s`` with ``m`` the logit
    margin (positive when misclassified), ``s`` the detector score, ``τ`` its threshold and ``σ_s`` the spread of
    clean scores; each adaptive run keeps, per sample, the first iterate that is misclassified and not flagged.

    Returns
    -------
    A dict name → adversarial inputs (all inside the threat model), for :func:`evaluate_detector`.

    References
    ----------
    Carlini & Wagner, "Adversarial Examples Are Not Easily Detected: Bypassing Ten Detection Methods", AISec 2017;
    Athalye, Carlini & Wagner, ICML 2018.
    """
    from ..evasion import pgd

    if detector.threshold_ is None:
        raise InputError("the detector is not fitted; call fit(x_clean) first")
    x, y = check_inputs(x, y, bounds)
    e = check_eps(eps, norm, bounds, tuple(x.shape[1:]))
    if not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be an integer ≥ 1, got {steps!r}")
    out = {"oblivious": pgd(model, x, y, eps=e, norm=norm, steps=steps, bounds=bounds, seed=seed).x_adv}
    g, _ = make_generator(seed, x.device)
    for w in weights:
        if not w >= 0:
            raise InputError(f"weights must be ≥ 0, got {w!r}")
        out[f"adaptive-w{w:g}"] = _adaptive_pgd(detector, model, x, y, w, eps=e, norm=norm, steps=steps,
                                               kappa=kappa, bounds=bounds, generator=g)
    return out


def evaluate_detector(detector: Detector, model: nn.Module, x: Tensor, y: Tensor,
                      attacks: dict[str, Tensor]) -> dict[str, Any]:
    """Detection AUROC and undetected-success rates of ``detector`` on clean ``x, y`` and adversarial versions.

    Returns
    -------
    dict with ``test_fpr`` (share of clean inputs flagged), ``clean_accuracy``, and per attack: ``success_rate``
    (misclassified), ``auroc`` (scores of the successful adversarial inputs against those of the correctly
    classified clean inputs; NaN when there are none), ``undetected_success`` (share of all inputs that are
    misclassified and not flagged); ``union_undetected_success``: the share where at least one attack is.
    """
    from sklearn.metrics import roc_auc_score

    x, y = check_inputs(x, y, (-math.inf, math.inf))
    if detector.threshold_ is None:
        raise InputError("the detector is not fitted; call fit(x_clean) first")
    with attack_mode(model), torch.no_grad():
        clean_ok = model(x).argmax(dim=1) == y
        s_clean = detector.score(x)
        flagged_clean = s_clean > detector.threshold_
        report: dict[str, Any] = {"test_fpr": float(flagged_clean.float().mean()),
                                  "threshold": detector.threshold_, "calibration_fpr": detector.realised_fpr_,
                                  "clean_accuracy": float(clean_ok.float().mean()), "attacks": {}}
        union = torch.zeros_like(clean_ok)
        for name, xa in attacks.items():
            if not torch.is_tensor(xa) or xa.shape != x.shape:
                raise InputError(f"attack {name!r}: adversarial inputs must be a tensor of shape {tuple(x.shape)}")
            wrong = model(xa).argmax(dim=1) != y
            s_adv = detector.score(xa)
            undetected = wrong & ~(s_adv > detector.threshold_)
            union |= undetected
            pos, neg = s_adv[wrong & clean_ok], s_clean[clean_ok]
            auroc = float("nan")
            if pos.numel() and neg.numel():
                labels = torch.cat([torch.zeros(neg.numel()), torch.ones(pos.numel())]).numpy()
                auroc = float(roc_auc_score(labels, torch.cat([neg, pos]).cpu().double().numpy()))
            report["attacks"][name] = {"success_rate": float(wrong.float().mean()), "auroc": auroc,
                                       "undetected_success": float(undetected.float().mean()),
                                       "detected_share_of_successes": float((wrong & ~undetected).sum()) /
                                       max(int(wrong.sum()), 1)}
        report["union_undetected_success"] = float(union.float().mean())
    return report
