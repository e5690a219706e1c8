"""Threat models: norms, exact projections onto the Lp ball ∩ box, random starts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from adverse.errors import AdverseError, InputError
from adverse.threat import NORMS, ThreatModel, check_norm, dual_norm, lp_norm, project, random_in_ball

FAST = settings(max_examples=examples(40), deadline=None)


# ------------------------------------------------------------------------------------------- reference solver
def _reference_projection(v: np.ndarray, lower: np.ndarray, upper: np.ndarray, eps: float, norm: str) -> np.ndarray:
    """argmin ‖d − v‖² s.t. ‖d‖_p ≤ eps, lower ≤ d ≤ upper, by SLSQP (float64)."""
    n = v.size
    opts = {"ftol": 1e-15, "maxiter": 1000}
    if norm == "linf":
        bnds = list(zip(np.maximum(lower, -eps), np.minimum(upper, eps)))
        res = minimize(lambda d: np.sum((d - v) ** 2), np.zeros(n), jac=lambda d: 2 * (d - v),
                       bounds=bnds, method="SLSQP", options=opts)
        return res.x
    if norm == "l2":
        cons = [{"type": "ineq", "fun": lambda d: eps**2 - d @ d, "jac": lambda d: -2 * d}]
        res = minimize(lambda d: np.sum((d - v) ** 2), np.zeros(n), jac=lambda d: 2 * (d - v),
                       bounds=list(zip(lower, upper)), constraints=cons, method="SLSQP", options=opts)
        return res.x
    # L1: split d = p − m with p, m ≥ 0; a convex QP with linear constraints.
    def obj(z):
        d = z[:n] - z[n:]
        return np.sum((d - v) ** 2)

    def jac(z):
        g = 2 * (z[:n] - z[n:] - v)
        return np.concatenate([g, -g])

    cons = [{"type": "ineq", "fun": lambda z: eps - z.sum(), "jac": lambda z: -np.ones(2 * n)}]
    bnds = [(0.0, max(u, 0.0)) for u in upper] + [(0.0, max(-lo, 0.0)) for lo in lower]
    res = minimize(obj, np.zeros(2 * n), jac=jac, bounds=bnds, constraints=cons, method="SLSQP", options=opts)
    return res.x[:n] - res.x[n:]


def _np_norm(d: np.ndarray, norm: str) -> float:
    return float({"linf": np.abs(d).max(), "l2": np.sqrt(d @ d), "l1": np.abs(d).sum()}[norm])


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("seed", range(12))
def test_projection_is_optimal_against_slsqp(norm: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    dim = int(rng.integers(2, 9))
    lo, hi = (0.0, 1.0) if seed % 2 else (-1.0, 2.0)
    x = rng.uniform(lo, hi, size=dim)
    if seed % 3 == 0:  # some coordinates sit exactly on the bounds
        x[0], x[-1] = lo, hi
    v = rng.normal(scale=rng.choice([0.1, 0.5, 2.0]), size=dim)
    full = _np_norm(np.clip(v, lo - x, hi - x), norm)
    eps = float(full * rng.uniform(0.05, 0.95))  # the ball constraint is active
    ours = project(torch.tensor(v[None]), torch.tensor(x[None]), eps, norm, (lo, hi))[0].numpy()
    ref = _reference_projection(v, lo - x, hi - x, eps, norm)
    assert _np_norm(ours, norm) <= eps + 1e-9
    assert np.all(x + ours >= lo - 1e-12) and np.all(x + ours <= hi + 1e-12)
    ours_obj, ref_obj = np.sum((ours - v) ** 2), np.sum((ref - v) ** 2)
    assert ours_obj <= ref_obj + 1e-9, (ours, ref)
    np.testing.assert_allclose(ours, ref, atol=1e-5)  # strictly convex: the minimizer is unique


def test_projection_batch_against_slsqp_rows() -> None:
    """A batch is projected row by row: every row of a mixed batch equals its own reference."""
    rng = np.random.default_rng(99)
    n, dim = 6, 5
    x = rng.uniform(0, 1, size=(n, dim))
    v = rng.normal(scale=0.7, size=(n, dim))
    eps = rng.uniform(0.05, 1.0, size=n)
    eps[0] = 10.0  # inside the ball: only the box acts
    for norm in NORMS:
        ours = project(torch.tensor(v), torch.tensor(x), torch.tensor(eps), norm).numpy()
        for i in range(n):
            ref = _reference_projection(v[i], -x[i], 1 - x[i], float(eps[i]), norm)
            assert np.sum((ours[i] - v[i]) ** 2) <= np.sum((ref - v[i]) ** 2) + 1e-9
            assert _np_norm(ours[i], norm) <= eps[i] + 1e-9


# ------------------------------------------------------------------------------------------- properties
SHAPES = [(1,), (7,), (3, 5), (2, 3, 3), (1, 1, 1), (4, 1, 2, 3)]


@st.composite
def problems(draw):
    norm = draw(st.sampled_from(NORMS))
    shape = draw(st.sampled_from(SHAPES))
    n = draw(st.integers(1, 5))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    bounds = draw(st.sampled_from([(0.0, 1.0), (-1.0, 2.0), (0.25, 0.5)]))
    scale = draw(st.sampled_from([1e-3, 0.1, 1.0, 3.0]))
    eps_kind = draw(st.sampled_from(["float", "tensor", "zero"]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    lo, hi = bounds
    x = lo + (hi - lo) * torch.rand((n, *shape), generator=g, dtype=torch.float64)
    if draw(st.booleans()):  # some coordinates exactly on the bounds
        mask = torch.rand(x.shape, generator=g, dtype=torch.float64) < 0.3
        x = torch.where(mask, torch.where(torch.rand(x.shape, generator=g, dtype=torch.float64) < 0.5, lo, hi), x)
    v = torch.randn((n, *shape), generator=g, dtype=torch.float64) * scale
    if eps_kind == "float":
        eps = float(torch.rand((), generator=g, dtype=torch.float64)) * 2
    elif eps_kind == "tensor":
        eps = (torch.rand(n, generator=g, dtype=torch.float64) * 2).to(dtype)
    else:
        eps = 0.0
    return norm, x.to(dtype), v.to(dtype), eps, bounds


def _eps_vec(eps, n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(eps, dtype=like.dtype).expand(n) if not torch.is_tensor(eps) or eps.dim() == 0 else eps


@FAST
@given(problems())
def test_projection_is_feasible(p) -> None:
    norm, x, v, eps, (lo, hi) = p
    d = project(v, x, eps, norm, (lo, hi))
    assert d.shape == v.shape and d.dtype == v.dtype
    e = _eps_vec(eps, x.shape[0], x)
    assert bool((lp_norm(d, norm) <= e + 1e-6).all())
    assert bool(((x + d >= lo - 1e-6) & (x + d <= hi + 1e-6)).all())
    assert bool(torch.isfinite(d).all())


@FAST
@given(problems())
def test_projection_is_idempotent(p) -> None:
    norm, x, v, eps, bounds = p
    d = project(v, x, eps, norm, bounds)
    dd = project(d, x, eps, norm, bounds)
    tol = 1e-10 if x.dtype == torch.float64 else 1e-6
    torch.testing.assert_close(dd, d, atol=tol, rtol=0)


@FAST
@given(problems())
def test_projection_leaves_feasible_points_unchanged(p) -> None:
    norm, x, v, eps, bounds = p
    lo, hi = bounds
    e = _eps_vec(eps, x.shape[0], x)
    # Make v feasible: clip to the box, then scale strictly inside the ball.
    v = torch.minimum(torch.maximum(v, lo - x), hi - x)
    nv = lp_norm(v, norm)
    factor = torch.where(nv > 0.99 * e, 0.99 * e / nv.clamp_min(1e-30), torch.ones_like(nv))
    v = v * factor.reshape(-1, *([1] * (v.dim() - 1)))
    assume_ok = bool((lp_norm(v, norm) <= e).all())
    if assume_ok:
        assert torch.equal(project(v, x, eps, norm, bounds), v)


@FAST
@given(problems())
def test_projection_with_zero_eps_is_zero(p) -> None:
    norm, x, v, _, bounds = p
    d = project(v, x, 0.0, norm, bounds)
    assert float(d.abs().max()) <= 1e-6
    d = project(v, x, torch.zeros(x.shape[0], dtype=x.dtype), norm, bounds)
    assert float(d.abs().max()) <= 1e-6


@FAST
@given(problems())
def test_per_sample_eps_equals_row_by_row(p) -> None:
    norm, x, v, _, bounds = p
    n = x.shape[0]
    eps = torch.linspace(0.0, 1.5, n, dtype=x.dtype)
    batch = project(v, x, eps, norm, bounds)
    for i in range(n):
        row = project(v[i : i + 1], x[i : i + 1], float(eps[i]), norm, bounds)
        torch.testing.assert_close(batch[i : i + 1], row, atol=1e-6 if x.dtype == torch.float32 else 1e-12, rtol=0)


@pytest.mark.parametrize("norm", NORMS)
def test_projection_accepts_a_zero_dim_eps_tensor(norm: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 6, generator=g, dtype=torch.float64)
    v = torch.randn(4, 6, generator=g, dtype=torch.float64)
    ref = project(v, x, 0.3, norm)
    torch.testing.assert_close(project(v, x, torch.tensor(0.3, dtype=torch.float64), norm), ref)
    torch.testing.assert_close(project(v, x, torch.tensor(0.3, dtype=torch.float32), norm), ref)


def test_projection_rejects_bad_eps() -> None:
    x, v = torch.rand(3, 4), torch.randn(3, 4)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(InputError):
            project(v, x, bad, "l2")
    with pytest.raises(InputError):
        project(v, x, torch.ones(2), "l2")  # wrong number of budgets
    with pytest.raises(InputError):
        project(v, x, 0.1, "l3")


def test_projection_does_not_modify_inputs() -> None:
    x, v = torch.rand(3, 4), torch.randn(3, 4) * 3
    x0, v0 = x.clone(), v.clone()
    eps = torch.full((3,), 0.2)
    for norm in NORMS:
        project(v, x, eps, norm)
    assert torch.equal(x, x0) and torch.equal(v, v0) and torch.equal(eps, torch.full((3,), 0.2))


def test_linf_projection_is_a_clip() -> None:
    x = torch.tensor([[0.1, 0.5, 0.95]])
    v = torch.tensor([[-0.5, 0.05, 0.5]])
    d = project(v, x, 0.2, "linf")
    torch.testing.assert_close(d, torch.tensor([[-0.1, 0.05, 0.05]]))


def test_l1_projection_known_value() -> None:
    # Soft threshold at λ = 0.5: |v| − λ = (1.5, 0.5, 0) → sum 2 = eps.
    x = torch.full((1, 3), 0.0, dtype=torch.float64)
    v = torch.tensor([[2.0, -1.0, 0.25]], dtype=torch.float64)
    d = project(v, x, 2.0, "l1", bounds=(-10.0, 10.0))
    torch.testing.assert_close(d, torch.tensor([[1.5, -0.5, 0.0]], dtype=torch.float64))
    # With a box that caps the first coordinate at 1: λ solves 1 + (1 − λ) + max(0.25 − λ, 0) = 1.5 → λ = 0.5.
    d = project(v, x, 1.5, "l1", bounds=(-10.0, 1.0))
    torch.testing.assert_close(d, torch.tensor([[1.0, -0.5, 0.0]], dtype=torch.float64))


def test_l2_projection_known_value() -> None:
    x = torch.tensor([[0.0, 0.5]], dtype=torch.float64)
    v = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    d = project(v, x, 0.5, "l2", bounds=(-10.0, 10.0))
    torch.testing.assert_close(d, torch.tensor([[0.3, 0.4]], dtype=torch.float64))
    # The box caps the second coordinate at 0.1; the first then takes the rest of the budget.
    d = project(v, x, 0.5, "l2", bounds=(-10.0, 0.6))
    torch.testing.assert_close(d, torch.tensor([[0.24**0.5, 0.1]], dtype=torch.float64))


# ------------------------------------------------------------------------------------------- norms
@given(st.integers(1, 4), st.sampled_from([(3,), (2, 3), (1, 2, 2)]), st.integers(0, 1000))
@settings(max_examples=examples(20), deadline=None)
def test_lp_norm_matches_numpy(n: int, shape, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    d = torch.randn((n, *shape), generator=g, dtype=torch.float64)
    flat = d.reshape(n, -1).numpy()
    np.testing.assert_allclose(lp_norm(d, "linf").numpy(), np.abs(flat).max(1))
    np.testing.assert_allclose(lp_norm(d, "l2").numpy(), np.linalg.norm(flat, axis=1))
    np.testing.assert_allclose(lp_norm(d, "l1").numpy(), np.abs(flat).sum(1))
    assert lp_norm(d, "l2").shape == (n,)


def test_lp_norm_of_empty_features() -> None:
    d = torch.zeros(3, 0)
    for norm in NORMS:
        assert torch.equal(lp_norm(d, norm), torch.zeros(3))


def test_check_norm_aliases_and_errors() -> None:
    assert check_norm("linf") == check_norm("inf") == check_norm("Linf") == check_norm("L∞") == "linf"
    assert check_norm("l2") == check_norm("L2") == check_norm(2) == "l2"
    assert check_norm("l1") == check_norm("1") == "l1"
    assert dual_norm("linf") == "l1" and dual_norm("l1") == "linf" and dual_norm("l2") == "l2"
    for bad in ("l3", "", "linfinity", None):
        with pytest.raises(AdverseError) as e:
            check_norm(bad)
        assert isinstance(e.value, ValueError)
        for name in NORMS:
            assert name in str(e.value)


# ------------------------------------------------------------------------------------------- ThreatModel
def test_threat_model_validation() -> None:
    t = ThreatModel("L2", 0.5, (-1.0, 2.0))
    assert t.norm == "l2" and t.eps == 0.5 and t.bounds == (-1.0, 2.0)
    assert ThreatModel().norm == "linf" and ThreatModel().bounds == (0.0, 1.0)
    for kwargs in ({"eps": -0.1}, {"eps": float("nan")}, {"eps": float("inf")}, {"eps": "0.1"},
                   {"norm": "l7"}, {"bounds": (1.0, 0.0)}, {"bounds": (0.5, 0.5)}):
        with pytest.raises(AdverseError):
            ThreatModel(**kwargs)
    with pytest.raises(Exception):
        t.eps = 1.0  # frozen


@pytest.mark.parametrize("norm", NORMS)
def test_threat_model_project_and_contains(norm: str) -> None:
    g = torch.Generator().manual_seed(1)
    t = ThreatModel(norm, 0.3, (0.0, 1.0))
    x = torch.rand(5, 2, 3, generator=g)
    far = x + torch.randn(5, 2, 3, generator=g)
    assert not bool(t.contains(x, far).all())
    p = t.project(x, far)
    assert bool(t.contains(x, p).all())
    assert bool(t.contains(x, x).all())
    torch.testing.assert_close(t.project(x, p), p, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------- random starts
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_random_in_ball_inside_and_seeded(norm: str, dtype: torch.dtype) -> None:
    x = torch.rand(64, 3, 4, generator=torch.Generator().manual_seed(0)).to(dtype)
    x[:, 0, 0] = 0.0
    x[:, 0, 1] = 1.0
    eps = torch.linspace(0, 2, 64, dtype=dtype)
    state = torch.get_rng_state()
    d1 = random_in_ball(x, eps, norm, torch.Generator().manual_seed(3), (0.0, 1.0))
    d2 = random_in_ball(x, eps, norm, torch.Generator().manual_seed(3), (0.0, 1.0))
    d3 = random_in_ball(x, eps, norm, torch.Generator().manual_seed(4), (0.0, 1.0))
    assert torch.equal(torch.get_rng_state(), state), "random_in_ball must not touch the global RNG"
    assert torch.equal(d1, d2) and not torch.equal(d1, d3)
    assert d1.shape == x.shape and d1.dtype == dtype
    assert bool((lp_norm(d1, norm) <= eps + 1e-6).all())
    assert bool(((x + d1 >= 0) & (x + d1 <= 1)).all())
    assert float(d1[0].abs().max()) == 0.0  # eps = 0
    assert float(d1[1:].abs().max()) > 0


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_random_in_ball_is_uniform_in_the_ball(norm: str) -> None:
    # In 2-D, a uniform point of the ball lies in the half-radius ball with probability 1/4.
    n = 20000
    x = torch.full((n, 2), 0.5, dtype=torch.float64)
    eps = torch.full((n,), 0.2, dtype=torch.float64)
    d = random_in_ball(x, eps, norm, torch.Generator().manual_seed(0), (0.0, 1.0))
    frac = float((lp_norm(d, norm) <= 0.1).double().mean())
    assert abs(frac - 0.25) < 0.02
    assert abs(float((d[:, 0] > 0).double().mean()) - 0.5) < 0.02


@pytest.mark.parametrize("norm", NORMS)
def test_float32_projection_of_a_large_input_stays_in_the_ball(norm: str) -> None:
    """CIFAR-sized float32 inputs with an L1 budget of 12: rounding must not push ‖d‖ past eps."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 32, 32, generator=g)
    v = torch.randn(16, 3, 32, 32, generator=g)
    eps = {"linf": 8 / 255, "l2": 0.5, "l1": 12.0}[norm]
    d = project(v, x, eps, norm)
    assert d.dtype == torch.float32
    assert float(lp_norm(d.double(), norm).max()) <= eps + 1e-6
    torch.testing.assert_close(d.double(), project(v.double(), x.double(), eps, norm), atol=1e-6, rtol=0)
