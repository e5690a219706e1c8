"""Peak memory of a streamed audit does not grow with the number of images.

Writes N generated 3×64×64 PNG images (ten class folders) and audits a small CNN on them with the evasion suite
(FGSM at one budget; no checks, no AutoAttack, no minimal-norm curve) through the command line, which streams a
``--data`` folder. Each audit runs in its own process; its peak resident set size (``ru_maxrss`` of the finished
child) is printed for every N, with the ratio of the largest N's peak to the smallest N's. For contrast,
``--in-memory`` also runs the same audit from Python on the folder loaded whole (``load_data(stream=False)``).

    python benchmarks/bench_stream_memory.py                   # N = 2,000 and 20,000
    python benchmarks/bench_stream_memory.py --n 2000 20000 --in-memory
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FACTORY = """import torch
from torch import nn


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2,
                         padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
"""
CONFIG = """suites = ["evasion"]
threads = 1
[evasion]
eps = [0.03]
attacks = ["fgsm"]
checks = false
minimal_norm = false
autoattack = "off"
examples = false
"""
IN_MEMORY = """import sys, time, torch
import adverse as adv
from adverse.loading import load_data, load_model
torch.set_num_threads(1)
model = load_model(sys.argv[1], arch="bench_models:cnn")
data = load_data(sys.argv[2])
r = adv.audit(model, data, eps=(0.03,), attacks=("fgsm",), checks=False, minimal_norm=False, autoattack=None,
              examples=False, suites=["evasion"])
print(r.n, r.clean_accuracy)
"""


def write_images(root: Path, n: int, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(10):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
    base = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    for i in range(n):
        shift = rng.integers(-40, 41, size=(1, 1, 3))
        img = np.clip(base.astype(np.int16) + shift + rng.integers(-20, 21, size=(64, 64, 3)), 0, 255)
        Image.fromarray(img.astype(np.uint8)).save(root / str(i % 10) / f"{i:06d}.png", compress_level=1)


def peak_of(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float, str]:
    """(peak RSS in MiB of the child alone — ``os.wait4`` gives that child's own rusage —, seconds, the last
    line it printed)."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - t0
    text = log.read_text()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{text}")
    lines = [s for s in text.strip().splitlines() if s.strip()]
    return usage.ru_maxrss / 1024.0, seconds, lines[-1] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--in-memory", action="store_true", help="also the same audit on the folder loaded whole")
    args = parser.parse_args()
    import torch
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "bench_models.py").write_text(FACTORY)
        (work / "audit.toml").write_text(CONFIG)
        (work / "in_memory.py").write_text(IN_MEMORY)
        sys.path.insert(0, str(work))
        from bench_models import cnn

        save_file(cnn().state_dict(), str(work / "cnn.safetensors"))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(work), os.environ.get("PYTHONPATH", "")]))
        print(f"torch {torch.__version__}, 1 thread; streamed audits through the CLI (a --data folder is streamed)")
        print(f"{'images':>8} {'peak RSS MiB':>13} {'seconds':>8}  mode")
        peaks = {}
        for n in sorted(args.n):
            folder = work / f"images{n}"
            t0 = time.perf_counter()
            write_images(folder, n)
            wrote = time.perf_counter() - t0
            cmd = [sys.executable, "-m", "adverse.cli", "audit", "--config", str(work / "audit.toml"), "--model",
                   str(work / "cnn.safetensors"), "--arch", "bench_models:cnn", "--data", str(folder),
                   "--out", str(work / f"out{n}")]
            peak, seconds, _ = peak_of(cmd, env, work / f"log{n}.txt")
            peaks[n] = peak
            print(f"{n:>8,} {peak:>13.1f} {seconds:>8.1f}  streamed (writing the PNGs took {wrote:.1f} s)")
        lo, hi = min(peaks), max(peaks)
        print(f"peak({hi:,}) / peak({lo:,}) = {peaks[hi] / peaks[lo]:.3f} (issue 13: within 1.20)")
        if args.in_memory:
            for n in sorted(args.n):
                peak, seconds, _ = peak_of([sys.executable, str(work / "in_memory.py"),
                                               str(work / "cnn.safetensors"), str(work / f"images{n}")], env,
                                              work / f"memory{n}.txt")
                print(f"{n:>8,} {peak:>13.1f} {seconds:>8.1f}  in memory (load_data without stream)")


if __name__ == "__main__":
    main()
