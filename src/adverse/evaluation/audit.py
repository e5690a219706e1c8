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
from ..validation import validated

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from ..data import Dataset

SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"
STATE_FILE = ".audit-state.json"
DEFAULT_EPS = (0.05, 0.1, 0.2, 0.3)
DEFAULT_MODEL = "digits-cnn"
EXAMPLES_FILE = "examples.npz"
ATTACKS = ("fgsm", "pgd", "apgd-ce", "square")
DEFAULT_ATTACKS = ("fgsm", "pgd", "apgd-ce")
DEFAULT_STEPS = {"pgd": 40, "apgd-ce": 100}
SQUARE_QUERIES = 1000
SUITES = ("evasion", "privacy", "poisoning", "certify", "defense")

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
    suites : the suites that ran, in order (:data:`SUITES`).
    minimal_norm : the evasion suite's minimal-norm curve (:func:`adverse.evaluation.confirm.minimal_norm_curve`).
    autoattack : AutoAttack's confirmation at one eps (:func:`adverse.evaluation.confirm.autoattack_confirmation`).
    privacy, poisoning, certify, defense : what those suites found (see their modules), or None when they did not
        run.
    examples : clean and adversarial images for the report (saved as ``examples.npz``, not in ``results.json``).
    samples : how many samples each suite and part used (``evasion``, ``checks``, ``minimal_norm``,
        ``autoattack``, ``examples``, ``privacy`` (members, and as many non-members), ``poisoning`` (test samples),
        ``certify``, ``defense``), each at most ``config["n"]``.
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
    suites: list[str] = field(default_factory=lambda: ["evasion"])
    minimal_norm: dict[str, Any] | None = None
    autoattack: dict[str, Any] | None = None
    privacy: dict[str, Any] | None = None
    poisoning: dict[str, Any] | None = None
    certify: dict[str, Any] | None = None
    defense: dict[str, Any] | None = None
    samples: dict[str, int] | None = None
    fooled: dict[tuple[str, float], np.ndarray] = field(default_factory=dict, repr=False, compare=False)
    examples: dict[str, Any] | None = field(default=None, repr=False, compare=False)

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
            "suites": self.suites,
            **{k: v for k in ("minimal_norm", "autoattack", "privacy", "poisoning", "certify", "defense", "samples")
               if (v := getattr(self, k)) is not None},
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
        if self.examples is not None:
            import io

            import numpy as np

            buf = io.BytesIO()
            np.savez_compressed(buf, **self.examples)
            write_atomic(out / EXAMPLES_FILE, buf.getvalue())
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
                suites=list(d.get("suites", ["evasion"])),
                **{k: d[k] for k in ("minimal_norm", "autoattack", "privacy", "poisoning", "certify", "defense",
                                     "samples") if k in d},
            )
        except KeyError as e:
            raise InputError(f"audit results lack the field {e.args[0]!r}; the file is not an adverse audit") from e

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AuditResult:
        """Read ``results.json`` (or a folder holding one) written by :meth:`save`, checked against the results
        schema first (:func:`adverse.evaluation.schema.read_results`: an :class:`InputError` names the JSON path
        at fault)."""
        from .schema import read_results

        return cls.from_dict(read_results(path))


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
    """The finished work of one audit, batch by batch and part by part (checks, curves, suites), in
    ``folder/.audit-state.json`` (atomically rewritten after each). A rerun with the same model, data and settings (the same ``key``) takes finished batches from
    here instead of attacking again; any other state file is ignored and replaced.

    The state is untrusted on reading: it holds a ``digest`` (sha256 of the JSON of everything else) and every
    record is checked (types, finite numbers, per-sample lengths; the suites' parts against the results schema).
    A state whose key matches but which is damaged in any way is discarded as a whole, with a warning naming the
    file and the problem, and the audit starts afresh: a damaged state never changes results."""

    def __init__(self, folder: str | os.PathLike[str] | None, key: str) -> None:
        self.path = None if folder is None else Path(folder) / STATE_FILE
        self.key = key
        self.data: dict[str, Any] = {"key": key, "batches": {}, "parts": {}}
        if self.path is not None and (self.path.exists() or self.path.is_symlink()):
            old = self._read()
            if old is not None:
                self.data = old

    def _read(self) -> dict[str, Any] | None:
        """This audit's intact state from the file, or None (another audit's state, silently; a damaged one, with
        a warning)."""
        from .schema import read_regular_file

        try:
            raw = read_regular_file(self.path, MAX_STATE_BYTES, "resume state")
            old = json.loads(raw.decode("utf-8"))
        except InputError as e:
            self._discard(str(e))
            return None
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            self._discard(f"not valid JSON: {e}")
            return None
        if not isinstance(old, dict) or old.get("key") != self.key:
            return None  # another audit's state (or none at all): replaced as the audit goes
        why = _state_problem(old)
        if why is not None:
            self._discard(why)
            return None
        return {"key": old["key"], "batches": old["batches"], "parts": old["parts"]}

    def _discard(self, why: str) -> None:
        import warnings

        warnings.warn(f"{self.path}: the audit's resume state is damaged ({why}); it was discarded and the audit "
                      "starts afresh (the file is replaced as the audit goes)", UserWarning, stacklevel=4)
        self.data = {"key": self.key, "batches": {}, "parts": {}}

    @staticmethod
    def _id(attack: str, eps: float, start: int) -> str:
        return f"{attack}|{eps!r}|{start}"

    def get(self, attack: str, eps: float, start: int, stop: int | None = None) -> dict[str, Any] | None:
        """The finished batch ``[start, stop)`` of ``attack`` at ``eps``, or None. A record whose per-sample
        outcome does not cover the batch means the state is damaged: it is discarded (with a warning)."""
        rec = self.data["batches"].get(self._id(attack, eps, start))
        if rec is not None and stop is not None and len(rec["success"]) != stop - start:
            self._discard(f"batch {self._id(attack, eps, start)!r} holds {len(rec['success'])} outcomes for "
                          f"{stop - start} samples")
            return None
        return rec

    def put(self, attack: str, eps: float, start: int, record: dict[str, Any]) -> None:
        self.data["batches"][self._id(attack, eps, start)] = record
        self._write()

    def part(self, name: str, compute: Callable[[], Any]) -> Any:
        """The finished part ``name`` (a suite, the minimal-norm curve, ...) from the state, or ``compute()``
        saved to the state as soon as it returns (JSON-ready values only)."""
        parts = self.data.setdefault("parts", {})
        if name not in parts:
            parts[name] = compute()
            self._write()
        return parts[name]

    def _write(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            body = {"key": self.data["key"], "batches": self.data["batches"], "parts": self.data["parts"]}
            write_atomic(self.path, json.dumps({**body, "digest": _state_digest(body)}))


MAX_STATE_BYTES = 2**30
"""The largest resume state read back (a state over this is discarded, with a warning)."""


def _state_digest(body: Mapping[str, Any]) -> str:
    """sha256 of the JSON text of the state's ``key``, ``batches`` and ``parts`` (in that order): the same text
    after a round trip through the file, since JSON keeps key order and floats' shortest repr."""
    import hashlib

    body = {"key": body["key"], "batches": body["batches"], "parts": body["parts"]}
    return hashlib.sha256(json.dumps(body).encode("utf-8")).hexdigest()


def _state_problem(state: Mapping[str, Any]) -> str | None:
    """Why a resume state read from a file cannot be trusted, or None: its digest, then every record."""
    from .schema import validate_part

    if not isinstance(state.get("batches"), dict) or not isinstance(state.get("parts"), dict):
        return "no batches or parts"
    if not isinstance(state.get("digest"), str):
        return "no digest"
    if state["digest"] != _state_digest(state):
        return "its digest does not match its content: it was changed after adverse wrote it"

    def count(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    def seconds(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0

    for bid, rec in state["batches"].items():
        if not isinstance(rec, dict):
            return f"batch {bid!r} is not a record"
        ok = (isinstance(rec.get("success"), list) and all(type(v) is int and v in (0, 1) for v in rec["success"])
              and count(rec.get("forwards")) and count(rec.get("backwards")) and count(rec.get("queries", 0))
              and seconds(rec.get("seconds")) and isinstance(rec.get("params"), dict)
              and all(v is None or isinstance(v, (str, bool, int)) or (isinstance(v, float) and math.isfinite(v))
                      for v in rec["params"].values()))
        if not ok:
            return f"batch {bid!r} is not a valid record (success 0/1 per sample, passes ≥ 0, finite seconds)"
    for name, rec in state["parts"].items():
        if not isinstance(rec, dict) or "value" not in rec or not seconds(rec.get("seconds")):
            return f"part {name!r} is not a valid record (value, finite seconds)"
        why = validate_part(name, rec["value"])
        if why is not None:
            return f"part {name!r}: {why}"
    return None


def _update(h: Any, *tensors: Any) -> Any:
    """Feed the bytes of each tensor to the hash ``h``; returns ``h``."""
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h


def _model_code(model: Any) -> str:
    """What a model computes beyond its weights, for the fingerprint: the sha256 of the file
    :func:`adverse.loading.load_model` read it from, and for a torch module each submodule's class and code
    (TorchScript ``.code``, an FX or exported graph's ``.code``, else the source of its classes, an instance's own
    ``forward`` and its forward hooks where Python has it), with the torch version for torch's own classes."""
    import inspect

    import torch

    from ..loading import source_digest

    def source(obj: Any) -> str:
        try:
            return inspect.getsource(obj)
        except (OSError, TypeError):  # built in, or defined where Python keeps no source (a REPL)
            return ""

    parts = [f"file {source_digest(model)}", f"torch {torch.__version__}"]
    if not isinstance(model, torch.nn.Module):
        return "\n".join(parts)
    seen: set[type] = set()
    for name, m in model.named_modules():
        cls = type(m)
        parts.append(f"module {name}: {cls.__module__}.{cls.__qualname__}")
        if isinstance(m, torch.jit.ScriptModule):
            with contextlib.suppress(RuntimeError, AttributeError):  # a scripted module without forward
                parts.append(m.code)
        elif isinstance(m, torch.fx.GraphModule):
            parts.append(m.code)
        for klass in cls.__mro__:
            if klass in seen or klass.__module__.split(".")[0] in ("torch", "builtins"):
                continue
            seen.add(klass)
            parts.append(source(klass))
        hooks = [vars(m).get("forward")] + [f for d in (m._forward_pre_hooks, m._forward_hooks) for f in d.values()]
        parts.extend(f"{getattr(f, '__qualname__', type(f).__qualname__)}\n{source(f)}" for f in hooks if f is not None)
    return "\n".join(parts)


def _fingerprint(model: nn.Module, x: Any, y: Any, config: Mapping[str, Any]) -> str:
    """A hash of the model (its parameters and buffers, its code and the file it came from: see
    :func:`_model_code`), the data and the settings."""
    import hashlib

    from torch import nn as torch_nn

    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    h.update(_model_code(model).encode())
    if isinstance(model, torch_nn.Module):
        for name, t in model.state_dict().items():
            h.update(name.encode())
            _update(h, t)
    else:  # a black box: its file when known (an interrupted audit of an unknown callable starts afresh)
        path = getattr(model, "path", None)
        h.update(Path(path).read_bytes() if path is not None and Path(path).is_file() else repr(id(model)).encode())
    return _update(h, x, y).hexdigest()


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
@validated
def audit(
    model: nn.Module | None = None,
    data: Dataset | tuple[Any, Any] | None = None,
    *,
    eps: float | Iterable[float] = DEFAULT_EPS,
    norm: str = "linf",
    n: int | None = None,
    steps: int | Mapping[str, int] | None = None,
    attacks: Sequence[str] = DEFAULT_ATTACKS,
    batch_size: int = 256,
    seed: int = 0,
    checks: bool = True,
    check_n: int = 100,
    suites: Sequence[str] | None = None,
    train_data: Dataset | tuple[Any, Any] | None = None,
    recipe: Callable[[Any, int], Any] | None = None,
    minimal_norm: bool = True,
    autoattack: str | None = "fast",
    autoattack_n: int = 100,
    examples: bool = True,
    privacy: Mapping[str, Any] | None = None,
    poisoning: Mapping[str, Any] | None = None,
    certify: Mapping[str, Any] | None = None,
    defense: Mapping[str, Any] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    save_adv: str | os.PathLike[str] | None = None,
    executor: Any = None,
    progress: ProgressFn | None = None,
) -> AuditResult:
    """Audit ``model`` on ``data``: how robust it is (evasion), how private (privacy), how easily its training
    can be backdoored (poisoning), and what can be proven (certify).

    The **evasion** suite measures clean accuracy, robust accuracy under FGSM, PGD and APGD-CE (optionally Square,
    a black-box attack) at each ``eps`` and the worst case per sample; the robust-accuracy-vs-eps curve from a
    minimal-norm attack (FMN), confirmed at one eps by AutoAttack; and the gradient-masking sanity checks
    (white-box vs black-box vs transfer among them). The other suites run the functions of
    :mod:`~adverse.evaluation.privacy_suite`, :mod:`~adverse.evaluation.poisoning_suite` and
    :mod:`~adverse.evaluation.certify_suite`.

    Parameters
    ----------
    model : a torch module returning logits for inputs inside ``data.bounds`` (a tensor, a mapping or
        ``transformers`` ``ModelOutput`` with ``logits``, or a tuple whose first element is the logits: see
        :func:`adverse.models.as_classifier`), or a :class:`~adverse.models.BlackBox`. None audits the bundled
        demo model (``adverse.zoo.pretrained("digits-cnn")``, trained once on first use and cached), with its
        training data and recipe known, so every suite applies.
    data : an :class:`adverse.data.Dataset` or a pair ``(x, y)`` (tensors or numpy arrays): the held-out data
        to audit on. None means the bundled digits test split (only with ``model=None``).
    eps : the budgets, in input units; audited in increasing order.
    norm : "linf", "l2" or "l1".
    n : the upper bound of the samples every suite and part uses. The evasion suite attacks the first ``n`` samples
        (None: all), and its checks, minimal-norm curve and AutoAttack confirmation use at most that many; the
        other suites draw their own samples from all of ``data``, at most ``n`` of them (their own ``n`` option,
        or its default, when that is smaller; the poisoning suite tests on the first ``n``). Each suite's and
        part's actual count is in ``AuditResult.samples``.
    steps : iterations of the iterative attacks: an int for all of them, or a mapping such as
        ``{"pgd": 40, "apgd-ce": 100}`` (the defaults).
    attacks : a subset of :data:`ATTACKS` (default FGSM, PGD and APGD-CE; "square" adds the black-box Square
        attack with 1,000 queries).
    batch_size : samples per attack call; every batch of every attack gets ``seed``.
    seed : the seed of every attack's randomness; the same call gives the same numbers.
    checks : run the gradient-masking checks of :mod:`adverse.evaluation.checks` on the first ``check_n`` points,
        at the budget whose worst-case robust accuracy is closest to half the clean accuracy (where the checks
        discriminate best). With a ``recipe``, a surrogate trained by it enables the transfer check.
    suites : which of :data:`SUITES` to run. None runs every suite the inputs allow: evasion and certify always,
        privacy when ``train_data`` (the model's training points) is known, poisoning when a ``recipe`` is too.
    train_data : the model's training data (members for membership inference; the clean set the poisoning
        suite poisons). Known for the bundled demo.
    recipe : how the model was trained, ``recipe(dataset, seed) -> model`` (e.g. ``adverse.zoo.recipe(name)``):
        enables reference models (LiRA, RMIA), the poisoning suite and the transfer check.
    minimal_norm : compute the minimal-norm curve (FMN, 100 steps) in the evasion suite.
    autoattack : "fast" (APGD-CE + APGD-T), "standard" (the full AutoAttack) or None: confirm the robust
        accuracy at the checks' eps on the first ``autoattack_n`` points.
    examples : keep PGD adversarial examples of the first 8 images for the report (image data only).
    privacy, poisoning, certify : keyword options of :func:`~adverse.evaluation.privacy_suite.privacy_suite`,
        :func:`~adverse.evaluation.poisoning_suite.poisoning_suite` and
        :func:`~adverse.evaluation.certify_suite.certify_suite` (e.g. ``privacy={"references": 4}``).
    defense : keyword options of :func:`~adverse.evaluation.defense_suite.defense_suite`, with the preprocessing
        defense to evaluate as ``layer`` (e.g. ``defense={"layer": "pca:k=20"}``); giving it runs the defense suite
        (fitted on ``train_data``, the classifier retrained with ``recipe`` where the defense's paper does).
    state_dir : a folder for the audit's resume state (``.audit-state.json``, rewritten atomically after every
        batch and every finished part). If the audit is interrupted, rerunning it with the same model, data,
        settings and ``state_dir`` reuses every finished batch and part and gives the same result as an
        uninterrupted run. :meth:`AuditResult.save` into that folder removes the state.
    save_adv : a folder to write every adversarial example of the evasion suite to (every attack, eps and
        sample, with its outcome, norm and the budget spent): one ``.npz`` per (attack, eps, batch), written as the
        batch finishes, and the manifest ``index.json`` (see ``docs/results-schema.md``); read it back with
        :func:`adverse.results.load_adversarial`. Batches already saved there by the same audit are kept, not
        rewritten. The command line's ``--save-adv`` writes ``OUT/adversarial``.
    executor : where the attack batches and reference models run: None / "local" (in-process), "ray", or an
        executor object from :mod:`adverse.execution` (e.g. ``RayExecutor(address=...)``). Every batch gets
        ``seed``, so the numbers do not depend on the executor.
    progress : ``progress(description, completed, total)``, called as work completes (for progress bars); each
        step reports its own total.

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
    from ..evasion.square import square
    from ..execution import Task, get_executor, imap_tasks
    from ..models import BlackBox, as_classifier, base_model
    from ..threat import check_norm
    from ..zoo import train_with

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
    autoattack_n = _check_int("autoattack_n", autoattack_n, 1)
    if autoattack is not None and autoattack not in ("fast", "standard"):
        raise InputError(f"autoattack must be 'fast', 'standard' or None, got {autoattack!r}")
    options = {k: _check_options(k, v) for k, v in (("privacy", privacy), ("poisoning", poisoning),
                                                    ("certify", certify), ("defense", defense))}
    if recipe is not None and not callable(recipe):
        raise InputError(f"recipe must be a callable recipe(dataset, seed) -> model, got {type(recipe).__name__}")
    executor = get_executor(executor)

    # (attack function, its settings, its cost per sample in gradient steps), resolved before any work
    recipes: dict[str, tuple[Callable[..., Any], dict[str, Any], int]] = {
        "fgsm": (fgsm, {}, 1),
        "pgd": (pgd, {"steps": steps_by["pgd"], "restarts": 1}, steps_by["pgd"]),
        "apgd-ce": (apgd, {"steps": steps_by["apgd-ce"], "loss": "ce"}, steps_by["apgd-ce"]),
        "square": (square, {"max_queries": SQUARE_QUERIES}, SQUARE_QUERIES // 3),
    }
    specs = {a: recipes[a] for a in names}

    def report(description: str, completed: float, total: float) -> None:
        if progress is not None:
            progress(description, completed, total)

    # ---- what to audit
    members = None
    if model is None:
        if data is not None or train_data is not None:
            raise InputError("data was given without a model; pass the model to audit as well")
        from ..data import digits
        from ..zoo import pretrained
        from ..zoo import recipe as zoo_recipe

        report(f"loading {DEFAULT_MODEL} (trained once on first use)", 0, 1)
        model = pretrained(DEFAULT_MODEL)
        model_info: dict[str, Any] = {"name": DEFAULT_MODEL, "source": "adverse.zoo"}
        dataset = digits("test")
        members = digits("train")
        recipe = zoo_recipe(DEFAULT_MODEL) if recipe is None else recipe
        data_info: dict[str, Any] = {"name": "digits", "split": "test", "source": "adverse.data.digits",
                                     "train": {"name": "digits", "split": "train", "n": len(members)}}
    else:
        if not isinstance(model, (torch.nn.Module, BlackBox)):
            raise InputError(f"model must be a torch.nn.Module returning logits or an adverse.models.BlackBox, got "
                             f"{type(model).__name__}")
        if data is None:
            raise InputError("pass the data to audit the model on, e.g. audit(model, adverse.data.load_npz(path))")
        dataset = _as_dataset(data)
        path = getattr(model, "path", None)  # a black box loaded from a file is named by it
        model_info = {"name": Path(path).name if path is not None else type(base_model(model)).__name__,
                      "source": "user"}
        data_info = {"name": dataset.name, "source": "user"}
        if train_data is not None:
            members = _as_dataset(train_data)
            if tuple(members.x.shape[1:]) != tuple(dataset.x.shape[1:]):
                raise InputError(f"train_data inputs have shape {tuple(members.x.shape[1:])} but data inputs "
                                 f"{tuple(dataset.x.shape[1:])}; both must come from the same task")
            data_info["train"] = {"name": members.name, "n": len(members)}
    user_model = base_model(model)  # for the fingerprint (its file digest, its code)
    model = as_classifier(model)  # once, for every suite: a ModelOutput, a dict with logits or a tuple → logits
    suite_list = _check_suites(suites, members is not None, recipe is not None)
    if defense is not None and suites is None:
        suite_list.append("defense")  # a defense to evaluate was given
    if "defense" in suite_list:
        from .defense_suite import check_layer

        check_layer(options["defense"].get("layer"), model=model, train=members is not None,
                    recipe=recipe is not None, retrain=options["defense"].get("retrain"))
    model_seconds = time.perf_counter() - started
    black_box = isinstance(model, BlackBox)
    model_info["parameters"] = None if black_box else int(sum(p.numel() for p in model.parameters()))
    if black_box:
        model_info["black_box"] = True
        names, specs = _black_box_attacks(names, attacks, specs, recipes)
        if "certify" in suite_list:
            if suites is not None:
                raise InputError("the certify suite needs a torch module (IBP and smoothing run the model in torch); "
                                 "this model is a black box (e.g. an ONNX file without onnx2torch)")
            suite_list.remove("certify")
        checks, minimal_norm, autoattack, examples = False, False, None, False
    if recipe is not None:
        model_info["recipe"] = repr(recipe)

    full = dataset  # the other suites take their own samples from all of it
    if n is not None:
        if n > len(dataset):
            raise InputError(f"n={n} but the data has only {len(dataset)} samples; pass n ≤ {len(dataset)}")
        dataset = dataset.subset(n)
    suite_kwargs = {k: dict(v) for k, v in options.items()}  # what the suites get (config: the options as given)
    if n is not None:
        for k in ("privacy", "certify", "defense"):  # n bounds every suite: min(n, the suite's own n or default)
            own = suite_kwargs[k].get("n", _suite_default(k, "n"))
            if own is None or (isinstance(own, int) and not isinstance(own, bool)):
                suite_kwargs[k]["n"] = n if own is None else min(own, n)
    total_n = len(dataset)
    if total_n == 0:
        raise InputError("the data holds no samples")
    data_info.update(n=total_n, num_classes=dataset.num_classes, bounds=list(dataset.bounds),
                     shape=list(dataset.x.shape[1:]))
    bounds = tuple(dataset.bounds)

    param = None if black_box else next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    x, y = dataset.x.to(device), dataset.y.to(device)
    batches = [(i, min(i + batch_size, total_n)) for i in range(0, total_n, batch_size)]
    seconds: dict[str, float] = {"model": model_seconds}

    # ---- clean accuracy (the attacks count clean errors as successes too); every answer is checked: logits of
    # the right shape, finite (argmax of NaN is 0), and a model that fails on the data's shape says so
    pred = torch.cat([_predict_checked(model, x[a:b], black_box).to(y.device) for a, b in batches])
    clean_correct = (pred == y).cpu().numpy()
    clean_count = int(clean_correct.sum())

    config: dict[str, Any] = {
        "eps": eps_list, "norm": norm, "n": n, "seed": seed, "batch_size": batch_size,
        "attacks": {a: dict(specs[a][1]) for a in names}, "suites": suite_list,
    }
    for k, opts in options.items():
        if k in suite_list:
            config[k] = opts
    key_config = dict(config, checks=checks, check_n=check_n, minimal_norm=minimal_norm, autoattack=autoattack,
                      autoattack_n=autoattack_n, recipe=repr(recipe),
                      members=None if members is None else _digest(members), data=_digest(full))
    state = _Checkpoint(state_dir, _fingerprint(user_model, x, y, key_config))
    adv_writer = None
    if save_adv is not None and "evasion" in suite_list:
        from ..results import AdversarialWriter

        adv_writer = AdversarialWriter(save_adv, state.key, norm=norm, bounds=bounds)

    def timed(name: str, compute: Callable[[], Any]) -> Any:
        """A finished part from the state, or computed and saved; its compute time goes to ``seconds``."""
        def run() -> dict[str, Any]:
            t0 = time.perf_counter()
            value = compute()
            return {"value": value, "seconds": time.perf_counter() - t0}

        rec = state.part(name, run)
        seconds[name] = seconds.get(name, 0.0) + rec["seconds"]
        return rec["value"]

    # ---- evasion: the attacks at fixed eps
    rows: list[dict[str, Any]] = []
    fooled: dict[tuple[str, float], np.ndarray] = {}
    worst: list[dict[str, Any]] = []
    check_rows: list[dict[str, Any]] = []
    mn_result = aa_result = example_arrays = None
    if "evasion" in suite_list:
        t_evasion = time.perf_counter()
        total_work = float(sum(specs[a][2] for a in names) * total_n * len(eps_list))
        done = 0.0
        extra = {} if bounds == (0.0, 1.0) else {"bounds": bounds}
        for e in eps_list:
            for name in names:
                fn, kwargs, cost = specs[name]
                description = f"{name} at eps {e:g}"
                report(description, done, total_work)
                # a batch is attacked again when its outcome is not in the state or (with save_adv) its examples
                # are not saved; the seed makes the rerun give the same examples
                pending = [(a, b) for a, b in batches if state.get(name, e, a, b) is None
                           or (adv_writer is not None and not adv_writer.has(name, e, a, b))]
                done += cost * (total_n - sum(b - a for a, b in pending))
                tasks = [Task(i, seed, (fn, model, x[a:b], y[a:b], dict(eps=e, norm=norm, seed=seed, **kwargs,
                                                                        **extra), adv_writer is not None))
                         for i, (a, b) in enumerate(pending)]
                for (a, b), rec in zip(pending, imap_tasks(_attack_batch, tasks, executor)):
                    adv = rec.pop("adversarial", None)
                    if adv_writer is not None:  # streamed to disk as each batch finishes, before its record
                        adv_writer.write(name, e, a, b, y=y[a:b], success=rec["success"], forwards=rec["forwards"],
                                         backwards=rec["backwards"], queries=rec["queries"], seconds=rec["seconds"],
                                         **adv)
                    state.put(name, e, a, rec)  # saved as each batch finishes, wherever it ran
                    done += cost * (b - a)
                    report(description, done, total_work)
                parts, fw, bw, queries, secs, params = [], 0, 0, 0, 0.0, {}
                for a, b in batches:
                    rec = state.get(name, e, a, b)
                    parts.append(np.asarray(rec["success"], dtype=bool))
                    fw, bw, secs = fw + rec["forwards"], bw + rec["backwards"], secs + rec["seconds"]
                    queries += rec.get("queries", 0)
                    params = rec["params"]
                bad = np.concatenate(parts) | ~clean_correct
                fooled[(name, e)] = bad
                robust = total_n - int(bad.sum())
                rows.append({
                    "attack": name, "eps": e, "robust_accuracy": robust / total_n, "robust": robust,
                    "success_rate": 1.0 - robust / total_n, "forwards": fw, "backwards": bw, "seconds": secs,
                    "params": params, **({"queries": queries} if queries else {}),
                })

        # worst case per sample: fooled by any attack at this eps or a smaller one
        union = ~clean_correct
        for e in eps_list:
            for name in names:
                union = union | fooled[(name, e)]
            fooled[("worst-case", e)] = union.copy()
            robust = total_n - int(union.sum())
            worst.append({"eps": e, "robust_accuracy": robust / total_n, "robust": robust, "attacks": list(names)})
        seconds["evasion"] = time.perf_counter() - t_evasion

        clean_share = clean_count / total_n
        check_eps = min(eps_list, key=lambda e: abs(worst[eps_list.index(e)]["robust_accuracy"] - clean_share / 2))
        if checks:
            from .checks import run_checks

            k = min(check_n, total_n)
            report(f"sanity checks at eps {check_eps:g} on {k} points", 0, 1)

            def sanity_checks() -> list[dict[str, Any]]:
                surrogate = None
                if recipe is not None and members is not None:
                    report("training a surrogate with the recipe (transfer check)", 0, 1)
                    surrogate = train_with(recipe, members, seed + 1)
                found = run_checks(model, x[:k], y[:k], eps=check_eps, norm=norm, bounds=bounds, seed=seed,
                                   surrogate=surrogate)
                return [json_safe(c.to_dict()) for c in found]

            check_rows = timed("checks", sanity_checks)
            config["checks"] = {"eps": check_eps, "n": k, "steps": 20, "square_max_queries": 1000,
                                "surrogate": "recipe, seed + 1" if recipe is not None and members is not None
                                else None}
        from .confirm import adversarial_examples, autoattack_confirmation, minimal_norm_curve, robust_at

        if minimal_norm:
            what = f"minimal-norm curve (FMN, 100 steps) on {total_n} points"
            report(what, 0, total_n)
            mn_result = timed("minimal_norm", lambda: minimal_norm_curve(
                model, x, y, norm=norm, bounds=bounds, steps=100, batch_size=batch_size, seed=seed,
                progress=lambda done, total: report(what, done, total)))
            config["minimal_norm"] = {"attack": "fmn", "steps": 100}
        if autoattack is not None:
            k = min(autoattack_n, total_n)
            what = f"AutoAttack ({autoattack}) at eps {check_eps:g} on {k} points"
            report(what, 0, 1)
            curve = robust_at(mn_result["norms"][:k], check_eps) if mn_result is not None else None
            aa_result = timed("autoattack", lambda: autoattack_confirmation(
                model, x[:k], y[:k], eps=check_eps, norm=norm, bounds=bounds, version=autoattack, seed=seed,
                curve_robust=curve, fixed_robust=~fooled[("worst-case", check_eps)][:k],
                progress=lambda attack, done, total: report(what, done, total)))
            config["autoattack"] = {"version": autoattack, "eps": check_eps, "n": k}
        if examples and x.dim() == 4:
            example_arrays = adversarial_examples(model, x, y, eps=check_eps, norm=norm, bounds=bounds, seed=seed)

    # ---- the other suites
    suite_results: dict[str, Any] = {}
    if "privacy" in suite_list:
        from .privacy_suite import privacy_suite

        suite_results["privacy"] = timed("privacy", lambda: privacy_suite(
            model, members, full, recipe=recipe, seed=seed, executor=executor, progress=progress,
            **suite_kwargs["privacy"]))
    if "poisoning" in suite_list:
        from .poisoning_suite import poisoning_suite

        test = full if n is None else full.subset(n)  # n ≤ len(full), checked above
        suite_results["poisoning"] = timed("poisoning", lambda: poisoning_suite(
            recipe, members, test, seed=seed, progress=progress, **suite_kwargs["poisoning"]))
    if "certify" in suite_list:
        from .certify_suite import certify_suite

        certify_options = {"n": min(100, len(full)), **suite_kwargs["certify"]}
        suite_results["certify"] = timed("certify", lambda: certify_suite(
            model, full, norm=norm, eps=eps_list, seed=seed, progress=progress, **certify_options))
    if "defense" in suite_list:
        from .defense_suite import defense_suite

        suite_results["defense"] = timed("defense", lambda: defense_suite(
            model, full, train=members, recipe=recipe, norm=norm, eps=eps_list, seed=seed, progress=progress,
            **suite_kwargs["defense"]))

    budget = {
        "forwards": sum(r["forwards"] for r in rows), "backwards": sum(r["backwards"] for r in rows),
        "seconds": sum(r["seconds"] for r in rows),
    }
    environment = {
        "python": platform.python_version(), "torch": torch.__version__, "adverse": __version__,
        "numpy": np.__version__, "platform": platform.platform(), "device": str(device),
        "threads": torch.get_num_threads(), "executor": getattr(executor, "name", type(executor).__name__),
    }
    samples: dict[str, int] = {}  # how many samples each suite and part used
    if "evasion" in suite_list:
        samples["evasion"] = total_n
        if "checks" in config:
            samples["checks"] = config["checks"]["n"]
        if mn_result is not None:
            samples["minimal_norm"] = total_n
        if aa_result is not None:
            samples["autoattack"] = config["autoattack"]["n"]
        if example_arrays is not None:
            samples["examples"] = len(example_arrays["x"])
    if "privacy" in suite_results:
        samples["privacy"] = int(suite_results["privacy"]["config"]["n"])
    if "poisoning" in suite_results:
        samples["poisoning"] = int(suite_results["poisoning"]["config"]["n_test"])
    if "certify" in suite_results:
        samples["certify"] = int(suite_results["certify"]["n"])
    if "defense" in suite_results:
        samples["defense"] = int(suite_results["defense"]["n"])
    seconds["total"] = time.perf_counter() - started
    return AuditResult(
        clean_accuracy=clean_count / total_n, n=total_n, attacks=rows, worst_case=worst, config=config,
        model=model_info, data=data_info, environment=environment, budget=budget, seconds=seconds,
        created=datetime.now(timezone.utc).replace(microsecond=0).isoformat(), checks=check_rows,
        suites=suite_list, minimal_norm=mn_result, autoattack=aa_result, fooled=fooled, examples=example_arrays,
        samples=samples, **suite_results,
    )


def _predict_checked(model: Any, x: Any, black_box: bool) -> Any:
    """Predicted labels of one batch, after checking the model's answer (:func:`adverse.models.check_logits` for a
    torch model, the black-box answer checks otherwise); a forward pass that raises on these inputs becomes a
    :class:`~adverse.errors.ModelError` naming the data's shape and what the model expects."""
    import torch

    from ..evasion._query import check_answer
    from ..models import checked_logits

    if black_box:
        out = check_answer(torch.as_tensor(model(x)), x.shape[0], model.output or "scores", None)
        return out.long() if out.dim() == 1 else out.argmax(dim=1)
    # probabilities pass here: the attacks refuse them, naming the fix, and other suites may take them
    return checked_logits(model, x, probabilities=True).argmax(dim=1)


def _black_box_attacks(names: list[str], requested: Any, specs: dict[str, Any], recipes: dict[str, Any]
                       ) -> tuple[list[str], dict[str, Any]]:
    """A black-box model can only be queried: the default attacks become Square; asking for a white-box attack
    is an error."""
    if list(names) == list(DEFAULT_ATTACKS) and tuple(requested) == DEFAULT_ATTACKS:
        return ["square"], {"square": recipes["square"]}
    white = [a for a in names if a != "square"]
    if white:
        raise InputError(f"the model is a black box (it can only be queried, e.g. an ONNX file without onnx2torch): "
                         f"{', '.join(white)} need gradients; use attacks=['square']")
    return names, specs


def _check_suites(suites: Sequence[str] | None, has_members: bool, has_recipe: bool) -> list[str]:
    """The suites to run, in :data:`SUITES` order; None picks every suite the inputs allow."""
    if suites is None:
        chosen = {"evasion", "certify"} | ({"privacy"} if has_members else set())
        chosen |= {"poisoning"} if has_members and has_recipe else set()
        return [s for s in SUITES if s in chosen]
    names = [suites] if isinstance(suites, str) else list(suites)
    unknown = [s for s in names if s not in SUITES]
    if unknown or not names:
        raise InputError(f"unknown suite(s) {unknown}; choose among {', '.join(SUITES)}")
    if "privacy" in names and not has_members:
        raise InputError("the privacy suite needs the model's training data (members): pass train_data= "
                         "(--train-data on the command line)")
    if "poisoning" in names and not (has_members and has_recipe):
        raise InputError("the poisoning suite retrains the model on poisoned data: it needs the training data "
                         "(train_data=, --train-data) and the training recipe (recipe=, --recipe)")
    return [s for s in SUITES if s in names]


_SUITE_FUNCTIONS = {"privacy": ("privacy_suite", "privacy_suite"), "poisoning": ("poisoning_suite", "poisoning_suite"),
                    "certify": ("certify_suite", "certify_suite"), "defense": ("defense_suite", "defense_suite")}
_PASSED = {"model", "members", "nonmembers", "recipe", "train", "test", "data", "seed", "progress", "executor",
           "norm", "eps"}


def _check_options(suite: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The keyword options of a suite's function, checked against its signature before any work starts."""
    import importlib
    import inspect

    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise InputError(f"{suite} options must be a mapping of keyword arguments, got {type(options).__name__}")
    module, name = _SUITE_FUNCTIONS[suite]
    fn = getattr(importlib.import_module(f"{__package__}.{module}"), name)
    allowed = {p.name for p in inspect.signature(fn).parameters.values() if p.kind == p.KEYWORD_ONLY} - _PASSED
    bad = sorted(set(options) - allowed)
    if bad:
        raise InputError(f"unknown {suite} option(s) {bad}; the {suite} suite takes {', '.join(sorted(allowed))} "
                         "(the audit itself passes the model, data, seed, norm and eps)")
    return dict(options)


def _suite_default(suite: str, name: str) -> Any:
    """The default of a suite function's keyword option ``name``."""
    import importlib
    import inspect

    module, fn_name = _SUITE_FUNCTIONS[suite]
    fn = inspect.unwrap(getattr(importlib.import_module(f"{__package__}.{module}"), fn_name))
    return inspect.signature(fn).parameters[name].default


def _digest(data: Dataset) -> str:
    import hashlib

    return _update(hashlib.sha256(), data.x, data.y).hexdigest()


def _attack_batch(task: Any) -> dict[str, Any]:
    """One attack on one batch (run by an executor): the per-sample outcome and the budget, JSON-ready."""
    fn, model, x, y, kwargs, *keep = task.payload
    r = fn(model, x, y, **kwargs)
    rec = {"success": r.success.cpu().numpy().astype(int).tolist(), "forwards": r.forwards,
           "backwards": r.backwards, "queries": r.queries, "seconds": r.seconds, "params": r.summary()["params"]}
    if keep and keep[0]:  # the examples themselves, for save_adv (taken out before the record is saved)
        rec["adversarial"] = {"x_adv": r.x_adv.detach().cpu().numpy(), "norms": r.norms.detach().cpu().numpy()}
    return rec


def json_safe(value: Any) -> Any:
    """Numbers JSON can hold: NaN and infinities become None (``results.json`` is strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
