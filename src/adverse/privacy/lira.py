"""LiRA, the Likelihood-Ratio Attack (Carlini et al. 2022), online and offline, per-example or fixed variance.

For a query ``(x, y)`` and a model ``f``, the statistic is the stable scaled logit
``φ(f(x)_y) = log p_y − log Σ_{k≠y} p_k``, computed in float64 from logits. Reference models give samples of
``φ`` from models trained with ``x`` (IN, ``Q̃_in``) and without it (OUT, ``Q̃_out``); LiRA fits a Gaussian to
each, ``N(μ_in, σ²_in)`` and ``N(μ_out, σ²_out)``, and scores the target's ``φ``:

- **online**: ``Λ = log N(φ; μ_in, σ²_in) − log N(φ; μ_out, σ²_out)`` (Algorithm 1);
- **offline**: the one-sided test ``Λ = Pr[Z < φ]``, ``Z ~ N(μ_out, σ²_out)``; the score returned is the
  standardized ``(φ − μ_out) / σ_out``, whose ranking equals that of ``Λ = Φ(·)`` but never saturates at 1.

**Fixed variance** replaces the per-example ``σ_in, σ_out`` by global ones: the pooled residual variance
``Σ_i Σ_k (φ_ik − μ_i)² / (#signals − #points)`` over all points of the IN (resp. OUT) signals; it is the
better choice with few reference models (Carlini et al., §VI; their reference code's online branch uses the
plain standard deviation of all IN signals instead, which also counts spread between examples).

**Fallback** when a point has no IN (or no OUT) reference model (possible with ``pairing="independent"``):
its missing mean is the other one shifted by the average gap ``mean_i(μ_in,i − μ_out,i)`` over points that
have both, and a side with fewer than two models uses the global variance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..errors import InputError
from ..validation import validated
from ._result import MembershipScores, with_baseline
from ._signals import check_label_range, check_xy, model_logits, scaled_logit
from .reference import ReferenceModels

Tensor = torch.Tensor


def fit_gaussians(phi: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-point Gaussian fits of the signals ``phi`` (models, points) where ``mask`` is True.

    Returns ``(μ (points,), per-point variance (points,; unbiased, 0 where < 2 signals), counts (points,),
    pooled residual variance (scalar))``.
    """
    m = mask.to(device=phi.device, dtype=phi.dtype)
    cnt = m.sum(0)
    mu = (phi * m).sum(0) / cnt.clamp_min(1)
    r2 = (phi - mu) ** 2 * m
    var = torch.where(cnt >= 2, r2.sum(0) / (cnt - 1).clamp_min(1), torch.zeros_like(mu))
    dof = cnt.sum() - (cnt > 0).sum()
    pooled = r2.sum() / dof if dof > 0 else torch.full((), float("nan"), dtype=phi.dtype, device=phi.device)
    return mu, var, cnt, pooled


def _complete(mu: Tensor, cnt: Tensor, other_mu: Tensor, other_cnt: Tensor) -> Tensor:
    """Fill means of points with no signal on this side: the other side's mean shifted by the average gap."""
    both = (cnt > 0) & (other_cnt > 0)
    missing = cnt == 0
    if not bool(missing.any()):
        return mu
    if not bool(both.any()):
        raise InputError("no query point has both IN and OUT reference models; train more reference models")
    gap = (mu[both] - other_mu[both]).mean()
    return torch.where(missing, other_mu + gap, mu)


def _variance(var: Tensor, cnt: Tensor, pooled: Tensor, fixed: bool) -> Tensor:
    if not bool(torch.isfinite(pooled)) or float(pooled) <= 0:
        raise InputError("cannot estimate LiRA's variance: too few reference signals; train more reference models")
    v = torch.where(cnt >= 2, var, pooled) if not fixed else pooled.expand_as(var)
    return v.clamp_min(float(pooled) * 1e-12)


def gaussian_logpdf(v: Tensor, mu: Tensor, var: Tensor) -> Tensor:
    return -0.5 * ((v - mu) ** 2 / var + torch.log(2 * math.pi * var))


class LiRA:
    """Likelihood-ratio membership attack (Carlini et al. 2022): configure, ``fit(refs)``, ``score``.

    Parameters
    ----------
    online : True uses IN and OUT reference models (the query points must be pool points: ``pool_index``);
        False (offline) uses OUT models only.
    fixed_variance : one global variance per side instead of per-example variances.
    augmentations : deterministic query transforms (e.g. ``[lambda x: x, lambda x: x.flip(-1)]``); each gets
        its own Gaussians, and the per-query statistics are combined (online: mean log-likelihood ratio;
        offline: ``Σ z_a / √A``). None queries ``x`` alone.

    References
    ----------
    Carlini, Chien, Nasr, Song, Terzis & Tramèr, "Membership Inference Attacks From First Principles",
    IEEE S&P 2022 (arXiv:2112.03570).
    """

    @validated
    def __init__(self, online: bool = True, fixed_variance: bool = False,
                 augmentations: Sequence[Callable[[Tensor], Tensor]] | None = None) -> None:
        self.online = bool(online)
        self.fixed_variance = bool(fixed_variance)
        self.augmentations = list(augmentations) if augmentations is not None else None
        if self.augmentations is not None and (not self.augmentations or not all(map(callable, self.augmentations))):
            raise InputError("augmentations must be a non-empty list of callables x -> x' (include the identity)")
        self.refs_: ReferenceModels | None = None

    def fit(self, refs: ReferenceModels) -> LiRA:
        """Keep the reference models (trained now if they are not yet)."""
        if not isinstance(refs, ReferenceModels):
            raise InputError(f"LiRA.fit needs ReferenceModels, got {type(refs).__name__}")
        # a Gaussian's spread needs two signals: online 2 IN + 2 OUT, offline 2 OUT models
        refs.require(2 if self.online else 0, 2, "online LiRA" if self.online else "offline LiRA")
        self.refs_ = refs.fit()
        return self

    def score(self, model: nn.Module, x: Tensor, y: Tensor, pool_index: Tensor | None = None) -> Tensor:
        """Per-sample LiRA scores (float64, higher = member).

        ``pool_index[i]`` is the pool position of query ``x[i]`` (which reference models trained on it); None
        means the queries are not pool points (every reference model is OUT: offline only).
        """
        if self.refs_ is None:
            raise InputError("call fit(refs) before score()")
        if self.online and pool_index is None:
            raise InputError("online LiRA needs IN reference models for the query points: pass pool_index (their "
                             "positions in the reference pool) or use online=False")
        x, y = check_xy(x, y)
        refs = self.refs_
        is_in = refs.in_masks(pool_index, x.shape[0])
        per_query = []
        for aug in self.augmentations or (None,):
            xa = x if aug is None else aug(x)
            if not isinstance(xa, Tensor) or xa.shape != x.shape:
                raise InputError("each augmentation must map x to a tensor of the same shape")
            z = model_logits(model, xa)
            check_label_range(z, y)
            per_query.append(self._test(scaled_logit(z, y), scaled_logit(refs.logits(xa), y), is_in))
        stats = torch.stack(per_query)
        # online: the mean log-likelihood ratio over queries (Carlini et al. §IV-C); offline: Stouffer's
        # combination of the one-sided statistics, Σ_a z_a / √A (for one query, z itself)
        return stats.mean(0) if self.online else stats.sum(0) / math.sqrt(stats.shape[0])

    def _test(self, phi: Tensor, phi_ref: Tensor, is_in: Tensor) -> Tensor:
        """One query's statistic from the target's ``φ`` (n,) and the references' (K, n)."""
        mu_out, var_out, cnt_out, pooled_out = fit_gaussians(phi_ref, ~is_in)
        if not self.online:
            if bool((cnt_out == 0).any()):
                mu_in, _, cnt_in, _ = fit_gaussians(phi_ref, is_in)
                mu_out = _complete(mu_out, cnt_out, mu_in, cnt_in)
            sd = _variance(var_out, cnt_out, pooled_out, self.fixed_variance).sqrt()
            return (phi - mu_out) / sd
        mu_in, var_in, cnt_in, pooled_in = fit_gaussians(phi_ref, is_in)
        mu_in_full = _complete(mu_in, cnt_in, mu_out, cnt_out)
        mu_out = _complete(mu_out, cnt_out, mu_in, cnt_in)
        v_in = _variance(var_in, cnt_in, pooled_in, self.fixed_variance)
        v_out = _variance(var_out, cnt_out, pooled_out, self.fixed_variance)
        return gaussian_logpdf(phi, mu_in_full, v_in) - gaussian_logpdf(phi, mu_out, v_out)


@validated
def lira(
    model: nn.Module, x: Tensor, y: Tensor, refs: ReferenceModels, *, pool_index: Tensor | None = None,
    online: bool = True, fixed_variance: bool = False,
    augmentations: Sequence[Callable[[Tensor], Tensor]] | None = None, baseline: nn.Module | None = None,
) -> MembershipScores:
    """LiRA membership scores for ``model`` on ``(x, y)`` from reference models.

    Parameters
    ----------
    model : the target, a ``torch.nn.Module`` returning logits (left as found).
    x, y : query points and their true labels.
    refs : :class:`ReferenceModels` (online LiRA needs ≥ 4, offline ≥ 2).
    pool_index : positions of ``x`` in ``refs``' pool (needed online); None = not pool points.
    online, fixed_variance, augmentations : see :class:`LiRA`.
    baseline : a model trained on data disjoint from ``x``: the same attack against it is the sanity baseline
        (default: ``refs.baseline``, set by ``refs.train_disjoint``).

    Returns
    -------
    MembershipScores
        Online: the log-likelihood ratio; offline: the standardized statistic ``(φ − μ_out)/σ_out``.

    References
    ----------
    Carlini et al., "Membership Inference Attacks From First Principles", IEEE S&P 2022.
    """
    att = LiRA(online, fixed_variance, augmentations).fit(refs)
    return with_baseline(lambda m: att.score(m, x, y, pool_index), model, baseline, "lira",
                         {"online": online, "fixed_variance": fixed_variance, "n_reference": len(refs),
                          "n_queries": len(att.augmentations or [None])}, refs)
