"""Square Attack: strength through a black box only (undefended CNN, a scikit-learn model against its exact
L∞ robust accuracy), query accounting (a property test), the threat model, determinism, model-state hygiene,
bad input, and black-box-versus-white-box on the adversarially trained CNN."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import NoGradBox, PerSampleCounter, _exact_linf_robust, examples
from hypothesis import given, settings
from hypothesis import strategies as st

from adverse.errors import AdverseError, InputError, ModelError
from adverse.evasion import apgd, pgd
from adverse.evasion.square import meta_pseudo_gaussian, p_selection, square
from adverse.models import BlackBox
from adverse.threat import lp_norm


@pytest.fixture(scope="module")
def points(digits_test):
    return digits_test.x[:200], digits_test.y[:200]


# ----------------------------------------------------------------------------------- strength, black box only
@pytest.mark.parametrize("norm, eps", [("linf", 0.3), ("l2", 2.0)])
def test_undefended_cnn_falls_through_a_black_box(digits_cnn, points, norm, eps):
    x, y = points
    fn = NoGradBox(digits_cnn)
    box = BlackBox(fn)
    r = square(box, x, y, eps=eps, norm=norm)
    fn.check_no_gradients()
    assert r.robust_accuracy <= 0.03
    assert r.queries == box.queries == fn.rows
    with torch.no_grad():
        pred = digits_cnn(r.x_adv).argmax(1)
    assert torch.equal(r.success, pred != y)  # success is what the model says, not bookkeeping
    assert bool((r.norms <= eps + 1e-5).all())
    assert r.params["queries_median"] < 50  # undefended: a handful of queries per point
    assert 1 <= r.params["queries_mean"] <= 5000


def test_logistic_regression_through_a_black_box(logistic, points):
    """scikit-learn's probabilities, through BlackBox (which flattens the images for the estimator): fooled
    everywhere at eps 0.3; at eps 0.1 never below the exact robust accuracy and close to it."""
    from threadpoolctl import threadpool_limits

    x, y = points
    with threadpool_limits(1):
        r = square(BlackBox(logistic), x, y, eps=0.3)
        assert r.params["probabilities"] is True
        assert r.robust_accuracy <= 0.01
        xs, ys = x[:60], y[:60]
        r = square(BlackBox(logistic), xs, ys, eps=0.1, max_queries=2000)
        pred = torch.as_tensor(logistic.predict(r.x_adv.flatten(1).numpy()))
    exact = _exact_linf_robust(logistic, xs, ys, 0.1)
    assert torch.equal(r.success, pred != ys)
    assert not bool((r.success & exact).any())  # nothing the exact solution proves robust is "fooled"
    gap = r.robust_accuracy - exact.float().mean().item()
    assert -1e-9 <= gap <= 0.05, (r.robust_accuracy, exact.float().mean().item())


# ----------------------------------------------------------------------------------------- query accounting
@settings(max_examples=examples(15), deadline=None)
@given(max_queries=st.integers(2, 40), restarts=st.integers(1, 3), norm=st.sampled_from(["linf", "l2"]),
       start=st.integers(0, 500))
def test_max_queries_never_exceeded(digits_cnn_at, digits_test, max_queries, restarts, norm, start):
    x, y = digits_test.x[start:start + 6], digits_test.y[start:start + 6]
    eps = 0.05 if norm == "linf" else 0.3
    if max_queries <= restarts:
        with pytest.raises(InputError):
            square(digits_cnn_at, x, y, eps=eps, norm=norm, max_queries=max_queries, restarts=restarts)
        return
    counter = PerSampleCounter(digits_cnn_at, x, eps, norm)
    box = BlackBox(counter)
    r = square(box, x, y, eps=eps, norm=norm, max_queries=max_queries, restarts=restarts)
    assert bool((counter.counts <= max_queries).all())
    assert int(counter.counts.sum()) == r.queries == box.queries
    assert r.params["queries_mean"] == pytest.approx(counter.counts.double().mean().item())
    assert r.params["queries_median"] == pytest.approx(counter.counts.double().median().item())
    # a sample stops once fooled; one not fooled spends its whole budget (clean query + restart shares)
    spent = 1 + (max_queries - 1) // restarts * restarts
    clean_wrong = ~r.clean_correct
    assert bool((counter.counts[clean_wrong] == 1).all())
    assert bool((counter.counts[~r.success] == spent).all())


def test_only_robust_samples_are_queried(digits_cnn, digits_test):
    """Each iteration asks only about samples still robust: the batch sizes shrink as samples fall."""
    x, y = digits_test.x[:40], digits_test.y[:40]
    sizes = []

    def fn(q):
        sizes.append(q.shape[0])
        with torch.no_grad():
            return digits_cnn(q)

    r = square(BlackBox(fn), x, y, eps=0.3)
    assert sizes[0] == 40 and sizes == sorted(sizes, reverse=True)
    assert sizes[1] == int(r.clean_correct.sum())  # the initial point of the correctly classified samples
    assert sum(sizes) == r.queries


# ------------------------------------------------------------------------------------------- threat model
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_eps_ball_and_bounds_respected(digits_cnn_at, digits_test, norm):
    x, y = digits_test.x[:30], digits_test.y[:30]
    eps = torch.linspace(0.0, 0.3 if norm == "linf" else 2.0, 30)  # per-sample budgets, one of them 0
    r = square(digits_cnn_at, x, y, eps=eps, norm=norm, max_queries=150)
    assert bool((lp_norm(r.x_adv - x, norm) <= eps + 1e-6).all())
    assert bool(((r.x_adv >= 0) & (r.x_adv <= 1)).all())
    assert torch.equal(r.x_adv[0], x[0])

    # other bounds: the same model on inputs in [-1, 1]
    def shifted(z):
        with torch.no_grad():
            return digits_cnn_at((z + 1) / 2)

    xs = 2 * x - 1
    r = square(BlackBox(shifted), xs, y, eps=2 * eps, norm=norm, max_queries=150, bounds=(-1.0, 1.0))
    assert bool((lp_norm(r.x_adv - xs, norm) <= 2 * eps + 1e-5).all())
    assert bool(((r.x_adv >= -1) & (r.x_adv <= 1)).all())
    assert r.success.any()


def test_inputs_that_are_not_images_raise_or_work_as_single_rows(digits_cnn, digits_test):
    x, y = digits_test.x[:10], digits_test.y[:10]

    def flat_model(z):
        with torch.no_grad():
            return digits_cnn(z.reshape(-1, 1, 8, 8))

    with pytest.raises(InputError, match="images of shape"):
        square(BlackBox(flat_model), x.flatten(1), y, eps=0.3)
    r = square(BlackBox(flat_model), x.reshape(10, 1, 1, 64), y, eps=0.3, max_queries=300)  # 1 × 64 "image"
    assert r.robust_accuracy <= 0.2
    assert bool((r.norms <= 0.3 + 1e-6).all())


# ------------------------------------------------------------------------------------- the algorithm's parts
def test_p_schedule_matches_the_reference_breakpoints():
    steps = {0: 0.8, 10: 0.8, 11: 0.4, 50: 0.4, 51: 0.2, 200: 0.2, 201: 0.1, 500: 0.1, 501: 0.05, 1001: 0.025,
             2001: 0.0125, 4001: 0.8 / 128, 6001: 0.8 / 256, 8001: 0.8 / 512, 9999: 0.8 / 512}
    for it, p in steps.items():
        assert p_selection(0.8, it, 10000) == pytest.approx(p)
        assert p_selection(0.8, it // 2, 5000) == pytest.approx(p_selection(0.8, (it // 2) * 2, 10000))


@pytest.mark.parametrize("side", [1, 3, 4, 5, 7, 10])
def test_l2_pattern(side):
    eta = meta_pseudo_gaussian(side, torch.float64, torch.device("cpu"))
    assert eta.shape == (side, side)
    assert eta.norm().item() == pytest.approx(1.0)
    top, bottom = eta[: side // 2], eta[side // 2:]
    assert bool((top > 0).all()) and bool((bottom < 0).all())
    # each half peaks at its centre and is symmetric left-right for odd widths
    c = bottom.shape[0] // 2
    assert bottom.abs().argmax().item() == c * side + side // 2
    if side % 2:
        assert torch.allclose(eta, eta.flip(1))


# ------------------------------------------------------------------------------------ semantics and hygiene
def test_targeted_success_means_target(digits_cnn, digits_test):
    x, y = digits_test.x[:30], digits_test.y[:30]
    target = (y + 1) % 10
    for loss in ("margin", "ce"):
        r = square(digits_cnn, x, y, eps=0.3, target=target, loss=loss, max_queries=1000)
        with torch.no_grad():
            pred = digits_cnn(r.x_adv).argmax(1)
        assert torch.equal(r.success, pred == target)
        assert r.success.float().mean() >= 0.8


def test_ce_loss_and_restarts(digits_cnn, digits_test):
    x, y = digits_test.x[:50], digits_test.y[:50]
    r = square(digits_cnn, x, y, eps=0.3, loss="ce", restarts=2, max_queries=400)
    assert r.robust_accuracy <= 0.05
    assert r.params["loss"] == "ce" and r.params["restarts"] == 2


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_deterministic_under_seed(digits_cnn_at, digits_test, norm):
    x, y = digits_test.x[:20], digits_test.y[:20]
    eps = 0.15 if norm == "linf" else 1.0
    state = torch.random.get_rng_state()
    a = square(digits_cnn_at, x, y, eps=eps, norm=norm, max_queries=100, seed=3)
    b = square(digits_cnn_at, x, y, eps=eps, norm=norm, max_queries=100, seed=3)
    c = square(digits_cnn_at, x, y, eps=eps, norm=norm, max_queries=100, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is never used
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success) and a.queries == b.queries
    assert not torch.equal(a.x_adv, c.x_adv)


def test_model_state_untouched(tiny_net):
    x = torch.rand(8, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8) % 4
    tiny_net.train()
    tiny_net.conv.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    flags = [p.requires_grad for p in tiny_net.parameters()]
    for norm in ("linf", "l2"):
        square(tiny_net, x, y, eps=0.1, norm=norm, max_queries=50)
    assert tiny_net.training and all(m.training for m in tiny_net.modules())
    assert [p.requires_grad for p in tiny_net.parameters()] == flags
    after = tiny_net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in tiny_net.parameters())


# ------------------------------------------------------------------------------------------------ bad input
def _nan_after(fn, calls: int):
    seen = []

    def answer(z):
        seen.append(1)
        out = fn(z)
        return out if len(seen) <= calls else out * float("nan")

    return answer


def test_bad_input(digits_cnn, digits_test):
    x, y = digits_test.x[:5], digits_test.y[:5]

    def logits(z):
        with torch.no_grad():
            return digits_cnn(z)

    bad_boxes = {
        "wrong shape": lambda z: logits(z)[:, :1].repeat(1, 2)[:-1],
        "transposed": lambda z: logits(z).T,
        "NaN": lambda z: torch.full((z.shape[0], 10), float("nan")),
        "NaN later": _nan_after(logits, 3),
    }
    for fn in bad_boxes.values():
        with pytest.raises(AdverseError):
            square(BlackBox(fn), x, y, eps=0.3, max_queries=20)
    with pytest.raises(ModelError, match="labels"):
        square(BlackBox(lambda z: logits(z).argmax(1)), x, y, eps=0.3)
    with pytest.raises(ModelError, match="labels"):
        square(BlackBox(logits, output="labels"), x, y, eps=0.3)
    for kw in ({"loss": "dlr"}, {"restarts": 0}, {"p_init": 0.0}, {"p_init": 1.5}, {"norm": "l1"},
               {"max_queries": 1}, {"max_queries": 2, "restarts": 2}, {"eps": -0.1}):
        with pytest.raises(InputError):
            square(digits_cnn, x, y, **{"eps": 0.3, **kw})
    with pytest.raises(InputError):
        square(digits_cnn, x, y[:4], eps=0.3)
    with pytest.raises(InputError):
        square(digits_cnn, x * float("nan"), y, eps=0.3)


# ------------------------------------------------------------------------------ black box vs white box (AT)
def test_black_box_does_not_beat_white_box_on_an_honest_model(digits_cnn_at, digits_test):
    """On the adversarially trained CNN (L∞ eps 0.2, first 100 test points) the gradient attacks are not
    masked, so Square at 1000 queries should not find what they miss. Measured (seed 0): Square 0.63 (mean
    661 queries per point, median 58 over the points it fools), APGD-CE 0.64, APGD-DLR 0.67, PGD-40 0.66, their
    per-sample union 0.63; Square fools one point that all three miss. On 8×8 images (64 features) random
    search is as strong as a single white-box run, so the check is against the union (with a 3-point slack
    against the best single run). With digits-cnn-at trained with seed 2 (benchmarks/seed_margins.sh): Square
    0.66, union 0.67, one point beyond the union again: the allowance is 2 points, below the union too."""
    x, y = digits_test.x[:100], digits_test.y[:100]
    sq = square(BlackBox(NoGradBox(digits_cnn_at)), x, y, eps=0.2, max_queries=1000)
    white = [apgd(digits_cnn_at, x, y, eps=0.2, loss="ce"), apgd(digits_cnn_at, x, y, eps=0.2, loss="dlr"),
             pgd(digits_cnn_at, x, y, eps=0.2, steps=40)]
    union = torch.stack([w.success for w in white]).any(dim=0)
    union_ra = 1 - union.float().mean().item()
    assert sq.robust_accuracy >= union_ra - 0.02 - 1e-9
    assert int((sq.success & ~union).sum()) <= 2
    assert sq.robust_accuracy >= min(w.robust_accuracy for w in white) - 0.03
    assert math.isfinite(sq.params["queries_mean"])
