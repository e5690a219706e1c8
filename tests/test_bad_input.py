"""Bad input gets an AdverseError (a ValueError) whose message names the problem and the fix.

Every attack in ``adverse.evasion`` is checked against every bad input the design names, and the caller's
tensors and model are left as they were when the error is raised. ``adverse.data.load_npz`` refuses files
that are not what they claim.
"""

from __future__ import annotations

import re
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

import adverse
import adverse.evasion as ev
from adverse.data import load_npz
from adverse.errors import AdverseError, BudgetError, InputError, ModelError

NUM_CLASSES = 4


# attack -> (extra keyword arguments, fixed budget?, norms supported, takes a loss?)
ATTACKS = {
    "fgsm": ({}, True, ("linf", "l2", "l1"), True),
    "bim": ({"steps": 2}, True, ("linf", "l2", "l1"), True),
    "pgd": ({"steps": 2}, True, ("linf", "l2", "l1"), True),
    "mifgsm": ({"steps": 2}, True, ("linf", "l2", "l1"), True),
    "apgd": ({"steps": 2}, True, ("linf", "l2", "l1"), True),
    "cw_l2": ({"steps": 2, "binary_search_steps": 1}, False, ("l2",), False),
    "deepfool": ({"steps": 2}, False, ("l2", "linf"), False),
    "fmn": ({"steps": 2}, False, ("linf", "l2", "l1"), False),
    "fab": ({"steps": 2}, False, ("linf", "l2", "l1"), False),
    "transfer": ({"steps": 2}, True, ("linf", "l2", "l1"), True),
    # score- and decision-based attacks
    "square": ({"max_queries": 10}, True, ("linf", "l2"), False),
    "simba": ({"max_queries": 10}, True, ("linf", "l2"), False),
    "nes": ({"max_queries": 20, "samples": 2}, True, ("linf", "l2"), True),
    "hopskipjump": ({"max_queries": 20, "steps": 1, "init_evals": 2, "max_evals": 4}, False, ("l2", "linf"), False),
}
NAMES = list(ATTACKS)
QUERY = ("square", "simba", "nes", "hopskipjump")  # they only query: a BlackBox and probabilities are fine
WITH_STEPS = [n for n in NAMES if n not in ("fgsm", "square", "simba")]


def make_problem(n: int = 3):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.2),
                              nn.Linear(8, NUM_CLASSES))
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 2, 3, generator=g)  # 2 × 3 single-channel images
    with torch.no_grad():
        y = model.eval()(x).argmax(1)
    model.train()  # the caller's mode, to be restored even when the attack refuses its input
    return model, x, y


def call(name: str, model, x, y, **overrides):
    kw, fixed, norms, _ = ATTACKS[name]
    args = dict(kw)
    if fixed:
        args.update(eps=0.1, norm="linf")
    args.update(overrides)
    if name == "transfer":  # the model is both the surrogate and the attacked model
        return ev.transfer(model, model, x, y, **args)
    return getattr(ev, name)(model, x, y, **args)


def expect_error(name: str, model, x, y, pattern: str, cls: type = AdverseError, **overrides) -> AdverseError:
    """The call raises ``cls`` (an AdverseError and a ValueError) with a message matching ``pattern``, and leaves
    x, y and the model exactly as they were."""
    x_before = x.clone() if torch.is_tensor(x) else np.copy(x)
    y_before = y.clone() if torch.is_tensor(y) else np.copy(y)
    state = {k: v.clone() for k, v in model.state_dict().items()} if isinstance(model, nn.Module) else {}
    modes = [m.training for m in model.modules()] if isinstance(model, nn.Module) else []
    flags = [p.requires_grad for p in model.parameters()] if isinstance(model, nn.Module) else []
    with pytest.raises(cls) as info:
        call(name, model, x, y, **overrides)
    err = info.value
    assert isinstance(err, AdverseError) and isinstance(err, ValueError)
    assert re.search(pattern, str(err), re.IGNORECASE), f"{name}: message {str(err)!r} lacks {pattern!r}"
    if torch.is_tensor(x):
        assert torch.equal(x, x_before) or (torch.isnan(x_before).any() and torch.equal(x.isnan(), x_before.isnan()))
    else:
        np.testing.assert_array_equal(x, x_before)
    if torch.is_tensor(y):
        assert torch.equal(y, y_before)
    if isinstance(model, nn.Module):
        assert [m.training for m in model.modules()] == modes
        assert [p.requires_grad for p in model.parameters()] == flags
        assert all(p.grad is None for p in model.parameters())
        for k, v in model.state_dict().items():
            assert torch.equal(v, state[k]), k
    return err


def test_the_problem_itself_is_fine() -> None:
    model, x, y = make_problem()
    for name in NAMES:
        r = call(name, model, x, y)
        assert r.x_adv.shape == x.shape
    assert model.training


# --------------------------------------------------------------------------------------------------- inputs
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_inputs(name: str, bad: float) -> None:
    model, x, y = make_problem()
    x = x.clone()
    x[1, 0, 1, 2] = bad
    expect_error(name, model, x, y, r"NaN or infinite.*(clean|drop)", InputError)


@pytest.mark.parametrize("name", NAMES)
def test_inputs_outside_bounds(name: str) -> None:
    model, x, y = make_problem()
    expect_error(name, model, x * 255, y, r"outside bounds.*(scale|Normalize)", InputError)
    expect_error(name, model, x - 0.5, y, r"outside bounds", InputError)
    # The same inputs are fine with bounds that hold them.
    call(name, model, x - 0.5, y, bounds=(-0.5, 0.5))


@pytest.mark.parametrize("name", NAMES)
def test_bad_bounds(name: str) -> None:
    model, x, y = make_problem()
    expect_error(name, model, x, y, r"lo < hi", InputError, bounds=(1.0, 0.0))


@pytest.mark.parametrize("name", NAMES)
def test_numpy_instead_of_tensors(name: str) -> None:
    model, x, y = make_problem()
    expect_error(name, model, x.numpy(), y, r"torch\.Tensor.*torch\.as_tensor", InputError)
    expect_error(name, model, x, y.numpy(), r"torch\.Tensor.*torch\.as_tensor", InputError)
    expect_error(name, model, x.tolist(), y, r"torch\.Tensor", InputError)


@pytest.mark.parametrize("name", NAMES)
def test_integer_inputs(name: str) -> None:
    model, x, y = make_problem()
    expect_error(name, model, (x * 0).long(), y, r"floating-point.*float\(\)", InputError)


@pytest.mark.parametrize("name", NAMES)
def test_empty_or_unbatched_inputs(name: str) -> None:
    model, x, y = make_problem()
    expect_error(name, model, x[:0], y[:0], r"non-empty batch", InputError)
    expect_error(name, model, x[0, 0], y, r"shape", InputError)


# --------------------------------------------------------------------------------------------------- labels
@pytest.mark.parametrize("name", NAMES)
def test_label_shape_mismatch(name: str) -> None:
    model, x, y = make_problem()
    expect_error(name, model, x, y[:2], r"y must have shape \(3,\).*one label per input", InputError)
    expect_error(name, model, x, y[:, None], r"y must have shape \(3,\)", InputError)
    expect_error(name, model, x, torch.cat([y, y]), r"y must have shape \(3,\)", InputError)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [NUM_CLASSES, 100, -1])
def test_labels_out_of_range(name: str, bad: int) -> None:
    model, x, y = make_problem()
    y = y.clone()
    y[1] = bad
    expect_error(name, model, x, y, r"labels must lie in \[0, 3\]", InputError)


@pytest.mark.parametrize("name", NAMES)
def test_float_or_bool_labels(name: str) -> None:
    model, x, y = make_problem()
    expect_error(name, model, x, y.float(), r"integers.*long\(\)", InputError)
    expect_error(name, model, x, y.double(), r"integers", InputError)
    expect_error(name, model, x, y > 0, r"integers", InputError)


TARGETED = [n for n in NAMES if n not in ("deepfool",)]


@pytest.mark.parametrize("name", TARGETED)
def test_bad_targets(name: str) -> None:
    model, x, y = make_problem()
    expect_error(name, model, x, y, r"target classes must lie in \[0, 3\]", InputError,
                 target=torch.full_like(y, NUM_CLASSES))
    expect_error(name, model, x, y, r"target classes must lie in \[0, 3\]", InputError,
                 target=torch.full_like(y, -1))
    expect_error(name, model, x, y, r"target.*shape \(3,\)", InputError, target=y[:2])
    expect_error(name, model, x, y, r"target", InputError, target=y.numpy())


# --------------------------------------------------------------------------------------------------- threat model
FIXED = [n for n in NAMES if ATTACKS[n][1]]


@pytest.mark.parametrize("name", FIXED)
@pytest.mark.parametrize("eps", [-0.1, float("nan"), float("inf"), -1e-12])
def test_bad_eps(name: str, eps: float) -> None:
    model, x, y = make_problem()
    expect_error(name, model, x, y, r"eps must be finite and ≥ 0.*input units", InputError, eps=eps)


@pytest.mark.parametrize("name", FIXED)
def test_bad_per_sample_eps(name: str) -> None:
    model, x, y = make_problem()
    expect_error(name, model, x, y, r"eps must be finite and ≥ 0", InputError,
                 eps=torch.tensor([0.1, -0.1, 0.1]))
    expect_error(name, model, x, y, r"eps must be finite and ≥ 0", InputError,
                 eps=torch.tensor([0.1, float("nan"), 0.1]))
    expect_error(name, model, x, y, r"eps must be a number or a tensor of shape \(3,\)", InputError,
                 eps=torch.tensor([0.1, 0.1]))


@pytest.mark.parametrize("name", [n for n in NAMES if n != "cw_l2"])  # cw_l2 takes no norm
@pytest.mark.parametrize("norm", ["l3", "", "L-inf", "euclid"])
def test_unknown_norm(name: str, norm: str) -> None:
    model, x, y = make_problem()
    err = expect_error(name, model, x, y, r"unknown norm", InputError, norm=norm)
    for valid in ("linf", "l2", "l1"):
        assert valid in str(err)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "cw_l2" and len(ATTACKS[n][2]) < 3])
def test_unsupported_norm(name: str) -> None:
    model, x, y = make_problem()
    supported = ATTACKS[name][2]
    for norm in {"linf", "l2", "l1"} - set(supported):
        err = expect_error(name, model, x, y, rf"supports.*not '{norm}'", InputError, norm=norm)
        for ok in supported:
            assert ok in str(err)


def test_cw_l2_has_no_other_norm() -> None:
    model, x, y = make_problem()
    with pytest.raises(TypeError):
        ev.cw_l2(model, x, y, norm="linf")


@pytest.mark.parametrize("name", [n for n in NAMES if ATTACKS[n][3]])
def test_unknown_loss(name: str) -> None:
    model, x, y = make_problem()
    err = expect_error(name, model, x, y, r"unknown loss 'hinge'", InputError, loss="hinge")
    for valid in ("ce", "dlr"):
        assert valid in str(err)


@pytest.mark.parametrize("name", WITH_STEPS)
def test_zero_steps(name: str) -> None:
    model, x, y = make_problem()
    expect_error(name, model, x, y, r"steps", InputError, steps=0)


def test_dlr_needs_enough_classes() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 2))
    x = torch.rand(3, 2, 3)
    with torch.no_grad():
        y = model(x).argmax(1)
    for name in ("pgd", "apgd"):
        expect_error(name, model, x, y, r"DLR loss needs ≥ 3 classes.*margin", InputError, loss="dlr")


# --------------------------------------------------------------------------------------------------- models
@pytest.mark.parametrize("name", [n for n in NAMES if n not in QUERY])
def test_model_returning_probabilities(name: str) -> None:
    _, x, y = make_problem()
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, NUM_CLASSES), nn.Softmax(dim=1))
    with torch.no_grad():
        y = model(x).argmax(1)
    expect_error(name, model, x, y, r"probabilities.*logits.*softmax", ModelError)


@pytest.mark.parametrize("name", NAMES)
def test_model_returning_a_bad_shape(name: str) -> None:
    _, x, y = make_problem()
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, NUM_CLASSES), nn.Flatten(0))
    expect_error(name, model, x, y, r"(logits|scores) of shape \((n|3), classes\)", ModelError)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in QUERY and n != "transfer"])
def test_black_box_to_a_gradient_attack(name: str) -> None:
    model, x, y = make_problem()
    box = adverse.BlackBox(lambda t: model.eval()(t))
    with pytest.raises(ModelError) as info:
        call(name, box, x, y)
    assert re.search(r"needs gradients.*(score|decision)", str(info.value))
    assert box.queries == 0
    with pytest.raises(ModelError):
        call(name, lambda t: model(t), x, y)  # a bare callable is not a module either


def test_errors_are_value_errors() -> None:
    for cls in (AdverseError, InputError, ModelError, BudgetError):
        assert issubclass(cls, ValueError) and issubclass(cls, AdverseError)


# --------------------------------------------------------------------------------------------------- load_npz
def test_load_npz_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(7, 1, 4, 4)).astype(np.float32)
    y = rng.integers(0, 5, size=7)
    y[0] = 4
    path = tmp_path / "mine.npz"
    np.savez(path, x=x, y=y)
    d = load_npz(path)
    assert d.x.dtype == torch.float32 and d.y.dtype == torch.int64
    np.testing.assert_array_equal(d.x.numpy(), x)
    np.testing.assert_array_equal(d.y.numpy(), y)
    assert d.name == "mine" and d.num_classes == 5 and d.bounds == (0.0, 1.0) and len(d) == 7
    # compressed archives and other bounds load too
    np.savez_compressed(tmp_path / "c.npz", x=(x * 2 - 1).astype(np.float64), y=y.astype(np.int32))
    d = load_npz(str(tmp_path / "c.npz"), bounds=(-1.0, 1.0))
    assert d.bounds == (-1.0, 1.0) and d.x.dtype == torch.float32 and d.y.dtype == torch.int64
    assert float(d.x.min()) >= -1 and float(d.x.max()) <= 1


def _bad_npz(tmp_path, name: str, **arrays) -> str:
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def test_load_npz_missing_file(tmp_path) -> None:
    with pytest.raises(AdverseError, match="no such file"):
        load_npz(tmp_path / "nope.npz")
    with pytest.raises(AdverseError, match="no such file"):
        load_npz(tmp_path)  # a directory is not a file


def test_load_npz_not_an_archive(tmp_path) -> None:
    p = tmp_path / "fake.npz"
    p.write_text("x,y\n0.1,1\n")
    with pytest.raises(AdverseError, match=r"not an \.npz archive.*numpy\.savez"):
        load_npz(p)
    q = tmp_path / "arr.npy"
    np.save(q, np.zeros((3, 2)))
    with pytest.raises(AdverseError, match=r"not an \.npz archive"):
        load_npz(q)


def test_load_npz_zip_without_arrays(tmp_path) -> None:
    p = tmp_path / "other.npz"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(AdverseError, match=r"lacks array"):
        load_npz(p)


def test_load_npz_missing_keys(tmp_path) -> None:
    with pytest.raises(AdverseError, match=r"lacks array\(s\) \['y'\].*savez"):
        load_npz(_bad_npz(tmp_path, "a.npz", x=np.zeros((3, 2))))
    with pytest.raises(AdverseError, match=r"lacks array\(s\) \['x', 'y'\]"):
        load_npz(_bad_npz(tmp_path, "b.npz", inputs=np.zeros((3, 2)), labels=np.zeros(3, dtype=int)))


def test_load_npz_object_arrays(tmp_path) -> None:
    x = np.empty(3, dtype=object)
    x[:] = [np.zeros(2), np.zeros(3), "a"]
    with pytest.raises(AdverseError, match=r"object arrays.*pickle"):
        load_npz(_bad_npz(tmp_path, "obj.npz", x=x, y=np.zeros(3, dtype=int)))
    with pytest.raises(AdverseError, match=r"object arrays"):
        load_npz(_bad_npz(tmp_path, "objy.npz", x=np.zeros((3, 2)), y=np.array([1, "a", None], dtype=object)))


def test_load_npz_length_mismatch(tmp_path) -> None:
    with pytest.raises(AdverseError, match=r"shape \(n, \.\.\.\).*shape \(n,\)"):
        load_npz(_bad_npz(tmp_path, "m.npz", x=np.zeros((3, 2)), y=np.zeros(4, dtype=int)))
    with pytest.raises(AdverseError, match=r"shape"):
        load_npz(_bad_npz(tmp_path, "m2.npz", x=np.zeros((3, 2)), y=np.zeros((3, 1), dtype=int)))
    with pytest.raises(AdverseError, match=r"shape"):
        load_npz(_bad_npz(tmp_path, "m3.npz", x=np.zeros(3), y=np.zeros(3, dtype=int)))


def test_load_npz_float_labels(tmp_path) -> None:
    with pytest.raises(AdverseError, match=r"labels y must be integers"):
        load_npz(_bad_npz(tmp_path, "f.npz", x=np.zeros((3, 2)), y=np.array([0.0, 1.0, 2.0])))
    with pytest.raises(AdverseError, match=r"labels"):
        load_npz(_bad_npz(tmp_path, "n.npz", x=np.zeros((3, 2)), y=np.array([0, -1, 2])))


def test_load_npz_bad_inputs(tmp_path) -> None:
    with pytest.raises(AdverseError, match=r"outside bounds.*rescale"):
        load_npz(_bad_npz(tmp_path, "o.npz", x=np.full((3, 2), 255.0), y=np.zeros(3, dtype=int)))
    with pytest.raises(AdverseError, match=r"outside bounds"):
        load_npz(_bad_npz(tmp_path, "o2.npz", x=np.full((3, 2), -0.5), y=np.zeros(3, dtype=int)))
    with pytest.raises(AdverseError, match=r"finite"):
        load_npz(_bad_npz(tmp_path, "nan.npz", x=np.array([[0.1, np.nan]] * 3), y=np.zeros(3, dtype=int)))
    with pytest.raises(AdverseError, match=r"finite numbers"):
        load_npz(_bad_npz(tmp_path, "s.npz", x=np.array([["a", "b"]] * 3), y=np.zeros(3, dtype=int)))


# --------------------------------------------------------------------------------------------------- black boxes
def _answers(model: nn.Module, how: str):
    """A black box that answers badly in one way, on the first query or a later one."""
    calls = {"n": 0}

    def fn(t: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        with torch.no_grad():
            z = model.eval()(t)
        if how == "labels":
            return z.argmax(1)
        late = calls["n"] > 1
        if how == "nan" and late:
            return z.masked_fill(torch.arange(z.shape[0])[:, None] == 0, float("nan"))
        if how == "shape" and late:
            return z[:, :2]
        if how == "rows":
            return z[:1]
        return z

    return fn


@pytest.mark.parametrize("name", QUERY)
@pytest.mark.parametrize("how, pattern", [
    ("nan", r"NaN|changed its number of classes"),
    ("shape", r"changed its number of classes|shape"),
    ("rows", r"shape \(3, classes\)|labels of shape \(3,\)"),
])
def test_black_box_bad_answers(name: str, how: str, pattern: str) -> None:
    model, x, y = make_problem()
    model.eval()
    box = adverse.BlackBox(_answers(model, how))
    with pytest.raises(ModelError, match=pattern):
        call(name, box, x, y)


@pytest.mark.parametrize("name", [n for n in QUERY if n != "hopskipjump"])
def test_labels_where_scores_are_needed(name: str) -> None:
    model, x, y = make_problem()
    box = adverse.BlackBox(_answers(model, "labels"), output="labels")
    with pytest.raises(ModelError, match=r"needs scores.*(decision|hopskipjump)"):
        call(name, box, x, y)
    # the decision-based attack takes the same black box
    call("hopskipjump", box, x, y)


# ----------------------------------------------------------------------------------------------- numeric arguments
# Every public function and class of the four packages validates its numeric arguments before any work starts
# (adverse.validation.validated). The properties below draw, for each numeric parameter of each entry point, a
# value its rule refuses (NaN, ±inf, a wrong type, a value outside the range) and check the refusal names the
# argument; the required arguments are placeholders, since validation comes first.
import inspect  # noqa: E402
import math  # noqa: E402

from conftest import examples  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from adverse.validation import Rule  # noqa: E402

PACKAGES = ("evasion", "privacy", "poisoning", "defenses")
RESULT_TYPES = ("AttackResult", "PoisonedData", "Trigger", "MembershipScores", "MembershipEvaluation",
                "AttributeResult", "InversionResult")


def _entry_points() -> list[tuple[str, object]]:
    """(name, callable) of every public function and class constructor, except the loss functions (tensors
    only) and the result containers."""
    import importlib

    out = []
    for pkg in PACKAGES:
        mod = importlib.import_module(f"adverse.{pkg}")
        for name in mod.__all__:
            obj = getattr(mod, name)
            if name.endswith("_loss") or name in RESULT_TYPES or not callable(obj):
                continue
            if inspect.isclass(obj):
                import dataclasses

                if dataclasses.is_dataclass(obj) or "__init__" not in obj.__dict__:
                    continue
                out.append((f"{pkg}.{name}", obj.__init__))
            else:
                out.append((f"{pkg}.{name}", obj))
    out.append(("audit", adverse.audit))
    return out


ENTRY_POINTS = _entry_points()


def test_every_public_entry_point_is_validated() -> None:
    unchecked = [name for name, fn in ENTRY_POINTS if not hasattr(fn, "rules")]
    assert not unchecked, f"decorate these with adverse.validation.validated: {unchecked}"
    assert len(ENTRY_POINTS) >= 60


def _bad_values(rule: Rule) -> st.SearchStrategy:
    """Values ``rule`` must refuse."""
    bad: list[st.SearchStrategy] = [st.just(float("nan")), st.just(float("-inf")), st.sampled_from(["1", b"1", [1]]),
                                    st.just(torch.tensor([1.0, 2.0]))]
    if rule.kind == "bool":
        return st.one_of(st.just(1), st.just("yes"), st.just(None) if not rule.none else st.just(0.0))
    if rule.kind == "bounds":
        return st.one_of(st.just((1.0, 0.0)), st.just((0.0, float("nan"))), st.just("0,1"), st.just((0.0,)),
                         st.just((True, 2.0)))
    if not rule.inf:
        bad.append(st.just(float("inf")))
    if rule.kind == "int":
        bad += [st.floats(-1e6, 1e6).filter(lambda v: v != int(v)), st.just(True)]
    if not rule.none:
        bad.append(st.just(None))
    if rule.low is not None:
        below = st.floats(max(rule.low - 1e6, -1e12), float(rule.low), exclude_max=not rule.open_low)
        bad.append(below.map(int).filter(lambda v: v < rule.low or (rule.open_low and v == rule.low))
                   if rule.kind == "int" else below)
    if rule.high is not None:
        above = st.floats(float(rule.high), float(rule.high) + 1e6, exclude_min=not rule.open_high)
        bad.append(above.map(math.ceil).filter(lambda v: v > rule.high or (rule.open_high and v == rule.high))
                   if rule.kind == "int" else above)
    return st.one_of(bad)


def _valid(rule: Rule | None, placeholder=None):
    """A value ``rule`` accepts, for the required arguments besides the one under test (None without a rule)."""
    if rule is None:
        return placeholder
    if rule.kind == "bool":
        return True
    if rule.kind == "bounds":
        return (0.0, 1.0)
    low = 0.0 if rule.low is None else rule.low
    high = low + 2.0 if rule.high is None else rule.high
    value = (low + high) / 2
    return int(math.ceil(value)) if rule.kind == "int" else value


CASES = [(name, fn, param) for name, fn in ENTRY_POINTS if hasattr(fn, "rules") for param in sorted(fn.rules)]


@pytest.mark.parametrize("name, fn, param", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
@settings(max_examples=examples(8), deadline=None)
@given(data=st.data())
def test_numeric_arguments_are_refused_by_name(name: str, fn, param: str, data) -> None:
    rule = fn.rules[param]
    value = data.draw(_bad_values(rule), label=param)
    sig = inspect.signature(fn)
    required = [p for p in sig.parameters.values() if p.default is inspect.Parameter.empty and p.name != param
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    args = [_valid(fn.rules.get(p.name)) for p in required if p.kind != p.KEYWORD_ONLY]
    kwargs = {p.name: _valid(fn.rules.get(p.name), 0.1) for p in required if p.kind == p.KEYWORD_ONLY}
    with pytest.raises(InputError, match=rf"{param} must be"):
        fn(*args, **kwargs, **{param: value})


@pytest.mark.parametrize("value, pattern", [
    ("0.1", r"eps must be a number.*not|eps must be a number"), (True, "eps must be a number"),
    (float("nan"), "finite"), (-0.1, "≥ 0"), (torch.tensor([0.1, 0.1]), r"shape \(3,\)"),
])
def test_eps_of_the_wrong_type(value, pattern) -> None:
    model, x, y = make_problem()
    expect_error("pgd", model, x, y, pattern, InputError, eps=value)


def test_steps_as_a_float_and_a_negative_step_size() -> None:
    model, x, y = make_problem()
    expect_error("pgd", model, x, y, r"pgd: steps must be an integer ≥ 1, got 2\.5.*whole number", InputError,
                 steps=2.5)
    expect_error("pgd", model, x, y, r"pgd: alpha must be a finite number > 0", InputError, alpha=-0.01)
    expect_error("cw_l2", model, x, y, r"initial_const must be a finite number > 0", InputError,
                 initial_const=float("nan"))
    expect_error("cw_l2", model, x, y, r"kappa must be a finite number ≥ 0", InputError, kappa=float("nan"))


@pytest.mark.parametrize("name", [n for n in NAMES if n not in QUERY])
def test_inputs_of_another_dtype_than_the_model(name: str) -> None:
    model, x, y = make_problem()
    expect_error(name, model, x.double(), y, r"x is torch\.float64 but the model's parameters are torch\.float32.*"
                 r"x\.to\(torch\.float32\)", InputError)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in QUERY])
def test_inputs_of_a_shape_the_model_cannot_take(name: str) -> None:
    model, _, y = make_problem()
    x = torch.rand(3, 1, 3, 3)  # 9 features where the model's first layer takes 6
    expect_error(name, model, x, y, r"the model fails on inputs of shape \(3, 1, 3, 3\).*RuntimeError", ModelError)


def test_autoattack_custom_list_must_not_be_empty() -> None:
    model, x, y = make_problem()
    for attacks in ([], (), "apgd-ce"):
        with pytest.raises(InputError, match=r"attacks must be a non-empty list"):
            ev.autoattack(model, x, y, eps=0.1, attacks=attacks)


def test_autoattack_state_path_is_checked(tmp_path) -> None:
    model, x, y = make_problem()
    model.eval()
    kw = dict(eps=0.3, attacks=["apgd-ce"], checks=False)
    with pytest.raises(InputError, match=r"state_path .* is not a file"):
        ev.autoattack(model, x, y, state_path=tmp_path, **kw)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a state")
    with pytest.raises(InputError, match=r"not an AutoAttack state file.*delete"):
        ev.autoattack(model, x, y, state_path=junk, **kw)
    # a state whose key matches but whose contents were changed is refused, never used
    path = tmp_path / "aa.pt"
    first = ev.autoattack(model, x, y, state_path=path, **kw)
    state = torch.load(path, weights_only=True)
    state["x_adv"] = state["x_adv"] + 0.5  # outside the eps ball
    torch.save(state, path)
    with pytest.raises(InputError, match=r"matches this run but its contents are damaged.*delete"):
        ev.autoattack(model, x, y, state_path=path, **kw)
    path.unlink()
    again = ev.autoattack(model, x, y, state_path=path, **kw)
    assert torch.equal(first.success, again.success)
