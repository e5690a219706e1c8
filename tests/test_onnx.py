"""ONNX models through :func:`adverse.loading.load_model`: without onnx2torch an ``.onnx`` file loads as a
black box run by onnxruntime that answers exactly like the torch model it was written from (scores, and a
Square attack step for step), with fixed or dynamic batch dimensions; bad files and missing packages raise
:class:`ModelError`.

The ONNX files are written with ``onnx.helper`` from seeded torch modules' weights (``torch.onnx.export``
needs onnxscript, which is not a dependency)."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")  # CI installs the onnx extra; skipped only where it is missing
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper

from adverse import loading
from adverse.data import digits
from adverse.errors import ModelError
from adverse.evasion.square import square
from adverse.loading import is_black_box, load_model
from adverse.models import BlackBox

OPSET = 13


@pytest.fixture(autouse=True)
def _no_onnx2torch(monkeypatch):
    """Every test here takes the onnxruntime path, whether or not onnx2torch happens to be installed."""
    monkeypatch.setitem(sys.modules, "onnx2torch", None)


@pytest.fixture(scope="module")
def data():
    test = digits("test")
    return test.x[:120], test.y[:120]


@pytest.fixture(scope="module")
def mlp():
    """Untrained (training costs seconds and changes nothing here); labels come from its own predictions."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    return model.eval()


@pytest.fixture(scope="module")
def cnn():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))
    return model.eval()


# --------------------------------------------------------------------------------------------- graph writers
def _init(name: str, t: torch.Tensor, dtype: np.dtype) -> onnx.TensorProto:
    return numpy_helper.from_array(t.detach().numpy().astype(dtype), name)


def _gemm(inp: str, out: str, layer: nn.Linear, name: str, dtype: np.dtype) -> tuple[onnx.NodeProto, list]:
    """``out = inp @ W.T + b`` as one Gemm node and its two initializers."""
    node = helper.make_node("Gemm", [inp, f"{name}.w", f"{name}.b"], [out], transB=1)
    return node, [_init(f"{name}.w", layer.weight, dtype), _init(f"{name}.b", layer.bias, dtype)]


def _save(nodes, inits, in_shape, path, elem=TensorProto.FLOAT) -> None:
    """Write one graph with input ``x`` of ``in_shape`` and output ``logits`` (n, 10); check it first."""
    graph = helper.make_graph(
        nodes, "net", [helper.make_tensor_value_info("x", elem, in_shape)],
        [helper.make_tensor_value_info("logits", elem, [in_shape[0], 10])], initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # readable by every onnxruntime the extra allows
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def write_mlp(model: nn.Sequential, path, batch="n", flat=False, dtype=np.float32) -> None:
    """Flatten → Gemm → Relu → Gemm, the weights of ``model``; ``flat`` declares (n, 64) inputs instead."""
    g1, i1 = _gemm("h0", "h1", model[1], "fc1", dtype)
    g2, i2 = _gemm("h2", "logits", model[3], "fc2", dtype)
    nodes = [helper.make_node("Flatten", ["x"], ["h0"], axis=1), g1, helper.make_node("Relu", ["h1"], ["h2"]), g2]
    shape = [batch, 64] if flat else [batch, 1, 8, 8]
    elem = TensorProto.DOUBLE if dtype == np.float64 else TensorProto.FLOAT
    _save(nodes, i1 + i2, shape, path, elem)


def write_cnn(model: nn.Sequential, path) -> None:
    """Conv (3×3, padding 1) → Relu → Flatten → Gemm, the weights of ``model``."""
    conv = model[0]
    nodes = [
        helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"], axis=1),
    ]
    gemm, inits = _gemm("f", "logits", model[3], "fc", np.float32)
    inits = [_init("conv.w", conv.weight, np.float32), _init("conv.b", conv.bias, np.float32)] + inits
    _save(nodes + [gemm], inits, ["n", 1, 8, 8], path)


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


# --------------------------------------------------------------------------------------------- faithful
def test_mlp_loads_as_a_black_box_with_the_torch_models_scores(mlp, data, tmp_path):
    path = tmp_path / "mlp.onnx"
    write_mlp(mlp, path)
    box = load_model(path)
    assert isinstance(box, BlackBox) and is_black_box(box) and not is_black_box(mlp)
    assert (box.source_format, box.white_box, box.path) == ("onnx", False, path)
    x, _ = data
    out = box(x)
    assert out.dtype == torch.float32 and out.shape == (len(x), 10)
    torch.testing.assert_close(out, _logits(mlp, x), atol=1e-5, rtol=0)
    assert box.output == "scores" and box.queries == len(x)


def test_conv_net_scores_match(cnn, data, tmp_path):
    path = tmp_path / "cnn.onnx"
    write_cnn(cnn, path)
    x, _ = data
    torch.testing.assert_close(load_model(path)(x), _logits(cnn, x), atol=1e-5, rtol=0)


def test_square_through_onnx_is_square_through_the_torch_black_box(mlp, data, tmp_path):
    path = tmp_path / "mlp.onnx"
    write_mlp(mlp, path)
    x = data[0][:40]
    y = _logits(mlp, x).argmax(dim=1)  # all clean-correct; at this ε some fall and some resist 150 queries
    via_onnx = square(load_model(path), x, y, eps=0.05, max_queries=150, seed=0)
    via_torch = square(BlackBox(mlp), x, y, eps=0.05, max_queries=150, seed=0)
    assert 0 < via_torch.success.sum() < len(x) and via_torch.queries > 1000  # the attack had work to do
    assert torch.equal(via_onnx.success, via_torch.success)
    assert torch.equal(via_onnx.x_adv, via_torch.x_adv)
    assert via_onnx.queries == via_torch.queries


# --------------------------------------------------------------------------------------------- batch shapes
@pytest.mark.parametrize("batch", [1, 4])
def test_fixed_batch_size_runs_in_chunks_of_it(mlp, data, tmp_path, batch):
    path = tmp_path / "fixed.onnx"
    write_mlp(mlp, path, batch=batch)
    box = load_model(path)
    x, _ = data  # 9 rows: with a batch of 4 the last chunk (1 row) is padded
    torch.testing.assert_close(box(x[:9]), _logits(mlp, x[:9]), atol=1e-5, rtol=0)
    assert box.queries == 9


def test_dynamic_batch_runs_in_chunks(mlp, data, tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "ONNX_CHUNK", 7)
    path = tmp_path / "mlp.onnx"
    write_mlp(mlp, path)
    box = load_model(path)
    assert box._fn.chunk == 7
    x, _ = data
    torch.testing.assert_close(box(x[:30]), _logits(mlp, x[:30]), atol=1e-5, rtol=0)
    assert box(x[:0]).shape == (0, 10)


def test_flat_input_and_float64_graph(mlp, data, tmp_path):
    path = tmp_path / "flat64.onnx"
    write_mlp(mlp, path, flat=True, dtype=np.float64)
    x, _ = data
    out = load_model(path)(x)  # images (n, 1, 8, 8) flattened to the declared (n, 64), sent as float64
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, _logits(mlp.double(), x.double()), atol=1e-5, rtol=0)
    mlp.float()


# --------------------------------------------------------------------------------------------- errors
def test_corrupt_file_is_a_model_error(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(np.random.default_rng(0).bytes(512))
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        load_model(path)


def test_wrong_input_shape_is_a_model_error(mlp, tmp_path):
    path = tmp_path / "mlp.onnx"
    write_mlp(mlp, path)
    with pytest.raises(ModelError, match="rejected a batch of shape"):
        load_model(path)(torch.rand(2, 1, 4, 4))


def test_no_runtime_names_the_extra(mlp, tmp_path, monkeypatch):
    path = tmp_path / "mlp.onnx"
    write_mlp(mlp, path)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ModelError, match=r"pip install 'adverse\[onnx\]'"):
        load_model(path)


def test_onnx2torch_when_installed_gives_a_white_box(mlp, tmp_path, monkeypatch):
    """The converter is faked: onnx2torch needs torchvision, which is not a dependency here."""
    path = tmp_path / "mlp.onnx"
    write_mlp(mlp, path)
    seen = []
    fake = types.SimpleNamespace(convert=lambda proto: seen.append(proto) or mlp)
    monkeypatch.setitem(sys.modules, "onnx2torch", fake)
    assert load_model(path) is mlp and not is_black_box(mlp)
    assert isinstance(seen[0], onnx.ModelProto) and seen[0].graph.input[0].name == "x"
    (tmp_path / "junk.onnx").write_bytes(b"\x00not onnx")
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        load_model(tmp_path / "junk.onnx")
