"""AutoAttack (standard) against its reference implementation: robust accuracy, agreement and wall time.

Runs ``adverse.evasion.autoattack(version="standard")`` and the reference ``AutoAttack`` of Croce & Hein
(fra31/auto-attack, ``version='standard'``) on the same model and points, one after the other, same thread
setting, and prints one markdown table. Models: the adversarially trained digits CNN (``digits-cnn-at``) and
the undefended one (``digits-cnn``), L∞.

The reference is not part of this project: point ``AUTOATTACK_PATH`` at a copy of fra31/auto-attack (the folder
that contains ``autoattack/``); without it the script says so and exits with status 0.

    AUTOATTACK_PATH=/path/to/auto-attack python benchmarks/compare_autoattack_reference.py --n 200 --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

from adverse.data import digits
from adverse.evasion.ensemble import autoattack
from adverse.models import attack_mode
from adverse.zoo import pretrained


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["digits-cnn-at", "digits-cnn"])
    ap.add_argument("--eps", nargs="+", type=float, default=[0.2, 0.1], help="one budget per model")
    ap.add_argument("--n", type=int, default=200, help="first n test points")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    path = os.environ.get("AUTOATTACK_PATH")
    if not path:
        print("skipped: AUTOATTACK_PATH is not set (point it at a copy of fra31/auto-attack)")
        return 0
    sys.path.insert(0, os.path.abspath(path))
    try:
        from autoattack import AutoAttack
    except ImportError as exc:
        print(f"skipped: cannot import the reference from {path}: {exc!r}")
        return 0
    torch.set_num_threads(args.threads)
    te = digits("test")
    x, y = te.x[: args.n], te.y[: args.n]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}, "
          f"n={len(y)}\n")
    print("| model | eps | clean | adverse robust acc | reference robust acc | agree (per point) | adverse s | reference s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, eps in zip(args.models, args.eps):
        model = pretrained(name)
        t0 = time.perf_counter()
        ours = autoattack(model, x, y, eps=eps, norm="linf", version="standard", seed=0)
        t_ours = time.perf_counter() - t0
        with attack_mode(model):
            ref = AutoAttack(model, norm="Linf", eps=eps, version="standard", device="cpu", verbose=False, seed=0)
            t0 = time.perf_counter()
            x_ref = ref.run_standard_evaluation(x.clone(), y.clone(), bs=len(y))
            t_ref = time.perf_counter() - t0
            with torch.no_grad():
                ref_robust = model(x_ref).argmax(1) == y
        ours_robust = ~ours.success
        agree = float((ours_robust == ref_robust).float().mean())
        print(f"| {name} | {eps} | {ours.clean_accuracy:.2%} | {ours.robust_accuracy:.2%} | "
              f"{float(ref_robust.float().mean()):.2%} | {agree:.2%} | {t_ours:.1f} | {t_ref:.1f} |", flush=True)
        print("\nadverse per attack: " + "; ".join(
            f"{p['attack']} → {p['robust_accuracy']:.2%} ({p['seconds']:.1f} s)" for p in ours.params["per_attack"]) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
