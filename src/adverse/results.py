"""Attack results: the adversarial inputs plus everything needed to judge and reproduce them."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import AdverseError, InputError
from .validation import validated


@dataclass
class AttackResult:
    """What an evasion attack returns.

    Attributes
    ----------
    x_adv : the adversarial inputs, same shape, dtype and device as ``x``; always inside the threat model.
        Where the attack failed, ``x_adv`` is the last admissible point it tried (or ``x``).
    success : per-sample bool; True where ``x_adv`` is misclassified (untargeted) or classified as the target
        (targeted). Samples already misclassified count as successes with a zero perturbation.
    norms : per-sample ‖x_adv − x‖ in ``norm``.
    clean_correct : per-sample bool; True where the clean input was classified correctly.
    attack, norm, eps : what ran; ``eps`` is None for minimal-norm attacks.
    forwards, backwards, queries : per-sample passes spent (a batch of 8 counts 8).
    seconds : wall-clock time.
    params : every hyper-parameter used; ``seed`` the seed.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    norms: torch.Tensor
    clean_correct: torch.Tensor
    attack: str
    norm: str
    eps: float | None
    forwards: int = 0
    backwards: int = 0
    queries: int = 0
    seconds: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None

    @property
    def robust_accuracy(self) -> float:
        """Fraction of samples the attack did not fool (clean errors count as fooled)."""
        return 1.0 - self.success.float().mean().item() if self.success.numel() else float("nan")

    @property
    def clean_accuracy(self) -> float:
        return self.clean_correct.float().mean().item() if self.clean_correct.numel() else float("nan")

    @property
    def success_rate(self) -> float:
        return self.success.float().mean().item() if self.success.numel() else float("nan")

    def robust_accuracy_at(self, eps: float | torch.Tensor) -> torch.Tensor:
        """Robust accuracy at each budget in ``eps`` (from one minimal-norm run): a sample counts as robust
        when the attack failed or needed a perturbation larger than that budget."""
        e = torch.as_tensor(eps, dtype=self.norms.dtype, device=self.norms.device).reshape(-1)
        fooled = self.success.unsqueeze(0) & (self.norms.unsqueeze(0) <= e.unsqueeze(1) + 1e-6)
        return 1.0 - fooled.float().mean(dim=1)

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers (no tensors)."""
        ok = self.success
        return {
            "attack": self.attack,
            "norm": self.norm,
            "eps": self.eps,
            "n": int(ok.numel()),
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "success_rate": self.success_rate,
            "median_norm_of_successes": float(self.norms[ok].median()) if bool(ok.any()) else None,
            "forwards": self.forwards,
            "backwards": self.backwards,
            "queries": self.queries,
            "seconds": self.seconds,
            "params": {k: v for k, v in self.params.items() if isinstance(v, (int, float, str, bool, type(None)))},
            "seed": self.seed,
        }

    @classmethod
    def concat(cls, parts: list[AttackResult], seed: int | None = None) -> AttackResult:
        """One result from the results of consecutive chunks of a batch, in order: per-sample tensors are
        concatenated, budgets summed; ``params`` are the first chunk's plus ``chunks`` (each chunk's own seed
        and params stay in ``params["chunk_params"]``)."""
        if not parts:
            raise ValueError("concat needs at least one result")
        first = parts[0]
        eps = [p.eps for p in parts if p.eps is not None]
        return cls(
            x_adv=torch.cat([p.x_adv for p in parts]), success=torch.cat([p.success for p in parts]),
            norms=torch.cat([p.norms for p in parts]), clean_correct=torch.cat([p.clean_correct for p in parts]),
            attack=first.attack, norm=first.norm, eps=max(eps) if eps else None,
            forwards=sum(p.forwards for p in parts), backwards=sum(p.backwards for p in parts),
            queries=sum(p.queries for p in parts), seconds=sum(p.seconds for p in parts),
            params=dict(first.params, chunks=len(parts), chunk_seeds=[p.seed for p in parts]),
            seed=seed,
        )


# --------------------------------------------------------------------------------------------- adversarial examples
ADV_INDEX = "index.json"
ADV_FORMAT = "adverse-adversarial-examples"
ADV_VERSION = 1
MAX_ADV_INDEX_BYTES = 2**26
"""The largest ``index.json`` read back."""
MAX_ADV_FILE_BYTES = 2**32
"""The largest batch file (``.npz``) read back, and the most its arrays may hold once read."""
_ADV_ARRAYS = ("x_adv", "index", "y", "success", "norms")


def _adv_name(attack: str, eps: float, start: int, stop: int) -> str:
    return f"{attack}_eps{eps!r}_{start:08d}-{stop:08d}.npz"


class AdversarialWriter:
    """Writes the adversarial examples of an audit's evasion suite to ``folder``, one ``.npz`` per (attack, eps,
    batch) as each batch finishes, and the manifest ``index.json`` after each (both atomically: a temporary file in
    the folder, then a rename). The format is described in ``docs/results-schema.md`` and read back by
    :func:`load_adversarial`.

    ``key`` names the audit (model, data and settings); a manifest with another key, or a damaged one, is
    replaced as the audit goes. A batch already listed with an intact file is never rewritten (:meth:`has`).
    """

    def __init__(self, folder: str | os.PathLike[str], key: str, *, norm: str, bounds: Any) -> None:
        from .errors import InputError

        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"{self.folder} exists and is not a folder; choose another folder for the adversarial "
                             "examples")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.manifest: dict[str, Any] = {"format": ADV_FORMAT, "version": ADV_VERSION, "key": key, "norm": norm,
                                         "bounds": [float(b) for b in bounds], "batches": []}
        try:
            old = _read_adv_index(self.folder)
        except AdverseError:
            old = None
        if old is not None and old.get("key") == key and old.get("norm") == norm:
            self.manifest["batches"] = [b for b in old["batches"] if self._intact(b)]

    def _intact(self, entry: dict[str, Any]) -> bool:
        try:
            _read_adv_file(self.folder, entry)
        except AdverseError:
            return False
        return True

    def has(self, attack: str, eps: float, start: int, stop: int) -> bool:
        """Whether the batch ``[start, stop)`` of ``attack`` at ``eps`` is saved already."""
        return any(b["attack"] == attack and b["eps"] == eps and b["start"] == start and b["stop"] == stop
                   for b in self.manifest["batches"])

    def write(self, attack: str, eps: float, start: int, stop: int, *, x_adv: Any, y: Any, success: Any,
              norms: Any, forwards: int, backwards: int, queries: int = 0, seconds: float = 0.0) -> None:
        """Save one finished batch (unless saved already) and update the manifest."""
        import hashlib
        import io

        import numpy as np

        from .evaluation.common import write_atomic

        if self.has(attack, eps, start, stop):
            return
        arrays = {"x_adv": _np(x_adv), "index": np.arange(start, stop, dtype=np.int64), "y": _np(y).astype(np.int64),
                  "success": _np(success).astype(bool), "norms": _np(norms)}
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        raw = buf.getvalue()
        name = _adv_name(attack, eps, start, stop)
        write_atomic(self.folder / name, raw)
        self.manifest["batches"].append({
            "attack": attack, "eps": eps, "start": start, "stop": stop, "file": name,
            "sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw), "forwards": int(forwards),
            "backwards": int(backwards), "queries": int(queries), "seconds": float(seconds),
        })
        write_atomic(self.folder / ADV_INDEX, json.dumps(self.manifest, indent=1) + "\n")


def _np(t: Any) -> Any:
    import numpy as np

    return t.detach().cpu().numpy() if torch.is_tensor(t) else np.asarray(t)


def _read_adv_index(folder: Path) -> dict[str, Any]:
    """The manifest of ``folder``, checked (types, names without path separators)."""
    from .files import read_regular

    path = folder / ADV_INDEX
    raw = read_regular(path, "adversarial-examples manifest", MAX_ADV_INDEX_BYTES, error=InputError)
    try:
        m = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InputError(f"the adversarial-examples manifest {path} is not valid JSON: {e}") from None
    if not isinstance(m, dict) or m.get("format") != ADV_FORMAT or m.get("version") != ADV_VERSION:
        raise InputError(f"{path} is not an adverse adversarial-examples manifest (format {ADV_FORMAT!r}, "
                         f"version {ADV_VERSION})")
    if not isinstance(m.get("batches"), list) or not isinstance(m.get("norm"), str):
        raise InputError(f"{path}: the manifest has no list of batches or no norm")

    def count(v: Any) -> bool:
        return type(v) is int and v >= 0

    seen = set()
    for i, b in enumerate(m["batches"]):
        where = f"{path}, batch {i}"
        if not isinstance(b, dict):
            raise InputError(f"{where} is not a record")
        name = b.get("file")
        if (not isinstance(name, str) or not name.endswith(".npz") or "/" in name or "\\" in name or "\0" in name
                or name.startswith(".") or name != Path(name).name):
            raise InputError(f"{where}: the file name {name!r} is not a plain .npz name in the folder (no path "
                             "separators, no leading dot)")
        if not (isinstance(b.get("attack"), str) and isinstance(b.get("eps"), (int, float))
                and not isinstance(b.get("eps"), bool) and math.isfinite(b["eps"]) and b["eps"] >= 0
                and count(b.get("start")) and count(b.get("stop")) and b["start"] < b["stop"]
                and isinstance(b.get("sha256"), str) and len(b["sha256"]) == 64
                and count(b.get("bytes")) and all(count(b.get(k)) for k in ("forwards", "backwards", "queries"))
                and isinstance(b.get("seconds"), (int, float)) and math.isfinite(b["seconds"])):
            raise InputError(f"{where} ({name}) is not a valid record (attack, eps ≥ 0, start < stop, sha256, "
                             "bytes, forwards, backwards, queries, seconds)")
        if b["bytes"] > MAX_ADV_FILE_BYTES:
            raise InputError(f"{where}: the file {name} claims {b['bytes']:,} bytes, more than the limit of "
                             f"{MAX_ADV_FILE_BYTES:,}")
        ident = (b["attack"], b["eps"], b["start"])
        if ident in seen or name in {x["file"] for x in m["batches"][:i]}:
            raise InputError(f"{where}: the batch or file {name} is listed twice")
        seen.add(ident)
    return m


def _read_adv_file(folder: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """The arrays of one batch file, checked against its manifest entry (size, sha256, shapes, dtypes)."""
    import hashlib
    import io
    import zipfile

    import numpy as np

    from .files import read_regular

    path = folder / entry["file"]
    what = "adversarial-examples file"
    raw = read_regular(path, what, min(entry["bytes"], MAX_ADV_FILE_BYTES), error=InputError)
    if len(raw) != entry["bytes"] or hashlib.sha256(raw).hexdigest() != entry["sha256"]:
        raise InputError(f"the {what} {path} does not match its sha256 and size in {ADV_INDEX}: it was changed "
                         "after adverse wrote it")
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            if sum(i.file_size for i in z.infolist()) > MAX_ADV_FILE_BYTES:
                raise InputError(f"the {what} {path} expands past {MAX_ADV_FILE_BYTES:,} bytes")
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in _ADV_ARRAYS}
    except (KeyError, ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise InputError(f"the {what} {path} is not a valid .npz of adversarial examples ({e})") from None
    k = entry["stop"] - entry["start"]
    ok = (all(len(a.shape) >= 1 and a.shape[0] == k for a in arrays.values())
          and all(a.ndim == 1 for n, a in arrays.items() if n != "x_adv")
          and arrays["x_adv"].dtype.kind == "f" and arrays["norms"].dtype.kind == "f"
          and arrays["success"].dtype == bool and arrays["index"].dtype.kind == "i" and arrays["y"].dtype.kind == "i"
          and np.array_equal(arrays["index"], np.arange(entry["start"], entry["stop"])))
    if not ok:
        raise InputError(f"the {what} {path} does not hold {k} samples {entry['start']}..{entry['stop'] - 1} "
                         f"(x_adv, index, y, success, norms)")
    return arrays


@validated
def load_adversarial(folder: str | os.PathLike[str]) -> dict[tuple[str, float], dict[str, Any]]:
    """Read the adversarial examples an audit wrote with ``save_adv=`` (``--save-adv``: ``OUT/adversarial``).

    Returns, per ``(attack, eps)``, a dict of numpy arrays concatenated over the batches in sample order:
    ``x_adv`` (the adversarial inputs), ``index`` (each one's position among the audited samples), ``y`` (its
    label), ``success`` (True: the attack fooled the model there; clean errors count), ``norms`` (‖x_adv − x‖ in
    ``norm``), plus ``norm``, ``eps`` and the budget spent: ``forwards``, ``backwards``, ``queries``, ``seconds``
    summed over the batches.

    The folder is untrusted: the manifest and every file are checked (regular files, size limits, names without
    path separators, sha256, shapes; never unpickled); a problem raises :class:`~adverse.errors.InputError`
    naming the file.
    """
    import numpy as np

    root = Path(folder)
    m = _read_adv_index(root)
    groups: dict[tuple[str, float], list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for b in sorted(m["batches"], key=lambda b: (b["attack"], b["eps"], b["start"])):
        groups.setdefault((b["attack"], float(b["eps"])), []).append((b, _read_adv_file(root, b)))
    out: dict[tuple[str, float], dict[str, Any]] = {}
    for key, parts in groups.items():
        out[key] = {
            **{k: np.concatenate([a[k] for _, a in parts]) for k in _ADV_ARRAYS},
            "norm": m["norm"], "eps": key[1],
            **{k: sum(b[k] for b, _ in parts) for k in ("forwards", "backwards", "queries", "seconds")},
        }
    return out
