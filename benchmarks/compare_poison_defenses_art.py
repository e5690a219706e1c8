"""Activation clustering and spectral signatures, adverse against ART, on the same BadNets-poisoned digits CNNs.

For each training seed and poison rate: BadNets 2×2 white patch (target 0) on the digits training set, a SmallCNN
trained on it (Adam, ``--epochs``), then each detector on the convolutional features (the input of ``head.1``; ART
is given a feature extractor whose last layer is exactly that representation, so both read the same numbers).
Printed per row: AUROC and TPR at 5 % FPR of the per-sample score, and TPR/FPR of the detector's own decision.
ART's activation clustering returns only a decision (clean / poison), so its AUROC is that of a 0/1 score; every
one of its cluster analyses is run and the best row is reported beside its default. With ``--retrain`` each
decision is applied (flagged samples removed), the model retrained with the same recipe and seed, and clean
accuracy / ASR measured on the digits test split; Fine-Pruning (adverse only; ART has no Fine-Pruning) repairs the
poisoned model with the first half of the test split (its first two thirds rank the channels and fine-tune, the last
third is the held-out validation set of the stopping rule) and is measured on the second half; a sweep that prunes
every channel in the same order (no accuracy budget) says how many must go before the ASR falls below 0.5.

ART is imported only here and only when installed (it is not a dependency of adverse). Usage:
``python benchmarks/compare_poison_defenses_art.py --threads 1 --seeds 0 1 2 --rates 0.01 0.05 0.1 0.2 --retrain``
(``--no-art`` runs adverse alone).
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch
from digits_halves import digits_halves
from torch import nn

from adverse.data import Dataset
from adverse.defenses import activation_clustering, fine_pruning, spectral_signatures
from adverse.defenses.poison_detection import prune_by_activation
from adverse.poisoning import backdoor_metrics, badnets, detection_quality, trainer
from adverse.zoo import SmallCNN

ART_ANALYSES = [("PCA", "smaller"), ("PCA", "relative-size"), ("PCA", "silhouette-scores"), ("PCA", "distance"),
                ("FastICA", "smaller"), ("FastICA", "relative-size")]


def label_share(rate: float, k: int = 10) -> float:
    """ε for spectral signatures: the poisons' share of the target label when a share ``rate`` of the data is
    relabelled to one of ``k`` balanced labels, capped so that 1.5 ε < 1."""
    return min(rate * k / (1 + rate * k), 0.6)


def art_detectors(model: nn.Module, data: Dataset, eps: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """ART's ActivationDefence (every analysis) and SpectralSignatureDefense on the input of ``head.1``:
    name -> (score, flagged)."""
    from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense
    from art.estimators.classification import PyTorchClassifier

    extractor = nn.Sequential(model.features, nn.Flatten()).eval()
    clf = PyTorchClassifier(extractor, loss=nn.CrossEntropyLoss(), input_shape=tuple(data.x.shape[1:]),
                            nb_classes=data.num_classes, clip_values=data.bounds)
    x = data.x.numpy()
    y = np.eye(data.num_classes)[data.y.numpy()]
    out = {}
    for reduce, analysis in ART_ANALYSES:
        np.random.seed(0)  # ART's MiniBatchKMeans and FastICA draw from the global state
        ac = ActivationDefence(clf, x, y)
        try:
            _, clean = ac.detect_poison(nb_clusters=2, nb_dims=10, reduce=reduce, cluster_analysis=analysis)
        except ValueError as e:  # ART 1.20.1's relative-size analysis fails on numpy 2 (`in` on a tuple of arrays)
            print(f"ART AC {reduce} {analysis}: {type(e).__name__}: {e}")
            continue
        flagged = np.asarray(clean) == 0
        out[f"ART AC {reduce} {analysis}"] = (flagged.astype(float), flagged)
    ss = SpectralSignatureDefense(clf, x, y, expected_pp_poison=eps, eps_multiplier=1.5, batch_size=128)
    _, clean = ss.detect_poison()
    feats = clf.get_activations(x, layer=len(clf.layer_names) - 1, batch_size=128).reshape(len(x), -1)
    score = np.zeros(len(x))
    for c in range(data.num_classes):  # ART's own per-class outlier score, for the ranking
        rows = np.flatnonzero(data.y.numpy() == c)
        score[rows] = SpectralSignatureDefense.spectral_signature_scores(feats[rows])[:, 0]
    out["ART SS"] = (score, np.asarray(clean) == 0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rates", type=float, nargs="+", default=[0.01, 0.05, 0.1, 0.2])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--retrain", action="store_true", help="retrain without the flagged samples (ASR, clean acc)")
    ap.add_argument("--no-art", action="store_true")
    ap.add_argument("--json", help="also write every row to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tr, te, defender, held = digits_halves()
    half = len(defender)
    train_fn = trainer(SmallCNN, epochs=args.epochs)
    if not args.no_art:
        import art

        print(f"ART {art.__version__}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); SmallCNN {args.epochs} epochs; "
          "representation: input of head.1 (convolutional features)")
    print(f"{'rate':>5} {'seed':>4} {'method':<34} {'AUROC':>6} {'TPR@5%':>6} {'TPR':>5} {'FPR':>5}  "
          f"{'removed':>7} {'clean acc':>9} {'ASR':>5}  s")
    rows = []
    for rate in args.rates:
        for seed in args.seeds:
            pd = badnets(tr, target=0, rate=rate, size=2, seed=seed)
            data = pd.dataset()
            model = train_fn(data, seed)
            before = backdoor_metrics(model, pd, te)
            print(f"{rate:5.2f} {seed:4d} {'(no defense)':<34} {'':>6} {'':>6} {'':>5} {'':>5}  {0:7d} "
                  f"{before['clean_accuracy']:9.3f} {before['asr']:5.3f}", flush=True)
            rows.append({"rate": rate, "seed": seed, "method": "none", "clean_accuracy": before["clean_accuracy"],
                         "asr": before["asr"]})
            eps = label_share(rate)
            found: dict[str, tuple] = {}
            for name, fn, kwargs in [
                ("adverse AC relative-size", activation_clustering, {"seed": seed}),
                ("adverse AC exclusionary", activation_clustering,
                 {"analysis": "exclusionary", "train_fn": train_fn, "seed": seed}),
                (f"adverse SS (eps {eps:.2f})", spectral_signatures, {"expected_fraction": eps}),
            ]:
                t0 = time.perf_counter()
                r = fn(model, data, layer="head.1", **kwargs)
                found[name] = (r.scores.numpy(), r.flagged.numpy(), time.perf_counter() - t0)
            if not args.no_art:
                t0 = time.perf_counter()
                for name, (score, flagged) in art_detectors(model, data, eps).items():
                    found[name] = (score, flagged, time.perf_counter() - t0)
                    t0 = time.perf_counter()
            for name, (score, flagged, sec) in found.items():
                q = detection_quality(torch.as_tensor(score), pd.is_poison, fpr=0.05,
                                      flagged=torch.as_tensor(flagged))
                row = {"rate": rate, "seed": seed, "method": name, "auroc": q["auroc"],
                       "tpr_at_5": q["tpr_at_fpr_0.05"], "tpr": q["tpr"], "fpr": q["fpr"],
                       "removed": int(flagged.sum()), "seconds": sec}
                after = ""
                if args.retrain and not (name.startswith("ART AC") and "relative-size" not in name
                                         and "smaller" not in name):
                    m = train_fn(pd.dataset(torch.as_tensor(~flagged)), seed)
                    b = backdoor_metrics(m, pd, te)
                    row.update(clean_accuracy=b["clean_accuracy"], asr=b["asr"])
                    after = f"{b['clean_accuracy']:9.3f} {b['asr']:5.3f}"
                rows.append(row)
                print(f"{rate:5.2f} {seed:4d} {name:<34} {q['auroc']:6.3f} {q['tpr_at_fpr_0.05']:6.2f} "
                      f"{q['tpr']:5.2f} {q['fpr']:5.3f}  {int(flagged.sum()):7d} {after:>15}  {sec:.1f}", flush=True)
            if args.retrain:
                t0 = time.perf_counter()
                tune = 2 * half // 3
                fp = fine_pruning(model, defender.x[:tune], defender.y[:tune], seed=seed,
                                  x_val=defender.x[tune:], y_val=defender.y[tune:],
                                  monitor=lambda m, pd=pd: {"asr": backdoor_metrics(m, pd, held)["asr"]})
                b = backdoor_metrics(fp.model, pd, held)
                rows.append({"rate": rate, "seed": seed, "method": "adverse Fine-Pruning",
                             "pruned": int(fp.pruned.numel()), "clean_accuracy": b["clean_accuracy"],
                             "asr": b["asr"], "accuracy": fp.accuracy, "notes": fp.notes})
                at_prune = next(h for h in fp.history if h["stage"] == "pruned" and h["pruned"] == fp.pruned.numel())
                print(f"{rate:5.2f} {seed:4d} {'adverse Fine-Pruning':<34} pruned {fp.pruned.numel()} of "
                      f"{fp.activation.numel()}, ASR then {at_prune['asr']:.3f}; after fine-tuning: "
                      f"{b['clean_accuracy']:9.3f} {b['asr']:5.3f}  {time.perf_counter() - t0:.1f}", flush=True)
                print(f"{'':>11}notes: {fp.notes}")
                swept = copy.deepcopy(model).eval()  # every channel, same order, no accuracy budget
                conv = [m for m in swept.modules() if isinstance(m, nn.Conv2d)][-1]
                *_, curve = prune_by_activation(swept, conv, defender.x[:tune], defender.y[:tune],
                                                max_accuracy_drop=1.0, max_fraction=1.0,
                                                monitor=lambda m, pd=pd: backdoor_metrics(m, pd, held))
                low = next((h for h in curve if h["asr"] < 0.5), None)
                rows[-1].update(sweep=[{k: h[k] for k in ("pruned", "asr")} | {"held_clean": h["clean_accuracy"]}
                                       for h in curve])
                print(f"{'':>11}sweep: ASR < 0.5 first with "
                      + (f"{low['pruned']} of {conv.out_channels} channels pruned, clean acc (held-out) then "
                         f"{low['clean_accuracy']:.3f}" if low else f"no number of the {conv.out_channels} channels")
                      + "; ASR at 25/50/75 % pruned: "
                      + "/".join(f"{curve[conv.out_channels * q // 4]['asr']:.2f}" for q in (1, 2, 3)), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=float)


if __name__ == "__main__":
    main()
