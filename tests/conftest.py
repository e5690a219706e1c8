"""Shared fixtures: closed-form linear oracles and small trained models."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings
from torch import nn

from adverse.threat import lp_norm


# Hypothesis profiles. "ci" (the default): derandomized, so every run, CI's included, draws the same examples and
# a failure reproduces; no example database. "explore" (`pytest --hypothesis-profile explore`): random draws and
# EXPLORE_FACTOR times the examples of every property test, to run before a stop and fix what it finds.
EXPLORE_FACTOR = 20
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("explore", max_examples=100 * EXPLORE_FACTOR, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("ADVERSE_HYPOTHESIS_PROFILE", "ci"))


def examples(n: int) -> int:
    """``n`` examples under the "ci" profile; EXPLORE_FACTOR × n under "explore" (whose max_examples is
    EXPLORE_FACTOR × hypothesis's default of 100). Property tests pass ``max_examples=examples(n)``."""
    return max(1, n * settings.default.max_examples // 100)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One intra-op thread for the whole run: the models here are small, so one thread is fastest, and it keeps
    tests from thrashing on a busy 2-core machine. Restored at the end."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Linear(nn.Module):
    """``z = W x + b`` on flattened inputs: the minimal adversarial perturbation is known in closed form."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T + self.bias


def linear_problem(n: int, shape: tuple[int, ...], num_classes: int = 3, seed: int = 0,
                   dtype: torch.dtype = torch.float64):
    """A linear model, inputs in [0.25, 0.75] and their predicted labels.

    Returns (model, x, y). The minimal perturbation of x[i] in Lp is
    ``min_{j≠y} (z_y − z_j) / ‖w_y − w_j‖_q`` with q the dual norm (box constraints inactive for the
    distances these weights give, which ``optimal_norms`` checks).
    """
    g = torch.Generator().manual_seed(seed)
    d = int(torch.tensor(shape).prod())
    w = torch.randn(num_classes, d, generator=g, dtype=dtype)
    b = torch.randn(num_classes, generator=g, dtype=dtype) * 0.1
    x = 0.25 + 0.5 * torch.rand((n, *shape), generator=g, dtype=dtype)
    model = Linear(w, b, shape).to(dtype)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def optimal_norms(model: Linear, x: torch.Tensor, y: torch.Tensor, norm: str) -> torch.Tensor:
    """Closed-form minimal Lp distance to the decision boundary of a linear model (ignoring the box)."""
    q = {"linf": 1.0, "l2": 2.0, "l1": float("inf")}[norm]
    with torch.no_grad():
        z = model(x)
        w = model.weight
        best = torch.full((x.shape[0],), float("inf"), dtype=x.dtype)
        for j in range(w.shape[0]):
            dw = w[y] - w[j]  # (n, d)
            gap = z.gather(1, y[:, None]).squeeze(1) - z[:, j]
            dist = gap / dw.norm(p=q, dim=1).clamp_min(1e-12)
            dist = torch.where(y == j, torch.full_like(dist, float("inf")), dist)
            best = torch.minimum(best, dist)
    return best


@pytest.fixture(scope="session")
def digits_test():
    from adverse.data import digits

    return digits("test")


@pytest.fixture(scope="session")
def digits_cnn():
    from adverse.zoo import pretrained

    return pretrained("digits-cnn")


@pytest.fixture(scope="session")
def digits_cnn_at():
    from adverse.zoo import pretrained

    return pretrained("digits-cnn-at")


class TinyNet(nn.Module):
    """A small CNN with BatchNorm and Dropout, to check that attacks leave model state untouched."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 6 * 6, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1))


@pytest.fixture
def tiny_net():
    torch.manual_seed(0)
    net = TinyNet()
    with torch.no_grad():  # non-trivial running statistics
        net.bn.running_mean.uniform_(-0.1, 0.1)
        net.bn.running_var.uniform_(0.5, 1.5)
    return net


# --------------------------------------------------------------------------------------------- black boxes
class NoGradBox:
    """A model seen only through its outputs: records whether gradients were on and any backward pass."""

    def __init__(self, model: torch.nn.Module, transform=None) -> None:
        self.model, self.transform = model, transform
        self.rows = 0
        self.grad_enabled_calls = 0
        self.backwards = 0
        self.handle = model.register_full_backward_hook(self._hook)

    def _hook(self, *args) -> None:
        self.backwards += 1

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        self.grad_enabled_calls += int(torch.is_grad_enabled() or x.requires_grad)
        out = self.model(x)
        return out if self.transform is None else self.transform(out)

    def check_no_gradients(self) -> None:
        self.handle.remove()
        assert self.grad_enabled_calls == 0 and self.backwards == 0
        assert all(p.grad is None for p in self.model.parameters())


def _exact_linf_robust(clf, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-sample: is a linear classifier (argmax of W x + b) robust at L∞ eps inside [0, 1]? Exact: z_j − z_y
    is linear, so its largest value over the ball ∩ box moves each coordinate by its room in the sign of
    w_j − w_y."""
    flat = x.flatten(1).double()
    w, b = torch.as_tensor(clf.coef_).double(), torch.as_tensor(clf.intercept_).double()
    z = flat @ w.T + b
    robust = z.argmax(1) == y
    for j in range(w.shape[0]):
        a = w[j] - w[y]
        gap = z.gather(1, y[:, None]).squeeze(1) - z[:, j]
        room = torch.where(a >= 0, (1 - flat).clamp(max=eps), flat.clamp(max=eps))
        robust &= ~(((a.abs() * room).sum(1) >= gap) & (y != j))
    return robust


@pytest.fixture(scope="session")
def logistic():
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    from adverse.data import digits

    train = digits("train")
    with threadpool_limits(1):
        return LogisticRegression(max_iter=300).fit(train.x.flatten(1).numpy(), train.y.numpy())


class PerSampleCounter:
    """Counts the queries of each sample: every query lies within ``radius`` of exactly one clean input."""

    def __init__(self, model, x: torch.Tensor, radius: float, norm: str) -> None:
        self.model, self.x, self.radius, self.norm = model, x.flatten(1), radius, norm
        self.counts = torch.zeros(x.shape[0], dtype=torch.long)

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        diff = q.flatten(1)[:, None, :] - self.x[None]
        dist = diff.abs().amax(dim=2) if self.norm == "linf" else diff.norm(dim=2)
        near = dist <= self.radius + 1e-6
        assert bool((near.sum(dim=1) == 1).all()), "a query is not near exactly one input"
        self.counts += near.long().sum(dim=0)
        with torch.no_grad():
            return self.model(q)


# --------------------------------------------------------------------------------------------- minimal-norm oracles
def check_against_oracle(r, model, x, y, target, opt, norm, typical: float | None = None):
    """A minimal-norm result on a linear problem against the exact optimum ``opt``: every sample fooled (or sent
    to ``target``), norms the real norms, between 0.999 × and 1.25 × optimal, and — with ``typical`` — a median
    ratio ≤ ``typical``; outputs inside [0, 1]."""
    assert torch.isfinite(opt).all()
    pred = model(r.x_adv).argmax(dim=1)
    assert r.success.all()
    assert (pred == target).all() if target is not None else (pred != y).all()
    assert r.eps is None and r.norm == norm
    torch.testing.assert_close(r.norms, lp_norm(r.x_adv - x, norm), rtol=0, atol=1e-12)
    ratio = r.norms / opt
    assert (ratio <= 1.25).all(), f"norms above 1.25 × optimal: {ratio.tolist()}"
    assert (ratio >= 0.999).all(), f"norms below the optimum (bookkeeping bug): {ratio.tolist()}"
    if typical is not None:
        assert float(ratio.median()) <= typical, f"the attack should be close to optimal: {ratio.tolist()}"
    if target is None:
        assert (r.norms >= 0.999 * optimal_norms(model, x, y, norm)).all()
    assert ((r.x_adv >= 0) & (r.x_adv <= 1)).all()
