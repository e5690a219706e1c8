"""Data read batch by batch: a ``torch.utils.data.Dataset``, a ``DataLoader`` or a folder of images, streamed so
that memory does not grow with the number of samples.

:class:`Stream` gives the audit and its suites the same three ways of reading that an in-memory
:class:`adverse.data.Dataset` has:

* :meth:`Stream.batches` — ``(start, stop, x, y)`` for consecutive batches of a chosen size, in the data's order
  (read again on every call: nothing is kept);
* :meth:`Stream.take` — the first ``n`` samples as an in-memory :class:`~adverse.data.Dataset`;
* :meth:`Stream.select` — given sample indices as an in-memory :class:`~adverse.data.Dataset`.

A map-style dataset is read by index (through a ``DataLoader`` without shuffling); a ``DataLoader`` the caller
built is iterated as it is (its workers, its collate function) and re-batched, so it must not shuffle (the same
sample must come at the same place on every pass: a shuffling loader is refused). An item or a batch is a pair
``(x, y)`` or a mapping with the inputs under ``pixel_values``/``x``/``input``/``image`` and the labels under
``labels``/``label``/``y``/``target``. Every batch is checked: float inputs of one shape, finite and inside
``bounds``; integer labels in ``[0, num_classes)``.

:func:`as_data` turns whatever a user passes (a :class:`~adverse.data.Dataset`, a pair ``(x, y)`` of tensors or
arrays, a torch ``Dataset``, a ``DataLoader``, a :class:`Stream`) into a :class:`~adverse.data.Dataset` or a
:class:`Stream`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .data import Dataset
from .errors import InputError

X_KEYS = ("pixel_values", "x", "input", "inputs", "image")
Y_KEYS = ("labels", "label", "y", "target")
READ_BATCH = 256
"""Samples per read when the source is a map-style dataset (a user's ``DataLoader`` keeps its own batch size)."""


def _pair(item: Any, where: str) -> tuple[Any, Any]:
    """``(x, y)`` of one item or batch: a pair, or a mapping with known keys."""
    if isinstance(item, Mapping):
        xk = next((k for k in X_KEYS if k in item), None)
        yk = next((k for k in Y_KEYS if k in item), None)
        if xk is None or yk is None:
            raise InputError(f"{where} is a mapping with keys {sorted(map(str, item))}; adverse reads the inputs "
                             f"from one of {X_KEYS} and the labels from one of {Y_KEYS}")
        return item[xk], item[yk]
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return item[0], item[1]
    raise InputError(f"{where} is a {type(item).__name__}; a dataset item or batch must be a pair (x, y) or a "
                     f"mapping with {X_KEYS[0]!r} and {Y_KEYS[0]!r}")


def _tensor(v: Any, what: str, where: str) -> torch.Tensor:
    if isinstance(v, np.ndarray):
        v = torch.from_numpy(np.ascontiguousarray(v))
    elif isinstance(v, (int, np.integer)) and what == "labels":
        v = torch.tensor(int(v))
    if not torch.is_tensor(v):
        raise InputError(f"{where}: the {what} are a {type(v).__name__}; return tensors or numpy arrays")
    return v


class Stream:
    """A dataset read in batches (see the module docstring).

    Parameters
    ----------
    source : a map-style ``torch.utils.data.Dataset`` (``__len__`` and ``__getitem__``), an iterable dataset
        with ``__len__``, or a ``DataLoader`` that does not shuffle.
    name : what the data is called in the results.
    num_classes : the number of classes; None takes the model's output size (the audit sets it).
    bounds : the range every input must lie in.
    note : how the data was read (e.g. by :func:`adverse.loading.load_data`).
    """

    def __init__(self, source: Any, *, name: str = "user data", num_classes: int | None = None,
                 bounds: tuple[float, float] = (0.0, 1.0), note: str = "") -> None:
        from torch.utils.data import DataLoader, IterableDataset, RandomSampler

        if isinstance(source, DataLoader):
            if isinstance(source.sampler, RandomSampler) or (
                    source.batch_sampler is not None and isinstance(source.batch_sampler.sampler, RandomSampler)):
                raise InputError("the DataLoader shuffles (shuffle=True); pass one with shuffle=False: the audit "
                                 "reads the data more than once and each sample must keep its place")
            dataset = source.dataset
        else:
            dataset = source
        if not (hasattr(dataset, "__getitem__") or isinstance(dataset, IterableDataset)):
            raise InputError(f"data must be a torch Dataset or DataLoader (or an adverse Dataset, or (x, y)), got "
                             f"{type(source).__name__}")
        try:
            length = len(source.dataset if isinstance(source, DataLoader) else source)
        except TypeError:
            raise InputError(f"the data ({type(dataset).__name__}) has no length; give the dataset a __len__ "
                             "so the audit can plan its batches") from None
        if length == 0:
            raise InputError("the data holds no samples")
        self.source, self.name, self.num_classes, self.bounds, self.note = source, name, num_classes, bounds, note
        self._length = int(length)
        self._loader = isinstance(source, DataLoader)
        self._mapped = not self._loader and not isinstance(dataset, IterableDataset)
        self._shape: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return self._length

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one input (read from the first sample when no batch was read yet)."""
        if self._shape is None:
            self.take(1)
        assert self._shape is not None
        return self._shape

    def __repr__(self) -> str:
        return f"Stream({self.name!r}, n={self._length})"

    def _raw(self, start: int = 0, stop: int | None = None,
             read: int = READ_BATCH) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches as the source gives them (a map-style dataset from ``start``, ``read`` items at a time),
        unchecked."""
        from torch.utils.data import DataLoader, Subset

        stop = self._length if stop is None else stop
        if self._mapped:
            part = self.source if start == 0 and stop == self._length else Subset(self.source, range(start, stop))
            loader = DataLoader(part, batch_size=read, shuffle=False, num_workers=0)
        elif self._loader:
            loader = self.source
        else:  # an iterable dataset: items one by one
            loader = DataLoader(self.source, batch_size=READ_BATCH, num_workers=0)
        for batch in loader:
            yield _pair(batch, f"a batch of {self.name}")

    def _check(self, x: Any, y: Any, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        where = f"{self.name}, samples from {start}"
        x, y = _tensor(x, "inputs", where), _tensor(y, "labels", where)
        if y.dim() == 0:
            y = y.reshape(1)
        if x.dim() < 2 or y.dim() != 1 or x.shape[0] != y.shape[0]:
            raise InputError(f"{where}: inputs {tuple(x.shape)} and labels {tuple(y.shape)} must be (batch, ...) "
                             "and (batch,)")
        if not x.is_floating_point():
            raise InputError(f"{where}: the inputs are {x.dtype}; return float tensors in {self.bounds} (e.g. "
                             "ToTensor() scales 8-bit images into [0, 1])")
        if y.is_floating_point() or y.dtype == torch.bool:
            raise InputError(f"{where}: the labels are {y.dtype}; return integer class indices")
        if self._shape is None:
            self._shape = tuple(x.shape[1:])
        elif tuple(x.shape[1:]) != self._shape:
            raise InputError(f"{where}: inputs of shape {tuple(x.shape[1:])}, earlier ones {self._shape}; every "
                             "sample must have the same shape (resize them, e.g. --image-size)")
        if not bool(torch.isfinite(x).all()):
            raise InputError(f"{where}: the inputs hold NaN or infinite values")
        lo, hi = self.bounds
        if x.numel() and (float(x.min()) < lo or float(x.max()) > hi):
            raise InputError(f"{where}: inputs outside bounds {self.bounds} (min {float(x.min()):.4g}, max "
                             f"{float(x.max()):.4g}); scale them into the bounds, and put normalization inside the "
                             "model (--mean/--std, adverse.Normalize)")
        if y.numel() and (int(y.min()) < 0 or (self.num_classes is not None and int(y.max()) >= self.num_classes)):
            raise InputError(f"{where}: labels from {int(y.min())} to {int(y.max())}, but the model has "
                             f"{self.num_classes} classes; labels must be class indices 0…{self.num_classes - 1}")
        return x.float(), y.long()

    def batches(self, batch_size: int, stop: int | None = None) -> Iterator[tuple[int, int, torch.Tensor,
                                                                                   torch.Tensor]]:
        """``(start, stop, x, y)`` for consecutive batches of ``batch_size`` samples (the last may be smaller) of
        the first ``stop`` samples (all by default), read afresh and checked."""
        stop = self._length if stop is None else min(stop, self._length)
        xs: list[torch.Tensor] = []
        ys: list[torch.Tensor] = []
        held, done = 0, 0
        for xb, yb in self._raw(0, stop if self._mapped else None, read=batch_size):
            xb, yb = self._check(xb, yb, done + held)
            xs.append(xb)
            ys.append(yb)
            held += xb.shape[0]
            while held >= batch_size or (held and done + held >= stop):
                # a map-style source is read in batches of this size: nothing to join then
                x, y = (xs[0], ys[0]) if len(xs) == 1 else (torch.cat(xs), torch.cat(ys))
                k = min(batch_size, stop - done)
                yield done, done + k, x[:k], y[:k]
                done += k
                xs, ys, held = ([x[k:]], [y[k:]], x.shape[0] - k) if done < stop else ([], [], 0)
            if done >= stop:
                return
        if done < stop:
            raise InputError(f"{self.name} gave {done} samples but says it holds {self._length}; its __len__ and "
                             "its items disagree")

    def take(self, n: int) -> Dataset:
        """The first ``n`` samples in memory."""
        n = min(int(n), self._length)
        parts = [(x, y) for _, _, x, y in self.batches(min(n, READ_BATCH), stop=n)]
        return self._dataset(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))

    def select(self, index: Sequence[int] | torch.Tensor) -> Dataset:
        """The samples at ``index`` (in that order) in memory: one pass over the data."""
        idx = torch.as_tensor(index, dtype=torch.long).flatten()
        if idx.numel() == 0:
            raise InputError("select needs at least one index")
        if int(idx.min()) < 0 or int(idx.max()) >= self._length:
            raise InputError(f"indices must lie in [0, {self._length}), got {int(idx.min())}…{int(idx.max())}")
        wanted = torch.zeros(self._length, dtype=torch.bool)
        wanted[idx] = True
        stop = int(idx.max()) + 1
        xs, ys, at = [], [], []
        for a, b, x, y in self.batches(READ_BATCH, stop=stop):
            keep = wanted[a:b]
            if keep.any():
                xs.append(x[keep])
                ys.append(y[keep])
                at.append(torch.arange(a, b)[keep])
        order = torch.cat(at)
        position = torch.empty(self._length, dtype=torch.long)
        position[order] = torch.arange(order.numel())
        rows = position[idx]
        return self._dataset(torch.cat(xs)[rows], torch.cat(ys)[rows])

    def _dataset(self, x: torch.Tensor, y: torch.Tensor) -> Dataset:
        k = self.num_classes if self.num_classes is not None else int(y.max()) + 1
        return Dataset(x, y, self.name, k, self.bounds, self.note)


def as_data(data: Any, name: str = "user data") -> Dataset | Stream:
    """``data`` as an in-memory :class:`~adverse.data.Dataset` (a ``Dataset`` or a pair ``(x, y)``) or a
    :class:`Stream` (a torch ``Dataset`` or ``DataLoader``, or a ``Stream``)."""
    if isinstance(data, (Dataset, Stream)):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(x))
        if isinstance(y, np.ndarray):
            y = torch.from_numpy(np.ascontiguousarray(y))
        if not (torch.is_tensor(x) and torch.is_tensor(y)):
            raise InputError("data=(x, y) needs tensors or numpy arrays")
        if y.dim() != 1 or y.is_floating_point() or y.dtype == torch.bool:
            raise InputError(f"labels y must be a 1-D integer array, got shape {tuple(y.shape)} and {y.dtype}")
        if x.dim() < 1 or x.shape[0] != y.shape[0]:
            raise InputError(f"x has {x.shape[0] if x.dim() else 0} samples but y has {y.shape[0]}; pass one label "
                             "per sample")
        num_classes = int(y.max()) + 1 if y.numel() else 0
        return Dataset(x, y.long(), name, num_classes)
    from torch.utils.data import DataLoader
    from torch.utils.data import Dataset as TorchDataset

    if isinstance(data, (DataLoader, TorchDataset)):
        return Stream(data, name=name)
    raise InputError(
        f"data must be an adverse.data.Dataset, a pair (x, y), a torch Dataset or a DataLoader, got "
        f"{type(data).__name__}; e.g. adverse.data.load_npz('test.npz')"
    )


def bound_heap_growth(threshold: int = 1 << 20) -> bool:
    """Ask glibc's allocator to serve every block of at least ``threshold`` bytes with its own ``mmap``
    (``mallopt(M_MMAP_THRESHOLD)``), so that a batch's buffers go back to the operating system when freed.

    By default glibc raises that threshold after each large free (up to 32 MiB), after which batch-sized tensors
    come from the heap, which fragments: a streamed audit's resident memory then creeps up with the number of
    batches read instead of staying at a few batches' worth. Fixing the threshold keeps the peak flat
    (``benchmarks/bench_stream_memory.py``). The command line calls this; a Python user may, for their own
    process. Returns whether it applied (glibc on Linux only; elsewhere nothing changes).
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, int(threshold)))  # -3: M_MMAP_THRESHOLD in glibc's malloc.h
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
