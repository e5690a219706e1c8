"""Reference (shadow) models: trained once on random halves of a data pool, reused by every attack.

Model ``k`` trains on the pool points where ``masks[k]`` is True (its IN set) and has never seen the others
(its OUT set). With ``pairing="complementary"`` (the default) models come in pairs that split one random
permutation of the pool into two halves, so every point is IN for exactly one model of each pair: with
``n ≥ 2`` every point has at least one IN and one OUT model, and with an even ``n`` exactly ``n / 2`` of
each (ML Privacy Meter trains its reference models the same way). An odd ``n`` adds one model on an
independent random half.

``pairing="independent"`` draws each model's half independently (as the LiRA paper does). Some points may
then have no IN or no OUT model (``uncovered()`` lists them); the documented **fallback** is the one
:func:`~adverse.privacy.lira` applies: such a point's missing mean is its other mean shifted by the average
IN−OUT gap over covered points, and its missing spread is the global (pooled) one.

Training runs through :mod:`adverse.execution`, every model under its own seed derived from ``seed``, so the
models do not depend on the caller's global RNG or on where they were trained.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import InputError, ModelError
from ..execution import Executor, Task, imap_tasks, map_tasks, spawn_seeds
from ..validation import validated
from ._signals import check_xy, model_logits

Tensor = torch.Tensor

PAIRINGS = ("complementary", "independent")


def _train_one(task: Task) -> Any:
    """Executor task: ``train_fn(x_in, y_in, seed)``."""
    train_fn, x, y = task.payload
    return train_fn(x, y, task.seed)


def _digest(x: Tensor) -> str:
    return hashlib.sha1(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest() + str(tuple(x.shape))


def _check_model(model: Any, what: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"{what} returned {type(model).__name__}, not a torch.nn.Module; train_fn(x, y, seed) must return "
            "the trained model (mapping inputs to logits)"
        )
    return model


def halves(n_models: int, n_points: int, pairing: str, seed: int) -> Tensor:
    """IN masks (n_models, n_points): each row marks a random half (``n_points // 2`` points) of the pool.

    ``complementary``: rows 2j and 2j+1 split one permutation into its two halves (an odd last row is an
    independent half). ``independent``: every row is an independent half.
    """
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n_models, n_points, dtype=torch.bool)
    half = n_points // 2
    k = 0
    while k < n_models:
        perm = torch.randperm(n_points, generator=g)
        masks[k, perm[:half]] = True
        if pairing == "complementary" and k + 1 < n_models:
            masks[k + 1, perm[half:]] = True
            k += 1
        k += 1
    return masks


class ReferenceModels:
    """Reference models trained on random halves of a pool, with their IN/OUT masks and cached outputs.

    Parameters
    ----------
    train_fn : ``train_fn(x, y, seed) -> nn.Module``: trains a fresh model (logits out) on ``(x, y)``. It runs
        with torch's global generator seeded by ``seed`` (and the caller's state restored), so default weight
        initialization is reproducible too.
    x_pool, y_pool : the pool (tensors) the reference models sample their training sets from.
    n : the number of reference models.
    seed : fixes the masks and every model's training seed.
    pairing : "complementary" (default; every point ≥ 1 IN and ≥ 1 OUT model when n ≥ 2) or "independent".
    executor : where training runs (:func:`adverse.execution.get_executor`): None or "local" = in-process.
    batch_size : batch size for reading model outputs.

    Attributes
    ----------
    masks : bool tensor (n, len(pool)); ``masks[k, i]`` is True when model k trained on pool point i.
    models : the trained models (trained on first use, then cached).
    seeds : each model's training seed.
    train_seconds : time spent training.
    baseline : the model :meth:`train_disjoint` trained on data disjoint from the pool (None before).

    References
    ----------
    Shokri et al., "Membership Inference Attacks against Machine Learning Models", IEEE S&P 2017 (shadow
    models). Carlini et al., "Membership Inference Attacks From First Principles", IEEE S&P 2022 (random-half
    reference models, IN/OUT per point).
    """

    @validated
    def __init__(
        self,
        train_fn: Callable[[Tensor, Tensor, int], nn.Module],
        x_pool: Tensor,
        y_pool: Tensor,
        n: int = 16,
        seed: int = 0,
        *,
        pairing: str = "complementary",
        executor: str | Executor | None = None,
        batch_size: int = 1024,
    ) -> None:
        if not callable(train_fn):
            raise InputError(f"train_fn must be a callable train_fn(x, y, seed) -> nn.Module, got {type(train_fn).__name__}")
        x_pool, y_pool = check_xy(x_pool, y_pool, "x_pool")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InputError(f"n (the number of reference models) must be an integer ≥ 1, got {n!r}")
        if pairing not in PAIRINGS:
            raise InputError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
        if x_pool.shape[0] < 2:
            raise InputError("the pool needs at least 2 points to split into halves")
        self.train_fn = train_fn
        self.x_pool, self.y_pool = x_pool, y_pool
        self.n, self.seed, self.pairing = n, seed, pairing
        self.executor = executor
        self.batch_size = batch_size
        seeds = spawn_seeds(seed, n + 1)
        self.masks = halves(n, x_pool.shape[0], pairing, seeds[-1]).to(x_pool.device)
        self.seeds = seeds[:n]
        self.pair_ids = [k // 2 if pairing == "complementary" and (k // 2) * 2 + 1 < n else n + k for k in range(n)]
        self._models: list[nn.Module] | None = None
        self._logits: dict[str, Tensor] = {}
        self.train_seconds = 0.0
        self.baseline: nn.Module | None = None

    @classmethod
    def _view(cls, parent: ReferenceModels, keep: list[int]) -> ReferenceModels:
        obj = cls.__new__(cls)
        obj.__dict__.update(parent.__dict__)
        obj.n = len(keep)
        obj.masks = parent.masks[keep]
        obj.seeds = [parent.seeds[k] for k in keep]
        obj.pair_ids = [parent.pair_ids[k] for k in keep]
        obj._models = [parent.models[k] for k in keep]
        obj._logits = {key: z[keep] for key, z in parent._logits.items()}
        return obj

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return (f"ReferenceModels(n={self.n}, pool={self.x_pool.shape[0]}, pairing={self.pairing!r}, "
                f"trained={self._models is not None})")

    # ------------------------------------------------------------------ training
    def fit(self, progress: Callable[[int, int], None] | None = None) -> ReferenceModels:
        """Train the models (once; later calls return at once); ``progress(done, total)`` after each model."""
        if self._models is None:
            t0 = time.perf_counter()
            tasks = [Task(k, s, (self.train_fn, self.x_pool[self.masks[k]], self.y_pool[self.masks[k]]))
                     for k, s in enumerate(self.seeds)]
            models = []
            for m in imap_tasks(_train_one, tasks, self.executor):  # in task order, as each finishes
                models.append(_check_model(m, "train_fn"))
                if progress is not None:
                    progress(len(models), len(tasks))
            self._models = models
            self.train_seconds = time.perf_counter() - t0
        return self

    @property
    def models(self) -> list[nn.Module]:
        return self.fit()._models  # type: ignore[return-value]

    # ------------------------------------------------------------------ outputs
    def logits(self, x: Tensor) -> Tensor:
        """Every model's logits on ``x``: float64 tensor (n, len(x), classes), computed once per distinct ``x``."""
        key = _digest(x)
        if key not in self._logits:
            self._logits[key] = torch.stack([model_logits(m, x, self.batch_size) for m in self.models])
        return self._logits[key]

    def in_masks(self, pool_index: Tensor | None, n_points: int) -> Tensor:
        """IN masks (n, n_points) of query points at ``pool_index`` in the pool; None: none is in the pool."""
        if pool_index is None:
            return torch.zeros(self.n, n_points, dtype=torch.bool, device=self.masks.device)
        idx = torch.as_tensor(pool_index)
        if idx.dim() != 1 or idx.shape[0] != n_points or idx.dtype in (torch.bool, torch.float32, torch.float64):
            raise InputError(
                f"pool_index must be an integer tensor with one pool position per query point ({n_points}), "
                f"got shape {tuple(idx.shape)} and dtype {idx.dtype}"
            )
        if n_points and (int(idx.min()) < 0 or int(idx.max()) >= self.x_pool.shape[0]):
            raise InputError(f"pool_index must lie in [0, {self.x_pool.shape[0]})")
        return self.masks[:, idx.long().to(self.masks.device)]

    def uncovered(self) -> tuple[Tensor, Tensor]:
        """Pool positions with no IN model, and those with no OUT model."""
        return (~self.masks.any(0)).nonzero().flatten(), self.masks.all(0).nonzero().flatten()

    def require(self, n_in: int, n_out: int, attack: str) -> None:
        """Raise :class:`InputError` when fewer models exist than ``attack`` needs."""
        if self.n < n_in + n_out or (n_in and self.n < 2):
            raise InputError(
                f"{attack} needs at least {n_in + n_out} reference models ({n_in} IN and {n_out} OUT per point), "
                f"got {self.n}; build ReferenceModels with a larger n"
            )

    # ------------------------------------------------------------------ evaluation helpers
    def leave_out(self, k: int) -> tuple[nn.Module, Tensor, ReferenceModels]:
        """Use model ``k`` as the target: ``(model k, its membership over the pool, the remaining references)``.

        With complementary pairs, k's partner is dropped too: it is OUT for exactly k's members and IN for
        its non-members, so keeping it would tie the references to the target's membership (a model-level
        offset of the partner would then shift all members' scores alike, and even a model trained on
        disjoint data would look attackable).
        """
        if isinstance(k, bool) or not isinstance(k, int) or not (0 <= k < self.n):
            raise InputError(f"k must be an integer in [0, {self.n}), got {k!r}")
        rest = [j for j in range(self.n) if self.pair_ids[j] != self.pair_ids[k]]
        if not rest:
            raise InputError("leave_out needs at least one reference model besides the target (and its pair)")
        return self.models[k], self.masks[k].clone(), ReferenceModels._view(self, rest)

    def train_disjoint(self, x: Tensor, y: Tensor, seed: int | None = None) -> nn.Module:
        """A model trained by ``train_fn`` on data disjoint from the pool: the sanity baseline's target.

        The model is kept as ``self.baseline``: attacks given these reference models (or views made afterwards
        by :meth:`leave_out`) then run the disjoint-data sanity baseline without being asked.
        Raises :class:`InputError` when a row of ``x`` also appears in the pool.
        """
        x, y = check_xy(x, y, "x")
        pool_rows = {_digest(r) for r in self.x_pool}
        if any(_digest(r) in pool_rows for r in x):
            raise InputError("train_disjoint needs data disjoint from the pool, but some rows of x are pool points")
        s = spawn_seeds(self.seed + 1, 1)[0] if seed is None else seed
        (model,) = map_tasks(_train_one, [Task(0, s, (self.train_fn, x, y))], self.executor)
        self.baseline = _check_model(model, "train_fn")
        return self.baseline
