"""Adversarial training on the digits CNN: cost per epoch against standard training, robustness under APGD, and the
regularizers compared on the same task.

Modes
-----
``--cost`` (default)  one epoch of each method on the 1,257 training digits (SmallCNN, batch 64), interleaved with a
                      standard epoch, ``--repeats`` rounds, medians. Columns: ``fw/bw`` the forward and backward passes
                      per sample and step counted by the trainer; ``bound`` = (fw + bw) / 2, the cost in standard
                      steps if every pass cost as much as a training pass (input-only backward passes are cheaper,
                      so the measured ratio should stay below it); ``ratio`` = epoch time / standard epoch time.
``--robustness``      full-size PGD-AT and TRADES (``--epochs``, K = ``--steps``), training budget ``--train-eps``
                      (default 0.2), early stopping on PGD-10 robust accuracy (at that budget) of 200 held-out
                      training digits, then APGD-CE (100 steps) and APGD-DLR on the 540 test
                      digits at L∞ 0.2; the undefended ``digits-cnn`` for reference.
``--preprocessing``   the undefended CNN behind each preprocessor: naive (exact) gradients vs BPDA, and single-draw
                      vs EOT gradients for the randomized ones.
``--detection``       each detector's test FPR, AUROC against oblivious PGD and undetected-success rate against
                      oblivious PGD and against the union with the adaptive attacks, L∞ 0.2.
``--regularization``  standard training, weight decay, dropout, input-gradient regularization and the Lipschitz
                      margin (``--reg-epochs`` each), evaluated by clean accuracy and PGD-20 at L∞ 0.1 / 0.2 and
                      L2 0.5 (540 test digits).

Usage::

    python benchmarks/bench_adversarial_training.py --cost --threads 1
    python benchmarks/bench_adversarial_training.py --robustness --threads 1
    python benchmarks/bench_adversarial_training.py --regularization --threads 1
    python benchmarks/bench_adversarial_training.py --preprocessing --detection --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from bench_pgd import cpu_model  # this folder is on sys.path when the script runs
from torch import nn

from adverse.data import Dataset, digits
from adverse.defenses import adversarial_training
from adverse.defenses.regularization import certified_radius, regularized_training
from adverse.evasion import apgd, pgd
from adverse.zoo import SmallCNN, pretrained


def fresh(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    m = SmallCNN()
    if dropout:
        m.head = nn.Sequential(*list(m.head)[:3], nn.Dropout(dropout), *list(m.head)[3:])
    return m


COST = [  # (label, method, steps)
    ("pgd K=3", "pgd", 3), ("pgd K=7", "pgd", 7), ("pgd K=10", "pgd", 10), ("trades K=10", "trades", 10),
    ("mart K=10", "mart", 10), ("fgsm-rs", "fgsm-rs", None), ("n-fgsm", "n-fgsm", None),
]


def bench_cost(repeats: int) -> None:
    train = digits("train")
    print(f"one epoch on {len(train)} digits, SmallCNN, batch 64, Adam; {repeats} rounds, medians; standard epoch "
          "measured before each method in every round")
    print(f"{'method':14s} {'fw/bw':>9s} {'bound':>6s} {'std s':>7s} {'adv s':>7s} {'ratio':>6s} {'cpu ratio':>9s}")
    for label, method, steps in COST:
        std_t, adv_t, std_c, adv_c, passes = [], [], [], [], None
        for r in range(repeats):
            for kind in ("standard", "adv"):
                m = fresh(r)
                t0, c0 = time.perf_counter(), time.process_time()
                if kind == "standard":
                    regularized_training(m, train, "standard", epochs=1, seed=r)
                    std_t.append(time.perf_counter() - t0)
                    std_c.append(time.process_time() - c0)
                else:
                    res = adversarial_training(m, train, method, eps=0.2, steps=steps, epochs=1, monitor=False, seed=r)
                    adv_t.append(time.perf_counter() - t0)
                    adv_c.append(time.process_time() - c0)
                    passes = res.passes_per_step
        s, a = statistics.median(std_t), statistics.median(adv_t)
        ratio_c = statistics.median(adv_c) / statistics.median(std_c)
        fw, bw = passes
        print(f"{label:14s} {fw:4.0f}/{bw:<4.0f} {(fw + bw) / 2:6.1f} {s:7.2f} {a:7.2f} {a / s:6.2f} {ratio_c:9.2f}",
              flush=True)


def evaluate(model: nn.Module, test: Dataset) -> dict[str, float]:
    ce = apgd(model, test.x, test.y, eps=0.2, loss="ce", steps=100, seed=0)
    dlr = apgd(model, test.x, test.y, eps=0.2, loss="dlr", steps=100, seed=0)
    worst = 1.0 - float((ce.success | dlr.success).float().mean())
    return {"clean": ce.clean_accuracy, "apgd-ce": ce.robust_accuracy, "apgd-dlr": dlr.robust_accuracy,
            "worst": worst}


def bench_robustness(epochs: int, steps: int, methods: list[str], train_eps: float) -> None:
    full, test = digits("train"), digits("test")
    perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(0))
    val_idx, tr_idx = perm[:200], perm[200:]
    train = Dataset(full.x[tr_idx], full.y[tr_idx], "digits", 10)
    val = Dataset(full.x[val_idx], full.y[val_idx], "digits", 10)
    print(f"train {len(train)} / validation {len(val)} / test {len(test)} digits; L∞ eps 0.2; APGD 100 steps, 1 restart")
    row = evaluate(pretrained("digits-cnn"), test)
    print(f"{'undefended digits-cnn':40s} " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    for method in methods:
        m = fresh(0)
        t0 = time.perf_counter()
        res = adversarial_training(m, train, method, eps=train_eps, steps=steps, epochs=epochs, validation=val,
                                   val_steps=10, seed=0)
        secs = time.perf_counter() - t0
        row = evaluate(m, test)
        last = res.history[-1]["val_robust_accuracy"]
        print(f"{method + f' ε={train_eps:g} K={steps}, {epochs} ep, best ep {res.best_epoch}':40s} "
              + "  ".join(f"{k} {v:.3f}" for k, v in row.items())
              + f"  (val PGD-10 best {max(h['val_robust_accuracy'] for h in res.history):.3f}, last {last:.3f};"
                f" {secs:.0f} s)", flush=True)


def bench_regularization(epochs: int) -> None:
    train, test = digits("train"), digits("test")
    runs = [
        ("standard", {}, 0.0),
        ("weight decay 5e-4", {"weight_decay": 5e-4}, 0.0),
        ("dropout 0.5", {}, 0.5),
        ("input-gradient λ=0.01 (L1)", {"method": "input-gradient", "lam": 0.01, "norm": "linf"}, 0.0),
        ("input-gradient λ=0.1 (L1)", {"method": "input-gradient", "lam": 0.1, "norm": "linf"}, 0.0),
        ("Lipschitz margin ε=0.1 (L2)", {"method": "lipschitz-margin", "eps": 0.1, "norm": "l2"}, 0.0),
    ]
    print(f"SmallCNN, {epochs} epochs, Adam 1e-3, batch 64; PGD-20 (1 restart) on {len(test)} test digits")
    print(f"{'training':30s} {'clean':>6s} {'L∞0.1':>6s} {'L∞0.2':>6s} {'L2 0.5':>6s} {'cert L2 0.1':>11s} {'s':>5s}")
    for label, kw, drop in runs:
        kw = dict(kw)
        method = kw.pop("method", "standard")
        m = fresh(0, dropout=drop)
        t0 = time.perf_counter()
        res = regularized_training(m, train, method, epochs=epochs, seed=0, **kw)
        secs = time.perf_counter() - t0
        accs = [pgd(m, test.x, test.y, eps=e, norm=n, steps=20, seed=0) for e, n in ((0.1, "linf"), (0.2, "linf"),
                                                                                      (0.5, "l2"))]
        cert = "-"
        if method == "lipschitz-margin":
            with torch.no_grad():
                ok = m(test.x).argmax(1) == test.y
            cert = f"{float(((certified_radius(m, test.x, res.params['bound']) >= 0.1) & ok).float().mean()):.3f}"
        print(f"{label:30s} {accs[0].clean_accuracy:6.3f} " + " ".join(f"{a.robust_accuracy:6.3f}" for a in accs)
              + f" {cert:>11s} {secs:5.0f}", flush=True)


def bench_preprocessing() -> None:
    from adverse.defenses import JPEG, BitDepth, GaussianNoise, MedianFilter, RandomResizePad
    from adverse.evasion import EOT

    test = digits("test")
    x, y = test.x, test.y
    base = pretrained("digits-cnn")
    print(f"undefended digits-cnn behind each preprocessor; PGD-50 (1 restart) on {len(test)} test digits")
    print(f"{'defense':22s} {'gradient':8s} {'clean':>6s} {'L∞0.1':>6s} {'L∞0.2':>6s} {'L∞1.0':>6s}")
    for name, pre in [("1-bit depth", BitDepth(1, "exact")), ("1-bit depth", BitDepth(1, "bpda")),
                      ("JPEG q75 (Pillow)", JPEG(75, "bpda")), ("3×3 median", MedianFilter(3, "exact")),
                      ("3×3 median", MedianFilter(3, "bpda"))]:
        m = nn.Sequential(pre, base).eval()
        rs = [pgd(m, x, y, eps=e, steps=50, seed=0) for e in (0.1, 0.2, 1.0)]
        print(f"{name:22s} {pre.gradient:8s} {rs[0].clean_accuracy:6.3f} "
              + " ".join(f"{r.robust_accuracy:6.3f}" for r in rs), flush=True)
    print("randomized: attacks judged by the expected-logit classifier EOT(model, 40); PGD-20 at L∞ 0.1")
    for name, pre in [("Gaussian noise σ=0.3", GaussianNoise(0.3, seed=0)), ("resize+pad ≥0.6", RandomResizePad(0.6, seed=0))]:
        m = nn.Sequential(pre, base).eval()
        judge = EOT(m, 40)
        row = []
        for label, target in (("one draw", m), ("EOT(10)", EOT(m, 10))):
            xa = pgd(target, x, y, eps=0.1, steps=20, seed=0).x_adv
            with torch.no_grad():
                row.append(f"{label} {float((judge(xa).argmax(1) == y).float().mean()):.3f}")
        with torch.no_grad():
            clean = float((judge(x).argmax(1) == y).float().mean())
        print(f"{name:22s} clean {clean:.3f}  robust: " + ", ".join(row), flush=True)


def bench_detection() -> None:
    from adverse.defenses import LID, FeatureSqueezing, Mahalanobis
    from adverse.defenses.detection import attack_detector, evaluate_detector

    train, test = digits("train"), digits("test")
    model = pretrained("digits-cnn")
    x, y = test.x[:270], test.y[:270]
    print(f"undefended digits-cnn; detectors fit on 600 training digits (half held out for a 5 % FPR threshold); "
          f"{len(x)} test digits; L∞ eps 0.2, PGD-50; adaptive weights 0.3, 1, 3")
    print(f"{'detector':18s} {'test FPR':>8s} {'AUROC obl.':>10s} {'undet. obl.':>11s} {'undet. union':>12s}")
    for det in (FeatureSqueezing(model), Mahalanobis(model), LID(model)):
        det.fit(train.x[:600], train.y[:600])
        rep = evaluate_detector(det, model, x, y, attack_detector(det, model, x, y, eps=0.2, steps=50, seed=0))
        o = rep["attacks"]["oblivious"]
        print(f"{type(det).__name__:18s} {rep['test_fpr']:8.3f} {o['auroc']:10.3f} {o['undetected_success']:11.3f} "
              f"{rep['union_undetected_success']:12.3f}   (calibration FPR {det.realised_fpr_:.3f})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cost", action="store_true")
    ap.add_argument("--robustness", action="store_true")
    ap.add_argument("--regularization", action="store_true")
    ap.add_argument("--preprocessing", action="store_true")
    ap.add_argument("--detection", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--reg-epochs", type=int, default=15)
    ap.add_argument("--methods", default="pgd,trades", help="--robustness: comma-separated methods")
    ap.add_argument("--train-eps", type=float, default=0.2, help="--robustness: the training budget (tests at 0.2)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores; torch {torch.__version__}; "
          f"torch.get_num_threads() = {torch.get_num_threads()}; load average {os.getloadavg()[0]:.2f}")
    t0 = time.perf_counter()
    if a.robustness:
        bench_robustness(a.epochs, a.steps, a.methods.split(","), a.train_eps)
    if a.regularization:
        bench_regularization(a.reg_epochs)
    if a.preprocessing:
        bench_preprocessing()
    if a.detection:
        bench_detection()
    if a.cost or not (a.robustness or a.regularization or a.preprocessing or a.detection):
        bench_cost(a.repeats)
    print(f"total {time.perf_counter() - t0:.0f} s; load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
