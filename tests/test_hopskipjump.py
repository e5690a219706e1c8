"""HopSkipJumpAttack: decision-based (labels only), L2 and L∞.

The oracle: on a linear model the smallest perturbation that changes the decision is known in closed form
(``conftest.optimal_norms``), so HSJ's norms are checked from both sides: never below the optimum (the output
really is adversarial) and within 25 % of it after a few thousand queries. Then: an undefended CNN through a
labels-only black box, a scikit-learn classifier that has only ``predict``, the per-sample query budget, the
threat model with ``eps``, determinism, model state and bad input.
"""

from __future__ import annotations

import contextlib
from unittest import mock

import pytest
import torch
from conftest import examples, linear_problem, optimal_norms
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adverse.errors import AdverseError
from adverse.evasion._query import query_setup
from adverse.evasion.hopskipjump import hopskipjump
from adverse.models import BlackBox
from adverse.threat import lp_norm


def labels_box(model: torch.nn.Module) -> BlackBox:
    """A black box that answers with labels only."""

    def predict(z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(z).argmax(dim=1)

    return BlackBox(predict, output="labels")


def predictions(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x).argmax(dim=1)


# --------------------------------------------------------------------------------------------- the oracle
def face_distance(model, x: torch.Tensor, y: torch.Tensor, k: torch.Tensor, norm: str):
    """Distance from x to the hyperplane ``z_y = z_k`` (in ``norm``), and whether its nearest point is a true
    local optimum of the attack: inside the box [0, 1] and with ``z_k`` the largest logit but ``z_y`` there."""
    q = {"l2": 2.0, "linf": 1.0}[norm]
    with torch.no_grad():
        z, w = model(x), model.weight
        dw = w[y] - w[k]
        gap = z.gather(1, y[:, None]).squeeze(1) - z.gather(1, k[:, None]).squeeze(1)
        dist = gap / dw.norm(p=q, dim=1)
        step = dw / dw.norm(dim=1, keepdim=True) ** 2 if norm == "l2" else dw.sign() / dw.norm(p=1, dim=1, keepdim=True)
        point = x.flatten(1) - gap[:, None] * step
        zp = model(point)
        others = zp.scatter(1, torch.stack([y, k], 1), float("-inf")).amax(1)
        valid = ((point >= 0) & (point <= 1)).all(1) & (zp.gather(1, k[:, None]).squeeze(1) > others + 1e-9)
    return dist, valid & (k != y)


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("num_classes", [2, 3])
def test_linear_oracle(norm, num_classes):
    """Never below the optimum; within 25 % of the nearest boundary point of the class it reaches, which for two
    classes (one boundary) is the optimum. With three classes the boundary has a kink, and a local search may
    settle on the face of the farther class (a local optimum, as for any boundary-following attack)."""
    model, x, y = linear_problem(12, (8,), num_classes, seed=3)
    opt = optimal_norms(model, x, y, norm)
    box = labels_box(model)
    r = hopskipjump(box, x, y, norm=norm, max_queries=3000, steps=1000)
    assert r.eps is None and bool(r.success.all())
    reached = predictions(model, r.x_adv)
    assert bool((reached != y).all())
    assert bool((r.norms >= 0.999 * opt).all()), (r.norms / opt).min()  # adversarial: never below the optimum
    face, valid = face_distance(model, x, y, reached, norm)
    assert int(valid.sum()) >= 8  # elsewhere the box binds: the optimum is farther than the closed form
    assert bool((r.norms <= 1.25 * face)[valid].all()), (r.norms / face)[valid].max()
    if num_classes == 2:  # one boundary: the face is the optimum
        assert torch.equal(face, opt) and bool((r.norms <= 1.25 * opt)[valid].all())
    assert float((r.norms / opt).median()) <= 1.05
    assert r.queries == box.queries <= 12 * 3000
    assert torch.allclose(r.norms, lp_norm(r.x_adv - x, norm))


def test_linear_oracle_targeted_with_start():
    """Targeted: the adversarial is classified as the target, and no closer than the nearest half-space
    ``z_t ≥ z_k`` it must cross (a lower bound on the targeted optimum)."""
    model, x, y = linear_problem(8, (8,), 3, seed=5)
    target = (y + 1) % 3
    pool = 0.25 + 0.5 * torch.rand((4000, 8), generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    pred = predictions(model, pool)
    x_init = torch.stack([pool[pred == int(t)][0] for t in target])
    r = hopskipjump(model, x, y, norm="l2", target=target, x_init=x_init, max_queries=3000, steps=1000)
    assert bool(r.success.all())
    assert torch.equal(predictions(model, r.x_adv), target)
    with torch.no_grad():
        z, w = model(x), model.weight
    z_t, w_t = z.gather(1, target[:, None]), w[target]  # (n, 1), (n, d)
    lower = ((z - z_t) / (w.unsqueeze(0) - w_t.unsqueeze(1)).norm(dim=2).clamp_min(1e-12)).amax(1)
    assert bool((r.norms >= 0.999 * lower).all())
    # from random noise the attack also ends in the target class
    r_noise = hopskipjump(model, x, y, norm="l2", target=target, max_queries=3000, steps=1000)
    assert bool(r_noise.success.all())
    assert torch.equal(predictions(model, r_noise.x_adv), target)
    assert bool((r_noise.norms >= 0.999 * lower).all())


# --------------------------------------------------------------------------------------------- real models
def test_digits_cnn_linf_labels_only(digits_cnn, digits_test):
    """The undefended digits CNN at L∞ eps 0.3 through a labels-only black box: robust accuracy near 0."""
    x, y = digits_test.x[:100], digits_test.y[:100]
    box = labels_box(digits_cnn)
    r = hopskipjump(box, x, y, norm="linf", eps=0.3)
    assert r.robust_accuracy <= 0.05
    assert r.eps == pytest.approx(0.3)
    assert r.queries == box.queries <= 100 * r.params["max_queries"]
    ok = r.success & r.clean_correct
    assert bool((predictions(digits_cnn, r.x_adv)[ok] != y[ok]).all())
    assert bool((r.norms <= 0.3 + 1e-6).all()) and bool(((r.x_adv >= 0) & (r.x_adv <= 1)).all())


def test_scores_and_labels_give_the_same_attack(digits_cnn, digits_test):
    """Only decisions are used: a box that returns scores and one that returns their argmax give identical runs."""
    x, y = digits_test.x[:6], digits_test.y[:6]
    a = hopskipjump(BlackBox(digits_cnn, output="scores"), x, y, norm="l2", max_queries=600, seed=4)
    b = hopskipjump(labels_box(digits_cnn), x, y, norm="l2", max_queries=600, seed=4)
    c = hopskipjump(digits_cnn, x, y, norm="l2", max_queries=600, seed=4)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.x_adv, c.x_adv)
    assert a.queries == b.queries == c.queries


class PredictOnly:
    """A fitted scikit-learn classifier seen through ``predict`` alone (no scores of any kind)."""

    def __init__(self, clf) -> None:
        self.clf = clf

    def predict(self, x):
        return self.clf.predict(x)


@pytest.mark.parametrize("kind", ["svc", "knn"])
def test_sklearn_predict_only(kind, digits_test):
    """A scikit-learn classifier queried through ``predict`` only (an SVC without probabilities, k-NN)."""
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC

    from adverse.data import digits

    train = digits("train")
    clf = SVC(gamma="scale") if kind == "svc" else KNeighborsClassifier(n_neighbors=3)
    clf.fit(train.x.flatten(1).numpy(), train.y.numpy())
    box = BlackBox(PredictOnly(clf))
    x, y = digits_test.x[:12], digits_test.y[:12]
    r = hopskipjump(box, x, y, norm="l2", max_queries=1500)
    assert box.output == "labels" and bool(r.success.all())
    fooled = torch.as_tensor(clf.predict(r.x_adv.flatten(1).numpy())) != y
    assert bool(fooled.all())
    assert r.queries == box.queries
    assert float(r.norms.median()) < 2.5  # far closer than noise (‖x − u‖₂ ≈ 3 for uniform u)
    if kind == "svc":  # the estimator itself is queried through decision_function (argmax: its own decisions)
        direct = hopskipjump(clf, x, y, norm="l2", max_queries=1500)
        assert bool(direct.success.all())
        decision = torch.as_tensor(clf.decision_function(direct.x_adv.flatten(1).numpy())).argmax(1)
        assert bool((decision != y).all())


# --------------------------------------------------------------------------------------------- contracts
@contextlib.contextmanager
def spy_on_queries():
    """Capture the attack's query set-up, to read its per-sample query counts afterwards."""
    seen: list = []

    @contextlib.contextmanager
    def spy(*args, **kwargs):
        with query_setup(*args, **kwargs) as s:
            seen.append(s)
            yield s

    with mock.patch("adverse.evasion.hopskipjump.query_setup", spy):
        yield seen


@settings(max_examples=examples(12), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(max_queries=st.integers(2, 250), n=st.integers(1, 3), norm=st.sampled_from(["l2", "linf"]),
       eps=st.sampled_from([None, 0.05, 0.3]), seed=st.integers(0, 100), classes=st.sampled_from([2, 3]))
def test_budget_never_exceeded(max_queries, n, norm, eps, seed, classes):
    """No sample spends more than ``max_queries``; the total equals the black box's own count."""
    model, x, y = linear_problem(n, (6,), classes, seed=seed)
    box = labels_box(model)
    box.max_queries = n * max_queries
    with spy_on_queries() as seen:
        r = hopskipjump(box, x, y, norm=norm, eps=eps, max_queries=max_queries, seed=seed)
    per_sample = seen[0].queries
    assert bool((per_sample <= max_queries).all()) and bool((per_sample >= 1).all())
    assert r.queries == int(per_sample.sum()) == box.queries
    assert bool((predictions(model, r.x_adv)[r.success] != y[r.success]).all())
    assert torch.allclose(r.norms, lp_norm(r.x_adv - x, norm))
    if eps is not None:
        assert bool((r.norms <= eps + 1e-6).all())


def test_budget_spent_per_sample():
    """Without eps, every sample spends its budget down to less than one more iteration's cost."""
    model, x, y = linear_problem(4, (8,), 3, seed=2)
    with spy_on_queries() as seen:
        r = hopskipjump(model, x, y, norm="l2", max_queries=400, steps=1000)
    left = 400 - seen[0].queries
    cost = r.params["bisections"] + 2  # one estimate query, one step query, the boundary search
    assert bool((left >= 0).all()) and bool((left < cost).all())


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_eps_ball_and_bounds(norm):
    """With eps: success is exactly "adversarial and within eps"; the rest get x back; bounds hold."""
    model, x, y = linear_problem(16, (8,), 3, seed=3)
    opt = optimal_norms(model, x, y, norm)
    eps = opt.median().item()  # about half the samples can be fooled within eps
    r = hopskipjump(model, x, y, norm=norm, eps=eps, max_queries=2000)
    adv = predictions(model, r.x_adv) != y
    assert torch.equal(r.success, adv & (lp_norm(r.x_adv - x, norm) <= eps + 1e-6))
    assert bool(r.success.any()) and not bool(r.success.all())
    assert torch.equal(r.x_adv[~r.success], x[~r.success])
    assert bool((r.norms <= eps + 1e-6).all())
    assert bool(((r.x_adv >= 0) & (r.x_adv <= 1)).all())
    assert bool(r.success[opt <= 0.8 * eps].all())  # every sample with room to spare is found
    assert torch.allclose(r.norms, lp_norm(r.x_adv - x, norm))
    # per-sample eps, one of them zero
    e = torch.full((16,), eps, dtype=x.dtype)
    e[0] = 0.0
    r2 = hopskipjump(model, x, y, norm=norm, eps=e, max_queries=500, bounds=(-1.0, 2.0))
    assert not bool(r2.success[0]) and bool((r2.norms <= e + 1e-6).all())


def test_bounds_other_than_unit():
    model, x, _ = linear_problem(6, (8,), 3, seed=4)
    x2 = 4 * x - 1  # in [0, 2], inside bounds (−1, 2)
    y2 = predictions(model, x2)
    r = hopskipjump(labels_box(model), x2, y2, norm="linf", max_queries=800, bounds=(-1.0, 2.0))
    assert bool(r.success.all()) and bool((predictions(model, r.x_adv) != y2).all())
    assert bool(((r.x_adv >= -1) & (r.x_adv <= 2)).all())


def test_clean_errors_and_failed_initialization():
    """A clean error is a success with a zero perturbation and one query; a constant classifier gives no
    adversarial start: the sample keeps x and fails, within the budget."""
    model, x, y = linear_problem(4, (8,), 3, seed=1)
    y_wrong = y.clone()
    y_wrong[0] = (y[0] + 1) % 3
    r = hopskipjump(model, x, y_wrong, norm="l2", max_queries=300)
    assert bool(r.success[0]) and float(r.norms[0]) == 0.0 and torch.equal(r.x_adv[0], x[0])
    constant = BlackBox(lambda z: torch.zeros(z.shape[0], dtype=torch.long), output="labels")
    r = hopskipjump(constant, x, torch.zeros(4, dtype=torch.long), norm="l2", max_queries=50, init_tries=20)
    assert not bool(r.success.any()) and torch.equal(r.x_adv, x)
    assert r.queries == constant.queries == 4 * 21


def test_determinism_and_global_rng():
    model, x, y = linear_problem(5, (8,), 3, seed=6)
    state = torch.get_rng_state()
    a = hopskipjump(model, x, y, norm="linf", max_queries=500, seed=11)
    b = hopskipjump(model, x, y, norm="linf", max_queries=500, seed=11)
    c = hopskipjump(model, x, y, norm="linf", max_queries=500, seed=12)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.norms, b.norms) and a.queries == b.queries
    assert not torch.equal(a.x_adv, c.x_adv)
    assert a.seed == 11


def test_model_state_untouched(tiny_net):
    tiny_net.train()
    tiny_net.conv.weight.requires_grad_(False)
    state = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    modes = {k: m.training for k, m in tiny_net.named_modules()}
    flags = {k: p.requires_grad for k, p in tiny_net.named_parameters()}
    x = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = tiny_net.eval()(x).argmax(1)
    tiny_net.train()
    x_before = x.clone()
    hopskipjump(tiny_net, x, y, norm="l2", max_queries=300)
    assert torch.equal(x, x_before)
    assert {k: m.training for k, m in tiny_net.named_modules()} == modes
    assert {k: p.requires_grad for k, p in tiny_net.named_parameters()} == flags
    assert all(p.grad is None for p in tiny_net.parameters())
    assert all(torch.equal(v, tiny_net.state_dict()[k]) for k, v in state.items())


def _bad_box(kind: str) -> BlackBox:
    if kind == "shape":
        return BlackBox(lambda z: torch.zeros(z.shape[0], 1, dtype=torch.long), output="labels")
    return BlackBox(lambda z: torch.full((z.shape[0],), 0.5), output="labels")  # non-integer labels


@pytest.mark.parametrize("case", ["y-shape", "y-float", "x-nan", "box-shape", "box-float", "norm", "steps",
                                  "gamma", "init_evals", "x_init-shape", "x_init-nan", "x_init-bounds",
                                  "max_queries", "eps", "target"])
def test_bad_input(case):
    model, x, y = linear_problem(3, (8,), 3, seed=0)
    kw: dict = {"norm": "l2", "max_queries": 100}
    box = labels_box(model)
    if case == "y-shape":
        y = y[:2]
    elif case == "y-float":
        y = y.double()
    elif case == "x-nan":
        x = x.clone()
        x[1, 2] = float("nan")
    elif case.startswith("box"):
        box = _bad_box(case.split("-")[1])
    elif case == "norm":
        kw["norm"] = "l1"
    elif case == "steps":
        kw["steps"] = 0
    elif case == "gamma":
        kw["gamma"] = -1.0
    elif case == "init_evals":
        kw["init_evals"] = 0
    elif case == "x_init-shape":
        kw["x_init"] = x[:2]
    elif case == "x_init-nan":
        kw["x_init"] = torch.full_like(x, float("nan"))
    elif case == "x_init-bounds":
        kw["x_init"] = x + 2
    elif case == "max_queries":
        kw["max_queries"] = 1
    elif case == "eps":
        kw["eps"] = -0.1
    elif case == "target":
        kw["target"] = torch.tensor([0, 1])
    with pytest.raises(AdverseError):
        hopskipjump(box, x, y, **kw)
