"""Adversarial training and regularization: closed-form inner maximisation, exact losses, pass counts, seeding,
mode hygiene, early stopping and rollback, bad input, and the robustness the trainers reach on digits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TinyNet, linear_problem
from torch import nn

from adverse.data import Dataset, digits
from adverse.defenses import adversarial_step, adversarial_training
from adverse.defenses._at import maximize
from adverse.defenses.regularization import (
    LipschitzBound,
    certified_radius,
    input_gradient_loss,
    regularized_training,
)
from adverse.defenses.training import StepResult, make_config, mart_loss, trades_loss, train_loop
from adverse.errors import AdverseError, InputError, ModelError
from adverse.models import Counted
from adverse.zoo import MLP, SmallCNN


def _mlp(seed=0):
    torch.manual_seed(seed)
    return MLP(64, 10, hidden=(32,))


def _batch(n=16, seed=0):
    d = digits("train")
    return d.x[:n], d.y[:n]


# ----------------------------------------------------------------------------------- inner maximisation
def test_inner_maximisation_finds_the_linear_optimum():
    """For a two-class linear model the cross-entropy is maximised in the L∞ ball at x − ε·sign(w_y − w_o)
    (the box is inactive for x in [0.25, 0.75] and ε = 0.1)."""
    model, x, y = linear_problem(12, (1, 4, 4), num_classes=2)
    g = torch.Generator().manual_seed(0)
    x_adv = maximize(Counted(model), x, lambda z: F.cross_entropy(z, y, reduction="none"), eps=0.1, norm="linf",
                     steps=10, alpha=0.025, bounds=(0.0, 1.0), generator=g)
    w = model.weight.detach()
    direction = (w[y] - w[1 - y]).sign().reshape(x.shape)
    assert torch.allclose(x_adv, x - 0.1 * direction, atol=1e-12)


def test_inner_maximisation_l2_reaches_the_sphere_along_the_gradient():
    model, x, y = linear_problem(8, (1, 4, 4), num_classes=2)
    g = torch.Generator().manual_seed(1)
    x_adv = maximize(Counted(model), x, lambda z: F.cross_entropy(z, y, reduction="none"), eps=0.2, norm="l2",
                     steps=100, alpha=0.05, bounds=(0.0, 1.0), generator=g)  # contraction 0.8 per step
    w = model.weight.detach()
    u = (w[y] - w[1 - y]).reshape(x.shape)
    u = u / u.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
    assert torch.allclose(x_adv, x - 0.2 * u, atol=1e-6)


def test_single_step_training_points():
    x, y = _batch(32)
    model = _mlp()
    for method, limit in (("fgsm-rs", 0.1), ("fgsm", 0.1), ("n-fgsm", 0.3)):
        r = adversarial_step(model, (x, y), torch.optim.SGD(model.parameters(), lr=0.0), method=method, eps=0.1)
        dist = (r.x_adv - x).abs().flatten(1).amax(dim=1)
        assert float(dist.max()) <= limit + 1e-6
        assert float(r.x_adv.min()) >= 0 and float(r.x_adv.max()) <= 1
    # N-FGSM is not projected back: its points leave the ε-ball (noise ±2ε plus a step of ε)
    r = adversarial_step(model, (x, y), torch.optim.SGD(model.parameters(), lr=0.0), method="n-fgsm", eps=0.1)
    assert float((r.x_adv - x).abs().max()) > 0.1 + 1e-3


# ----------------------------------------------------------------------------------- losses
def test_trades_and_mart_losses_against_their_formulas():
    x, y = _batch(16)
    model = _mlp().eval()
    c0 = make_config("trades", 0.1, "linf", 3, None, 0.0, (0.0, 1.0), (1, 8, 8))
    loss, x_adv, _, _ = trades_loss(model, x, y, c0, torch.Generator().manual_seed(0))
    assert torch.allclose(loss, F.cross_entropy(model(x), y))  # β = 0: plain cross-entropy on clean inputs
    c = make_config("trades", 0.1, "linf", 3, None, 6.0, (0.0, 1.0), (1, 8, 8))
    loss, x_adv, _, _ = trades_loss(model, x, y, c, torch.Generator().manual_seed(0))
    p, q = F.softmax(model(x), 1), F.softmax(model(x_adv), 1)
    expected = F.cross_entropy(model(x), y) + 6.0 * (p * (p.log() - q.log())).sum(1).mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    # the inner maximisation raised the KL above that of the start (x + 0.001·N(0, I))
    assert float((p * (p.log() - q.log())).sum(1).mean().detach()) > 1e-4

    cm = make_config("mart", 0.1, "linf", 3, None, 6.0, (0.0, 1.0), (1, 8, 8))
    loss, x_adv, _, _ = mart_loss(model, x, y, cm, torch.Generator().manual_seed(0))
    za, zn = model(x_adv), model(x)
    pa, pn = F.softmax(za, 1), F.softmax(zn, 1)
    pd = pa.detach()
    wrong = torch.tensor([max(pd[i, k] for k in range(10) if k != y[i]) for i in range(16)])
    bce = F.cross_entropy(za, y, reduction="none") - torch.log(1.0001 - wrong)
    kl = (pn * (pn.log() - pa.log())).sum(1)
    expected = bce.mean() + 6.0 * (kl * (1.0000001 - pn[torch.arange(16), y])).mean()
    assert torch.allclose(loss, expected, atol=1e-5)


@pytest.mark.parametrize("method, steps, forwards, backwards", [
    ("pgd", 4, 5, 5), ("pgd", 1, 2, 2), ("trades", 4, 7, 6), ("mart", 4, 6, 6),
    ("fgsm-rs", None, 2, 2), ("n-fgsm", None, 2, 2), ("fgsm", None, 2, 2),
])
def test_pass_counts(method, steps, forwards, backwards):
    """PGD-K AT: K + 1 forward and backward passes per sample and step; TRADES-K caches the clean target."""
    x, y = _batch(8)
    model = _mlp()
    r = adversarial_step(model, (x, y), torch.optim.SGD(model.parameters(), lr=0.01), method=method, eps=0.1,
                         steps=steps)
    assert isinstance(r, StepResult)
    assert (r.forwards, r.backwards) == (forwards * 8, backwards * 8)


def test_input_gradient_loss_is_double_backprop():
    x, y = _batch(8)
    model = _mlp()
    loss, fw, bw = input_gradient_loss(model, x, y, 0.5, norm="linf")
    xr = x.clone().requires_grad_(True)
    ce = F.cross_entropy(model(xr), y, reduction="none")
    (g,) = torch.autograd.grad(ce.sum(), xr)
    assert torch.allclose(loss, ce.mean() + 0.5 * g.abs().flatten(1).sum(1).pow(2).mean(), atol=1e-6)
    (gw,) = torch.autograd.grad(loss, model.net[1].weight)  # the penalty trains the weights
    assert float(gw.abs().sum()) > 0 and (fw, bw) == (8, 16)


def test_lipschitz_bound_is_the_spectral_norm_and_bounds_the_model():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    b = LipschitzBound(lin, (1, 4, 4), iterations=200)
    assert torch.allclose(b().detach(), torch.linalg.matrix_norm(lin[1].weight.detach(), ord=2), rtol=1e-4)
    cnn = SmallCNN(width=4)
    bound = float(LipschitzBound(cnn, (1, 8, 8), iterations=100)().detach())
    g = torch.Generator().manual_seed(0)
    x1 = torch.rand((200, 1, 8, 8), generator=g)
    x2 = x1 + 0.01 * torch.randn((200, 1, 8, 8), generator=g)
    with torch.no_grad():
        ratio = (cnn(x1) - cnn(x2)).norm(dim=1) / (x1 - x2).flatten(1).norm(dim=1)
    assert float(ratio.max()) <= bound
    with pytest.raises(ModelError, match="not supported"):
        LipschitzBound(TinyNet(), (1, 6, 6))


# ----------------------------------------------------------------------------------- contracts
def test_training_is_deterministic_under_a_seed_and_trains_in_place():
    d = digits("train").subset(96)
    weights = []
    for seed in (3, 3, 4):
        model = _mlp()
        before = [p.detach().clone() for p in model.parameters()]
        r = adversarial_training(model, d, "pgd", eps=0.1, steps=2, epochs=2, batch_size=32, seed=seed)
        assert r.model is model and not model.training
        assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
        weights.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(weights[0], weights[1]))
    assert not all(torch.equal(a, b) for a, b in zip(weights[0], weights[2]))


def test_step_restores_modes_and_never_reads_global_rng(tiny_net):
    x = torch.rand((8, 1, 6, 6), generator=torch.Generator().manual_seed(0))
    y = torch.arange(8) % 4
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.01)
    for mode in (False, True):
        tiny_net.train(mode)
        adversarial_step(tiny_net, (x, y), opt, method="trades", eps=0.1, steps=2, seed=0)
        assert tiny_net.training == mode and tiny_net.bn.training == mode
    # the inner maximisation runs in eval mode: with zero learning rate, BatchNorm statistics move only by the
    # weight step's train-mode forward passes (TRADES: two), never by the K attack passes
    tiny_net.eval()
    opt0 = torch.optim.SGD(tiny_net.parameters(), lr=0.0)
    bn = copy_bn(tiny_net)
    adversarial_step(tiny_net, (x, y), opt0, method="pgd", eps=0.1, steps=5, seed=0)
    tracked = int(tiny_net.bn.num_batches_tracked) - int(bn["num_batches_tracked"])
    assert tracked == 1
    assert all(p.grad is None for p in tiny_net.parameters())


def copy_bn(net):
    return {k: v.clone() for k, v in net.bn.state_dict().items()}


def test_global_rng_is_untouched_without_dropout():
    x, y = _batch(8)
    model = _mlp()
    state = torch.get_rng_state()
    adversarial_step(model, (x, y), torch.optim.SGD(model.parameters(), lr=0.01), method="n-fgsm", eps=0.1, seed=5)
    adversarial_training(model, digits("train").subset(64), "fgsm-rs", eps=0.1, epochs=1, monitor_size=16, seed=0)
    assert torch.equal(torch.get_rng_state(), state)


def test_early_stopping_keeps_the_best_validation_epoch():
    d, v = digits("train").subset(128), digits("test").subset(64)
    model = _mlp()
    r = adversarial_training(model, d, "pgd", eps=0.1, steps=2, epochs=4, batch_size=32, validation=v,
                             val_steps=5, lr=3e-2, seed=0)
    accs = [h["val_robust_accuracy"] for h in r.history]
    assert r.best_epoch == accs.index(max(accs))
    from adverse.defenses.training import robust_accuracy

    assert robust_accuracy(model, v.x, v.y, eps=0.1, norm="linf", steps=5, bounds=(0, 1), seed=0) == max(accs)


def test_catastrophic_overfitting_monitor_rolls_back():
    """A monitor that collapses at epoch 3 makes the loop restore the weights of its best epoch and stop."""
    x, y = _batch(32)
    model = _mlp()
    readings = iter([0.4, 0.6, 0.55, 0.1, 0.7])
    snapshots = []

    def monitor():
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(readings)

    def step(xb, yb, opt, g):
        return adversarial_step(model, (xb, yb), opt, method="fgsm-rs", eps=0.1, seed=g)

    r = train_loop(model, x, y, step, name="fgsm-rs", epochs=5, batch_size=16, optimizer=None, lr=1e-2,
                   weight_decay=0.0, seed=0, monitor=monitor, co_drop=0.2)
    assert r.rolled_back and r.stopped_early and len(r.history) == 4 and r.best_epoch == 1
    assert r.history[-1]["catastrophic_overfitting"]
    assert all(torch.equal(v, snapshots[1][k]) for k, v in model.state_dict().items())


def test_single_step_methods_are_monitored_by_default():
    r = adversarial_training(_mlp(), digits("train").subset(64), "n-fgsm", eps=0.1, epochs=2, monitor_size=32)
    assert r.params["monitor"] and all("monitor_robust_accuracy" in h for h in r.history)
    r = adversarial_training(_mlp(), digits("train").subset(64), "pgd", eps=0.1, steps=1, epochs=1)
    assert not r.params["monitor"]


# ----------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    ({"method": "madry"}, "unknown adversarial-training method"),
    ({"eps": 8}, "input units"),
    ({"eps": 0.0}, "> 0"),
    ({"eps": -0.1}, "> 0"),
    ({"eps": float("nan")}, "finite"),
    ({"method": "fgsm-rs", "steps": 5}, "single-step"),
    ({"steps": 0}, "steps"),
    ({"beta": -1.0}, "beta"),
    ({"alpha": 0.0}, "alpha"),
    ({"norm": "l3"}, "unknown norm"),
    ({"epochs": 0}, "epochs"),
    ({"co_drop": 2.0}, "co_drop"),
    ({"schedule": "step"}, "schedule"),
])
def test_bad_input(kwargs, match):
    args = {"method": "pgd", "eps": 0.1, "epochs": 1}
    args.update(kwargs)
    method = args.pop("method")
    with pytest.raises(AdverseError, match=match):
        adversarial_training(_mlp(), digits("train").subset(16), method, **args)


def test_bad_data_and_batches():
    d = digits("train").subset(16)
    with pytest.raises(InputError, match="outside bounds"):
        adversarial_training(_mlp(), Dataset(d.x * 2, d.y, "x", 10), eps=0.1, epochs=1)
    with pytest.raises(InputError, match="pair"):
        adversarial_step(_mlp(), d.x, torch.optim.SGD(_mlp().parameters(), lr=0.1), eps=0.1)
    with pytest.raises(InputError, match="Dataset"):
        adversarial_training(_mlp(), "digits", eps=0.1)
    with pytest.raises(ModelError, match="nn.Module"):
        adversarial_step(lambda x: x, (d.x, d.y), None, eps=0.1)
    with pytest.raises(InputError, match="l2"):
        regularized_training(_mlp(), d, "lipschitz-margin", eps=0.5, norm="linf", epochs=1)
    with pytest.raises(InputError, match="unknown regularization"):
        regularized_training(_mlp(), d, "dropout", epochs=1)


# ----------------------------------------------------------------------------------- what the trainers reach
@pytest.fixture(scope="module")
def undefended_rob(digits_cnn, digits_test):
    from adverse.evasion import apgd

    return apgd(digits_cnn, digits_test.x[:200], digits_test.y[:200], eps=0.2, steps=50, seed=0).robust_accuracy


@pytest.mark.parametrize("method", ["pgd", "trades"])
def test_adversarial_training_holds_under_apgd(method, undefended_rob, digits_test):
    """A reduced CI version of the full-size claim (benchmarks/bench_adversarial_training.py --robustness):
    a few epochs of PGD-AT / TRADES with 3 inner steps already hold under APGD at L∞ 0.2, where the undefended
    CNN falls to ~0."""
    from adverse.evasion import apgd

    torch.manual_seed(0)
    model = SmallCNN()
    adversarial_training(model, digits("train"), method, eps=0.2, steps=3, epochs=8, lr=2e-3, batch_size=64,
                         schedule="cosine", seed=0)
    r = apgd(model, digits_test.x[:200], digits_test.y[:200], eps=0.2, steps=50, seed=0)
    assert undefended_rob <= 0.1  # measured 0.05 (10 of 200) for digits-cnn trained with seed 2, less for 0 and 1
    assert r.clean_accuracy >= 0.85
    assert r.robust_accuracy >= 0.35, r.robust_accuracy  # measured: PGD-AT 0.425, TRADES 0.55 (clean 0.95, 0.975)


def test_lipschitz_margin_training_certifies():
    d, t = digits("train"), digits("test")
    torch.manual_seed(0)
    model = SmallCNN(width=8)
    r = regularized_training(model, d, "lipschitz-margin", eps=0.1, norm="l2", epochs=5, lr=2e-3, seed=0)
    rad = certified_radius(model, t.x[:200], r.params["bound"])
    with torch.no_grad():
        ok = model(t.x[:200]).argmax(1) == t.y[:200]
    from adverse.evasion import pgd

    adv = pgd(model, t.x[:200], t.y[:200], eps=0.1, norm="l2", steps=20, seed=0)
    certified = float(((rad >= 0.1) & ok).float().mean())
    assert certified > 0.45  # measured 0.625 (clean 0.915, PGD-20 0.89)
    assert certified <= adv.robust_accuracy + 1e-9  # a certificate is never beaten by an attack
