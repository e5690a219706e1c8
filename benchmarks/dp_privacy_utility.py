"""Privacy-utility curve of DP-SGD on the synthetic Purchase-like task: ε against LiRA TPR at 1 % FPR and accuracy.

Task B of the privacy reference note (§6): ``make_classification(n_samples=4000, n_features=100,
n_informative=30, n_redundant=0, n_classes=20, n_clusters_per_class=1, flip_y=0, class_sep=1.5,
random_state=0)``; the first 2,000 points are the membership pool, the last 1,000 the test set for accuracy.

For each training recipe (non-private, then DP-SGD at each ε) ten MLPs 100-128-20 train on complementary random
halves of the pool (:class:`adverse.privacy.ReferenceModels`); model 0 is the target, its partner is left out,
and the other eight, trained with the *same* recipe, are LiRA's reference models (online, fixed variance;
:func:`adverse.privacy.lira`). :func:`adverse.privacy.evaluate` gives AUC and TPR at 1 % FPR over all 2,000
pool points (1,000 members, 1,000 non-members).

Run:  nice -n 10 python benchmarks/dp_privacy_utility.py [--eps 1 2 4 8] [--refs 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
from torch import nn

from adverse.data import Dataset, purchase_like
from adverse.defenses import dp
from adverse.privacy import ReferenceModels, evaluate, lira, loss_attack
from adverse.zoo import MLP, train_classifier

N_POOL = 2000
DELTA = 1e-4  # < 1 / 1,000 training records per model


def non_private(x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
    """The membership tests' recipe: Adam 3e-3, 20 epochs, batch 128."""
    return train_classifier(MLP(100, 20, (128,)), Dataset(x, y, "purchase-like", 20), epochs=20, lr=3e-3,
                            batch_size=128, seed=seed)


def private(eps: float, spent: dict[int, float], epochs: int, lr: float, batch_size: int, clip: float):
    """DP-SGD at (eps, DELTA): SGD, expected batch ``batch_size``, clip ``clip``; records each model's ε."""

    def train(x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
        r = dp.train_dp(MLP(100, 20, (128,)), Dataset(x, y, "purchase-like", 20), target_epsilon=eps, delta=DELTA,
                        epochs=epochs, lr=lr, batch_size=batch_size, max_grad_norm=clip, seed=seed)
        spent[seed] = r.epsilon
        return r.model

    return train


def measure(name: str, train_fn, x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
            n_refs: int, spent: dict[int, float] | None = None) -> dict:
    t0 = time.perf_counter()
    refs = ReferenceModels(train_fn, x, y, n=n_refs, seed=0)
    target, is_member, others = refs.leave_out(0)
    index = torch.arange(x.shape[0])
    scores = lira(target, x, y, others, pool_index=index, fixed_variance=True)
    ev = evaluate(scores.scores, is_member, n_bootstrap=200, seed=0)
    loss_ev = evaluate(loss_attack(target, x, y).scores, is_member, n_bootstrap=0)
    with torch.no_grad():
        acc = float((target(x_test).argmax(1) == y_test).double().mean())
        train_acc = float((target(x[is_member]).argmax(1) == y[is_member]).double().mean())
    lo, hi = ev.ci["tpr@0.01"]
    return {"setting": name, "eps": spent[refs.seeds[0]] if spent else float("inf"), "test_acc": acc,
            "train_acc": train_acc, "lira_auc": ev.auc, "tpr1": ev.tpr_at_fpr[0.01], "tpr1_ci": (lo, hi),
            "loss_auc": loss_ev.auc, "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eps", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    ap.add_argument("--refs", type=int, default=10, help="models per setting (target + partner + references)")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--lr", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x, y = purchase_like()
    pool_x, pool_y, test_x, test_y = x[:N_POOL], y[:N_POOL], x[3000:], y[3000:]
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.threads} thread(s); DP-SGD: SGD lr {args.lr}, expected batch {args.batch_size}, clip {args.clip}, "
          f"{args.epochs} epochs, delta {DELTA:g}, RDP accountant; {args.refs} models per setting "
          f"(target + {args.refs - 2} LiRA references)")
    rows = [measure("non-private (Adam, 20 ep)", non_private, pool_x, pool_y, test_x, test_y, args.refs)]
    print_row(rows[-1], header=True)
    for eps in args.eps:
        spent: dict[int, float] = {}
        fn = private(eps, spent, args.epochs, args.lr, args.batch_size, args.clip)
        rows.append(measure(f"DP-SGD target eps {eps:g}", fn, pool_x, pool_y, test_x, test_y, args.refs, spent))
        print_row(rows[-1])
    base = rows[0]["tpr1"]
    print(f"\nnon-private LiRA TPR@1%FPR = {base:.3f}; one third = {base / 3:.3f}")
    for r in rows[1:]:
        verdict = "<= 1/3 (holds)" if r["tpr1"] <= base / 3 else "> 1/3 (does not hold)"
        print(f"  eps {r['eps']:.2f}: TPR@1%FPR {r['tpr1']:.3f} = {r['tpr1'] / max(base, 1e-12):.3f} x non-private "
              f"-> {verdict}; test accuracy {r['test_acc']:.3f} vs {rows[0]['test_acc']:.3f}")


def print_row(r: dict, header: bool = False) -> None:
    if header:
        print(f"{'setting':28s} {'eps spent':>9s} {'test acc':>8s} {'train acc':>9s} {'loss AUC':>8s} "
              f"{'LiRA AUC':>8s} {'TPR@1%FPR':>9s} {'95% CI':>15s} {'seconds':>7s}")
    eps = "inf" if r["eps"] == float("inf") else f"{r['eps']:.3f}"
    lo, hi = r["tpr1_ci"]
    print(f"{r['setting']:28s} {eps:>9s} {r['test_acc']:8.3f} {r['train_acc']:9.3f} {r['loss_auc']:8.3f} "
          f"{r['lira_auc']:8.3f} {r['tpr1']:9.3f} {f'[{lo:.3f}, {hi:.3f}]':>15s} {r['seconds']:7.0f}", flush=True)


if __name__ == "__main__":
    main()
