"""Membership inference on small digits (150 training points per model): the same ordering as the synthetic
task (LiRA and RMIA above the loss attack), label-only attacks on par with the loss attack, and the label-only
contracts. Scores are pooled over four target models (each attacked with the references that exclude it and
its complementary partner), as the LiRA paper pools targets, so that 600 members and 600 non-members are
evaluated.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adverse.data import Dataset, digits
from adverse.errors import AdverseError
from adverse.models import BlackBox
from adverse.privacy import ReferenceModels, evaluate, label_only, lira, loss_attack, rmia
from adverse.zoo import MLP, train_classifier

TARGETS = (0, 2, 4, 6)


def train_mlp(x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
    return train_classifier(MLP(64, 10, (128,)), Dataset(x, y, "digits", 10), epochs=60, lr=1e-3, seed=seed)


@pytest.fixture(scope="module")
def pooled():
    d = digits("train")
    perm = torch.randperm(len(d), generator=torch.Generator().manual_seed(0))
    xp, yp = d.x[perm[:300]], d.y[perm[:300]]
    x_pop, y_pop = d.x[perm[300:600]], d.y[perm[300:600]]
    refs = ReferenceModels(train_mlp, xp, yp, n=16, seed=0)
    assert refs.masks.sum(1).eq(150).all()  # ≤ 150 training points per model
    baseline = refs.train_disjoint(d.x[perm[600:750]], d.y[perm[600:750]])
    idx = torch.arange(300)
    runs: dict[str, list] = {}
    for k in TARGETS:
        target, is_member, others = refs.leave_out(k)
        out = {
            "loss": loss_attack(target, xp, yp, baseline=baseline),
            "lira_online_fixed": lira(target, xp, yp, others, pool_index=idx, fixed_variance=True, baseline=baseline),
            "rmia_offline": rmia(target, xp, yp, others, population=(x_pop, y_pop), baseline=baseline),
            "label_only_noise": label_only(target, xp, yp, augment="noise", noise_std=0.3, n_noise=100,
                                           baseline=baseline),
            "label_only_boundary": label_only(target, xp, yp, method="boundary", max_queries=300, steps=20,
                                              baseline=baseline),
        }
        for name, r in out.items():
            runs.setdefault(name, []).append((r.scores, r.baseline_scores, is_member))
    ev = {}
    for name, parts in runs.items():
        m = torch.cat([p[2] for p in parts])
        ev[name] = (evaluate(torch.cat([p[0] for p in parts]), m, n_bootstrap=200, fprs=(0.01,)),
                    evaluate(torch.cat([p[1] for p in parts]), m, n_bootstrap=0, fprs=(0.01,)))
    return ev, refs


def test_report(pooled, capsys):
    with capsys.disabled():
        print("\ndigits, 150 points/model, 4 targets pooled   AUC [95% CI]          TPR@1%   baseline AUC")
        for k, (e, b) in pooled[0].items():
            lo, hi = e.ci["auc"]
            print(f"{k:44s} {e.auc:.3f} [{lo:.3f}, {hi:.3f}]  {e.tpr_at_fpr[0.01]:.3f}    {b.auc:.3f}")


def test_same_ordering_as_the_synthetic_task(pooled):
    ev = pooled[0]
    loss, lira_e, rmia_e = ev["loss"][0], ev["lira_online_fixed"][0], ev["rmia_offline"][0]
    assert loss.auc >= 0.55  # small training sets leak (reference note §6, E1)
    assert lira_e.ci["auc"][0] > loss.ci["auc"][1]  # LiRA above the loss attack, intervals apart
    assert lira_e.auc >= loss.auc + 0.05
    assert rmia_e.auc > loss.auc
    assert lira_e.tpr_at_fpr[0.01] > loss.tpr_at_fpr[0.01]
    assert rmia_e.tpr_at_fpr[0.01] > loss.tpr_at_fpr[0.01]


def test_label_only_attacks_match_the_loss_attack(pooled):
    ev = pooled[0]
    for name in ("label_only_noise", "label_only_boundary"):
        assert ev[name][0].auc >= 0.55, name
        assert ev[name][0].auc >= ev["loss"][0].auc - 0.05, name


def test_disjoint_baselines_at_chance(pooled):
    # null SE of the AUC with 600 + 600 points is 0.017; ±0.05 is ≈ 3 SE
    for name, (_, b) in pooled[0].items():
        assert abs(b.auc - 0.5) <= 0.05, (name, b.auc)


def test_label_only_contracts(pooled):
    refs = pooled[1]
    target, _, _ = refs.leave_out(0)
    x, y = refs.x_pool[:20], refs.y_pool[:20]
    with pytest.raises(AdverseError, match="max_queries"):
        label_only(target, x, y, method="boundary")
    with pytest.raises(AdverseError, match="method"):
        label_only(target, x, y, method="gap")
    with pytest.raises(AdverseError, match="translations need images"):
        label_only(target, x.flatten(1), y, augment="translate")
    # a black box that answers labels only gives the same augmentation scores as the module
    box = BlackBox(lambda q: train_free_labels(target, q), output="labels")
    a = label_only(target, x, y, augment="translate", max_shift=1, flips=True)
    b = label_only(box, x, y, augment="translate", max_shift=1, flips=True)
    assert torch.equal(a.scores, b.scores) and a.params["queries_per_sample"] == 18
    r = label_only(box, x, y, method="boundary", max_queries=50, steps=3, seed=1)
    assert box.queries <= 20 * 18 + 20 * 50 and (r.scores >= 0).all()
    again = label_only(target, x, y, method="boundary", max_queries=50, steps=3, seed=1)
    assert torch.equal(again.scores, label_only(target, x, y, method="boundary", max_queries=50, steps=3, seed=1).scores)


def train_free_labels(model: nn.Module, q: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(q).argmax(1)


def test_label_only_leaves_model_state_alone(pooled):
    refs = pooled[1]
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.Dropout(0.3), nn.ReLU(), nn.Linear(32, 10))
    net.train()
    flags = [p.requires_grad for p in net.parameters()]
    state = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    x, y = refs.x_pool[:10], refs.y_pool[:10]
    label_only(net, x, y, augment="noise", n_noise=5, seed=0)
    label_only(net, x, y, method="boundary", max_queries=30, steps=2, seed=0)
    assert net.training and [p.requires_grad for p in net.parameters()] == flags
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())  # BN buffers untouched
    assert torch.equal(torch.get_rng_state(), rng)
