"""SimBA and NES/SPSA: strength through a black box only (undefended CNN; a scikit-learn model against its
exact L∞ robust accuracy; linear oracles), query accounting (property tests with a per-sample counter), the
threat model (L∞ and L2, per-sample eps, other bounds), SimBA's L2 geometry and DCT basis, probabilities
versus logits, determinism, model-state hygiene and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import NoGradBox, PerSampleCounter, _exact_linf_robust, examples, linear_problem, optimal_norms
from hypothesis import given, settings
from hypothesis import strategies as st

from adverse.errors import AdverseError, InputError, ModelError
from adverse.evasion.nes import nes
from adverse.evasion.simba import dct_basis, dct_directions, simba
from adverse.models import BlackBox
from adverse.threat import lp_norm

ATTACKS = {"simba": simba, "nes": nes}


@pytest.fixture(scope="module")
def points(digits_test):
    return digits_test.x[:150], digits_test.y[:150]


# ----------------------------------------------------------------------------------- strength, black box only
@pytest.mark.parametrize("name", ["simba", "nes"])
def test_undefended_cnn_falls_through_a_black_box(digits_cnn, points, name):
    """Defaults, L∞ eps 0.3, 150 test points. Measured (seed 0, one thread): SimBA robust accuracy 0.0 with
    43 queries per point on average (about 1.5 s); NES 0.0 with 324 (about 13 s)."""
    x, y = points
    fn = NoGradBox(digits_cnn)
    box = BlackBox(fn)
    r = ATTACKS[name](box, x, y, eps=0.3)
    fn.check_no_gradients()
    assert r.clean_accuracy >= 0.95
    assert r.robust_accuracy <= 0.05
    assert r.queries == box.queries == fn.rows
    assert r.params["queries_mean"] == pytest.approx(r.queries / len(y))
    assert r.params["queries_mean"] <= (150 if name == "simba" else 1000)  # far inside the default budget
    with torch.no_grad():
        pred = digits_cnn(r.x_adv).argmax(1)
    assert torch.equal(r.success, pred != y)  # success is what the model says, not bookkeeping
    assert bool((r.norms <= 0.3 + 1e-6).all())


@pytest.mark.parametrize("name", ["simba", "nes"])
def test_logistic_regression_through_a_black_box(logistic, points, name):
    """scikit-learn's probabilities through BlackBox (which flattens the images for the estimator): fooled
    everywhere at eps 0.3; at eps 0.1 never below the exact robust accuracy, and close to it. Measured on the
    first 60 points at eps 0.1 (exact 0.60 on 150 points): SimBA 0.62, NES 0.64 on 150 points."""
    from threadpoolctl import threadpool_limits

    x, y = points
    attack = ATTACKS[name]
    with threadpool_limits(1):
        r = attack(BlackBox(logistic), x[:60], y[:60], eps=0.3)
        assert r.robust_accuracy <= 0.02
        xs, ys = x[:60], y[:60]
        r = attack(BlackBox(logistic), xs, ys, eps=0.1, max_queries=3000)
        pred = torch.as_tensor(logistic.predict(r.x_adv.flatten(1).numpy()))
    exact = _exact_linf_robust(logistic, xs, ys, 0.1)
    assert torch.equal(r.success, pred != ys)
    assert not bool((r.success & exact).any())  # nothing the exact solution proves robust is "fooled"
    gap = r.robust_accuracy - exact.float().mean().item()
    assert -1e-9 <= gap <= 0.1, (r.robust_accuracy, exact.float().mean().item())


@pytest.mark.parametrize("method", ["nes", "spsa"])
@pytest.mark.parametrize("norm, eps", [("linf", 0.2), ("l2", 0.6)])
def test_nes_and_spsa_on_a_linear_oracle(method, norm, eps):
    """A linear model inside the box: the minimal distance to the boundary is known in closed form. Every
    point closer than eps/2 falls; none farther than eps can (that would break the threat model)."""
    model, x, y = linear_problem(40, (16,), num_classes=3, seed=1, dtype=torch.float32)
    r = nes(model, x, y, eps=eps, norm=norm, method=method, max_queries=2000)
    dist = optimal_norms(model, x, y, norm)
    assert bool(r.success[dist < eps / 2].all())
    assert not bool(r.success[dist > eps + 1e-4].any())


@pytest.mark.parametrize("basis", ["pixel", "dct"])
def test_simba_on_a_linear_oracle(basis):
    model, x, y = linear_problem(40, (1, 4, 4), num_classes=3, seed=1, dtype=torch.float32)
    r = simba(model, x, y, eps=0.2, basis=basis, max_queries=2000)
    dist = optimal_norms(model, x, y, "linf")
    assert bool(r.success[dist < 0.1].all())
    assert not bool(r.success[dist > 0.2 + 1e-4].any())


# ----------------------------------------------------------------------------------------- query accounting
def _distinct_points(digits_test, start: int, n: int = 5):
    """n test points pairwise farther apart than 1 in L∞ and 2 in L2, so each query has one owner."""
    x, y = digits_test.x[start:start + 40], digits_test.y[start:start + 40]
    keep = [0]
    for i in range(1, x.shape[0]):
        d = (x[i] - x[keep]).flatten(1)
        if bool((d.abs().amax(1) > 0.9).all()) and bool((d.norm(dim=1) > 2.0).all()):
            keep.append(i)
        if len(keep) == n:
            break
    return x[keep], y[keep]


@settings(max_examples=examples(12), deadline=None)
@given(max_queries=st.integers(4, 60), norm=st.sampled_from(["linf", "l2"]),
       basis=st.sampled_from(["pixel", "dct"]), start=st.integers(0, 400))
def test_simba_max_queries_never_exceeded(digits_cnn_at, digits_test, max_queries, norm, basis, start):
    x, y = _distinct_points(digits_test, start)
    eps = 0.2 if norm == "linf" else 0.8
    counter = PerSampleCounter(digits_cnn_at, x, eps, norm)
    box = BlackBox(counter, max_queries=max_queries * x.shape[0])
    r = simba(box, x, y, eps=eps, norm=norm, basis=basis, max_queries=max_queries)
    assert bool((counter.counts <= max_queries).all())
    assert int(counter.counts.sum()) == r.queries == box.queries
    assert r.params["queries_mean"] == pytest.approx(counter.counts.double().mean().item())
    assert bool((counter.counts[~r.clean_correct] == 1).all())  # already wrong: the clean query only


@settings(max_examples=examples(12), deadline=None)
@given(max_queries=st.integers(4, 80), samples=st.integers(1, 6), norm=st.sampled_from(["linf", "l2"]),
       method=st.sampled_from(["nes", "spsa"]), start=st.integers(0, 400))
def test_nes_max_queries_never_exceeded(digits_cnn_at, digits_test, max_queries, samples, norm, method,
                                       start):
    x, y = _distinct_points(digits_test, start)
    eps = 0.2 if norm == "linf" else 0.8
    # probes x_k ± σu reach beyond eps by |σu| (a few σ); the points lie far enough apart for a wide margin
    counter = PerSampleCounter(digits_cnn_at, x, eps + 0.05, norm)
    box = BlackBox(counter, max_queries=max_queries * x.shape[0])
    r = nes(box, x, y, eps=eps, norm=norm, samples=samples, sigma=0.001, method=method,
            max_queries=max_queries)
    assert bool((counter.counts <= max_queries).all())
    assert int(counter.counts.sum()) == r.queries == box.queries
    assert bool((counter.counts[~r.clean_correct] == 1).all())
    # a sample that was never fooled ran until fewer than 3 queries (one pair and the check) were left
    alive = r.clean_correct & ~r.success
    assert bool((counter.counts[alive] >= max_queries - 2).all())


def test_steps_bound_nes_iterations(digits_cnn_at, digits_test):
    x, y = digits_test.x[:10], digits_test.y[:10]
    r = nes(digits_cnn_at, x, y, eps=0.05, steps=2, samples=3, max_queries=1000)
    assert r.queries <= 10 * (1 + 2 * (2 * 3 + 1))


def test_only_unfooled_samples_are_queried(digits_cnn, digits_test):
    """Queries shrink as samples fall: each batch holds only samples still robust."""
    x, y = digits_test.x[:20], digits_test.y[:20]
    for attack in (simba, nes):
        sizes = []

        def fn(q, sizes=sizes):
            sizes.append(q.shape[0])
            with torch.no_grad():
                return digits_cnn(q)

        r = attack(BlackBox(fn), x, y, eps=0.3)
        assert sizes[0] == 20
        assert sum(sizes) == r.queries
        assert r.robust_accuracy == 0.0


# ------------------------------------------------------------------------------------------- threat model
@pytest.mark.parametrize("name", ["simba", "nes"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_eps_ball_and_bounds_respected(digits_cnn, digits_test, name, norm):
    attack = ATTACKS[name]
    x, y = digits_test.x[:10], digits_test.y[:10]
    eps = torch.linspace(0.0, 0.3 if norm == "linf" else 2.0, 10)  # per-sample budgets, one of them 0
    kw = {"max_queries": 100} if name == "simba" else {"max_queries": 100, "samples": 5}
    r = attack(digits_cnn, x, y, eps=eps, norm=norm, **kw)
    assert bool((lp_norm(r.x_adv - x, norm) <= eps + 1e-6).all())
    assert bool(((r.x_adv >= 0) & (r.x_adv <= 1)).all())
    assert torch.equal(r.x_adv[0], x[0])
    assert r.success.any()

    # other bounds: the same model on inputs in [-1, 1]
    def shifted(z):
        with torch.no_grad():
            return digits_cnn((z + 1) / 2)

    xs = 2 * x - 1
    kw_big = dict(kw, step=0.4) if name == "simba" else kw
    r = attack(BlackBox(shifted), xs, y, eps=2 * eps, norm=norm, bounds=(-1.0, 1.0), **kw_big)
    assert bool((lp_norm(r.x_adv - xs, norm) <= 2 * eps + 1e-5).all())
    assert bool(((r.x_adv >= -1) & (r.x_adv <= 1)).all())
    assert r.success.any()


def test_simba_l2_geometry():
    """Unprojected, SimBA's perturbation is a sum of ± step along distinct orthonormal directions, so
    ‖δ‖₂² / step² is the number of accepted steps, an integer (16 queries after the clean one allow 16
    directions at most: one pass, no direction twice)."""
    model, x, y = linear_problem(20, (1, 4, 4), num_classes=3, seed=2, dtype=torch.float64)
    step = 0.03  # 16 steps of 0.03 along unit directions move no pixel past 0.25: the box stays inactive
    for basis in ("pixel", "dct"):
        r = simba(model, x, y, eps=100.0, norm="l2", step=step, basis=basis, max_queries=17)
        k = (r.norms / step) ** 2
        assert torch.allclose(k, k.round(), atol=1e-6), k
        assert bool((k.round() >= 1).all()) and bool((k.round() <= 16).all())


def test_simba_eps_zero_spends_no_queries(digits_cnn, digits_test):
    """Every step projects back onto x: nothing to ask, and the attack ends after one pass of directions."""
    x, y = digits_test.x[:8], digits_test.y[:8]
    for basis in ("pixel", "dct"):
        r = simba(digits_cnn, x, y, eps=0.0, basis=basis)
        assert r.queries == 8 and torch.equal(r.x_adv, x)


def test_simba_stops_at_a_local_optimum():
    """A black box whose scores never change: no step improves, so each sample stops after one pass."""
    x = torch.full((3, 1, 4, 4), 0.5)
    y = torch.zeros(3, dtype=torch.long)
    box = BlackBox(lambda z: torch.tensor([[2.0, 0.0]]).repeat(z.shape[0], 1))
    r = simba(box, x, y, eps=0.3)
    assert r.queries == 3 * (1 + 2 * 16)
    assert r.robust_accuracy == 1.0


# ------------------------------------------------------------------------------------- the algorithm's parts
@pytest.mark.parametrize("n", [1, 2, 5, 8, 13])
def test_dct_basis_is_the_orthonormal_dct_ii(n):
    from scipy.fft import dct

    d = dct_basis(n, dtype=torch.float64)
    torch.testing.assert_close(d @ d.T, torch.eye(n, dtype=torch.float64))
    expected = dct(np.eye(n), type=2, norm="ortho", axis=0)  # column i: the DCT of the i-th unit vector
    np.testing.assert_allclose(d.numpy(), expected, atol=1e-12)


def test_dct_directions_are_orthonormal_2d_dct_images():
    from scipy.fft import idctn

    shape = (2, 3, 5)
    dh, dw = dct_basis(3, dtype=torch.float64), dct_basis(5, dtype=torch.float64)
    q = dct_directions(shape, torch.arange(30), dh, dw).flatten(1)
    torch.testing.assert_close(q @ q.T, torch.eye(30, dtype=torch.float64))
    coef = np.zeros(shape)
    coef[1, 2, 3] = 1.0
    expected = idctn(coef, type=2, norm="ortho", axes=(1, 2))  # the inverse DCT of one coefficient
    got = dct_directions(shape, torch.tensor([(1 * 3 + 2) * 5 + 3]), dh, dw)[0]
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-12)


def test_simba_strided_order(digits_cnn, digits_test):
    x, y = digits_test.x[:10], digits_test.y[:10]
    r = simba(digits_cnn, x, y, eps=0.3, basis="dct", order="strided", freq_dims=2, stride=3, max_queries=200)
    assert r.params["freq_dims"] == 2 and r.params["stride"] == 3
    assert r.success.any()


def test_probabilities_and_logits_give_the_same_decisions(digits_cnn_at, digits_test):
    """SimBA compares log-odds (monotone in p); NES's losses are shift-invariant in the logits, so a black
    box that answers with probabilities (float64 here) leads both to the same decisions as one answering
    logits."""
    x, y = digits_test.x[:6], digits_test.y[:6]

    def logits(z):
        with torch.no_grad():
            return digits_cnn_at(z)

    def probabilities(z):
        with torch.no_grad():
            return digits_cnn_at(z).double().softmax(1)

    for attack, kw in ((simba, {"max_queries": 120}), (simba, {"basis": "dct", "max_queries": 120}),
                       (nes, {"max_queries": 200, "samples": 10})):
        a = attack(BlackBox(logits), x, y, eps=0.2, **kw)
        b = attack(BlackBox(probabilities), x, y, eps=0.2, **kw)
        assert torch.equal(a.success, b.success)
        torch.testing.assert_close(a.x_adv, b.x_adv)


# ------------------------------------------------------------------------------------ semantics and hygiene
@pytest.mark.parametrize("name", ["simba", "nes"])
def test_targeted_success_means_target(digits_cnn, digits_test, name):
    x, y = digits_test.x[:20], digits_test.y[:20]
    target = (y + 1) % 10
    r = ATTACKS[name](digits_cnn, x, y, eps=0.3, target=target, max_queries=2000)
    with torch.no_grad():
        pred = digits_cnn(r.x_adv).argmax(1)
    assert torch.equal(r.success, pred == target)
    assert r.success.float().mean() >= 0.8
    assert r.params["targeted"] is True


def test_nes_ce_loss(digits_cnn, digits_test):
    """Cross-entropy of a confident model lies below float32's resolution near 0; the estimate still works."""
    x, y = digits_test.x[:20], digits_test.y[:20]
    r = nes(digits_cnn, x, y, eps=0.3, loss="ce")
    assert r.robust_accuracy <= 0.05 and r.params["loss"] == "ce"


@pytest.mark.parametrize("name, kw", [("simba", {}), ("simba", {"basis": "dct"}), ("nes", {}),
                                      ("nes", {"method": "spsa", "norm": "l2", "eps": 1.0})])
def test_deterministic_under_seed(digits_cnn_at, digits_test, name, kw):
    x, y = digits_test.x[:10], digits_test.y[:10]
    kw = {"eps": 0.15, "max_queries": 100, **kw}
    attack = ATTACKS[name]
    state = torch.random.get_rng_state()
    a = attack(digits_cnn_at, x, y, seed=3, **kw)
    b = attack(digits_cnn_at, x, y, seed=3, **kw)
    c = attack(digits_cnn_at, x, y, seed=4, **kw)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is never used
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success) and a.queries == b.queries
    assert not torch.equal(a.x_adv, c.x_adv)
    assert a.seed == 3


def test_model_state_untouched(tiny_net):
    x = torch.rand(8, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8) % 4
    tiny_net.train()
    tiny_net.conv.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    flags = [p.requires_grad for p in tiny_net.parameters()]
    for norm in ("linf", "l2"):
        simba(tiny_net, x, y, eps=0.1, norm=norm, max_queries=50)
        simba(tiny_net, x, y, eps=0.1, norm=norm, basis="dct", max_queries=50)
        nes(tiny_net, x, y, eps=0.1, norm=norm, samples=5, max_queries=50)
    assert tiny_net.training and all(m.training for m in tiny_net.modules())
    assert [p.requires_grad for p in tiny_net.parameters()] == flags
    after = tiny_net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in tiny_net.parameters())


# ------------------------------------------------------------------------------------------------ bad input
def _nan_after(fn, calls: int, value: float = float("nan")):
    """Good answers for ``calls`` calls, then one entry per row turns into ``value``."""
    seen = []

    def answer(z):
        seen.append(1)
        out = fn(z)
        if len(seen) > calls:
            out = out.clone()
            out[:, 0] = value
        return out

    return answer


@pytest.mark.parametrize("name", ["simba", "nes"])
def test_bad_input(digits_cnn, digits_test, name):
    attack = ATTACKS[name]
    x, y = digits_test.x[:5], digits_test.y[:5]

    def logits(z):
        with torch.no_grad():
            return digits_cnn(z)

    bad_boxes = {
        "wrong shape": lambda z: logits(z)[:-1],
        "transposed": lambda z: logits(z).T,
        "one column": lambda z: logits(z)[:, :1],
        "NaN": lambda z: torch.full((z.shape[0], 10), float("nan")),
        "NaN later": _nan_after(logits, 1),
        "inf later": _nan_after(logits, 2, float("inf")),
    }
    for fn in bad_boxes.values():
        with pytest.raises(AdverseError):
            attack(BlackBox(fn), x, y, eps=0.3, max_queries=50)
    with pytest.raises(ModelError, match="labels"):
        attack(BlackBox(lambda z: logits(z).argmax(1)), x, y, eps=0.3)
    with pytest.raises(ModelError, match="labels"):
        attack(BlackBox(logits, output="labels"), x, y, eps=0.3)
    common = ({"norm": "l1"}, {"max_queries": 1}, {"eps": -0.1}, {"eps": float("nan")}, {"target": y[:3]},
              {"y": y + 10})
    own = ({"basis": "wavelet"}, {"order": "diag"}, {"step": 0.0}, {"step": float("inf")}, {"freq_dims": 0},
           {"stride": 0}) if name == "simba" else (
        {"method": "adam"}, {"samples": 0}, {"sigma": 0.0}, {"alpha": -1.0}, {"steps": 0}, {"loss": "hinge"},
        {"max_queries": 3})
    for kw in common + own:
        kw = dict(kw)
        yy = kw.pop("y", y)
        with pytest.raises(InputError):
            attack(digits_cnn, x, yy, **{"eps": 0.3, **kw})
    with pytest.raises(InputError):
        attack(digits_cnn, x, y[:4], eps=0.3)
    with pytest.raises(InputError):
        attack(digits_cnn, x * float("nan"), y, eps=0.3)
    with pytest.raises(InputError):
        attack(digits_cnn, x + 1.0, y, eps=0.3)  # outside the bounds


def test_simba_dct_needs_images(digits_cnn, digits_test):
    x, y = digits_test.x[:6], digits_test.y[:6]

    def flat_model(z):
        with torch.no_grad():
            return digits_cnn(z.reshape(-1, 1, 8, 8))

    with pytest.raises(InputError, match="basis='pixel'"):
        simba(BlackBox(flat_model), x.flatten(1), y, eps=0.3, basis="dct")
    r = simba(BlackBox(flat_model), x.flatten(1), y, eps=0.3)  # the pixel basis takes any shape
    assert r.robust_accuracy <= 0.2
    r = simba(BlackBox(flat_model), x.reshape(6, 8, 8), y, eps=0.3, basis="dct")  # (n, H, W): one channel
    assert r.robust_accuracy <= 0.2
