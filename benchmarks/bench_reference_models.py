"""Time to train n reference models and to score 1,000 points with them, and how both grow with n.

Task: the synthetic "Purchase-like" task of the privacy reference note (§6, task B; 4,000 samples, pool = first
2,000, RMIA population = next 1,000). Each reference model is an MLP 100-128-20 trained for 20 epochs (Adam,
lr 3e-3, batch 128) on its random half of the pool (1,000 points), as in tests/test_privacy_membership.py.
For each n, ``ReferenceModels(..., n).fit()`` is timed, then scoring 1,000 pool points of the target (an extra
model trained on its own random half) with LiRA (online, fixed variance), RMIA (offline, a and T chosen on the
references: 44 settings) and the loss attack. Reference logits are computed once per n and reused by every
attack (the first attack pays for them: "first score" vs "repeat score").

Run: python benchmarks/bench_reference_models.py [--ns 4 8 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
from sklearn.datasets import make_classification

from adverse.data import Dataset
from adverse.privacy import ReferenceModels, evaluate, lira, loss_attack, rmia
from adverse.zoo import MLP, train_classifier


def train_mlp(x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.nn.Module:
    return train_classifier(MLP(100, 20, (128,)), Dataset(x, y, "purchase-like", 20), epochs=20, lr=3e-3,
                            batch_size=128, seed=seed)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ns", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x, y = make_classification(n_samples=4000, n_features=100, n_informative=30, n_redundant=0, n_classes=20,
                               n_clusters_per_class=1, flip_y=0, class_sep=1.5, random_state=0)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    xp, yp, pop = x[:2000], y[:2000], (x[2000:3000], y[2000:3000])
    g = torch.Generator().manual_seed(123)
    member = torch.zeros(2000, dtype=torch.bool)
    member[torch.randperm(2000, generator=g)[:1000]] = True
    target = train_mlp(xp[member], yp[member], 10_000)
    q = torch.randperm(2000, generator=g)[:1000]  # the 1,000 scored points
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"{'n':>3} {'train s':>8} {'s/model':>8} {'train/n0':>9} {'lira 1st s':>10} {'lira rep s':>10} "
          f"{'rmia s':>7} {'loss s':>7} {'score/n0':>9}  lira AUC  rmia AUC  loss AUC")
    base_train = base_score = None
    for n in args.ns:
        t0 = time.perf_counter()
        refs = ReferenceModels(train_mlp, xp, yp, n=n, seed=0).fit()
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        r_lira = lira(target, xp[q], yp[q], refs, pool_index=q, fixed_variance=True)
        t_lira1 = time.perf_counter() - t0
        t0 = time.perf_counter()
        lira(target, xp[q], yp[q], refs, pool_index=q, fixed_variance=True)
        t_lira2 = time.perf_counter() - t0
        t0 = time.perf_counter()
        r_rmia = rmia(target, xp[q], yp[q], refs, population=pop)
        t_rmia = time.perf_counter() - t0
        t0 = time.perf_counter()
        r_loss = loss_attack(target, xp[q], yp[q])
        t_loss = time.perf_counter() - t0
        score = t_lira1 + t_rmia + t_loss
        base_train = base_train or t_train
        base_score = base_score or score
        aucs = [evaluate(r.scores, member[q], n_bootstrap=0, fprs=(0.01,)).auc for r in (r_lira, r_rmia, r_loss)]
        print(f"{n:>3} {t_train:>8.2f} {t_train / n:>8.3f} {t_train / base_train:>9.2f} {t_lira1:>10.3f} "
              f"{t_lira2:>10.3f} {t_rmia:>7.3f} {t_loss:>7.3f} {score / base_score:>9.2f}  "
              f"{aucs[0]:.3f}     {aucs[1]:.3f}     {aucs[2]:.3f}")


if __name__ == "__main__":
    main()
