"""Attack results: the adversarial inputs plus everything needed to judge and reproduce them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


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
