"""RMIA, the Robust Membership Inference Attack (Zarifzadeh, Liu & Shokri, ICML 2024).

For a target model θ, a query ``x`` and population points ``z ~ π`` (non-members), RMIA compares likelihood
ratios pairwise:

    LR_θ(x, z) = (Pr(x|θ) / Pr(x)) / (Pr(z|θ) / Pr(z)),      Score(x; θ) = Pr_z[ LR_θ(x, z) ≥ γ ],

with ``Pr(x|θ) = softmax(f_θ(x) / T)_y`` and ``Pr(x)`` the average of ``Pr(x|θ')`` over reference models θ'.
**Online** (IN and OUT references), ``Pr(x)`` averages the IN and the OUT models' mean equally (the paper's
references hold x half the time). **Offline** (OUT references only), ``Pr(x) = ½((1 + a) Pr_OUT(x) + (1 − a))``
approximates the missing IN models linearly. Both ``a`` and the temperature ``T`` are chosen on the reference
models (as ML Privacy Meter chooses ``a``): reference model 0 plays the target, the others (less its
complementary partner) the references, and the (a, T) with the best AUC over the pool wins.

The score is a count over the ``|Z|`` population points, so it takes at most ``|Z| + 1`` values; ties are
broken by ``Pr(x|θ)/Pr(x)`` itself: the returned score is ``(count + u) / |Z|`` with ``u ∈ [0, 1)`` the
normalized rank of the ratio, which keeps the order of the counts and orders points within a count.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..validation import validated
from ._result import MembershipScores, with_baseline
from ._signals import check_label_range, check_xy, log_softmax_true, model_logits
from .reference import ReferenceModels

Tensor = torch.Tensor

A_GRID = tuple(i / 10 for i in range(11))
T_GRID = (1.0, 2.0, 4.0, 8.0)


def log_pr_reference(logp_ref: Tensor, is_in: Tensor, online: bool, a: float) -> Tensor:
    """``log Pr(x)`` (points,) from reference log-probabilities ``logp_ref`` (models, points).

    Online: ``log ½(mean_IN + mean_OUT)`` (a point without IN or OUT models uses the side it has).
    Offline: ``log ½((1 + a) mean_OUT + (1 − a))`` from the OUT models alone.
    """
    is_in = is_in.to(logp_ref.device)

    def log_mean(mask: Tensor) -> tuple[Tensor, Tensor]:
        cnt = mask.sum(0)
        lse = torch.logsumexp(logp_ref.masked_fill(~mask, float("-inf")), dim=0)
        return lse - torch.log(cnt.clamp_min(1).to(logp_ref.dtype)), cnt

    log_out, cnt_out = log_mean(~is_in)
    if online:
        log_in, cnt_in = log_mean(is_in)
        both = torch.logaddexp(log_in, log_out) - math.log(2.0)
        return torch.where(cnt_in == 0, log_out, torch.where(cnt_out == 0, log_in, both))
    if bool((cnt_out == 0).any()):
        raise InputError("offline RMIA needs at least one OUT reference model for every point; train more models")
    floor = torch.full_like(log_out, math.log((1 - a) / 2) if a < 1 else float("-inf"))
    return torch.logaddexp(math.log((1 + a) / 2) + log_out, floor)


def pairwise_score(log_ratio_x: Tensor, log_ratio_z: Tensor, gamma: float) -> Tensor:
    """``(#{z : LR(x, z) ≥ γ} + u) / |Z|`` with ties broken by ``u``, the normalized rank of ``log_ratio_x``.

    ``LR(x, z) ≥ γ`` ⇔ ``log ratio_z ≤ log ratio_x − log γ``, so the count is one binary search in the sorted
    population ratios: O((n + |Z|) log |Z|) instead of n·|Z| comparisons.
    """
    ordered_z = torch.sort(log_ratio_z).values
    counts = torch.searchsorted(ordered_z, log_ratio_x - math.log(gamma), right=True)
    ordered = torch.sort(log_ratio_x).values
    u = torch.searchsorted(ordered, log_ratio_x, right=False).double() / max(log_ratio_x.shape[0], 1)
    return (counts.double() + u) / log_ratio_z.shape[0]


def rmia_scores(logp_target_x: Tensor, logp_ref_x: Tensor, in_x: Tensor, logp_target_z: Tensor, logp_ref_z: Tensor,
                in_z: Tensor, *, online: bool, a: float, gamma: float) -> Tensor:
    """RMIA's score for every x from log-probabilities of the target (points,) and references (models, points)."""
    ratio_x = logp_target_x - log_pr_reference(logp_ref_x, in_x, online, a)
    ratio_z = logp_target_z - log_pr_reference(logp_ref_z, in_z, online, a)
    return pairwise_score(ratio_x, ratio_z, gamma)


class RMIA:
    """RMIA (Zarifzadeh et al. 2024): configure, ``fit(refs, population)``, ``score``.

    Parameters
    ----------
    online : True uses IN and OUT reference models (queries must be pool points); False (default) OUT only.
    offline_a : ``a`` of the offline approximation, or None to choose it on the reference models from
        ``a_grid``.
    temperature : softmax temperature ``T``, or None to choose it on the reference models from ``t_grid``.
    gamma : the pairwise likelihood-ratio threshold γ (paper default 1).

    Attributes (after fit)
    ----------------------
    a_, temperature_ : the values used; ``tuning_`` the AUC of every (a, T) tried.

    References
    ----------
    Zarifzadeh, Liu & Shokri, "Low-Cost High-Power Membership Inference Attacks", ICML 2024
    (arXiv:2312.03262).
    """

    @validated
    def __init__(self, online: bool = False, offline_a: float | None = None, temperature: float | None = None,
                 gamma: float = 1.0, a_grid: tuple[float, ...] = A_GRID, t_grid: tuple[float, ...] = T_GRID) -> None:
        if offline_a is not None and not (0.0 <= offline_a <= 1.0):
            raise InputError(f"offline_a must lie in [0, 1], got {offline_a!r}")
        if temperature is not None and not (temperature > 0 and math.isfinite(temperature)):
            raise InputError(f"temperature must be a finite number > 0, got {temperature!r}")
        if not (gamma > 0 and math.isfinite(gamma)):
            raise InputError(f"gamma must be a finite number > 0, got {gamma!r}")
        self.online, self.offline_a, self.temperature, self.gamma = bool(online), offline_a, temperature, gamma
        self.a_grid, self.t_grid = tuple(a_grid), tuple(t_grid)
        self.refs_: ReferenceModels | None = None

    def fit(self, refs: ReferenceModels, population: tuple[Tensor, Tensor],
            population_index: Tensor | None = None) -> RMIA:
        """Keep the references and population; choose ``a`` and ``T`` where they were not given.

        ``population = (x_z, y_z)`` are non-member points of the target's distribution; ``population_index``
        their positions in the reference pool (None: not pool points).
        """
        if not isinstance(refs, ReferenceModels):
            raise InputError(f"RMIA.fit needs ReferenceModels, got {type(refs).__name__}")
        tune = self.temperature is None or (not self.online and self.offline_a is None)
        refs.require(1 if self.online else 0, 1 + int(tune), "RMIA" + (" with (a, T) chosen on references" if tune else ""))
        x_z, y_z = check_xy(*population, name="population x")
        if x_z.shape[0] == 0:
            raise InputError("RMIA needs at least one population point")
        self.refs_, self.x_z, self.y_z = refs.fit(), x_z, y_z
        self.in_z = refs.in_masks(population_index, x_z.shape[0])
        self.a_ = 1.0 if self.online else self.offline_a
        self.temperature_ = self.temperature
        self.tuning_: dict[tuple[float, float], float] = {}
        if tune:
            self._tune(refs)
        return self

    def _tune(self, refs: ReferenceModels) -> None:
        from sklearn.metrics import roc_auc_score

        z_pool = refs.logits(refs.x_pool)  # (K, N, C)
        z_pop = refs.logits(self.x_z)
        a_grid = (self.a_,) if self.a_ is not None else self.a_grid
        t_grid = (self.temperature_,) if self.temperature_ is not None else self.t_grid
        # reference model 0 plays the target; its complementary partner (OUT exactly where model 0 is IN) is
        # left out of the references when others remain, so they do not depend on model 0's membership
        rest = [j for j in range(1, len(refs)) if refs.pair_ids[j] != refs.pair_ids[0]] or list(range(1, len(refs)))
        best = (-1.0, None, None)
        for t in t_grid:
            lp_pool = log_softmax_true(z_pool, refs.y_pool, t)
            lp_pop = log_softmax_true(z_pop, self.y_z, t)
            for a in a_grid:
                s = rmia_scores(lp_pool[0], lp_pool[rest], refs.masks[rest], lp_pop[0], lp_pop[rest],
                                self.in_z[rest], online=self.online, a=a, gamma=self.gamma)
                auc = float(roc_auc_score(refs.masks[0].cpu().numpy(), s.cpu().numpy()))
                self.tuning_[(a, t)] = auc
                if auc > best[0]:
                    best = (auc, a, t)
        self.a_, self.temperature_ = best[1], best[2]

    def score(self, model: nn.Module, x: Tensor, y: Tensor, pool_index: Tensor | None = None) -> Tensor:
        """Per-sample RMIA scores in [0, 1] (float64, higher = member)."""
        if self.refs_ is None:
            raise InputError("call fit(refs, population) before score()")
        if self.online and pool_index is None:
            raise InputError("online RMIA needs the queries' IN reference models: pass pool_index or use online=False")
        x, y = check_xy(x, y)
        refs, t = self.refs_, self.temperature_
        z_x = model_logits(model, x)
        check_label_range(z_x, y)
        z_z = model_logits(model, self.x_z)
        return rmia_scores(
            log_softmax_true(z_x, y, t), log_softmax_true(refs.logits(x), y, t), refs.in_masks(pool_index, x.shape[0]),
            log_softmax_true(z_z, self.y_z, t), log_softmax_true(refs.logits(self.x_z), self.y_z, t), self.in_z,
            online=self.online, a=self.a_, gamma=self.gamma,
        )


@validated
def rmia(
    model: nn.Module, x: Tensor, y: Tensor, refs: ReferenceModels, *, population: tuple[Tensor, Tensor],
    population_index: Tensor | None = None, pool_index: Tensor | None = None, online: bool = False,
    offline_a: float | None = None, temperature: float | None = None, gamma: float = 1.0,
    baseline: nn.Module | None = None,
) -> MembershipScores:
    """RMIA membership scores for ``model`` on ``(x, y)``.

    Parameters
    ----------
    model : the target (``torch.nn.Module`` returning logits; left as found).
    x, y : query points and their true labels.
    refs : :class:`ReferenceModels`; choosing ``a`` or ``T`` needs ≥ 2 of them.
    population : ``(x_z, y_z)``, population points that are not members of the target.
    population_index, pool_index : positions of the population points / queries in the reference pool, or None.
    online, offline_a, temperature, gamma : see :class:`RMIA` (None = chosen on the reference models).
    baseline : a model trained on data disjoint from ``x``: the same attack against it is the sanity baseline
        (default: ``refs.baseline``, set by ``refs.train_disjoint``).

    Returns
    -------
    MembershipScores
        ``params`` holds the ``a`` and ``T`` used and the tuning AUCs.

    References
    ----------
    Zarifzadeh, Liu & Shokri, "Low-Cost High-Power Membership Inference Attacks", ICML 2024.
    """
    att = RMIA(online, offline_a, temperature, gamma).fit(refs, population, population_index)
    params: dict[str, Any] = {"online": online, "offline_a": None if online else att.a_, "temperature": att.temperature_, "gamma": gamma,
                              "n_reference": len(refs), "n_population": int(att.x_z.shape[0]),
                              "tuning_auc": {f"a={a},T={t}": v for (a, t), v in att.tuning_.items()}}
    return with_baseline(lambda m: att.score(m, x, y, pool_index), model, baseline, "rmia", params, refs)
