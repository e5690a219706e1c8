"""AutoAttack: the worst case per sample over a fixed ensemble of parameter-free attacks.

Each attack starts from the clean input and runs only on the points every earlier attack left robust; a point
counts as robust only if all attacks fail on it. An interrupted run resumes from its saved state.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..acceleration import accelerated, check_mode
from ..errors import InputError
from ..models import PRECISIONS, Autocast, as_classifier
from ..results import AttackResult
from ..threat import check_norm, lp_norm
from ..validation import validated
from ._core import is_adversarial, setup

Tensor = torch.Tensor


class EOT(nn.Module):
    """Expectation over Transformation: the mean of ``samples`` forward passes of a randomized model, so that
    its gradient is the mean gradient (Athalye, Carlini & Wagner, ICML 2018)."""

    @validated
    def __init__(self, model: nn.Module, samples: int = 20) -> None:
        super().__init__()
        self.model = as_classifier(model)  # its answer unwrapped to logits (adverse.models.as_classifier)
        self.samples = samples

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([self.model(x) for _ in range(self.samples)]).mean(dim=0)


def _apgd(**fixed: Any) -> Callable[..., AttackResult]:
    def run(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str, bounds, seed: int) -> AttackResult:
        from .apgd import apgd

        return apgd(model, x, y, eps=eps, norm=norm, bounds=bounds, seed=seed, **fixed)

    return run


def _fab(**fixed: Any) -> Callable[..., AttackResult]:
    def run(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str, bounds, seed: int) -> AttackResult:
        from .fab import fab

        return fab(model, x, y, eps=eps, norm=norm, bounds=bounds, seed=seed, **fixed)

    return run


def _square(**fixed: Any) -> Callable[..., AttackResult]:
    def run(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str, bounds, seed: int) -> AttackResult:
        from .square import square

        return square(model, x, y, eps=eps, norm=norm, bounds=bounds, seed=seed, **fixed)

    return run


def versions(norm: str, n_target_classes: int = 9, square_queries: int = 5000) -> dict[str, list[tuple[str, Callable]]]:
    """The attack lists of AutoAttack's versions, with the reference iterations, restarts and targets."""
    t = n_target_classes
    if norm == "l1":
        standard = [("apgd-ce", _apgd(loss="ce", restarts=5)),
                    ("apgd-t", _apgd(loss="dlr", targeted=True, n_target_classes=min(t, 5)))]
        plus = standard + [("fab-t", _fab(targeted=True, n_target_classes=t))]
    else:
        standard = [
            ("apgd-ce", _apgd(loss="ce", steps=100)),
            ("apgd-t", _apgd(loss="dlr", targeted=True, n_target_classes=t, steps=100)),
            ("fab-t", _fab(targeted=True, n_target_classes=t, steps=100)),
            ("square", _square(max_queries=square_queries, p_init=0.8)),
        ]
        plus = [
            ("apgd-ce", _apgd(loss="ce", restarts=5)),
            ("apgd-dlr", _apgd(loss="dlr", restarts=5)),
            ("fab", _fab(restarts=5)),
            ("square", _square(max_queries=square_queries, p_init=0.8, restarts=5)),
            ("apgd-t", _apgd(loss="dlr", targeted=True, n_target_classes=t)),
            ("fab-t", _fab(targeted=True, n_target_classes=t)),
        ]
    rand = [("apgd-ce", _apgd(loss="ce")), ("apgd-dlr", _apgd(loss="dlr"))]
    return {"standard": standard, "plus": plus, "rand": rand}


def _passes(plan: Sequence[tuple[str, Callable]], points: Tensor, n_target_classes: int,
            square_queries: int) -> dict[str, float]:
    """A rough count of the per-sample forward passes without gradients and forward+backward passes a plan makes
    if every correctly classified point stays robust: what :func:`adverse.acceleration.accelerated` weighs the
    layouts by and against the cost of compiling. (APGD: one forward+backward pass a step; FAB-T: one and a check;
    FAB: K backward passes (counted as 10) and a check; Square: one query a step.)"""
    per_point = {"apgd-ce": (0, 100), "apgd-dlr": (0, 100), "apgd-t": (0, 100 * n_target_classes),
                 "fab": (100, 1000), "fab-t": (100 * n_target_classes, 100 * n_target_classes),
                 "square": (square_queries, 0)}
    n = float(points.sum())
    return {"passes": n * sum(per_point.get(name, (0, 0))[0] for name, _ in plan),
            "gradient_passes": n * sum(per_point.get(name, (0, 0))[1] for name, _ in plan)}


def _fingerprint(x: Tensor, y: Tensor, config: dict[str, Any]) -> str:
    h = hashlib.sha256(repr(sorted(config.items())).encode())
    h.update(x.detach().cpu().contiguous().numpy().tobytes())
    h.update(y.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_state(path: Path, key: str, s: Any) -> tuple[Tensor, Tensor, list[dict[str, Any]]] | None:
    """The saved progress at ``path`` for this run (None when there is none or it is another run's), checked
    before use: a file that is not a regular file, does not load as tensors, or whose contents do not fit this
    run (shapes, dtypes, points outside the eps ball or the bounds, a robust point that was a clean error) is
    refused with :class:`InputError`, never used."""
    if path.exists() and not path.is_file():
        raise InputError(f"state_path {path} exists and is not a file; pass a file path (its folder must exist)")
    if not path.is_file():
        return None
    fix = f"delete {path} to start over"
    try:
        state = torch.load(path, weights_only=True, map_location=s.x.device)
    except Exception as e:
        raise InputError(f"state_path {path} is not an AutoAttack state file ({type(e).__name__}); {fix}") from e
    if not isinstance(state, dict) or state.get("key") != key:
        return None
    robust, x_adv, per_attack = state.get("robust"), state.get("x_adv"), state.get("per_attack")
    n = s.x.shape[0]
    ok = (torch.is_tensor(robust) and robust.dtype == torch.bool and robust.shape == (n,)
          and torch.is_tensor(x_adv) and x_adv.shape == s.x.shape and x_adv.is_floating_point()
          and isinstance(per_attack, list) and all(isinstance(p, dict) and isinstance(p.get("attack"), str)
                                                   for p in per_attack))
    if ok:
        x_adv = x_adv.to(s.x.dtype)
        ok = (bool(torch.isfinite(x_adv).all()) and all(s.admissible(x_adv))
              and not bool((robust & ~s.clean_correct).any()))
    if not ok:
        raise InputError(f"state_path {path} matches this run but its contents are damaged; {fix}")
    return robust, x_adv, list(per_attack)


@validated
def autoattack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    version: str = "standard",
    attacks: Sequence[str | tuple[str, Callable[..., AttackResult]]] | None = None,
    n_target_classes: int = 9,
    square_queries: int = 5000,
    eot_samples: int = 20,
    state_path: str | Path | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
    checks: bool = True,
    compile: str | bool = "auto",
    precision: str = "fp32",
    progress: Callable[[str, int, int], None] | None = None,
) -> AttackResult:
    """AutoAttack: APGD-CE, APGD-T, FAB-T and Square, worst case per sample.

    ``version="standard"``: APGD-CE (100 iterations), APGD-T (DLR, top-9 targets), FAB-T (9 targets), Square
    (5000 queries). ``"plus"``: APGD-CE and APGD-DLR with 5 restarts, FAB and Square with 5 restarts, APGD-T,
    FAB-T. ``"rand"``: APGD-CE and APGD-DLR on the model wrapped in :class:`EOT` (``eot_samples`` passes per
    query) for randomized defenses. ``attacks`` picks a custom subset by name (e.g. ``["apgd-ce", "square"]``)
    or gives ``(name, fn)`` pairs with ``fn(model, x, y, *, eps, norm, bounds, seed) -> AttackResult``.

    Each attack starts from the clean input and runs only on points still robust; a point is robust only if
    every attack fails. With ``state_path`` the state is saved after each attack (atomically), and a rerun with
    the same inputs and settings resumes after the last finished attack.

    ``compile``: cheaper passes (:func:`adverse.acceleration.accelerated`). ``"auto"`` puts a convolutional
    model's tensors in ``channels_last`` where its forward+backward pass was measured faster that way, and runs
    the passes made without gradients (Square's queries, FAB's checks) through ``torch.compile`` where that was
    measured faster and the run is long enough to pay for compiling; ``"on"`` compiles whatever the run's length,
    ``"off"`` runs the model as given. Points fooled through compiled passes are classified once more by the model
    itself (one forward pass each), so a compiler's rounding never decides a point. The choice, and the timings
    behind it, are in ``params["acceleration"]``.

    ``precision``: ``"fp32"`` (default), or ``"bf16"`` / ``"fp16"`` to *search* in reduced precision: the attacks'
    passes run under ``torch.autocast`` (:class:`adverse.models.Autocast`; losses and bookkeeping stay in float32),
    about half the time of fp32 passes on a CPU with bf16 support. The clean pass and the verdict stay in
    float32: after each attack, every point it fooled is classified by the model itself in float32, and a point
    that is not misclassified there is not counted as fooled and goes on to the next attack. So reduced
    precision can make the search weaker (a point it misses), never a reported adversarial false; how many
    finds were not confirmed is ``params["acceleration"]["unconfirmed"]``.

    Returns
    -------
    AttackResult with ``params["per_attack"]``: robust accuracy after each attack, its budget and time, and
    ``params["flags"]``: warnings in the spirit of AutoAttack's checks: with ``checks=True``, before attacking,
    a randomized model (repeated passes differ: use ``version="rand"``) and zero or non-finite input gradients
    for more than 5 % of the points (:mod:`adverse.evaluation.checks`; their few passes are not counted in the
    budget, their outcomes are in ``params["checks"]``); after attacking, Square succeeding where the white-box
    attacks failed, which suggests gradient masking.

    References
    ----------
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
    attacks", ICML 2020.
    """
    norm = check_norm(norm)
    compile_mode = check_mode(compile)
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}; the attacks search "
                         "in it and every point they fool is confirmed in fp32")
    table = versions(norm, n_target_classes, square_queries)
    if attacks is None:
        if version not in table:
            raise InputError(f"unknown version {version!r}; use 'standard', 'plus', 'rand' or pass attacks=[...]")
        plan = table[version]
    else:
        if isinstance(attacks, (str, bytes)) or len(attacks) == 0:
            raise InputError(f"attacks must be a non-empty list of attack names or (name, fn) pairs, got {attacks!r}; "
                             "e.g. attacks=['apgd-ce', 'apgd-t'], or attacks=None for the version's ensemble")
        known = dict(table["plus"] + table["standard"])
        plan = []
        for a in attacks:
            if isinstance(a, tuple):
                plan.append(a)
            elif a in known:
                plan.append((a, known[a]))
            else:
                raise InputError(f"unknown attack {a!r}; choose from {', '.join(sorted(known))} or pass (name, fn)")
        version = "custom"
    target_model = EOT(model, eot_samples) if version == "rand" else model
    with setup(target_model, x, y, eps=eps, norm=norm, bounds=bounds, seed=seed) as s, \
            accelerated(s.model.model if precision == "fp32" else Autocast(s.model.model, precision), s.x,
                        mode="off" if version == "rand" else compile_mode,
                        **_passes(plan, s.clean_correct, n_target_classes, square_queries)) as (fast, sped):
        # the model itself, in fp32, decides every point found through compiled or reduced-precision passes
        confirm = sped.compiled or precision != "fp32"
        robust = s.clean_correct.clone()
        x_adv = s.x.clone()
        per_attack: list[dict[str, Any]] = []
        config = {"eps": float(eps), "norm": norm, "version": version, "plan": [n for n, _ in plan],
                  "seed": seed, "n_target_classes": n_target_classes, "square_queries": square_queries}
        if precision != "fp32":
            config["precision"] = precision
        path = Path(state_path) if state_path is not None else None
        key = _fingerprint(s.x, s.y, config) if path is not None else ""
        state = _load_state(path, key, s) if path is not None else None
        if state is not None:
            robust, x_adv, per_attack = state
        flags: list[str] = []
        found = []
        if checks:
            from ..evaluation.checks import check_determinism, check_gradients

            found = [check_determinism(model, s.x), check_gradients(model, s.x, s.y)]
            for c in found:
                if c.status == "warn" and not (c.name == "determinism" and version == "rand"):
                    flags.append(c.message + ("; or use version='rand'" if c.name == "determinism" else ""))
        done = {p["attack"] for p in per_attack}
        totals = {"forwards": s.model.forwards, "backwards": 0, "queries": 0}
        for i, (name, fn) in enumerate(plan):
            if name in done:
                continue
            if progress is not None:
                progress(name, i, len(plan))
            idx = robust.nonzero().squeeze(1)
            t0 = time.perf_counter()
            r, won, checked = None, idx[:0], 0
            if idx.numel():
                r = fn(fast, s.x[idx], s.y[idx], eps=float(eps), norm=norm, bounds=s.bounds, seed=seed)
                won, x_won = idx[r.success], r.x_adv[r.success]
                if confirm and won.numel():
                    before = s.model.forwards
                    real = is_adversarial(s.model.logits(x_won), s.y[won], None)
                    checked = s.model.forwards - before
                    won, x_won = won[real], x_won[real]
                x_adv[won] = x_won
                robust[won] = False
            per_attack.append({
                "attack": name, "attacked": int(idx.numel()), "fooled": int(won.numel()),
                "robust_accuracy": float(robust.float().mean()),
                "forwards": 0 if r is None else r.forwards + checked, "backwards": 0 if r is None else r.backwards,
                "queries": 0 if r is None else r.queries, "seconds": time.perf_counter() - t0,
            })
            if confirm:
                per_attack[-1]["unconfirmed"] = 0 if r is None else int(r.success.sum()) - int(won.numel())
            if path is not None:
                _save_state(path, {"key": key, "robust": robust.cpu(), "x_adv": x_adv.cpu(), "per_attack": per_attack})
        if progress is not None:
            progress("done", len(plan), len(plan))
        for p in per_attack:
            for k in ("forwards", "backwards", "queries"):
                totals[k] += p[k]
        acceleration = {**sped.to_dict(), "precision": precision}
        if confirm:
            acceleration["unconfirmed"] = sum(int(p.get("unconfirmed", 0)) for p in per_attack)
        white = [p for p in per_attack if not p["attack"].startswith("square")]
        black = [p for p in per_attack if p["attack"].startswith("square")]
        if white and black and sum(p["fooled"] for p in black) > 0.002 * x.shape[0]:
            flags.append("square fooled points the white-box attacks could not: the gradients may be masked; "
                         "check with adverse.evaluation.checks")
        norms = lp_norm(x_adv - s.x, norm)
        if bool((norms > float(eps) + 1e-5 * (1 + float(eps))).any()):
            raise RuntimeError("autoattack: internal error, a perturbation exceeds eps")
        return AttackResult(
            x_adv=x_adv, success=~robust, norms=norms, clean_correct=s.clean_correct, attack=f"autoattack-{version}",
            norm=norm, eps=float(eps), forwards=totals["forwards"], backwards=totals["backwards"],
            queries=totals["queries"], seconds=time.perf_counter() - s.started,
            params={"version": version, "attacks": [n for n, _ in plan], "per_attack": per_attack, "flags": flags,
                    "checks": [c.to_dict() for c in found], "n_target_classes": n_target_classes,
                    "square_queries": square_queries, "acceleration": acceleration},
            seed=seed,
        )
