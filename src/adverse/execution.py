"""Where work runs: in-process by default; a Ray executor plugs into the same interface later.

An executor maps a function over a list of *tasks*. Every task carries its own integer seed, and
:func:`run_seeded` runs it with torch's global generator forked and seeded from that seed, so a task's
randomness (weight initialization inside a user's ``train_fn``, say) depends on the task alone: never on
the caller's global RNG state, on the order tasks run in, or on the process or machine that runs them. The
caller's global RNG state is left exactly as found. This is what makes work split across processes give the
same result as the same work in one process.

Usage::

    from adverse.execution import Task, map_tasks, spawn_seeds
    seeds = spawn_seeds(0, 4)
    out = map_tasks(fn, [Task(i, s, payload) for i, s in enumerate(seeds)], executor=None)  # or "local"
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from .errors import InputError

EXECUTORS = ("local",)


@dataclass(frozen=True)
class Task:
    """One unit of work: its position, its own seed and whatever the function needs."""

    index: int
    seed: int
    payload: Any = None


@runtime_checkable
class Executor(Protocol):
    """Anything with ``map(fn, tasks) -> list`` (results in the order of ``tasks``)."""

    def map(self, fn: Callable[[Task], Any], tasks: Sequence[Task]) -> list[Any]: ...


def spawn_seeds(seed: int, n: int) -> list[int]:
    """``n`` independent 63-bit seeds derived from ``seed`` (``numpy.random.SeedSequence.spawn``).

    Task ``i``'s seed depends only on ``(seed, i)``, so adding tasks never changes the seeds of earlier ones.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be an integer ≥ 0, got {seed!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise InputError(f"the number of seeds must be an integer ≥ 0, got {n!r}")
    children = np.random.SeedSequence(int(seed)).spawn(int(n))
    return [int(c.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)) for c in children]


def run_seeded(fn: Callable[[Task], Any], task: Task) -> Any:
    """``fn(task)`` with torch's global generator forked and seeded by ``task.seed``; restores it afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(task.seed)
        return fn(task)


class LocalExecutor:
    """Runs tasks one after the other in this process (the default)."""

    name = "local"

    def map(self, fn: Callable[[Task], Any], tasks: Sequence[Task]) -> list[Any]:
        """``[fn(t) for t in tasks]``."""
        return [fn(t) for t in tasks]

    def __repr__(self) -> str:
        return "LocalExecutor()"


def get_executor(executor: str | Executor | None = None) -> Executor:
    """The executor named by ``executor``: None or "local" (in-process), or an object with ``map``.

    Raises :class:`~adverse.errors.InputError` for an unknown name.
    """
    if executor is None or (isinstance(executor, str) and executor == "local"):
        return LocalExecutor()
    if isinstance(executor, str):
        raise InputError(
            f"unknown executor {executor!r}; choose one of {EXECUTORS} or pass an object with a "
            "map(fn, tasks) method (a Ray executor is not available in this version)"
        )
    if not callable(getattr(executor, "map", None)):
        raise InputError(f"an executor needs a map(fn, tasks) method; got {type(executor).__name__}")
    return executor


def map_tasks(fn: Callable[[Task], Any], tasks: Sequence[Task], executor: str | Executor | None = None) -> list[Any]:
    """Run ``fn`` on every task through ``executor``, each task under its own seed (:func:`run_seeded`).

    ``fn`` must be a module-level function (picklable) so that out-of-process executors can ship it.
    Returns the results in the order of ``tasks``.
    """
    for t in tasks:
        if not isinstance(t, Task):
            raise InputError(f"map_tasks needs adverse.execution.Task items, got {type(t).__name__}")
    return list(get_executor(executor).map(functools.partial(run_seeded, fn), tasks))
