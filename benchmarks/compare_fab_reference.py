"""FAB against the reference implementation (fra31/auto-attack ``FABAttack_PT``): strength and time.

Main comparison, AutoAttack's FAB-T setting: model ``digits-cnn-at`` (PGD adversarially trained, L∞ eps 0.2),
all 540 points of the digits test set as one batch, L∞ eps 0.2, targeted over the 9 non-true classes of
highest clean logit, 100 iterations per target, 1 restart, alpha_max 0.1, eta 1.05, beta 0.9. A point is robust
when the model still classifies its output correctly; outputs are checked against the threat model.

With ``--minimal``, also the untargeted minimal-norm FAB in L∞ on the undefended ``digits-cnn`` (100
iterations, 1 restart): adverse with ``eps=None``, the reference with an ``eps`` (1.0) that no perturbation of
[0, 1] inputs exceeds, so that it returns the smallest adversarial of every point; median norms compared.

The reference is not a dependency of adverse: point ``AUTOATTACK_PATH`` at a directory holding its
``autoattack`` package (e.g. a checkout of github.com/fra31/auto-attack); without it the script says so and
exits cleanly.

Usage::

    AUTOATTACK_PATH=/tmp/auto-attack python benchmarks/compare_fab_reference.py --threads 1 [--minimal]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from adverse.data import digits
from adverse.evasion.fab import fab
from adverse.zoo import pretrained

EPS, STEPS, TARGETS = 0.2, 100, 9


def load_reference():
    path = os.environ.get("AUTOATTACK_PATH")
    if not path:
        return None, "AUTOATTACK_PATH is not set"
    sys.path.insert(0, path)
    try:
        from autoattack.fab_pt import FABAttack_PT
    except (ImportError, AttributeError, SyntaxError) as e:  # not there, or broken against this torch
        return None, f"cannot import autoattack.fab_pt from {path} ({type(e).__name__}: {e})"
    return FABAttack_PT, None


def frozen(name: str) -> torch.nn.Module:
    model = pretrained(name).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def linf(x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (x_adv - x).flatten(1).abs().amax(dim=1)


def check(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> int:
    """How many outputs leave the threat model."""
    bad = (linf(x_adv, x) > eps + 1e-6) | (x_adv.flatten(1).amin(1) < -1e-6) | (x_adv.flatten(1).amax(1) > 1 + 1e-6)
    return int(bad.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--minimal", action="store_true", help="also compare untargeted minimal-norm FAB")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    FABAttack_PT, why = load_reference()
    if FABAttack_PT is None:
        print(f"skipped: the reference FAB is not available ({why}); set AUTOATTACK_PATH to a checkout of "
              "github.com/fra31/auto-attack")
        return

    data = digits("test")
    x, y = data.x, data.y
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")

    model = frozen("digits-cnn-at")
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    print(f"\nFAB-T, digits-cnn-at, {x.shape[0]} test points (clean accuracy {clean.float().mean():.4f}), "
          f"L∞ eps {EPS}, {TARGETS} targets × {STEPS} iterations, 1 restart, one batch")
    head = f"{'implementation':<28}{'robust acc':>11}{'time s':>9}{'bad':>5}"
    print(head + "\n" + "-" * len(head))

    t0 = time.perf_counter()
    r = fab(model, x, y, norm="linf", eps=EPS, steps=STEPS, targeted=True, n_target_classes=TARGETS, seed=0)
    t_ours = time.perf_counter() - t0
    with torch.no_grad():
        robust_ours = model(r.x_adv).argmax(1) == y
    print(f"{'adverse fab(targeted=True)':<28}{robust_ours.float().mean():>11.4f}{t_ours:>9.1f}"
          f"{check(r.x_adv, x, EPS):>5}", flush=True)

    ref = FABAttack_PT(model, norm="Linf", n_restarts=1, n_iter=STEPS, eps=EPS, alpha_max=0.1, eta=1.05,
                       beta=0.9, seed=0, targeted=True, n_target_classes=TARGETS, device=x.device)
    t0 = time.perf_counter()
    x_ref = ref.perturb(x, y)
    t_ref = time.perf_counter() - t0
    with torch.no_grad():
        robust_ref = model(x_ref).argmax(1) == y
    print(f"{'reference FABAttack_PT':<28}{robust_ref.float().mean():>11.4f}{t_ref:>9.1f}{check(x_ref, x, EPS):>5}")
    print(f"points fooled by the reference only: {int((robust_ours & ~robust_ref).sum())}; "
          f"by adverse only: {int((~robust_ours & robust_ref).sum())}")
    print(f"adverse passes per point: {r.forwards / x.shape[0]:.0f} forwards, {r.backwards / x.shape[0]:.0f} backwards")

    if not a.minimal:
        return
    model = frozen("digits-cnn")
    print(f"\nminimal-norm FAB (untargeted), digits-cnn, {x.shape[0]} test points, L∞, {STEPS} iterations, 1 restart")
    print(f"{'implementation':<28}{'success':>9}{'median ‖δ‖∞':>13}{'time s':>9}")
    t0 = time.perf_counter()
    r = fab(model, x, y, norm="linf", steps=STEPS, seed=0)
    t_ours = time.perf_counter() - t0
    ok = r.success & r.clean_correct
    print(f"{'adverse fab(eps=None)':<28}{float(r.success.float().mean()):>9.4f}{float(r.norms[ok].median()):>13.5f}"
          f"{t_ours:>9.1f}", flush=True)
    ref = FABAttack_PT(model, norm="Linf", n_restarts=1, n_iter=STEPS, eps=1.0, seed=0, device=x.device)
    t0 = time.perf_counter()
    x_ref = ref.perturb(x, y)
    t_ref = time.perf_counter() - t0
    with torch.no_grad():
        fooled = model(x_ref).argmax(1) != y
    ok_ref = fooled & r.clean_correct
    print(f"{'reference FABAttack_PT':<28}{float(fooled.float().mean()):>9.4f}"
          f"{float(linf(x_ref, x)[ok_ref].median()):>13.5f}{t_ref:>9.1f}")
    both = ok & ok_ref
    ratio = r.norms[both] / linf(x_ref, x)[both]
    print(f"per point, adverse / reference norm on the {int(both.sum())} points both fool: median "
          f"{float(ratio.median()):.4f}, smaller for {int((ratio < 1 - 1e-6).sum())}, "
          f"larger for {int((ratio > 1 + 1e-6).sum())}")


if __name__ == "__main__":
    main()
