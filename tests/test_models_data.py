"""The model contract (Normalize, attack_mode, Counted, BlackBox), results, bundled data and the model zoo."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import adverse
from adverse import zoo
from adverse.data import digits, tabular
from adverse.errors import AdverseError, BudgetError, InputError, ModelError
from adverse.models import BlackBox, Counted, Normalize, attack_mode, check_logits, looks_like_probabilities
from adverse.results import AttackResult


# ------------------------------------------------------------------------------------------------ Normalize
def test_normalize_per_channel() -> None:
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 2.0]
    x = torch.rand(4, 3, 5, 6)
    out = Normalize(mean, std)(x)
    for c in range(3):
        torch.testing.assert_close(out[:, c], (x[:, c] - mean[c]) / std[c])
    # float64 in, float64 out; buffers follow the module and live in its state_dict
    out64 = Normalize(mean, std)(x.double())
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64, out.double(), atol=1e-6, rtol=1e-6)
    assert set(Normalize(mean, std).state_dict()) == {"mean", "std"}
    # a scalar mean/std, and per-feature normalization of tabular (n, features) inputs
    torch.testing.assert_close(Normalize(0.5, 0.25)(x), (x - 0.5) / 0.25)
    t = torch.rand(7, 3)
    torch.testing.assert_close(Normalize(mean, std)(t), (t - torch.tensor(mean)) / torch.tensor(std))


def test_normalize_rejects_non_positive_std() -> None:
    for std in ([0.5, 0.0, 1.0], [0.5, -1.0, 1.0], 0.0):
        with pytest.raises(ModelError, match="std must be > 0"):
            Normalize([0.0, 0.0, 0.0], std)


def test_normalize_inside_a_model_keeps_the_attack_in_input_units() -> None:
    from adverse.evasion import pgd

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    model = nn.Sequential(Normalize([0.4, 0.6, 0.5], [0.2, 0.3, 0.25]), net)
    x = torch.rand(5, 3, 2, 2)
    with torch.no_grad():
        y = model(x).argmax(1)
    r = pgd(model, x, y, eps=0.05, norm="linf", steps=5)
    assert float((r.x_adv - x).abs().max()) <= 0.05 + 1e-6
    assert float(r.x_adv.min()) >= 0 and float(r.x_adv.max()) <= 1
    # The gradient flows through Normalize: the attack moves the inputs.
    assert float((r.x_adv - x).abs().max()) > 0


# ------------------------------------------------------------------------------------------------ attack_mode
def _modes(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def test_attack_mode_sets_eval_and_frozen_then_restores() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 2))
    model.train()
    model[2].eval()  # mixed modes
    model[0].weight.requires_grad_(False)  # a frozen layer
    modes, flags = _modes(model), [p.requires_grad for p in model.parameters()]
    with attack_mode(model) as m:
        assert m is model
        assert not any(_modes(model))
        assert not any(p.requires_grad for p in model.parameters())
    assert _modes(model) == modes
    assert [p.requires_grad for p in model.parameters()] == flags


def test_attack_mode_restores_after_an_exception() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).train()
    model[2].weight.requires_grad_(False)
    modes, flags = _modes(model), [p.requires_grad for p in model.parameters()]
    with pytest.raises(RuntimeError, match="boom"):
        with attack_mode(model):
            raise RuntimeError("boom")
    assert _modes(model) == modes
    assert [p.requires_grad for p in model.parameters()] == flags


def test_attack_mode_leaves_batchnorm_buffers_alone() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with attack_mode(model):
        model(torch.randn(8, 3))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


# ------------------------------------------------------------------------------------------------ Counted
def test_counted_counts_per_sample_and_leaves_no_grad() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    c = Counted(model)
    x = torch.randn(5, 4)
    z = c.logits(x)
    assert z.grad_fn is None and c.forwards == 5 and c.backwards == 0
    c(x[:2])
    assert c.forwards == 7
    logits, loss, grad = c.value_and_grad(x, lambda out: out[:, 0] ** 2)
    assert c.forwards == 12 and c.backwards == 5
    torch.testing.assert_close(loss, model(x)[:, 0].detach() ** 2)
    # d/dx (w0·x + b0)² = 2 (w0·x + b0) w0
    expected = 2 * (x @ model.weight[0].detach() + model.bias[0].detach())[:, None] * model.weight[0].detach()
    torch.testing.assert_close(grad, expected)
    assert not grad.requires_grad and not logits.requires_grad and not loss.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert not x.requires_grad  # the caller's tensor is not turned into a leaf that needs grad


# ------------------------------------------------------------------------------------------------ logits check
def test_looks_like_probabilities() -> None:
    torch.manual_seed(0)
    z = torch.randn(6, 4)
    assert looks_like_probabilities(torch.softmax(z, 1))
    assert looks_like_probabilities(torch.softmax(z.double(), 1))
    assert not looks_like_probabilities(z)
    assert not looks_like_probabilities(torch.log_softmax(z, 1))
    assert not looks_like_probabilities(torch.sigmoid(z))  # in [0, 1] but rows do not sum to 1
    assert not looks_like_probabilities(torch.softmax(z, 1)[:, :1])  # one column
    assert not looks_like_probabilities(torch.softmax(z, 1)[:0])  # empty
    assert not looks_like_probabilities(torch.softmax(z, 1)[:, 0])  # 1-D
    tricky = torch.tensor([[2.0, -1.0], [0.5, 0.5]])  # rows sum to 1 but are not probabilities
    assert not looks_like_probabilities(tricky)
    with pytest.raises(ModelError, match="softmax"):
        check_logits(torch.softmax(z, 1))
    check_logits(z)


# ------------------------------------------------------------------------------------------------ BlackBox
def test_black_box_callable_scores_and_labels() -> None:
    torch.manual_seed(0)
    net = nn.Linear(5, 3)
    box = BlackBox(lambda x: net(x))
    x = torch.randn(4, 5)
    out = box(x)
    assert box.output == "scores" and out.shape == (4, 3) and box.queries == 4
    torch.testing.assert_close(out, net(x).detach())
    assert torch.equal(box.predict(x), net(x).argmax(1)) and box.queries == 8
    assert not out.requires_grad
    # The answer is an ordinary tensor the attack may modify in place (e.g. masking the true class).
    out[:, 0] = float("-inf")
    labels = BlackBox(lambda x: net(x).argmax(1))
    lab = labels(x)
    assert labels.output == "labels" and lab.shape == (4,)
    assert torch.equal(labels.predict(x), lab) and labels.queries == 8


def test_black_box_budget() -> None:
    box = BlackBox(lambda x: torch.zeros(x.shape[0], 2), max_queries=10)
    box(torch.zeros(8, 3))
    with pytest.raises(BudgetError, match=r"max_queries=10") as info:
        box(torch.zeros(3, 3))
    assert isinstance(info.value, AdverseError)
    assert box.queries == 8  # a refused call costs nothing
    box(torch.zeros(2, 3))
    assert box.queries == 10
    with pytest.raises(BudgetError):
        box(torch.zeros(1, 3))


def test_black_box_rejects_bad_arguments() -> None:
    with pytest.raises(ModelError, match="callable or a scikit-learn estimator"):
        BlackBox(42)
    with pytest.raises(ModelError, match="'scores' or 'labels'"):
        BlackBox(lambda x: x, output="logits")


@pytest.fixture(scope="module")
def tabular_train():
    return tabular("train", n_samples=300, n_features=6)


def test_black_box_with_logistic_regression(tabular_train) -> None:
    from sklearn.linear_model import LogisticRegression

    d = tabular_train
    clf = LogisticRegression(max_iter=500).fit(d.x.numpy(), d.y.numpy())
    box = BlackBox(clf, max_queries=50)
    assert box.estimator is clf and box.output == "scores"
    x = d.x[:20]
    out = box(x)
    assert out.shape == (20, 2) and box.queries == 20
    torch.testing.assert_close(out.sum(1), torch.ones(20, dtype=out.dtype))
    np.testing.assert_allclose(out.numpy(), clf.predict_proba(x.numpy()), rtol=1e-6)
    np.testing.assert_array_equal(box.predict(x).numpy(), clf.predict(x.numpy()))
    assert box.queries == 40
    with pytest.raises(BudgetError):
        box(x)
    assert box.queries == 40


def test_black_box_with_decision_function_only(tabular_train) -> None:
    from sklearn.svm import LinearSVC

    d = tabular_train
    clf = LinearSVC().fit(d.x.numpy(), d.y.numpy())
    box = BlackBox(clf)
    out = box(d.x[:10])
    assert box.output == "scores" and out.shape == (10, 2)  # one binary decision value → two columns
    np.testing.assert_array_equal(out.argmax(1).numpy(), clf.predict(d.x[:10].numpy()))


class PredictOnly:
    """An estimator with ``predict`` and nothing else."""

    def fit(self, x, y):
        self.mean_ = x.mean(0)
        return self

    def predict(self, x):
        return (x @ np.ones(x.shape[1]) > self.mean_.sum()).astype(np.int64)


def test_black_box_with_a_predict_only_estimator(tabular_train) -> None:
    d = tabular_train
    est = PredictOnly().fit(d.x.numpy(), d.y.numpy())
    box = BlackBox(est, max_queries=25)
    assert box.output == "labels"
    lab = box(d.x[:12])
    assert lab.shape == (12,) and box.queries == 12
    np.testing.assert_array_equal(lab.numpy(), est.predict(d.x[:12].flatten(1).numpy()))
    assert torch.equal(box.predict(d.x[:12]), lab) and box.queries == 24
    with pytest.raises(BudgetError):
        box.predict(d.x[:2])


# ------------------------------------------------------------------------------------------------ results
def _result(success, norms, eps=None) -> AttackResult:
    n = len(success)
    return AttackResult(x_adv=torch.zeros(n, 2), success=torch.tensor(success), norms=torch.tensor(norms),
                        clean_correct=torch.ones(n, dtype=torch.bool), attack="x", norm="l2", eps=eps,
                        params={"steps": 3, "tensor": torch.zeros(1)}, seed=0)


def test_result_accuracies() -> None:
    r = _result([True, False, True, True], [0.1, 0.0, 0.5, 0.0])
    assert r.robust_accuracy == pytest.approx(0.25) and r.success_rate == pytest.approx(0.75)
    assert r.clean_accuracy == 1.0
    ra = r.robust_accuracy_at([0.0, 0.1, 0.3, 1.0])
    torch.testing.assert_close(ra, torch.tensor([0.75, 0.5, 0.5, 0.25]))
    s = r.summary()
    json.dumps(s)  # JSON-ready
    assert s["median_norm_of_successes"] == pytest.approx(0.1) and "tensor" not in s["params"]
    empty = _result([], [])
    assert np.isnan(empty.robust_accuracy)


# ------------------------------------------------------------------------------------------------ data
def test_digits_shapes_ranges_determinism() -> None:
    tr, te = digits("train"), digits("test")
    assert tr.x.shape == (1257, 1, 8, 8) and te.x.shape == (540, 1, 8, 8)
    assert tr.x.dtype == torch.float32 and tr.y.dtype == torch.int64
    for d in (tr, te):
        assert float(d.x.min()) == 0.0 and float(d.x.max()) == 1.0
        assert set(d.y.tolist()) == set(range(10)) and d.num_classes == 10 and d.bounds == (0.0, 1.0)
        assert len(d) == d.y.shape[0]
    again = digits("train")
    assert torch.equal(tr.x, again.x) and torch.equal(tr.y, again.y)
    other = digits("train", seed=1)
    assert not torch.equal(tr.y, other.y)
    sub = te.subset(10)
    assert len(sub) == 10 and torch.equal(sub.x, te.x[:10])
    with pytest.raises(InputError, match="split"):
        digits("validation")


def test_tabular_shapes_ranges_determinism() -> None:
    tr, te = tabular("train"), tabular("test")
    assert tr.x.shape == (1400, 20) and te.x.shape == (600, 20)
    assert tr.x.dtype == torch.float32 and tr.y.dtype == torch.int64
    # scaled with the training split's minimum and maximum: exactly [0, 1] on train, clipped on test
    torch.testing.assert_close(tr.x.min(0).values, torch.zeros(20))
    torch.testing.assert_close(tr.x.max(0).values, torch.ones(20))
    assert float(te.x.min()) >= 0 and float(te.x.max()) <= 1
    assert set(tr.y.tolist()) == {0, 1} and tr.num_classes == 2
    again = tabular("train")
    assert torch.equal(tr.x, again.x) and torch.equal(tr.y, again.y)
    assert not torch.equal(tabular("train", seed=1).x, tr.x)
    three = tabular("test", n_samples=300, n_features=8, n_classes=3)
    assert three.x.shape == (90, 8) and set(three.y.tolist()) == {0, 1, 2} and three.num_classes == 3


# ------------------------------------------------------------------------------------------------ zoo
@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """A cache folder, a fake home and a working directory, all empty; plus a fast recipe."""
    cache, home, work = tmp_path / "cache", tmp_path / "home", tmp_path / "work"
    for d in (home, work):
        d.mkdir()
    monkeypatch.setenv("ADVERSE_CACHE", str(cache))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.chdir(work)
    monkeypatch.setitem(zoo.RECIPES, "test-cnn", {"arch": "SmallCNN", "epochs": 1, "lr": 1e-3, "seed": 0,
                                                  "adversarial": None, "test": True})
    monkeypatch.setitem(zoo.RECIPES, "test-cnn-at", {"arch": "SmallCNN", "epochs": 1, "lr": 1e-3, "seed": 0,
                                                     "adversarial": {"eps": 0.2, "steps": 1, "norm": "linf"},
                                                     "test": True})
    return cache, home, work


def _files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_pretrained_writes_only_to_the_cache(isolated, monkeypatch) -> None:
    cache, home, work = isolated
    rng = torch.get_rng_state()
    model = zoo.pretrained("test-cnn")
    assert torch.equal(torch.get_rng_state(), rng), "pretrained must not touch the global RNG"
    assert isinstance(model, zoo.SmallCNN) and not model.training
    files = _files(cache)
    assert len(files) == 1 and files[0].startswith("test-cnn-") and files[0].endswith(".safetensors")
    assert _files(home) == [] and _files(work) == []
    # It learned something in one epoch.
    te = digits("test")
    with torch.no_grad():
        acc = (model(te.x).argmax(1) == te.y).float().mean().item()
    assert acc > 0.5
    # The second call loads the cache without training.
    monkeypatch.setattr(zoo, "train_classifier", lambda *a, **k: pytest.fail("trained again"))
    again = zoo.pretrained("test-cnn")
    for (k, v), (k2, v2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert not again.training and _files(cache) == files


def test_pretrained_is_deterministic_and_cache_false_writes_nothing(isolated) -> None:
    cache, home, work = isolated
    a = zoo.pretrained("test-cnn", cache=False)
    b = zoo.pretrained("test-cnn", cache=False)
    for v, w in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(v, w)
    assert not cache.exists() or _files(cache) == []
    assert _files(home) == [] and _files(work) == []


def test_recipes_train_on_a_fixed_thread_count(isolated) -> None:
    """The caller's thread count changes neither the weights nor the caller's setting."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        a = zoo.pretrained("test-cnn", cache=False)
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        b = zoo.pretrained("test-cnn", cache=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    for v, w in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(v, w)
    assert all(r["threads"] == zoo.TRAIN_THREADS == 1 for r in zoo.RECIPES.values() if not r.get("test"))


def test_pretrained_adversarial_recipe(isolated) -> None:
    cache, home, _ = isolated
    model = zoo.pretrained("test-cnn-at")
    assert not model.training
    assert len(_files(cache)) == 1 and _files(home) == []


def test_pretrained_unknown_name(isolated) -> None:
    with pytest.raises(InputError, match=r"unknown model 'resnet'.*digits-cnn"):
        zoo.pretrained("resnet")


def test_train_classifier_returns_eval_mode_and_no_grads() -> None:
    d = digits("train").subset(64)
    torch.manual_seed(0)
    model = zoo.MLP(64, 10, hidden=(16,))
    out = zoo.train_classifier(model, d, epochs=1)
    assert out is model and not model.training
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------------------------------------ imports
def _run_python(code: str) -> str:
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_import_adverse_is_lazy() -> None:
    out = _run_python(
        "import sys, adverse\n"
        "print(sorted(m for m in sys.modules if m.startswith(('adverse', 'sklearn', 'torch', 'numpy', 'scipy'))))"
    )
    assert out == "['adverse']", out
    out = _run_python(
        "import sys, adverse\n"
        "adverse.ThreatModel\n"
        "print('adverse.evasion' in sys.modules, 'sklearn' in sys.modules, 'adverse.threat' in sys.modules)"
    )
    assert out == "False False True"


def test_public_names_resolve() -> None:
    assert adverse.__version__
    assert adverse.AdverseError is AdverseError and adverse.BlackBox is BlackBox
    for name in ("errors", "threat", "models", "results", "data", "zoo", "evasion"):
        assert getattr(adverse, name).__name__ == f"adverse.{name}"
    with pytest.raises(AttributeError):
        adverse.no_such_thing  # noqa: B018


def test_attack_names_stay_functions() -> None:
    """Several attacks share their module's name; importing the module must not hide the function."""
    out = _run_python(
        "import adverse.evasion.apgd, adverse.evasion.deepfool, adverse.evasion.fmn, adverse.evasion.cw\n"
        "import adverse\n"
        "ev = adverse.evasion\n"
        "names = ['fgsm', 'bim', 'pgd', 'mifgsm', 'apgd', 'cw_l2', 'deepfool', 'fmn']\n"
        "print(all(callable(getattr(ev, n)) and type(getattr(ev, n)).__name__ == 'function' "
        "for n in names for _ in range(2)))"
    )
    assert out == "True"
