"""Sanity checks of a robustness evaluation: is the number trustworthy, or is the model masking gradients?

Each check returns a :class:`Check` with a status (``"pass"``, ``"warn"`` or ``"skip"``), a sentence for a
person and the evidence (numbers) behind it. :func:`run_checks` runs the list the field agrees on:

========================  =================================================================================
``output``                the model returns logits, not probabilities (AutoAttack's ``check_range_output``)
``determinism``           five identical forward passes agree (randomized defenses need EOT)
``gradients``             input gradients are finite and non-zero for (nearly) every point
``eps_sweep``             robust accuracy falls to ~0 as eps grows (Carlini et al. 2019, §5)
``steps``                 5× more PGD steps fool few more points (binomial test; the attack converged)
``single_vs_iterative``   the iterative attack finds every error the single-step attack finds
``black_box``             a score-based attack (Square) does not beat the white-box attack
``transfer``              a transfer attack from a surrogate does not beat the white-box attack (run when a
                          surrogate is given)
========================  =================================================================================

References
----------
Carlini, Athalye, Papernot, Brendel, Rauber, Tsipras, Goodfellow, Madry & Kurakin, "On Evaluating Adversarial
Robustness", arXiv:1902.06705, 2019. Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of
Security", ICML 2018. Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020 (the flags of AutoAttack). Pintor et al., "Indicators of Attack Failure",
NeurIPS 2022.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, ModelError
from ..models import as_classifier, attack_mode, looks_like_probabilities
from ..threat import check_norm

CHECKS = ("output", "determinism", "gradients", "eps_sweep", "steps", "single_vs_iterative", "black_box",
          "transfer")


@dataclass
class Check:
    """The outcome of one check: ``status`` is "pass", "warn" or "skip"; ``evidence`` holds the numbers."""

    name: str
    status: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str,
         bounds: tuple[float, float], steps: int, seed: int, given: Any = None) -> Any:
    """The checks' white-box reference, PGD-``steps`` at ``eps``: ``given`` when the caller already ran it
    (:func:`run_checks` runs it once for every check that compares against it)."""
    from ..evasion import pgd

    return given if given is not None else pgd(model, x, y, eps=eps, norm=norm, steps=steps, bounds=bounds,
                                               seed=seed)


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model = as_classifier(model)  # a ModelOutput, a dict with logits or a tuple: its logits
    with attack_mode(model), torch.no_grad():
        return model(x)


def check_output(model: nn.Module, x: torch.Tensor) -> Check:
    """Warn when the outputs are not usable logits: not a (n, classes) floating-point tensor, NaN or infinite
    values (predictions and attacks on them mean nothing: argmax of NaN is 0), or probabilities (rows in [0, 1]
    that sum to 1: a final softmax). An answer that holds no logits (see :func:`adverse.models.logits_of`) warns
    with the reason."""
    try:
        out = _logits(model, x)
    except ModelError as e:
        return Check("output", "warn", str(e), {})
    if not torch.is_tensor(out) or out.dim() != 2 or out.shape[0] != x.shape[0] or not out.is_floating_point():
        what = (f"shape {tuple(out.shape)} of {out.dtype}" if torch.is_tensor(out) else f"a {type(out).__name__}")
        return Check("output", "warn", f"the model returns {what} for {x.shape[0]} inputs, not logits of shape "
                     "(n, classes); make forward return one row of logits per input", {})
    finite = torch.isfinite(out)
    if not bool(finite.all()):
        rows = int((~finite.all(dim=1)).sum())
        evidence = {"nonfinite_rows": rows, "n": int(out.shape[0]), "nan": int(torch.isnan(out).sum()),
                    "inf": int(torch.isinf(out).sum())}
        return Check("output", "warn", f"the model returns NaN or infinite logits for {rows} of {out.shape[0]} "
                     "inputs: its predictions and any robustness number mean nothing; check its weights, the input "
                     "scaling and layers that can overflow", evidence)
    probs = looks_like_probabilities(out)
    evidence = {"min": float(out.min()), "max": float(out.max()), "max_row_sum_error": float((out.sum(1) - 1).abs().max())}
    if probs:
        return Check("output", "warn", "the model outputs probabilities, not logits: gradients saturate; remove the "
                     "final softmax before attacking", evidence)
    return Check("output", "pass", "the model outputs logits", evidence)


def check_determinism(model: nn.Module, x: torch.Tensor, repeats: int = 5, tol: float = 1e-5) -> Check:
    """Warn when repeated forward passes on the same inputs differ (a randomized model needs EOT)."""
    outs = [_logits(model, x) for _ in range(repeats)]
    diff = max(float((o - outs[0]).abs().max()) for o in outs[1:])
    evidence = {"repeats": repeats, "max_logit_difference": diff}
    if diff > tol:
        return Check("determinism", "warn", f"the model is randomized (logits differ by up to {diff:.3g} across "
                     "identical passes); evaluate with EOT (expectation over transformation)", evidence)
    return Check("determinism", "pass", "the model is deterministic", evidence)


def check_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, max_share: float = 0.05) -> Check:
    """Warn when the input gradient of the loss is zero or non-finite for more than ``max_share`` of points.

    Both the cross-entropy and the logit margin are differentiated; a point counts as masked when both gradients
    vanish (norm ≤ 1e-12 · (1 + ‖x‖)) or either is NaN/inf.
    """
    from ..evasion import margin_loss

    model = as_classifier(model)
    with attack_mode(model), torch.enable_grad():
        xr = x.detach().clone().requires_grad_(True)
        out = model(xr)
        if out.requires_grad:
            (g_ce,) = torch.autograd.grad(F.cross_entropy(out, y, reduction="sum"), xr, retain_graph=True)
            (g_m,) = torch.autograd.grad(margin_loss(out, y).sum(), xr)
        else:  # the output does not depend differentiably on the input at all
            g_ce = g_m = torch.zeros_like(xr)
    scale = 1e-12 * (1 + x.flatten(1).norm(dim=1))
    n_ce, n_m = g_ce.flatten(1).norm(dim=1), g_m.flatten(1).norm(dim=1)
    nonfinite = ~(torch.isfinite(n_ce) & torch.isfinite(n_m))
    zero = (n_ce <= scale) & (n_m <= scale)
    bad = nonfinite | zero
    share = float(bad.float().mean())
    evidence = {"share_zero": float(zero.float().mean()), "share_nonfinite": float(nonfinite.float().mean()),
                "median_grad_norm": float(n_m.median()), "n": int(x.shape[0])}
    if share > max_share:
        return Check("gradients", "warn", f"input gradients are zero or non-finite for {share:.0%} of points: the "
                     "model masks gradients (quantization, saturation, non-differentiable layers); use BPDA or "
                     "black-box attacks", evidence)
    return Check("gradients", "pass", "input gradients are informative", evidence)


def check_precision(model: nn.Module, reduced: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                    norm: str, bounds: tuple[float, float] = (0.0, 1.0), steps: int = 20, seed: int = 0,
                    tolerance: float = 0.01) -> Check:
    """Does running the model in reduced precision change the audit's numbers?

    Robust accuracy under PGD-``steps`` at ``eps`` on ``x`` with the model in float32 (``model``) and in the
    reduced precision (``reduced``, e.g. :class:`adverse.models.Autocast`); warns when they differ by more than
    ``tolerance`` (1 percentage point), or when more points have a zero input gradient in reduced precision than
    in float32 (fp16 underflow: an attack cannot move those points, so robust accuracy is over-estimated). The
    evidence holds both robust accuracies, both zero-gradient shares and the clean accuracies.
    """
    from ..evasion import pgd

    found = {}
    for key, m in (("fp32", model), ("reduced", reduced)):
        r = pgd(m, x, y, eps=eps, norm=norm, steps=steps, bounds=bounds, seed=seed)
        grads = check_gradients(m, x, y)
        found[key] = {"robust_accuracy": float((~r.success).float().mean()),
                      "clean_accuracy": r.clean_accuracy,  # from the attack's own clean pass
                      "zero_gradient_share": grads.evidence["share_zero"] + grads.evidence["share_nonfinite"]}
    name = getattr(reduced, "precision", "reduced")
    diff = found["reduced"]["robust_accuracy"] - found["fp32"]["robust_accuracy"]
    extra_zero = found["reduced"]["zero_gradient_share"] - found["fp32"]["zero_gradient_share"]
    evidence = {"precision": name, "eps": eps, "steps": steps, "n": int(x.shape[0]), "fp32": found["fp32"],
                name: found["reduced"], "difference": diff, "tolerance": tolerance}
    if extra_zero > 0:
        return Check("precision", "warn", f"in {name}, {extra_zero:.0%} more points have a zero input gradient than "
                     f"in fp32 (underflow): attacks cannot move them; audit in fp32 (--precision fp32)", evidence)
    if abs(diff) > tolerance:
        return Check("precision", "warn", f"robust accuracy under PGD differs by {100 * diff:+.1f} pp in {name} "
                     f"against fp32 on these {x.shape[0]} points (more than {100 * tolerance:.0f} pp): {name} "
                     "changes the numbers; audit in fp32 (--precision fp32)", evidence)
    return Check("precision", "pass", f"{name} gives the same robust accuracy as fp32 within "
                 f"{100 * tolerance:.0f} pp ({100 * diff:+.1f} pp) and no extra zero gradients", evidence)


def check_eps_sweep(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str,
                    bounds: tuple[float, float], steps: int = 20, seed: int = 0, max_robust: float = 0.05,
                    white_box: Any = None) -> Check:
    """PGD at eps·2^k up to a budget that can reach any input; robust accuracy must fall to ≤ ``max_robust``
    and never rise with eps. ``white_box``: the PGD-``steps`` result at ``eps`` (the first budget), if already
    computed."""

    lo, hi = bounds
    d = x[0].numel()
    reach = {"linf": hi - lo, "l2": (hi - lo) * d ** 0.5, "l1": (hi - lo) * d}[norm]
    grid, e = [], float(eps)
    while e < reach:
        grid.append(e)
        e *= 2
    grid.append(reach)
    accs = [_pgd(model, x, y, eps=g, norm=norm, bounds=bounds, steps=steps, seed=seed,
                 given=white_box if i == 0 and g == float(eps) else None).robust_accuracy for i, g in enumerate(grid)]
    evidence = {"eps": grid, "robust_accuracy": accs}
    rising = any(b > a + 0.02 for a, b in zip(accs, accs[1:]))
    if accs[-1] > max_robust or rising:
        why = "does not fall to ~0" if accs[-1] > max_robust else "rises"
        return Check("eps_sweep", "warn", f"robust accuracy {why} as eps grows (at eps={grid[-1]:.3g}, any input is "
                     f"reachable, yet {accs[-1]:.0%} stay robust): the attack is failing, not the model succeeding",
                     evidence)
    return Check("eps_sweep", "pass", "robust accuracy falls to ~0 as eps grows", evidence)


def share_exceeds(k: int, n: int, tolerance: float) -> float:
    """The p-value of ``k`` successes in ``n`` trials under "the true share is at most ``tolerance``" (one-sided
    exact binomial test): small when ``k / n`` is significantly above the tolerance."""
    from scipy.stats import binomtest

    return float(binomtest(int(k), int(n), float(tolerance), alternative="greater").pvalue) if n else 1.0


def check_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str,
                bounds: tuple[float, float], steps: int = 20, factor: int = 5, seed: int = 0,
                max_change: float = 0.02, alpha: float = 0.01, white_box: Any = None) -> Check:
    """PGD with ``factor``× more steps and 2 restarts must not fool significantly more than ``max_change`` of
    the points that PGD-``steps`` leaves robust.

    Two runs of a converged attack still disagree on a few points near the boundary, so a fixed threshold on the
    difference fires on noise with few points and misses real gaps with many. The check counts the points only
    the longer attack fools, ``k`` of ``n``, and warns when a one-sided binomial test rejects "the share the
    longer attack adds is at most ``max_change``" at level ``alpha`` (on 100 points with the defaults: 7 or more).
    ``white_box``: the PGD-``steps`` result at ``eps``, if already computed."""
    from ..evasion import pgd

    base = _pgd(model, x, y, eps=eps, norm=norm, bounds=bounds, steps=steps, seed=seed, given=white_box)
    more = pgd(model, x, y, eps=eps, norm=norm, steps=steps * factor, restarts=2, bounds=bounds, seed=seed + 1)
    n = int(x.shape[0])
    extra = int((more.success & ~base.success).sum())
    p_value = share_exceeds(extra, n, max_change)
    evidence = {"steps": steps, "robust_accuracy": base.robust_accuracy, "more_steps": steps * factor,
                "robust_accuracy_more_steps": more.robust_accuracy, "restarts_more": 2,
                "extra_fooled": extra, "n": n, "tolerance": max_change, "p_value": p_value, "alpha": alpha}
    if p_value < alpha:
        return Check("steps", "warn", f"{factor}× more steps fool {extra} of {n} points that PGD-{steps} left robust "
                     f"(robust accuracy {base.robust_accuracy:.1%} → {more.robust_accuracy:.1%}; more than "
                     f"{max_change:.0%} at p = {p_value:.2g}): the attack had not converged; use more steps or APGD",
                     evidence)
    return Check("steps", "pass", f"more steps and restarts fool {extra} of {n} more points, within the "
                 f"{max_change:.0%} tolerance (p = {p_value:.2g})", evidence)


def check_single_vs_iterative(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str,
                              bounds: tuple[float, float], steps: int = 20, seed: int = 0,
                              max_share: float = 0.01, white_box: Any = None) -> Check:
    """FGSM must not fool points that PGD leaves robust (more than ``max_share`` of them)."""
    from ..evasion import fgsm

    f = fgsm(model, x, y, eps=eps, norm=norm, bounds=bounds)
    p = _pgd(model, x, y, eps=eps, norm=norm, bounds=bounds, steps=steps, seed=seed, given=white_box)
    only_fgsm = float((f.success & ~p.success).float().mean())
    evidence = {"fgsm_robust_accuracy": f.robust_accuracy, "pgd_robust_accuracy": p.robust_accuracy,
                "share_fooled_only_by_fgsm": only_fgsm}
    if only_fgsm > max_share:
        return Check("single_vs_iterative", "warn", f"FGSM fools {only_fgsm:.1%} of points that PGD does not: the "
                     "loss surface is irregular near the inputs (gradient masking)", evidence)
    return Check("single_vs_iterative", "pass", "PGD finds every error FGSM finds", evidence)


def check_black_box(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str,
                    bounds: tuple[float, float], steps: int = 20, max_queries: int = 1000, seed: int = 0,
                    max_gain: float = 0.05, white_box: Any = None) -> Check:
    """Square (score-based) must not fool more than ``max_gain`` of the points that the white-box attacks leave
    robust. The white-box side is PGD on the cross-entropy, then APGD on the DLR loss for the points PGD leaves
    (a saturated cross-entropy is not masking: AutoAttack flags Square only against its white-box attacks).
    These 2 × ``steps`` white-box steps are weaker than AutoAttack's ensemble, so the margin is wider than its
    0.2 %: on the undefended digits CNN at L∞ 0.1, Square legitimately adds 2 % on 100 points, while masked
    models give gains of tens of percent (tests/test_checks.py)."""
    from ..evasion import apgd
    from ..evasion.square import square

    if norm == "l1":
        return Check("black_box", "skip", "no score-based L1 attack is compared", {})
    p = _pgd(model, x, y, eps=eps, norm=norm, bounds=bounds, steps=steps, seed=seed, given=white_box)
    robust = ~p.success  # a new tensor: p is the shared PGD result and stays as it is
    if bool(robust.any()):
        classes = _logits(model, x[:1]).shape[1]
        d = apgd(model, x[robust], y[robust], eps=eps, norm=norm, steps=steps, loss="dlr" if classes >= 3 else "margin",
                 bounds=bounds, seed=seed)
        robust[robust.clone()] = ~d.success
    if not bool(robust.any()):
        return Check("black_box", "pass", "the white-box attack leaves no point robust", {"pgd_robust_accuracy": 0.0})
    s = square(model, x[robust], y[robust], eps=eps, norm=norm, max_queries=max_queries, bounds=bounds, seed=seed)
    gain = float(s.success.float().sum()) / x.shape[0]
    evidence = {"pgd_robust_accuracy": p.robust_accuracy,
                "white_box_robust_accuracy": float(robust.float().mean()), "square_extra_fooled_share": gain,
                "square_max_queries": max_queries}
    if gain > max_gain:
        return Check("black_box", "warn", f"the black-box Square attack fools {gain:.1%} more points than the "
                     "white-box attacks: gradients are misleading (gradient masking)", evidence)
    return Check("black_box", "pass", "black-box Square does not beat the white-box attacks", evidence)


def check_transfer(model: nn.Module, surrogate: nn.Module | Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor,
                   *, eps: float, norm: str, bounds: tuple[float, float], steps: int = 20, seed: int = 0,
                   max_gain: float = 0.01, white_box: Any = None) -> Check:
    """A transfer attack (MI-FGSM on ``surrogate``) must not fool more than ``max_gain`` of the points that
    white-box PGD leaves robust: if a model is harder to attack with its own gradients than with another model's,
    its gradients are masked (Athalye et al. 2018)."""
    from ..evasion import transfer

    p = _pgd(model, x, y, eps=eps, norm=norm, bounds=bounds, steps=steps, seed=seed, given=white_box)
    t = transfer(surrogate, model, x, y, eps=eps, norm=norm, steps=steps, bounds=bounds, seed=seed)
    gain = float((t.success & ~p.success).float().mean())
    evidence = {"pgd_robust_accuracy": p.robust_accuracy, "transfer_robust_accuracy": t.robust_accuracy,
                "transfer_extra_fooled_share": gain}
    if gain > max_gain:
        return Check("transfer", "warn", f"a transfer attack from a surrogate fools {gain:.1%} more points than "
                     "white-box PGD: the model's own gradients are misleading (gradient masking)", evidence)
    return Check("transfer", "pass", "transfer from the surrogate does not beat white-box PGD", evidence)


def run_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf",
               bounds: tuple[float, float] = (0.0, 1.0), checks: Sequence[str] = CHECKS, steps: int = 20,
               max_queries: int = 1000, seed: int = 0,
               surrogate: nn.Module | Sequence[nn.Module] | None = None) -> list[Check]:
    """Run ``checks`` (default: all of :data:`CHECKS`) on the points ``x, y`` at budget ``eps``.

    ``surrogate`` (a model or a list of models trained for the same task) enables the transfer check.
    Returns a list of :class:`Check`; a "warn" means the robustness number may not be trustworthy.
    """
    from ..evasion._core import check_inputs

    norm = check_norm(norm)
    unknown = set(checks) - set(CHECKS)
    if unknown:
        raise InputError(f"unknown checks {sorted(unknown)}; choose from {', '.join(CHECKS)}")
    x, y = check_inputs(x, y, bounds)
    model = as_classifier(model)  # once, for every check (adverse.models.logits_of)
    kw = {"eps": eps, "norm": norm, "bounds": bounds, "steps": steps, "seed": seed}
    # the steps, single-vs-iterative, black-box and transfer checks compare with the same PGD run: run it once
    shared: dict[str, Any] = {}

    def white() -> Any:
        if "pgd" not in shared:
            shared["pgd"] = _pgd(model, x, y, **kw)
        return shared["pgd"]

    run = {
        "output": lambda: check_output(model, x),
        "determinism": lambda: check_determinism(model, x),
        "gradients": lambda: check_gradients(model, x, y),
        "eps_sweep": lambda: check_eps_sweep(model, x, y, white_box=white(), **kw),
        "steps": lambda: check_steps(model, x, y, white_box=white(), **kw),
        "single_vs_iterative": lambda: check_single_vs_iterative(model, x, y, white_box=white(), **kw),
        "black_box": lambda: check_black_box(model, x, y, max_queries=max_queries, white_box=white(), **kw),
        "transfer": lambda: (
            check_transfer(model, surrogate, x, y, white_box=white(), **kw) if surrogate is not None
            else Check("transfer", "skip", "no surrogate given (run_checks(..., surrogate=...))", {})),
    }
    out: list[Check] = []
    for name in checks:
        try:
            out.append(run[name]())
        except ModelError as e:  # e.g. attacks refuse a softmax model; the output check says why
            out.append(Check(name, "skip", f"not run: {e}", {}))
    return out
