"""Learned and optimization-based denoising: MagNet's autoencoder reformer and reconstruction-error detector, and
total-variation minimization.

Both are :class:`~adverse.defenses.preprocessing.Preprocessor` layers that go first in the model:

* :class:`MagNet` — the *reformer* ``x ↦ ae(x)`` (an autoencoder trained on clean data, Meng & Chen 2017) with
  its *detector* (:class:`ReconstructionDetector`: reject inputs whose reconstruction error exceeds a threshold
  set at a false-positive rate on held-out clean data). The autoencoder is a torch network, so the exact gradient
  exists; evaluate the reformer and the detector *together* (:func:`adverse.defenses.evaluate` with
  ``detector=``), as Carlini & Wagner did to break it.
* :class:`TVMinimization` — Guo et al.'s randomized pixel dropout followed by total-variation minimization,
  solved by :func:`tv_minimize`. The reconstruction is an argmin with random inputs: attack it with BPDA under
  EOT (``gradient="eot"``, the default), as Athalye et al. did.

References
----------
Meng & Chen, "MagNet: a Two-Pronged Defense against Adversarial Examples", CCS 2017. Carlini & Wagner, "MagNet and
'Efficient Defenses Against Adversarial Attacks' are Not Robust to Adversarial Examples", arXiv:1711.08478, 2017.
Guo, Rana, Cisse & van der Maaten, "Countering Adversarial Images using Input Transformations", ICLR 2018.
Athalye, Carlini & Wagner, ICML 2018. Chambolle & Pock, "A First-Order Primal-Dual Algorithm for Convex Problems
with Applications to Imaging", JMIV 2011.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..validation import OPEN_FRACTION, Rule, validated
from .detection import Detector
from .preprocessing import Preprocessor, bpda

Tensor = torch.Tensor


# ----------------------------------------------------------------------------------- MagNet
def magnet_autoencoder(channels: int = 1, filters: int = 3) -> nn.Sequential:
    """Meng & Chen's MNIST autoencoder (their "Detector I" and reformer): conv 3×3 (``filters``, sigmoid),
    2×2 average pool, two conv 3×3 (sigmoid), 2×2 upsampling, conv 3×3 (sigmoid), conv 3×3 to ``channels``
    (sigmoid). Inputs and outputs in [0, 1]; height and width must be even."""
    f = filters
    return nn.Sequential(
        nn.Conv2d(channels, f, 3, padding=1), nn.Sigmoid(), nn.AvgPool2d(2),
        nn.Conv2d(f, f, 3, padding=1), nn.Sigmoid(),
        nn.Conv2d(f, f, 3, padding=1), nn.Sigmoid(), nn.Upsample(scale_factor=2),
        nn.Conv2d(f, f, 3, padding=1), nn.Sigmoid(),
        nn.Conv2d(f, channels, 3, padding=1), nn.Sigmoid(),
    )


class _Unit(nn.Module):
    """``ae`` applied in unit coordinates: ``lo + (hi − lo) · ae((x − lo) / (hi − lo))``."""

    def __init__(self, ae: nn.Module, bounds: tuple[float, float]) -> None:
        super().__init__()
        self.ae, self.bounds = ae, bounds

    def forward(self, x: Tensor) -> Tensor:
        lo, hi = self.bounds
        return lo + (hi - lo) * self.ae((x - lo) / (hi - lo))


class ReconstructionDetector(Detector):
    """MagNet's reconstruction-error detector: ``E(x) = mean |x − ae(x)|^p`` over the input's values (in unit
    coordinates, so ``E`` lies in [0, 1]); inputs with ``E(x)`` above the threshold are rejected.

    Parameters
    ----------
    autoencoder : a trained autoencoder mapping unit-range inputs to unit-range reconstructions.
    p : 1 or 2 (Meng & Chen's detectors use both).
    fpr : the false-positive rate on held-out clean data at which :meth:`calibrate` sets the threshold
        (Meng & Chen: 0.001 on MNIST; the default 0.01 suits a few hundred calibration inputs).
    threshold : a fixed threshold in [0, 1] instead (then ``fpr`` only reports the rate it gives).
    bounds : the input range.
    calibration, seed : see :class:`~adverse.defenses.detection.Detector`.

    References
    ----------
    Meng & Chen, "MagNet: a Two-Pronged Defense against Adversarial Examples", CCS 2017.
    """

    @validated(threshold=None)
    def __init__(self, autoencoder: nn.Module, *, p: int = 2, fpr: float = 0.01, threshold: float | None = None,
                 bounds: tuple[float, float] = (0.0, 1.0), calibration: float = 0.5, seed: int = 0) -> None:
        super().__init__(autoencoder, fpr=fpr, calibration=calibration, seed=seed)
        if p not in (1, 2) or isinstance(p, bool):
            raise InputError(f"p must be 1 or 2 (the reconstruction error's norm), got {p!r}")
        if threshold is not None and not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
                                          and 0.0 <= threshold <= 1.0):
            raise InputError(f"ReconstructionDetector: threshold must lie in [0, 1] (it is a mean reconstruction "
                             f"error per input value, in unit coordinates), got {threshold!r}; or leave it None and "
                             "pass fpr= to calibrate it on clean data")
        self.p = p
        self.threshold = None if threshold is None else float(threshold)
        self.bounds = (float(bounds[0]), float(bounds[1]))
        self.reconstruct = _Unit(autoencoder, self.bounds)

    def fit(self, x_clean: Tensor, y: Tensor | None = None, *, x_adv: Tensor | None = None,
            x_calibration: Tensor | None = None) -> ReconstructionDetector:
        """Calibrate the threshold on clean inputs (the autoencoder is trained elsewhere, e.g. by
        :meth:`MagNet.fit`; see :meth:`Detector.fit` for the split)."""
        if x_adv is not None:
            raise InputError("MagNet's detector is unsupervised (Meng & Chen): it learns nothing from x_adv; drop it")
        labels = torch.zeros(x_clean.shape[0], dtype=torch.long) if torch.is_tensor(x_clean) else None
        return super().fit(x_clean, labels, x_calibration=x_calibration)

    def calibrate(self, x_clean: Tensor, fpr: float | None = None) -> ReconstructionDetector:
        super().calibrate(x_clean, fpr)
        if self.threshold is not None:
            with torch.no_grad():
                s = self.score(x_clean)
            self.threshold_ = self.threshold
            self.realised_fpr_ = int((s > self.threshold).sum()) / s.numel()
        return self

    def score(self, x: Tensor) -> Tensor:
        """``E(x) = mean |x − ae(x)|^p`` per input, in unit coordinates (differentiable in ``x``)."""
        if self._mean is None:
            raise InputError("ReconstructionDetector is not fitted; call fit(x_clean) first")
        return self._layer_scores(x)[:, 0]

    def _layer_scores(self, x: Tensor) -> Tensor:
        lo, hi = self.bounds
        err = ((x - self.reconstruct(x)) / (hi - lo)).abs().flatten(1)
        return (err if self.p == 1 else err.square()).mean(dim=1, keepdim=True)


class MagNet(Preprocessor):
    """MagNet (Meng & Chen 2017): the reformer ``x ↦ ae(x)`` as a layer, and a reconstruction-error detector on
    the same autoencoder (:attr:`detector`, a :class:`ReconstructionDetector`).

    :meth:`fit` trains the autoencoder (:func:`magnet_autoencoder` unless one is given) on clean inputs with
    Gaussian noise of scale ``noise`` added (Meng & Chen's "volume" 0.1), mean squared error and Adam, seeded;
    a share ``calibration`` of the inputs is held out to set the detector's threshold at ``fpr``.

    Parameters
    ----------
    autoencoder : an autoencoder on unit-range inputs (default: built by :meth:`fit`).
    p, fpr, threshold : the detector's (see :class:`ReconstructionDetector`).
    noise, epochs, lr, batch_size, weight_decay : the autoencoder's training (Meng & Chen: noise 0.1,
        L2 regularization 1e-9, Adam).
    calibration : the share of :meth:`fit`'s inputs held out for the threshold.
    gradient : "exact" (through the autoencoder: the adaptive attack), "bpda" (identity) or "eot" (= "exact").
    bounds : the input range. seed : the autoencoder's initialization, noise, batches and the held-out split.

    References
    ----------
    Meng & Chen, "MagNet: a Two-Pronged Defense against Adversarial Examples", CCS 2017.
    """

    @validated(noise=Rule("real", low=0.0), threshold=None)
    def __init__(self, autoencoder: nn.Module | None = None, *, p: int = 2, fpr: float = 0.01,
                 threshold: float | None = None, noise: float = 0.1, epochs: int = 100, lr: float = 1e-2,
                 batch_size: int = 32, weight_decay: float = 1e-9, calibration: float = 0.3,
                 gradient: str = "exact", bounds: tuple[float, float] = (0.0, 1.0), seed: int = 0) -> None:
        super().__init__(gradient, bounds, seed)
        if not 0 < calibration < 1:
            raise InputError(f"calibration must lie in (0, 1), got {calibration!r}")
        self.autoencoder = autoencoder
        self.detector_options = {"p": p, "fpr": fpr, "threshold": threshold}
        ReconstructionDetector(nn.Identity(), **self.detector_options)  # refuses bad p, fpr and threshold now
        self.noise, self.epochs, self.lr = float(noise), epochs, float(lr)
        self.batch_size, self.weight_decay, self.calibration = batch_size, float(weight_decay), float(calibration)
        self._detector: ReconstructionDetector | None = None

    @property
    def detector(self) -> ReconstructionDetector:
        """The calibrated reconstruction-error detector (after :meth:`fit`)."""
        if self._detector is None:
            raise InputError("MagNet is not fitted: call fit(x_train) to train the autoencoder and calibrate its "
                             "detector")
        return self._detector

    def fit(self, x: Tensor, y: Tensor | None = None, *, train: bool = True) -> MagNet:
        """Train the autoencoder on clean inputs ``x`` (unless ``train=False``: a given, trained one) and calibrate
        the detector on a held-out share; ``y`` is ignored. Returns self."""
        if not torch.is_tensor(x) or x.dim() != 4:
            raise InputError("MagNet needs images of shape (n, channels, height, width)")
        n_cal = round(self.calibration * x.shape[0])
        if n_cal < 20 or x.shape[0] - n_cal < 20:
            raise InputError(f"MagNet.fit needs at least 20 inputs to train on and 20 to calibrate on, got "
                             f"{x.shape[0]} in all")
        g = torch.Generator().manual_seed(self.seed)
        perm = torch.randperm(x.shape[0], generator=g).to(x.device)
        x_fit, x_cal = x[perm[n_cal:]].detach(), x[perm[:n_cal]].detach()
        if self.autoencoder is None:
            if x.shape[2] % 2 or x.shape[3] % 2:
                raise InputError(f"MagNet's default autoencoder pools by 2: height and width must be even, got "
                                 f"{tuple(x.shape[2:])}; pass autoencoder= for other shapes")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                self.autoencoder = magnet_autoencoder(x.shape[1]).to(x.device)
            train = True
        if train:
            self._train(self._unit(x_fit), g)
        self.autoencoder.eval()
        det = ReconstructionDetector(self.autoencoder, **self.detector_options, bounds=self.bounds, seed=self.seed)
        self._detector = det.fit(x_fit, x_calibration=x_cal)
        return self

    def _train(self, u: Tensor, g: torch.Generator) -> None:
        ae = self.autoencoder
        opt = torch.optim.Adam(ae.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        ae.train()
        for _ in range(self.epochs):
            order = torch.randperm(u.shape[0], generator=g).to(u.device)
            for i in range(0, u.shape[0], self.batch_size):
                clean = u[order[i : i + self.batch_size]]
                noisy = (clean + self.noise * torch.randn(clean.shape, generator=g).to(clean)).clamp(0, 1)
                opt.zero_grad(set_to_none=True)
                F.mse_loss(ae(noisy), clean).backward()
                opt.step()
        opt.zero_grad(set_to_none=True)

    def transform(self, x: Tensor) -> Tensor:
        if self.autoencoder is None:
            raise InputError("MagNet is not fitted; call fit(x_train) to train its autoencoder first")
        return self._from_unit(self.autoencoder(self._unit(x))).clamp(*self.bounds)

    def extra_repr(self) -> str:
        return (f"p={self.detector_options['p']}, fpr={self.detector_options['fpr']}, noise={self.noise}, "
                f"gradient={self.gradient!r}, seed={self.seed}")


# ----------------------------------------------------------------------------------- TV minimization
def _tv_dual_projection(u: Tensor, lam: float, p: int, dim: int) -> Tensor:
    """Project ``u`` onto the ball of radius ``λ`` of TV_p's dual norm, group by group (a group is a row or a
    column difference; ``dim`` is the axis along it)."""
    if p == 1:
        return u.clamp(-lam, lam)
    norm = u.norm(dim=dim, keepdim=True)
    return u * (lam / norm.clamp_min(lam))


def tv_minimize(x: Tensor, mask: Tensor, lam: float, *, p: int = 2, iterations: int = 100,
                bounds: tuple[float, float] = (0.0, 1.0)) -> Tensor:
    """Guo et al.'s reconstruction: ``z* = argmin_{z ∈ box} ‖X ⊙ (z − x)‖₂ + λ_TV · TV_p(z)``, per image, with
    ``X`` the 0/1 ``mask`` of kept pixels and ``TV_p(z) = Σ_k [Σ_i ‖z(i,:,k) − z(i−1,:,k)‖_p +
    Σ_j ‖z(:,j,k) − z(:,j−1,k)‖_p]`` (the p-norm of each difference between adjacent rows and columns).

    Solved by ``iterations`` steps of Chambolle & Pock's primal-dual algorithm (step sizes ``τ = σ = 0.99/3``,
    ``‖K‖² ≤ 9``), started at ``z⁰ = x``; every operation is a torch operation, so the result is differentiable
    through the unrolled iterations. A constant image is a fixed point.

    Parameters
    ----------
    x : images (n, c, h, w). mask : 0/1 tensor of the same shape (1 = kept). lam : ``λ_TV`` ≥ 0.
    p : 1 or 2. iterations : primal-dual steps. bounds : the box the reconstruction stays in.

    References
    ----------
    Guo, Rana, Cisse & van der Maaten, ICLR 2018 (the objective); Chambolle & Pock, JMIV 2011 (the solver).
    """
    lo, hi = bounds
    tau = sigma = 0.99 / 3
    b = mask * x
    z = x.clamp(lo, hi)
    z_bar = z
    u = x.new_zeros(*x.shape[:2], x.shape[2] - 1, x.shape[3])  # duals of the row differences
    v = x.new_zeros(*x.shape[:3], x.shape[3] - 1)              # ... of the column differences
    w = torch.zeros_like(x)                                     # ... of the data term
    for _ in range(iterations):
        u = _tv_dual_projection(u + sigma * (z_bar[:, :, 1:] - z_bar[:, :, :-1]), lam, p, dim=3)
        v = _tv_dual_projection(v + sigma * (z_bar[..., 1:] - z_bar[..., :-1]), lam, p, dim=2)
        w = w + sigma * (mask * z_bar - b)
        w = w / w.flatten(1).norm(dim=1).clamp_min(1.0).reshape(-1, 1, 1, 1)
        adjoint = (F.pad(u, (0, 0, 1, 0)) - F.pad(u, (0, 0, 0, 1))) + (F.pad(v, (1, 0)) - F.pad(v, (0, 1)))
        z_new = (z - tau * (adjoint + mask * w)).clamp(lo, hi)  # Kᵀy = D_rᵀu + D_cᵀv + Xw
        z_bar = 2 * z_new - z
        z = z_new
    return z


def tv_objective(z: Tensor, x: Tensor, mask: Tensor, lam: float, p: int = 2) -> Tensor:
    """Per image, ``‖X ⊙ (z − x)‖₂ + λ_TV · TV_p(z)``: the objective :func:`tv_minimize` minimizes."""
    rows = (z[:, :, 1:] - z[:, :, :-1]).norm(p=p, dim=3).flatten(1).sum(dim=1)
    cols = (z[..., 1:] - z[..., :-1]).norm(p=p, dim=2).flatten(1).sum(dim=1)
    return (mask * (z - x)).flatten(1).norm(dim=1) + lam * (rows + cols)


class TVMinimization(Preprocessor):
    """Guo et al.'s total-variation minimization: keep each pixel with probability ``keep`` (a fresh Bernoulli
    mask ``X`` per image and call, from the layer's seeded generator), then reconstruct the image with
    :func:`tv_minimize`. Randomized: evaluate and attack it through :class:`adverse.evasion.EOT`.

    Parameters
    ----------
    keep : the probability ``p`` of keeping a pixel (Guo et al. drop half of them: 0.5).
    weight : ``λ_TV``, the weight of the total variation.
    p : the norm of TV_p, 1 or 2 (Guo et al.: 2).
    iterations : primal-dual steps of the solver.
    gradient : "eot" (default) and "bpda": the identity in the backward pass of each draw (Athalye et al.'s
        BPDA, averaged over draws under EOT); "exact": differentiate through the unrolled solver (slow; its
        gradient is often uninformative).
    bounds : the input range. seed : seeds the masks.

    References
    ----------
    Guo, Rana, Cisse & van der Maaten, "Countering Adversarial Images using Input Transformations", ICLR 2018;
    Athalye, Carlini & Wagner, ICML 2018 (BPDA + EOT break it).
    """

    randomized = True
    adaptive_gradients = ("eot",)

    @validated(keep=OPEN_FRACTION, weight=Rule("real", low=0.0), iterations=Rule("int", low=1))
    def __init__(self, keep: float = 0.5, weight: float = 0.03, *, p: int = 2, iterations: int = 200,
                 gradient: str = "eot", bounds: tuple[float, float] = (0.0, 1.0), seed: int = 0) -> None:
        super().__init__(gradient, bounds, seed)
        if p not in (1, 2) or isinstance(p, bool):
            raise InputError(f"p must be 1 or 2 (the norm of TV_p), got {p!r}")
        self.keep, self.weight, self.p, self.iterations = float(keep), float(weight), p, iterations

    def transform(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or min(x.shape[2:]) < 2:
            raise InputError(f"TVMinimization needs images of shape (n, c, h, w) with h, w ≥ 2, got {tuple(x.shape)}")
        mask = (torch.rand(x.shape[0], 1, *x.shape[2:], generator=self.generator) < self.keep).to(x)
        mask = mask.expand_as(x)  # a pixel is kept or dropped in every channel at once
        unit = tv_minimize(self._unit(x), mask, self.weight, p=self.p, iterations=self.iterations, bounds=(0.0, 1.0))
        return self._from_unit(unit)

    def forward(self, x: Tensor) -> Tensor:
        if self.gradient == "exact":
            return self.transform(x)
        return bpda(x, self.transform)

    def extra_repr(self) -> str:
        return (f"keep={self.keep}, weight={self.weight}, p={self.p}, iterations={self.iterations}, "
                f"gradient={self.gradient!r}, seed={self.seed}")


__all__ = ["MagNet", "ReconstructionDetector", "TVMinimization", "magnet_autoencoder", "tv_minimize",
           "tv_objective"]
