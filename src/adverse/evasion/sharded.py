"""One attack over a large batch, split into chunks that run wherever an executor sends them.

Chunk ``i`` is attacked with its own seed, derived from ``(seed, i)`` by :func:`adverse.execution.spawn_seeds`,
so the result depends on the data, the chunk size and the seed, never on how many workers ran the chunks or in
what order: the Ray executor gives bit for bit the tensors the in-process one gives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..execution import Executor, Task, map_tasks, spawn_seeds
from ..results import AttackResult
from ..validation import validated


def _attack_chunk(task: Task) -> AttackResult:
    attack, model, x, y, kwargs = task.payload
    r = attack(model, x, y, seed=task.seed, **kwargs)
    r.x_adv, r.success, r.norms, r.clean_correct = (t.cpu() for t in (r.x_adv, r.success, r.norms, r.clean_correct))
    return r


@validated
def sharded(
    attack: str | Callable[..., AttackResult],
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    chunk_size: int = 256,
    executor: str | Executor | None = None,
    seed: int = 0,
    **kwargs: Any,
) -> AttackResult:
    """Run ``attack`` (a name in :mod:`adverse.evasion`, e.g. ``"pgd"`` or ``"autoattack"``, or a function with
    the attack signature) on chunks of ``chunk_size`` samples through ``executor`` and join the results.

    Parameters
    ----------
    attack, model, x, y, kwargs : as for the attack itself (``eps``, ``norm``, ``steps``, …).
    chunk_size : samples per task.
    executor : None / "local" (in-process), "ray", or an executor object (:mod:`adverse.execution`).
    seed : chunk ``i`` gets ``spawn_seeds(seed, n_chunks)[i]``.

    Returns
    -------
    AttackResult over all samples, in order; budgets are summed over chunks.
    """
    from .. import evasion

    fn = getattr(evasion, attack, None) if isinstance(attack, str) else attack
    if not callable(fn):
        raise InputError(f"unknown attack {attack!r}; pass a name from adverse.evasion.__all__ or a function")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError(f"chunk_size must be an integer ≥ 1, got {chunk_size!r}")
    if not torch.is_tensor(x) or not torch.is_tensor(y) or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise InputError("x and y must be non-empty tensors with one label per input")
    starts = list(range(0, x.shape[0], chunk_size))
    seeds = spawn_seeds(seed, len(starts))
    tasks = [Task(i, s, (fn, model, x[a:a + chunk_size], y[a:a + chunk_size], kwargs))
             for i, (a, s) in enumerate(zip(starts, seeds))]
    parts = map_tasks(_attack_chunk, tasks, executor)
    out = AttackResult.concat(parts, seed=seed)
    out.x_adv, out.success, out.norms, out.clean_correct = (
        t.to(x.device) for t in (out.x_adv, out.success, out.norms, out.clean_correct))
    return out
