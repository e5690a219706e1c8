"""Peak memory of randomized-smoothing certification: n = 100,000 noise samples of a 3×32×32 input.

Each configuration runs in a fresh subprocess, which reports its peak resident set size (``ru_maxrss``) before
and after :func:`adverse.defenses.smoothing.certify`; the difference is what certification added. Materializing
all n noisy copies at once would take n × 3 × 32 × 32 × 4 bytes = 1.23 GB for the noise alone at n = 100,000; the
batched sampler should stay flat in n and grow only with ``batch_size``.

Run:  nice -n 10 python benchmarks/bench_smoothing_memory.py [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import torch
from torch import nn
from adverse.defenses import smoothing

n, batch_size, threads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
torch.manual_seed(0)
model = nn.Sequential(
    nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
    nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
).eval()
x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
cert = smoothing.certify(model, x, sigma=0.25, n0=100, n=n, alpha=0.001, batch_size=batch_size, seed=0)
seconds = time.perf_counter() - t0
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"n": n, "batch_size": batch_size, "before_mb": before / 1024, "peak_mb": after / 1024,
                  "added_mb": (after - before) / 1024, "seconds": seconds,
                  "prediction": int(cert.prediction[0]), "radius": float(cert.radius[0]),
                  "counts": int(cert.counts[0])}))
"""


def run(n: int, batch_size: int, threads: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), str(batch_size), str(threads)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    print(f"# {platform.machine()}, {os.cpu_count()} cores, {args.threads} thread(s); model: 2 strided 3×3 convs "
          "(16, 32 channels) + global average pool + linear, input 3×32×32, sigma 0.25, n0 100, alpha 0.001")
    naive_gb = 100_000 * 3 * 32 * 32 * 4 / 1e9
    print(f"# materializing all 100,000 noisy copies at once: {naive_gb:.2f} GB for the noise alone")
    print(f"{'n':>8s} {'batch':>6s} {'RSS before (MB)':>16s} {'peak RSS (MB)':>14s} {'added (MB)':>11s} "
          f"{'seconds':>8s} {'class':>6s} {'radius':>7s}")
    rows = []
    for n, batch_size in [(10_000, 1_000), (100_000, 1_000), (100_000, 4_000)]:
        r = run(n, batch_size, args.threads)
        rows.append(r)
        print(f"{r['n']:8d} {r['batch_size']:6d} {r['before_mb']:16.1f} {r['peak_mb']:14.1f} {r['added_mb']:11.1f} "
              f"{r['seconds']:8.1f} {r['prediction']:6d} {r['radius']:7.3f}", flush=True)
    worst = max(r["peak_mb"] for r in rows if r["n"] == 100_000)
    print(f"\npeak RSS at n = 100,000: {worst:.1f} MB -> {'under' if worst < 1024 else 'NOT under'} 1 GB")


if __name__ == "__main__":
    main()
