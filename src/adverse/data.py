"""Data: the bundled digits set, a synthetic tabular task, and a loader for users' ``.npz`` files.

Everything here works offline: the digits come with scikit-learn, the tabular task is generated.
Images are scaled into [0, 1] and shaped (n, channels, height, width); tabular features are scaled into
[0, 1] with the training split's minimum and maximum.

Users' data files are untrusted input. The loaders here and in :mod:`adverse.loading` read regular files only
(never a FIFO, a device or a folder; checked with ``fstat`` on a non-blocking descriptor before any byte is read)
and keep to these limits, read at every call, so a program may raise them (``adverse.data.MAX_FILE_BYTES = ...``):

``MAX_FILE_BYTES``    4 GiB: the largest data file (``.npz``, ``.csv``, one image) read
``MAX_ARRAY_BYTES``   4 GiB: the most bytes the decoded data may take (an ``.npz``'s ``x`` and ``y`` as stored,
                      checked against the sizes the archive declares *before* anything is allocated; a CSV's
                      values as float64; an image folder as float32)
``MAX_IMAGE_PIXELS``  2**26 (67,108,864, e.g. 8192 × 8192): the most pixels one image may declare
``MAX_LABEL``         2**31 - 1: the largest class label
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from . import files
from .errors import InputError

SPLITS = ("train", "test")
MAX_FILE_BYTES = 4 * 2**30
MAX_ARRAY_BYTES = 4 * 2**30
MAX_IMAGE_PIXELS = 2**26
MAX_LABEL = 2**31 - 1


@dataclass
class Dataset:
    """Inputs ``x`` (float32, inside ``bounds``), integer labels ``y``, and what they are."""

    x: torch.Tensor
    y: torch.Tensor
    name: str
    num_classes: int
    bounds: tuple[float, float] = (0.0, 1.0)
    note: str = ""  # how a loader read the file: e.g. which CSV column holds the labels, whether it had a header

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, n: int) -> Dataset:
        """The first ``n`` samples."""
        return Dataset(self.x[:n], self.y[:n], self.name, self.num_classes, self.bounds, self.note)

    # the reading interface shared with adverse.streaming.Stream, which reads data batch by batch
    take = subset

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one input."""
        return tuple(self.x.shape[1:])

    def batches(self, batch_size: int, stop: int | None = None) -> Iterator[tuple[int, int, torch.Tensor,
                                                                                   torch.Tensor]]:
        """``(start, stop, x, y)`` for consecutive batches of the first ``stop`` samples (all by default)."""
        stop = len(self) if stop is None else min(stop, len(self))
        for a in range(0, stop, batch_size):
            b = min(a + batch_size, stop)
            yield a, b, self.x[a:b], self.y[a:b]

    def select(self, index: Sequence[int] | torch.Tensor) -> Dataset:
        """The samples at ``index``, in that order."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return Dataset(self.x[idx], self.y[idx], self.name, self.num_classes, self.bounds, self.note)


def _split(x: np.ndarray, y: np.ndarray, split: str, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    if split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS}, got {split!r}")
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    return (x_tr, y_tr) if split == "train" else (x_te, y_te)


def digits(split: str = "train", test_size: float = 0.3, seed: int = 0) -> Dataset:
    """scikit-learn's 8×8 handwritten digits (1,797 images, 10 classes) as (n, 1, 8, 8) tensors in [0, 1].

    The split is stratified and fixed by ``seed`` (train 1,257 / test 540 at the defaults).
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    xs, ys = _split(x, bunch.target.astype(np.int64), split, test_size, seed)
    return Dataset(torch.from_numpy(xs.copy()), torch.from_numpy(ys.copy()), "digits", 10)


def tabular(
    split: str = "train", n_samples: int = 2000, n_features: int = 20, n_classes: int = 2,
    test_size: float = 0.3, seed: int = 0,
) -> Dataset:
    """A synthetic tabular classification task (``sklearn.datasets.make_classification``), features in [0, 1]."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=n_samples, n_features=n_features, n_informative=max(2, n_features // 2),
        n_redundant=n_features // 4, n_classes=n_classes, random_state=seed,
    )
    x_tr, _ = _split(x, y, "train", test_size, seed)
    lo, hi = x_tr.min(axis=0), x_tr.max(axis=0)
    xs, ys = _split(x, y, split, test_size, seed)
    xs = np.clip((xs - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0, 1.0).astype(np.float32)
    return Dataset(torch.from_numpy(xs), torch.from_numpy(ys.astype(np.int64)), "tabular", n_classes)


def purchase_like(n_samples: int = 4000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The synthetic "Purchase-like" membership-inference task (20 classes, 100 features, 30 informative, one
    cluster per class, no label noise; ``sklearn.datasets.make_classification``): small MLPs overfit it the way
    they overfit Purchase-100, so membership attacks separate clearly. Features are left unscaled (they are
    never attacked with an eps budget). Returns ``(x, y)``: float32 (n, 100) and int64 (n,)."""
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=n_samples, n_features=100, n_informative=30, n_redundant=0, n_classes=20,
                               n_clusters_per_class=1, flip_y=0, class_sep=1.5, random_state=seed)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def open_regular(path: str | Path, what: str = "data file") -> BinaryIO:
    """``path`` opened for reading in binary, after checking that it is a regular file of at most
    ``MAX_FILE_BYTES`` (:func:`adverse.files.open_regular`: a FIFO, a device, a socket or a folder is refused
    without blocking)."""
    return files.open_regular(path, what, MAX_FILE_BYTES, limit_hint="(adverse.data.MAX_FILE_BYTES); split the "
                              "data, or raise the limit if you trust the file")


_NPZ_FIX = "save data with numpy.savez(path, x=x, y=y)"


def _npy_member(z: zipfile.ZipFile, key: str, p: Path, budget: int) -> np.ndarray:
    """Array ``key`` of the archive: the ``.npy`` header is read and checked (plain numeric dtype, declared size
    within the member's size and ``budget``) before the data is read; nothing is unpickled."""
    info = z.getinfo(f"{key}.npy")
    if info.file_size > budget:
        raise InputError(f"{p}: array {key!r} takes {info.file_size:,} bytes uncompressed, more than the limit of "
                         f"{budget:,} (adverse.data.MAX_ARRAY_BYTES); split the data, or raise the limit if you "
                         "trust the file")
    with z.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:  # 3.0 exists only for structured dtypes with non-Latin-1 field names, refused below anyway
            raise InputError(f"{p}: array {key!r} uses .npy format {version}; store plain numeric arrays "
                             f"({_NPZ_FIX})")
        if dtype.hasobject:
            raise InputError(f"{p} holds object arrays ({key!r}) that need pickle to load, and adverse loads "
                             "with allow_pickle=False; store plain numeric arrays")
        if dtype.fields is not None or dtype.subdtype is not None:
            raise InputError(f"{p}: array {key!r} has a structured dtype {dtype}; store plain numeric arrays")
        if key == "x" and dtype.kind not in "iuf":
            raise InputError(f"{p}: x must be finite numbers (integers or floats), got dtype {dtype} "
                             f"({_KINDS.get(dtype.kind, 'not a number')}); store x as float32")
        if key == "y" and dtype.kind not in "iu":
            raise InputError(f"{p}: labels y must be integers, got {dtype}; store y as int64")
        if any(d < 0 for d in shape):
            raise InputError(f"{p}: array {key!r} declares an invalid shape {shape}; the file is damaged")
        nbytes = math.prod(shape) * dtype.itemsize
        stored = info.file_size - f.tell()
        if nbytes != stored:
            raise InputError(f"{p}: array {key!r} declares shape {shape} of {dtype} ({nbytes:,} bytes) but the "
                             f"archive holds {stored:,} bytes for it; the file is truncated or damaged: {_NPZ_FIX}")
        raw = f.read(nbytes)
        if len(raw) != nbytes or f.read(1):  # reading to the end also checks the member's CRC-32
            raise InputError(f"{p}: array {key!r} is truncated or damaged; {_NPZ_FIX}")
    arr = np.frombuffer(raw, dtype=dtype)
    return arr.reshape(shape[::-1]).transpose() if fortran else arr.reshape(shape)


_KINDS = {"c": "complex", "U": "strings", "S": "bytes", "b": "booleans", "M": "dates", "m": "time spans",
          "V": "raw bytes"}


def load_npz(path: str | Path, bounds: tuple[float, float] = (0.0, 1.0)) -> Dataset:
    """Load ``x`` (n, ...) and ``y`` (n,) arrays from a ``.npz`` file, refusing anything else.

    Raises :class:`InputError` if the file is missing or not a regular file, larger than ``MAX_FILE_BYTES``,
    not an ``.npz`` archive, truncated or damaged (bad CRC, bad compressed data, a header that declares more
    data than the file holds), lacks ``x`` or ``y``, holds object arrays (which would need pickle: adverse loads
    with ``allow_pickle=False``), structured, complex or string arrays, arrays larger than ``MAX_ARRAY_BYTES``
    (checked from the headers before anything is allocated), has mismatched lengths, no samples, labels that
    are not integers in [0, ``MAX_LABEL``], non-finite inputs, or inputs outside ``bounds``.
    """
    p = Path(path)
    if not p.exists() or p.is_dir():
        raise InputError(f"no such file: {p}")
    with open_regular(p, ".npz file") as fh:
        if not zipfile.is_zipfile(fh):
            raise InputError(f"{p} is not an .npz archive; {_NPZ_FIX}")
        fh.seek(0)
        try:
            with zipfile.ZipFile(fh) as z:
                names = set(z.namelist())
                missing = sorted(k for k in ("x", "y") if f"{k}.npy" not in names)
                if missing:
                    raise InputError(f"{p} lacks array(s) {missing}; {_NPZ_FIX}")
                x = _npy_member(z, "x", p, MAX_ARRAY_BYTES)
                y = _npy_member(z, "y", p, MAX_ARRAY_BYTES - x.nbytes)
        except InputError:
            raise
        except Exception as e:  # zipfile, zlib, bz2, lzma and numpy's header parser raise many types on damage
            raise InputError(f"{p} is a damaged .npz archive ({type(e).__name__}: {e}); {_NPZ_FIX}") from e
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
        raise InputError(f"{p}: need x of shape (n, ...) and y of shape (n,), got {x.shape} and {y.shape}")
    if len(y) == 0:
        raise InputError(f"{p}: x and y hold no samples")
    if not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise InputError(f"{p}: x must be finite numbers; x[{', '.join(map(str, bad))}] is {x[tuple(bad)]}")
    lo, hi = bounds
    if x.min() < lo or x.max() > hi:
        raise InputError(f"{p}: x lies outside bounds {bounds} (min {x.min():.4g}, max {x.max():.4g}); rescale it")
    if y.min() < 0 or y.max() > MAX_LABEL:
        raise InputError(f"{p}: labels must be ≥ 0 and ≤ {MAX_LABEL} (class indices), got min {y.min()} and max "
                         f"{y.max()}")
    return Dataset(  # copies: C order, writable (the arrays read from the file are read-only views)
        torch.from_numpy(np.array(x, dtype=np.float32, order="C")), torch.from_numpy(np.array(y, dtype=np.int64)),
        p.stem, int(y.max()) + 1, bounds,
    )
