"""Hugging Face image classifiers from a local ``save_pretrained`` folder, loaded without running code from it.

:func:`adverse.loading.load_model` hands a folder holding ``config.json`` to :func:`load_hf`:

* :func:`read_hf_folder` (a pure function: it reads JSON files, never weights or code) checks the folder first.
  ``config.json`` and ``preprocessor_config.json`` are regular files of at most :data:`MAX_JSON_BYTES`, UTF-8 JSON
  objects without NaN or infinities. A config that names remote code (``auto_map``) is refused: adverse never
  passes ``trust_remote_code``, so only architectures built into ``transformers`` load. The weights are
  ``model.safetensors``, or ``model.safetensors.index.json`` and the shards it names (plain file names inside the
  folder); a folder with only ``pytorch_model.bin`` (a pickle: loading it could run code) is refused unless
  ``trust_pickle=True`` (``--trust-pickle``); a folder without weights is refused with the fix.
* The model is then built by ``transformers.AutoModelForImageClassification.from_pretrained(folder,
  local_files_only=True, use_safetensors=True, trust_remote_code=False)`` (nothing is downloaded), in float32 and
  eval mode. Weights that leave a layer of the model uninitialized (``missing_keys``, e.g. a backbone saved
  without its classification head) or of the wrong shape are refused: transformers would fill them at random.
* The preprocessing the model was trained with is read from ``preprocessor_config.json`` and put *inside* the
  model as :class:`adverse.models.Normalize`, so attacks work on images in [0, 1]. An image processor maps pixels
  ``p`` in 0…255 to ``(p · r − mean) / std`` (``r`` = ``rescale_factor`` when ``do_rescale``, else 1;
  ``mean``/``std`` = ``image_mean``/``image_std`` when ``do_normalize``, else 0 and 1). adverse's inputs are
  ``x = p / 255``, so the same map is ``Normalize(mean / (255 r), std / (255 r))``; nothing is added when that is
  the identity. The input size is ``crop_size`` (with ``do_center_crop``) or ``size`` (``{"height", "width"}`` or
  one number) from the preprocessor, else ``image_size`` from ``config.json``; the channels are ``config.json``'s
  ``num_channels`` (3 when absent). :func:`adverse.loading.model_info` reports both, and the command line
  refuses data of another shape (resize it first: the model was trained at that size).

``transformers`` is an optional extra: ``pip install 'adverse[hf]'``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelError
from .files import check_regular, read_regular
from .validation import validated

MAX_JSON_BYTES = 2**20
"""The largest ``config.json`` / ``preprocessor_config.json`` read (1 MiB; real ones hold a few KiB)."""
MAX_INDEX_BYTES = 16 * 2**20
"""The largest ``model.safetensors.index.json`` read (16 MiB)."""
MAX_CHANNELS = 64
MAX_SIDE = 16384
CONFIG = "config.json"
PREPROCESSOR = "preprocessor_config.json"
SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_WEIGHTS = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
OTHER_WEIGHTS = ("tf_model.h5", "flax_model.msgpack", "model.ckpt.index")
HF_HINT = "pip install 'adverse[hf]'"
SAVE_HINT = "save the model with model.save_pretrained(folder), which writes config.json and model.safetensors"


@dataclass(frozen=True)
class HFFolder:
    """What a ``save_pretrained`` folder says about its model (see :func:`read_hf_folder`).

    ``mean``/``std`` are in adverse's input units (images in [0, 1]), None when the preprocessing is the
    identity on them or unknown; ``normalize_source`` says where they came from. ``image_size`` is (height,
    width) or None when the folder does not fix it; ``image_size_source`` names the file and key."""

    path: Path
    model_type: str
    architectures: list[str]
    weights: list[str]
    pickled: bool
    num_channels: int
    image_size: tuple[int, int] | None = None
    image_size_source: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    normalize_source: str | None = None
    num_labels: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """(channels, height, width) the model takes, when the folder fixes the size."""
        return None if self.image_size is None else (self.num_channels, *self.image_size)


def is_hf_folder(path: str | os.PathLike[str]) -> bool:
    """True for a folder holding a ``config.json`` (a ``save_pretrained`` folder)."""
    p = Path(path)
    return p.is_dir() and (p / CONFIG).exists()


def _regular(path: Path, what: str) -> None:
    """Refuse anything but a regular file (a link to one is followed): FIFOs and devices would block or never end."""
    check_regular(path, what, error=ModelError)


def _read_json(path: Path, what: str, limit: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """A JSON object from a regular file of at most ``limit`` bytes, without NaN or infinities."""
    raw = read_regular(path, what, limit, limit_hint=f"; it is not a Hugging Face {what}", error=ModelError)

    def refuse(token: str) -> None:
        raise ValueError(f"{token} is not a JSON number")

    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=refuse)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ModelError(f"the {what} {path} is not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(value, dict):
        raise ModelError(f"the {what} {path} holds a JSON {type(value).__name__}, not an object")
    return value


def _positive_int(value: Any, where: str, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise ModelError(f"{where} must be an integer between 1 and {high}, got {value!r}")
    return value


def _numbers(value: Any, where: str, channels: int) -> list[float]:
    """A number or a list of 1 or ``channels`` finite numbers."""
    items = value if isinstance(value, list) else [value]
    ok = (0 < len(items) <= MAX_CHANNELS and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                  and math.isfinite(v) for v in items))
    if not ok:
        raise ModelError(f"{where} must be a finite number or a list of finite numbers (one per channel), got "
                         f"{str(value)[:100]}")
    if len(items) not in (1, channels):
        raise ModelError(f"{where} has {len(items)} values but the model takes {channels} channel(s); give one value "
                         "per channel")
    return [float(v) for v in items]


def _side(value: Any, where: str) -> tuple[int, int] | None:
    """(height, width) from a processor's ``size``/``crop_size`` or a config's ``image_size``; None for forms that
    do not fix it (``shortest_edge`` …)."""
    if isinstance(value, dict):
        if "height" in value or "width" in value:
            return (_positive_int(value.get("height"), f"{where}.height", MAX_SIDE),
                    _positive_int(value.get("width"), f"{where}.width", MAX_SIDE))
        return None
    if isinstance(value, list) and len(value) == 2:
        return (_positive_int(value[0], f"{where}[0]", MAX_SIDE), _positive_int(value[1], f"{where}[1]", MAX_SIDE))
    side = _positive_int(value, where, MAX_SIDE)
    return side, side


def _plain_name(name: Any, folder: Path) -> str:
    """A shard's file name from an index: a plain name inside the folder, never a path elsewhere."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or "\x00" in name or name.startswith(".")):
        raise ModelError(f"{folder / SAFE_INDEX} names the shard {str(name)[:100]!r}; shards must be plain file names "
                         "inside the folder")
    return name


def _weights(folder: Path) -> tuple[list[str], bool]:
    """The weight files and whether they are pickles."""
    if (folder / SAFE_WEIGHTS).exists():
        _regular(folder / SAFE_WEIGHTS, "weights file")
        return [SAFE_WEIGHTS], False
    if (folder / SAFE_INDEX).exists():
        index = _read_json(folder / SAFE_INDEX, "weights index", MAX_INDEX_BYTES)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelError(f"{folder / SAFE_INDEX} has no weight_map; {SAVE_HINT}")
        shards = sorted({_plain_name(v, folder) for v in weight_map.values()})
        for s in shards:
            if not s.endswith(".safetensors"):
                raise ModelError(f"{folder / SAFE_INDEX} names the shard {s!r}, not a .safetensors file")
            if not (folder / s).exists():
                raise ModelError(f"{folder / SAFE_INDEX} names the shard {s}, which the folder lacks; copy every "
                                 "shard into the folder")
            _regular(folder / s, "weights shard")
        return [SAFE_INDEX, *shards], False
    if (folder / PICKLE_WEIGHTS).exists() or (folder / PICKLE_INDEX).exists():
        name = PICKLE_WEIGHTS if (folder / PICKLE_WEIGHTS).exists() else PICKLE_INDEX
        _regular(folder / name, "weights file")
        return [name], True
    others = [n for n in OTHER_WEIGHTS if (folder / n).exists()]
    raise ModelError(
        f"{folder} holds no PyTorch weights: no {SAFE_WEIGHTS} (or {SAFE_INDEX} with its shards)"
        + (f"; it has {', '.join(others)}, which adverse does not load" if others else "")
        + f". Copy the weights into the folder, or {SAVE_HINT}")


@validated
def read_hf_folder(folder: str | os.PathLike[str]) -> HFFolder:
    """What a Hugging Face ``save_pretrained`` folder says about its model, read from its JSON files only.

    Reads ``config.json`` (required) and ``preprocessor_config.json`` (optional) within :data:`MAX_JSON_BYTES`,
    finds the weight files, and works out the input size, the channels and the normalization in adverse's
    input units (see the module docstring). Nothing is imported, unpickled or run.

    Raises
    ------
    ModelError
        A folder without ``config.json`` or weights, a config naming remote code (``auto_map``) or without
        ``model_type``, files that are not regular or not JSON objects, and values out of range (sizes, channels,
        mean/std that are not finite, std ≤ 0, a count of values that does not match the channels).
    """
    p = Path(folder)
    if not p.is_dir():
        raise ModelError(f"{p} is not a folder; give a save_pretrained folder (config.json + {SAFE_WEIGHTS})")
    if not (p / CONFIG).exists():
        raise ModelError(f"{p} has no {CONFIG}: it is not a Hugging Face save_pretrained folder; {SAVE_HINT}")
    cfg = _read_json(p / CONFIG, "model config")
    if "auto_map" in cfg:
        names = sorted(cfg["auto_map"]) if isinstance(cfg["auto_map"], dict) else [str(cfg["auto_map"])[:100]]
        raise ModelError(
            f"{p / CONFIG} names remote code (auto_map: {', '.join(names)}): loading it would run Python code from "
            "the folder, which adverse never does. Use an architecture built into transformers, or build the model "
            "yourself in Python (from code you trust) and pass the module to adverse.audit")
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ModelError(f"{p / CONFIG} has no model_type; it was not written by save_pretrained ({SAVE_HINT})")
    architectures = cfg.get("architectures") or []
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise ModelError(f"{p / CONFIG}: architectures must be a list of class names, got {architectures!r}")
    channels = _positive_int(cfg.get("num_channels", 3), f"{p / CONFIG}: num_channels", MAX_CHANNELS)
    labels = cfg.get("id2label")
    num_labels = len(labels) if isinstance(labels, dict) and labels else None
    weights, pickled = _weights(p)

    size, size_source = None, None
    if cfg.get("image_size") is not None:
        size, size_source = _side(cfg["image_size"], f"{p / CONFIG}: image_size"), f"{CONFIG} image_size"
    mean = std = None
    normalize_source = None
    notes: list[str] = []
    if (p / PREPROCESSOR).exists():
        pre = _read_json(p / PREPROCESSOR, "preprocessor config")
        where = f"{p / PREPROCESSOR}:"
        crop = pre.get("crop_size") if pre.get("do_center_crop", False) is True else None
        for key, value in (("crop_size", crop), ("size", pre.get("size"))):
            side = _side(value, f"{where} {key}") if value is not None else None
            if side is not None:
                size, size_source = side, f"{PREPROCESSOR} {key}"
                break
        else:
            if pre.get("size") is not None:
                notes.append(f"{PREPROCESSOR} resizes by {json.dumps(pre['size'])[:80]}, which does not fix the input "
                             "size")
        for key in ("do_normalize", "do_rescale"):
            if key in pre and not isinstance(pre[key], bool):
                raise ModelError(f"{where} {key} must be true or false, got {pre[key]!r}")
        normalize = pre.get("do_normalize", True)
        m = _numbers(pre["image_mean"], f"{where} image_mean", channels) if normalize and "image_mean" in pre else [0.0]
        s = _numbers(pre["image_std"], f"{where} image_std", channels) if normalize and "image_std" in pre else [1.0]
        if normalize and ("image_mean" in pre) != ("image_std" in pre):
            raise ModelError(f"{where} gives one of image_mean and image_std without the other")
        if any(v <= 0 for v in s):
            raise ModelError(f"{where} image_std must be > 0, got {s}")
        r = 1.0
        if pre.get("do_rescale", True):
            r = pre.get("rescale_factor", 1 / 255)
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not (math.isfinite(r) and r > 0):
                raise ModelError(f"{where} rescale_factor must be a finite number > 0, got {r!r}")
        scale = 255.0 * float(r)  # the processor's input to Normalize is p · r = x · 255 r
        mean = [v / scale for v in m]
        std = [v / scale for v in s]
        if all(abs(v) < 1e-12 for v in mean) and all(abs(v - 1) < 1e-9 for v in std):
            mean = std = None  # the identity on images in [0, 1]
        else:
            normalize_source = PREPROCESSOR
    return HFFolder(path=p, model_type=model_type, architectures=list(architectures), weights=weights,
                    pickled=pickled, num_channels=channels, image_size=size, image_size_source=size_source,
                    mean=mean, std=std, normalize_source=normalize_source, num_labels=num_labels, notes=notes)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """transformers' warnings and progress bars off while loading (adverse reports what matters); restored after."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


@validated
def load_hf(folder: str | os.PathLike[str], *, trust_pickle: bool = False) -> tuple[Any, HFFolder]:
    """The image classifier in a ``save_pretrained`` folder, in float32 and eval mode, and what the folder says
    (:func:`read_hf_folder`). The returned module is the ``transformers`` model itself (it answers with an
    ``ImageClassifierOutput``, which adverse unwraps); :func:`adverse.loading.load_model` puts the folder's
    normalization in front of it.

    Raises :class:`ModelError` for everything :func:`read_hf_folder` refuses, pickled weights without
    ``trust_pickle``, ``transformers`` not installed, a config transformers cannot build as an image classifier,
    and weights that leave the model partly uninitialized."""
    spec = read_hf_folder(folder)
    p = spec.path
    if spec.pickled and not trust_pickle:
        raise ModelError(
            f"{p} holds its weights only as {spec.weights[0]}, a pickle: loading it could run code from the file. "
            f"Convert the weights to safetensors ({SAVE_HINT} with a recent transformers), or, if you trust the "
            "file, pass trust_pickle=True (--trust-pickle)")
    try:
        import transformers  # noqa: F401
        from transformers import AutoModelForImageClassification
    except ImportError:
        raise ModelError(f"loading the Hugging Face model in {p} needs transformers: {HF_HINT}") from None
    try:
        with _quiet():
            model, info = AutoModelForImageClassification.from_pretrained(
                str(p), local_files_only=True, use_safetensors=not spec.pickled, trust_remote_code=False,
                output_loading_info=True)
    except Exception as e:  # transformers raises ValueError, OSError, KeyError … for configs it cannot build
        detail = " ".join(str(e).split())[:300]
        raise ModelError(
            f"transformers could not load {p} as an image classifier ({type(e).__name__}: {detail}); the folder needs "
            f"a config.json of an image-classification architecture built into transformers and its weights "
            f"({SAVE_HINT})") from e
    missing = sorted(info.get("missing_keys") or [])
    mismatched = sorted(str(k[0]) if isinstance(k, tuple) else str(k) for k in (info.get("mismatched_keys") or []))
    if missing or mismatched:
        what = (f"lack {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}" if missing else
                f"have the wrong shape for {', '.join(mismatched[:5])}")
        raise ModelError(
            f"the weights in {p} {what}: transformers would fill those layers with random numbers (a backbone saved "
            "without its trained classification head?). Save the trained image classifier itself with "
            "save_pretrained")
    model = model.float().eval()
    return model, spec


__all__ = ["MAX_JSON_BYTES", "HFFolder", "is_hf_folder", "load_hf", "read_hf_folder"]
