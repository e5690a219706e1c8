"""``--save-adv`` / ``save_adv=``: every adversarial example of the evasion suite, streamed to disk per batch, loads
back (:func:`adverse.results.load_adversarial`), lies in its eps ball and reproduces its recorded outcome; a rerun
keeps the saved files; a tampered folder is refused naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import adverse
from adverse.data import digits
from adverse.errors import AdverseError
from adverse.evaluation.audit import audit
from adverse.results import ADV_INDEX, load_adversarial
from adverse.zoo import pretrained

FAST = {"n": 20, "eps": (0.1, 0.3), "steps": 3, "batch_size": 8, "suites": ("evasion",), "checks": False,
        "minimal_norm": False, "autoattack": None, "examples": False}


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return pretrained("digits-cnn")


@pytest.fixture(scope="module")
def data():
    return digits("test")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, model, data):
    out = []
    for norm in ("linf", "l2"):
        folder = tmp_path_factory.mktemp(norm) / "adversarial"
        out.append((norm, folder, audit(model, data, norm=norm, save_adv=folder, **FAST)))
    return out


def test_round_trip_in_ball_and_outcome_reproduced(runs, model, data):
    x, y = data.x[:20], data.y[:20]
    lo, hi = data.bounds
    for norm, folder, result in runs:
        adv = load_adversarial(folder)
        assert set(adv) == {(a, e) for a in ("fgsm", "pgd", "apgd-ce") for e in (0.1, 0.3)}
        files = json.loads((folder / ADV_INDEX).read_text())["batches"]
        assert len(files) == 6 * 3  # 20 samples in batches of 8
        for (attack, eps), d in adv.items():
            assert d["norm"] == norm and d["x_adv"].shape == tuple(x.shape)
            assert np.array_equal(d["index"], np.arange(20)) and np.array_equal(d["y"], y.numpy())
            xa = torch.from_numpy(d["x_adv"])
            delta = (xa - x).flatten(1)
            size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
            assert bool((size <= eps + 1e-5).all()), (norm, attack, eps, size.max())
            assert np.allclose(d["norms"], size.numpy(), atol=1e-5)
            assert float(xa.min()) >= lo - 1e-7 and float(xa.max()) <= hi + 1e-7
            with torch.no_grad():
                fooled = (model(xa).argmax(1) != y).numpy()
            assert np.array_equal(fooled, d["success"]), (norm, attack, eps)
            row = next(r for r in result.attacks if r["attack"] == attack and r["eps"] == eps)
            assert d["forwards"] == row["forwards"] and d["backwards"] == row["backwards"]
            with torch.no_grad():
                clean_wrong = (model(x).argmax(1) != y).numpy()
            assert np.array_equal(result.fooled[(attack, eps)], d["success"] | clean_wrong)
            assert row["robust"] == 20 - int((d["success"] | clean_wrong).sum())


def test_rerun_into_the_same_folder_keeps_the_files(tmp_path, model, data):
    folder = tmp_path / "adversarial"
    first = audit(model, data, save_adv=folder, **dict(FAST, eps=(0.1,)))
    stamps = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in folder.glob("*.npz")}
    assert len(stamps) == 9
    second = audit(model, data, save_adv=folder, **dict(FAST, eps=(0.1,)))
    assert {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in folder.glob("*.npz")} == stamps
    assert first.attacks[0]["robust"] == second.attacks[0]["robust"]
    assert len(json.loads((folder / ADV_INDEX).read_text())["batches"]) == 9
    # an interrupted audit with its resume state: the state's batches are not attacked again either
    state = tmp_path / "state"
    audit(model, data, save_adv=state / "adversarial", state_dir=state, **dict(FAST, eps=(0.1,)))
    assert len(list((state / "adversarial").glob("*.npz"))) == 9


def _tamper(src: Path, dst: Path, change) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    m = json.loads((dst / ADV_INDEX).read_text())
    change(dst, m)
    (dst / ADV_INDEX).write_text(json.dumps(m))
    return dst


@pytest.mark.parametrize("how", ["dotdot", "missing", "sha", "huge", "pickle"])
def test_tampered_folder_is_refused_naming_the_file(runs, tmp_path, how):
    src = runs[0][1]

    def change(dst: Path, m: dict) -> None:
        b = m["batches"][1]
        if how == "dotdot":
            b["file"] = "../" + b["file"]
        elif how == "missing":
            (dst / b["file"]).unlink()
        elif how == "sha":
            b["sha256"] = "0" * 64
        elif how == "huge":
            b["bytes"] = 10**15
        else:  # an object array, which only pickle could read: the sha256 is made to match, np.load still refuses
            import hashlib
            import io

            buf = io.BytesIO()
            np.savez(buf, x_adv=np.array([object()] * 8, dtype=object), index=np.arange(8), y=np.arange(8),
                     success=np.zeros(8, bool), norms=np.zeros(8))
            (dst / b["file"]).write_bytes(buf.getvalue())
            b["sha256"], b["bytes"] = hashlib.sha256(buf.getvalue()).hexdigest(), len(buf.getvalue())

    name = json.loads((src / ADV_INDEX).read_text())["batches"][1]["file"]
    folder = _tamper(src, tmp_path / "t", change)
    with pytest.raises(AdverseError, match=name.replace(".", r"\.")):
        load_adversarial(folder)


def test_cli_flag_and_python_keyword(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from adverse.cli import app

    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["audit", "--out", str(out), "--n", "20", "--eps", "0.1", "--steps", "2",
                                   "--threads", "1", "--suites", "evasion", "--autoattack", "off", "--no-checks",
                                   "--save-adv"])
    assert res.exit_code == 0, res.output
    adv = load_adversarial(out / "adversarial")
    assert set(adv) == {(a, 0.1) for a in ("fgsm", "pgd", "apgd-ce")}
    assert all(len(d["x_adv"]) == 20 for d in adv.values())
    d = json.loads((out / "results.json").read_text())
    assert {(r["attack"], r["eps"]): r["robust"] for r in d["attacks"]} == {
        k: 20 - int(v["success"].sum()) for k, v in adv.items()}
    # the Python keyword through the package's top level
    adverse.audit(pretrained("digits-cnn"), digits("test"), save_adv=tmp_path / "py", **{**FAST, "eps": (0.1,)})
    assert set(load_adversarial(tmp_path / "py")) == set(adv)
