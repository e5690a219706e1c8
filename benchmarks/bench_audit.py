"""Wall time of the default ``adverse audit`` (the bundled digits CNN, every suite, default budgets), per part.

Runs the real command in a fresh process (``python -m adverse.cli audit --out DIR --json``), then prints the
``seconds`` that ``results.json`` records for each part next to the whole command's wall time and peak memory,
and the headline numbers, so the table in BENCHMARKS.md can be checked against one run.

Usage: ``python benchmarks/bench_audit.py [--threads N] [--out DIR]`` (torch's default threads when not given).
The digits CNN is trained and cached on first use; run once before timing, or read the ``model`` row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="bench-audit-")
    cmd = [sys.executable, "-m", "adverse.cli", "audit", "--out", out, "--json"]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores; load average at "
          f"start {os.getloadavg()[0]:.2f}; command: {' '.join(cmd[1:])}")
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"the audit failed ({r.returncode}):\n{r.stderr[-3000:]}")
    d = json.loads(r.stdout)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    env = d["environment"]
    print(f"torch {env['torch']}, {env['threads']} thread(s); suites {', '.join(d['suites'])}; n={d['n']}")
    parts = {k: v for k, v in d["seconds"].items() if k != "total"}
    for k, v in parts.items():
        print(f"  {k:<14} {v:7.1f} s")
    print(f"  {'audit total':<14} {d['seconds']['total']:7.1f} s  (parts above sum to {sum(parts.values()):.1f} s)")
    print(f"  {'command wall':<14} {wall:7.1f} s  (process start, imports, report); peak RSS {peak:.0f} MB")
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    worst = ", ".join(f"{w['eps']:g}: {w['robust_accuracy']:.3f}" for w in d["worst_case"])
    print(f"clean {d['clean_accuracy']:.3f}; worst case {worst}")
    if d.get("autoattack"):
        print(d["autoattack"]["message"])
    if d.get("privacy"):
        print("privacy AUC:", {r["attack"]: round(r["auc"], 3) for r in d["privacy"]["attacks"]})
    if d.get("poisoning"):
        print("poisoning ASR:", {r["poison_rate"]: round(r["attack_success_rate"], 3) for r in d["poisoning"]["attacks"]})
    if d.get("certify"):
        for m in d["certify"]["methods"]:
            print("certify", m.get("method"), [round(r["certified_accuracy"], 3) for r in m.get("rows", [])],
                  m.get("reason", ""))


if __name__ == "__main__":
    main()
