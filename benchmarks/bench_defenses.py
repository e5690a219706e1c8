"""Preprocessing defenses against the undefended, oblivious and adaptive attacker, at the audit's budgets.

On digits (the cached ``digits-cnn``; layers fitted on the 1,257 training digits, evaluated on the 540 test digits):
PCA projection (Bhagoji et al. 2018; the CNN retrained on projected digits with the zoo recipe), MagNet's
reformer + reconstruction-error detector (Meng & Chen 2017; in front of the unchanged CNN) and TV minimization
(Guo et al. 2018; the CNN retrained on reconstructed digits). On the synthetic tabular task (``adverse.data.tabular``,
20 features in [0, 1], 1,400 train / 600 test): feature selection, accuracy-only (λ = 0, the baseline) against
adversarial (Zhang et al. 2016), an MLP retrained on the selected features. Every row is one call of
``adverse.evaluation.defense_suite.defense_suite`` (seed 0): robust accuracy of the undefended model under PGD,
of the defense against PGD crafted on the undefended model (oblivious), and against the per-sample worst case of
the adaptive attacks (exact gradients and BPDA; EOT for TV; the detector and classifier jointly for MagNet).

Usage: ``python benchmarks/bench_defenses.py --threads 1`` (``--only digits`` / ``--only tabular``,
``--defenses pca magnet``, ``--n 100`` for a quick run).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from adverse.data import digits, tabular
from adverse.evaluation.defense_suite import defense_suite
from adverse.zoo import MLP, pretrained, recipe, train_classifier

EPS = (0.05, 0.1, 0.2, 0.3)
DIGITS = {"pca": "pca:k=20", "magnet": "magnet", "tv": "tv"}
TABULAR = {"fs-accuracy-k5": "feature-selection:k=5,lam=0", "fs-adversarial-k5": "feature-selection:k=5,lam=3",
           "fs-accuracy-k10": "feature-selection:k=10,lam=0", "fs-adversarial-k10": "feature-selection:k=10,lam=3"}


def tabular_recipe(data, seed):
    """The tabular model's training: an MLP 20-64-64-2, Adam, 60 epochs (seeded)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MLP(data.x.shape[1], data.num_classes, (64, 64))
    return train_classifier(model, data, epochs=60, seed=seed)


def row(label: str, r: dict, seconds: float) -> str:
    clean = r["clean_accuracy"]
    cells = [f"{clean['undefended']:.3f} → {clean['defended']:.3f}"]
    cells += [f"{x['undefended']:.3f} / {x['oblivious']:.3f} / **{x['adaptive']:.3f}**" for x in r["rows"]]
    return f"| {label} | " + " | ".join(cells) + f" | {seconds:.0f} s |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n", type=int, default=None, help="test samples (default: all)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--eot", type=int, default=10, help="draws per EOT gradient")
    ap.add_argument("--judge", type=int, default=20, help="draws whose logits judge a randomized defense")
    ap.add_argument("--only", choices=("digits", "tabular"), default=None)
    ap.add_argument("--defenses", nargs="*", default=None, help=f"among {', '.join([*DIGITS, *TABULAR])}")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.machine()} "
          f"{platform.processor() or ''}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; PGD {args.steps} "
          f"steps, EOT {args.eot} draws, judged by {args.judge}; eps {EPS} (L∞)", flush=True)
    header = ("| defense | clean (undefended → defended) | " + " | ".join(f"ε={e} undef. / obliv. / adaptive"
                                                                       for e in EPS) + " | time |")
    print(header)
    print("|" + "---|" * (len(EPS) + 3))
    chosen = set(args.defenses or [*DIGITS, *TABULAR])
    kwargs = {"eps": EPS, "steps": args.steps, "eot_samples": args.eot, "judge_samples": args.judge, "seed": 0}
    if args.only != "tabular":
        model, tr, te = pretrained("digits-cnn"), digits("train"), digits("test")
        n = args.n or len(te)
        for name, spec in DIGITS.items():
            if name in chosen:
                t0 = time.perf_counter()
                r = defense_suite(model, te, layer=spec, train=tr, recipe=recipe("digits-cnn"), n=n, **kwargs)
                print(row(f"digits: {r['layer']['description']}" + (" + retrained CNN" if r["retrained"] else ""),
                          r, time.perf_counter() - t0), flush=True)
                print(f"  verdict: {r['verdict']}", flush=True)
    if args.only != "digits":
        tr, te = tabular("train"), tabular("test")
        model = tabular_recipe(tr, 0)
        n = args.n or len(te)
        for name, spec in TABULAR.items():
            if name in chosen:
                t0 = time.perf_counter()
                r = defense_suite(model, te, layer=spec, train=tr, recipe=tabular_recipe, n=n, **kwargs)
                print(row(f"tabular: {r['layer']['description']} + retrained MLP", r, time.perf_counter() - t0),
                      flush=True)
                print(f"  verdict: {r['verdict']}", flush=True)


if __name__ == "__main__":
    main()
