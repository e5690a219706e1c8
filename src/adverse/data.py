"""Data: the bundled digits set, a synthetic tabular task, and a loader for users' ``.npz`` files.

Everything here works offline: the digits come with scikit-learn, the tabular task is generated.
Images are scaled into [0, 1] and shaped (n, channels, height, width); tabular features are scaled into
[0, 1] with the training split's minimum and maximum.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import InputError

SPLITS = ("train", "test")


@dataclass
class Dataset:
    """Inputs ``x`` (float32, inside ``bounds``), integer labels ``y``, and what they are."""

    x: torch.Tensor
    y: torch.Tensor
    name: str
    num_classes: int
    bounds: tuple[float, float] = (0.0, 1.0)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, n: int) -> Dataset:
        """The first ``n`` samples."""
        return Dataset(self.x[:n], self.y[:n], self.name, self.num_classes, self.bounds)


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


def load_npz(path: str | Path, bounds: tuple[float, float] = (0.0, 1.0)) -> Dataset:
    """Load ``x`` (n, ...) and ``y`` (n,) arrays from a ``.npz`` file, refusing anything else.

    Raises :class:`InputError` if the file is missing, not an ``.npz`` archive, lacks ``x`` or ``y``, holds
    object arrays (which would need pickle), has mismatched lengths, non-integer labels, non-finite inputs, or
    inputs outside ``bounds``.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"no such file: {p}")
    if not zipfile.is_zipfile(p):
        raise InputError(f"{p} is not an .npz archive; save data with numpy.savez(path, x=x, y=y)")
    try:
        with np.load(p, allow_pickle=False) as f:
            missing = {"x", "y"} - set(f.files)
            if missing:
                raise InputError(f"{p} lacks array(s) {sorted(missing)}; save with numpy.savez(path, x=x, y=y)")
            x, y = f["x"], f["y"]
    except ValueError as e:  # object arrays need pickle, which we refuse
        if isinstance(e, InputError):
            raise
        raise InputError(f"{p} holds object arrays that need pickle to load; store plain numeric arrays") from e
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
        raise InputError(f"{p}: need x of shape (n, ...) and y of shape (n,), got {x.shape} and {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"{p}: labels y must be integers, got {y.dtype}")
    if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
        raise InputError(f"{p}: x must be finite numbers")
    lo, hi = bounds
    if x.size and (x.min() < lo or x.max() > hi):
        raise InputError(f"{p}: x lies outside bounds {bounds} (min {x.min():.4g}, max {x.max():.4g}); rescale it")
    if len(y) and y.min() < 0:
        raise InputError(f"{p}: labels must be ≥ 0")
    return Dataset(
        torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64)), p.stem,
        int(y.max()) + 1 if len(y) else 0, bounds,
    )
