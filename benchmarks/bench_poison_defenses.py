"""BadNets on digits against the five poisoning defenses: detection quality and what each leaves.

Poisons the digits training set with a 2×2 white BadNets patch (target 0) at ``--rate``, trains a SmallCNN,
then runs activation clustering (on the last hidden layer, as in the paper, and on the convolutional features
``head.1``), spectral signatures, STRIP (test inputs), Neural Cleanse and Fine-Pruning. For the detectors it
prints AUROC, TPR/FPR of the decision and the clean accuracy / ASR of a model retrained without the flagged
samples; for the repairs, the clean accuracy / ASR of the repaired model. The defender holds the first half of
the test split; metrics use the second half.

Usage: ``python benchmarks/bench_poison_defenses.py --threads 1 --rate 0.05``.
"""

from __future__ import annotations

import argparse
import time

import torch
from digits_halves import digits_halves

from adverse.defenses import activation_clustering, fine_pruning, neural_cleanse, spectral_signatures, strip
from adverse.poisoning import backdoor_metrics, badnets, trainer
from adverse.zoo import SmallCNN


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--nc-steps", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tr, _, defender, held = digits_halves()

    train_fn = trainer(SmallCNN, epochs=args.epochs)

    def row(name, metrics, q=None, sec=0.0):
        det = "" if q is None else f"AUROC {q['auroc']:.3f}  TPR {q['tpr']:.2f}  FPR {q['fpr']:.3f}  "
        print(f"{name:<34} {det:<40} clean acc {metrics['clean_accuracy']:.3f}  ASR {metrics['asr']:.3f}"
              f"  ({sec:.0f} s)", flush=True)

    pd = badnets(tr, target=0, rate=args.rate, size=2, seed=0)
    model = train_fn(pd.dataset(), 0)
    print(f"BadNets 2x2, target 0, rate {args.rate}: {pd.indices.numel()} poisons; SmallCNN {args.epochs} epochs; "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    row("no defense", backdoor_metrics(model, pd, held))
    for name, kwargs in [("AC last hidden layer (PCA-10)", {}), ("AC conv features head.1 (PCA-10)",
                                                                  {"layer": "head.1"}),
                         ("AC conv features head.1 (ICA-10)", {"layer": "head.1", "reduce": "ica"})]:
        t0 = time.perf_counter()
        out = activation_clustering(model, pd.dataset(), **kwargs).outcome(train_fn, pd, held)
        row(name, out["after_removal"], out["detection"], time.perf_counter() - t0)
    t0 = time.perf_counter()
    ss = spectral_signatures(model, pd.dataset(), expected_fraction=max(2 * args.rate, 0.05), layer="head.1")
    out = ss.outcome(train_fn, pd, held)
    row(f"SS head.1 (eps {max(2 * args.rate, 0.05):.2f}, 1.5x)", out["after_removal"], out["detection"],
        time.perf_counter() - t0)
    keep = held.y != 0
    x = torch.cat([held.x, pd.apply_trigger(held.x[keep])])
    truth = torch.cat([torch.zeros(len(held), dtype=torch.bool), torch.ones(int(keep.sum()), dtype=torch.bool)])
    t0 = time.perf_counter()
    st = strip(model, x, defender.x, n=32, frr=0.05)
    q = st.evaluate(truth)
    print(f"{'STRIP (N 32, FRR 0.05; test inputs)':<34} AUROC {q['auroc']:.3f}  TPR {q['tpr']:.2f}  "
          f"FPR {q['fpr']:.3f}  ({time.perf_counter() - t0:.0f} s)")
    t0 = time.perf_counter()
    nc = neural_cleanse(model, defender.x, defender.y, steps=args.nc_steps, seed=0)
    print(f"Neural Cleanse: L1 {[round(float(v), 1) for v in nc.l1_norms]}; anomaly index "
          f"{[round(float(v), 1) for v in nc.anomaly_index]}; flagged {nc.flagged.nonzero().flatten().tolist()}")
    if nc.model is not None:
        row("NC unlearning", backdoor_metrics(nc.model, pd, held), sec=time.perf_counter() - t0)
    t0 = time.perf_counter()
    fp = fine_pruning(model, defender.x, defender.y, seed=0)
    row(f"Fine-Pruning ({fp.pruned.numel()} of {fp.activation.numel()} channels)",
        backdoor_metrics(fp.model, pd, held), sec=time.perf_counter() - t0)


if __name__ == "__main__":
    main()
