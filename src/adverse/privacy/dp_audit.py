"""Empirical lower bounds on the ε of a differentially private training recipe (DP auditing).

A training recipe ``recipe(dataset, seed) -> model`` claims ``(ε, δ)``-DP. An auditor inserts *canaries* into the
training set, trains, guesses from the trained model which canaries were included, and turns the guesses into
a statistical statement: "with probability ≥ ``confidence`` over the auditor's randomness, the recipe is *not*
``(ε', δ)``-DP for any ``ε' < epsilon_lower``". A sound audit never (up to the ``1 − confidence`` failure rate)
reports a lower bound above the true ε; a lower bound far below the claimed ε says the attack is weak, not that
the claim is loose.

Two methods:

* ``"one-run"`` — Steinke, Nasr & Jagielski (NeurIPS 2023): ``m`` canaries, each included independently with
  probability 1/2 (``S_i ∈ {−1, +1}``), **one** training. The auditor ranks the canaries by a membership score,
  guesses "in" (``T_i = +1``) for the ``k₊`` highest and "out" (``T_i = −1``) for the ``k₋`` lowest and abstains
  on the rest; ``r = k₊ + k₋`` guesses of which ``v`` are correct. Under ``(ε, 0)``-DP the number of correct
  guesses ``W`` is stochastically dominated by ``Binomial(r, e^ε / (1 + e^ε))`` (their Theorem 3.1 with δ = 0),
  so ``ε_LB`` is the largest ε with ``P[Binomial(r, e^ε/(1+e^ε)) ≥ v] < 1 − confidence`` — in closed form the
  logit of the Clopper–Pearson lower bound ``Beta(v, r − v + 1).ppf(1 − confidence)`` on the guessing accuracy.
  With δ > 0 the tail gains their ``2mδ · max_{i ∈ {1..v}} P[v − i ≤ Binomial < v] / i`` term (Theorem 3.1 and
  the p-value code of their Appendix), and ε_LB is found by bisection.
* ``"clopper-pearson"`` — Jagielski, Ullman & Oprea (NeurIPS 2020): ``T`` trainings without and ``T`` with one
  canary record; a threshold on the canary's score is a distinguisher with false-positive rate FPR and
  false-negative rate FNR, and ``(ε, δ)``-DP forces ``FPR + e^ε FNR ≥ 1 − δ`` and ``FNR + e^ε FPR ≥ 1 − δ``
  (Kairouz, Oh & Viswanath 2015). With one-sided Clopper–Pearson upper bounds ``FPR⁺`` and ``FNR⁺`` (each at
  level ``(1 − confidence) / 2``, so both hold together with probability ≥ ``confidence``),
  ``ε_LB = max(log((1 − δ − FNR⁺) / FPR⁺), log((1 − δ − FPR⁺) / FNR⁺), 0)``. The threshold is chosen on the
  first half of the trainings and the rates are counted on the second half (a threshold fitted on the counted
  trainings would void the confidence).

Canaries are input-space: ``"mislabeled"`` (training records whose label is changed to another class, drawn
uniformly) or ``"random"`` (uniform-noise inputs inside the data's bounds with uniform labels), scored by the
model's log-likelihood of the canary's label (minus the loss; Yeom et al. 2018), higher = member; the recipe is
a black box. ``"gradient"`` canaries are white-box (one-run only), for a recipe that exposes its DP-SGD steps
through ``recipe.gradient_canary_space(data)`` and ``recipe.train_with_gradient_canaries(data, seed,
coordinates, included, canary_seed) -> (model, scores)`` (:class:`adverse.defenses.dp.DPRecipe` does): the
"Dirac canaries" of Steinke et al. (§6, after Nasr et al. 2021), each a gradient that is zero except one
coordinate, drawn at random without replacement among the model's parameters, of magnitude the clipping norm
C; an included canary joins each step with the sampling rate q and is added to the sum of clipped gradients
before the noise, exactly as a record would be, so the accountant's ε covers it. Its score is the total movement
of its coordinate against the canary gradient over training (initial − final value).

The claimed ε is read from the trained model's ``dp_epsilon`` / ``dp_delta`` attributes (set by
:func:`adverse.defenses.dp.train_dp`, so any recipe that returns a model trained by it reports its accountant's
ε), else from the recipe's ``epsilon`` / ``delta`` attributes (:class:`adverse.defenses.dp.DPRecipe`), else from
the ``claimed_epsilon`` argument.

References
----------
Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training Run", NeurIPS 2023 (arXiv:2305.08846).
Jagielski, Ullman & Oprea, "Auditing Differentially Private Machine Learning: How Private is Private SGD?",
NeurIPS 2020.
Nasr, Song, Thakurta, Papernot & Carlini, "Adversary Instantiation: Lower Bounds for Differentially Private
Machine Learning", IEEE S&P 2021 (gradient canaries).
Kairouz, Oh & Viswanath, "The Composition Theorem for Differential Privacy", ICML 2015.
Clopper & Pearson, "The use of confidence or fiducial limits illustrated in the case of the binomial",
Biometrika 1934.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import Dataset
from ..errors import InputError
from ..validation import COUNT, COUNT0, Rule, validated

METHODS = ("one-run", "clopper-pearson")
CANARY_KINDS = ("mislabeled", "random", "gradient")

_DELTA = Rule("real", low=0.0, high=1.0, open_high=True)
_DELTA_OR_NONE = Rule("real", low=0.0, high=1.0, open_high=True, none=True)
_COUNT_OR_NONE = Rule("int", low=1, none=True)
_COUNT0_OR_NONE = Rule("int", low=0, none=True)
_EPS_OR_NONE = Rule("real", low=0.0, none=True)
_TOL = Rule("real", low=0.0, high=1.0, open_low=True)
_TRAININGS = Rule("int", low=2)


# ------------------------------------------------------------------------------------------------ the bounds
def _logit(q: float) -> float:
    if q <= 0.5:
        return 0.0
    if q >= 1.0:
        return math.inf
    return math.log(q) - math.log1p(-q)


def _check_counts(m: int, r: int, v: int) -> None:
    if not 0 <= v <= r <= m:
        raise InputError(f"the counts must satisfy 0 ≤ v ≤ r ≤ m (correct guesses ≤ guesses ≤ canaries), got m={m}, "
                         f"r={r}, v={v}; pass v = correct guesses, r = k₊ + k₋ guesses made, m = canaries inserted")


@validated(m=COUNT, r=COUNT0, v=COUNT0, epsilon=Rule("real", low=0.0), delta=_DELTA)
def p_value_one_run(*, m: int, r: int, v: int, epsilon: float, delta: float = 0.0) -> float:
    """Steinke et al.'s bound on ``P[W ≥ v]`` for an ``(ε, δ)``-DP recipe: the p-value of ``v`` correct guesses.

    ``f(v) + 2mδ · max_{i ∈ {1..v}} (f(v − i) − f(v)) / i`` with ``f(u) = P[Binomial(r, e^ε/(1+e^ε)) ≥ u]``
    (Theorem 3.1); for δ = 0 this is the binomial tail ``f(v)``.

    Parameters
    ----------
    m : canaries inserted (each included with probability 1/2).
    r : guesses made (canaries not abstained on), ``r ≤ m``.
    v : correct guesses, ``v ≤ r``.
    epsilon, delta : the ``(ε, δ)``-DP guarantee of the null hypothesis.

    Returns
    -------
    float
        The p-value in [0, 1].

    References
    ----------
    Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training Run", NeurIPS 2023, Theorem 3.1.
    """
    from scipy import stats

    _check_counts(m, r, v)
    q = 1.0 / (1.0 + math.exp(-epsilon)) if epsilon < 700 else 1.0
    tail = float(stats.binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    if delta == 0 or v == 0:
        return min(tail, 1.0)
    # max over i of P[v - i <= W < v] / i, W ~ Binomial(r, q)
    pmf = stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)  # pmf(v-1), pmf(v-2), ..., pmf(0)
    alpha = float(np.max(np.cumsum(pmf) / np.arange(1, v + 1)))
    return min(tail + 2.0 * m * delta * alpha, 1.0)


@validated(m=COUNT, r=COUNT0, v=COUNT0, delta=_DELTA, tol=_TOL)
def eps_lower_bound_one_run(*, m: int, r: int, v: int, confidence: float = 0.95, delta: float = 0.0,
                            tol: float = 1e-6) -> float:
    """The one-run ε lower bound of Steinke, Nasr & Jagielski: the largest ε whose p-value for ``v`` correct
    guesses out of ``r`` is below ``1 − confidence``.

    For δ = 0 it is exact: ``logit(Beta(v, r − v + 1).ppf(1 − confidence))`` (the Clopper–Pearson lower bound on
    the guessing accuracy, mapped through ``q = e^ε / (1 + e^ε)``), e.g. ``r`` guesses all correct give
    ``logit(β^{1/r})`` with ``β = 1 − confidence``. For δ > 0 the p-value of :func:`p_value_one_run` is bisected
    (the returned value is the lower end of a bracket of width ≤ ``tol``, so it errs low).

    Parameters
    ----------
    m : canaries inserted, each with probability 1/2 (the δ term grows with m).
    r : guesses made (``k₊ + k₋``), ``r ≤ m``.
    v : correct guesses, ``v ≤ r``.
    confidence : probability, over the inclusion coins, that the bound does not exceed the true ε.
    delta : the δ of the ``(ε, δ)`` guarantee being audited (0 for pure DP).
    tol : bisection tolerance in ε (δ > 0 only).

    Returns
    -------
    float
        ε_LB ≥ 0 (0 when the guesses are no better than chance at this confidence).

    References
    ----------
    Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training Run", NeurIPS 2023, Theorem 3.1 and
    Algorithm 1 / Appendix (the p-value and its bisection).
    """
    from scipy import stats

    _check_counts(m, r, v)
    beta = 1.0 - confidence
    if v == 0:
        return 0.0
    if delta == 0:
        return _logit(float(stats.beta.ppf(beta, v, r - v + 1)))
    if p_value_one_run(m=m, r=r, v=v, epsilon=0.0, delta=delta) >= beta:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value_one_run(m=m, r=r, v=v, epsilon=hi, delta=delta) < beta:
        lo, hi = hi, 2.0 * hi
        if hi > 1e4:  # pragma: no cover - the tail cannot stay below beta at such ε for finite r
            return lo
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if p_value_one_run(m=m, r=r, v=v, epsilon=mid, delta=delta) < beta:
            lo = mid
        else:
            hi = mid
    return lo


def _cp_upper(k: int, n: int, level: float) -> float:
    """One-sided Clopper–Pearson upper bound on a binomial rate from ``k`` of ``n``, failing with prob ≤ level."""
    from scipy import stats

    return 1.0 if k >= n else float(stats.beta.ppf(1.0 - level, k + 1, n - k))


@validated(false_positives=COUNT0, negatives=COUNT, false_negatives=COUNT0, positives=COUNT, delta=_DELTA)
def eps_lower_bound_clopper_pearson(*, false_positives: int, negatives: int, false_negatives: int,
                                    positives: int, confidence: float = 0.95, delta: float = 0.0) -> float:
    """The ε lower bound of Jagielski, Ullman & Oprea from a distinguisher's error counts over independent
    trainings.

    ``FPR⁺`` and ``FNR⁺`` are one-sided Clopper–Pearson upper bounds at level ``(1 − confidence) / 2`` each
    (so both hold with probability ≥ ``confidence``); an ``(ε, δ)``-DP recipe has ``FPR + e^ε FNR ≥ 1 − δ``
    and ``FNR + e^ε FPR ≥ 1 − δ``, hence
    ``ε_LB = max(log((1 − δ − FNR⁺) / FPR⁺), log((1 − δ − FPR⁺) / FNR⁺), 0)``.
    Jagielski et al.'s Algorithm 2 reports the first term (``log((p̂₁ − δ) / p̂₀)`` with ``p̂₁ = 1 − FNR⁺`` the
    lower bound on the true-positive rate and ``p̂₀ = FPR⁺``); the second is the same inequality with the roles
    of the two datasets swapped.

    Parameters
    ----------
    false_positives : trainings *without* the canary that the distinguisher called "with".
    negatives : trainings without the canary.
    false_negatives : trainings *with* the canary that the distinguisher called "without".
    positives : trainings with the canary.
    confidence : probability that the bound does not exceed the true ε.
    delta : the δ of the guarantee being audited.

    Returns
    -------
    float
        ε_LB ≥ 0.

    References
    ----------
    Jagielski, Ullman & Oprea, "Auditing Differentially Private Machine Learning: How Private is Private SGD?",
    NeurIPS 2020, Algorithm 2. Kairouz, Oh & Viswanath, ICML 2015, Theorem 2.1.
    """
    if false_positives > negatives:
        raise InputError(f"false_positives={false_positives} exceeds negatives={negatives}: count the trainings "
                         "without the canary that were called 'with' among those trainings")
    if false_negatives > positives:
        raise InputError(f"false_negatives={false_negatives} exceeds positives={positives}: count the trainings "
                         "with the canary that were called 'without' among those trainings")
    level = (1.0 - confidence) / 2.0
    fpr = _cp_upper(false_positives, negatives, level)
    fnr = _cp_upper(false_negatives, positives, level)
    best = 0.0
    for num, den in ((1.0 - delta - fnr, fpr), (1.0 - delta - fpr, fnr)):
        if num > 0 and den > 0:
            best = max(best, math.log(num / den))
    return best


# ------------------------------------------------------------------------------------------------ the audit
@dataclass
class DPAuditResult:
    """What :func:`audit_dp` returns.

    Attributes
    ----------
    epsilon_lower : the measured lower bound ε_LB: with probability ≥ ``confidence`` the recipe is not
        ``(ε, delta)``-DP for any ε < ε_LB.
    confidence : the confidence of the bound.
    delta : the δ the bound was computed at.
    method : "one-run" or "clopper-pearson".
    canaries : canaries inserted per training (m for "one-run", 1 for "clopper-pearson").
    guesses : guesses counted (r = k₊ + k₋ for "one-run"; evaluation trainings for "clopper-pearson").
    correct : correct guesses among them.
    claimed_epsilon, claimed_delta : the recipe's own guarantee (its accountant's ε) or None when it states none.
    trainings : trainings run.
    seconds : wall-clock time of the audit, trainings included.
    canary : the kind of canary ("mislabeled", "random" or "gradient").
    seed : the audit's seed.
    details : method-specific counts (k₊, k₋ for "one-run"; the threshold, false positives and negatives for
        "clopper-pearson").
    """

    epsilon_lower: float
    confidence: float
    delta: float
    method: str
    canaries: int
    guesses: int
    correct: int
    claimed_epsilon: float | None
    claimed_delta: float | None
    trainings: int
    seconds: float
    canary: str
    seed: int
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (floats finite or None, no tensors)."""
        def safe(v: Any) -> Any:
            if isinstance(v, dict):
                return {str(k): safe(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [safe(x) for x in v]
            if isinstance(v, (bool, np.bool_)):
                return bool(v)
            if isinstance(v, (int, np.integer)):
                return int(v)
            if isinstance(v, (float, np.floating)):
                return float(v) if math.isfinite(float(v)) else None
            return v

        return safe(asdict(self))

    def summary(self) -> str:
        """One plain-language line."""
        claim = ("no claimed ε" if self.claimed_epsilon is None
                 else f"claimed ε = {self.claimed_epsilon:.3g}")
        return (f"DP audit ({self.method}, {self.canary} canaries): ε ≥ {self.epsilon_lower:.3g} at δ = "
                f"{self.delta:g} with {self.confidence:.0%} confidence ({self.correct}/{self.guesses} correct); "
                f"{claim}")


def _check_recipe_data(recipe: Any, train_data: Any) -> None:
    if not callable(recipe):
        raise InputError(f"recipe must be a training recipe recipe(dataset, seed) -> model (e.g. "
                         f"adverse.zoo.recipe('digits-mlp')), got {type(recipe).__name__}")
    if not isinstance(train_data, Dataset):
        raise InputError(f"train_data must be an adverse.data.Dataset (e.g. adverse.data.digits('train')), got "
                         f"{type(train_data).__name__}")
    if len(train_data) < 2:
        raise InputError(f"train_data holds {len(train_data)} records; the audit needs at least 2")


def _make_canaries(data: Dataset, m: int, kind: str, g: torch.Generator) -> tuple[Dataset, Dataset]:
    """(base training set, m canaries) for ``kind``."""
    c = data.num_classes
    if kind == "mislabeled":
        if m >= len(data):
            raise InputError(f"canaries={m} mislabeled canaries need more than {m} training records, train_data has "
                             f"{len(data)}: pass canaries < {len(data)} or canary='random'")
        order = torch.randperm(len(data), generator=g)
        pick, rest = order[:m], order[m:]
        shift = torch.randint(1, c, (m,), generator=g) if c > 1 else torch.zeros(m, dtype=torch.long)
        y = (data.y[pick] + shift) % max(c, 1)
        canaries = Dataset(data.x[pick].clone(), y.to(data.y.dtype), data.name, c, data.bounds)
        base = Dataset(data.x[rest], data.y[rest], data.name, c, data.bounds, data.note)
        return base, canaries
    lo, hi = data.bounds
    x = lo + (hi - lo) * torch.rand((m, *data.x.shape[1:]), generator=g)
    y = torch.randint(0, c, (m,), generator=g)
    return data, Dataset(x.to(data.x.dtype), y.to(data.y.dtype), data.name, c, data.bounds)


def _join(base: Dataset, extra: Dataset, include: torch.Tensor, g: torch.Generator) -> Dataset:
    x = torch.cat([base.x, extra.x[include]])
    y = torch.cat([base.y, extra.y[include]])
    order = torch.randperm(len(y), generator=g)
    return Dataset(x[order], y[order], base.name, base.num_classes, base.bounds, base.note)


def _scores(model: nn.Module, canaries: Dataset) -> np.ndarray:
    """log p_y of each canary under the model (minus the loss), float64, higher = member."""
    from .threshold import signal

    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            dev = next((p.device for p in model.parameters()), torch.device("cpu"))
            z = model(canaries.x.to(dev)).detach().cpu()
    finally:
        model.train(was)
    return signal(z, canaries.y, "loss").numpy().astype(np.float64)


def _claim(model: nn.Module, recipe: Any) -> tuple[float | None, float | None]:
    for src in (model, recipe):
        eps = getattr(src, "dp_epsilon", None) if src is model else getattr(src, "epsilon", None)
        dlt = getattr(src, "dp_delta", None) if src is model else getattr(src, "delta", None)
        if isinstance(eps, (int, float)) and not isinstance(eps, bool):
            return float(eps), (float(dlt) if isinstance(dlt, (int, float)) and not isinstance(dlt, bool) else None)
    return None, None


def _train(recipe: Callable[[Dataset, int], nn.Module], data: Dataset, seed: int) -> nn.Module:
    from ..zoo import train_with

    return train_with(recipe, data, seed)


def _one_run(recipe, train_data, m, k_plus, k_minus, kind, g, rng, progress):
    base, canaries = _make_canaries(train_data, m, kind, g)
    include = torch.rand(m, generator=g) < 0.5  # S_i = +1 with probability 1/2, independently
    data = _join(base, canaries, include, g)
    model = _train(recipe, data, int(rng.integers(0, 2**31 - 1)))
    if progress is not None:
        progress(1, 1)
    return (model, *_guess(_scores(model, canaries), include.numpy(), k_plus, k_minus, rng))


def _guess(scores: np.ndarray, s: np.ndarray, k_plus: int, k_minus: int,
           rng: np.random.Generator) -> tuple[int, dict[str, Any]]:
    """The one-run audit's guesses: rank the canaries by score (ties broken at random), guess "in" for the k₊
    highest and "out" for the k₋ lowest; the number of correct guesses against the coins ``s``, and the counts."""
    m = len(s)
    order = np.lexsort((rng.random(m), -scores))
    correct = int(s[order[:k_plus]].sum()) + int((~s[order[m - k_minus:]]).sum())
    return correct, {"k_plus": k_plus, "k_minus": k_minus, "included": int(s.sum()),
                     "score_gap": float(scores[s].mean() - scores[~s].mean()) if 0 < s.sum() < m else None}


def _one_run_gradient(recipe, train_data, m, k_plus, k_minus, g, rng, progress):
    space = int(recipe.gradient_canary_space(train_data))
    if m > space:
        raise InputError(f"canaries={m} gradient canaries need as many distinct parameter coordinates, the recipe's "
                         f"model has {space}: pass canaries ≤ {space}")
    coordinates = torch.randperm(space, generator=g)[:m]
    include = torch.rand(m, generator=g) < 0.5  # S_i = +1 with probability 1/2, independently
    model, scores = recipe.train_with_gradient_canaries(train_data, int(rng.integers(0, 2**31 - 1)), coordinates,
                                                        include, int(rng.integers(0, 2**31 - 1)))
    if progress is not None:
        progress(1, 1)
    scores = torch.as_tensor(scores).detach().cpu().double().numpy()
    return (model, *_guess(scores, include.numpy(), k_plus, k_minus, rng))


def _best_threshold(out_scores: np.ndarray, in_scores: np.ndarray, confidence: float, delta: float) -> float:
    """The threshold (guess "with" when score ≥ t) that maximizes the bound on these scores, ties broken by
    fewer errors (so that a selection half too small for a positive bound still yields a sensible threshold)."""
    cand = np.unique(np.concatenate([out_scores, in_scores]))
    mids = np.concatenate([[cand[0] - 1.0], (cand[:-1] + cand[1:]) / 2, [cand[-1] + 1.0]])
    best: tuple[float, int] = (-1.0, 0)
    best_t = float(mids[len(mids) // 2])
    for t in mids:
        fp = int((out_scores >= t).sum())
        fn = int((in_scores < t).sum())
        b = eps_lower_bound_clopper_pearson(false_positives=fp, negatives=len(out_scores), false_negatives=fn,
                                            positives=len(in_scores), confidence=confidence, delta=delta)
        if (b, -(fp + fn)) > best:
            best, best_t = (b, -(fp + fn)), float(t)
    return best_t


def _multi_run(recipe, train_data, trainings, threshold, kind, confidence, delta_for, g, rng, progress):
    base, canaries = _make_canaries(train_data, 1, kind, g)
    with_data = _join(base, canaries, torch.ones(1, dtype=torch.bool), g)
    out_s, in_s, first = [], [], None
    total = 2 * trainings
    for t in range(trainings):
        for inside, store in ((False, out_s), (True, in_s)):
            model = _train(recipe, with_data if inside else base, int(rng.integers(0, 2**31 - 1)))
            first = model if first is None else first
            store.append(float(_scores(model, canaries)[0]))
            if progress is not None:
                progress(len(out_s) + len(in_s), total)
    out_a, in_a = np.array(out_s), np.array(in_s)
    delta = delta_for(first)
    if threshold is None:
        half = trainings // 2
        threshold = _best_threshold(out_a[:half], in_a[:half], confidence, delta)
        out_a, in_a = out_a[half:], in_a[half:]
    fp = int((out_a >= threshold).sum())
    fn = int((in_a < threshold).sum())
    details = {"threshold": float(threshold), "false_positives": fp, "negatives": len(out_a), "false_negatives": fn,
               "positives": len(in_a), "selection_trainings": 2 * (trainings - len(out_a))}
    return first, fp, fn, len(out_a), len(in_a), delta, details


@validated(canaries=_COUNT_OR_NONE, k_plus=_COUNT0_OR_NONE, k_minus=_COUNT0_OR_NONE, delta=_DELTA_OR_NONE,
           trainings=_TRAININGS, claimed_epsilon=_EPS_OR_NONE, threshold=Rule("real", none=True))
def audit_dp(
    recipe: Callable[[Dataset, int], nn.Module],
    train_data: Dataset,
    *,
    method: str = "one-run",
    canaries: int | None = None,
    k_plus: int | None = None,
    k_minus: int | None = None,
    canary: str = "random",
    confidence: float = 0.95,
    delta: float | None = None,
    trainings: int = 20,
    threshold: float | None = None,
    claimed_epsilon: float | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> DPAuditResult:
    """Audit a training recipe's differential privacy: an empirical lower bound on its ε at ``confidence``.

    ``"one-run"`` (Steinke et al. 2023) trains once with ``canaries`` canaries, each included with probability
    1/2, ranks them by the trained model's log-likelihood of their label, guesses "in" for the ``k_plus``
    highest and "out" for the ``k_minus`` lowest, and converts the correct guesses with
    :func:`eps_lower_bound_one_run`. ``"clopper-pearson"`` (Jagielski et al. 2020) trains ``trainings`` times
    without and ``trainings`` times with one canary, picks a score threshold on the first half of each, counts
    the false positives and negatives on the second half and converts them with
    :func:`eps_lower_bound_clopper_pearson`. The guesses are fixed before the bound is computed (no search over
    ``k₊``, ``k₋`` or the threshold on the counted data), so the confidence is honest.

    Parameters
    ----------
    recipe : ``recipe(dataset, seed) -> trained nn.Module`` (e.g. ``adverse.zoo.recipe("digits-mlp")`` or
        :class:`adverse.defenses.dp.DPRecipe`), treated as a black box.
    train_data : the training set the recipe is audited on; "mislabeled" canaries are taken from it (and
        left out of the always-included base set).
    method : "one-run" or "clopper-pearson".
    canaries : m for "one-run" (default 500, or ``min(500, len(train_data) // 3)`` for mislabeled ones, or
        ``min(5000, parameter coordinates)`` for gradient ones); "clopper-pearson" uses one.
    k_plus, k_minus : "one-run" guesses "in" / "out" (default ``m // 8`` each, ``max(1, m // 50)`` for gradient
        canaries, whose scores are noisier; ``k_plus + k_minus ≤ m``). The gradient defaults were chosen on
        audit seed 100 of DPRecipe on digits (benchmarks/BENCHMARKS.md, "DP audit"), not on the reported seeds.
    canary : "random" (uniform noise within the data's bounds with a uniform label; the default, it does not
        take records from the data and the recipe memorizes it most readily), "mislabeled" (a training record
        with another class's label) or "gradient" (white-box Dirac gradient canaries, "one-run" only, for a
        recipe with ``gradient_canary_space`` and ``train_with_gradient_canaries`` such as
        :class:`adverse.defenses.dp.DPRecipe`; scored by the movement of each canary's coordinate).
    confidence : probability that the bound does not exceed the true ε (over the audit's coins).
    delta : the δ to audit at; None: the recipe's claimed δ when it states one, else 0 (pure DP).
    trainings : "clopper-pearson": trainings per side (with and without the canary), ≥ 2.
    threshold : "clopper-pearson": a fixed score threshold (all trainings then count); None chooses it on the
        first half.
    claimed_epsilon : the ε the recipe claims, when neither the model (``dp_epsilon``) nor the recipe
        (``epsilon``) states it.
    seed : seeds the canaries, the inclusion coins, tie-breaking and the training seeds.
    progress : ``progress(done, total)`` after each training.

    Returns
    -------
    DPAuditResult
        ε_LB with the counts, the claimed ε (or None) and the time taken.

    Raises
    ------
    InputError
        Naming the argument and the fix, for an unknown method or canary kind, counts that do not fit the data
        (``canaries`` ≥ records for mislabeled canaries, ``k_plus + k_minus > canaries``), a recipe that is not
        callable or data that is not a Dataset, gradient canaries with "clopper-pearson" or with a recipe that
        does not expose its DP-SGD steps.

    References
    ----------
    Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training Run", NeurIPS 2023.
    Jagielski, Ullman & Oprea, "Auditing Differentially Private Machine Learning: How Private is Private SGD?",
    NeurIPS 2020.
    """
    t0 = time.perf_counter()
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}")
    if canary not in CANARY_KINDS:
        raise InputError(f"canary must be one of {CANARY_KINDS}, got {canary!r}")
    if progress is not None and not callable(progress):
        raise InputError(f"progress must be a function progress(done, total) or None, got {type(progress).__name__}")
    _check_recipe_data(recipe, train_data)
    if canary == "gradient":
        if method != "one-run":
            raise InputError("canary='gradient' is implemented for method='one-run' only; use canary='random' or "
                             "'mislabeled' with method='clopper-pearson'")
        missing = [a for a in ("gradient_canary_space", "train_with_gradient_canaries")
                   if not callable(getattr(recipe, a, None))]
        if missing:
            raise InputError(f"canary='gradient' needs a recipe that exposes its DP-SGD steps ({type(recipe).__name__} "
                             f"lacks {', '.join(missing)}): use adverse.defenses.dp.DPRecipe, or give the recipe "
                             "gradient_canary_space(data) -> int and train_with_gradient_canaries(data, seed, "
                             "coordinates, included, canary_seed) -> (model, scores) (e.g. by passing "
                             "adverse.defenses.dp.GradientCanaries to train_dp), or use canary='random'")
    g = torch.Generator().manual_seed(int(seed))
    rng = np.random.default_rng(int(seed))

    def delta_for(model: nn.Module) -> float:
        if delta is not None:
            return float(delta)
        _, d = _claim(model, recipe)
        return 0.0 if d is None else d

    if method == "one-run":
        if canary == "gradient":
            m = min(5000, int(recipe.gradient_canary_space(train_data))) if canaries is None else int(canaries)
            k_default = max(1, m // 50)
        else:
            m = (500 if canary == "random" else min(500, len(train_data) // 3)) if canaries is None else int(canaries)
            k_default = m // 8
        if m < 1:
            raise InputError(f"train_data has {len(train_data)} records, too few for the default canary count; pass "
                             "canaries=… explicitly (with canary='random' they need not come from the data)")
        kp = k_default if k_plus is None else int(k_plus)
        km = k_default if k_minus is None else int(k_minus)
        if kp + km > m or kp + km == 0:
            raise InputError(f"k_plus + k_minus must lie in [1, canaries={m}], got {kp} + {km}: guess on at most "
                             "the canaries inserted")
        if canary == "gradient":
            model, correct, details = _one_run_gradient(recipe, train_data, m, kp, km, g, rng, progress)
        else:
            model, correct, details = _one_run(recipe, train_data, m, kp, km, canary, g, rng, progress)
        d = delta_for(model)
        eps = eps_lower_bound_one_run(m=m, r=kp + km, v=correct, confidence=confidence, delta=d)
        n_canaries, guesses, n_train = m, kp + km, 1
    else:
        model, fp, fn, neg, pos, d, details = _multi_run(recipe, train_data, trainings, threshold, canary,
                                                         confidence, delta_for, g, rng, progress)
        eps = eps_lower_bound_clopper_pearson(false_positives=fp, negatives=neg, false_negatives=fn, positives=pos,
                                              confidence=confidence, delta=d)
        n_canaries, guesses, correct, n_train = 1, neg + pos, (neg - fp) + (pos - fn), 2 * trainings
    claimed, claimed_delta = _claim(model, recipe)
    if claimed is None and claimed_epsilon is not None:
        claimed = float(claimed_epsilon)
    return DPAuditResult(
        epsilon_lower=float(eps), confidence=float(confidence), delta=float(d), method=method, canaries=n_canaries,
        guesses=int(guesses), correct=int(correct), claimed_epsilon=claimed, claimed_delta=claimed_delta,
        trainings=n_train, seconds=time.perf_counter() - t0, canary=canary, seed=int(seed), details=details,
    )
