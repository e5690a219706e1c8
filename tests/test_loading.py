"""Users' own models and data: every format loads to the same function, audits end to end, and nothing in a
file runs unless the user says so."""

from __future__ import annotations

import json
import pickle
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from adverse import zoo
from adverse.cli import app
from adverse.data import digits
from adverse.errors import AdverseError, InputError, ModelError
from adverse.loading import build_architecture, load_data, load_model


@pytest.fixture(scope="module")
def net():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = zoo.SmallCNN(width=8)
    return zoo.train_classifier(model, digits("train"), epochs=3, seed=0)


@pytest.fixture(scope="module")
def probe():
    return torch.rand(7, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def _same(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


FACTORY = """
import torch
from adverse.zoo import SmallCNN

def small():
    return SmallCNN(width=8)
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_models:small"
    sys.modules.pop("my_models", None)


# --------------------------------------------------------------------------------------------- formats
def test_safetensors_with_a_python_factory(net, probe, tmp_path, user_module):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    _same(load_model(path, arch=user_module), net, probe)
    with pytest.raises(ModelError, match=r"weights only.*arch"):
        load_model(path)
    with pytest.raises(ModelError, match=r"does not match the architecture.*--arch"):
        load_model(path, arch="SmallCNN")  # width 32, not 8
    with pytest.raises(ModelError, match=r"cannot import"):
        load_model(path, arch="no_such_module:f")
    with pytest.raises(ModelError, match=r"unknown architecture"):
        load_model(path, arch="ResNet9000")


def test_state_dict_torchscript_and_export(net, probe, tmp_path, user_module):
    sd = tmp_path / "w.pt"
    torch.save(net.state_dict(), sd)
    _same(load_model(sd, arch=user_module), net, probe)
    with pytest.raises(ModelError, match=r"state dict.*arch"):
        load_model(sd)
    ts = tmp_path / "m.pt"
    torch.jit.save(torch.jit.trace(net, probe), str(ts))
    _same(load_model(ts), net, probe)
    ex = tmp_path / "m.pt2"
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(net, (probe,), dynamic_shapes={"x": {0: batch}}), str(ex))
    loaded = load_model(ex)
    _same(loaded, net, probe)
    _same(loaded, net, probe[:3])  # any batch size


class _Payload:
    """Unpickling this creates ``marker``: a stand-in for arbitrary code in a malicious model file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    with path.open("wb") as f:
        pickle.dump({"weights": _Payload(str(marker))}, f)
    with pytest.raises(ModelError, match=r"unpickle.*arbitrary code.*--trust-pickle"):
        load_model(path, arch="SmallCNN")
    assert not marker.exists()
    r = CliRunner().invoke(app, ["audit", "--model", str(path), "--arch", "SmallCNN", "--data", "digits",
                                 "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "trust-pickle" in r.output and not marker.exists()


def test_a_trusted_pickled_module_loads(net, probe, tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(net, path)
    with pytest.raises(ModelError, match=r"unpickle"):
        load_model(path)
    _same(load_model(path, trust_pickle=True), net, probe)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(ModelError, match=r"no such model file"):
        load_model(tmp_path / "nope.safetensors", arch="SmallCNN")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match=r"not a valid safetensors"):
        load_model(bad, arch="SmallCNN")
    assert isinstance(build_architecture("digits-cnn"), zoo.SmallCNN)


# --------------------------------------------------------------------------------------------- data
def test_data_formats(tmp_path):
    from PIL import Image

    g = np.random.default_rng(0)
    images = (g.random((6, 5, 4)) * 255).astype(np.uint8)
    for i, arr in enumerate(images):
        folder = tmp_path / "imgs" / ("cat" if i < 2 else "dog")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr, mode="L").save(folder / f"{i}.png")
    (tmp_path / "imgs" / "notes.txt").write_text("ignored")
    d = load_data(tmp_path / "imgs")
    assert d.x.shape == (6, 1, 5, 4) and d.y.tolist() == [0, 0, 1, 1, 1, 1] and d.num_classes == 2
    np.testing.assert_allclose(d.x[:, 0].numpy(), images / 255.0, atol=1e-7)
    Image.fromarray(images[0][:4], mode="L").save(tmp_path / "imgs" / "dog" / "odd.png")
    with pytest.raises(InputError, match=r"images of different sizes need --image-size N"):
        load_data(tmp_path / "imgs")

    csv = tmp_path / "t.csv"
    csv.write_text("a,b,label\n0.1,0.2,1\n0.3,0.9,0\n")
    t = load_data(csv)
    assert t.x.shape == (2, 2) and t.y.tolist() == [1, 0]
    csv.write_text("a,b,label\n0.1,7,1\n")
    with pytest.raises(InputError, match=r"inside bounds"):
        load_data(csv)
    csv.write_text("a,b,label\nx,0.2,1\n")
    with pytest.raises(InputError, match=r"number"):
        load_data(csv)

    np.savez(tmp_path / "d.npz", x=np.zeros((3, 2), np.float32), y=np.array([0, 1, 2]))
    assert len(load_data(tmp_path / "d.npz")) == 3
    assert len(load_data("digits")) == 540 and len(load_data("digits:train")) == 1257
    with pytest.raises(InputError, match=r"unknown split"):
        load_data("digits:val")
    with pytest.raises(InputError, match=r"no such data"):
        load_data(tmp_path / "missing.npz")
    with pytest.raises(InputError, match=r"unknown data format"):
        load_data(tmp_path / "t.csv.bak" if (tmp_path / "t.csv.bak").write_text("") is not None else "")


# --------------------------------------------------------------------------------------------- end to end
def test_cli_audits_a_users_model_and_data(net, tmp_path, user_module):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    test = digits("test")
    np.savez(tmp_path / "test.npz", x=test.x[:30].numpy(), y=test.y[:30].numpy())
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["audit", "--model", str(path), "--arch", user_module, "--data",
                                 str(tmp_path / "test.npz"), "--eps", "0.1", "--steps", "3", "--no-checks",
                                 "--json", "--out", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads((out / "results.json").read_text())
    assert d["n"] == 30 and d["model"]["file"] == str(path) and d["model"]["arch"] == user_module
    with torch.no_grad():
        expected = (net(test.x[:30]).argmax(1) == test.y[:30]).double().mean().item()
    assert d["clean_accuracy"] == pytest.approx(expected)
    bad = CliRunner().invoke(app, ["audit", "--model", str(path), "--out", str(tmp_path / "o2")])
    assert bad.exit_code == 2 and "--data" in bad.output


def test_errors_are_adverse_errors():
    assert issubclass(ModelError, AdverseError) and issubclass(InputError, AdverseError)
