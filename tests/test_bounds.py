"""Interval bound propagation: soundness on 10⁴ random points, exactness for one affine layer, elision,
verified ≤ PGD ≤ clean per sample, an IBP-trained digits MLP, mode hygiene and bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from adverse.data import digits
from adverse.defenses import bounds
from adverse.errors import AdverseError, InputError, ModelError
from adverse.evasion import pgd
from adverse.models import Normalize
from adverse.zoo import MLP, SmallCNN, train_classifier


def seeded(build, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


class Residual(nn.Module):
    """A custom module (not a Sequential): affine pieces, a skip connection, a constant matmul, a scalar."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.proj = nn.Parameter(torch.randn(320, 5))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        h = torch.cat([self.act(h), h, x], dim=1)  # in place: both copies of h are rectified
        z = (h + torch.cat([x, x, x, x, x], dim=1) - 0.3).flatten(1) * -0.5
        return z @ self.proj


def bn_stack() -> nn.Module:
    """Every supported layer, with nested Sequentials and an eval-mode BatchNorm with a negative scale."""
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(-1.5, 1.5)
        bn.bias.uniform_(-0.1, 0.1)
    bn1d = nn.BatchNorm1d(16)
    with torch.no_grad():
        bn1d.running_mean.uniform_(-0.2, 0.2)
        bn1d.running_var.uniform_(0.5, 2.0)
        bn1d.weight.uniform_(-1.5, 1.5)
    return nn.Sequential(
        Normalize(0.5, 0.25),
        nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), bn, nn.ReLU()),
        nn.AvgPool2d(2),
        nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.LeakyReLU(0.1), nn.MaxPool2d(2)),
        nn.Flatten(), nn.Linear(16, 16), bn1d, nn.Tanh(), nn.Dropout(0.3), nn.Linear(16, 16), nn.ReLU6(),
        nn.Linear(16, 16), nn.Softplus(), nn.Linear(16, 16), nn.Sigmoid(),
        nn.Linear(16, 5),
    )


MODELS = {
    "supported layers": bn_stack,
    "zoo MLP": lambda: MLP(64, 5, hidden=(32, 16)),
    "zoo SmallCNN": lambda: SmallCNN(num_classes=5, width=4),
    "custom forward": Residual,
}


def box_points(x: torch.Tensor, eps: float, per_center: int, g: torch.Generator) -> torch.Tensor:
    """Uniform points and vertices of the box ``[x − eps, x + eps] ∩ [0, 1]`` around each centre."""
    lo, hi = (x - eps).clamp_min(0), (x + eps).clamp_max(1)
    u = torch.rand((x.shape[0], per_center, *x.shape[1:]), generator=g, dtype=x.dtype)
    u[:, : per_center // 4] = u[:, : per_center // 4].round()  # a quarter of them are vertices
    return (lo[:, None] + u * (hi - lo)[:, None]).flatten(0, 1)


@pytest.mark.parametrize("name", list(MODELS))
def test_bounds_contain_10k_random_points(name):
    model = seeded(MODELS[name]).double().train()  # train mode on purpose: bounds use eval mode
    g = torch.Generator().manual_seed(1)
    x = torch.rand((4, 1, 8, 8), generator=g, dtype=torch.float64)
    eps = 0.1
    lower, upper = bounds.interval_bounds(model, x, eps)
    assert model.training
    pts = box_points(x, eps, 2_500, g)
    with torch.no_grad():
        model.eval()
        out = model(pts).reshape(4, 2_500, -1)
    assert bool((out >= lower[:, None] - 1e-9).all()) and bool((out <= upper[:, None] + 1e-9).all())
    assert bool((lower < upper).all())  # a real box, not a point: the check above is not vacuous


@pytest.mark.parametrize("name", list(MODELS))
def test_zero_eps_gives_the_output(name):
    model = seeded(MODELS[name]).double().eval()
    x = torch.rand((3, 1, 8, 8), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    lower, upper = bounds.interval_bounds(model, x, 0.0)
    with torch.no_grad():
        out = model(x)
    assert torch.allclose(lower, out, atol=1e-12) and torch.allclose(upper, out, atol=1e-12)


@settings(max_examples=examples(25), deadline=None)
@given(seed=st.integers(0, 10_000), eps=st.floats(0.0, 0.5), d=st.integers(1, 12), k=st.integers(1, 6))
def test_one_affine_layer_is_exact(seed, eps, d, k):
    """For ``W x + b`` over a box IBP is tight: each bound is attained at the vertex ``μ ± r·sign(W_i)``."""
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(d, k).double()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(k, d, generator=g, dtype=torch.float64))
    x = torch.rand((2, d), generator=g, dtype=torch.float64)
    lower, upper = bounds.interval_bounds(layer, x, eps)
    lo, hi = (x - eps).clamp_min(0), (x + eps).clamp_max(1)
    w = layer.weight.detach()
    vertex_up = torch.where(w[None] > 0, hi[:, None], lo[:, None])  # (n, k, d)
    vertex_lo = torch.where(w[None] > 0, lo[:, None], hi[:, None])
    with torch.no_grad():
        best = (vertex_up * w).sum(-1) + layer.bias
        worst = (vertex_lo * w).sum(-1) + layer.bias
    assert torch.allclose(upper, best, atol=1e-10) and torch.allclose(lower, worst, atol=1e-10)


def test_elision_is_sound_and_tighter():
    model = seeded(lambda: MLP(64, 10, hidden=(32,))).double().eval()
    g = torch.Generator().manual_seed(3)
    x = torch.rand((8, 1, 8, 8), generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (8,), generator=g)
    eps = torch.full((8,), 0.05, dtype=torch.float64)
    gm = bounds.trace(model)
    with torch.no_grad():
        elided = bounds.margin_bounds(gm, x, y, eps, (0.0, 1.0), 10)
        lower, upper = bounds.interval_bounds(model, x, 0.05)
        naive = lower.gather(1, y[:, None]) - upper
        out = model(box_points(x, 0.05, 1_000, g)).reshape(8, 1_000, 10)
    margins = out.gather(2, y[:, None, None].expand(-1, 1_000, 1)) - out
    assert bool((elided >= naive - 1e-12).all()) and bool((elided > naive + 1e-6).any())
    assert bool((margins >= elided[:, None] - 1e-9).all())


@pytest.fixture(scope="module")
def ibp_mlp():
    model = seeded(lambda: MLP(64, 10, hidden=(256, 256)))
    return bounds.ibp_train(model, digits("train"), eps=0.1, epochs=30, seed=0)


@pytest.fixture(scope="module")
def standard_mlp():
    model = seeded(lambda: MLP(64, 10, hidden=(64,)))
    return train_classifier(model, digits("train"), epochs=10, seed=0)


def test_ibp_trained_digits_mlp_is_70_percent_verified(ibp_mlp):
    test = digits("test")
    assert bounds.verified_accuracy(ibp_mlp, test.x, test.y, 0.1) >= 0.70
    with torch.no_grad():
        assert float((ibp_mlp(test.x).argmax(1) == test.y).double().mean()) >= 0.93


@pytest.mark.parametrize("which", ["ibp_mlp", "standard_mlp"])
def test_verified_implies_pgd_robust_implies_correct(which, request):
    model = request.getfixturevalue(which)
    test = digits("test")
    x, y = test.x[:270], test.y[:270]
    verified = bounds.verify(model, x, y, 0.1)
    robust = ~pgd(model, x, y, eps=0.1, steps=20, seed=0).success
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    assert bool((verified <= robust).all()) and bool((robust <= correct).all())
    v, r, c = (float(t.double().mean()) for t in (verified, robust, correct))
    assert v <= r <= c
    if which == "standard_mlp":
        assert v < 0.05  # IBP proves nothing about an untrained-for-it model at this eps (E4)


def test_ibp_schedule():
    kw = {"eps": 0.2, "warmup": 0.1, "ramp": 0.5, "kappa_end": 0.5}
    assert bounds.ibp_schedule(0, 100, **kw) == (0.0, 1.0)
    assert bounds.ibp_schedule(10, 100, **kw) == (0.0, 1.0)
    e, k = bounds.ibp_schedule(35, 100, **kw)
    assert e == pytest.approx(0.1) and k == pytest.approx(0.75)
    assert bounds.ibp_schedule(60, 100, **kw) == (pytest.approx(0.2), pytest.approx(0.5))
    assert bounds.ibp_schedule(99, 100, **kw) == (pytest.approx(0.2), pytest.approx(0.5))


def test_state_left_as_found(tiny_net):
    tiny_net.train()
    before = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    x = torch.rand((2, 1, 6, 6), generator=torch.Generator().manual_seed(0))
    state = torch.get_rng_state()
    bounds.interval_bounds(tiny_net, x, 0.1)
    bounds.verify(tiny_net, x, torch.tensor([0, 1]), 0.1)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(m.training for m in tiny_net.modules())
    assert all(p.requires_grad and p.grad is None for p in tiny_net.parameters())
    assert all(torch.equal(v, tiny_net.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("layer, name", [(nn.GELU(), "GELU"), (nn.Softmax(dim=1), "Softmax"),
                                         (nn.LayerNorm(16), "LayerNorm"), (nn.LeakyReLU(-0.5), "LeakyReLU")])
def test_unsupported_layer_is_named(layer, name):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), layer, nn.Linear(16, 3))
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ModelError, match=rf"{name}.*'2'.*supported layers"):
        bounds.interval_bounds(model, x, 0.1)


class Branchy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) if x.sum() > 0 else -x.flatten(1)


class ElementwiseProduct(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) * x.flatten(1)


@pytest.mark.parametrize("model, match", [(Branchy(), "could not trace"), (ElementwiseProduct(), "function mul")])
def test_untraceable_or_unsupported_functions(model, match):
    with pytest.raises(ModelError, match=match):
        bounds.interval_bounds(model, torch.rand(2, 1, 8, 8), 0.1)


@pytest.mark.parametrize("eps, match", [(-0.1, "eps"), (float("nan"), "eps"), (float("inf"), "eps"),
                                        (8.0, "input units")])
def test_bad_eps(eps, match):
    model = MLP(64, 3)
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    with pytest.raises(InputError, match=match):
        bounds.interval_bounds(model, x, eps)
    with pytest.raises(InputError, match=match):
        bounds.verified_accuracy(model, x, y, eps)


def test_bad_inputs():
    model = MLP(64, 3)
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(AdverseError, match="NaN"):
        bounds.interval_bounds(model, x.masked_fill(x > 0.5, float("nan")), 0.1)
    with pytest.raises(AdverseError, match="outside bounds"):
        bounds.verify(model, x + 1.5, torch.tensor([0, 1]), 0.1)
    with pytest.raises(AdverseError, match="labels"):
        bounds.verify(model, x, torch.tensor([0, 7]), 0.1)
    bn = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(ModelError, match="BatchNorm"):
        bounds.ibp_train(bn, digits("train").subset(64), eps=0.1, epochs=1)
    with pytest.raises(InputError, match="input units"):
        bounds.ibp_train(MLP(64, 10), digits("train").subset(64), eps=2.0, epochs=1)
