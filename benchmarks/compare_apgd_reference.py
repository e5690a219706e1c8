"""APGD against its reference implementation: robust accuracy, per-sample agreement and wall time.

Runs ``adverse.evasion.apgd`` (CE, DLR, and APGD-T with 9 targets) and the reference code of Croce & Hein
(fra31/auto-attack: ``APGDAttack``, ``APGDAttack_targeted``) with the same settings (100 iterations, one
restart, seed 0) on the adversarially trained digits CNN (``adverse.zoo.pretrained("digits-cnn-at")``) and its
test split, and prints one markdown table.

The reference is not part of this project: point ``AUTOATTACK_PATH`` at a copy of fra31/auto-attack (the folder
that contains ``autoattack/``); without it the script says so and exits with status 0.

    AUTOATTACK_PATH=/path/to/auto-attack python benchmarks/compare_apgd_reference.py --threads 1

Both sides get the model in eval mode with frozen parameters (the reference would otherwise also build
gradients for the weights), run on the CPU one after the other, and are timed in wall-clock seconds
(``time.perf_counter``) and in CPU seconds of this process (``time.process_time``), which a busy shared machine
disturbs less when one thread is used.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

EPS = {"linf": 0.2, "l2": 1.0, "l1": 2.0}
REF_NORM = {"linf": "Linf", "l2": "L2", "l1": "L1"}


def load_reference():
    path = os.environ.get("AUTOATTACK_PATH")
    if not path:
        return None, "AUTOATTACK_PATH is not set (point it at a copy of fra31/auto-attack)"
    sys.path.insert(0, os.path.abspath(path))
    try:
        from autoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    except ImportError as exc:
        return None, f"cannot import the reference from {path}: {exc!r}"
    return (APGDAttack, APGDAttack_targeted), ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--norms", nargs="+", default=["linf", "l2", "l1"], choices=sorted(EPS))
    ap.add_argument("--attacks", nargs="+", default=["ce", "dlr", "t"], choices=["ce", "dlr", "t"])
    ap.add_argument("--n", type=int, default=None, help="first n test points (default: all 540)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--eps", nargs="+", default=[], metavar="NORM=EPS", help="override a budget, e.g. l2=0.5")
    ap.add_argument("--repeat", type=int, default=1, help="time each attack this many times, keep the fastest")
    args = ap.parse_args()
    budgets = dict(EPS, **{k: float(v) for k, v in (item.split("=") for item in args.eps)})

    ref, why = load_reference()
    if ref is None:
        print(f"skipped: {why}")
        return 0
    APGDAttack, APGDAttack_targeted = ref

    from adverse.data import digits
    from adverse.evasion.apgd import apgd
    from adverse.zoo import pretrained

    torch.set_num_threads(args.threads)
    model = pretrained("digits-cnn-at").eval()
    for p in model.parameters():
        p.requires_grad_(False)
    data = digits("test")
    x, y = (data.x, data.y) if args.n is None else (data.x[: args.n], data.y[: args.n])
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()

    print(f"model digits-cnn-at, {len(y)} test points, clean accuracy {clean:.4f}; {args.steps} iterations, "
          f"1 restart, seed 0; fastest of {args.repeat} run(s); torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{os.cpu_count()} CPU(s), {platform.processor() or platform.machine()}")
    print()
    print("| norm | eps | attack | robust acc. (adverse) | robust acc. (reference) | samples that differ "
          "| wall s (adverse) | wall s (reference) | CPU s (adverse) | CPU s (reference) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for norm in args.norms:
        eps = budgets[norm]
        for attack in args.attacks:
            kw = {"targeted": True, "n_target_classes": 9} if attack == "t" else {"loss": attack}
            t_ours = c_ours = float("inf")
            for _ in range(args.repeat):
                t0, c0 = time.perf_counter(), time.process_time()
                ours = apgd(model, x, y, eps=eps, norm=norm, steps=args.steps, seed=0, **kw)
                t_ours, c_ours = min(t_ours, time.perf_counter() - t0), min(c_ours, time.process_time() - c0)

            common = {"n_iter": args.steps, "norm": REF_NORM[norm], "n_restarts": 1, "eps": eps, "seed": 0,
                      "device": "cpu"}
            t_ref = c_ref = float("inf")
            for _ in range(args.repeat):
                if attack == "t":
                    reference = APGDAttack_targeted(model, n_target_classes=9, **common)
                else:
                    reference = APGDAttack(model, loss=attack, **common)
                t0, c0 = time.perf_counter(), time.process_time()
                x_ref = reference.perturb(x, y).detach()
                t_ref, c_ref = min(t_ref, time.perf_counter() - t0), min(c_ref, time.process_time() - c0)
            with torch.no_grad():
                ref_fooled = model(x_ref).argmax(1) != y
            delta = (x_ref - x).flatten(1)
            size = {"linf": delta.abs().amax(1), "l2": delta.norm(dim=1), "l1": delta.abs().sum(1)}[norm]
            note = "" if float(size.max()) <= eps + 1e-5 else f" (reference exceeds eps: {float(size.max()):.4f})"
            name = {"ce": "APGD-CE", "dlr": "APGD-DLR", "t": "APGD-T (9 targets)"}[attack]
            differ = int((ours.success != ref_fooled).sum())
            print(f"| {norm} | {eps:g} | {name} | {ours.robust_accuracy:.4f} | "
                  f"{1 - ref_fooled.float().mean().item():.4f}{note} | {differ} | {t_ours:.1f} | {t_ref:.1f} | "
                  f"{c_ours:.1f} | {c_ref:.1f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
