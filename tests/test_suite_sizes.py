"""``--n`` bounds every suite and part, each one's sample count is recorded in results.json (``samples``) and shown
in the report; image folders of mixed sizes and modes are resized and center-cropped (``--image-size``,
``--resize``, ``--center-crop``) exactly as Pillow's bilinear resize does, and bad sizes exit 2 naming the flag.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from adverse.cli import app
from adverse.errors import InputError
from adverse.loading import load_data

FAST = ["--eps", "0.1,0.3", "--steps", "5", "--threads", "1"]
CERTIFY = '[certify]\nsamples = 100\nn0 = 10\n'  # the default n (100) must be bounded by --n


def test_n_bounds_every_suite(tmp_path):
    from adverse.evaluation import AuditResult

    cfg = tmp_path / "audit.toml"
    cfg.write_text(CERTIFY, encoding="utf-8")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["audit", "--n", "16", *FAST, "--suites", "evasion,certify", "--config", str(cfg),
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads((out / "results.json").read_text(encoding="utf-8"))
    samples = d["samples"]
    assert {"evasion", "checks", "minimal_norm", "autoattack", "certify"} <= set(samples)
    assert all(0 < v <= 16 for v in samples.values()), samples
    assert samples["evasion"] == samples["certify"] == samples["checks"] == samples["autoattack"] == 16
    assert d["certify"]["n"] == 16 and d["config"]["checks"]["n"] == 16
    assert d["config"].get("certify", {}).get("n") is None  # the options as given; the bound is config.n
    assert AuditResult.load(out).samples == samples  # the schema accepts the new keys
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Samples: 16 certified (bounded by n = 16)" in html
    assert "Samples: 16 sanity checks" in html


def test_n_bounds_suites_in_python():
    """The Python API: a suite's own larger ``n`` is bounded too, a smaller one kept."""
    from adverse.evaluation import audit

    res = audit(n=12, eps=(0.1,), steps=2, checks=False, minimal_norm=False, autoattack=None, examples=False,
                suites=("evasion", "certify"), certify={"n": 50, "samples": 50, "n0": 10})
    assert res.samples == {"evasion": 12, "certify": 12}
    assert res.config["certify"]["n"] == 50  # as given
    res = audit(n=12, eps=(0.1,), steps=2, checks=False, minimal_norm=False, autoattack=None, examples=False,
                suites=("certify",), certify={"n": 5, "samples": 50, "n0": 10})
    assert res.samples == {"certify": 5}


def test_schema_refuses_unknown_sample_parts(tmp_path):
    from adverse.evaluation import audit
    from adverse.evaluation.schema import read_results

    res = audit(n=8, eps=(0.1,), steps=2, checks=False, minimal_norm=False, autoattack=None, examples=False,
                suites=("evasion",))
    d = res.to_dict()
    for bad in ({"evasion": -1}, {"nonsense": 3}, {"evasion": 1.5}):
        (tmp_path / "results.json").write_text(json.dumps({**d, "samples": bad}), encoding="utf-8")
        with pytest.raises(InputError, match="samples"):
            read_results(tmp_path)


# ---------------------------------------------------------------------------------------------- image folders
def _write_folder(root):
    """Mixed sizes and modes, PNG and JPEG; two classes. Returns the files in load order."""
    from PIL import Image

    rng = np.random.default_rng(0)
    specs = {
        "a": [("0.png", "RGB", (10, 12)), ("1.png", "RGBA", (40, 40)), ("2.jpg", "L", (20, 15))],
        "b": [("0.jpg", "RGB", (33, 17)), ("1.png", "L", (9, 30)), ("2.png", "LA", (16, 16))],
    }
    files = []
    for cls, items in specs.items():
        (root / cls).mkdir(parents=True)
        for name, mode, (w, h) in items:
            bands = len(mode)
            a = rng.integers(0, 256, size=(h, w, bands) if bands > 1 else (h, w), dtype=np.uint8)
            Image.fromarray(a, mode=mode).save(root / cls / name)
            files.append(root / cls / name)
    return files


def _expected(files, image_size=None, resize=None, crop=None):
    """Each image resized and cropped by hand with Pillow: float pixels per channel, bilinear, clipped."""
    from PIL import Image

    out = []
    for f in files:
        with Image.open(f) as im:
            a = np.asarray(im)
            mode = im.mode
        if mode in ("RGB", "RGBA"):
            a = a[..., :3].astype(np.float32) / 255.0
        elif mode == "LA":
            a = a[..., 0].astype(np.float32) / 255.0
        else:
            a = a.astype(np.float32) / 255.0
        chans = [a] if a.ndim == 2 else [a[..., c] for c in range(3)]
        h, w = chans[0].shape
        if image_size is not None:
            size = (image_size, image_size)
        elif resize is not None:
            size = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
        else:
            size = (w, h)
        if size != (w, h):
            chans = [np.clip(np.asarray(Image.fromarray(c, mode="F").resize(size, Image.BILINEAR)), 0, 1)
                     for c in chans]
        if crop is not None:
            h, w = chans[0].shape
            top, left = round((h - crop) / 2), round((w - crop) / 2)
            chans = [c[top:top + crop, left:left + crop] for c in chans]
        if len(chans) == 1:
            chans = chans * 3  # grey in a folder with colour: repeated
        out.append(np.stack(chans))
    return np.stack(out).astype(np.float32)


def test_mixed_sizes_refused_with_the_flags_named(tmp_path):
    _write_folder(tmp_path / "imgs")
    with pytest.raises(InputError, match="--image-size"):
        load_data(tmp_path / "imgs")


def test_image_size_equals_pillow_by_hand(tmp_path):
    files = _write_folder(tmp_path / "imgs")
    ds = load_data(tmp_path / "imgs", image_size=8)
    assert tuple(ds.x.shape) == (6, 3, 8, 8)
    np.testing.assert_array_equal(ds.x.numpy(), _expected(files, image_size=8))
    assert ds.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert "8×8" in ds.note


def test_resize_then_center_crop_equals_pillow_by_hand(tmp_path):
    files = _write_folder(tmp_path / "imgs")
    ds = load_data(tmp_path / "imgs", resize=16, center_crop=8)
    assert tuple(ds.x.shape) == (6, 3, 8, 8)
    np.testing.assert_array_equal(ds.x.numpy(), _expected(files, resize=16, crop=8))
    # the shorter side is 16: a 10×12 image becomes 16×19, a 33×17 one 31×16
    assert _expected(files[:1], resize=16).shape[2:] == (19, 16)


def test_cli_audits_a_mixed_folder(tmp_path):
    """Grey images of mixed sizes and modes (L, LA; PNG, JPEG) audited by the 8×8 digits CNN."""
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from adverse.zoo import pretrained

    model = pretrained("digits-cnn")
    save_file(model.state_dict(), str(tmp_path / "m.safetensors"))
    rng = np.random.default_rng(1)
    root = tmp_path / "grey"
    for c in range(10):
        (root / str(c)).mkdir(parents=True)
        for i, (mode, ext, shape) in enumerate([("L", "png", (12, 10)), ("L", "jpg", (30, 40)),
                                                 ("LA", "png", (8, 8))]):
            a = rng.integers(0, 256, size=(*shape, 2) if mode == "LA" else shape, dtype=np.uint8)
            Image.fromarray(a, mode=mode).save(root / str(c) / f"{i}.{ext}")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["audit", "--model", str(tmp_path / "m.safetensors"), "--arch", "SmallCNN",
                                 "--data", str(root), "--resize", "10", "--center-crop", "8", "--n", "16", *FAST,
                                 "--suites", "evasion", "--no-checks", "--autoattack", "off", "--out", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert d["data"]["shape"] == [1, 8, 8] and d["data"]["images"] == {"resize": 10, "center_crop": 8}
    assert d["samples"]["evasion"] == 16
    x = load_data(root, resize=10, center_crop=8).x[:16]
    assert d["clean_accuracy"] == pytest.approx(float((model(x).argmax(1) == torch.arange(10).repeat_interleave(3)[:16])
                                                      .float().mean()))
    assert "--resize 10 --center-crop 8" in (out / "report.html").read_text(encoding="utf-8")


@pytest.mark.parametrize(("args", "flag"), [
    (["--image-size", "0"], "--image-size"),
    (["--resize", "-3"], "--resize"),
    (["--center-crop", "0"], "--center-crop"),
    (["--resize", "8", "--center-crop", "9"], "--center-crop"),
    (["--image-size", "8", "--center-crop", "16"], "--center-crop"),
    (["--image-size", "8", "--resize", "8"], "--resize"),
])
def test_bad_sizes_exit_2_naming_the_flag(tmp_path, args, flag):
    _write_folder(tmp_path / "imgs")
    r = CliRunner().invoke(app, ["audit", "--model", str(tmp_path / "none.safetensors"), "--data",
                                 str(tmp_path / "imgs"), *args, "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    assert flag in r.output


def test_sizes_refused_for_other_data(tmp_path):
    with pytest.raises(InputError, match="folders of images"):
        load_data("digits", image_size=8)
    r = CliRunner().invoke(app, ["audit", "--image-size", "8", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--image-size" in r.output
    with pytest.raises(InputError, match="--center-crop"):  # a crop larger than an image, without resizing
        _write_folder(tmp_path / "imgs")
        load_data(tmp_path / "imgs", center_crop=11)
