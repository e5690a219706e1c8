"""Oracle tests for FGSM, BIM, PGD and MI-FGSM on linear models, whose optimal perturbations are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import Linear, linear_problem, optimal_norms
from scipy.optimize import linprog
from torch import nn

import adverse.evasion.gradient as gradient_mod
from adverse.evasion import bim, fgsm, mifgsm, pgd
from adverse.threat import lp_norm

SHAPES = [(8,), (4, 6), (2, 5, 5)]
NORMS = ["linf", "l2", "l1"]


class Recorder(nn.Module):
    """Counts the rows that really pass through the model, with and without a graph."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = model
        self.rows = 0
        self.grad_rows = 0
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        self.calls.append(x.shape[0])
        if torch.is_grad_enabled() and x.requires_grad:
            self.grad_rows += x.shape[0]
        return self.inner(x)


def _pred(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


def _other_direction(model: Linear, y: torch.Tensor) -> torch.Tensor:
    """w_other − w_y for a 2-class linear model, per sample (n, d)."""
    w = model.weight.detach()
    return w[1 - y] - w[y]


def two_class_problem(n: int, shape: tuple[int, ...], seed: int):
    """``linear_problem`` with two classes and the bias moved so the boundary crosses the centre of the box."""
    model, x, _ = linear_problem(n, shape, num_classes=2, seed=seed)
    with torch.no_grad():
        centre = torch.full((1, *shape), 0.5, dtype=x.dtype)
        model.bias -= model(centre)[0] - model.bias.mean()
        y = model(x).argmax(1)
    return model, x, y


def _check_success_matches_model(r, model, y, target=None) -> None:
    pred = _pred(model, r.x_adv)
    expected = pred != y if target is None else pred == target
    assert torch.equal(r.success, expected)
    assert r.robust_accuracy == pytest.approx(1 - r.success.double().mean().item())


# ----------------------------------------------------------------------------------------- closed-form steps
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", [1, 3, 8])
def test_fgsm_linf_is_eps_times_the_sign(shape, n) -> None:
    model, x, y = two_class_problem(n, shape, seed=n)
    eps = 0.2  # x in [0.25, 0.75]: the box never clips
    r = fgsm(model, x, y, eps=eps, norm="linf")
    expected = eps * _other_direction(model, y).sign()
    torch.testing.assert_close((r.x_adv - x).flatten(1), expected, atol=1e-12, rtol=0)
    _check_success_matches_model(r, model, y)
    assert torch.equal(r.norms, lp_norm(r.x_adv - x, "linf"))


@pytest.mark.parametrize("shape", SHAPES)
def test_fgsm_linf_per_sample_eps(shape) -> None:
    model, x, y = two_class_problem(5, shape, seed=1)
    eps = torch.tensor([0.0, 0.01, 0.05, 0.1, 0.2], dtype=x.dtype)
    r = fgsm(model, x, y, eps=eps, norm="linf")
    expected = eps[:, None] * _other_direction(model, y).sign()
    torch.testing.assert_close((r.x_adv - x).flatten(1), expected, atol=1e-12, rtol=0)
    assert r.eps == pytest.approx(0.2)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_l2_step_is_eps_times_the_unit_direction(shape, attack) -> None:
    model, x, y = two_class_problem(6, shape, seed=2)
    opt = optimal_norms(model, x, y, "l2")
    eps = float(opt.min()) * 0.9  # never fooled, so the last iterate is returned
    dw = _other_direction(model, y)
    # The box does not clip: every coordinate of eps·u stays under 0.25.
    assert float((eps * dw / dw.norm(dim=1, keepdim=True)).abs().max()) < 0.25
    if attack == "fgsm":
        r = fgsm(model, x, y, eps=eps, norm="l2")
    else:
        r = pgd(model, x, y, eps=eps, norm="l2", steps=10, random_start=False, early_stop=False)
    expected = eps * dw / dw.norm(dim=1, keepdim=True)
    torch.testing.assert_close((r.x_adv - x).flatten(1), expected, atol=1e-12, rtol=0)
    assert not bool(r.success.any())
    torch.testing.assert_close(r.norms, torch.full_like(r.norms, eps))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_iterative_attacks_reach_the_optimal_vertex(shape, norm) -> None:
    """Below the optimal budget, BIM, MI-FGSM and L∞-PGD (random start) end at eps·(optimal direction)."""
    model, x, y = two_class_problem(4, shape, seed=3)
    eps = float(optimal_norms(model, x, y, norm).min()) * 0.9
    eps = min(eps, 0.2)
    dw = _other_direction(model, y)
    expected = eps * (dw.sign() if norm == "linf" else dw / dw.norm(dim=1, keepdim=True))
    runs = [bim(model, x, y, eps=eps, norm=norm, steps=10, alpha=eps / 4),
            mifgsm(model, x, y, eps=eps, norm=norm, steps=10, alpha=eps / 4)]
    if norm == "linf":
        runs.append(pgd(model, x, y, eps=eps, norm=norm, steps=10, seed=5))
    for r in runs:
        torch.testing.assert_close((r.x_adv - x).flatten(1), expected, atol=1e-12, rtol=0, msg=r.attack)
        assert not bool(r.success.any())


@pytest.mark.parametrize("shape,k", [((8,), 1), ((4, 6), 2), ((2, 5, 5), 3)])
def test_fgsm_l1_puts_the_budget_on_the_largest_coordinates(shape, k) -> None:
    model, x, y = two_class_problem(5, shape, seed=4)
    eps = 0.2
    r = fgsm(model, x, y, eps=eps, norm="l1")  # default sparsity 0.95: k = ceil(0.05·d) coordinates
    dw = _other_direction(model, y)
    top = dw.abs().topk(k, dim=1).indices
    expected = torch.zeros_like(dw).scatter(1, top, dw.gather(1, top).sign() * eps / k)
    torch.testing.assert_close((r.x_adv - x).flatten(1), expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(r.norms, torch.full_like(r.norms, eps))


@pytest.mark.parametrize("sparsity,k", [(0.5, 4), (0.75, 2), (0.0, 8)])
def test_pgd_single_l1_step_honours_the_sparsity(sparsity, k) -> None:
    model, x, y = two_class_problem(4, (8,), seed=5)
    eps = 0.2
    r = pgd(model, x, y, eps=eps, norm="l1", steps=1, alpha=eps, random_start=False, l1_sparsity=sparsity)
    dw = _other_direction(model, y)
    top = dw.abs().topk(k, dim=1).indices
    expected = torch.zeros_like(dw).scatter(1, top, dw.gather(1, top).sign() * eps / k)
    torch.testing.assert_close((r.x_adv - x).flatten(1), expected, atol=1e-12, rtol=0)


def test_l1_step_skips_coordinates_stuck_at_the_bound() -> None:
    model, x, y = linear_problem(100, (8,), num_classes=2, seed=2)  # far from the boundary
    dw = _other_direction(model, y)
    rows = torch.arange(100)
    j = dw.abs().argmax(1)
    x = x.clone()
    # Put the best coordinate on the bound it would move towards: it cannot help, the next one takes the budget.
    x[rows, j] = torch.where(dw[rows, j] > 0, 1.0, 0.0).to(x.dtype)
    keep = _pred(model, x) == y  # still correctly classified
    x, y, dw = x[keep][:5], y[keep][:5], dw[keep][:5]
    assert len(y) == 5
    r = fgsm(model, x, y, eps=0.1, norm="l1")
    delta = (r.x_adv - x).flatten(1)
    second = dw.abs().topk(2, dim=1).indices[:, 1]
    assert torch.equal(delta.abs().argmax(1), second)
    torch.testing.assert_close(delta.abs().sum(1), torch.full((5,), 0.1, dtype=x.dtype))


# ----------------------------------------------------------------------------------------- optimal budgets
def _fitting_problem(n: int, shape: tuple[int, ...], norm: str, seed: int):
    """``n`` points of a 2-class linear problem whose optimal perturbation, scaled by 1.25, stays inside the box
    (x ∈ [0.25, 0.75], so no coordinate may move more than 0.25) and is not tiny."""
    model, x, y = two_class_problem(400, shape, seed=seed)
    opt = optimal_norms(model, x, y, norm)
    dw = _other_direction(model, y)
    reach = {"linf": opt, "l1": opt, "l2": opt * dw.abs().amax(1) / dw.norm(dim=1)}[norm]
    keep = ((1.25 * reach <= 0.25) & (opt >= 0.01)).nonzero().squeeze(1)[:n]
    assert keep.numel() == n
    return model, x[keep], y[keep], opt[keep]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", [1, 3, 8])
@pytest.mark.parametrize("norm", NORMS)
def test_pgd_succeeds_above_and_fails_below_the_optimal_norm(shape, n, norm) -> None:
    # Two classes: the loss gradient points at the only boundary (with more classes a first-order attack may
    # follow a farther boundary, so 100 % is not a property of the algorithm there).
    model, x, y, opt = _fitting_problem(n, shape, norm, seed=n + len(shape))
    hi = pgd(model, x, y, eps=1.25 * opt, norm=norm, steps=40, seed=0)
    assert bool(hi.success.all()), f"{norm}: {hi.success.tolist()}"
    _check_success_matches_model(hi, model, y)
    assert bool((hi.norms <= 1.25 * opt + 1e-9).all())
    lo = pgd(model, x, y, eps=0.8 * opt, norm=norm, steps=20, restarts=2, seed=0)
    assert not bool(lo.success.any())
    _check_success_matches_model(lo, model, y)
    assert lo.robust_accuracy == 1.0 and hi.robust_accuracy == 0.0


@pytest.mark.parametrize("norm", NORMS)
def test_budget_below_the_optimum_never_succeeds_with_three_classes(norm) -> None:
    model, x, y = linear_problem(8, (4, 6), num_classes=3, seed=7)
    opt = optimal_norms(model, x, y, norm)
    for attack in (fgsm, bim, mifgsm, pgd):
        r = attack(model, x, y, eps=0.8 * opt, norm=norm, seed=0)
        assert not bool(r.success.any()), attack.__name__
        assert bool((r.norms <= 0.8 * opt + 1e-9).all())


# ----------------------------------------------------------------------------------------- targeted
def _target_reachable(model: Linear, x: torch.Tensor, t: int, eps: float, margin: float) -> bool:
    """LP: is there δ with ‖δ‖∞ ≤ eps, x + δ ∈ [0, 1], z_t(x + δ) ≥ z_j(x + δ) + margin for all j ≠ t?"""
    w = model.weight.detach().double().numpy()
    b = model.bias.detach().double().numpy()
    xf = x.flatten().double().numpy()
    rows, rhs = [], []
    for j in range(w.shape[0]):
        if j != t:  # (w_j − w_t)·δ ≤ (w_t − w_j)·x + b_t − b_j − margin
            rows.append(w[j] - w[t])
            rhs.append((w[t] - w[j]) @ xf + b[t] - b[j] - margin)
    bounds = [(max(-eps, -v), min(eps, 1 - v)) for v in xf]
    res = linprog(np.zeros(len(xf)), A_ub=np.array(rows), b_ub=np.array(rhs), bounds=bounds, method="highs")
    return res.status == 0


@pytest.mark.parametrize("shape", SHAPES)
def test_targeted_pgd_reaches_every_reachable_target(shape) -> None:
    # For a linear model the targeted CE objective z_t − logsumexp(z) is concave, so PGD approaches its maximum.
    # Where some admissible point has z_t ≥ z_j + 1 for all j ≠ t, that maximum exceeds −log(1 + 2/e) > −log 2,
    # and every point above −log 2 is classified as t: the attack must succeed there.
    model, x, y = linear_problem(16, shape, num_classes=3, seed=18)
    eps = 0.2
    target = (y + 1 + torch.arange(16) % 2) % 3
    reachable = torch.tensor([_target_reachable(model, x[i], int(target[i]), eps, 1.0) for i in range(16)])
    unreachable = torch.tensor([not _target_reachable(model, x[i], int(target[i]), eps, 0.0) for i in range(16)])
    assert bool(reachable.any())
    r = pgd(model, x, y, eps=eps, norm="linf", steps=100, target=target, seed=0)
    assert bool(r.success[reachable].all()), (r.success.tolist(), reachable.tolist())
    assert not bool(r.success[unreachable].any())
    _check_success_matches_model(r, model, y, target)
    assert r.params["targeted"] is True
    assert bool((r.norms <= eps + 1e-12).all())


@pytest.mark.parametrize("norm", NORMS)
def test_targeted_fgsm_moves_towards_the_target(norm) -> None:
    model, x, y = two_class_problem(6, (8,), seed=9)
    target = 1 - y
    r = fgsm(model, x, y, eps=0.1, norm=norm, target=target)
    rr = fgsm(model, x, y, eps=0.1, norm=norm)
    # With two classes, moving towards the other class is the untargeted step.
    torch.testing.assert_close(r.x_adv, rr.x_adv, atol=1e-12, rtol=0)
    _check_success_matches_model(r, model, y, target)


# ----------------------------------------------------------------------------------------- bookkeeping
def test_restarts_only_touch_still_robust_points(monkeypatch) -> None:
    model, x, y = linear_problem(12, (4, 6), num_classes=3, seed=11)
    eps = optimal_norms(model, x, y, "linf")
    eps = torch.where(torch.arange(12) % 2 == 0, 1.1 * eps, 0.5 * eps)  # half the points cannot be fooled
    starts: list[torch.Tensor] = []
    real = gradient_mod.random_in_ball

    def spy(x0, *args, **kwargs):
        starts.append(x0.clone())
        return real(x0, *args, **kwargs)

    monkeypatch.setattr(gradient_mod, "random_in_ball", spy)
    runs = [pgd(model, x, y, eps=eps, norm="linf", steps=3, restarts=r, seed=1) for r in (1, 2, 3)]
    assert len(starts) == 1 + 2 + 3
    starts = starts[3:]  # the three restarts of the last run
    assert torch.equal(starts[0], x)
    for r in range(1, 3):
        robust = ~runs[r - 1].success
        assert torch.equal(starts[r], x[robust]), f"restart {r + 1} touched fooled points"
    for a, b in zip(runs, runs[1:]):
        assert bool((a.success <= b.success).all())  # restarts only add successes
        done = a.success
        assert torch.equal(b.x_adv[done], a.x_adv[done])  # and leave found adversarials alone
    assert not bool(runs[-1].success[1::2].any())


class WindowModel(nn.Module):
    """Two classes; class 1 wins only while ‖x − x0‖∞ lies in a window, and the gradient keeps pushing outwards.

    An ascent that keeps going after it fooled the model leaves the adversarial region again.
    """

    def __init__(self, x0: torch.Tensor, lo: float, hi: float) -> None:
        super().__init__()
        self.register_buffer("x0", x0.clone())
        self.w = nn.Parameter(torch.full((x0[0].numel(),), 1e-3, dtype=x0.dtype))
        self.lo, self.hi = lo, hi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = (x - self.x0[: x.shape[0]]).flatten(1)
        r = d.abs().amax(1).detach()
        inside = ((r > self.lo) & (r < self.hi)).to(x.dtype)
        z1 = d @ self.w - 1 + 2 * inside
        return torch.stack([torch.zeros_like(z1), z1], 1)


@pytest.mark.parametrize("early_stop", [True, False])
def test_a_found_adversarial_is_kept(early_stop) -> None:
    x = torch.full((1, 6), 0.5, dtype=torch.float64)
    y = torch.zeros(1, dtype=torch.long)
    eps = 0.2
    model = WindowModel(x, 0.3 * eps, 0.6 * eps)
    rec = Recorder(model)
    r = bim(rec, x, y, eps=eps, norm="linf", steps=8, alpha=eps / 4, early_stop=early_stop)
    assert bool(r.success.all())
    torch.testing.assert_close(r.x_adv - x, torch.full_like(x, 0.5 * eps), atol=1e-12, rtol=0)
    assert _pred(model, r.x_adv).item() == 1
    # Iterates at 0, ε/4 and ε/2 (fooled at the third); without early stop all eight steps run.
    assert rec.grad_rows == (3 if early_stop else 8)


@pytest.mark.parametrize("norm", NORMS)
def test_once_fooled_stays_fooled_across_step_counts(norm, tiny_net) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(24, 1, 6, 6, generator=g)
    with torch.no_grad():
        y = tiny_net.eval()(x).argmax(1)
    eps = {"linf": 0.05, "l2": 0.3, "l1": 1.0}[norm]
    alpha = eps / 4
    short = pgd(tiny_net, x, y, eps=eps, norm=norm, steps=5, alpha=alpha, seed=3)
    long = pgd(tiny_net, x, y, eps=eps, norm=norm, steps=20, alpha=alpha, seed=3)
    assert bool((short.success <= long.success).all())
    assert torch.equal(long.x_adv[short.success], short.x_adv[short.success])  # the same iterate
    assert 0 < int(long.success.sum()) < 24  # the check is not vacuous
    for r in (short, long):
        _check_success_matches_model(r, tiny_net, y)


def test_clean_errors_count_as_successes_with_zero_perturbation() -> None:
    model, x, y = linear_problem(6, (8,), num_classes=3, seed=12)
    wrong = y.clone()
    wrong[:2] = (y[:2] + 1) % 3
    r = pgd(model, x, wrong, eps=0.01, norm="linf", steps=5)
    assert bool(r.success[:2].all())
    assert torch.equal(r.x_adv[:2], x[:2]) and bool((r.norms[:2] == 0).all())
    assert torch.equal(r.clean_correct, torch.tensor([False, False, True, True, True, True]))


# ----------------------------------------------------------------------------------------- budget accounting
@pytest.mark.parametrize("n", [1, 5])
@pytest.mark.parametrize("restarts", [1, 3])
def test_pgd_counts_without_early_stop(n, restarts) -> None:
    model, x, y = linear_problem(n, (8,), num_classes=3, seed=13)
    rec = Recorder(model)
    k = 7
    r = pgd(rec, x, y, eps=0.3, norm="linf", steps=k, restarts=restarts, early_stop=False)
    assert r.backwards == restarts * k * n
    assert r.forwards == n + restarts * (k + 1) * n  # clean pass + k gradient steps + the last iterate
    assert r.forwards == rec.rows and r.backwards == rec.grad_rows


def test_fgsm_counts() -> None:
    model, x, y = linear_problem(6, (8,), num_classes=3, seed=14)
    y = y.clone()
    y[0] = (y[0] + 1) % 3  # one clean error: no work is spent on it
    rec = Recorder(model)
    r = fgsm(rec, x, y, eps=0.01)
    assert r.backwards == 5
    assert r.forwards == 6 + 5 + 5
    assert r.forwards == rec.rows and r.backwards == rec.grad_rows
    assert r.queries == 0 and r.seconds >= 0


@pytest.mark.parametrize("attack", ["fgsm", "bim", "pgd", "mifgsm"])
@pytest.mark.parametrize("norm", NORMS)
def test_counts_match_the_real_passes_with_early_stop(attack, norm) -> None:
    model, x, y = linear_problem(10, (4, 6), num_classes=3, seed=15)
    eps = optimal_norms(model, x, y, norm) * torch.linspace(0.5, 3.0, 10, dtype=x.dtype)
    rec = Recorder(model)
    fn = {"fgsm": fgsm, "bim": bim, "pgd": pgd, "mifgsm": mifgsm}[attack]
    kw = {} if attack == "fgsm" else {"steps": 6}
    if attack == "pgd":
        kw["restarts"] = 2
    r = fn(rec, x, y, eps=eps, norm=norm, seed=0, **kw)
    assert r.forwards == rec.rows
    assert r.backwards == rec.grad_rows
    assert 0 < r.backwards < r.forwards
    _check_success_matches_model(r, model, y)


# ----------------------------------------------------------------------------------------- parameters, seeds
def test_result_records_parameters_and_seed() -> None:
    model, x, y = linear_problem(4, (8,), num_classes=3, seed=16)
    r = pgd(model, x, y, eps=0.1, norm="l2", steps=7, restarts=2, seed=42)
    assert r.attack == "pgd" and r.norm == "l2" and r.eps == pytest.approx(0.1) and r.seed == 42
    assert r.params["steps"] == 7 and r.params["restarts"] == 2
    assert r.params["alpha"] == pytest.approx(2.5 * 0.1 / 7)
    s = r.summary()
    assert s["n"] == 4 and s["seed"] == 42 and s["eps"] == pytest.approx(0.1)
    r2 = pgd(model, x, y, eps=0.1, norm="l2", steps=7, restarts=2, seed=42)
    assert torch.equal(r.x_adv, r2.x_adv)
    r3 = pgd(model, x, y, eps=0.1, norm="l2", steps=7, restarts=2, seed=43, early_stop=False)
    r4 = pgd(model, x, y, eps=0.1, norm="l2", steps=7, restarts=2, seed=42, early_stop=False)
    assert not torch.equal(r3.x_adv, r4.x_adv)


def test_default_step_sizes() -> None:
    model, x, y = linear_problem(2, (8,), num_classes=3, seed=17)
    assert fgsm(model, x, y, eps=0.1).params["alpha"] == pytest.approx(0.1)
    assert bim(model, x, y, eps=0.1, steps=5).params["alpha"] == pytest.approx(0.02)
    assert mifgsm(model, x, y, eps=0.1, steps=4).params["alpha"] == pytest.approx(0.025)
    assert pgd(model, x, y, eps=0.1, steps=10).params["alpha"] == pytest.approx(0.025)
    assert math.isclose(pgd(model, x, y, eps=0.1, alpha=0.003).params["alpha"], 0.003)
