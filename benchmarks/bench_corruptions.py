"""Accuracy under the common corruptions (Hendrycks & Dietterich 2019) of the digits CNNs, and the relative mCE.

The 540 digits test images (1×8×8, ``adverse.data.digits("test")``), every corruption of
``adverse.corruptions.CORRUPTIONS`` (14: frost is left out) at severities 1–5, seed 0, for ``digits-cnn``
(undefended) and ``digits-cnn-at`` (PGD adversarial training, L∞ 0.2), from one
``corruption_accuracy(digits-cnn-at, …, baseline=digits-cnn)`` call: both models see the same corrupted images.
Prints, per corruption, the accuracy at each severity and the mean over severities for both models, the mean per
severity over corruptions, and the CE / relative CE of digits-cnn-at with digits-cnn as the baseline (mCE < 1:
fewer errors under corruption than the baseline).

Usage: ``python benchmarks/bench_corruptions.py --threads 1`` (``--n 100`` for a quick run).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from adverse.corruptions import CORRUPTIONS, LEFT_OUT, corruption_accuracy
from adverse.data import digits
from adverse.zoo import pretrained


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n", type=int, default=None, help="test images (default: all 540)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = digits("test")
    x, y = data.x[:args.n], data.y[:args.n]
    base, robust = pretrained("digits-cnn"), pretrained("digits-cnn-at")
    start = time.perf_counter()
    r = corruption_accuracy(robust, x, y, seed=args.seed, baseline=base)
    seconds = time.perf_counter() - start
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {args.threads} thread(s), {platform.machine()}, {os.cpu_count()} CPUs, "
          f"load {load:.1f}; {r.n} digits test images 1x8x8, {len(r.corruptions)} corruptions x 5 severities, "
          f"seed {r.seed}; left out: {', '.join(LEFT_OUT)}; {seconds:.1f} s for both models")
    print("accuracy, digits-cnn / digits-cnn-at")
    print("| corruption | s=1 | s=2 | s=3 | s=4 | s=5 | mean | CE | relative CE |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| clean | | | | | | {r.baseline_clean_accuracy:.3f} / {r.clean_accuracy:.3f} | | |")
    for name in CORRUPTIONS:
        cells = [f"{r.baseline_accuracy[name][s]:.3f} / {r.accuracy[name][s]:.3f}" for s in r.severities]
        base_mean = sum(r.baseline_accuracy[name].values()) / len(r.severities)
        print(f"| {name} | {' | '.join(cells)} | {base_mean:.3f} / {r.corruption_mean[name]:.3f} | "
              f"{r.ce[name]:.3f} | {r.relative_ce[name]:.3f} |")
    base_sev = {s: sum(r.baseline_accuracy[c][s] for c in r.corruptions) / len(r.corruptions) for s in r.severities}
    base_all = sum(base_sev.values()) / len(base_sev)
    cells = [f"{base_sev[s]:.3f} / {r.severity_mean[s]:.3f}" for s in r.severities]
    print(f"| **mean** | {' | '.join(cells)} | **{base_all:.3f} / {r.mean_accuracy:.3f}** | "
          f"**mCE {r.mce:.3f}** | **rel. mCE {r.relative_mce:.3f}** |")


if __name__ == "__main__":
    main()
