"""Users' own models and data, loaded without running code they did not name.

Models (:func:`load_model`):

==========================  ==================================================================================
``.safetensors``            weights only; the architecture comes from ``arch``: a name from :mod:`adverse.zoo`
                            (``SmallCNN``, ``MLP``, or a recipe such as ``digits-cnn``) or a Python path
                            ``package.module:factory`` that the user names (called with no arguments)
``.pt2``                    a ``torch.export`` archive (a graph and weights), loaded only after the checks
                            below; it must have been exported in eval mode (no buffer updates, no training-mode
                            dropout or batch statistics), and comes back as a module whose modules all say
                            ``training=False`` (torch refuses ``.eval()`` on it; the attacks handle it)
TorchScript (``.pt`` …)     a ``torch.jit.save`` archive (TorchScript code), loaded only after the checks below
``.pt`` / ``.pth`` / …      a ``torch.save``'d state dict or training checkpoint, read with
                            ``torch.load(weights_only=True)``; needs ``arch``. The weights are the dict itself or
                            the first of :data:`CHECKPOINT_KEYS` holding a state dict, with the prefixes of
                            :data:`STRIPPED_PREFIXES` (``module.``, ``_orig_mod.``) removed (safetensors too);
                            :func:`model_info` says which. A pickled module is refused unless
                            ``trust_pickle=True``: unpickling runs whatever code the file names
a folder                    a Hugging Face ``save_pretrained`` folder (``config.json`` + ``model.safetensors``),
                            loaded through ``transformers`` without running code from it, with the normalization
                            of its ``preprocessor_config.json`` in front (:mod:`adverse.hf`)
``.onnx``                   a torch module (white box) when onnx2torch is installed; otherwise a
                            :class:`~adverse.models.BlackBox` that runs the graph with onnxruntime on the CPU
                            (``pip install 'adverse[onnx]'``): score-based attacks only, no gradients
==========================  ==================================================================================

``mean``/``std`` (``--mean``/``--std``) put :class:`~adverse.models.Normalize` in front of any loaded module.

A black box from an ``.onnx`` file is told apart by :func:`is_black_box` (or ``isinstance(model, BlackBox)``);
it also carries ``source_format = "onnx"``, ``white_box = False`` and ``path``. ONNX files hold a graph and
weights only, so loading one runs no Python code from the file.

Model files are untrusted. A path must name a regular file, and every zip archive (``.pt2``, TorchScript, a
``torch.save`` zip) is first read by :func:`adverse.archives.open_archive` within limits on member count and
sizes (a zip bomb is refused unread) and checked to list the same members for Python's zipfile and torch's own
reader. ``.pt2`` and TorchScript archives carry code that torch's loaders run (they unpickle members marked
``use_pickle``, ``eval`` shape expressions and guards, and TorchScript runs ``__setstate__`` while loading), so
before torch sees them :func:`adverse.archives.check_exported_program` and
:func:`adverse.archives.check_torchscript` refuse any pickled payload (a config entry marked ``use_pickle``,
custom or opaque object constants, sample inputs ``torch.load(weights_only=True)`` refuses, pickles naming
anything but TorchScript classes, tensors and storages), any member they do not check (AOTInductor code), any
operator outside the pure tensor operators (torch's ``aten``/``prims``/``prim`` operators except file, print and
RPC ones such as ``aten::from_file`` and ``aten::save``; no custom namespaces, TorchBind classes or
``print``), and any expression, guard or name torch would evaluate or paste into code that is not plain
arithmetic or an identifier; the module docstring of :mod:`adverse.archives` lists every rule.
``trust_code=True`` (``--trust-code``) skips these code checks for a file the user trusts; the limits stay.
:func:`source_digest` gives the sha256 of the file a model was loaded from (the audit's resume fingerprint
includes it).

Data (:func:`load_data`): the bundled sets by name (``digits``, ``digits:train``, ``tabular``), ``.npz`` files
with ``x`` and ``y``, a folder of images with one sub-folder per class (read with Pillow), and CSV files. Data
files are untrusted input: every mistake or damage is an :class:`InputError` naming the file (and the line,
column or array) and the fix; nothing is rescaled, dropped or coerced without being stated here.

=========  ===================================================================================================
``.npz``   ``x`` (n, ...) of integers or floats and ``y`` (n,) of integers ≥ 0, read without pickle
           (``allow_pickle=False``; object arrays are refused). Each array's ``.npy`` header is checked before
           anything is allocated: its declared shape × item size must equal the bytes the archive holds for it
           (a truncated or doctored header is refused) and fit ``MAX_ARRAY_BYTES``; the CRC-32 is checked, so
           a damaged file is refused rather than read as other numbers. Complex, string, boolean and structured
           arrays, NaN or infinite ``x``, ``x`` outside ``bounds`` and labels outside [0, ``MAX_LABEL``] are
           refused.
CSV        UTF-8 text (a leading byte-order mark is dropped; other encodings are refused with the line of the
           first bad byte: convert with ``iconv``). The first row is a header when none of its cells is a number,
           and data when all of them are (a mix is refused); blank lines are skipped. The label column is
           ``label_column`` (``--label-column``: a name, matched case-insensitively, or a 0-based index), else
           the one column named ``label``, ``y``, ``target`` or ``class`` in any case (several are refused as
           ambiguous), else the last column; the dataset's ``note`` says which. Every cell must be a plain
           decimal number (no thousands separators, no ``NaN``/``inf``); labels must be integers in
           [0, ``MAX_LABEL``] (``1.0`` counts as 1), features inside ``bounds``. Ragged rows are refused.
images     ``root/<class>/<image>``: classes are the sub-folders in name order (labels 0, 1, …); files and
           folders whose name starts with ``.`` are skipped, as are files without an image suffix
           (``IMAGE_SUFFIXES``); only PNG, JPEG, BMP, GIF, TIFF and WebP decoders are tried, and only the first
           frame is read. Every class needs at least one image and all images one height and width. Pixels are
           scaled by mode: ``1`` → 0 or 1; ``L``, ``P``, ``RGB`` (8 bit) → /255; ``I;16``/``I;16B`` (16 bit, and
           ``I`` from a PNG, which older Pillow uses for 16 bit) → /65535; ``F`` (float TIFF) is taken as it is
           and refused outside [0, 1] (never rescaled); 32-bit integer ``I`` and other modes (CMYK, YCbCr …)
           are refused. Alpha (``LA``, ``RGBA``, ``PA``) is dropped: the colour is used as stored, not
           composited. A palette image is grey when every palette entry is grey, else RGB. If any image in the
           folder is colour, all are RGB (a grey image's channel repeated three times); else all are grey with
           one channel. Only regular files inside the folder are read: a link that leads outside, a FIFO or a
           device is refused (a FIFO is never opened for a blocking read).
=========  ===================================================================================================

Limits (in :mod:`adverse.data`, read at every call; raise them from Python if you trust a larger file):
``MAX_FILE_BYTES`` (4 GiB) per data file or image file; ``MAX_ARRAY_BYTES`` (4 GiB) for the decoded data (an
``.npz``'s arrays as stored, a CSV's values as float64, an image folder as float32); ``MAX_IMAGE_PIXELS``
(2**26 ≈ 67 million, e.g. 8192 × 8192) declared pixels per image, checked before decoding, so a decompression
bomb is refused (Pillow's own ``Image.MAX_IMAGE_PIXELS`` is left as it is; its warning is an error here);
``MAX_LABEL`` (2**31 - 1) for a class label.
"""

from __future__ import annotations

import array
import contextlib
import csv
import hashlib
import importlib
import io
import logging
import os
import re
import warnings
import weakref
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from . import archives
from . import data as _data
from .data import Dataset, digits, load_npz, tabular
from .errors import InputError, ModelError
from .files import read_regular
from .models import BlackBox, Normalize
from .validation import validated

if TYPE_CHECKING:
    from .streaming import Stream

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")
ONNX_CHUNK = 1024  # rows per onnxruntime call when the graph's batch dimension is dynamic
ONNX_HINT = "pip install 'adverse[onnx]'"


# --------------------------------------------------------------------------------------------- models
def _import(spec: str, what: str, form: str) -> Any:
    """The object ``package.module:name`` names (the user's own code, imported on their request)."""
    module_name, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ModelError(f"cannot import the {what} {spec!r} ({e}); give '{form}' with the package on "
                         "PYTHONPATH") from e


TIMM_HINT = "timm is not importable here (pip install timm; it needs a torchvision that matches torch)"


def timm_architecture(spec: str) -> nn.Module:
    """``timm.create_model(name, pretrained=False, **options)`` for ``spec`` = ``"name"`` or
    ``"name,key=int,..."`` (e.g. ``"resnet18,num_classes=10"``): the architecture only; the weights come from the
    user's file (nothing is downloaded). Options are whole numbers (``num_classes``, ``in_chans``, ...)."""
    name, *options = [part.strip() for part in spec.split(",")]
    kwargs: dict[str, int] = {}
    for option in options:
        key, _, value = option.partition("=")
        if not key.isidentifier() or not re.fullmatch(r"[0-9]{1,7}", value):
            raise ModelError(f"timm option {option!r} in --arch timm:{spec} is not key=whole number (e.g. "
                             "num_classes=10)")
        kwargs[key] = int(value)
    if not re.fullmatch(r"[A-Za-z0-9_.]+", name):
        raise ModelError(f"{name!r} is not a timm model name (letters, digits, '_' and '.'), in --arch timm:{spec}")
    try:
        import timm
    except Exception as e:  # a torchvision built for another torch fails with RuntimeError, not ImportError
        raise ModelError(f"--arch timm:{spec}: {TIMM_HINT} ({type(e).__name__}: {e})") from None
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except Exception as e:  # timm raises RuntimeError for an unknown name, TypeError for an unknown option
        raise ModelError(f"timm cannot build {name!r} with {kwargs} ({type(e).__name__}: {e}); see timm.list_models()"
                         ) from None


def timm_normalization(model: nn.Module) -> tuple[list[float], list[float], list[int] | None] | None:
    """The mean, std and input size a timm model's ``pretrained_cfg`` states (None when it states no mean/std)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if not isinstance(cfg, dict) or "mean" not in cfg or "std" not in cfg:
        return None
    size = cfg.get("input_size")
    return list(cfg["mean"]), list(cfg["std"]), list(size) if size is not None else None


def build_architecture(arch: str) -> nn.Module:
    """An untrained module from ``arch``: a zoo class or recipe name, ``timm:name[,key=int...]`` (timm's registry,
    where timm is importable), or ``package.module:factory``."""
    from . import zoo

    if arch.startswith("timm:"):
        model = timm_architecture(arch[len("timm:"):])
    elif ":" in arch:
        model = _import(arch, "architecture", "package.module:factory")()
    elif arch in zoo.RECIPES:
        model = zoo._build(zoo.RECIPES[arch]["arch"])
    elif arch == "SmallCNN":
        model = zoo.SmallCNN()
    elif arch == "MLP":
        model = zoo.MLP(64, 10)
    else:
        raise ModelError(f"unknown architecture {arch!r}; use one of SmallCNN, MLP, {', '.join(zoo.RECIPES)} or "
                         "'package.module:factory'")
    if not isinstance(model, nn.Module):
        raise ModelError(f"{arch!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def load_recipe(spec: str) -> Any:
    """A training recipe ``recipe(dataset, seed) -> model`` from ``spec``: a zoo model name (its recipe, e.g.
    ``digits-cnn``) or ``package.module:function`` (the user's own training function)."""
    from . import zoo

    if ":" in spec:
        fn = _import(spec, "training recipe", "package.module:function")
        if not callable(fn):
            raise ModelError(f"{spec!r} is a {type(fn).__name__}, not a function recipe(dataset, seed) -> model")
        return fn
    if spec in zoo.RECIPES:
        return zoo.recipe(spec)
    raise ModelError(f"unknown training recipe {spec!r}; use one of {', '.join(zoo.RECIPES)} or "
                     "'package.module:function' (a function recipe(dataset, seed) -> trained model)")


CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "state_dict_ema",
                   "model_ema", "ema_state_dict", "ema")
"""Where a checkpoint may keep its weights, in the order they are looked for: a dict whose values are all tensors is
the state dict itself; otherwise the first of these keys that holds one (Lightning and timm write ``state_dict``,
the PyTorch tutorials ``model_state_dict``, torchvision's and DeiT's training scripts ``model``; the EMA copies
``state_dict_ema``/``model_ema``/``ema_state_dict``/``ema`` come last, used only when nothing else holds
weights). :func:`model_info` says which key was used."""
STRIPPED_PREFIXES = ("module.", "_orig_mod.")
"""Prefixes removed from every key when all keys carry one and the architecture's own keys do not:
``module.`` (``nn.DataParallel`` / ``DistributedDataParallel``) and ``_orig_mod.`` (``torch.compile``), in any
nesting. Nothing else is renamed; the weights must then match the architecture exactly (strict)."""


def _is_state_dict(value: Any) -> bool:
    return (isinstance(value, dict) and bool(value)
            and all(isinstance(k, str) and torch.is_tensor(v) for k, v in value.items()))


@validated
def checkpoint_weights(state: Any, path: str | Path = "the checkpoint") -> tuple[dict[str, torch.Tensor], str | None]:
    """The state dict in a loaded checkpoint and the key it was found under (None: the top level); see
    :data:`CHECKPOINT_KEYS`. Raises :class:`ModelError` naming the keys found when none holds tensors."""
    if _is_state_dict(state):
        return state, None
    if isinstance(state, dict):
        for key in CHECKPOINT_KEYS:
            if _is_state_dict(state.get(key)):
                return state[key], key
        keys = [repr(k) for k in list(state)[:12]] + (["..."] if len(state) > 12 else [])
        raise ModelError(
            f"{path} holds a dict with keys [{', '.join(keys)}], but neither it nor any of {', '.join(CHECKPOINT_KEYS)} "
            "is a state dict of tensors; save model.state_dict() (alone, or under 'state_dict')")
    raise ModelError(f"{path} does not hold a state dict of tensors (it holds a {type(state).__name__}); save "
                     "model.state_dict()")


@validated
def strip_prefixes(state: dict[str, torch.Tensor], model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state`` with the wrapper prefixes of :data:`STRIPPED_PREFIXES` removed where every key carries one and
    ``model``'s own keys do not, and the prefixes removed, in order."""
    own = list(model.state_dict())
    stripped: list[str] = []
    changed = True
    while changed:
        changed = False
        for prefix in STRIPPED_PREFIXES:
            if (state and all(k.startswith(prefix) for k in state)
                    and not any(k.startswith(prefix) for k in own)):
                state = {k[len(prefix):]: v for k, v in state.items()}
                stripped.append(prefix)
                changed = True
    return state, stripped


def _with_weights(model: nn.Module, state: Any, path: Path, info: dict[str, Any] | None = None) -> nn.Module:
    state, key = checkpoint_weights(state, path)
    state, stripped = strip_prefixes(state, model)
    if info is not None and (key is not None or stripped):
        info["checkpoint"] = {"key": key, "stripped_prefixes": stripped}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        where = (f" (the weights under {key!r}" + (f", prefixes {stripped} stripped" if stripped else "") + ")"
                 if key is not None or stripped else "")
        raise ModelError(f"{path} does not match the architecture{where}: {str(e).splitlines()[0]} "
                         "(check --arch)") from e
    return model


_SOURCES: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_INFO: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


@validated
def model_info(model: Any) -> dict[str, Any]:
    """What :func:`load_model` learnt while loading ``model`` (empty for a model built in memory):

    ``class`` (the loaded module's class name, before any normalization in front), ``checkpoint`` (``key``: where in
    the checkpoint the weights were, None for the top level; ``stripped_prefixes``), ``format``
    (``"transformers"`` for a Hugging Face folder, with ``model_type``), ``input_shape`` (channels, height, width)
    and ``input_shape_source`` when the folder fixes them, and ``normalize`` (``mean``, ``std``, ``source``: the
    file it was read from, or ``"given"``) when a :class:`~adverse.models.Normalize` was put in front."""
    try:
        return dict(_INFO.get(model) or {})
    except TypeError:
        return {}


MAX_NORMALIZE_VALUES = 4096
"""The most values ``mean``/``std`` may list (one per channel)."""


@validated
def check_normalization(mean: Any, std: Any) -> tuple[list[float], list[float]]:
    """``mean`` and ``std`` (a number, or one number per channel) as lists, checked: finite numbers, std > 0, at
    most :data:`MAX_NORMALIZE_VALUES` values, and as many of each unless one of them is a single value. Raises
    :class:`InputError` naming the fix."""
    def values(v: Any, name: str) -> list[float]:
        items = list(v) if isinstance(v, (list, tuple)) else [v]
        if not items or len(items) > MAX_NORMALIZE_VALUES or not all(
                isinstance(i, (int, float)) and not isinstance(i, bool) for i in items):
            raise InputError(f"{name} must be a number or a list of numbers (one per channel, e.g. 0.485,0.456,0.406), "
                             f"got {str(v)[:100]}")
        out = [float(i) for i in items]
        if not all(np.isfinite(out)):
            raise InputError(f"{name} must hold finite numbers, got {out[:8]}")
        return out

    m, s = values(mean, "mean"), values(std, "std")
    if any(v <= 0 for v in s):
        raise InputError(f"std must be > 0 for every channel, got {s[:8]}; inputs are divided by it")
    if len(m) != len(s) and 1 not in (len(m), len(s)):
        raise InputError(f"mean has {len(m)} values and std {len(s)}; give one value per channel for both (or one "
                         "value for all channels)")
    return m, s


@validated
def check_input_shape(model: Any, shape: tuple[int, ...] | torch.Size, data: str = "the data") -> None:
    """Refuse inputs of per-sample ``shape`` that the loaded ``model`` cannot take, by what :func:`model_info`
    knows: the channels of its normalization (a value per channel) and the input shape a Hugging Face folder
    fixes. Raises :class:`InputError` naming the fix; models built in memory pass unchecked."""
    info = model_info(model)
    shape = tuple(int(d) for d in shape)
    norm = info.get("normalize")
    if norm is not None:
        count = max(len(norm["mean"]), len(norm["std"]))
        if count > 1 and (len(shape) < 1 or shape[0] != count):
            flags = "--mean/--std (mean=, std=)" if norm.get("source") == "given" else norm.get("source")
            raise InputError(f"the normalization ({flags}) has {count} values, one per channel, but {data} has "
                             f"{shape[0] if shape else 0} channel(s) (inputs of shape {shape}); give one value per "
                             "channel of the data, or one value for all")
    expected = info.get("input_shape")
    if expected is not None and tuple(expected) != shape:
        c, h, w = expected
        raise InputError(f"the model takes inputs of shape {tuple(expected)} ({c} channel(s), {h}×{w}, from "
                         f"{info.get('input_shape_source')}), but {data} has {shape}; resize the images to {h}×{w} "
                         f"with {c} channel(s) first, as the model was trained")


def source_digest(model: Any) -> str | None:
    """The sha256 of the bytes of the file :func:`load_model` read ``model`` from; None for a model built in
    memory. The audit's resume fingerprint includes it, so two files with the same weights never share results."""
    try:
        return _SOURCES.get(model)
    except TypeError:  # not weak-referenceable or not hashable: not loaded here
        return None


@validated
def load_model(
    path: str | Path, *, arch: str | None = None, trust_pickle: bool = False, trust_code: bool = False,
    mean: float | list[float] | None = None, std: float | list[float] | None = None,
) -> nn.Module | BlackBox:
    """Load a model file (or a Hugging Face ``save_pretrained`` folder) in eval mode; see the module docstring for
    the formats and what is checked.

    ``mean`` and ``std`` (a number, or one per channel; both or neither, checked by :func:`check_normalization`)
    put ``adverse.Normalize(mean, std)`` in front of the model, for a model trained on normalized inputs: the
    returned model then takes inputs in the raw range (images in [0, 1]). For a Hugging Face folder they replace
    the normalization read from its ``preprocessor_config.json``. What was loaded, from where, and with which
    normalization is in :func:`model_info`.

    Returns a ``torch.nn.Module``, except for an ``.onnx`` file without onnx2torch installed: then a
    :class:`~adverse.models.BlackBox` (check with :func:`is_black_box`).

    Raises :class:`ModelError` for a missing file or one that is not a regular file, a format that needs
    ``arch`` without it, weights that do not fit the architecture, a malformed file or an archive beyond the
    size limits (a zip bomb), a pickled object when ``trust_pickle`` is False, and a ``.pt2`` or TorchScript
    archive that fails the checks of :mod:`adverse.archives` (pickled payloads, operators outside the pure
    tensor operators) when ``trust_code`` is False. Nothing in a refused file runs.
    """
    from . import hf

    p = Path(path)
    given = None
    if mean is not None or std is not None:
        if mean is None or std is None:
            raise InputError(f"{'std' if std is None else 'mean'} was not given: give both mean and std (--mean and "
                             "--std), one value per channel or one value for all channels")
        given = check_normalization(mean, std)
    info: dict[str, Any] = {}
    if p.is_dir() and hf.is_hf_folder(p):
        if arch is not None:
            raise ModelError(f"{p} is a Hugging Face folder: its config.json names the architecture; drop arch= (--arch)")
        model, spec = hf.load_hf(p, trust_pickle=trust_pickle)
        info.update(format="transformers", model_type=spec.model_type)
        if spec.input_shape is not None:
            info.update(input_shape=list(spec.input_shape), input_shape_source=spec.image_size_source)
        if spec.mean is not None and given is None:
            given_by: Any = (spec.mean, spec.std, spec.normalize_source)
        else:
            given_by = None
        files = [hf.CONFIG, *([hf.PREPROCESSOR] if (p / hf.PREPROCESSOR).exists() else []), *spec.weights]
        digest = hashlib.sha256()
        for name in files:
            digest.update(f"{name}\0{archives.sha256(p / name)}\0".encode())
        source = digest.hexdigest()
    elif not p.is_file():
        raise ModelError((f"{p} is a folder without a config.json; give a model file, or a Hugging Face "
                          "save_pretrained folder (config.json + model.safetensors)" if p.is_dir() else
                          f"{p} is not a regular file; give the path of a model file") if p.exists()
                         else f"no such model file: {p}")
    else:
        model = _load_model(p, arch, trust_pickle, trust_code, info)
        given_by, source = None, archives.sha256(p)
        timm_cfg = timm_normalization(model) if arch is not None and arch.startswith("timm:") else None
        if timm_cfg is not None:  # timm's models expect its normalized inputs, as their pretrained_cfg states
            given_by = (*check_normalization(timm_cfg[0], timm_cfg[1]), f"timm pretrained_cfg of {arch[5:]}")
            if timm_cfg[2] is not None:
                info.update(input_shape=timm_cfg[2], input_shape_source="timm pretrained_cfg")
    if given is not None:
        given_by = (*given, "given")
    if given_by is not None:
        if isinstance(model, BlackBox):
            raise ModelError(f"{p} loads as a black box (no torch module), so mean/std (--mean/--std) cannot be put in "
                             "front of it; put the normalization into the exported graph instead")
        inner = model
        model = nn.Sequential(Normalize(given_by[0], given_by[1]), inner).eval()
        info["normalize"] = {"mean": list(given_by[0]), "std": list(given_by[1]), "source": given_by[2]}
        info["class"] = type(inner).__name__
    else:
        info["class"] = type(model).__name__
    with contextlib.suppress(TypeError):
        _SOURCES[model] = source
        _INFO[model] = info
    return model



def _load_model(p: Path, arch: str | None, trust_pickle: bool, trust_code: bool,
                info: dict[str, Any] | None = None) -> nn.Module | BlackBox:
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        if arch is None:
            raise ModelError(f"{p} holds weights only; name the architecture with arch= (--arch), e.g. SmallCNN or "
                             "'package.module:factory'")
        try:
            state = load_file(str(p))
        except Exception as e:  # safetensors raises its own error types
            raise ModelError(f"{p} is not a valid safetensors file ({e})") from e
        return _with_weights(build_architecture(arch), state, p, info).eval()
    if suffix == ".onnx":
        return load_onnx(p)
    archive = archives.open_archive(p) if suffix == ".pt2" or zipfile.is_zipfile(p) else None
    kind = archives.kind(archive) if archive is not None else None
    if suffix == ".pt2" or kind == "pt2":
        if not trust_code:
            archives.check_exported_program(archive)
        return _load_exported(p)
    if kind == "torchscript":
        if not trust_code:
            archives.check_torchscript(archive)
        try:
            return torch.jit.load(str(p), map_location="cpu").eval()
        except Exception as e:
            raise ModelError(f"{p} is not a loadable TorchScript archive ({e})") from e
    try:
        state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        if not trust_pickle:
            raise ModelError(
                f"{p} is not a plain weights file: loading it would unpickle Python objects, which can run "
                "arbitrary code. Save weights with safetensors, torch.export or TorchScript; or, if you trust "
                "the file, pass trust_pickle=True (--trust-pickle)"
            ) from e
        obj = torch.load(str(p), map_location="cpu", weights_only=False)
        if isinstance(obj, nn.Module):
            return obj.eval()
        state = obj
    if isinstance(state, nn.Module):
        return state.eval()
    if arch is None:
        raise ModelError(f"{p} holds a state dict; name the architecture with arch= (--arch)")
    return _with_weights(build_architecture(arch), state, p, info).eval()


_TRAIN_ARGS = {"dropout": 2, "native_dropout": 2, "feature_dropout": 2, "alpha_dropout": 2,
               "feature_alpha_dropout": 2, "batch_norm": 5, "_native_batch_norm_legit": 5,
               "_native_batch_norm_legit_functional": 5, "native_batch_norm": 5}


def _load_exported(p: Path) -> nn.Module:
    """An exported program as a module: checked to be in inference form (no buffer updates, no training-mode
    dropout or batch statistics: ``.eval()`` cannot change an exported graph), its modules marked as in eval."""
    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.ERROR)  # torch logs a traceback before its own error; ours says it in one line
    try:
        ep = torch.export.load(str(p))
        module = ep.module()
    except Exception as e:
        raise ModelError(f"{p} is not a loadable torch.export archive ({type(e).__name__}: {e})") from e
    finally:
        logger.setLevel(level)
    mutated = sorted(ep.graph_signature.buffers_to_mutate.values())
    if mutated:
        raise ModelError(f"{p} updates its buffers {', '.join(mutated[:3])} when called: it was exported in training "
                         "mode. Export it after model.eval() (an exported graph keeps the mode it was exported in)")
    for gm in ep.graph_module.modules():
        for node in getattr(getattr(gm, "graph", None), "nodes", ()):
            name = getattr(node.target, "_opname", None) if node.op == "call_function" else None
            index = _TRAIN_ARGS.get(name) if name is not None else None
            if index is None:
                continue
            train = node.args[index] if len(node.args) > index else node.kwargs.get("train", node.kwargs.get(
                "training", False))
            if train is True:
                raise ModelError(f"{p} runs {name} in training mode (node {node.name}): it was exported in training "
                                 "mode. Export it after model.eval() (an exported graph keeps the mode it was "
                                 "exported in)")
    for m in module.modules():  # torch refuses .eval() on exported modules; the graph above is in inference form
        m.training = False
    return module


# --------------------------------------------------------------------------------------------- ONNX
def is_black_box(model: Any) -> bool:
    """True when ``model`` can only be queried (a :class:`~adverse.models.BlackBox`, e.g. an ``.onnx`` file
    loaded without onnx2torch): gradient attacks do not apply, score-based ones (Square, SimBA, NES) do."""
    return isinstance(model, BlackBox)


def load_onnx(path: str | Path) -> nn.Module | BlackBox:
    """An ``.onnx`` file as a torch module through onnx2torch when it is installed, else as a black box run by
    onnxruntime; :class:`ModelError` when neither is installed or the file is not a valid ONNX model."""
    p = Path(path)
    try:
        from onnx2torch import convert  # noqa: F401  (optional: only its presence is tested here)
    except ImportError:
        return _onnx_black_box(p)
    return _onnx_to_torch(p)


def _onnx_to_torch(p: Path) -> nn.Module:
    """White box: the ONNX graph converted to a torch module by onnx2torch."""
    import onnx
    from onnx2torch import convert

    try:
        model = onnx.load(str(p))
    except Exception as e:  # protobuf's DecodeError and onnx's own errors
        raise ModelError(f"{p} is not a valid ONNX model ({type(e).__name__}: {e})") from e
    try:
        return convert(model).eval()
    except Exception as e:
        raise ModelError(f"{p} could not be converted from ONNX ({type(e).__name__}: {e}); uninstall onnx2torch "
                         "to load it as a black box through onnxruntime, or export the model with torch.export") from e


def _onnx_black_box(p: Path) -> BlackBox:
    """Black box: an onnxruntime session on the CPU behind :class:`~adverse.models.BlackBox`."""
    try:
        import onnxruntime
    except ImportError as e:
        raise ModelError(f"ONNX models need onnxruntime (or onnx2torch): {ONNX_HINT}") from e
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: no warnings on stderr for every session
    try:
        session = onnxruntime.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own error types for unreadable or invalid graphs
        raise ModelError(f"{p} is not a valid ONNX model ({type(e).__name__}: {str(e).strip()})") from e
    box = BlackBox(OnnxRunner(session, p))
    box.source_format, box.white_box, box.path = "onnx", False, p
    return box


class OnnxRunner:
    """Runs an onnxruntime session on torch batches: feeds the graph's one input, returns its first output.

    The batch is sent as a contiguous array of the input's dtype (float64 if the graph declares double, else
    float32), in chunks of the graph's fixed batch size (e.g. 1; a short last chunk is padded and the padding's
    answers dropped) or of ``ONNX_CHUNK`` rows when it is dynamic.
    A graph that declares flat features (n, d) receives images (n, c, h, w) flattened when ``d = c·h·w``.
    """

    def __init__(self, session: Any, path: Path) -> None:
        inputs = session.get_inputs()
        if len(inputs) != 1:
            names = ", ".join(i.name for i in inputs)
            raise ModelError(f"{path} takes {len(inputs)} inputs ({names}); adverse feeds one batch of inputs, "
                             "so export the model with a single input")
        self.session, self.path, self.input = session, path, inputs[0]
        self.output = session.get_outputs()[0]
        self.dtype = np.float64 if self.input.type == "tensor(double)" else np.float32
        first = self.input.shape[0] if self.input.shape else None
        self.fixed = isinstance(first, int) and first > 0  # the graph accepts batches of exactly this size
        self.chunk = first if self.fixed else ONNX_CHUNK

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(self._shaped(x.detach().cpu()).numpy(), dtype=self.dtype)
        if arr.shape[0] == 0:
            tail = [d if isinstance(d, int) else 0 for d in self.output.shape[1:]]
            return torch.empty(0, *tail, device=x.device)
        outs = [self._run(arr[i:i + self.chunk]) for i in range(0, arr.shape[0], self.chunk)]
        return torch.from_numpy(np.concatenate(outs)).to(x.device)

    def _shaped(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` flattened to (n, d) when the graph declares flat features of that size; else unchanged."""
        shape = self.input.shape or []
        if len(shape) == 2 and x.dim() > 2 and shape[1] == x[0].numel():
            return x.flatten(1)
        return x

    def _run(self, batch: np.ndarray) -> np.ndarray:
        rows = batch.shape[0]
        if self.fixed and rows < self.chunk:  # a fixed batch size: pad the last chunk with its last row
            batch = np.concatenate([batch, np.repeat(batch[-1:], self.chunk - rows, axis=0)])
        try:
            return np.asarray(self.session.run([self.output.name], {self.input.name: batch})[0])[:rows]
        except Exception as e:  # onnxruntime's InvalidArgument, Fail, … for inputs the graph does not accept
            raise ModelError(
                f"{self.path} rejected a batch of shape {tuple(batch.shape)} ({str(e).strip()}); the graph's "
                f"input {self.input.name!r} has shape {self.input.shape} and type {self.input.type}"
            ) from e


# --------------------------------------------------------------------------------------------- data
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")  # the only Pillow decoders tried (no EPS, no PDF …)
_PALETTE_MODES = ("P", "PA")
_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _within(path: str | Path, root_real: str) -> bool:
    """True when ``path``, with every link resolved, lies inside the folder whose real path is ``root_real``."""
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def _listing(folder: Path) -> list[os.DirEntry[str]]:
    """The entries of ``folder`` that are not hidden (``.name``), sorted by name."""
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as e:
        raise InputError(f"cannot list the folder {folder}: {e.strerror or e}") from None


def _read_regular(path: Path, what: str) -> bytes:
    """The bytes of a regular file of at most ``MAX_FILE_BYTES`` (FIFOs and devices refused without blocking)."""
    return read_regular(path, what, _data.MAX_FILE_BYTES, limit_hint="(adverse.data.MAX_FILE_BYTES); split the "
                        "data, or raise the limit if you trust the file")


def _pixels(im: Any, f: Path) -> np.ndarray:
    """The decoded image as float32 (channels, height, width) in [0, 1], by mode (see the module docstring)."""
    mode = im.mode
    if mode not in _MODES:
        raise InputError(f"{f} has image mode {mode!r}, which adverse does not read; save it as an 8- or 16-bit "
                         f"grey or RGB PNG (readable modes: {', '.join(_MODES)})")
    a = np.asarray(im)
    if mode == "1":  # bilevel: booleans
        out = a.astype(np.float32)
    elif mode in ("L", "LA"):  # 8-bit grey (+ alpha, dropped)
        out = (a[..., 0] if mode == "LA" else a).astype(np.float32) / 255.0
    elif mode in ("RGB", "RGBA", "RGBX"):  # 8-bit colour (+ alpha or padding, dropped)
        out = a[..., :3].astype(np.float32) / 255.0
    elif mode in _PALETTE_MODES:  # palette indices (+ alpha, dropped): look the colours up
        index = a[..., 0] if mode == "PA" else a
        palette = np.asarray(im.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
        if index.size and int(index.max()) >= len(palette):
            raise InputError(f"{f} refers to palette entry {int(index.max())} but its palette has {len(palette)}; "
                             "the file is damaged")
        rgb = palette[index]
        grey = bool((palette[:, 0] == palette[:, 1]).all() and (palette[:, 1] == palette[:, 2]).all())
        out = (rgb[..., 0] if grey else rgb).astype(np.float32) / 255.0
    elif mode.startswith("I;16"):  # 16-bit grey, either byte order
        out = a.astype(np.float32) / 65535.0
    elif mode == "I":  # 32-bit signed integers: from a PNG only ever 16-bit grey (older Pillow)
        if im.format != "PNG":
            raise InputError(f"{f} holds 32-bit integer pixels, which have no standard scale; save it as an 8- or "
                             "16-bit PNG, or as float pixels in [0, 1], or the data as .npz")
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise InputError(f"{f}: 16-bit pixel values outside 0…65535; the file is damaged")
        out = a.astype(np.float32) / 65535.0
    else:  # "F": 32-bit float pixels, taken as they are
        out = a.astype(np.float32)
        if not np.isfinite(out).all() or (out.size and (out.min() < 0.0 or out.max() > 1.0)):
            raise InputError(f"{f} holds float pixels outside [0, 1] (min {np.nanmin(out):.4g}, max "
                             f"{np.nanmax(out):.4g}) or not finite; adverse does not rescale float images: "
                             "scale them into [0, 1] first")
    return out[None] if out.ndim == 2 else out.transpose(2, 0, 1)


@validated
def check_image_transform(image_size: Any = None, resize: Any = None, center_crop: Any = None) -> None:
    """Check ``image_size``, ``resize`` and ``center_crop`` (``--image-size``, ``--resize``, ``--center-crop``):
    positive ints, at most one of ``image_size`` and ``resize``, a crop no larger than the resized size."""
    for value, flag in ((image_size, "--image-size"), (resize, "--resize"), (center_crop, "--center-crop")):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InputError(f"{flag} must be a positive whole number of pixels, got {value!r}")
        if value is not None and value > 65535:
            raise InputError(f"{flag} {value} is larger than any image adverse reads (65535 pixels)")
    if image_size is not None and resize is not None:
        raise InputError("pass --image-size N (resize to N×N) or --resize N (shorter side to N), not both")
    size = image_size if image_size is not None else resize
    if center_crop is not None and size is not None and center_crop > size:
        flag = "--image-size" if image_size is not None else "--resize"
        raise InputError(f"--center-crop {center_crop} is larger than {flag} {size}; the crop must fit inside the "
                         "resized image")


def _transform(arr: np.ndarray, f: Path, image_size: int | None, resize: int | None,
               center_crop: int | None) -> np.ndarray:
    """``arr`` (channels, height, width, float32 in [0, 1], after mode conversion) resized and center-cropped.

    Each channel is resized as a Pillow ``"F"`` (32-bit float) image with ``Image.resize(..., Image.BILINEAR)``,
    which antialiases when shrinking as Pillow does (its bilinear filter's support grows with the scale factor),
    then clipped to [0, 1]. ``image_size`` N gives N×N; ``resize`` N makes the shorter side N with the aspect kept
    (the longer side ``int(N * long / short)``, as torchvision does). ``center_crop`` C then takes the C×C centre
    (top ``round((height - C) / 2)``, left likewise, as torchvision does).
    """
    from PIL import Image

    _, h, w = arr.shape
    if image_size is not None:
        size = (image_size, image_size)  # (width, height) for Pillow
    elif resize is not None:
        size = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    else:
        size = (w, h)
    resized = size != (w, h)
    if resized:
        arr = np.stack([np.asarray(Image.fromarray(c, mode="F").resize(size, Image.BILINEAR), dtype=np.float32)
                        for c in arr])
        arr = np.clip(arr, 0.0, 1.0)
    if center_crop is not None:
        _, h, w = arr.shape
        if center_crop > h or center_crop > w:
            raise InputError(f"{f} is {w}×{h} pixels{' after resizing' if resized else ''}, smaller than "
                             f"--center-crop {center_crop}; pass --resize or --image-size of at least {center_crop}")
        top, left = round((h - center_crop) / 2.0), round((w - center_crop) / 2.0)
        arr = arr[:, top:top + center_crop, left:left + center_crop]
    return np.ascontiguousarray(arr)


def _decode_image(f: Path, raw: bytes) -> np.ndarray:
    """One image file's bytes decoded (first frame), after checking its declared size against the pixel limit."""
    from PIL import Image, UnidentifiedImageError

    limit = _data.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():  # Pillow's own bomb warning becomes an error here, and only here
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS) as im:
                width, height = im.size
                if width * height > limit:
                    raise InputError(f"{f} declares {width} × {height} = {width * height:,} pixels, more than the "
                                     f"limit of {limit:,} (adverse.data.MAX_IMAGE_PIXELS); a decompression bomb "
                                     "or an image to shrink first")
                im.load()
                return _pixels(im, f)
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(f"{f} is not a {', '.join(IMAGE_FORMATS)} image, or it is damaged; replace or remove "
                         "it") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"{f} declares more pixels than Pillow allows ({e}); a decompression bomb or an image "
                         "to shrink first") from None
    except Exception as e:  # Pillow's decoders raise many types (OSError, SyntaxError, ValueError …) on damage
        raise InputError(f"{f} is not a readable image ({type(e).__name__}: {e}); replace or remove it") from e


def _folder_files(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """The class folders of ``root`` (name order) and every image file in them with its label; links that leave
    ``root`` are refused, files that are not images are never opened."""
    root_real = os.path.realpath(root)
    classes = []
    for entry in _listing(root):
        if entry.is_dir():  # files beside the class folders are ignored, never opened
            if not _within(entry.path, root_real):
                raise InputError(f"{entry.path} links to {os.path.realpath(entry.path)}, outside {root}; class "
                                 "folders must lie inside the data folder")
            classes.append(entry.name)
    if not classes:
        raise InputError(f"{root} has no class sub-folders; put each class's images in its own folder")
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        count = 0
        for entry in _listing(root / name):
            if Path(entry.name).suffix.lower() not in IMAGE_SUFFIXES:
                continue  # notes, labels files …: never opened
            f = Path(entry.path)
            if not _within(f, root_real):
                raise InputError(f"{f} links to {os.path.realpath(f)}, outside {root}; images must lie inside the "
                                 "data folder")
            files.append((f, label))
            count += 1
        if count == 0:
            raise InputError(f"the class folder {root / name} holds no images ({', '.join(IMAGE_SUFFIXES)}); add "
                             "its images or remove the folder (every sub-folder is a class)")
    return classes, files


def _read_image(f: Path, raw: bytes, transform: tuple[int | None, int | None, int | None],
                size: tuple[int, ...] | None) -> np.ndarray:
    """One image file decoded, converted and transformed; its size checked against the others' (``size``)."""
    arr = _decode_image(f, raw)
    if any(v is not None for v in transform):
        arr = _transform(arr, f, *transform)
    if size is not None and arr.shape[1:] != size:
        raise InputError(f"{f} has shape {arr.shape[1:]}, others {size}; images of different sizes need "
                         "--image-size N (resize each to N×N), or --resize N (shorter side to N) with "
                         "--center-crop N (e.g. --resize 256 --center-crop 224)")
    return arr


def _folder_note(classes: list[str], channels: int, image_size: int | None, resize: int | None,
                 center_crop: int | None) -> str:
    return (f"image folder: {len(classes)} classes in name order ({', '.join(classes)}); "
            + ("RGB (grey images repeated to 3 channels)" if channels == 3 else "grey, 1 channel")
            + "; alpha dropped"
            + (f"; resized to {image_size}×{image_size} (bilinear)" if image_size is not None else "")
            + (f"; shorter side resized to {resize} (bilinear)" if resize is not None else "")
            + (f"; center-cropped to {center_crop}×{center_crop}" if center_crop is not None else ""))


def _image_folder(root: Path, image_size: int | None = None, resize: int | None = None,
                  center_crop: int | None = None) -> Dataset:
    classes, files = _folder_files(root)
    arrays: list[np.ndarray] = []
    size, pixels, channels = None, 0, 1
    for f, _ in files:
        arr = _read_image(f, _read_regular(f, "image"), (image_size, resize, center_crop), size)
        size = arr.shape[1:]
        pixels, channels = pixels + arr[0].size, max(channels, arr.shape[0])
        if pixels * channels * 4 > _data.MAX_ARRAY_BYTES:
            raise InputError(f"{root}: the images take more than {_data.MAX_ARRAY_BYTES:,} bytes as float32 "
                             "(adverse.data.MAX_ARRAY_BYTES); audit a subset, stream the folder "
                             "(load_data(..., stream=True)), or raise the limit")
        arrays.append(arr)
    x = np.empty((len(arrays), channels, *size), dtype=np.float32)
    for i, a in enumerate(arrays):
        x[i] = a  # a grey image in a folder with colour: its one channel repeated to R, G and B
    note = _folder_note(classes, channels, image_size, resize, center_crop)
    return Dataset(torch.from_numpy(x), torch.tensor([label for _, label in files]), root.name, len(classes),
                   note=note)


class ImageFolder(torch.utils.data.Dataset):
    """A folder of images per class, read one image at a time (for :class:`adverse.streaming.Stream`).

    Construction reads every image once: it must decode, and all must have one size after the transform; each
    file's SHA-256 is kept (32 bytes per image, no pixels). ``folder[i]`` reads and decodes image ``i`` again and
    refuses it, naming the file, if its bytes changed since (a number would otherwise change silently between the
    audit's passes). Items are ``(x, label)`` with ``x`` float32 (channels, height, width) in [0, 1], grey images
    repeated to three channels when the folder holds colour ones.
    """

    def __init__(self, root: str | os.PathLike[str], image_size: int | None = None, resize: int | None = None,
                 center_crop: int | None = None) -> None:
        check_image_transform(image_size, resize, center_crop)
        self.root = Path(root)
        self.transform = (image_size, resize, center_crop)
        self.classes, files = _folder_files(self.root)
        self.files = [f for f, _ in files]
        self.labels = [label for _, label in files]
        self.digests: list[bytes] = []
        size, channels = None, 1
        for f in self.files:
            raw = _read_regular(f, "image")
            arr = _read_image(f, raw, self.transform, size)
            size, channels = arr.shape[1:], max(channels, arr.shape[0])
            self.digests.append(hashlib.sha256(raw).digest())
        self.size, self.channels = tuple(size), channels
        self.note = _folder_note(self.classes, channels, image_size, resize, center_crop)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        f = self.files[i]
        raw = _read_regular(f, "image")
        if hashlib.sha256(raw).digest() != self.digests[i]:
            raise InputError(f"{f} changed while it was being read (its bytes differ from the first pass); "
                             "audit a folder nothing writes to")
        arr = _read_image(f, raw, self.transform, self.size)
        if arr.shape[0] != self.channels:
            arr = np.repeat(arr, self.channels, axis=0)
        return torch.from_numpy(arr), self.labels[i]


_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NON_FINITE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)
LABEL_NAMES = ("label", "y", "target", "class")


def _numeric(cell: str) -> bool:
    c = cell.strip()
    return bool(_NUMBER.fullmatch(c) or _NON_FINITE.fullmatch(c))


def _label_index(path: Path, header: list[str] | None, ncols: int, label_column: str | int | None) -> tuple[int, str]:
    """The label column's index and how it was chosen (see :func:`load_data`)."""
    flag = "label_column= (--label-column)"
    if label_column is None:
        if header is None:
            return ncols - 1, "the last column holds the labels"
        hits = sorted({i for i, h in enumerate(header) if h.lower() in LABEL_NAMES})
        if len(hits) > 1:
            raise InputError(f"{path}: columns {[header[i] for i in hits]} could each be the label column; choose "
                             f"one with {flag}")
        if hits:
            return hits[0], f"labels from the column {header[hits[0]]!r}"
        return ncols - 1, (f"no column named {'/'.join(LABEL_NAMES)}: the last column, {header[-1]!r}, holds the "
                           "labels")
    if isinstance(label_column, bool) or not isinstance(label_column, (str, int)):
        raise InputError(f"label_column must be a column name or a 0-based column index, got {label_column!r}")
    if isinstance(label_column, str):
        wanted = label_column.strip()
        hits = [i for i, h in enumerate(header or []) if h.lower() == wanted.lower()]
        if len(hits) > 1:
            raise InputError(f"{path}: {len(hits)} columns are named {wanted!r}; rename them, or give "
                             f"{flag} as a 0-based column index")
        if hits:
            return hits[0], f"labels from the column {header[hits[0]]!r} (as asked)"  # type: ignore[index]
        if not re.fullmatch(r"[+-]?[0-9]+", wanted):
            if header is None:
                raise InputError(f"{path} has no header row (its first row holds only numbers), so {flag} must be "
                                 f"a 0-based column index such as 0 or -1, not {wanted!r}")
            raise InputError(f"{path} has no column named {wanted!r}; its columns are {header} (or give a 0-based "
                             "column index)")
        label_column = int(wanted)
    if not -ncols <= label_column < ncols:
        raise InputError(f"{path} has {ncols} columns, so the label column index must lie in {-ncols}…{ncols - 1}, "
                         f"got {label_column}")
    index = label_column % ncols
    name = f" ({header[index]!r})" if header is not None else ""
    return index, f"labels from column {index}{name} (as asked)"


def _csv(path: Path, bounds: tuple[float, float], label_column: str | int | None = None) -> Dataset:
    raw = _read_regular(path, "CSV file")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InputError(f"{path} is UTF-16 text; save it as UTF-8 (e.g. iconv -f utf-16 -t utf-8)")
    try:
        text = raw.decode("utf-8-sig")  # a leading byte-order mark is dropped, not read as part of a name
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise InputError(f"{path} is not UTF-8 text (byte 0x{raw[e.start]:02x} on line {line}); save it as UTF-8, "
                         f"e.g. iconv -f latin1 -t utf-8 {path.name} > utf8-{path.name}") from None
    del raw
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    ncols, label, how = 0, -1, ""
    values, lines = array.array("d"), array.array("q")
    try:
        for cells in reader:
            line = reader.line_num
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue  # a blank line
            if not ncols:  # the first row: a header when no cell is a number, data when every cell is one
                ncols = len(cells)
                numeric = [_numeric(c) for c in cells]
                if not any(numeric):
                    header = [c.strip() for c in cells]
                elif not all(numeric):
                    text_cells = [c for c, n in zip(cells, numeric) if not n]
                    raise InputError(
                        f"{path}, line {line}: the first row mixes numbers and text ({text_cells} are not numbers), "
                        "so it is neither a header nor data; if it is a header, give every column a name that is "
                        "not a number; if it is data, make every cell a number")
                if ncols < 2:
                    raise InputError(f"{path} has {ncols} column; it needs feature columns and a label column")
                label, how = _label_index(path, header, ncols, label_column)
                if header is not None:
                    continue
            if len(cells) != ncols:
                raise InputError(f"{path}, line {line}: {len(cells)} columns, but the "
                                 f"{'header' if header is not None else 'first row'} has {ncols}; every row needs "
                                 "the same columns")
            for c, cell in enumerate(cells):
                s = cell.strip()
                if not _NUMBER.fullmatch(s):
                    col = f"{c} ({header[c]!r})" if header is not None else str(c)
                    if _NON_FINITE.fullmatch(s):
                        raise InputError(f"{path}, line {line}, column {col}: {s!r} is not a finite number; fill "
                                         "or remove missing and infinite values")
                    raise InputError(f"{path}, line {line}, column {col}: {cell!r} is not a number; every value "
                                     "must be a number (encode categories as numbers)")
                values.append(float(s))
            lines.append(line)
            if len(values) * 8 > _data.MAX_ARRAY_BYTES:
                raise InputError(f"{path}: the values take more than {_data.MAX_ARRAY_BYTES:,} bytes "
                                 "(adverse.data.MAX_ARRAY_BYTES); split the file, or raise the limit")
    except csv.Error as e:
        raise InputError(f"{path}, line {reader.line_num}: not valid CSV ({e})") from None
    if not ncols:
        raise InputError(f"{path} is empty; a CSV needs rows of numbers: feature columns and a label column")
    if not lines:
        raise InputError(f"{path} has a header row but no data rows")
    table = np.frombuffer(values, dtype=np.float64).reshape(len(lines), ncols)
    bad = ~np.isfinite(table)
    if bad.any():  # e.g. 1e999
        r, c = np.argwhere(bad)[0]
        col = f"{c} ({header[c]!r})" if header is not None else str(c)
        raise InputError(f"{path}, line {lines[r]}, column {col}: the value is not a finite number (it overflows "
                         "a float64); fill or remove it")
    name = header[label] if header is not None else str(label)
    y = table[:, label]
    for problem, rows in (("is not an integer", y != np.round(y)), ("is negative", y < 0),
                          (f"is larger than {_data.MAX_LABEL}", y > _data.MAX_LABEL)):
        if rows.any():
            r = int(np.argmax(rows))
            raise InputError(f"{path}, line {lines[r]}: the label {y[r]:g} in column {name!r} {problem}; labels "
                             f"are class indices 0, 1, 2, … ({how}; choose another with label_column= / "
                             "--label-column)")
    x64 = np.delete(table, label, axis=1)
    lo, hi = bounds
    outside = (x64 < lo) | (x64 > hi)
    if outside.any():
        r, c = np.argwhere(outside)[0]
        c = c + (c >= label)
        col = f"{c} ({header[c]!r})" if header is not None else str(c)
        raise InputError(f"{path}, line {lines[r]}, column {col}: {table[r, c]:g} is not inside bounds {bounds}; "
                         "features must be finite and inside bounds: scale them first")
    note = f"CSV: {'a header row' if header is not None else 'no header row (the first row is data)'}; {how}"
    return Dataset(torch.from_numpy(x64.astype(np.float32)), torch.from_numpy(y.astype(np.int64)), path.stem,
                   int(y.max()) + 1, bounds, note)


def load_data(
    spec: str | Path, *, bounds: tuple[float, float] = (0.0, 1.0), label_column: str | int | None = None,
    image_size: int | None = None, resize: int | None = None, center_crop: int | None = None, stream: bool = False,
) -> Dataset | Stream:
    """A dataset from a bundled name (``digits``, ``digits:train``, ``tabular``, ``tabular:train``; the test
    split by default), an ``.npz`` file, a ``.csv`` file or a folder of images per class (see the module
    docstring for what each may hold, and for the size limits).

    ``label_column`` names a CSV's label column (case-insensitively) or gives its 0-based index (negative counts
    from the end; a string of digits is an index unless a column has that name); by default the column named
    ``label``, ``y``, ``target`` or ``class`` (any case), else the last column. How the file was read is in the
    returned dataset's ``note``. Raises :class:`InputError`, naming the file (and the line and column), for
    anything it cannot read exactly.

    For a folder of images, ``image_size`` N resizes every image to N×N, ``resize`` N its shorter side to N
    (aspect kept), and ``center_crop`` C then takes its C×C centre; the ImageNet recipe is ``resize=256,
    center_crop=224`` (``--resize 256 --center-crop 224``). Resizing is Pillow's ``Image.resize`` with the
    ``Image.BILINEAR`` filter (antialiased when shrinking, as Pillow does), applied per channel to the float
    pixels after mode conversion (see :func:`_transform`). Without them, images of different sizes are refused.

    ``stream=True`` reads a folder of images one image at a time (:class:`ImageFolder` in an
    :class:`adverse.streaming.Stream`): memory does not grow with the number of images. Every image is decoded and
    checked once up front; the pixels are read again on each pass over the data. Other data is loaded in memory.
    """
    check_image_transform(image_size, resize, center_crop)
    transform = image_size is not None or resize is not None or center_crop is not None
    text = str(spec)
    name, _, split = text.partition(":")
    p = Path(spec)
    if label_column is not None and p.suffix.lower() != ".csv":
        raise InputError(f"label_column (--label-column) applies to CSV files only, not to {text}")
    if name in ("digits", "tabular") and not p.exists():
        split = split or "test"
        if split not in ("train", "test"):
            raise InputError(f"unknown split {split!r}; use {name}:train or {name}:test")
        if transform:
            raise InputError(f"--image-size, --resize and --center-crop apply to folders of images, not to {text}")
        return digits(split) if name == "digits" else tabular(split)
    if p.is_dir():
        if stream:
            from .streaming import Stream

            folder = ImageFolder(p, image_size, resize, center_crop)
            return Stream(folder, name=p.name, num_classes=len(folder.classes), note=folder.note)
        return _image_folder(p, image_size, resize, center_crop)
    if transform:
        raise InputError(f"--image-size, --resize and --center-crop apply to folders of images, not to {text}")
    if not p.exists():
        raise InputError(f"no such data file or folder: {p}; or name a bundled set: digits, tabular")
    if p.suffix.lower() == ".npz":
        return load_npz(p, bounds)
    if p.suffix.lower() == ".csv":
        return _csv(p, bounds, label_column)
    raise InputError(f"{p}: unknown data format; use .npz (x, y), .csv, or a folder of images per class")
