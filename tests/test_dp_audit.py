"""DP auditing (adverse.privacy.audit_dp): the bounds against their closed forms, their soundness on mechanisms
with a known ε, and end-to-end audits of a non-DP and a DP-SGD digits recipe."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st

import adverse as adv
from adverse.data import digits
from adverse.errors import InputError
from adverse.privacy import DPAuditResult, audit_dp, eps_lower_bound_clopper_pearson, eps_lower_bound_one_run
from adverse.privacy.dp_audit import p_value_one_run


def one_run(m: int, r: int, v: int, **kw) -> float:
    """:func:`eps_lower_bound_one_run` with the counts in paper order (m canaries, r guesses, v correct)."""
    return eps_lower_bound_one_run(m=m, r=r, v=v, **kw)


def cp_bound(fp: int, negatives: int, fn: int, positives: int, **kw) -> float:
    """:func:`eps_lower_bound_clopper_pearson` with the counts positionally."""
    return eps_lower_bound_clopper_pearson(false_positives=fp, negatives=negatives, false_negatives=fn,
                                           positives=positives, **kw)


def p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    return p_value_one_run(m=m, r=r, v=v, epsilon=eps, delta=delta)


def logit(q: float) -> float:
    return math.log(q / (1 - q))


# ------------------------------------------------------------------------------------------- oracles
@pytest.mark.parametrize("r", [1, 10, 100, 1000])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_all_correct_gives_the_closed_form(r: int, confidence: float) -> None:
    # P[Binomial(r, q) >= r] = q^r < 1 - c  <=>  q < (1 - c)^(1/r): eps_LB = logit((1 - c)^(1/r))
    expected = max(0.0, logit((1 - confidence) ** (1 / r)))
    assert one_run(r, r, r, confidence=confidence) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    # abstentions do not change the δ = 0 bound: only the guesses made count
    assert one_run(10 * r, r, r, confidence=confidence) == pytest.approx(expected, rel=1e-9,
                                                                                         abs=1e-12)


@pytest.mark.parametrize("r", [2, 10, 100, 1000])
def test_half_correct_or_none_gives_zero(r: int) -> None:
    assert one_run(r, r, r // 2) == 0.0
    assert one_run(r, r, 0) == 0.0
    assert one_run(r, r, r // 2, delta=1e-3) == 0.0


@pytest.mark.parametrize("m, r, v", [(1000, 200, 180), (500, 124, 119), (10000, 1000, 880)])
def test_the_bound_is_where_the_p_value_crosses_one_minus_confidence(m: int, r: int, v: int) -> None:
    for delta in (0.0, 1e-6, 1e-5):
        eps = one_run(m, r, v, confidence=0.95, delta=delta)
        assert eps > 0
        assert p_value(m, r, v, eps * (1 - 1e-4), delta) < 0.05 + 1e-9
        assert p_value(m, r, v, eps + 1e-3, delta) >= 0.05
    # δ > 0 weakens the bound
    assert (one_run(m, r, v, delta=1e-4) <= one_run(m, r, v, delta=1e-6)
            <= one_run(m, r, v))


def test_the_p_value_with_delta_matches_steinke_et_al_theorem() -> None:
    # f(v) + 2 m δ max_i (f(v - i) - f(v)) / i with f(u) = P[Binomial(r, q) >= u], by hand
    from scipy import stats

    m, r, v, eps, delta = 300, 40, 33, 1.0, 1e-4
    q = math.exp(eps) / (1 + math.exp(eps))

    def f(u: int) -> float:
        return float(stats.binom.sf(u - 1, r, q))

    expected = f(v) + 2 * m * delta * max((f(v - i) - f(v)) / i for i in range(1, v + 1))
    assert p_value(m, r, v, eps, delta) == pytest.approx(expected, rel=1e-9)
    assert p_value(m, r, v, eps, 0.0) == pytest.approx(f(v), rel=1e-12)


@pytest.mark.parametrize("n", [10, 50, 1000])
@pytest.mark.parametrize("delta", [0.0, 1e-5])
def test_clopper_pearson_closed_form(n: int, delta: float) -> None:
    # no errors: FPR+ = FNR+ = 1 - (α/2)^(1/n), the one-sided Clopper-Pearson bound for 0 of n
    alpha = 0.05
    u = 1 - (alpha / 2) ** (1 / n)
    expected = max(0.0, math.log((1 - delta - u) / u))
    assert cp_bound(0, n, 0, n, confidence=0.95, delta=delta) == pytest.approx(expected)
    # a distinguisher that errs half the time proves nothing
    assert cp_bound(n // 2, n, n // 2, n, delta=delta) == 0.0
    # swapping the roles of the two error rates gives the same bound (the two inequalities of DP)
    assert (cp_bound(1, n, 3, n, delta=delta)
            == pytest.approx(cp_bound(3, n, 1, n, delta=delta)))


def test_clopper_pearson_matches_jagielski_et_al_algorithm() -> None:
    # Algorithm 2: p0 = CP upper of FP/T, p1 = CP lower of TP/T, eps = log((p1 - δ) / p0), when it is the larger
    from scipy import stats

    t, fp, fn, delta = 500, 5, 150, 1e-5
    p0 = stats.beta.ppf(1 - 0.025, fp + 1, t - fp)
    p1 = stats.beta.ppf(0.025, t - fn, fn + 1)
    assert cp_bound(fp, t, fn, t, delta=delta) == pytest.approx(math.log((p1 - delta) / p0))


# ------------------------------------------------------------------------------------------- soundness
def rr_bounds(eps: float, m: int, seeds: range, confidence: float = 0.95) -> np.ndarray:
    """One-run bounds on randomized response of each inclusion bit (exactly ε-DP), guessing on every canary."""
    q = 1 / (1 + math.exp(-eps))
    out = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        s = rng.random(m) < 0.5
        y = np.where(rng.random(m) < q, s, ~s)
        out.append(one_run(m, m, int((y == s).sum()), confidence=confidence))
    return np.array(out)


@pytest.mark.parametrize("eps", [0.5, 2.0])
def test_randomized_response_bound_is_sound_and_tight(eps: float) -> None:
    # W ~ Binomial(m, q) exactly, so ε_LB > ε happens with probability ≤ 5 % per seed: over 200 seeds at most
    # 20 (P[Binomial(200, 0.05) > 20] < 0.2 %); the median reaches 80 % of ε with m = 2000.
    b = rr_bounds(eps, 2000, range(200))
    assert (b > eps).sum() <= 20
    assert np.median(b) >= 0.8 * eps
    # at 99.9 % confidence not one of the 200 seeds exceeds ε
    assert (rr_bounds(eps, 2000, range(200), confidence=0.999) <= eps).all()


def test_gaussian_mechanism_bounds_stay_below_its_epsilon() -> None:
    # s_i + N(0, σ²) with σ = 1 is (ε(δ), δ)-DP per canary with ε(1e-5) = 4.377 (Balle & Wang 2018, Theorem 8)
    sigma, delta, eps_true = 1.0, 1e-5, 4.377
    one, cp = [], []
    for seed in range(30):
        rng = np.random.default_rng(seed)
        m, k = 4000, 200
        s = rng.random(m) < 0.5
        order = np.argsort(-(s + sigma * rng.standard_normal(m)))
        v = int(s[order[:k]].sum() + (~s[order[-k:]]).sum())
        one.append(one_run(m, 2 * k, v, delta=delta))
        t = 500
        out_s, in_s = sigma * rng.standard_normal(t), 1 + sigma * rng.standard_normal(t)
        thr = 2.5  # fixed in advance
        cp.append(cp_bound(int((out_s >= thr).sum()), t, int((in_s < thr).sum()), t,
                                                  delta=delta))
    assert max(one) <= eps_true and max(cp) <= eps_true
    assert np.median(one) > 1.0 and np.median(cp) > 0.5  # and they see something


# ------------------------------------------------------------------------------------------- properties
@settings(max_examples=examples(60), deadline=None)
@given(r=st.integers(1, 400), frac=st.floats(0, 1), extra=st.integers(0, 400),
       delta=st.sampled_from([0.0, 1e-6, 1e-4]), confidence=st.sampled_from([0.9, 0.95, 0.99]))
def test_one_run_bound_is_monotone_in_correct_guesses(r: int, frac: float, extra: int, delta: float,
                                                      confidence: float) -> None:
    m = r + extra
    v = int(frac * r)
    a = one_run(m, r, v, confidence=confidence, delta=delta)
    b = one_run(m, r, min(v + 1, r), confidence=confidence, delta=delta)
    assert 0.0 <= a <= b + 1e-6
    assert math.isfinite(b)
    # a higher confidence never gives a larger bound
    assert one_run(m, r, v, confidence=0.999, delta=delta) <= a + 1e-6


@settings(max_examples=examples(60), deadline=None)
@given(n0=st.integers(1, 300), n1=st.integers(1, 300), f0=st.floats(0, 1), f1=st.floats(0, 1),
       delta=st.sampled_from([0.0, 1e-5, 0.01]))
def test_clopper_pearson_bound_shrinks_with_errors(n0: int, n1: int, f0: float, f1: float, delta: float) -> None:
    fp, fn = int(f0 * n0), int(f1 * n1)
    b = cp_bound(fp, n0, fn, n1, delta=delta)
    assert b >= 0.0 and math.isfinite(b)
    assert cp_bound(min(fp + 1, n0), n0, fn, n1, delta=delta) <= b + 1e-12
    assert cp_bound(fp, n0, min(fn + 1, n1), n1, delta=delta) <= b + 1e-12


# ------------------------------------------------------------------------------------------- bad input
def test_bad_counts_and_arguments_are_refused() -> None:
    with pytest.raises(InputError, match=r"0 ≤ v ≤ r ≤ m"):
        one_run(10, 5, 6)
    with pytest.raises(InputError, match=r"0 ≤ v ≤ r ≤ m"):
        one_run(10, 11, 6)
    with pytest.raises(InputError, match=r"false_positives=6 exceeds negatives=5"):
        cp_bound(6, 5, 0, 5)
    with pytest.raises(InputError, match=r"confidence must be"):
        one_run(10, 10, 10, confidence=1.0)
    tr = digits("train").subset(60)
    rec = adv.zoo.recipe("digits-mlp")
    with pytest.raises(InputError, match=r"method must be one of"):
        audit_dp(rec, tr, method="lira")
    with pytest.raises(InputError, match=r"canary must be one of"):
        audit_dp(rec, tr, canary="input")
    with pytest.raises(InputError, match=r"k_plus \+ k_minus must lie in \[1, canaries=10\]"):
        audit_dp(rec, tr, canaries=10, k_plus=6, k_minus=5)
    with pytest.raises(InputError, match=r"canaries=60 mislabeled canaries need more than 60"):
        audit_dp(rec, tr, canaries=60, canary="mislabeled")
    with pytest.raises(InputError, match=r"recipe must be a training recipe"):
        audit_dp("digits-mlp", tr)
    with pytest.raises(InputError, match=r"train_data must be an adverse.data.Dataset"):
        audit_dp(rec, (tr.x, tr.y))
    with pytest.raises(InputError, match=r"trainings must be"):
        audit_dp(rec, tr, method="clopper-pearson", trainings=1)


# ------------------------------------------------------------------------------------------- end to end
def test_audit_of_a_non_dp_recipe_finds_leakage() -> None:
    calls = []
    r = audit_dp(adv.zoo.recipe("digits-mlp"), digits("train"), seed=0, progress=lambda d, t: calls.append((d, t)))
    assert isinstance(r, DPAuditResult)
    assert r.method == "one-run" and r.canaries == 500 and r.guesses == 124 and r.trainings == 1
    assert r.claimed_epsilon is None and r.delta == 0.0
    assert r.epsilon_lower > 1.5, r  # 2.40 at seed 0 (benchmarks/BENCHMARKS.md, "DP audit")
    assert calls == [(1, 1)]
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert d["epsilon_lower"] == pytest.approx(r.epsilon_lower) and d["details"]["k_plus"] == 62
    assert "ε ≥" in r.summary()


def test_audit_of_a_dp_sgd_recipe_stays_below_its_claim() -> None:
    from adverse.defenses.dp import DPRecipe

    rec = DPRecipe(1.0, 1e-5, epochs=5)
    r = audit_dp(rec, digits("train"), canaries=200, seed=0)
    assert r.claimed_epsilon == pytest.approx(1.0, abs=0.05) and r.claimed_delta == 1e-5
    assert r.delta == 1e-5  # audited at the claimed δ
    assert r.epsilon_lower <= r.claimed_epsilon
    # the recipe object states the target too, and an explicit δ wins
    r2 = audit_dp(rec, digits("train").subset(300), canaries=50, delta=0.0, seed=1)
    assert r2.delta == 0.0 and r2.claimed_epsilon is not None and r2.epsilon_lower <= r2.claimed_epsilon


def test_clopper_pearson_audit_runs_end_to_end() -> None:
    torch.manual_seed(0)
    calls = []
    r = audit_dp(adv.zoo.recipe("digits-mlp"), digits("train").subset(300), method="clopper-pearson", trainings=4,
                 seed=0, progress=lambda d, t: calls.append((d, t)))
    assert r.trainings == 8 and r.canaries == 1 and r.guesses == 4
    assert r.details["negatives"] == 2 and r.details["positives"] == 2
    assert calls[-1] == (8, 8) and len(calls) == 8
    assert r.epsilon_lower == 0.0  # 2 + 2 counted trainings cannot prove anything at 95 %
    # with a fixed threshold every training counts
    r2 = audit_dp(adv.zoo.recipe("digits-mlp"), digits("train").subset(300), method="clopper-pearson",
                  trainings=2, threshold=-1.0, seed=0)
    assert r2.details["negatives"] == 2 and r2.details["selection_trainings"] == 0
    json.dumps(r2.to_dict(), allow_nan=False)


# ------------------------------------------------------------------------------------------- gradient canaries
def _zero_feature_data(n: int = 120) -> adv.data.Dataset:
    """Digits with input feature 0 set to 0 in every record: the data's gradient on the first layer's column 0 is
    exactly zero, and a change of that column changes no output."""
    tr = digits("train").subset(n)
    x = tr.x.clone()
    x[:, 0] = 0.0
    return adv.data.Dataset(x, tr.y, tr.name, tr.num_classes, tr.bounds)


def test_gradient_canaries_are_inserted_exactly() -> None:
    # two trainings with the same seeds, canaries all in vs all out, on coordinates W1[h, 0] that the data cannot
    # move: the runs differ only there, by exactly lr · C / B per step the canary joined (noise, data sampling and
    # data gradients are identical), and each canary joins a step with probability q
    from adverse.defenses.dp import GradientCanaries, train_dp
    from adverse.zoo import MLP

    data = _zero_feature_data()
    hidden, lr, c, b, epochs = 32, 0.5, 0.7, 30, 6
    coords = torch.arange(hidden) * 64  # W1[h, 0], flat index h · 64 in the first Linear's weight

    def run(included: torch.Tensor):
        torch.manual_seed(0)
        model = MLP(64, 10, (hidden,))
        before = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
        r = train_dp(model, data, target_epsilon=2.0, delta=1e-3, epochs=epochs, max_grad_norm=c, lr=lr,
                     batch_size=b, seed=5, gradient_canaries=GradientCanaries(coords, included, seed=9))
        return before, torch.cat([p.detach().flatten() for p in r.model.parameters()]), r

    before, with_c, r_in = run(torch.ones(hidden, dtype=torch.bool))
    before2, without, r_out = run(torch.zeros(hidden, dtype=torch.bool))
    assert torch.equal(before, before2)
    counts = r_in.canary_steps
    assert r_out.canary_steps.sum() == 0 and r_in.epsilon == r_out.epsilon  # the accountant's ε is unchanged
    expected_expected_batch = int(len(data) * r_in.sample_rate)  # Opacus divides the noisy sum by it
    diff = with_c - without
    other = torch.ones_like(diff, dtype=torch.bool)
    other[coords] = False
    assert torch.equal(diff[other], torch.zeros_like(diff[other]))
    expected = -lr * c * counts.double() / expected_expected_batch
    assert torch.allclose(diff[coords].double(), expected, atol=1e-5), (diff[coords], expected)
    # Poisson participation at rate q: mean count q · steps (32 canaries × 24 steps, q = 1/4: 192 ± 12)
    q, steps = r_in.sample_rate, r_in.steps
    assert abs(counts.sum().item() - q * steps * hidden) < 4 * math.sqrt(q * (1 - q) * steps * hidden)
    assert (counts > 0).any() and (counts < steps).all()


def test_gradient_canary_scores_are_the_movement_against_the_canary() -> None:
    from adverse.defenses.dp import DPRecipe

    data = _zero_feature_data()
    rec = DPRecipe(1e4, 1e-3, epochs=4, batch_size=len(data), hidden=(16,))  # q = 1: every canary every step
    assert rec.gradient_canary_space(data) == 64 * 16 + 16 + 16 * 10 + 10
    coords = torch.arange(16) * 64
    inc = torch.arange(16) % 2 == 0
    model, scores = rec.train_with_gradient_canaries(data, 3, coords, inc, canary_seed=1)
    # at ε = 10⁴ the noise is small and the data cannot move these coordinates: included canaries score
    # lr · C / B per step (4 steps), excluded ones about 0
    assert scores.dtype == torch.float64 and scores.shape == (16,)
    per_step = rec.lr * rec.max_grad_norm / len(data)
    assert torch.allclose(scores[inc], torch.full((8,), 4 * per_step, dtype=torch.float64), atol=0.25 * per_step)
    assert (scores[~inc].abs() < 0.25 * per_step).all(), scores / per_step
    assert model.dp_epsilon <= 1e4 * 1.01


def test_gradient_canary_audit_is_sound_and_sees_more_than_input_canaries() -> None:
    from adverse.defenses.dp import DPRecipe

    tr = digits("train").subset(400)
    for eps in (1.0, 8.0):
        rec = DPRecipe(eps, 1e-5, epochs=4)
        for seed in (0, 1):
            r = audit_dp(rec, tr, canary="gradient", canaries=3000, seed=seed)
            assert r.canary == "gradient" and r.canaries == 3000 and r.guesses == 120
            assert r.claimed_epsilon == pytest.approx(eps, abs=0.05) and r.delta == 1e-5
            assert 0.0 <= r.epsilon_lower <= r.claimed_epsilon, r
            if eps == 8.0:
                assert r.epsilon_lower > 0.5, r  # the white-box canaries see the updates
    json.dumps(r.to_dict(), allow_nan=False)


def test_gradient_canaries_need_a_recipe_that_exposes_its_steps() -> None:
    from adverse.defenses.dp import DPRecipe, GradientCanaries, train_dp
    from adverse.zoo import MLP

    tr = digits("train").subset(60)
    with pytest.raises(InputError, match=r"canary='gradient' needs a recipe .*lacks gradient_canary_space.*DPRecipe"):
        audit_dp(adv.zoo.recipe("digits-mlp"), tr, canary="gradient")
    with pytest.raises(InputError, match=r"method='one-run' only"):
        audit_dp(DPRecipe(1.0, 1e-3), tr, canary="gradient", method="clopper-pearson")
    with pytest.raises(InputError, match=r"canaries=100000 gradient canaries need as many distinct"):
        audit_dp(DPRecipe(1.0, 1e-3), tr, canary="gradient", canaries=100000)
    kw = {"target_epsilon": 1.0, "delta": 1e-3, "epochs": 1, "batch_size": 10}
    for canaries, match in [
        (GradientCanaries(torch.tensor([1, 1]), torch.tensor([True, False])), r"must be distinct"),
        (GradientCanaries(torch.tensor([0, 10**7]), torch.tensor([True, False])), r"must lie in \[0, "),
        (GradientCanaries(torch.tensor([0.0, 1.0]), torch.tensor([True, False])), r"1-D integer tensor"),
        (GradientCanaries(torch.tensor([0, 1]), torch.tensor([1, 0])), r"bool tensor with one coin"),
        ((torch.tensor([0]), torch.tensor([True])), r"must be an adverse.defenses.dp.GradientCanaries"),
    ]:
        with pytest.raises(InputError, match=match):
            train_dp(MLP(64, 10, (8,)), tr, gradient_canaries=canaries, **kw)
