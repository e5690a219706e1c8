"""The certification suite: IBP and randomized-smoothing certified accuracy on the digits CNN and a ResNet-style
model, its consistency with the certifiers it calls, the skipped IBP entry, JSON-readiness and bad input."""

from __future__ import annotations

import contextlib
import json
import math
from itertools import pairwise

import pytest
import torch
from torch import nn

from adverse.data import digits
from adverse.defenses.smoothing import certify
from adverse.errors import InputError
from adverse.evaluation.certify_suite import certify_suite
from adverse.zoo import pretrained

EPS = (0.0, 0.05, 0.1, 0.2, 0.3)
N, SAMPLES, SEED = 30, 200, 3


@pytest.fixture(scope="module")
def setup():
    model, data = pretrained("digits-cnn"), digits("test")
    calls = []
    out = certify_suite(model, data, eps=EPS, n=N, samples=SAMPLES, seed=SEED,
                        progress=lambda *a: calls.append(a))
    return model, data, out, calls


def _method(out: dict, name: str) -> dict:
    return next(m for m in out["methods"] if m["method"] == name)


def test_shape_and_json(setup):
    _, _, out, calls = setup
    assert out["n"] == N and out["config"]["input_dim"] == 64
    assert [m["method"] for m in out["methods"]] == ["ibp", "smoothing"]
    json.dumps(out, allow_nan=False)
    assert calls[-1][1] == calls[-1][2] and all(c[1] <= c[2] for c in calls)


def test_ibp_is_a_lower_bound_that_equals_clean_accuracy_at_zero(setup):
    _, _, out, _ = setup
    ibp = _method(out, "ibp")
    assert ibp["status"] == "ok" and [r["eps"] for r in ibp["rows"]] == list(EPS)
    acc = [r["certified_accuracy"] for r in ibp["rows"]]
    assert acc[0] == out["clean_accuracy"]
    assert all(a <= out["clean_accuracy"] for a in acc)
    assert all(a >= b for a, b in pairwise(acc))
    assert all(r["certified"] == round(r["certified_accuracy"] * N) for r in ibp["rows"])


def test_smoothing_rows_match_certify_called_directly(setup):
    model, data, out, _ = setup
    sm = _method(out, "smoothing")
    certs = certify(model, data.x[:N], sigma=0.25, n0=100, n=SAMPLES, alpha=0.001, seed=SEED)
    y = data.y[:N]
    assert sm["smoothed_accuracy"] == certs.certified_accuracy(y, 0.0)
    assert sm["abstain_rate"] == float((certs.prediction == -1).double().mean())
    assert math.isclose(sm["max_radius"], certs.max_radius)
    for e, r in zip(EPS, sm["rows"]):
        assert r["linf_eps"] == e and math.isclose(r["radius"], e * 8.0)  # √64: the L2 ball around the L∞ ball
        with pytest.warns(UserWarning) if r["beyond_max_radius"] else contextlib.nullcontext():
            assert r["certified_accuracy"] == certs.certified_accuracy(y, r["radius"])
    acc = [r["certified_accuracy"] for r in sm["rows"]]
    assert acc[0] == sm["smoothed_accuracy"] and all(a >= b for a, b in pairwise(acc))
    assert sm["rows"][-1]["beyond_max_radius"] and acc[-1] == 0.0


class SinNet(nn.Module):
    """A model with an op interval bound propagation does not support."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.sin(x.flatten(1)))


def test_unsupported_layer_skips_ibp_and_l2_skips_it_too():
    data = digits("test")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = SinNet()
    out = certify_suite(model, data, eps=(0.1,), n=5, samples=100, n0=50)
    ibp = _method(out, "ibp")
    assert ibp["status"] == "skipped" and "sin" in ibp["reason"] and "rows" not in ibp
    assert _method(out, "smoothing")["status"] == "ok"
    json.dumps(out, allow_nan=False)
    out = certify_suite(pretrained("digits-cnn"), data, norm="l2", eps=(0.25, 0.5), n=5, samples=100, n0=50)
    assert _method(out, "ibp")["status"] == "skipped" and "L∞" in _method(out, "ibp")["reason"]
    rows = _method(out, "smoothing")["rows"]
    assert [r["radius"] for r in rows] == [0.25, 0.5] and all("linf_eps" not in r for r in rows)


class Gated(nn.Module):
    """``h ⊙ sigmoid(h)`` on top of a model: a product of two bounded tensors, which IBP refuses."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inner(x)
        return h * torch.sigmoid(h)


def test_resnet_with_inline_normalization_is_certified_and_an_unsupported_op_is_skipped():
    """A ResNet-style model (BatchNorm, 1×1 shortcuts, global average pooling, ``(x − mean) / std`` in forward) is
    certified by IBP; the same model with a gated output is reported as skipped, naming the operation."""
    from resnet_models import digits_resnet

    from adverse.zoo import train_classifier

    data = digits("test")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = train_classifier(digits_resnet(width=4, batch_norm=True), digits("train"), epochs=5, lr=1e-2, seed=0)
    out = certify_suite(model, data, eps=(0.0, 0.01), n=20, samples=100, n0=50)
    ibp = _method(out, "ibp")
    assert ibp["status"] == "ok" and [r["eps"] for r in ibp["rows"]] == [0.0, 0.01]
    assert ibp["rows"][0]["certified_accuracy"] == out["clean_accuracy"] > 0.5
    assert ibp["rows"][1]["certified_accuracy"] <= out["clean_accuracy"]
    out = certify_suite(Gated(model), data, eps=(0.01,), n=5, samples=100, n0=50)
    ibp = _method(out, "ibp")
    assert ibp["status"] == "skipped" and "rows" not in ibp
    assert "function mul of two bounded tensors" in ibp["reason"] and "not affine" in ibp["reason"]
    assert _method(out, "smoothing")["status"] == "ok"
    json.dumps(out, allow_nan=False)


@pytest.mark.parametrize("kwargs, match", [
    ({"norm": "l3"}, "norm"),
    ({"eps": (-0.1,)}, "eps"),
    ({"eps": (1.5,)}, "eps"),
    ({"eps": ()}, "eps"),
    ({"n": 0}, "n must"),
    ({"n": 10_000}, "only"),
    ({"sigma": 0.0}, "sigma"),
    ({"samples": 0}, "samples"),
    ({"n0": 500, "samples": 100}, "n0"),
    ({"alpha": 1.5}, "alpha"),
    ({"model": "model"}, "nn.Module"),
    ({"data": "digits"}, "Dataset"),
])
def test_bad_input(kwargs, match):
    args = {"model": pretrained("digits-cnn"), "data": digits("test")}
    for k in ("model", "data"):
        if k in kwargs:
            args[k] = kwargs.pop(k)
    with pytest.raises(InputError, match=match):
        certify_suite(args["model"], args["data"], **kwargs)
