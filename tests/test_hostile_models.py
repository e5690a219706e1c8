"""Model files from strangers (issue 15): ``.pt2`` and TorchScript archives are checked before torch reads them
(:mod:`adverse.archives`), exported programs work with the attacks and the audit, and the audit's resume
fingerprint covers the model's code and file.

Each test names the class of the issue it covers: "code from model files", "advertised formats that do not
work", "silent wrong numbers" (resume state reused for another model) and "hangs and crashes" (archives
beyond the limits). A hostile file's payload creates a marker file or overwrites a victim file; the tests assert
that neither happens, and, as a control, that torch's own loader does run the payload.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import pickle
import struct
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from adverse import archives, zoo
from adverse.cli import app
from adverse.errors import ModelError
from adverse.evaluation.audit import _fingerprint, audit
from adverse.evasion import pgd
from adverse.loading import load_model, source_digest


class Net(nn.Module):
    """A small CNN with BatchNorm for 8×8 one-channel images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


class _Payload:
    """Unpickling this creates ``marker``: a stand-in for arbitrary code in a malicious file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickled(obj: object) -> bytes:
    buf = io.BytesIO()
    pickle.dump(obj, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def net() -> Net:
    torch.manual_seed(0)
    m = Net()
    with torch.no_grad():  # BatchNorm statistics that are not the defaults
        m.bn.running_mean.uniform_(-0.1, 0.1)
        m.bn.running_var.uniform_(0.5, 1.5)
    return m.eval()


@pytest.fixture(scope="module")
def pt2(net, tmp_path_factory) -> Path:
    """A genuine ``.pt2`` of ``net`` with a dynamic batch size."""
    path = tmp_path_factory.mktemp("pt2") / "net.pt2"
    x = torch.rand(4, 1, 8, 8)
    ep = torch.export.export(net, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}})
    torch.export.save(ep, str(path))
    return path


def _rewrite(src: Path, dst: Path, edit) -> Path:
    """A copy of the archive ``src`` with each member's bytes replaced by ``edit(name, data)`` (the name below
    the root folder; None drops the member; ``edit.extra`` adds members)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        root = zin.namelist()[0].split("/")[0]
        for info in zin.infolist():
            data = edit(info.filename.split("/", 1)[1], zin.read(info.filename))
            if data is not None:
                zout.writestr(info.filename, data)
        for name, data in getattr(edit, "extra", {}).items():
            zout.writestr(f"{root}/{name}", data)
    return dst


def _json_edit(member: str, change):
    def edit(name: str, data: bytes) -> bytes:
        if name != member:
            return data
        doc = json.loads(data)
        change(doc)
        return json.dumps(doc).encode()

    return edit


# --------------------------------------------------------------------------------------------- code from model files
def _walk(doc):
    """Every dict in a JSON document."""
    stack = [doc]
    while stack:
        d = stack.pop()
        if isinstance(d, dict):
            yield d
            stack.extend(d.values())
        elif isinstance(d, list):
            stack.extend(d)


def _pickled_weight(marker: Path):
    """Class "code from model files": the weights config marks ``fc.bias`` as pickled and points it at a pickle
    that creates ``marker`` (torch.export.load unpickles it with weights_only=False)."""
    def change(cfg):
        cfg["config"]["fc.bias"].update(use_pickle=True, path_name="payload")

    edit = _json_edit("data/weights/model_weights_config.json", change)
    edit.extra = {"data/weights/payload": _pickled(_Payload(marker))}
    return edit


def _pickled_sample_inputs(marker: Path):
    """Class "code from model files": sample inputs that torch.load(weights_only=True) refuses, so torch retries
    them with full pickle."""
    return lambda name, data: _pickled((_Payload(marker),)) if name == "data/sample_inputs/model.pt" else data


def _shape_expression(marker: Path):
    """Class "code from model files": a symbolic shape whose expression string calls Python (torch passes it to
    sympy.sympify, which evals it)."""
    def change(doc):
        sizes = doc["graph_module"]["graph"]["tensor_values"]["x"]["sizes"]
        expr = sizes[0]["as_expr"]
        expr["expr_str"] = f"{expr['expr_str']} + 0*len(str(__import__('builtins').open({str(marker)!r}, 'w')))"

    return _json_edit("models/model.json", change)


def _guard(marker: Path):
    """Class "code from model files": a guard (torch execs the guards into a function the module calls first)."""
    def change(doc):
        doc["guards_code"] = [f"L['x'].size()[0] >= 1 and open({str(marker)!r}, 'w') is not None"]

    return _json_edit("models/model.json", change)


def _injected_name(marker: Path):
    """Class "code from model files": a parameter name that torch.fx pastes into the generated forward
    (``getattr(self.fc, "<name>")``), breaking out of the string (no dot in ``marker``'s path)."""
    bad = f'x", open({str(marker)!r}, "w") and "x'

    def edit(name: str, data: bytes) -> bytes:
        doc = json.loads(data) if name.endswith(".json") else None
        if name == "models/model.json":
            for d in _walk(doc):
                for key in ("parameter_name", "target"):
                    if d.get(key) == "fc.bias":
                        d[key] = f"fc.{bad}"
        elif name == "data/weights/model_weights_config.json":
            doc["config"][f"fc.{bad}"] = doc["config"].pop("fc.bias")
        return data if doc is None else json.dumps(doc).encode()

    return edit


@pytest.mark.parametrize("make", [_pickled_weight, _pickled_sample_inputs, _shape_expression, _guard,
                                  _injected_name],
                         ids=["pickled-weight", "pickled-sample-inputs", "shape-expression", "guard-code",
                              "injected-name"])
def test_a_pt2_payload_never_runs(pt2, tmp_path, make):
    """Class "code from model files": torch's loader runs each payload (control); adverse refuses the file
    before torch sees it, through the API and the CLI (exit 2), and the marker is never created."""
    control = tmp_path / "control-marker"
    _rewrite(pt2, tmp_path / "control.pt2", make(control))
    with contextlib.suppress(Exception):  # torch may fail after running the payload
        torch.export.load(str(tmp_path / "control.pt2")).module()(torch.rand(2, 1, 8, 8))
    assert control.exists(), "the crafted file no longer exercises torch's unpickling; update the test"

    marker = tmp_path / "marker"
    evil = _rewrite(pt2, tmp_path / "evil.pt2", make(marker))
    with pytest.raises(ModelError, match=r"evil\.pt2.*trust_code=True \(--trust-code\)"):
        load_model(evil)
    assert not marker.exists()
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32),
             y=np.arange(4))
    r = CliRunner().invoke(app, ["audit", "--model", str(evil), "--data", str(tmp_path / "d.npz"),
                                 "--out", str(tmp_path / "out")])
    assert r.exit_code == 2, r.output
    assert "--trust-code" in r.output and "Traceback" not in r.output
    assert not marker.exists()


def _custom_object(name: str, data: bytes) -> bytes:
    if name == "data/constants/model_constants_config.json":
        return json.dumps({"config": {"obj": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": False,
                                              "tensor_meta": None}}}).encode()
    return data


_custom_object.extra = {"data/constants/opaque_obj_0": _pickled(_Payload(Path("/nonexistent/x")))}


def _file_operator(name: str, data: bytes) -> bytes:
    if name != "models/model.json":
        return data
    return data.replace(b"torch.ops.aten.relu.default", b"torch.ops.aten.from_file.default")


def _custom_namespace(name: str, data: bytes) -> bytes:
    if name != "models/model.json":
        return data
    return data.replace(b"torch.ops.aten.relu.default", b"torch.ops.mylib.relu.default")


def _aoti(name: str, data: bytes) -> bytes:
    return data


_aoti.extra = {"data/aotinductor/model/model.so": b"\x7fELF not really"}


@pytest.mark.parametrize("edit, message", [
    (_custom_object, r"constant 'obj' as a pickled Python or TorchBind object"),
    (_file_operator, r"aten::from_file reads or writes files"),
    (_custom_namespace, r"mylib::relu is outside the pure namespaces"),
    (_aoti, r"AOTInductor compiled code"),
], ids=["opaque-object", "from-file-op", "custom-namespace", "aotinductor"])
def test_a_pt2_outside_the_checks_is_refused(pt2, tmp_path, edit, message):
    """Class "code from model files": every other way a .pt2 can carry code is refused, naming it."""
    evil = _rewrite(pt2, tmp_path / "evil.pt2", edit)
    with pytest.raises(ModelError, match=message):
        load_model(evil)


class Writer(nn.Module):
    """A model whose forward overwrites a file of the user's with ``torch.from_file(..., shared=True)``."""

    def __init__(self, victim: str, size: int) -> None:
        super().__init__()
        self.path, self.size = victim, size
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.from_file(self.path, True, self.size, dtype=torch.uint8)
        t.fill_(88)
        return self.fc(x.flatten(1)) + 0 * t[0].float()


class WriterOnLoad(nn.Module):
    """A model whose ``__setstate__`` (run by torch.jit.load itself) overwrites a file of the user's."""

    def __init__(self, victim: str, size: int) -> None:
        super().__init__()
        self.path, self.size = victim, size
        self.w = torch.zeros(10, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.t()

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str, int, bool]:
        return (self.w, self.path, self.size, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, int, bool]) -> None:
        self.path, self.size, self.training = state[1], state[2], state[3]
        self.w = state[0] + torch.from_file(self.path, True, self.size, dtype=torch.uint8).fill_(89)[:1].float() * 0


@pytest.mark.parametrize("cls", [Writer, WriterOnLoad], ids=["in-forward", "on-load"])
def test_torchscript_that_writes_files_is_refused(cls, tmp_path):
    """Class "code from model files": a TorchScript model that writes to the user's files (in forward, or in
    __setstate__ while torch.jit.load runs) is refused without --trust-code (victim unchanged, exit 2 from the
    CLI); with trust_code=True it loads."""
    victim = tmp_path / "victim.txt"
    original = b"precious data"
    victim.write_bytes(original)
    path = tmp_path / "evil.pt"
    torch.jit.script(cls(str(victim), len(original))).save(str(path))
    x = torch.rand(2, 1, 8, 8)

    torch.jit.load(str(path))(x)  # control: torch runs it and the victim is overwritten
    assert victim.read_bytes() != original, "the crafted model no longer writes; update the test"
    victim.write_bytes(original)

    with pytest.raises(ModelError, match=r"evil\.pt uses torch\.from_file .*reads or writes files.*--trust-code"):
        load_model(path)
    assert victim.read_bytes() == original
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32),
             y=np.arange(4))
    r = CliRunner().invoke(app, ["audit", "--model", str(path), "--data", str(tmp_path / "d.npz"),
                                 "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and "--trust-code" in r.output, r.output
    assert victim.read_bytes() == original

    trusted = load_model(path, trust_code=True)  # the user's explicit choice: torch's loader, as is
    assert isinstance(trusted, torch.jit.ScriptModule)


@pytest.mark.parametrize("how", ["flag", "config", "neither"])
def test_trust_code_reaches_the_loader(tmp_path, monkeypatch, how):
    """Class "code from model files": --trust-code (or trust_code = true in the config's [model] table) is the
    only way the CLI passes trust_code=True to load_model."""
    import adverse.loading

    seen = {}

    def fake_load_model(path, **kwargs):
        seen.update(kwargs)
        raise ModelError("stop here")

    monkeypatch.setattr(adverse.loading, "load_model", fake_load_model)
    config = tmp_path / "audit.toml"
    config.write_text(f"[model]\ntrust_code = {str(how == 'config').lower()}\n")
    args = ["audit", "--model", str(tmp_path / "m.pt2"), "--data", "digits", "--out", str(tmp_path / "o"),
            "--config", str(config)] + (["--trust-code"] if how == "flag" else [])
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "stop here" in r.output, r.output
    assert seen["trust_code"] is (how != "neither") and seen["trust_pickle"] is False


@pytest.mark.parametrize("code, message", [
    ("torch.save(x, 'stolen.pt')", r"torch\.save .*aten::save reads or writes files"),
    ("ops.mylib.run(x)", r"ops\.mylib\.run .*mylib::run is outside the pure namespaces"),
    ("print(x)", r"calls print\(\)"),
    ("torch.ops.aten.relu(x)", r"torch\.ops\.aten\.relu .*not an aten operator"),
    ("torch.no_such_op(x)", r"aten::no_such_op is not a registered torch operator"),
], ids=["save", "custom-namespace", "print", "torch-ops", "unknown-op"])
def test_torchscript_code_outside_the_allowlist_is_refused(net, tmp_path, code, message):
    """Class "code from model files": the serialized TorchScript code is read and every operator it names is
    checked against the allowlist before torch compiles it."""
    src = tmp_path / "ok.pt"
    torch.jit.script(net).save(str(src))

    def edit(name: str, data: bytes) -> bytes:
        if name == "code/__torch__.py" or name.endswith("/conv.py"):
            text = data.decode()
            return text.replace("    return ", f"    _evil = {code}\n    return ", 1).encode()
        return data

    with pytest.raises(ModelError, match=message):
        load_model(_rewrite(src, tmp_path / "evil.pt", edit))


def test_ordinary_archives_load_without_trust(net, pt2, tmp_path):
    """Class "code from model files" (no false alarms): scripted and traced TorchScript and an exported program
    made of ordinary operators load without trust_code and compute what the module computes."""
    x = torch.rand(5, 1, 8, 8)
    scripted, traced = tmp_path / "s.pt", tmp_path / "t.pt"
    torch.jit.script(net).save(str(scripted))
    torch.jit.trace(net, x).save(str(traced))
    with torch.no_grad():
        expected = net(x)
        for path in (scripted, traced, pt2):
            model = load_model(path)
            torch.testing.assert_close(model(x), expected)
            assert source_digest(model) == archives.sha256(path)


# --------------------------------------------------------------------------------------------- hangs and crashes
def test_archives_beyond_the_limits_are_refused_quickly(tmp_path, monkeypatch):
    """Class "hangs and crashes": a zip bomb (a member that expands 1000:1, or one that declares 4 GB), an
    archive claiming a billion members, and one with more members than the limit are refused unread, at once."""
    started = time.perf_counter()
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("bomb/.data/version", "3\n")
        z.writestr("bomb/data/0", bytes(16 * 2**20))
    with pytest.raises(ModelError, match=r"zip bomb"):
        load_model(bomb, arch="SmallCNN")

    liar = tmp_path / "liar.pt"  # a tiny member whose entries declare 4 GB uncompressed
    with zipfile.ZipFile(liar, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("liar/.data/version", "3\n")
        z.writestr("liar/data/0", bytes(2**16))
    raw, name = bytearray(liar.read_bytes()), b"liar/data/0"
    for sig, size_at, name_at in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):  # local and central entries
        at = raw.find(sig)
        while raw[at + name_at:at + name_at + len(name)] != name:
            at = raw.find(sig, at + 4)
        raw[at + size_at:at + size_at + 4] = struct.pack("<I", 4_000_000_000)
    liar.write_bytes(bytes(raw))
    with pytest.raises(ModelError, match=r"zip bomb"):
        load_model(liar, arch="SmallCNN")

    billion = tmp_path / "billion.pt2"  # a zip64 end record announcing 10^9 members, and nothing else
    zip64_end = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, 10**9, 10**9, 46 * 10**9, 0)
    locator = struct.pack("<IIQI", 0x07064B50, 0, 0, 1)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    billion.write_bytes(zip64_end + locator + end)
    with pytest.raises(ModelError, match=r"declares 1000000000 members"):
        load_model(billion)

    monkeypatch.setattr(archives, "MAX_MEMBERS", 100)
    many = tmp_path / "many.pt"
    with zipfile.ZipFile(many, "w") as z:
        for i in range(101):
            z.writestr(f"many/data/{i}", b"")
    with pytest.raises(ModelError, match=r"declares 101 members"):
        load_model(many, arch="SmallCNN")
    assert time.perf_counter() - started < 10


# --------------------------------------------------------------------------------------------- advertised formats
def test_an_exported_program_is_attacked_and_audited(net, pt2, tmp_path):
    """Class "advertised formats that do not work": an exported CNN with BatchNorm is attacked with PGD (same
    adversarial examples as the module it was exported from, mode flags and BatchNorm buffers left as found,
    inside a wrapper too) and audited end to end through the CLI (exit 0)."""
    model = load_model(pt2)
    x = torch.rand(16, 1, 8, 8)
    y = net(x).argmax(1)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    result = pgd(model, x, y, eps=0.1, steps=5, seed=0)
    torch.testing.assert_close(result.x_adv, pgd(net, x, y, eps=0.1, steps=5, seed=0).x_adv)
    assert result.success.any()
    assert all(not m.training for m in model.modules())
    assert all(torch.equal(v, buffers[k]) for k, v in model.state_dict().items())
    wrapped = nn.Sequential(nn.Identity(), model)
    wrapped.training = wrapped[0].training = True  # (wrapped.train() would call the exported module's, refused)
    pgd(wrapped, x, y, eps=0.1, steps=2, seed=0)
    assert wrapped.training and wrapped[0].training and not model.training

    from adverse.data import digits

    test = digits("test")
    data = tmp_path / "d.npz"
    np.savez(data, x=test.x[:40].numpy(), y=test.y[:40].numpy())
    r = CliRunner().invoke(app, ["audit", "--model", str(pt2), "--data", str(data), "--suites", "evasion",
                                 "--n", "20", "--eps", "0.1", "--steps", "3", "--no-checks", "--autoattack", "off",
                                 "--out", str(tmp_path / "out"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "out" / "results.json").read_text())["n"] == 20


def test_an_exported_program_in_training_mode_is_refused(tmp_path):
    """Class "advertised formats that do not work" (no silent wrong numbers): an exported graph keeps the mode
    it was exported in, so one exported in training mode (BatchNorm updating its statistics, live dropout)
    is refused with the fix."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Dropout(0.5), nn.Linear(72, 10))
    path = tmp_path / "train.pt2"
    torch.export.save(torch.export.export(model.train(), (torch.rand(4, 1, 8, 8),)), str(path))
    with pytest.raises(ModelError, match=r"exported in training mode.*model\.eval\(\)"):
        load_model(path)


# --------------------------------------------------------------------------------------------- silent wrong numbers
class FlippedCNN(zoo.SmallCNN):
    """The same weights as the digits CNN, another forward: the image mirrored first."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flip(-1))


def test_resume_state_is_not_shared_by_models_with_the_same_weights(tmp_path):
    """Class "silent wrong numbers": two models with the same state_dict but different code (in memory, and as
    files) have different fingerprints, so the second audit into the same state folder does not reuse the
    first's results."""
    from adverse.data import digits

    trained = zoo.pretrained("digits-cnn")
    flipped = copy.deepcopy(trained)
    flipped.__class__ = FlippedCNN
    data = digits("test").subset(24)
    kw = {"eps": (0.1,), "attacks": ["fgsm"], "checks": False, "suites": ["evasion"], "minimal_norm": False,
          "autoattack": None, "examples": False, "batch_size": 8}
    x, key = data.x, {"k": 1}
    assert _fingerprint(trained, "data", key) != _fingerprint(flipped, "data", key)

    first = audit(trained, data, state_dir=tmp_path, **kw)
    second = audit(flipped, data, state_dir=tmp_path, **kw)
    fresh = audit(flipped, data, **kw)
    assert second.attacks[0]["robust_accuracy"] == fresh.attacks[0]["robust_accuracy"]
    assert second.attacks[0]["robust_accuracy"] != first.attacks[0]["robust_accuracy"]

    files = []
    for i, m in enumerate((trained, flipped)):
        files.append(tmp_path / f"m{i}.pt2")
        torch.export.save(torch.export.export(m, (x[:2],)), str(files[i]))
    a, b = (load_model(f) for f in files)
    assert _fingerprint(a, "data", key) != _fingerprint(b, "data", key)
