"""PGD speed: the time of PGD-k divided by k times the time of one forward+backward pass w.r.t. the input.

For the adversarially trained ``digits-cnn-at`` and the undefended ``digits-cnn``, on the 540-point digits test
set (as one batch, and in batches of 128), L∞ eps 0.2 and 0.1, k in (10, 40), with early stop (the default) and
without. The baseline is measured in the same run, on the same batches, with the same thread setting: a block
of k forward+backward passes timed as one piece, interleaved with the PGD runs, so that a busy moment on a
shared machine hits both alike (timing single short passes and multiplying by k is biased on a loaded machine).

Columns
-------
fb          one forward+backward pass w.r.t. the input (cross-entropy, summed, ``torch.autograd.grad``) on the
            same batches, in ms: the median block of k passes divided by k.
fwd         one forward pass without a graph, in ms (median block of 2, halved).
pgd         ``adverse.evasion.pgd(..., steps=k, restarts=1)`` on all 540 points, in ms (median).
ratio       pgd / (k · fb): with wall-clock times (wall) and with process CPU times (cpu, the steadier of the two
            when other work shares the CPU).
floor       (k · fb + 2 · fwd) / (k · fb), wall: the ratio without early stop even with no time spent outside the
            model, since PGD-k also runs the clean forward pass and checks the last iterate (k + 2 evaluations).
excess      without early stop: pgd / (k · fb + 2 · fwd) with CPU times, i.e. the time outside the model passes.
bwd/k       backward passes per sample divided by k (below 1 when early stop drops fooled samples).
rob         robust accuracy.

Usage::

    python benchmarks/bench_pgd.py --threads 1
    python benchmarks/bench_pgd.py --threads 2
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

import adverse
from adverse.data import digits
from adverse.evasion import pgd
from adverse.zoo import pretrained


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class Clock:
    """Wall and process-CPU time of a block."""

    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c


def chunks(x, y, batch):
    n = x.shape[0]
    b = n if batch is None else batch
    return [(x[i : i + b], y[i : i + b]) for i in range(0, n, b)]


def fwd_bwd(model, xb, yb):
    """One forward+backward pass w.r.t. the input: what one PGD step costs at the least."""
    xx = xb.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(xx), yb, reduction="none")
        (g,) = torch.autograd.grad(loss.sum(), xx)
    return g


def fwd(model, xb):
    with torch.no_grad():
        return model(xb)


def run_pgd(model, parts, eps, k, early_stop):
    out = [pgd(model, xb, yb, eps=eps, steps=k, restarts=1, early_stop=early_stop, seed=0) for xb, yb in parts]
    n = sum(r.x_adv.shape[0] for r in out)
    robust = sum(float((~r.success).sum()) for r in out) / n
    return out, n, robust


def bench(model, parts, eps, k, early_stop, repeats):
    run_pgd(model, parts, eps, k, early_stop)  # warm-up
    for xb, yb in parts:
        fwd_bwd(model, xb, yb)
        fwd(model, xb)
    t = {key: [] for key in ("fb", "fb_c", "f", "f_c", "p", "p_c")}
    for _ in range(repeats):  # interleaved: baseline block, forward block, PGD
        with Clock() as c:
            for _ in range(k):
                for xb, yb in parts:
                    fwd_bwd(model, xb, yb)
        t["fb"].append(c.wall)
        t["fb_c"].append(c.cpu)
        with Clock() as c:
            for _ in range(2):
                for xb, _ in parts:
                    fwd(model, xb)
        t["f"].append(c.wall)
        t["f_c"].append(c.cpu)
        with Clock() as c:
            out, n, robust = run_pgd(model, parts, eps, k, early_stop)
        t["p"].append(c.wall)
        t["p_c"].append(c.cpu)
    m = {key: statistics.median(v) for key, v in t.items()}
    backwards = sum(r.backwards for r in out) / n
    return dict(
        fb=m["fb"] / k, fwd=m["f"] / 2, pgd=m["p"], ratio=m["p"] / m["fb"], ratio_cpu=m["p_c"] / m["fb_c"],
        floor=(m["fb"] + m["f"]) / m["fb"], excess=None if early_stop else m["p_c"] / (m["fb_c"] + m["f_c"]),
        bwd_k=backwards / k, rob=robust,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds (baseline block + PGD) per configuration")
    ap.add_argument("--models", nargs="+", default=["digits-cnn-at", "digits-cnn"])
    ap.add_argument("--eps", nargs="+", type=float, default=[0.2, 0.1])
    ap.add_argument("--steps", nargs="+", type=int, default=[10, 40])
    ap.add_argument("--batches", nargs="+", default=["all", "128"], help="'all' (one batch) and/or batch sizes")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    data = digits("test")
    x, y = data.x, data.y
    print(f"adverse from {os.path.dirname(adverse.__file__)}")
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores; torch {torch.__version__}; "
          f"torch.get_num_threads() = {torch.get_num_threads()}")
    print(f"data: digits test, {x.shape[0]} points, shape {tuple(x.shape[1:])}; {a.repeats} rounds of baseline and "
          f"PGD, interleaved, medians; load average at start {os.getloadavg()[0]:.2f}")
    head = (f"{'model':<14}{'eps':>5}{'batch':>6}{'k':>4}{'early':>6}{'fb ms':>8}{'fwd ms':>8}{'pgd ms':>9}"
            f"{'wall':>7}{'cpu':>7}{'floor':>7}{'excess':>7}{'bwd/k':>7}{'rob':>7}")
    print(f"{'':<60}{'- ratio -':^14}")
    print(head)
    print("-" * len(head))
    t0 = time.perf_counter()
    for name in a.models:
        model = pretrained(name).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        for eps in a.eps:
            for b in a.batches:
                parts = chunks(x, y, None if b == "all" else int(b))
                for k in a.steps:
                    for es in (True, False):
                        r = bench(model, parts, eps, k, es, a.repeats)
                        excess = "-" if r["excess"] is None else f"{r['excess']:.3f}"
                        print(f"{name:<14}{eps:>5.2f}{b:>6}{k:>4}{str(es):>6}{r['fb'] * 1e3:>8.1f}"
                              f"{r['fwd'] * 1e3:>8.1f}{r['pgd'] * 1e3:>9.1f}{r['ratio']:>7.3f}{r['ratio_cpu']:>7.3f}"
                              f"{r['floor']:>7.3f}{excess:>7}{r['bwd_k']:>7.3f}{r['rob']:>7.3f}", flush=True)
    print(f"total {time.perf_counter() - t0:.0f} s; load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
