"""adverse.privacy.evaluate: known-answer tests on two Gaussians with an analytic ROC, CIs, warnings, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm, rankdata

from adverse.errors import AdverseError
from adverse.privacy import evaluate


def gaussians(mu: float, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Members ~ N(mu, 1), non-members ~ N(0, 1): ROC TPR(f) = 1 − Φ(Φ⁻¹(1 − f) − mu), AUC = Φ(mu/√2)."""
    g = torch.Generator().manual_seed(seed)
    s = torch.cat([torch.randn(n, generator=g, dtype=torch.float64) + mu, torch.randn(n, generator=g, dtype=torch.float64)])
    m = torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)])
    return s, m


def analytic_tpr(mu: float, f: float) -> float:
    return float(norm.sf(norm.isf(f) - mu))


@pytest.mark.parametrize("mu", [0.0, 1.0, 2.5])
def test_known_answer_two_gaussians(mu):
    n = 20_000
    s, m = gaussians(mu, n, seed=1)
    e = evaluate(s, m, fprs=(0.001, 0.01, 0.1), n_bootstrap=0)
    auc_se = math.sqrt((2 * n + 1) / (12 * n * n)) * 1.5  # null SE, generous for mu > 0
    assert e.auc == pytest.approx(norm.cdf(mu / math.sqrt(2)), abs=4 * auc_se)
    assert e.balanced_accuracy == pytest.approx(norm.cdf(mu / 2), abs=0.01 + (0.01 if mu == 0 else 0))
    for f, tol in ((0.001, 0.03), (0.01, 0.02), (0.1, 0.015)):
        assert e.tpr_at_fpr[f] == pytest.approx(analytic_tpr(mu, f), abs=tol + 2 * f), f
    assert e.n_members == e.n_nonmembers == n and not e.warnings


def test_bootstrap_interval_covers_truth_and_has_the_right_width():
    mu, n = 1.0, 1000
    s, m = gaussians(mu, n, seed=2)
    e = evaluate(s, m, n_bootstrap=400, seed=0)
    lo, hi = e.ci["auc"]
    truth = norm.cdf(mu / math.sqrt(2))
    assert lo < truth < hi and lo < e.auc < hi
    # Hanley & McNeil standard error of the AUC sets the expected width 2 · 1.96 · SE
    q1, q2 = truth / (2 - truth), 2 * truth**2 / (1 + truth)
    se = math.sqrt((truth * (1 - truth) + (n - 1) * (q1 - truth**2) + (n - 1) * (q2 - truth**2)) / n**2)
    assert 0.7 * 3.92 * se < hi - lo < 1.3 * 3.92 * se
    assert e.ci["tpr@0.01"][0] <= e.tpr_at_fpr[0.01] <= e.ci["tpr@0.01"][1]
    assert set(e.ci) == {"auc", "balanced_accuracy", "tpr@0.001", "tpr@0.01"}


def test_exact_roc_on_a_hand_computed_example():
    s = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], dtype=torch.float64)
    m = torch.tensor([True, False, True, True, False, False])
    e = evaluate(s, m, fprs=(0.0, 0.34, 0.5), n_bootstrap=0)
    # pairs (member > non-member): 0.9 beats 3, 0.7 beats 2, 0.6 beats 2 → 7 of 9
    assert e.auc == pytest.approx(7 / 9)
    assert e.tpr_at_fpr[0.0] == pytest.approx(1 / 3)
    assert e.tpr_at_fpr[0.34] == pytest.approx(1.0)
    assert e.balanced_accuracy == pytest.approx((1 + 1 - 1 / 3) / 2)
    assert e.fpr[0] == 0 and e.tpr[-1] == 1


def test_ties_count_one_half():
    s = torch.zeros(10, dtype=torch.float64)
    m = torch.arange(10) < 5
    e = evaluate(s, m, n_bootstrap=0)
    assert e.auc == 0.5 and e.tpr_at_fpr[0.01] == 0.0


def test_warns_when_fpr_is_below_resolution():
    s, m = gaussians(1.0, 50, seed=3)
    with pytest.warns(UserWarning, match="below the resolution 1/50"):
        e = evaluate(s, m, fprs=(0.001, 0.01), n_bootstrap=0)
    assert len(e.warnings) == 2  # 0.001 and 0.01 are both below 1/50
    s, m = gaussians(1.0, 500, seed=3)
    e = evaluate(s, m, fprs=(0.001, 0.01), n_bootstrap=0)
    assert len(e.warnings) == 1 and "0.001" in e.warnings[0]


def test_log_log_figure(tmp_path):
    s, m = gaussians(1.0, 500, seed=4)
    e = evaluate(s, m, n_bootstrap=0)
    fig = e.figure(tmp_path / "roc.png", label="gauss")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert (tmp_path / "roc.png").stat().st_size > 1000
    e.figure(ax=ax, label="again")  # overlay on the same axes
    assert len(ax.lines) == 3


def test_summary_is_json_ready():
    import json

    s, m = gaussians(1.0, 300, seed=5)
    json.dumps(evaluate(s, m, n_bootstrap=50, fprs=(0.01,)).summary())


@pytest.mark.parametrize("scores, labels, match", [
    (torch.zeros(4), torch.tensor([True, False, True]), "shape"),
    (torch.zeros(4), torch.tensor([1, 0, 1, 0]), "boolean"),
    (torch.tensor([0.1, float("nan"), 0.3, 0.4]), torch.tensor([True, False, True, False]), "NaN"),
    (torch.zeros(3), torch.ones(3, dtype=torch.bool), "both"),
    (torch.zeros(2, 2), torch.ones(2, 2, dtype=torch.bool), "1-D"),
])
def test_bad_input(scores, labels, match):
    with pytest.raises(AdverseError, match=match):
        evaluate(scores, labels)


def test_bad_parameters():
    s, m = gaussians(1.0, 50, seed=0)
    with pytest.raises(AdverseError, match="fprs"):
        evaluate(s, m, fprs=(1.5,))
    with pytest.raises(AdverseError, match="n_bootstrap"):
        evaluate(s, m, n_bootstrap=-1)


@pytest.mark.filterwarnings("ignore:FPR")
@settings(max_examples=examples(40), deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=4, max_size=60), st.integers(0, 2**16))
def test_properties_monotone_invariance_and_symmetry(values, seed):
    s = np.asarray(values)
    m = np.random.default_rng(seed).permutation(np.arange(len(s)) % 2 == 0)
    e = evaluate(s, m, fprs=(0.0, 0.1, 0.5, 1.0), n_bootstrap=0)
    e_mono = evaluate(rankdata(s, method="dense") * 3.0 - 7.0, m, fprs=(0.0, 0.1, 0.5, 1.0), n_bootstrap=0)
    e_neg = evaluate(-s, m, n_bootstrap=0)
    assert e.auc == pytest.approx(e_mono.auc, abs=1e-12)  # an order-preserving map (ties kept) keeps the ROC
    assert e.tpr_at_fpr == e_mono.tpr_at_fpr
    assert e.auc + e_neg.auc == pytest.approx(1.0, abs=1e-12)
    t = [e.tpr_at_fpr[f] for f in (0.0, 0.1, 0.5, 1.0)]
    assert t == sorted(t) and t[-1] == 1.0
    assert 0.5 <= e.balanced_accuracy <= 1.0
