"""MI-Face model inversion and attribute inference, each beside its sanity baseline."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adverse.data import Dataset, digits
from adverse.errors import AdverseError, ModelError
from adverse.privacy import attribute_inference, miface
from adverse.privacy.attribute import fredrikson_inference
from adverse.zoo import MLP, train_classifier


@pytest.fixture(scope="module")
def digits_setup():
    """Softmax regression trained on one half of the digits; an RBF-SVC evaluator trained on the other half."""
    from sklearn.svm import SVC

    d = digits("train")
    half = len(d) // 2
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    train_classifier(model, Dataset(d.x[:half], d.y[:half], "digits", 10), epochs=50, lr=1e-2, seed=0)
    evaluator = SVC().fit(d.x[half:].flatten(1).numpy(), d.y[half:].numpy())
    return model, evaluator


def test_trained_softmax_regression_inverts_and_untrained_is_at_chance(digits_setup):
    model, evaluator = digits_setup
    classes = torch.arange(10).repeat(4)
    r = miface(model, classes, shape=(1, 8, 8), evaluator=evaluator, steps=300, init="uniform", l2=1e-3, seed=0)
    print(f"\nMI-Face (uniform init, 40 inversions): evaluator accuracy {r.evaluator_accuracy:.3f}, "
          f"untrained baseline {r.baseline_evaluator_accuracy:.3f}, chance {r.chance:.2f}")
    assert r.x.shape == (40, 1, 8, 8) and float(r.x.min()) >= 0 and float(r.x.max()) <= 1
    assert r.evaluator_accuracy >= 0.6  # chance is 0.1
    # Binomial(40, 0.1): mean 4, sd 1.9; 12 hits would be 4 sd above chance
    assert r.baseline_evaluator_accuracy <= 0.3
    assert float(r.confidence.mean()) > 0.5 and r.baseline_x is not None


def test_zero_init_with_tv_prior(digits_setup):
    model, evaluator = digits_setup
    r = miface(model, torch.arange(10), shape=(1, 8, 8), evaluator=evaluator, steps=300, tv=0.003)
    assert r.evaluator_accuracy >= 0.8
    assert r.baseline_evaluator_accuracy <= 0.3
    assert (r.iterations <= 300).all() and (r.iterations >= 1).all()


def test_stopping_rule_and_threshold(digits_setup):
    model, evaluator = digits_setup
    r = miface(model, torch.arange(10), shape=(1, 8, 8), evaluator=evaluator, steps=500, threshold=0.5,
               baseline=False)
    # γ = 0.5: every sample stops as soon as its confidence passes 1/2, well before 500 steps
    assert (r.cost <= 0.5).all() and (r.iterations < 500).all()
    assert r.baseline_x is None and r.baseline_evaluator_accuracy is None


def test_model_state_left_as_found(digits_setup):
    _, evaluator = digits_setup
    net = MLP(64, 10, (16,))
    net.train()
    flags = [p.requires_grad for p in net.parameters()]
    before = [p.detach().clone() for p in net.parameters()]
    state = torch.get_rng_state()
    miface(net, torch.arange(3), shape=(1, 8, 8), evaluator=evaluator, steps=5, init="uniform", seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert net.training and [p.requires_grad for p in net.parameters()] == flags
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_miface_bad_input(digits_setup):
    model, evaluator = digits_setup
    with pytest.raises(AdverseError, match="independent evaluator"):
        miface(model, torch.arange(3), shape=(1, 8, 8), evaluator=None)
    with pytest.raises(AdverseError, match="independent evaluator"):
        miface(model, torch.arange(3), shape=(1, 8, 8), evaluator=model)
    with pytest.raises(AdverseError, match="classes"):
        miface(model, torch.tensor([0, 12]), shape=(1, 8, 8), evaluator=evaluator, steps=2)
    with pytest.raises(AdverseError, match="init"):
        miface(model, torch.arange(3), shape=(1, 8, 8), evaluator=evaluator, init=torch.zeros(2, 1, 8, 8))
    with pytest.raises(ModelError, match="gradients"):
        miface(lambda x: x, torch.arange(3), shape=(1, 8, 8), evaluator=evaluator)


# ----------------------------------------------------------------------------------- attribute inference

class Reveals(nn.Module):
    """Logits that encode column 0 (the sensitive bit) and nothing about the label."""

    def forward(self, x):
        return torch.stack([torch.zeros_like(x[:, 0]), 6.0 * (2 * x[:, 0] - 1)], 1)


def bits(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 4, generator=g)
    x[:, 0] = (x[:, 0] > 0.5).float()
    y = torch.randint(0, 2, (n,), generator=g)  # labels independent of everything
    return x, y


def test_model_variant_beats_imputation_when_the_model_reveals_the_attribute():
    x, y = bits(300, 0)
    x_aux, y_aux = bits(300, 1)
    r = attribute_inference(Reveals(), x, y, attribute=0, values=torch.tensor([0.0, 1.0]), x_aux=x_aux,
                            y_aux=y_aux, method="model")
    assert r.accuracy == 1.0
    assert abs(r.baseline_accuracy - 0.5) < 0.1  # the bit is independent of the other columns and the label
    assert abs(r.majority_accuracy - 0.5) < 0.1


def test_fredrikson_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(3, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(3, 3, generator=g))
        lin.bias.zero_()
    x = torch.rand(25, 3, generator=g)
    y = torch.randint(0, 3, (25,), generator=g)
    values = torch.tensor([0.0, 0.5, 1.0])
    prior = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    got = fredrikson_inference(lin, x, y, 1, values, prior)
    lin.requires_grad_(False)
    for i in range(25):
        best = max(range(3), key=lambda j: float(torch.softmax(lin(torch.cat([x[i, :1], values[j:j + 1], x[i, 2:]])), 0)[y[i]]) * float(prior[j]))
        assert int(got[i]) == best


def test_breast_cancer_attack_reported_beside_imputation():
    from sklearn.datasets import load_breast_cancer

    b = load_breast_cancer()
    x = torch.tensor(b.data, dtype=torch.float32)
    x = (x - x.min(0).values) / (x.max(0).values - x.min(0).values)
    x[:, 1] = (x[:, 1] > x[:, 1].median()).float()  # "mean texture", binarised: the sensitive attribute
    y = torch.tensor(b.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, aux, out = perm[:190], perm[190:379], perm[379:569]
    model = train_classifier(MLP(30, 2, (64,)), Dataset(x[tr], y[tr], "bc", 2), epochs=100, lr=1e-3, seed=0)
    targets = torch.cat([tr, out])
    member = torch.arange(len(targets)) < len(tr)
    for method in ("fredrikson", "model"):
        r = attribute_inference(model, x[targets], y[targets], attribute=1, values=torch.tensor([0.0, 1.0]),
                                x_aux=x[aux], y_aux=y[aux], method=method, is_member=member, seed=0)
        print(f"\nbreast_cancer mean texture, {method}: attack {r.accuracy:.3f}, imputation {r.baseline_accuracy:.3f}, "
              f"majority {r.majority_accuracy:.3f}, members/non-members {r.split['accuracy_members']:.3f}/"
              f"{r.split['accuracy_nonmembers']:.3f}")
        assert r.baseline_accuracy >= r.majority_accuracy + 0.1  # imputation alone recovers much
        assert set(r.split) == {"accuracy_members", "accuracy_nonmembers", "baseline_accuracy_members",
                                "baseline_accuracy_nonmembers"}
        assert r.predicted.shape == (len(targets),) and set(r.predicted.tolist()) <= {0.0, 1.0}


def test_attribute_inference_bad_input():
    x, y = bits(20, 0)
    kw = {"values": torch.tensor([0.0, 1.0]), "x_aux": x, "y_aux": y}
    with pytest.raises(AdverseError, match="attribute"):
        attribute_inference(Reveals(), x, y, attribute=7, **kw)
    with pytest.raises(AdverseError, match="method"):
        attribute_inference(Reveals(), x, y, attribute=0, method="magic", **kw)
    with pytest.raises(AdverseError, match="outside"):
        attribute_inference(Reveals(), x, y, attribute=0, values=torch.tensor([0.0, 2.0]), x_aux=x, y_aux=y)
    with pytest.raises(AdverseError, match="is_member"):
        attribute_inference(Reveals(), x, y, attribute=0, is_member=torch.ones(3, dtype=torch.bool), **kw)
