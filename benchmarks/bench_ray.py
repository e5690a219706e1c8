"""Ray speed-up on this machine: reference-model training and a sharded PGD evaluation with 1 and 2 workers.

Each setting starts its own local Ray instance (``ray.init(num_cpus=k)``, one torch thread per task) and times
the same work: training ``--models`` reference models (an MLP on the digits train split) and PGD-40 over the
540 digits test points in chunks of 90. The in-process time is printed for scale; results are checked to be
identical across executors. Prints seconds and the speed-up of 2 workers over 1.

    python benchmarks/bench_ray.py [--models 8]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

import adverse.evasion as ev
from adverse import data, zoo
from adverse.execution import RayExecutor
from adverse.privacy import ReferenceModels


def train_fn(x, y, seed):
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(30):
        for idx in torch.randperm(x.shape[0], generator=g).split(64):
            opt.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    return net.eval()


def work(executor, models: int):
    train, test = data.digits("train"), data.digits("test")
    t0 = time.perf_counter()
    refs = ReferenceModels(train_fn, train.x, train.y, n=models, seed=0, executor=executor)
    refs.models  # noqa: B018  (training is lazy: run it here, inside the timing)
    t_refs = time.perf_counter() - t0
    model = zoo.pretrained("digits-cnn")
    t0 = time.perf_counter()
    r = ev.sharded("pgd", model, test.x, test.y, chunk_size=90, eps=0.1, steps=40, executor=executor)
    t_pgd = time.perf_counter() - t0
    return t_refs, t_pgd, refs, r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=int, default=8)
    args = ap.parse_args()
    import ray

    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, ray {ray.__version__}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}, {args.models} reference models, PGD-40 on 540 points")
    base = work(None, args.models)
    rows = [("in-process", base[0], base[1])]
    for k in (1, 2):
        ray.init(num_cpus=k, include_dashboard=False, log_to_driver=False, configure_logging=False)
        work(RayExecutor(), 2)  # warm the workers up (imports, the first model)
        t_refs, t_pgd, refs, r = work(RayExecutor(), args.models)
        ray.shutdown()
        same = all(torch.equal(a, b) for m1, m2 in zip(base[2].models, refs.models)
                   for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
        same = same and torch.equal(base[3].x_adv, r.x_adv)
        rows.append((f"ray, {k} worker{'s' if k > 1 else ''}", t_refs, t_pgd))
        assert same, "results differ between executors"
    print(f"{'executor':<18}{'reference models s':>20}{'PGD s':>10}")
    for name, a, b in rows:
        print(f"{name:<18}{a:>20.1f}{b:>10.1f}")
    print(f"speed-up of 2 workers over 1: reference models {rows[1][1] / rows[2][1]:.2f}×, "
          f"PGD {rows[1][2] / rows[2][2]:.2f}× (results identical)")


if __name__ == "__main__":
    main()
