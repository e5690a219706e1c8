"""Time and success of gradient-matching (Witches' Brew) poisons on the bundled digits.

For each of ``--targets`` test images (drawn at random among those correctly classified by both the attacker's
surrogate and a clean victim; ``--max-confidence`` keeps only those the surrogate gives less than that softmax
probability), crafts poisons with :func:`adverse.poisoning.gradient_matching` toward the surrogate's runner-up
class, retrains a victim (``--arch``: SmallCNN or MLP) from scratch (a different seed from the surrogates) on the
poisoned set and on the random-noise control (same images, same L∞ budget of random sign noise), and prints:

* seconds per target and per poison for crafting, and the ratio of crafting time to one forward+backward pass
  of the surrogate on the poison batch (a Witches' Brew step is one forward, a double backward through the
  parameter gradient, so about 3–4 passes; × steps × restarts);
* the victim's probability of the adversarial class on the target, and the success rate over the targets next
  to the control's.

``--augment k``: the paper's setup — surrogates and victims train with random shifts of up to k pixels
(``trainer(..., augment=k)``) and the poisons are crafted through the same differentiable shifts
(``gradient_matching(..., augment=k)``). ``--retrains m``: the retraining variant (surrogates retrained from
scratch on the current poisons m times while crafting).

Usage: ``python benchmarks/bench_gradient_matching.py --threads 1 --targets 8 [--arch mlp] [--augment 1]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
import torch.nn.functional as F

from adverse.data import digits
from adverse.poisoning import gradient_matching, random_noise_control, retrain, targeted_success, trainer
from adverse.zoo import MLP, SmallCNN

ARCHS = {"cnn": SmallCNN, "mlp": lambda: MLP(64, 10)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--targets", type=int, default=8)
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--eps", type=float, default=0.25)
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--restarts", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--ensemble", type=int, default=1, help="surrogates (seeds seed, seed+2, seed+3, ...)")
    ap.add_argument("--arch", choices=sorted(ARCHS), default="cnn", help="surrogates' and victim's architecture")
    ap.add_argument("--augment", type=int, default=0, help="random-shift augmentation (pixels) in training and crafting")
    ap.add_argument("--retrains", type=int, default=0, help="surrogate retrainings on the poisoned set while crafting")
    ap.add_argument("--max-confidence", type=float, default=1.0,
                    help="only targets the surrogate classifies with softmax probability below this")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--victim-seed", type=int, default=None,
                    help="the victim's training seed (default seed+1; = seed retrains the surrogate exactly)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores; torch "
          f"{torch.__version__}; torch.get_num_threads() = {torch.get_num_threads()}; load average at start "
          f"{os.getloadavg()[0]:.2f}")
    tr, te = digits("train"), digits("test")

    train_fn = trainer(ARCHS[args.arch], epochs=args.epochs, augment=args.augment)

    victim_seed = args.seed + 1 if args.victim_seed is None else args.victim_seed
    surrogate, victim_clean = train_fn(tr, args.seed), train_fn(tr, victim_seed)
    ensemble = [surrogate] + [train_fn(tr, args.seed + 1 + k) for k in range(1, args.ensemble)]
    with torch.no_grad():
        logits = surrogate(te.x)
        ok = (logits.argmax(1) == te.y) & (victim_clean(te.x).argmax(1) == te.y)
        ok &= torch.softmax(logits, 1).max(1).values < args.max_confidence
    order = torch.randperm(len(te), generator=torch.Generator().manual_seed(args.seed))
    targets = order[ok[order]][: args.targets].tolist()
    n_poison = max(round(args.rate * len(tr)), 1)
    xb, yb = tr.x[:n_poison], tr.y[:n_poison]
    fb = []
    for _ in range(20):
        t0 = time.perf_counter()
        surrogate.zero_grad(set_to_none=True)
        F.cross_entropy(surrogate(xb), yb).backward()
        fb.append(time.perf_counter() - t0)
    surrogate.zero_grad(set_to_none=True)
    fb_s = sorted(fb)[len(fb) // 2]
    print(f"data: digits, {len(tr)} training images; {n_poison} poisons ({args.rate:.0%}), eps {args.eps}, "
          f"steps {args.steps}, restarts {args.restarts}, ensemble {args.ensemble}, retrains {args.retrains}, "
          f"augment {args.augment}; {args.arch} {args.epochs} epochs, victim seed {victim_seed}; "
          f"{int(ok.sum())} eligible targets (max confidence {args.max_confidence})")
    print(f"one forward+backward on the {n_poison}-image poison batch: {fb_s * 1e3:.2f} ms (median of 20)")
    print(f"{'target':>6} {'label':>5} {'adv':>3} {'align':>6} {'craft s':>8} {'s/poison':>8} {'ratio':>7} "
          f"{'success':>7} {'control':>7} {'p_adv':>6} {'p_ctl':>6}")
    crafted, hits, ctrl = [], [], []
    for i in targets:
        z = logits[i].clone()
        z[te.y[i]] = -float("inf")
        adv = int(z.argmax())
        pd = gradient_matching(ensemble, tr, te.x[i], adv_label=adv, y_target=int(te.y[i]), rate=args.rate,
                               eps=args.eps, steps=args.steps, restarts=args.restarts, augment=args.augment,
                               retrain_fn=train_fn if args.retrains else None, retrains=args.retrains,
                               seed=args.seed + i)
        sec = pd.params["seconds"]
        victim = retrain(train_fn, pd, seed=victim_seed)
        hit = bool(targeted_success(victim, pd))
        control = random_noise_control(pd, seed=args.seed + i)
        victim_ctl = retrain(train_fn, control, seed=victim_seed)
        miss = bool(targeted_success(victim_ctl, control))
        with torch.no_grad():
            p_adv, p_ctl = (float(torch.softmax(m(te.x[i : i + 1]), 1)[0, adv]) for m in (victim, victim_ctl))
        crafted.append(sec)
        hits.append(hit)
        ctrl.append(miss)
        print(f"{i:>6} {int(te.y[i]):>5} {adv:>3} {pd.params['alignment']:>6.3f} {sec:>8.2f} {sec / n_poison:>8.3f} "
              f"{sec / fb_s:>7.0f} {hit!s:>7} {miss!s:>7} {p_adv:>6.3f} {p_ctl:>6.3f}", flush=True)
    mean = sum(crafted) / len(crafted)
    print(f"crafting: {mean:.2f} s per target, {mean / n_poison:.3f} s per poison, {mean / fb_s:.0f} × one "
          f"forward+backward ({mean / fb_s / (args.steps * args.restarts):.2f} per step)")
    print(f"success: {sum(hits)}/{len(hits)} targets; random-noise control: {sum(ctrl)}/{len(ctrl)}")


if __name__ == "__main__":
    main()
