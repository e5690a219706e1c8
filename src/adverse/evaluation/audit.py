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
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from ..validation import validated
from . import suites as registry
from .common import (
    DEFAULT_EPS,
    ProgressFn,
    SuiteContext,
    check_eps,
    check_int,
    check_options,
    json_safe,
    json_value,
    write_atomic,
)
from .evasion_suite import ATTACKS, DEFAULT_ATTACKS, DEFAULT_STEPS, SQUARE_QUERIES

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from ..data import Dataset

SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"
STATE_FILE = ".audit-state.json"
DEFAULT_MODEL = "digits-cnn"
EXAMPLES_FILE = "examples.npz"
SUITES = registry.NAMES
__all__ = ["ATTACKS", "DEFAULT_ATTACKS", "DEFAULT_EPS", "DEFAULT_STEPS", "SQUARE_QUERIES", "SUITES", "AuditResult",
           "ProgressFn", "audit", "json_safe", "write_atomic"]


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
    sections : what the other suites found, by their key in ``results.json`` (:data:`adverse.evaluation.suites.KEYS`);
        each is also an attribute (``result.privacy``, ``result.corruptions``; None when the suite did not run).
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
    sections: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, int] | None = None
    fooled: dict[tuple[str, float], np.ndarray] = field(default_factory=dict, repr=False, compare=False)
    examples: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def __getattr__(self, name: str) -> Any:
        if name in registry.KEYS:  # a suite's results: result.privacy, result.dp_audit, ...
            return self.__dict__.get("sections", {}).get(name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

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
            **{k: v for k in ("minimal_norm", "autoattack") if (v := getattr(self, k)) is not None},
            **{k: self.sections[k] for k in registry.KEYS if self.sections.get(k) is not None},
            **({"samples": self.samples} if self.samples is not None else {}),
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
                sections={k: d[k] for k in registry.KEYS if k in d},
                **{k: d[k] for k in ("minimal_norm", "autoattack", "samples") if k in d},
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
        h.update(t.detach().cpu().contiguous().numpy())  # the buffer itself: no copy of a batch
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


def _fingerprint(model: nn.Module, data: str, config: Mapping[str, Any]) -> str:
    """A hash of the model (its parameters and buffers, its code and the file it came from: see
    :func:`_model_code`), the data (``data``: its digest, :func:`_digest`) and the settings."""
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
    h.update(data.encode())
    return h.hexdigest()


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
    autoattack_n: int | None = 100,
    examples: bool = True,
    privacy: Mapping[str, Any] | None = None,
    poisoning: Mapping[str, Any] | None = None,
    certify: Mapping[str, Any] | None = None,
    defense: Mapping[str, Any] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    save_adv: str | os.PathLike[str] | None = None,
    executor: Any = None,
    progress: ProgressFn | None = None,
    device: str | None = None,
    precision: str = "fp32",
    compile: str = "auto",
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
        accuracy at the checks' eps on the first ``autoattack_n`` points (None: every audited point).
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
    device : where the model runs: "auto" (a GPU if there is one), "cpu", "cuda", "cuda:N", "mps"; None: where
        it is. The model is moved there once and moved back when the audit ends; every batch is moved to it.
    precision : "fp32" (default), "bf16" or "fp16": the model's forward passes run under ``torch.autocast``
        (:class:`adverse.models.Autocast`) with losses, projections and bookkeeping in float32. With bf16 or fp16
        the audit also runs :func:`adverse.evaluation.checks.check_precision` (PGD robust accuracy in both
        precisions on up to 64 points, and zero-gradient shares): a warning in ``checks`` when they differ by more
        than 1 pp, or when fp16 gradients underflow. AutoAttack searches in that precision and confirms every
        point it fools in fp32 (``autoattack(precision=...)``).
    compile : AutoAttack's cheaper passes, "auto" (default: ``channels_last`` and ``torch.compile`` where each was
        measured faster on this model), "on" or "off" (:func:`adverse.acceleration.accelerated`); what was chosen
        is in the AutoAttack result's ``acceleration``.
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
    from ..execution import get_executor
    from ..models import PRECISIONS, Autocast, BlackBox, as_classifier, base_model, device_of
    from ..streaming import Stream, as_data
    from ..threat import check_norm
    from .evasion_suite import predict_checked

    started = time.perf_counter()
    eps_list = check_eps(eps)
    norm = check_norm(norm)
    batch_size = check_int("batch_size", batch_size, 1)
    seed = check_int("seed", seed, 0)
    if n is not None:
        n = check_int("n", n, 1)
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if recipe is not None and not callable(recipe):
        raise InputError(f"recipe must be a callable recipe(dataset, seed) -> model, got {type(recipe).__name__}")
    from ..acceleration import check_mode  # imports torch: not at import time (the CLI's --help stays fast)

    given = _suite_options(options, privacy=privacy, poisoning=poisoning, certify=certify, defense=defense)
    given["evasion"] = {"attacks": attacks, "steps": steps, "checks": checks, "check_n": check_n,
                        "minimal_norm": minimal_norm, "autoattack": autoattack, "autoattack_n": autoattack_n,
                        "examples": examples, "save_adv": save_adv, "compile": check_mode(compile)}
    opts = {name: check_options(name, registry.get(name).function, o, registry.get(name).passed)
            for name, o in given.items()}
    executor = get_executor(executor)

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
        dataset: Any = digits("test")
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
        dataset = as_data(data)
        path = getattr(model, "path", None)  # a black box loaded from a file is named by it
        model_info = {"name": Path(path).name if path is not None else type(base_model(model)).__name__,
                      "source": "user"}
        data_info = {"name": dataset.name, "source": "user"}
        if isinstance(dataset, Stream):
            data_info["streamed"] = True
        if train_data is not None:
            members = as_data(train_data)
            if isinstance(members, Stream):  # training data is held in memory (the suites retrain on it)
                members = members.take(len(members))
            data_info["train"] = {"name": members.name, "n": len(members)}
    user_model = base_model(model)  # for the fingerprint (its file digest, its code)
    model = as_classifier(model)  # once, for every suite: a ModelOutput, a dict with logits or a tuple → logits
    moved = _to_device(user_model, device, isinstance(model, BlackBox))
    if precision != "fp32":
        if isinstance(model, BlackBox):
            raise InputError(f"precision={precision!r} needs a torch module; this model is a black box")
        model = Autocast(user_model, precision)
    try:
        black_box = isinstance(model, BlackBox)
        have = {"members"} if members is not None else set()
        have |= {"recipe"} if recipe is not None else set()
        have |= set() if black_box else {"white-box"}
        have |= {"images"} if len(dataset.shape) == 3 else set()
        asked = suites
        if suites is None:  # every default suite the inputs allow, and any other whose options were given
            asked = [s for s in registry.NAMES if registry.get(s).default or s in given and s != "evasion"]
            asked = [s for s in asked if not registry.get(s).missing(have) or (s in given and s != "evasion")]
        suite_list = registry.choose(asked, have)
        model_seconds = time.perf_counter() - started
        model_info["parameters"] = None if black_box else int(sum(p.numel() for p in model.parameters()))
        if black_box:
            model_info["black_box"] = True
        if recipe is not None:
            model_info["recipe"] = repr(recipe)
        if n is not None and n > len(dataset):
            raise InputError(f"n={n} but the data has only {len(dataset)} samples; pass n ≤ {len(dataset)}")
        total_n = len(dataset) if n is None else n
        if total_n == 0:
            raise InputError("the data holds no samples")
        if members is not None and isinstance(dataset, Stream):
            dataset.num_classes = dataset.num_classes or members.num_classes

        ctx = SuiteContext(model=model, black_box=black_box, data=dataset, n=n, members=members, recipe=recipe,
                           norm=norm, eps=eps_list, seed=seed, batch_size=batch_size, executor=executor,
                           progress=report, part=lambda name, compute: compute())
        for name in suite_list:  # fail fast: every suite checks its options before any work
            suite = registry.get(name)
            if suite.check is not None:
                suite.check(ctx, opts.get(name, {}))
        device = (None if black_box else device_of(model)) or torch.device("cpu")
        seconds: dict[str, float] = {"model": model_seconds}
        resumable = state_dir is not None or save_adv is not None

        # ---- clean accuracy (the attacks count clean errors as successes too); every answer is checked: logits of
        # the right shape, finite (argmax of NaN is 0), and a model that fails on the data's shape says so. With a
        # resume state, the same pass hashes all the data (the fingerprint)
        import hashlib

        digest = hashlib.sha256()
        preds, labels = [], []
        for a, b, xb, yb in dataset.batches(batch_size, stop=None if resumable else total_n):
            if resumable:
                _update(digest, xb, yb)
            if a < total_n:
                xb, yb = xb[:total_n - a], yb[:total_n - a]
                preds.append(predict_checked(model, xb.to(device), black_box).cpu())
                labels.append(yb)
            if a == 0 and isinstance(dataset, Stream) and dataset.num_classes is None and not black_box:
                with torch.no_grad():  # the number of classes is the model's (labels are checked against it)
                    from ..models import checked_logits

                    dataset.num_classes = int(checked_logits(model, xb[:1].to(device), probabilities=True).shape[1])
        clean_correct = (torch.cat(preds) == torch.cat(labels)).numpy()
        clean_count = int(clean_correct.sum())
        if members is not None and tuple(members.shape) != tuple(dataset.shape):
            raise InputError(f"train_data inputs have shape {tuple(members.shape)} but data inputs "
                             f"{tuple(dataset.shape)}; both must come from the same task")
        if dataset.num_classes is None:
            dataset.num_classes = int(torch.cat(labels).max()) + 1
        data_info.update(n=total_n, num_classes=dataset.num_classes, bounds=list(dataset.bounds),
                         shape=list(dataset.shape))

        config: dict[str, Any] = {"eps": eps_list, "norm": norm, "n": n, "seed": seed, "batch_size": batch_size,
                                  "suites": suite_list, "attacks": {}}  # the evasion suite says which ran
        if precision != "fp32":
            config["precision"] = precision
        for k in registry.NAMES:
            if k in suite_list and k != "evasion" and k in given:
                config[registry.key_of(k)] = json_value(opts[k])
        key = ""  # the fingerprint names saved work: computed (hashing the training data too) only when saving
        if resumable:
            key_config = dict(config, options={k: {o: repr(v) for o, v in opts.get(k, {}).items()
                                                   if o != "save_adv"} for k in suite_list}, recipe=repr(recipe),
                              members=None if members is None
                              else _update(hashlib.sha256(), members.x, members.y).hexdigest())
            key = _fingerprint(user_model, digest.hexdigest(), key_config)
        state = _Checkpoint(state_dir, key)

        def part(name: str, compute: Callable[[], Any]) -> Any:
            """A finished part from the state, or computed and saved; its compute time goes to ``seconds``."""
            def run() -> dict[str, Any]:
                t0 = time.perf_counter()
                value = compute()
                return {"value": value, "seconds": time.perf_counter() - t0}

            rec = state.part(name, run)
            seconds[name] = seconds.get(name, 0.0) + rec["seconds"]
            return rec["value"]

        ctx.part, ctx.state = part, state
        ctx.extra.update(total=total_n, clean_correct=clean_correct, key=state.key, device=device)

        # ---- the suites, in registry order
        evasion: dict[str, Any] = {"attacks": [], "worst_case": [], "checks": [], "minimal_norm": None,
                                   "autoattack": None, "examples": None, "fooled": {}, "config": {}, "samples": {}}
        sections: dict[str, Any] = {}
        samples: dict[str, int] = {}
        for name in suite_list:
            suite = registry.get(name)
            if suite.key is None:  # the evasion suite: the top-level results
                evasion = suite.run(ctx, **opts.get(name, {}))
                seconds.update(evasion.pop("seconds"))
                if precision != "fp32":  # does the reduced precision change the numbers? (in the checks)
                    evasion["checks"] = [*evasion["checks"], _precision_check(
                        user_model, model, dataset, total_n, eps_list, norm, seed, device, report)]
                config.update(evasion["config"])
                samples.update(evasion["samples"])
                continue
            result = part(suite.key, lambda suite=suite: suite.run(ctx, **opts.get(suite.name, {})))
            sections[suite.key] = result
            count = suite.samples(result)
            if count is not None:
                samples[suite.key] = int(count)
        rows = evasion["attacks"]
        budget = {
            "forwards": sum(r["forwards"] for r in rows), "backwards": sum(r["backwards"] for r in rows),
            "seconds": sum(r["seconds"] for r in rows),
        }
        environment = {
            "python": platform.python_version(), "torch": torch.__version__, "adverse": __version__,
            "numpy": np.__version__, "platform": platform.platform(), "device": str(device),
            "threads": torch.get_num_threads(), "executor": getattr(executor, "name", type(executor).__name__),
        }
        seconds["total"] = time.perf_counter() - started
        return AuditResult(
            clean_accuracy=clean_count / total_n, n=total_n, attacks=rows, worst_case=evasion["worst_case"],
            config=config, model=model_info, data=data_info, environment=environment, budget=budget, seconds=seconds,
            created=datetime.now(timezone.utc).replace(microsecond=0).isoformat(), checks=evasion["checks"],
            suites=suite_list, minimal_norm=evasion["minimal_norm"], autoattack=evasion["autoattack"],
            fooled=evasion["fooled"], examples=evasion["examples"], samples=samples, sections=sections,
        )
    finally:
        if moved is not None:  # the caller's model goes back where it was
            user_model.to(moved)


def _to_device(model: Any, device: str | None, black_box: bool) -> Any:
    """Move ``model`` to ``device`` (:func:`adverse.models.resolve_device`); the device it was on (to move it
    back), or None when nothing moved."""
    if device is None:
        return None
    import torch

    from ..models import device_of, resolve_device

    target = resolve_device(device)
    if black_box:
        if target.type != "cpu":
            raise InputError(f"device={device!r}: this model is a black box (it runs wherever its own code runs); "
                             "pass device='cpu' or leave it out")
        return None
    before = device_of(model) or torch.device("cpu")
    if before == target:
        return None
    model.to(target)
    return before


PRECISION_CHECK_N = 64
"""Points the precision check attacks in both precisions."""


def _precision_check(user_model: Any, reduced: Any, data: Any, total_n: int, eps_list: list[float], norm: str,
                     seed: int, device: Any, report: Callable[[str, float, float], None]) -> dict[str, Any]:
    """:func:`adverse.evaluation.checks.check_precision` on the first points, at the middle budget."""
    from ..models import as_classifier
    from .checks import check_precision

    k = min(PRECISION_CHECK_N, total_n)
    part = data.take(k)
    eps = eps_list[len(eps_list) // 2]
    what = f"precision check ({reduced.precision} against fp32) on {k} points"
    report(what, 0, 1)
    found = check_precision(as_classifier(user_model), reduced, part.x.to(device), part.y.to(device), eps=eps,
                            norm=norm, bounds=tuple(part.bounds), seed=seed)
    report(what, 1, 1)
    return found.to_dict()


def _suite_options(options: Mapping[str, Any] | None, **named: Mapping[str, Any] | None) -> dict[str, Any]:
    """The options given for each suite: ``options`` (by suite name) and the named keyword arguments."""
    out: dict[str, Any] = {}
    if options is not None:
        if not isinstance(options, Mapping):
            raise InputError(f"options must map suite names to keyword options, got {type(options).__name__}")
        for name, o in options.items():
            registry.get(name)  # a known suite, or an error naming them
            if name == "evasion":
                raise InputError("the evasion suite's options are audit()'s own keyword arguments (attacks=, "
                                 "steps=, checks=, ...), not options={'evasion': ...}")
            out[name] = o
    for name, o in named.items():
        if o is not None:
            if name in out:
                raise InputError(f"{name} options were given twice: as {name}= and in options=; give them once")
            out[name] = o
    return out
