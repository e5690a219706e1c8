"""Hostile and careless data files (issue 15): CSV headers, encodings and labels; image modes, FIFOs, links and
decompression bombs; truncated, bit-flipped and doctored ``.npz`` archives; size limits. Every mistake is an
:class:`InputError` naming the file and the fix (exit 2 from the CLI, no traceback), nothing hangs, and no number
changes silently."""

from __future__ import annotations

import io
import json
import os
import struct
import threading
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

import adverse.data
from adverse import zoo
from adverse.cli import app
from adverse.data import load_npz
from adverse.errors import InputError
from adverse.loading import load_data


def _fast(n: int) -> settings:
    """``n`` examples under the "ci" profile, more under "explore" (conftest.examples)."""
    return settings(max_examples=examples(n), suppress_health_check=[HealthCheck.too_slow])


def _write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8", newline="")
    else:
        path.write_bytes(text)
    return path


def _refused(match: str, spec, **kwargs) -> str:
    with pytest.raises(InputError, match=match) as e:
        load_data(spec, **kwargs)
    return str(e.value)


# --------------------------------------------------------------------------------------------------- CSV
def test_csv_bom_does_not_hide_the_label_column(tmp_path):
    p = _write(tmp_path / "bom.csv", "\ufefflabel,a,b\n1,0.1,0.2\n0,0.3,0.9\n")
    d = load_data(p)
    assert d.y.tolist() == [1, 0]
    np.testing.assert_allclose(d.x.numpy(), [[0.1, 0.2], [0.3, 0.9]], rtol=1e-6)
    assert "'label'" in d.note
    # the same bytes as Excel writes them (BOM + CRLF)
    p.write_bytes(b"\xef\xbb\xbfLabel,a,b\r\n1,0.1,0.2\r\n0,0.3,0.9\r\n")
    assert load_data(p).y.tolist() == [1, 0]


@pytest.mark.parametrize("name", ["Label", "LABEL", "y", "Y", "target", "Class"])
def test_csv_label_column_is_matched_in_any_case(tmp_path, name):
    p = _write(tmp_path / "t.csv", f"a,{name},b\n0.1,2,0.2\n0.3,0,0.9\n")
    d = load_data(p)
    assert d.y.tolist() == [2, 0] and d.num_classes == 3
    np.testing.assert_allclose(d.x.numpy(), [[0.1, 0.2], [0.3, 0.9]], rtol=1e-6)


def test_csv_without_header_keeps_its_first_row(tmp_path):
    p = _write(tmp_path / "raw.csv", "0.1,0.2,1\n0.3,0.9,0\n0.5,0.5,2\n")
    d = load_data(p)
    assert len(d) == 3 and d.y.tolist() == [1, 0, 2]
    np.testing.assert_allclose(d.x[0].numpy(), [0.1, 0.2], rtol=1e-6)
    assert "no header row" in d.note and "last column" in d.note
    assert load_data(p, label_column=-1).y.tolist() == [1, 0, 2]
    _refused(r"raw\.csv has no header row.*0-based column index", p, label_column="label")
    q = _write(tmp_path / "first.csv", "1,0.1,0.2\n0,0.3,0.9\n")
    assert load_data(q, label_column=0).y.tolist() == [1, 0]
    assert load_data(q, label_column="0").y.tolist() == [1, 0]  # a string of digits is an index


def test_csv_label_column_by_name_or_index(tmp_path):
    p = _write(tmp_path / "t.csv", "cls,a,b\n1,0.1,0.2\n0,0.3,0.9\n")
    _refused(r"t\.csv, line 2: the label 0\.2 in column 'b' is not an integer.*--label-column", p)
    assert load_data(p, label_column="CLS").y.tolist() == [1, 0]
    assert "'cls' (as asked)" in load_data(p, label_column="cls").note
    _refused(r"no column named 'nope'; its columns are \['cls', 'a', 'b'\]", p, label_column="nope")
    _refused(r"index must lie in -3…2, got 3", p, label_column=3)
    _refused(r"label_column must be a column name", p, label_column=1.5)
    two = _write(tmp_path / "two.csv", "y,a,label\n1,0.1,0\n")
    _refused(r"two\.csv: columns \['y', 'label'\] could each be the label column; choose one", two)
    assert load_data(two, label_column="label").y.tolist() == [0]
    dup = _write(tmp_path / "dup.csv", "a,k,k\n0.1,1,0\n")
    _refused(r"2 columns are named 'K'; rename them", dup, label_column="K")
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 2)), y=np.zeros(2, dtype=int))
    _refused(r"applies to CSV files only", tmp_path / "d.npz", label_column="y")


def test_csv_encodings(tmp_path):
    latin = _write(tmp_path / "latin.csv", b"a,b,label\n0.1,0.2,1\n" + "café,0.1,1\n".encode("latin-1"))
    msg = _refused(r"latin\.csv is not UTF-8 text \(byte 0xe9 on line 3\); save it as UTF-8", latin)
    assert "iconv" in msg
    utf16 = _write(tmp_path / "u16.csv", "a,b,label\n0.1,0.2,1\n".encode("utf-16"))
    _refused(r"u16\.csv is UTF-16 text; save it as UTF-8", utf16)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", r"is empty"),
        ("\n\n", r"is empty"),
        ("a,b,label\n", r"has a header row but no data rows"),
        ("a,b,label\n0.1,x,1\n", r"line 2, column 1 \('b'\): 'x' is not a number"),
        ("a,b,label\n0.1,,1\n", r"line 2, column 1 \('b'\): '' is not a number"),
        ("a,b,label\n0.1,1_0,1\n", r"'1_0' is not a number"),  # Python's float() would read 10
        ("a,b,label\n0.1,٠,1\n", r"is not a number"),  # so would it an Arabic-Indic zero
        ("a,b,label\n0.1,0.2,1\n0.3,0\n", r"line 3: 2 columns, but the header has 3"),
        ("0.1,0.2,1\n0.3,0.4,0,7\n", r"line 2: 4 columns, but the first row has 3"),
        ("a,b,label\n0.1,nan,1\n", r"line 2, column 1 \('b'\): 'nan' is not a finite number"),
        ("a,b,label\n0.1,-inf,1\n", r"'-inf' is not a finite number"),
        ("a,b,label\n0.1,1e999,1\n", r"line 2, column 1 \('b'\): the value is not a finite number"),
        ("a,b,label\n0.1,0.2,1.5\n", r"line 2: the label 1\.5 in column 'label' is not an integer"),
        ("a,b,label\n0.1,0.2,-1\n", r"line 2: the label -1 in column 'label' is negative"),
        ("a,b,label\n0.1,0.2,1e12\n", r"is larger than 2147483647"),
        ("a,b,label\n0.1,0.2,1\n0.3,7,0\n", r"line 3, column 1 \('b'\): 7 is not inside bounds"),
        ("0.1,abc,1\n0.2,0.3,0\n", r"line 1: the first row mixes numbers and text"),
        ("label\n1\n", r"has 1 column; it needs feature columns and a label column"),
        ('a,b,label\n"0.1,0.2,1\n', r"line 2: 1 columns"),
    ],
)
def test_csv_mistakes_name_the_line_and_column(tmp_path, text, match):
    p = _write(tmp_path / "bad.csv", text)
    assert "bad.csv" in _refused(match, p)


def test_csv_blank_lines_and_integer_valued_labels(tmp_path):
    d = load_data(_write(tmp_path / "t.csv", "a,b,label\n\n0.1,0.2,1.0\n\n0.3, 0.9 ,2e0\n"))
    assert d.y.tolist() == [1, 2] and d.y.dtype == torch.int64
    np.testing.assert_allclose(d.x.numpy(), [[0.1, 0.2], [0.3, 0.9]], rtol=1e-6)


@_fast(60)
@given(raw=st.one_of(st.binary(max_size=200),
                     st.text(alphabet="0123456789.,-+eE\n\r\"ab label\ufeff", max_size=120).map(str.encode)))
def test_csv_arbitrary_bytes_load_or_are_refused(tmp_path_factory, raw):
    p = tmp_path_factory.mktemp("csv") / "f.csv"
    p.write_bytes(raw)
    try:
        d = load_data(p)
    except InputError:
        return
    assert d.x.dtype == torch.float32 and torch.isfinite(d.x).all() and (d.y >= 0).all()


# --------------------------------------------------------------------------------------------------- images
def _folder(root: Path, images: dict[str, Image.Image]) -> Path:
    for rel, im in images.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        im.save(root / rel)
    return root


def test_sixteen_bit_images_are_scaled_by_65535(tmp_path):
    a16 = np.array([[0, 1000, 65535]], dtype=np.uint16)
    root = _folder(tmp_path / "imgs", {"a/le.png": Image.fromarray(a16), "a/le.tif": Image.fromarray(a16),
                                       "b/be.tif": Image.fromarray(a16.astype(">u2"))})
    assert Image.open(root / "a/le.png").mode.startswith("I")
    assert Image.open(root / "b/be.tif").mode == "I;16B"
    d = load_data(root)
    assert d.x.shape == (3, 1, 1, 3) and d.y.tolist() == [0, 0, 1]
    for i in range(3):
        np.testing.assert_allclose(d.x[i, 0, 0].numpy(), [0.0, 1000 / 65535, 1.0], rtol=1e-6)


def test_float_tiffs_are_used_as_they_are_and_refused_outside_0_1(tmp_path):
    f = np.array([[0.0, 0.25, 1.0]], dtype=np.float32)
    root = _folder(tmp_path / "imgs", {"a/f.tif": Image.fromarray(f)})
    assert Image.open(root / "a/f.tif").mode == "F"
    np.testing.assert_array_equal(load_data(root).x[0, 0].numpy(), f)
    Image.fromarray(np.array([[0.0, 2.0, 1.0]], dtype=np.float32)).save(root / "a/g.tif")
    _refused(r"g\.tif holds float pixels outside \[0, 1\].*does not rescale", root)
    Image.fromarray(np.array([[0.0, np.nan, 1.0]], dtype=np.float32)).save(root / "a/g.tif")
    _refused(r"g\.tif holds float pixels .*not finite", root)


def test_32_bit_integer_and_cmyk_images_are_refused(tmp_path):
    root = _folder(tmp_path / "imgs", {"a/i.tif": Image.fromarray(np.array([[0, 70000, 5]], dtype=np.int32))})
    _refused(r"i\.tif holds 32-bit integer pixels, which have no standard scale", root)
    root = _folder(tmp_path / "cmyk", {"a/c.jpg": Image.new("CMYK", (3, 1))})
    _refused(r"c\.jpg has image mode 'CMYK'.*save it as", root)


def test_modes_1_la_rgba_and_palette(tmp_path):
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.uint8)
    la = np.array([[[10, 0], [20, 255], [30, 7]]], dtype=np.uint8)
    rgba = np.array([[[10, 20, 30, 0], [40, 50, 60, 128], [70, 80, 90, 255]]], dtype=np.uint8)
    grey = np.array([[0, 128, 255]], dtype=np.uint8)
    root = _folder(tmp_path / "grey", {"a/1.png": Image.fromarray(np.array([[0, 1, 1]], dtype=bool)),
                                       "a/la.png": Image.fromarray(la, mode="LA"),
                                       "b/g.gif": Image.fromarray(grey)})  # a GIF: a palette of greys
    assert Image.open(root / "b/g.gif").mode == "P"
    d = load_data(root)
    assert d.x.shape == (3, 1, 1, 3) and "grey" in d.note
    np.testing.assert_array_equal(d.x[0, 0, 0].numpy(), [0.0, 1.0, 1.0])  # bilevel: 0 or 1
    np.testing.assert_allclose(d.x[1, 0, 0].numpy(), la[0, :, 0] / 255.0, rtol=1e-6)  # alpha dropped
    np.testing.assert_allclose(d.x[2, 0, 0].numpy(), grey[0] / 255.0, rtol=1e-6)
    root = _folder(tmp_path / "colour", {"a/p.png": Image.fromarray(rgb).convert("P"),
                                         "a/rgba.png": Image.fromarray(rgba, mode="RGBA")})
    assert Image.open(root / "a/p.png").mode == "P"
    d = load_data(root)
    assert d.x.shape == (2, 3, 1, 3) and "RGB" in d.note
    np.testing.assert_allclose(d.x[0].numpy(), rgb.transpose(2, 0, 1) / 255.0, rtol=1e-6)  # the palette's colours
    np.testing.assert_allclose(d.x[1].numpy(), rgba[..., :3].transpose(2, 0, 1) / 255.0, rtol=1e-6)  # not composited


def test_mixed_modes_become_rgb_when_any_image_is_colour(tmp_path):
    grey = np.array([[0, 128, 255]], dtype=np.uint8)
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.uint8)
    root = _folder(tmp_path / "imgs", {"a/grey.png": Image.fromarray(grey), "b/rgb.png": Image.fromarray(rgb),
                                       "b/sixteen.png": Image.fromarray(grey.astype(np.uint16) * 257)})
    d = load_data(root)
    assert d.x.shape == (3, 3, 1, 3) and d.y.tolist() == [0, 1, 1]
    for c in range(3):  # a grey image's one channel repeated to R, G and B
        np.testing.assert_allclose(d.x[0, c, 0].numpy(), grey[0] / 255.0, rtol=1e-6)
        np.testing.assert_allclose(d.x[2, c, 0].numpy(), grey[0] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(d.x[1].numpy(), rgb.transpose(2, 0, 1) / 255.0, rtol=1e-6)


def _finishes(fn, fifo: Path | None = None, seconds: float = 30.0) -> dict:
    """Run ``fn`` in a thread; fail (and unblock it through the FIFO) if it has not finished in ``seconds``."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001  (handed to the test)
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        if fifo is not None:  # a blocked reader returns once a writer opens and closes the FIFO
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"the loader blocked for {seconds} s")
    return box


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_refused_without_blocking(tmp_path):
    root = _folder(tmp_path / "imgs", {"a/ok.png": Image.new("L", (2, 2))})
    fifo = root / "a" / "pipe.png"
    os.mkfifo(fifo)
    box = _finishes(lambda: load_data(root), fifo)
    assert isinstance(box.get("error"), InputError), box
    assert "pipe.png is a FIFO; adverse reads regular files only" in str(box["error"])
    os.remove(fifo)
    os.mkfifo(root / "a" / "pipe")  # no image suffix: never opened, so the folder loads
    assert len(_finishes(lambda: load_data(root), root / "a" / "pipe")["value"]) == 1
    for suffix in (".csv", ".npz"):
        f = tmp_path / f"data{suffix}"
        os.mkfifo(f)
        box = _finishes(lambda f=f: load_data(f), f)
        assert isinstance(box.get("error"), InputError) and "is a FIFO" in str(box["error"]), box


def test_devices_and_folders_are_not_data_files(tmp_path):
    dev = tmp_path / "null.csv"
    dev.symlink_to(os.devnull)
    _refused(r"null\.csv is a device; adverse reads regular files only", dev)
    (tmp_path / "dir.npz").mkdir()
    _refused(r"dir\.npz has no class sub-folders", tmp_path / "dir.npz")  # a folder is read as an image folder
    with pytest.raises(InputError, match=r"no such file"):
        load_npz(tmp_path / "dir.npz")


def test_links_leading_out_of_the_folder_are_refused(tmp_path):
    Image.new("L", (2, 2), 7).save(tmp_path / "outside.png")
    root = _folder(tmp_path / "imgs", {"a/ok.png": Image.new("L", (2, 2)), "b/ok.png": Image.new("L", (2, 2))})
    (root / "b" / "inside.png").symlink_to(root / "a" / "ok.png")  # a link within the folder is fine
    assert len(load_data(root)) == 3
    (root / "b" / "out.png").symlink_to(tmp_path / "outside.png")
    _refused(r"out\.png links to .*outside\.png, outside .*imgs; images must lie inside", root)
    (root / "b" / "out.png").unlink()
    (tmp_path / "elsewhere").mkdir()
    Image.new("L", (2, 2)).save(tmp_path / "elsewhere" / "x.png")
    (root / "c").symlink_to(tmp_path / "elsewhere")
    _refused(r"imgs/c links to .*elsewhere, outside .*; class folders must lie inside", root)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width × height 8-bit grey pixels, a few dozen bytes on disk (no real pixel data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [9_000, 100_000])  # over adverse's limit only; over Pillow's error limit too
def test_decompression_bombs_are_refused_before_decoding(tmp_path, side):
    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    _write(root / "a" / "bomb.png", _png_header_only(side, side))
    assert (root / "a" / "bomb.png").stat().st_size < 200
    before, filters = Image.MAX_IMAGE_PIXELS, list(warnings.filters)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning escapes either
        box = _finishes(lambda: load_data(root))
    assert isinstance(box.get("error"), InputError), box
    assert "bomb.png declares" in str(box["error"]) and "decompression bomb" in str(box["error"])
    assert Image.MAX_IMAGE_PIXELS == before and warnings.filters == filters  # nothing global changed


def test_the_pixel_limit_can_be_lowered(tmp_path, monkeypatch):
    root = _folder(tmp_path / "imgs", {"a/big.png": Image.new("L", (40, 30))})
    assert len(load_data(root)) == 1
    monkeypatch.setattr(adverse.data, "MAX_IMAGE_PIXELS", 1000)
    _refused(r"big\.png declares 40 × 30 = 1,200 pixels, more than the limit of 1,000", root)


def test_damaged_images_and_empty_folders(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    root = _folder(tmp_path / "imgs", {"a/ok.png": Image.fromarray(noise)})
    good = (root / "a" / "ok.png").read_bytes()
    _write(root / "a" / "cut.png", good[: len(good) * 2 // 3])  # the header is there, the pixels are cut short
    _refused(r"cut\.png is not a readable image \(OSError: image file is truncated", root)
    _write(root / "a" / "cut.png", b"not an image at all")
    _refused(r"cut\.png is not a PNG, JPEG, BMP, GIF, TIFF, WEBP image, or it is damaged", root)
    (root / "a" / "cut.png").unlink()
    (root / "b").mkdir()
    _write(root / "b" / "readme.txt", "no images here")
    _refused(r"the class folder .*imgs/b holds no images", root)
    (root / "b" / "readme.txt").unlink()
    (root / "b").rmdir()
    (root / ".ipynb_checkpoints").mkdir()  # hidden: not a class
    assert load_data(root).num_classes == 1
    (tmp_path / "empty").mkdir()
    _refused(r"empty has no class sub-folders", tmp_path / "empty")


@_fast(30)
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), min_size=1, max_size=3))
def test_bit_flipped_images_load_or_are_refused(tmp_path_factory, flips):
    root = tmp_path_factory.mktemp("img")
    (root / "a").mkdir()
    buf = io.BytesIO()
    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)).save(buf, format="PNG")
    raw = bytearray(buf.getvalue())
    for pos, bit in flips:
        raw[pos % len(raw)] ^= 1 << bit
    _write(root / "a" / "x.png", bytes(raw))
    try:
        d = load_data(root)
    except InputError:
        return
    assert d.x.dtype == torch.float32 and 0 <= float(d.x.min()) and float(d.x.max()) <= 1


# --------------------------------------------------------------------------------------------------- .npz
@pytest.fixture
def npz(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((12, 1, 4, 4)).astype(np.float32)
    y = rng.integers(0, 3, 12)
    path = tmp_path / "d.npz"
    np.savez_compressed(path, x=x, y=y)
    return path, x, y


def test_truncated_npz_is_refused(npz, tmp_path):
    path, _, _ = npz
    raw = path.read_bytes()
    for cut in (0, 10, len(raw) // 3, len(raw) // 2, len(raw) - 30, len(raw) - 1):
        p = _write(tmp_path / "cut.npz", raw[:cut])
        with pytest.raises(InputError, match=r"cut\.npz (is not an \.npz archive|is a damaged|.*truncated)"):
            load_npz(p)


def test_bit_flipped_npz_is_refused_not_read_as_other_numbers(npz, tmp_path):
    path, x, y = npz
    raw = path.read_bytes()
    for pos in range(len(raw) // 4, len(raw) // 2, 7):  # flips inside compressed data and headers
        bad = bytearray(raw)
        bad[pos] ^= 0x10
        p = _write(tmp_path / "flip.npz", bytes(bad))
        try:
            d = load_npz(p)
        except InputError as e:
            assert "flip.npz" in str(e)
            continue
        np.testing.assert_array_equal(d.x.numpy(), x)
        np.testing.assert_array_equal(d.y.numpy(), y)
    np.savez(tmp_path / "stored.npz", x=x, y=y)
    raw = (tmp_path / "stored.npz").read_bytes()
    bad = bytearray(raw)
    bad[raw.index(x.tobytes()[:16]) + 5] ^= 0x01  # one bit of one float, in an uncompressed archive
    with pytest.raises(InputError, match=r"stored\.npz is a damaged \.npz archive \(BadZipFile: Bad CRC-32"):
        load_npz(_write(tmp_path / "stored.npz", bytes(bad)))


@_fast(60)
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), min_size=1, max_size=4),
       compressed=st.booleans())
def test_random_byte_flips_give_the_same_data_or_an_input_error(tmp_path_factory, flips, compressed):
    rng = np.random.default_rng(1)
    x, y = rng.random((5, 3)).astype(np.float32), np.arange(5)
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, x=x, y=y)
    raw = bytearray(buf.getvalue())
    for pos, bit in flips:
        raw[pos % len(raw)] ^= 1 << bit
    p = tmp_path_factory.mktemp("npz") / "f.npz"
    p.write_bytes(bytes(raw))
    try:
        d = load_npz(p)
    except InputError:
        return
    np.testing.assert_array_equal(d.x.numpy(), x)
    np.testing.assert_array_equal(d.y.numpy(), y)


def _npy(shape: tuple[int, ...], descr: str = "<f8", data: bytes = b"\0" * 16) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def test_huge_declared_shapes_are_refused_before_allocating(tmp_path):
    y = io.BytesIO()
    np.save(y, np.zeros(2, dtype=np.int64))
    for shape in [(10**9, 10**9), (2**34,), (3, 2)]:  # 8 EB, 128 GiB, and 48 bytes: all declare more than is there
        p = tmp_path / "huge.npz"
        with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("x.npy", _npy(shape))
            z.writestr("y.npy", y.getvalue())
        assert p.stat().st_size < 1000
        with pytest.raises(InputError, match=r"huge\.npz: array 'x' declares shape .* but the archive holds 16 bytes"):
            load_npz(p)


def test_a_doctored_member_size_is_refused_without_reading_it(tmp_path, monkeypatch):
    """The zip's sizes and the .npy header agree on 1 GiB, but 16 bytes are there: refused, not allocated; and the
    declared size counts against MAX_ARRAY_BYTES before anything is read."""
    y = io.BytesIO()
    np.save(y, np.zeros(2, dtype=np.int64))
    p = tmp_path / "lie.npz"
    header = _npy((2**27,), data=b"")
    with zipfile.ZipFile(p, "w", zipfile.ZIP_STORED) as z:
        z.writestr("x.npy", header + b"\0" * 16)
        z.writestr("y.npy", y.getvalue())
    raw = bytearray(p.read_bytes())
    real = len(header) + 16
    claimed = len(header) + 2**30
    lh = raw.index(b"PK\x03\x04")  # local header: compressed size at 18, uncompressed at 22; central: 20, 24
    struct.pack_into("<II", raw, lh + 18, claimed, claimed)
    cd = raw.index(b"PK\x01\x02")
    struct.pack_into("<II", raw, cd + 20, claimed, claimed)
    assert struct.unpack_from("<I", raw, cd + 24)[0] == claimed and real < 200
    p.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"lie\.npz"):
        load_npz(p)
    monkeypatch.setattr(adverse.data, "MAX_ARRAY_BYTES", 2**20)
    with pytest.raises(InputError, match=r"lie\.npz: array 'x' takes 1,073,741,952 bytes uncompressed, more than "
                                         r"the limit of 1,048,576 \(adverse\.data\.MAX_ARRAY_BYTES\)"):
        load_npz(p)


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"x": np.array([None, 1.0, "a"], dtype=object), "y": np.zeros(3, dtype=int)},
         r"holds object arrays \('x'\) that need pickle to load, and adverse loads with allow_pickle=False"),
        ({"x": np.zeros((3, 2)), "y": np.array([0, 1, None], dtype=object)}, r"object arrays \('y'\)"),
        ({"x": np.zeros((3, 2), dtype=complex), "y": np.zeros(3, dtype=int)}, r"x must be finite numbers.*complex"),
        ({"x": np.array([["a", "b"]] * 3), "y": np.zeros(3, dtype=int)}, r"x must be finite numbers.*strings"),
        ({"x": np.zeros((3, 2), dtype=bool), "y": np.zeros(3, dtype=int)}, r"booleans"),
        ({"x": np.zeros((3, 2), dtype=[("a", "f4")]), "y": np.zeros(3, dtype=int)}, r"structured dtype"),
        ({"x": np.zeros((3, 2)), "y": np.array(["0", "1", "2"])}, r"labels y must be integers, got <U1"),
        ({"x": np.zeros((3, 2)), "y": np.zeros(4, dtype=int)}, r"shape \(n, \.\.\.\) and y of shape \(n,\)"),
        ({"x": np.zeros((0, 2)), "y": np.zeros(0, dtype=int)}, r"hold no samples"),
        ({"x": np.array([[0.1, np.inf]] * 3), "y": np.zeros(3, dtype=int)}, r"x must be finite numbers; x\[0, 1\] is inf"),
        ({"x": np.array([[0.1, np.nan]] * 3), "y": np.zeros(3, dtype=int)}, r"x\[0, 1\] is nan"),
        ({"x": np.full((3, 2), 255.0), "y": np.zeros(3, dtype=int)}, r"outside bounds \(0\.0, 1\.0\).*rescale"),
        ({"x": np.zeros((3, 2)), "y": np.array([0, 1, 2**63], dtype=np.uint64)}, r"labels must be ≥ 0 and ≤ 2147483647"),
    ],
)
def test_npz_contents_that_are_refused(tmp_path, arrays, match):
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    with pytest.raises(InputError, match=match) as e:
        load_npz(p)
    assert "bad.npz" in str(e.value)


def test_npz_round_trips_exactly(tmp_path):
    x = np.asfortranarray(np.random.default_rng(0).random((4, 3, 2)))  # float64, Fortran order
    y = np.array([0, 2, 1, 2], dtype=">i4")  # big-endian labels
    np.savez(tmp_path / "f.npz", x=x, y=y)
    d = load_npz(tmp_path / "f.npz")
    np.testing.assert_array_equal(d.x.numpy(), x.astype(np.float32))
    assert d.y.tolist() == [0, 2, 1, 2] and d.num_classes == 3 and d.x.is_contiguous()


def test_the_file_size_limit(tmp_path, monkeypatch):
    np.savez(tmp_path / "d.npz", x=np.zeros((50, 4)), y=np.zeros(50, dtype=int))
    csv = _write(tmp_path / "t.csv", "a,b,label\n" + "0.1,0.2,1\n" * 50)
    monkeypatch.setattr(adverse.data, "MAX_FILE_BYTES", 100)
    for p in (tmp_path / "d.npz", csv):
        _refused(rf"{p.name} has \d[\d,]* bytes, more than the limit of 100 \(adverse\.data\.MAX_FILE_BYTES\)", p)
    monkeypatch.setattr(adverse.data, "MAX_FILE_BYTES", 10**6)
    monkeypatch.setattr(adverse.data, "MAX_ARRAY_BYTES", 200)
    _refused(r"t\.csv: the values take more than 200 bytes", csv)


# --------------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory):
    """Weights for ``--arch MLP`` (64 features, 10 classes), untrained: the CLI tests are about the data."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = zoo.MLP(64, 10)
    path = tmp_path_factory.mktemp("model") / "mlp.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _cli(*args: str):
    r = CliRunner().invoke(app, ["audit", *args])
    return r, " ".join(r.stderr.split())


def test_cli_label_column(tmp_path, mlp_file):
    names = ",".join(f"f{j}" for j in range(63))
    rows = "".join(f"{i % 3}," + "0.5," * 63 + f"0.{9 - i}\n" for i in range(9))  # 64 features, as MLP takes
    p = _write(tmp_path / "t.csv", f"cls,{names},d\n" + rows)
    out = tmp_path / "out"
    r, err = _cli("--model", str(mlp_file), "--arch", "MLP", "--data", str(p), "--out", str(out), "--no-checks")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "t.csv, line 2: the label 0.9 in column 'd' is not an integer" in err and "--label-column" in err
    r, err = _cli("--model", str(mlp_file), "--arch", "MLP", "--data", str(p), "--label-column", "CLS", "--out",
                  str(out), "--suites", "evasion", "--eps", "0.1", "--steps", "1", "--no-checks", "--autoattack",
                  "off", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n"] == 9
    r, err = _cli("--label-column", "cls", "--out", str(out))
    assert r.exit_code == 2 and "--label-column needs --data" in err
    cfg = _write(tmp_path / "a.toml", f'[model]\nfile = "{mlp_file}"\narch = "MLP"\n[data]\ntest = "t.csv"\n'
                                      'label_column = "nope"\n')
    r, err = _cli("--config", str(cfg), "--out", str(out))
    assert r.exit_code == 2 and "t.csv has no column named 'nope'" in err and "Traceback" not in r.output


def test_cli_refuses_hostile_data_with_exit_2(tmp_path, mlp_file):
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    _write(tmp_path / "imgs" / "a" / "bomb.png", _png_header_only(100_000, 100_000))
    _write(tmp_path / "latin.csv", b"a,b,label\n" + "0.1,é,1\n".encode("latin-1"))
    _write(tmp_path / "cut.npz", b"PK\x03\x04" + b"\0" * 40)
    cases = {"imgs": "bomb.png declares", "latin.csv": "latin.csv is not UTF-8 text", "cut.npz": "cut.npz"}
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.csv")
        cases["pipe.csv"] = "pipe.csv is a FIFO"
    for name, words in cases.items():
        box = _finishes(lambda name=name: _cli("--model", str(mlp_file), "--arch", "MLP", "--data",
                                                str(tmp_path / name), "--out", str(tmp_path / "out")),
                        tmp_path / name if "pipe" in name else None)
        r, err = box["value"]
        assert r.exit_code == 2, (name, r.output)
        assert words in err and "Traceback" not in r.output and r.stdout == "", (name, r.output)
