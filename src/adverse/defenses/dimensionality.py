"""Dimensionality reduction as a defense: project inputs onto the top-``k`` principal components of clean data.

:class:`PCA` is a :class:`~adverse.defenses.preprocessing.Preprocessor` layer: put it first in the model
(``nn.Sequential(PCA(k=20).fit(x_train), classifier)``) and, as Bhagoji et al. do, train the classifier on
projected inputs. The projection is linear (then clipped to the input bounds), so its exact gradient is what an
adaptive attacker uses; ``gradient="bpda"`` (the identity) is there for comparison.

References
----------
Bhagoji, Cullina, Sitawarin & Mittal, "Enhancing Robustness of Machine Learning Systems via Data
Transformations", CISS 2018.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from ..validation import Rule, validated
from .preprocessing import Preprocessor

Tensor = torch.Tensor


class PCA(Preprocessor):
    """Projection onto the span of the top-``k`` principal components: ``x̂ = clip(μ + V_kᵀ V_k (x − μ))``, with
    ``μ`` the mean of the clean training inputs and ``V_k`` (``k × d``) their first ``k`` principal directions
    (rows of ``Vᵀ`` in the SVD ``X − μ = U Σ Vᵀ``). Inputs of any shape are flattened to ``d`` values (images or
    tabular rows alike) and reshaped back.

    Parameters
    ----------
    k : the number of components kept; or None to choose it by ``variance``.
    variance : with ``k=None``, keep the smallest ``k`` whose components explain at least this share of the
        training variance (default 0.9).
    gradient : "exact" (the projection's own gradient: the adaptive attack), "bpda" (identity) or "eot" (equal
        to "exact": the projection is deterministic).
    bounds : the input range; the projection is clipped into it.
    seed : unused (the fit is deterministic); kept for a uniform interface.

    Attributes (after :meth:`fit`)
    ------------------------------
    k_ : the number of components kept. ``explained_variance_ratio_`` : the share of variance each component
    explains (all of them, in decreasing order). ``mean`` and ``components`` (``k_ × d``) are buffers.

    References
    ----------
    Bhagoji, Cullina, Sitawarin & Mittal, "Enhancing Robustness of Machine Learning Systems via Data
    Transformations", CISS 2018.
    """

    @validated(variance=Rule("real", low=0.0, high=1.0, open_low=True, none=True))
    def __init__(self, k: int | None = None, *, variance: float | None = None, gradient: str = "exact",
                 bounds: tuple[float, float] = (0.0, 1.0), seed: int = 0) -> None:
        super().__init__(gradient, bounds, seed)
        if k is not None and variance is not None:
            raise InputError("give k (the number of components) or variance (the share of variance to keep), "
                             "not both")
        self.k = k
        self.variance = 0.9 if k is None and variance is None else variance
        self.k_: int | None = None
        self.explained_variance_ratio_: Tensor | None = None
        self.register_buffer("mean", None)
        self.register_buffer("components", None)

    def fit(self, x: Tensor, y: Tensor | None = None) -> PCA:
        """Fit ``μ`` and ``V_k`` on clean training inputs ``x`` (n, ...); ``y`` is ignored. Returns self.

        Raises :class:`InputError` when ``k`` exceeds the input dimension or the number of samples.
        """
        if not torch.is_tensor(x) or x.dim() < 2 or x.shape[0] < 2:
            raise InputError("PCA.fit needs a tensor of at least 2 inputs, shape (n, ...)")
        if not torch.isfinite(x).all():
            raise InputError("PCA.fit: the training inputs hold NaN or infinite values")
        flat = x.detach().flatten(1).double()
        n, d = flat.shape
        if self.k is not None and self.k > min(n, d):
            what = f"the input dimension {d}" if self.k > d else f"the number of training samples {n}"
            raise InputError(f"PCA: k={self.k} exceeds {what}; pass k ≤ {min(n, d)}, or variance= to choose k by "
                             "explained variance")
        mu = flat.mean(dim=0)
        _, s, vh = torch.linalg.svd(flat - mu, full_matrices=False)
        ratio = s.square() / s.square().sum().clamp_min(1e-300)
        if self.k is not None:
            k = self.k
        else:
            k = int(torch.searchsorted(ratio.cumsum(0), torch.tensor(self.variance - 1e-12, dtype=ratio.dtype))) + 1
            k = min(k, vh.shape[0])
        self.k_ = k
        self.explained_variance_ratio_ = ratio.to(x.dtype)
        self.mean = mu.to(device=x.device, dtype=x.dtype)
        self.components = vh[:k].to(device=x.device, dtype=x.dtype)
        return self

    def transform(self, x: Tensor) -> Tensor:
        if self.components is None:
            raise InputError("PCA is not fitted; call fit(x_train) on clean training inputs first")
        flat = x.flatten(1)
        if flat.shape[1] != self.components.shape[1]:
            raise InputError(f"PCA was fitted on inputs of {self.components.shape[1]} values, got "
                             f"{flat.shape[1]} (shape {tuple(x.shape)})")
        v, mu = self.components.to(x), self.mean.to(x)
        projected = mu + ((flat - mu) @ v.T) @ v
        return projected.reshape(x.shape).clamp(*self.bounds)

    def extra_repr(self) -> str:
        k = self.k_ if self.k_ is not None else self.k
        return f"k={k}, gradient={self.gradient!r}" + (f", variance={self.variance}" if self.k is None else "")
