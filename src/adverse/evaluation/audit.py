"""The robustness audit: clean accuracy, and robust accuracy under several attacks at several budgets.

:func:`audit` runs the attacks of :mod:`adverse.evasion` (it never re-implements one), keeps the per-sample
outcomes, and returns an :class:`AuditResult` that holds the numbers, the exact configuration, the seed, the
versions and the budget spent. :meth:`AuditResult.save` writes ``results.json`` atomically. Nothing here
formats output for people; the command line does that.

This module imports torch only when an audit runs, so importing it is cheap.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from ..data import Dataset

SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"
STATE_FILE = ".audit-state.json"
DEFAULT_EPS = (0.05, 0.1, 0.2, 0.3)
DEFAULT_MODEL = "digits-cnn"
ATTACKS = ("fgsm", "pgd", "apgd-ce")
DEFAULT_STEPS = {"pgd": 40, "apgd-ce": 100}

ProgressFn = Callable[[str, float, float], None]
"""``progress(description, completed, total)``: work done so far, in arbitrary units that add up to ``total``."""


# --------------------------------------------------------------------------------------------- the result
@dataclass
class AuditResult:
    """What :func:`audit` found, and everything needed to reproduce it.

    Attributes
    ----------
    clean_accuracy : fraction of the ``n`` samples the model classifies correctly.
    attacks : one row per (attack, eps): ``attack``, ``eps``, ``robust_accuracy``, ``robust`` (count),
        ``success_rate``, budget spent (``forwards``, ``backwards``, ``seconds``) and the attack's ``params``.
    worst_case : one row per eps: the robust accuracy when a sample counts as fooled if any attack fooled it
        at this eps or at a smaller one (an adversarial input within a smaller budget lies within this one).
    config : the exact configuration (eps, norm, n, seed, batch size, each attack's settings).
    model, data : what was audited.
    environment : python, torch, adverse, numpy versions, platform, device and threads.
    budget : forwards, backwards and attack seconds summed over all attacks.
    seconds : wall-clock seconds for loading the model and for the whole audit.
    created : when the audit finished (UTC, ISO 8601).
    checks : the sanity checks of :mod:`adverse.evaluation.checks` (``name``, ``status`` "pass"/"warn"/"skip",
        ``message``, ``evidence``), run at ``config["checks"]["eps"]`` on ``config["checks"]["n"]`` points; a
        "warn" means the robust accuracies above may over-estimate the truth.
    fooled : per-sample outcomes, ``fooled[(attack, eps)]`` and ``fooled[("worst-case", eps)]`` bool arrays
        (True: not robust); kept in memory only (not in ``results.json``).
    """

    clean_accuracy: float
    n: int
    attacks: list[dict[str, Any]]
    worst_case: list[dict[str, Any]]
    config: dict[str, Any]
    model: dict[str, Any]
    data: dict[str, Any]
    environment: dict[str, Any]
    budget: dict[str, Any]
    seconds: dict[str, float]
    created: str
    checks: list[dict[str, Any]] = field(default_factory=list)
    fooled: dict[tuple[str, float], np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def robust_accuracy(self, attack: str, eps: float) -> float:
        """Robust accuracy under ``attack`` (or ``"worst-case"``) at ``eps``."""
        rows = self.worst_case if attack == "worst-case" else [r for r in self.attacks if r["attack"] == attack]
        for r in rows:
            if math.isclose(r["eps"], eps, rel_tol=0, abs_tol=1e-12):
                return float(r["robust_accuracy"])
        raise InputError(f"no result for attack {attack!r} at eps {eps}; this audit ran eps {self.config['eps']}"
                         f" with attacks {list(self.config['attacks'])}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers and settings (``schema_version`` 1)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "robustness-audit",
            "created": self.created,
            "model": self.model,
            "data": self.data,
            "config": self.config,
            "environment": self.environment,
            "n": self.n,
            "clean_accuracy": self.clean_accuracy,
            "attacks": self.attacks,
            "worst_case": self.worst_case,
            "budget": self.budget,
            "seconds": self.seconds,
            "checks": self.checks,
        }

    def to_json(self) -> str:
        """``to_dict()`` as indented JSON text ending in a newline: exactly what :meth:`save` writes."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``folder/results.json`` atomically (a temporary file in the same folder, then a rename), so a
        reader never sees a half-written file and an interrupted save leaves the previous one intact.

        Returns the path written. Raises :class:`InputError` if ``folder`` is an existing file.
        """
        out = Path(folder)
        if out.exists() and not out.is_dir():
            raise InputError(f"{out} exists and is not a folder; choose another output folder")
        out.mkdir(parents=True, exist_ok=True)
        path = out / RESULTS_FILE
        write_atomic(path, self.to_json())
        with contextlib.suppress(FileNotFoundError):  # the audit is complete: its resume state is done with
            (out / STATE_FILE).unlink()
        return path

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AuditResult:
        """Rebuild a result from :meth:`to_dict`'s output (per-sample outcomes are not stored there)."""
        if d.get("schema_version") != SCHEMA_VERSION:
            raise InputError(
                f"unsupported audit schema_version {d.get('schema_version')!r}; this adverse reads version "
                f"{SCHEMA_VERSION}"
            )
        try:
            return cls(
                clean_accuracy=d["clean_accuracy"], n=d["n"], attacks=list(d["attacks"]),
                worst_case=list(d["worst_case"]), config=dict(d["config"]), model=dict(d["model"]),
                data=dict(d["data"]), environment=dict(d["environment"]), budget=dict(d["budget"]),
                seconds=dict(d["seconds"]), created=d["created"], checks=list(d.get("checks", [])),
            )
        except KeyError as e:
            raise InputError(f"audit results lack the field {e.args[0]!r}; the file is not an adverse audit") from e

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AuditResult:
        """Read ``results.json`` (or a folder holding one) written by :meth:`save`."""
        p = Path(path)
        if p.is_dir():
            p = p / RESULTS_FILE
        if not p.is_file():
            raise InputError(f"no such file: {p}")
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"{p} is not valid JSON ({e}); it is not an adverse audit") from e
        if not isinstance(d, dict):
            raise InputError(f"{p} does not hold a JSON object; it is not an adverse audit")
        return cls.from_dict(d)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` through a temporary file in the same folder and a rename: a
    reader never sees a half-written file, and an interruption leaves the previous file intact."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class _Checkpoint:
    """The finished work of one audit, batch by batch, in ``folder/.audit-state.json`` (atomically rewritten after
    every batch). A rerun with the same model, data and settings (the same ``key``) takes finished batches from
    here instead of attacking again; any other state file is ignored and replaced."""

    def __init__(self, folder: str | os.PathLike[str] | None, key: str) -> None:
        self.path = None if folder is None else Path(folder) / STATE_FILE
        self.data: dict[str, Any] = {"key": key, "batches": {}, "checks": None}
        if self.path is not None and self.path.is_file():
            with contextlib.suppress(OSError, ValueError):
                old = json.loads(self.path.read_text(encoding="utf-8"))
                if isinstance(old, dict) and old.get("key") == key:
                    self.data = old

    @staticmethod
    def _id(attack: str, eps: float, start: int) -> str:
        return f"{attack}|{eps!r}|{start}"

    def get(self, attack: str, eps: float, start: int) -> dict[str, Any] | None:
        return self.data["batches"].get(self._id(attack, eps, start))

    def put(self, attack: str, eps: float, start: int, record: dict[str, Any]) -> None:
        self.data["batches"][self._id(attack, eps, start)] = record
        self._write()

    def put_checks(self, rows: list[dict[str, Any]]) -> None:
        self.data["checks"] = rows
        self._write()

    def _write(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps(self.data))


def _fingerprint(model: nn.Module, x: Any, y: Any, config: Mapping[str, Any]) -> str:
    """A hash of the model's parameters and buffers, the data and the settings."""
    import hashlib

    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    for t in (x, y):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------- validation
def _check_eps(eps: Any) -> list[float]:
    if isinstance(eps, (int, float)) and not isinstance(eps, bool):
        eps = (eps,)
    try:
        values = [float(e) for e in eps]
    except (TypeError, ValueError) as e:
        raise InputError(f"eps must be a number or a sequence of numbers, got {eps!r}") from e
    if not values:
        raise InputError("eps is empty; pass at least one budget, e.g. eps=(0.1,)")
    bad = [e for e in values if not math.isfinite(e) or e < 0]
    if bad:
        raise InputError(f"every eps must be finite and ≥ 0, got {bad}; eps is in input units (e.g. 8/255)")
    if len(set(values)) != len(values):
        raise InputError(f"eps lists a value twice: {values}; list each budget once")
    return sorted(values)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return value


def _check_attacks(attacks: Any) -> list[str]:
    names = [attacks] if isinstance(attacks, str) else list(attacks)
    unknown = [a for a in names if a not in ATTACKS]
    if unknown or not names:
        raise InputError(f"unknown attack(s) {unknown}; choose among {', '.join(ATTACKS)}")
    if len(set(names)) != len(names):
        raise InputError(f"attacks lists an attack twice: {names}")
    return [a for a in ATTACKS if a in names]  # a fixed order, cheapest first


def _check_steps(steps: int | Mapping[str, int] | None) -> dict[str, int]:
    out = dict(DEFAULT_STEPS)
    if steps is None:
        return out
    if isinstance(steps, Mapping):
        unknown = set(steps) - set(DEFAULT_STEPS)
        if unknown:
            raise InputError(f"steps names unknown attack(s) {sorted(unknown)}; iterative attacks are "
                             f"{', '.join(DEFAULT_STEPS)}")
        for k, v in steps.items():
            out[k] = _check_int(f"steps[{k!r}]", v, 1)
        return out
    s = _check_int("steps", steps, 1)
    return {k: s for k in out}


def _as_dataset(data: Any) -> Dataset:
    import numpy as np
    import torch

    from ..data import Dataset

    if isinstance(data, Dataset):
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
        num_classes = int(y.max()) + 1 if y.numel() else 0
        return Dataset(x, y.long(), "user data", num_classes)
    raise InputError(
        f"data must be an adverse.data.Dataset or a pair (x, y), got {type(data).__name__}; "
        "e.g. adverse.data.load_npz('test.npz')"
    )


# --------------------------------------------------------------------------------------------- the audit
def audit(
    model: nn.Module | None = None,
    data: Dataset | tuple[Any, Any] | None = None,
    *,
    eps: float | Iterable[float] = DEFAULT_EPS,
    norm: str = "linf",
    n: int | None = None,
    steps: int | Mapping[str, int] | None = None,
    attacks: Sequence[str] = ATTACKS,
    batch_size: int = 256,
    seed: int = 0,
    checks: bool = True,
    check_n: int = 100,
    state_dir: str | os.PathLike[str] | None = None,
    executor: Any = None,
    progress: ProgressFn | None = None,
) -> AuditResult:
    """Measure how robust ``model`` is on ``data``: clean accuracy, and robust accuracy under FGSM, PGD and
    APGD-CE at each ``eps``, plus the worst case per sample over the attacks.

    Parameters
    ----------
    model : a torch module returning logits for inputs inside ``data.bounds``. None audits the bundled
        demo model (``adverse.zoo.pretrained("digits-cnn")``, trained once on first use and cached).
    data : an :class:`adverse.data.Dataset` or a pair ``(x, y)`` (tensors or numpy arrays). None means the
        bundled digits test split (only with ``model=None``).
    eps : the budgets, in input units; audited in increasing order.
    norm : "linf", "l2" or "l1".
    n : audit only the first ``n`` samples (None: all).
    steps : iterations of the iterative attacks: an int for all of them, or a mapping such as
        ``{"pgd": 40, "apgd-ce": 100}`` (the defaults).
    attacks : a subset of ``("fgsm", "pgd", "apgd-ce")``.
    batch_size : samples per attack call; every batch of every attack gets ``seed``.
    seed : the seed of every attack's randomness; the same call gives the same numbers.
    checks : run the gradient-masking checks of :mod:`adverse.evaluation.checks` on the first ``check_n`` points,
        at the budget whose worst-case robust accuracy is closest to half the clean accuracy (where the checks
        discriminate best).
    state_dir : a folder for the audit's resume state (``.audit-state.json``, rewritten atomically after every
        batch). If the audit is interrupted, rerunning it with the same model, data, settings and ``state_dir``
        reuses every finished batch and gives the same result as an uninterrupted run. :meth:`AuditResult.save`
        into that folder removes the state.
    executor : where the attack batches run: None / "local" (in-process), "ray", or an executor object from
        :mod:`adverse.execution` (e.g. ``RayExecutor(address=...)``). Every batch gets ``seed``, so the numbers
        do not depend on the executor.
    progress : ``progress(description, completed, total)``, called as work completes (for progress bars).

    Returns
    -------
    AuditResult

    Robust accuracy counts a sample as robust when the model classifies it correctly and the attack found no
    misclassified input within ``eps``; it can only over-estimate the true robust accuracy.
    """
    import numpy as np
    import torch

    from .. import __version__
    from ..evasion.apgd import apgd
    from ..evasion.gradient import fgsm, pgd
    from ..execution import Task, get_executor, imap_tasks
    from ..models import attack_mode
    from ..threat import check_norm

    started = time.perf_counter()
    eps_list = _check_eps(eps)
    norm = check_norm(norm)
    names = _check_attacks(attacks)
    steps_by = _check_steps(steps)
    batch_size = _check_int("batch_size", batch_size, 1)
    seed = _check_int("seed", seed, 0)
    if n is not None:
        n = _check_int("n", n, 1)
    check_n = _check_int("check_n", check_n, 1)
    executor = get_executor(executor)

    # (attack function, its settings, its cost per sample in gradient steps), resolved before any work
    recipes: dict[str, tuple[Callable[..., Any], dict[str, Any], int]] = {
        "fgsm": (fgsm, {}, 1),
        "pgd": (pgd, {"steps": steps_by["pgd"], "restarts": 1}, steps_by["pgd"]),
        "apgd-ce": (apgd, {"steps": steps_by["apgd-ce"], "loss": "ce"}, steps_by["apgd-ce"]),
    }
    specs = {a: recipes[a] for a in names}

    def report(description: str, completed: float, total: float) -> None:
        if progress is not None:
            progress(description, completed, total)

    # ---- what to audit
    if model is None:
        if data is not None:
            raise InputError("data was given without a model; pass the model to audit as well")
        from ..zoo import pretrained

        report(f"loading {DEFAULT_MODEL} (trained once on first use)", 0, 1)
        model = pretrained(DEFAULT_MODEL)
        model_info: dict[str, Any] = {"name": DEFAULT_MODEL, "source": "adverse.zoo"}
        from ..data import digits

        dataset = digits("test")
        data_info: dict[str, Any] = {"name": "digits", "split": "test", "source": "adverse.data.digits"}
    else:
        if not isinstance(model, torch.nn.Module):
            raise InputError(f"model must be a torch.nn.Module returning logits, got {type(model).__name__}")
        if data is None:
            raise InputError("pass the data to audit the model on, e.g. audit(model, adverse.data.load_npz(path))")
        dataset = _as_dataset(data)
        model_info = {"name": type(model).__name__, "source": "user"}
        data_info = {"name": dataset.name, "source": "user"}
    model_seconds = time.perf_counter() - started
    model_info["parameters"] = int(sum(p.numel() for p in model.parameters()))

    if n is not None:
        if n > len(dataset):
            raise InputError(f"n={n} but the data has only {len(dataset)} samples; pass n ≤ {len(dataset)}")
        dataset = dataset.subset(n)
    total_n = len(dataset)
    if total_n == 0:
        raise InputError("the data holds no samples")
    data_info.update(n=total_n, num_classes=dataset.num_classes, bounds=list(dataset.bounds),
                     shape=list(dataset.x.shape[1:]))

    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    x, y = dataset.x.to(device), dataset.y.to(device)
    batches = [(i, min(i + batch_size, total_n)) for i in range(0, total_n, batch_size)]

    # ---- clean accuracy (the attacks count clean errors as successes too)
    with attack_mode(model), torch.no_grad():
        pred = torch.cat([model(x[a:b]).argmax(dim=1) for a, b in batches])
    clean_correct = (pred == y).cpu().numpy()
    clean_count = int(clean_correct.sum())

    # ---- the attacks
    total_work = float(sum(specs[a][2] for a in names) * total_n * len(eps_list))
    done = 0.0
    rows: list[dict[str, Any]] = []
    fooled: dict[tuple[str, float], np.ndarray] = {}
    extra = {} if tuple(dataset.bounds) == (0.0, 1.0) else {"bounds": tuple(dataset.bounds)}
    config = {
        "eps": eps_list, "norm": norm, "n": n, "seed": seed, "batch_size": batch_size,
        "attacks": {a: dict(specs[a][1]) for a in names},
    }
    state = _Checkpoint(state_dir, _fingerprint(model, x, y, dict(config, checks=checks, check_n=check_n)))
    for e in eps_list:
        for name in names:
            fn, kwargs, cost = specs[name]
            description = f"{name} at eps {e:g}"
            report(description, done, total_work)
            done += cost * sum(b - a for a, b in batches if state.get(name, e, a) is not None)
            pending = [(a, b) for a, b in batches if state.get(name, e, a) is None]
            tasks = [Task(i, seed, (fn, model, x[a:b], y[a:b], dict(eps=e, norm=norm, seed=seed, **kwargs, **extra)))
                     for i, (a, b) in enumerate(pending)]
            for (a, b), rec in zip(pending, imap_tasks(_attack_batch, tasks, executor)):
                state.put(name, e, a, rec)  # saved as each batch finishes, wherever it ran
                done += cost * (b - a)
                report(description, done, total_work)
            parts, fw, bw, secs, params = [], 0, 0, 0.0, {}
            for a, _ in batches:
                rec = state.get(name, e, a)
                parts.append(np.asarray(rec["success"], dtype=bool))
                fw, bw, secs = fw + rec["forwards"], bw + rec["backwards"], secs + rec["seconds"]
                params = rec["params"]
            bad = np.concatenate(parts) | ~clean_correct
            fooled[(name, e)] = bad
            robust = total_n - int(bad.sum())
            rows.append({
                "attack": name, "eps": e, "robust_accuracy": robust / total_n, "robust": robust,
                "success_rate": 1.0 - robust / total_n, "forwards": fw, "backwards": bw, "seconds": secs,
                "params": params,
            })

    # ---- worst case per sample: fooled by any attack at this eps or a smaller one
    worst: list[dict[str, Any]] = []
    union = ~clean_correct
    for e in eps_list:
        for name in names:
            union = union | fooled[(name, e)]
        fooled[("worst-case", e)] = union.copy()
        robust = total_n - int(union.sum())
        worst.append({"eps": e, "robust_accuracy": robust / total_n, "robust": robust, "attacks": list(names)})

    check_rows: list[dict[str, Any]] = []
    if checks:
        from .checks import run_checks

        clean_share = clean_count / total_n
        check_eps = min(eps_list, key=lambda e: abs(worst[eps_list.index(e)]["robust_accuracy"] - clean_share / 2))
        k = min(check_n, total_n)
        report(f"sanity checks at eps {check_eps:g} on {k} points", done, total_work)
        if state.data["checks"] is None:
            found = run_checks(model, x[:k], y[:k], eps=check_eps, norm=norm, bounds=tuple(dataset.bounds),
                               seed=seed)
            state.put_checks([_json_safe(c.to_dict()) for c in found])
        check_rows = state.data["checks"]
        config["checks"] = {"eps": check_eps, "n": k, "steps": 20, "square_max_queries": 1000}
    budget = {
        "forwards": sum(r["forwards"] for r in rows), "backwards": sum(r["backwards"] for r in rows),
        "seconds": sum(r["seconds"] for r in rows),
    }
    environment = {
        "python": platform.python_version(), "torch": torch.__version__, "adverse": __version__,
        "numpy": np.__version__, "platform": platform.platform(), "device": str(device),
        "threads": torch.get_num_threads(), "executor": getattr(executor, "name", type(executor).__name__),
    }
    return AuditResult(
        clean_accuracy=clean_count / total_n, n=total_n, attacks=rows, worst_case=worst, config=config,
        model=model_info, data=data_info, environment=environment, budget=budget,
        seconds={"model": model_seconds, "total": time.perf_counter() - started},
        created=datetime.now(timezone.utc).replace(microsecond=0).isoformat(), checks=check_rows, fooled=fooled,
    )


def _attack_batch(task: Any) -> dict[str, Any]:
    """One attack on one batch (run by an executor): the per-sample outcome and the budget, JSON-ready."""
    fn, model, x, y, kwargs = task.payload
    r = fn(model, x, y, **kwargs)
    return {"success": r.success.cpu().numpy().astype(int).tolist(), "forwards": r.forwards,
            "backwards": r.backwards, "seconds": r.seconds, "params": r.summary()["params"]}


def _json_safe(value: Any) -> Any:
    """Numbers JSON can hold: NaN and infinities become None (``results.json`` is strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
