"""``PoisonedData``: a poisoned training set, which samples changed, the trigger and every hyperparameter.

Saved as one safetensors file (tensors + JSON metadata; no pickle), written atomically, so that the same poisons
can be reloaded and retrain to the same result.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data import Dataset
from ..errors import InputError
from ..validation import validated
from .triggers import Trigger

FORMAT = "adverse.PoisonedData/1"


@dataclass
class PoisonedData:
    """A poisoned training set.

    Attributes
    ----------
    x, y : the whole training set after poisoning (unchanged samples included).
    indices : sorted indices of the samples the attack changed (inputs, labels or both).
    attack : the attack's name ("badnets", "blended", "wanet", "clean_label", "label_flip",
        "feature_collision", "gradient_matching").
    params : every hyperparameter of the call, seed included (JSON-serializable).
    num_classes, bounds : as in :class:`adverse.data.Dataset`.
    trigger : the backdoor trigger (``None`` for label flipping and targeted poisoning).
    targets : for targeted poisoning, the attacked inputs (``"x"``), their true labels (``"y"``) and the labels
        the attacker wants (``"adv_label"``) and the poisons before perturbation (``"x_clean"``); empty otherwise.
    y_clean : the labels before poisoning.
    """

    x: torch.Tensor
    y: torch.Tensor
    indices: torch.Tensor
    attack: str
    params: dict[str, Any]
    num_classes: int
    y_clean: torch.Tensor
    bounds: tuple[float, float] = (0.0, 1.0)
    trigger: Trigger | None = None
    targets: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def is_poison(self) -> torch.Tensor:
        """Boolean mask over the training set: True for the changed samples."""
        m = torch.zeros(len(self), dtype=torch.bool)
        m[self.indices] = True
        return m

    @property
    def poison_rate(self) -> float:
        return self.indices.numel() / max(len(self), 1)

    def dataset(self, keep: torch.Tensor | None = None) -> Dataset:
        """The poisoned set as a :class:`~adverse.data.Dataset` (only the samples where ``keep`` is True)."""
        x, y = self.x, self.y
        if keep is not None:
            keep = torch.as_tensor(keep, dtype=torch.bool)
            if keep.shape != (len(self),):
                raise InputError(f"keep must be a boolean mask of shape ({len(self)},), got {tuple(keep.shape)}")
            x, y = x[keep], y[keep]
        return Dataset(x, y, f"{self.attack}-poisoned", self.num_classes, self.bounds)

    def apply_trigger(self, x: torch.Tensor) -> torch.Tensor:
        """Stamp this attack's trigger on inputs ``x`` (test-time activation of the backdoor)."""
        if self.trigger is None:
            raise InputError(f"a {self.attack!r} poisoning has no trigger; only backdoor attacks do")
        return self.trigger.apply(x)

    # ----------------------------------------------------------------------------------------- disk
    def save(self, path: str | Path) -> Path:
        """Write to ``path`` (safetensors; tensors plus JSON metadata), atomically. Returns the path."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {"x": self.x, "y": self.y, "indices": self.indices, "y_clean": self.y_clean}
        if self.trigger is not None:
            tensors.update({f"trigger.{k}": v for k, v in self.trigger.tensors.items()})
        tensors.update({f"targets.{k}": v for k, v in self.targets.items()})
        meta = {
            "format": FORMAT, "attack": self.attack, "params": json.dumps(self.params, sort_keys=True),
            "num_classes": str(self.num_classes), "bounds": json.dumps(list(self.bounds)),
            "trigger_kind": "" if self.trigger is None else self.trigger.kind,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=meta)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return path

    @classmethod
    def load(cls, path: str | Path) -> PoisonedData:
        """Read a file written by :meth:`save`; anything else raises :class:`InputError`."""
        from safetensors import SafetensorError
        from safetensors.torch import safe_open

        path = Path(path)
        if not path.is_file():
            raise InputError(f"no such file: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        except (SafetensorError, OSError, ValueError) as e:
            raise InputError(f"{path} is not a safetensors file written by PoisonedData.save ({e})") from e
        if meta.get("format") != FORMAT:
            raise InputError(f"{path} is not a PoisonedData file (format {meta.get('format')!r}, want {FORMAT!r})")
        trig = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("trigger.")}
        return cls(
            x=tensors["x"], y=tensors["y"], indices=tensors["indices"], y_clean=tensors["y_clean"],
            attack=meta["attack"], params=json.loads(meta["params"]), num_classes=int(meta["num_classes"]),
            bounds=tuple(json.loads(meta["bounds"])),
            trigger=Trigger(meta["trigger_kind"], trig) if meta["trigger_kind"] else None,
            targets={k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("targets.")},
        )


@validated
def load_poisoned(path: str | Path) -> PoisonedData:
    """Load a :class:`PoisonedData` written by :meth:`PoisonedData.save`."""
    return PoisonedData.load(path)
