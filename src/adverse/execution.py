"""Where work runs: in-process by default, or on a Ray cluster (``executor="ray"`` or a :class:`RayExecutor`).

An executor maps a function over a list of *tasks*. Every task carries its own integer seed, and
:func:`run_seeded` runs it with torch's global generator forked and seeded from that seed, so a task's
randomness (weight initialization inside a user's ``train_fn``, say) depends on the task alone: never on
the caller's global RNG state, on the order tasks run in, or on the process or machine that runs them. The
caller's global RNG state is left exactly as found. This is what makes work split across processes give the
same result as the same work in one process.

Usage::

    from adverse.execution import Task, map_tasks, spawn_seeds
    seeds = spawn_seeds(0, 4)
    out = map_tasks(fn, [Task(i, s, payload) for i, s in enumerate(seeds)], executor=None)  # or "local", "ray"

Ray is an optional extra (``pip install adverse[ray]``). :class:`RayExecutor` connects to a running cluster by
address, or starts a local instance on first use; each task becomes a Ray task (retried by Ray if its worker
dies), and results come back in the order of the tasks, whichever worker ran them.
"""

from __future__ import annotations

import collections
import functools
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from .errors import InputError

EXECUTORS = ("local", "ray")
MAX_IN_FLIGHT = 64
"""The most tasks a :class:`RayExecutor` keeps submitted and not yet collected (bounds the memory their inputs
take)."""


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

    def imap(self, fn: Callable[[Task], Any], tasks: Iterable[Task]) -> Iterator[Any]:
        """``fn(t)`` for each task, yielded as each finishes (so callers can save progress task by task)."""
        for t in tasks:
            yield fn(t)

    def map(self, fn: Callable[[Task], Any], tasks: Sequence[Task]) -> list[Any]:
        """``[fn(t) for t in tasks]``."""
        return list(self.imap(fn, tasks))

    def __repr__(self) -> str:
        return "LocalExecutor()"


def check_reachable(address: str, timeout: float) -> None:
    """Raise :class:`InputError` within ``timeout`` seconds when nothing listens at a Ray ``address``
    (``host:port`` or ``ray://host:port``): a refused or unroutable address fails here at once, where ``ray.init``
    would retry for a long time. (A service that listens but is not Ray is refused by ``ray.init`` after its own
    handshake, about 20 s, and reported as an :class:`InputError` too.)"""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise InputError(f"a Ray address looks like host:port or ray://host:port, got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise InputError(
            f"cannot reach a Ray cluster at {address} within {timeout:g} s ({e}); start one with "
            "`ray start --head`, check the address, or leave the address out to start a local instance"
        ) from e


class RayExecutor:
    """Runs each task as a Ray task (Ray retries a task whose worker dies, up to ``max_retries`` times).

    Parameters
    ----------
    address : a running cluster (``host:port``, ``ray://host:port`` or ``"auto"``); None starts a local
        instance on first use (or uses the one this process already started with ``ray.init``).
    num_cpus : CPUs of a local instance (None: all); each task takes one CPU and so one torch thread.
    max_retries : how often Ray re-runs a task whose worker process died.
    timeout : seconds to wait for ``address`` to answer before raising :class:`InputError`.
    num_gpus : GPUs each task asks Ray for when its payload holds a model on CUDA (:func:`gpus_for`): 1 by
        default (tasks then spread over the cluster's GPUs, one each; a fraction such as 0.5 packs two per GPU).
        Tasks whose model is on the CPU ask for none.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None, max_retries: int = 3,
                 timeout: float = 5.0, num_gpus: float = 1.0) -> None:
        if isinstance(num_gpus, bool) or not isinstance(num_gpus, (int, float)) or not 0 < num_gpus <= 1:
            raise InputError(f"num_gpus is the share of a GPU each CUDA task asks for, in (0, 1]; got {num_gpus!r}")
        self.num_gpus = float(num_gpus)
        self.address = address
        self.num_cpus = num_cpus
        self.max_retries = max_retries
        self.timeout = timeout

    def _ray(self) -> Any:
        try:
            import ray
        except ImportError as e:
            raise InputError("the Ray executor needs Ray: pip install 'adverse[ray]'") from e
        if self.address not in (None, "auto"):
            check_reachable(self.address, self.timeout)
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, num_cpus=None if self.address else self.num_cpus,
                         include_dashboard=False, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError) as e:  # something answered, but not a Ray cluster
                raise InputError(f"cannot connect to a Ray cluster at {self.address} ({e}); check the address "
                                 "(the GCS port of `ray start --head`, default 6379)") from e
        return ray

    def imap(self, fn: Callable[[Task], Any], tasks: Iterable[Task]) -> Iterator[Any]:
        """Submit tasks, at most :data:`MAX_IN_FLIGHT` at a time; yield the results in the order of ``tasks``
        as they arrive."""
        ray = self._ray()
        remote = ray.remote(num_cpus=1, max_retries=self.max_retries)(_call)
        fn_ref = ray.put(fn)  # shipped once, not once per task
        refs: collections.deque[Any] = collections.deque()
        for t in tasks:
            if len(refs) >= MAX_IN_FLIGHT:
                yield ray.get(refs.popleft())
            gpus = gpus_for(t, self.num_gpus)
            refs.append((remote.options(num_gpus=gpus) if gpus else remote).remote(fn_ref, t))
        while refs:
            yield ray.get(refs.popleft())

    def map(self, fn: Callable[[Task], Any], tasks: Sequence[Task]) -> list[Any]:
        return list(self.imap(fn, tasks))

    def __repr__(self) -> str:
        return f"RayExecutor(address={self.address!r})"


def gpus_for(task: Task, share: float = 1.0) -> float:
    """The GPUs a task asks Ray for: ``share`` when its payload (a tuple, list or mapping, one level deep) holds a
    torch module whose parameters or buffers are on CUDA, else 0 (Ray then schedules it on any CPU)."""
    payload = task.payload
    items = payload.values() if isinstance(payload, dict) else payload if isinstance(payload, (tuple, list)) \
        else (payload,)
    from .models import device_of

    cuda = any(isinstance(item, torch.nn.Module) and getattr(device_of(item), "type", None) == "cuda"
               for item in items)
    return share if cuda else 0.0


def _call(fn: Callable[[Task], Any], task: Task) -> Any:
    """What a Ray worker runs: one task, each worker on one torch thread."""
    torch.set_num_threads(1)
    return fn(task)


def get_executor(executor: str | Executor | None = None) -> Executor:
    """The executor named by ``executor``: None or "local" (in-process), "ray" (a local Ray instance, or the
    one this process is connected to), or an object with ``map`` (e.g. ``RayExecutor(address=...)``).

    Raises :class:`~adverse.errors.InputError` for an unknown name.
    """
    if executor is None or (isinstance(executor, str) and executor == "local"):
        return LocalExecutor()
    if isinstance(executor, str) and executor == "ray":
        return RayExecutor()
    if isinstance(executor, str):
        raise InputError(
            f"unknown executor {executor!r}; choose one of {EXECUTORS} or pass an object with a "
            "map(fn, tasks) method (e.g. adverse.execution.RayExecutor(address=...))"
        )
    if not callable(getattr(executor, "map", None)):
        raise InputError(f"an executor needs a map(fn, tasks) method; got {type(executor).__name__}")
    return executor


def map_tasks(fn: Callable[[Task], Any], tasks: Sequence[Task], executor: str | Executor | None = None) -> list[Any]:
    """Run ``fn`` on every task through ``executor``, each task under its own seed (:func:`run_seeded`).

    ``fn`` must be a module-level function (picklable) so that out-of-process executors can ship it.
    Returns the results in the order of ``tasks``.
    """
    return list(imap_tasks(fn, tasks, executor))


def imap_tasks(fn: Callable[[Task], Any], tasks: Iterable[Task],
               executor: str | Executor | None = None) -> Iterator[Any]:
    """:func:`map_tasks`, yielding each result in task order as soon as it is available. ``tasks`` may be a
    generator: an executor with ``imap`` (local, Ray) takes tasks from it only as it runs them (Ray keeps at most
    :data:`MAX_IN_FLIGHT` submitted), so tasks built from streamed data need not all be in memory."""
    def checked() -> Iterator[Task]:
        for t in tasks:
            if not isinstance(t, Task):
                raise InputError(f"map_tasks needs adverse.execution.Task items, got {type(t).__name__}")
            yield t

    ex = get_executor(executor)
    seeded = functools.partial(run_seeded, fn)
    imap = getattr(ex, "imap", None)
    if callable(imap):
        return iter(imap(seeded, checked()))
    return iter(ex.map(seeded, list(checked())))
