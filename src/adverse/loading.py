"""Users' own models and data, loaded without running code they did not name.

Models (:func:`load_model`):

==========================  ==================================================================================
``.safetensors``            weights only; the architecture comes from ``arch``: a name from :mod:`adverse.zoo`
                            (``SmallCNN``, ``MLP``, or a recipe such as ``digits-cnn``) or a Python path
                            ``package.module:factory`` that the user names (called with no arguments)
``.pt2``                    a ``torch.export`` archive (graph and weights, no Python code)
TorchScript (``.pt`` …)     a ``torch.jit.save`` archive (TorchScript code, not pickled Python objects)
``.pt`` / ``.pth`` / …      a ``torch.save``'d state dict, read with ``torch.load(weights_only=True)``; needs
                            ``arch``. A pickled module is refused unless ``trust_pickle=True``: unpickling runs
                            whatever code the file names
``.onnx``                   a torch module (white box) when onnx2torch is installed; otherwise a
                            :class:`~adverse.models.BlackBox` that runs the graph with onnxruntime on the CPU
                            (``pip install 'adverse[onnx]'``): score-based attacks only, no gradients
==========================  ==================================================================================

A black box from an ``.onnx`` file is told apart by :func:`is_black_box` (or ``isinstance(model, BlackBox)``);
it also carries ``source_format = "onnx"``, ``white_box = False`` and ``path``. ONNX files hold a graph and
weights only, so loading one runs no Python code from the file.

Data (:func:`load_data`): the bundled sets by name (``digits``, ``digits:train``, ``tabular``), ``.npz`` files
with ``x`` and ``y``, a folder of images with one sub-folder per class (read with Pillow), and CSV files with a
header whose label column is ``label`` (or ``y``, or else the last column).
"""

from __future__ import annotations

import csv
import importlib
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import Dataset, digits, load_npz, tabular
from .errors import InputError, ModelError
from .models import BlackBox

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


def build_architecture(arch: str) -> nn.Module:
    """An untrained module from ``arch``: a zoo class or recipe name, or ``package.module:factory``."""
    from . import zoo

    if ":" in arch:
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


def _with_weights(model: nn.Module, state: Any, path: Path) -> nn.Module:
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ModelError(f"{path} does not hold a state dict of tensors")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(f"{path} does not match the architecture: {str(e).splitlines()[0]} "
                         "(check --arch)") from e
    return model


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n for n in z.namelist())


def load_model(
    path: str | Path, *, arch: str | None = None, trust_pickle: bool = False
) -> nn.Module | BlackBox:
    """Load a model file in eval mode; see the module docstring for the formats.

    Returns a ``torch.nn.Module``, except for an ``.onnx`` file without onnx2torch installed: then a
    :class:`~adverse.models.BlackBox` (check with :func:`is_black_box`).

    Raises :class:`ModelError` for a missing file, a format that needs ``arch`` without it, weights that do
    not fit the architecture, a malformed file, and a pickled object when ``trust_pickle`` is False (nothing
    in the file runs).
    """
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"no such model file: {p}")
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
        return _with_weights(build_architecture(arch), state, p).eval()
    if suffix == ".pt2":
        try:
            return torch.export.load(str(p)).module()
        except Exception as e:
            raise ModelError(f"{p} is not a torch.export archive ({type(e).__name__}: {e})") from e
    if suffix == ".onnx":
        return load_onnx(p)
    if _is_torchscript(p):
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
    return _with_weights(build_architecture(arch), state, p).eval()


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
def _image_folder(root: Path) -> Dataset:
    from PIL import Image, UnidentifiedImageError

    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise InputError(f"{root} has no class sub-folders; put each class's images in its own folder")
    xs, ys, size, mode = [], [], None, None
    for label, name in enumerate(classes):
        for f in sorted((root / name).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(f) as im:
                    im.load()
                    mode = mode or ("L" if im.mode in ("1", "L", "I;16", "I") else "RGB")
                    arr = np.asarray(im.convert(mode), dtype=np.float32) / 255.0
            except (UnidentifiedImageError, OSError) as e:
                raise InputError(f"{f} is not a readable image ({e})") from e
            if size is None:
                size = arr.shape
            elif arr.shape != size:
                raise InputError(f"{f} has shape {arr.shape[:2]}, others {size[:2]}; resize the images to one size")
            xs.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
            ys.append(label)
    if not xs:
        raise InputError(f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return Dataset(torch.from_numpy(np.stack(xs)), torch.tensor(ys), root.name, len(classes))


def _csv(path: Path, bounds: tuple[float, float]) -> Dataset:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        raise InputError(f"{path} needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    label = next((header.index(k) for k in ("label", "y") if k in header), len(header) - 1)
    try:
        table = np.array([[float(v) for v in r] for r in rows[1:] if r], dtype=np.float64)
    except ValueError as e:
        raise InputError(f"{path}: every value must be a number ({e}); encode categories as numbers") from e
    if table.ndim != 2 or table.shape[1] != len(header):
        raise InputError(f"{path}: rows have different numbers of columns")
    y = table[:, label]
    x = np.delete(table, label, axis=1).astype(np.float32)
    if not np.all(y == np.round(y)) or y.min() < 0:
        raise InputError(f"{path}: the label column {header[label]!r} must hold integers ≥ 0")
    lo, hi = bounds
    if not np.isfinite(x).all() or x.min() < lo or x.max() > hi:
        raise InputError(f"{path}: features must be finite and inside bounds {bounds}; scale them first")
    return Dataset(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)), path.stem, int(y.max()) + 1, bounds)


def load_data(spec: str | Path, *, bounds: tuple[float, float] = (0.0, 1.0)) -> Dataset:
    """A dataset from a bundled name (``digits``, ``digits:train``, ``tabular``, ``tabular:train``; the test
    split by default), an ``.npz`` file, a ``.csv`` file or a folder of images per class."""
    text = str(spec)
    name, _, split = text.partition(":")
    if name in ("digits", "tabular") and not Path(text).exists():
        split = split or "test"
        if split not in ("train", "test"):
            raise InputError(f"unknown split {split!r}; use {name}:train or {name}:test")
        return digits(split) if name == "digits" else tabular(split)
    p = Path(spec)
    if p.is_dir():
        return _image_folder(p)
    if not p.is_file():
        raise InputError(f"no such data file or folder: {p}; or name a bundled set: digits, tabular")
    if p.suffix.lower() == ".npz":
        return load_npz(p, bounds)
    if p.suffix.lower() == ".csv":
        return _csv(p, bounds)
    raise InputError(f"{p}: unknown data format; use .npz (x, y), .csv, or a folder of images per class")
