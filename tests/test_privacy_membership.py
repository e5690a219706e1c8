"""Membership inference on the synthetic "Purchase-like" task (reference note §6, task B) and contract tests.

One module-scoped set of 10 reference MLPs (complementary pairs over a 2,000-point pool) serves every attack;
model 0 is the target and its partner is left out, so 8 models are the references. Data: the note's recipe
with 4,000 samples instead of 2,000 (pool = first 2,000; RMIA population = next 1,000; the disjoint-data
baseline model trains on the last 1,000).
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from adverse.data import Dataset, purchase_like
from adverse.errors import AdverseError, ModelError
from adverse.privacy import (
    LiRA,
    ReferenceModels,
    ShadowAttack,
    evaluate,
    lira,
    loss_attack,
    rmia,
    shadow_attack,
    threshold_attack,
)
from adverse.privacy._signals import scaled_logit
from adverse.privacy.rmia import pairwise_score
from adverse.privacy.threshold import signal
from adverse.zoo import MLP, train_classifier

N_POOL = 2000


def train_mlp(x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
    return train_classifier(MLP(100, 20, (128,)), Dataset(x, y, "purchase-like", 20), epochs=20, lr=3e-3,
                            batch_size=128, seed=seed)


@pytest.fixture(scope="module")
def task():
    x, y = purchase_like()
    refs = ReferenceModels(train_mlp, x[:N_POOL], y[:N_POOL], n=10, seed=0)
    target, is_member, others = refs.leave_out(0)
    baseline = refs.train_disjoint(x[3000:], y[3000:])
    return {"x": x[:N_POOL], "y": y[:N_POOL], "pop": (x[2000:3000], y[2000:3000]), "refs": refs, "target": target,
            "is_member": is_member, "others": others, "baseline": baseline, "index": torch.arange(N_POOL)}


@pytest.fixture(scope="module")
def results(task):
    t = task
    kw = {"baseline": t["baseline"]}
    ref_kw = {"pool_index": t["index"], **kw}
    out = {
        "loss": loss_attack(t["target"], t["x"], t["y"], **kw),
        "modified_entropy": threshold_attack(t["target"], t["x"], t["y"], signal="modified_entropy", **kw),
        "entropy": threshold_attack(t["target"], t["x"], t["y"], signal="entropy", **kw),
        "confidence_classwise": threshold_attack(t["target"], t["x"], t["y"], signal="confidence",
                                                 refs=t["others"], class_dependent=True, **kw),
        "lira_online": lira(t["target"], t["x"], t["y"], t["others"], **ref_kw),
        "lira_online_fixed": lira(t["target"], t["x"], t["y"], t["others"], fixed_variance=True, **ref_kw),
        "lira_offline_fixed": lira(t["target"], t["x"], t["y"], t["others"], online=False, fixed_variance=True, **kw),
        "rmia_offline": rmia(t["target"], t["x"], t["y"], t["others"], population=t["pop"], **kw),
        "shadow": shadow_attack(t["target"], t["x"], t["y"], t["others"], **kw),
    }
    return {k: (r, evaluate(r.scores, t["is_member"], n_bootstrap=0),
                evaluate(r.baseline_scores, t["is_member"], n_bootstrap=0)) for k, r in out.items()}


def test_report(results, capsys):
    with capsys.disabled():
        print("\nattack                 AUC    TPR@1%  TPR@0.1%  baseline AUC")
        for k, (_, e, b) in results.items():
            print(f"{k:22s} {e.auc:.3f}  {e.tpr_at_fpr[0.01]:.3f}   {e.tpr_at_fpr[0.001]:.3f}     {b.auc:.3f}")


def test_loss_attack_leaks_on_purchase_like(results):
    assert results["loss"][1].auc >= 0.70


def test_lira_online_beats_loss(results):
    loss = results["loss"][1]
    for name in ("lira_online", "lira_online_fixed"):  # per-example and fixed variance
        assert results[name][1].auc >= loss.auc + 0.05, name
        assert results[name][1].tpr_at_fpr[0.01] >= 5 * max(loss.tpr_at_fpr[0.01], 1e-3), name


def test_rmia_beats_loss_at_low_fpr(results):
    r, e, _ = results["rmia_offline"]
    assert e.tpr_at_fpr[0.01] > results["loss"][1].tpr_at_fpr[0.01]
    assert e.auc > results["loss"][1].auc
    assert r.params["offline_a"] in [i / 10 for i in range(11)] and r.params["temperature"] in (1.0, 2.0, 4.0, 8.0)
    assert len(r.params["tuning_auc"]) == 44


def test_other_attacks_leak(results):
    for name in ("modified_entropy", "entropy", "confidence_classwise", "lira_offline_fixed", "shadow"):
        assert results[name][1].auc >= 0.65, name


def test_every_disjoint_data_baseline_is_at_chance(results):
    # null SE of the AUC with 1,000 + 1,000 points is 0.013: ±0.05 is ≈ 4 SE
    for name, (r, _, b) in results.items():
        assert r.baseline_scores is not None and r.baseline_note == ""
        assert abs(b.auc - 0.5) <= 0.05, (name, b.auc)


def test_complementary_pairs_cover_every_point(task):
    refs = task["refs"]
    assert refs.masks.shape == (10, N_POOL)
    assert torch.equal(refs.masks.sum(0), torch.full((N_POOL,), 5))
    assert torch.equal(refs.masks[0], ~refs.masks[1])
    assert torch.equal(refs.masks.sum(1), torch.full((10,), N_POOL // 2))
    uncovered_in, uncovered_out = refs.uncovered()
    assert uncovered_in.numel() == 0 and uncovered_out.numel() == 0
    others = task["others"]
    assert len(others) == 8 and torch.equal(others.masks.sum(0), torch.full((N_POOL,), 4))


def test_models_and_outputs_are_cached(task):
    refs = task["refs"]
    assert refs.models is refs.models
    z1, z2 = refs.logits(task["x"]), refs.logits(task["x"].clone())
    assert z1 is z2 and z1.dtype == torch.float64
    assert task["others"].models[0] is refs.models[2]


def test_target_state_left_as_found(task):
    target = task["target"]
    target.train()
    flags = [p.requires_grad for p in target.parameters()]
    before = [p.detach().clone() for p in target.parameters()]
    lira(target, task["x"][:50], task["y"][:50], task["others"], pool_index=task["index"][:50])
    rmia(target, task["x"][:50], task["y"][:50], task["others"], population=task["pop"], offline_a=0.3, temperature=2.0)
    loss_attack(target, task["x"][:50], task["y"][:50])
    shadow_attack(target, task["x"][:50], task["y"][:50], task["others"])
    threshold_attack(target, task["x"][:50], task["y"][:50], signal="confidence", refs=task["others"],
                     class_dependent=True)
    assert target.training and [p.requires_grad for p in target.parameters()] == flags
    assert all(p.grad is None for p in target.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, target.parameters()))
    target.eval()


def test_fewer_references_than_needed(task):
    x, y = task["x"][:20], task["y"][:20]
    single = ReferenceModels._view(task["refs"], [2])
    with pytest.raises(AdverseError, match="reference models"):
        lira(task["target"], x, y, single, pool_index=task["index"][:20])
    with pytest.raises(AdverseError, match="reference models"):
        rmia(task["target"], x, y, single, population=task["pop"])  # choosing (a, T) needs a second model
    with pytest.raises(AdverseError, match="reference models"):
        shadow_attack(task["target"], x, y, single)
    r = rmia(task["target"], x, y, single, population=task["pop"], offline_a=0.3, temperature=2.0)
    assert torch.isfinite(r.scores).all()  # offline RMIA with given (a, T) works with one reference


def test_bad_query_inputs(task):
    t = task
    with pytest.raises(AdverseError, match="pool_index"):
        lira(t["target"], t["x"][:5], t["y"][:5], t["others"], pool_index=torch.arange(4))
    with pytest.raises(AdverseError, match="pool_index"):
        lira(t["target"], t["x"][:5], t["y"][:5], t["others"])  # online needs IN models
    with pytest.raises(AdverseError, match="finite"):
        loss_attack(t["target"], torch.full((3, 100), float("nan")), t["y"][:3])
    with pytest.raises(AdverseError, match="labels"):
        loss_attack(t["target"], t["x"][:3], t["y"][:2])
    with pytest.raises(AdverseError, match="classes"):
        loss_attack(t["target"], t["x"][:3], torch.tensor([0, 1, 25]))
    with pytest.raises(AdverseError, match="fit"):
        LiRA().score(t["target"], t["x"][:3], t["y"][:3])
    with pytest.raises(AdverseError, match="fit"):
        ShadowAttack().score(t["target"], t["x"][:3], t["y"][:3])


# --------------------------------------------------------------------------- small, fast reference models

def tiny_data(n: int = 60, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    return x, (x[:, 0] > 0).long()


def linear_fn(x, y, seed):
    return train_classifier(nn.Linear(5, 2), Dataset(x, y, "tiny", 2), epochs=3, lr=1e-2, seed=seed)


def test_train_fn_must_return_a_model():
    x, y = tiny_data()
    with pytest.raises(ModelError, match="not a torch.nn.Module"):
        ReferenceModels(lambda a, b, s: "model", x, y, n=2).fit()
    with pytest.raises(AdverseError, match="train_fn"):
        ReferenceModels(None, x, y, n=2)
    with pytest.raises(AdverseError, match="n "):
        ReferenceModels(linear_fn, x, y, n=0)
    with pytest.raises(AdverseError, match="pairing"):
        ReferenceModels(linear_fn, x, y, n=2, pairing="random")


def test_reference_models_are_seeded_and_leave_global_rng_alone():
    x, y = tiny_data()
    torch.manual_seed(5)
    state = torch.get_rng_state()
    a = ReferenceModels(linear_fn, x, y, n=3, seed=1).fit()
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(77)
    b = ReferenceModels(linear_fn, x, y, n=3, seed=1).fit()
    c = ReferenceModels(linear_fn, x, y, n=3, seed=2).fit()
    assert torch.equal(a.masks, b.masks) and not torch.equal(a.masks, c.masks)
    for ma, mb in zip(a.models, b.models):
        assert all(torch.equal(p, q) for p, q in zip(ma.parameters(), mb.parameters()))
    assert a.masks[2].sum() == 30  # the odd model out trains on an independent half


def test_independent_pairing_fallback_gives_finite_scores():
    x, y = tiny_data(60)
    refs = ReferenceModels(linear_fn, x, y, n=4, seed=0, pairing="independent")
    no_in, no_out = refs.uncovered()
    assert no_in.numel() > 0 and no_out.numel() > 0  # 4 independent halves leave some points uncovered
    target = linear_fn(x[:30], y[:30], 0)
    for online, fixed in ((True, False), (True, True), (False, False)):
        r = lira(target, x, y, refs, pool_index=torch.arange(60), online=online, fixed_variance=fixed)
        assert torch.isfinite(r.scores).all()
    assert "baseline=None" in r.baseline_note or "no disjoint" in r.baseline_note


def test_train_disjoint_refuses_pool_points():
    x, y = tiny_data()
    refs = ReferenceModels(linear_fn, x[:40], y[:40], n=2)
    with pytest.raises(AdverseError, match="disjoint"):
        refs.train_disjoint(x[30:], y[30:])
    assert isinstance(refs.train_disjoint(x[40:], y[40:]), nn.Module)


def test_float64_statistics_rank_members_that_float32_softmax_ties():
    z = torch.tensor([[40.0, 0.0, 0.0], [45.0, 0.0, 0.0], [50.0, 0.0, 0.0]])
    y = torch.zeros(3, dtype=torch.long)
    p32 = torch.softmax(z, 1)[:, 0]
    assert torch.equal(p32, torch.ones(3))  # float32 saturates: all three tie
    phi = scaled_logit(z, y)
    assert torch.allclose(phi, torch.tensor([40, 45, 50], dtype=torch.float64) - torch.log(torch.tensor(2.0, dtype=torch.float64)))
    for kind in ("loss", "modified_entropy", "entropy"):
        s = signal(z, y, kind)
        assert bool((s[1:] > s[:-1]).all()), kind  # strictly increasing with the margin


def test_modified_entropy_matches_definition():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    p = torch.softmax(z, 1)
    want = []
    for i in range(6):
        py = p[i, y[i]]
        m = -(1 - py) * torch.log(py) - sum(p[i, k] * torch.log(1 - p[i, k]) for k in range(4) if k != y[i])
        want.append(-m)
    assert torch.allclose(signal(z, y, "modified_entropy"), torch.stack(want))


@settings(max_examples=examples(50), deadline=None)
@given(st.lists(st.integers(-5, 5), min_size=1, max_size=40), st.lists(st.integers(-5, 5), min_size=1, max_size=30),
       st.sampled_from([1.0, 2.0, 0.5]))
def test_rmia_count_matches_pairwise_definition_and_breaks_ties(xs, zs, gamma):
    """Integer-valued log ratios make exact ties with population points and among queries common."""
    lx = torch.tensor(xs, dtype=torch.float64) * 0.25
    lz = torch.tensor(zs, dtype=torch.float64) * 0.25
    s = pairwise_score(lx, lz, gamma)
    brute = ((lx[:, None] - lz[None, :]) >= math.log(gamma)).sum(1)
    assert torch.equal(torch.floor(s * len(zs) + 1e-9).long(), brute)
    # the tie-break orders points within a count by their own ratio and never reorders across counts
    for i in range(len(xs)):
        for j in range(len(xs)):
            if lx[i] > lx[j]:
                assert s[i] > s[j]
            if lx[i] == lx[j]:
                assert s[i] == s[j]


def test_baseline_comes_from_the_reference_models_by_default(task):
    _, _, others = task["refs"].leave_out(0)  # a view made after train_disjoint carries the baseline model
    assert others.baseline is task["baseline"]
    x, y, idx = task["x"][:200], task["y"][:200], task["index"][:200]
    auto = lira(task["target"], x, y, others, pool_index=idx, fixed_variance=True)
    explicit = lira(task["target"], x, y, task["others"], pool_index=idx, fixed_variance=True, baseline=task["baseline"])
    assert auto.baseline_scores is not None and torch.equal(auto.baseline_scores, explicit.baseline_scores)
    assert loss_attack(task["target"], x, y).baseline_scores is None  # no refs, no baseline: the note says how
    assert "train_disjoint" in loss_attack(task["target"], x, y).baseline_note
    assert loss_attack(task["target"], x, y, refs=others).baseline_scores is not None


def test_lira_query_augmentations_combine_per_query_statistics(task):
    t = task
    x, y, idx = t["x"][:300], t["y"][:300], t["index"][:300]
    ident = lambda q: q
    for online in (True, False):
        kw = {"online": online, "fixed_variance": True, "pool_index": idx if online else None}
        one = lira(t["target"], x, y, t["others"], **kw).scores
        assert torch.allclose(lira(t["target"], x, y, t["others"], augmentations=[ident], **kw).scores, one)
        twice = lira(t["target"], x, y, t["others"], augmentations=[ident, ident], **kw).scores
        # the same query twice: the mean log-LR is unchanged online; Stouffer's Σz/√A scales z by √2 offline
        assert torch.allclose(twice, one if online else one * math.sqrt(2))
    plain = lira(t["target"], x, y, t["others"], pool_index=idx, fixed_variance=True).scores
    noisy = lira(t["target"], x, y, t["others"], pool_index=idx, fixed_variance=True,
                 augmentations=[ident, lambda q: q + 0.05]).scores
    assert torch.isfinite(noisy).all() and not torch.allclose(noisy, plain)
    with pytest.raises(AdverseError, match="augmentations"):
        lira(t["target"], x, y, t["others"], pool_index=idx, augmentations=[])
    with pytest.raises(AdverseError, match="same shape"):
        lira(t["target"], x, y, t["others"], pool_index=idx, augmentations=[lambda q: q[:, :50]])
