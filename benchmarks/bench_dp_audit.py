"""DP audit (adverse.privacy.audit_dp): soundness and power on mechanisms with known ε, and DP-SGD on digits.

1. Randomized response on each canary's inclusion bit (pure ε-DP, exact ε): the one-run bound over many seeds
   never exceeds ε more often than 1 − confidence allows, and its median reaches a fraction of ε.
2. The Gaussian mechanism on each inclusion bit (sensitivity 1, noise σ; its exact (ε, δ) curve from Balle &
   Wang 2018): the one-run bound at δ > 0 and the Clopper–Pearson bound (T trials each side) against ε(δ).
3. DP-SGD through Opacus on digits (MLP 64-128-64-10, SGD lr 0.5, batch 64, 30 epochs, ε ∈ {1, 4, 8},
   δ = 1e-5) against the same SGD recipe without clipping or noise and the zoo's digits-mlp: the one-run bound
   with 500 random canaries beside the accountant's ε; a Clopper–Pearson audit of the non-DP and ε = 8
   recipes; time per audit.
4. White-box gradient ("Dirac") canaries on the same DP-SGD recipes (``audit_dp(..., canary="gradient")``,
   Steinke et al. 2023 §6): the one-run bound with its defaults (m = 5000 coordinates, k₊ = k₋ = 100) beside the
   input-canary bound of section 3 on the same seeds and the accountant's ε; time per audit.

Run (one thread):  python benchmarks/bench_dp_audit.py [--quick] [--gradient (section 4 only)]
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import adverse as adv
from adverse.data import Dataset, digits
from adverse.defenses.dp import DPRecipe
from adverse.privacy import audit_dp, eps_lower_bound_clopper_pearson, eps_lower_bound_one_run


def one_run(m: int, r: int, v: int, **kw) -> float:
    """:func:`eps_lower_bound_one_run` with the counts in paper order (m canaries, r guesses, v correct)."""
    return eps_lower_bound_one_run(m=m, r=r, v=v, **kw)


def cp_bound(fp: int, negatives: int, fn: int, positives: int, **kw) -> float:
    """:func:`eps_lower_bound_clopper_pearson` with the counts positionally."""
    return eps_lower_bound_clopper_pearson(false_positives=fp, negatives=negatives, false_negatives=fn,
                                           positives=positives, **kw)


def gaussian_epsilon(sigma: float, delta: float) -> float:
    """The exact ε of the Gaussian mechanism with sensitivity 1 and noise σ at δ (Balle & Wang 2018, Thm 8):
    δ(ε) = Φ(1/(2σ) − εσ) − e^ε Φ(−1/(2σ) − εσ), solved for ε by bisection."""
    from scipy.stats import norm

    def d(eps: float) -> float:
        return norm.cdf(0.5 / sigma - eps * sigma) - math.exp(eps) * norm.cdf(-0.5 / sigma - eps * sigma)

    lo, hi = 0.0, 1.0
    while d(hi) > delta:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if d(mid) > delta else (lo, mid)
    return hi


def guesses(scores: np.ndarray, s: np.ndarray, k_plus: int, k_minus: int, rng: np.random.Generator) -> int:
    order = np.lexsort((rng.random(len(scores)), -scores))
    return int(s[order[:k_plus]].sum() + (~s[order[len(s) - k_minus:]]).sum())


def randomized_response(seeds: int, confidence: float) -> None:
    print(f"\n## 1. Randomized response, one-run bound (δ = 0), {seeds} seeds, confidence {confidence}")
    print("| true ε | m (all guessed) | max ε_LB | runs with ε_LB > ε | allowed (1 − c) | median ε_LB | median / ε |")
    print("|---|---|---|---|---|---|---|")
    for eps in (1.0, 2.0, 4.0):
        for m in (1000, 10000):
            rng = np.random.default_rng(0)
            q = 1 / (1 + math.exp(-eps))
            out = []
            for _ in range(seeds):
                s = rng.random(m) < 0.5
                y = np.where(rng.random(m) < q, s, ~s).astype(float)  # RR of the inclusion bit
                v = guesses(y, s, m // 2, m - m // 2, rng)
                out.append(one_run(m, m, v, confidence=confidence))
            out = np.array(out)
            print(f"| {eps:g} | {m} | {out.max():.3f} | {(out > eps).sum()} | {(1 - confidence) * seeds:.1f} | "
                  f"{np.median(out):.3f} | {np.median(out) / eps:.2f} |", flush=True)


def gaussian(seeds: int, confidence: float) -> None:
    delta = 1e-5
    print(f"\n## 2. Gaussian mechanism (sensitivity 1), δ = {delta:g}, {seeds} seeds, confidence {confidence}")
    print("| σ | true ε(δ) | method | canaries / trials | max ε_LB | runs > ε | median ε_LB | median / ε |")
    print("|---|---|---|---|---|---|---|---|")
    for sigma in (0.25, 0.5, 1.0):
        eps = gaussian_epsilon(sigma, delta)
        rng = np.random.default_rng(1)
        m, k = 10000, 500
        one = []
        for _ in range(seeds):
            s = rng.random(m) < 0.5
            y = s + sigma * rng.standard_normal(m)
            v = guesses(y, s, k, k, rng)
            one.append(one_run(m, 2 * k, v, confidence=confidence, delta=delta))
        one = np.array(one)
        print(f"| {sigma:g} | {eps:.3f} | one-run, k₊ = k₋ = {k} | {m} | {one.max():.3f} | {(one > eps).sum()} | "
              f"{np.median(one):.3f} | {np.median(one) / eps:.2f} |", flush=True)
        t = 1000
        cp = []
        for _ in range(seeds):
            out_s = sigma * rng.standard_normal(2 * t)
            in_s = 1 + sigma * rng.standard_normal(2 * t)
            # threshold picked on the first t trials of each side, counted on the other t
            cand = np.sort(np.concatenate([out_s[:t], in_s[:t]]))
            best, thr = -1.0, 0.5
            for c in cand[:: max(1, len(cand) // 200)]:
                b = cp_bound(int((out_s[:t] >= c).sum()), t, int((in_s[:t] < c).sum()), t,
                                                    confidence=confidence, delta=delta)
                if b > best:
                    best, thr = b, c
            cp.append(cp_bound(int((out_s[t:] >= thr).sum()), t, int((in_s[t:] < thr).sum()),
                                                      t, confidence=confidence, delta=delta))
        cp = np.array(cp)
        print(f"| {sigma:g} | {eps:.3f} | Clopper–Pearson | {t} + {t} | {cp.max():.3f} | {(cp > eps).sum()} | "
              f"{np.median(cp):.3f} | {np.median(cp) / eps:.2f} |", flush=True)


class SGDRecipe:
    """DPRecipe's training (same MLP, SGD, lr, epochs, batch size) without clipping or noise."""

    epochs, lr, batch_size = 30, 0.5, 64

    def __call__(self, data: Dataset, seed: int) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = adv.zoo.MLP(64, 10)
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.SGD(model.parameters(), lr=self.lr)
        model.train()
        for _ in range(self.epochs):
            order = torch.randperm(len(data), generator=g)
            for i in range(0, len(data), self.batch_size):
                b = order[i:i + self.batch_size]
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(data.x[b]), data.y[b]).backward()
                opt.step()
        return model.eval()


def dpsgd(seeds: int, confidence: float, trainings: int) -> None:
    tr = digits("train")
    print(f"\n## 3. DP-SGD on digits (train split, {len(tr)} records), one-run: 500 random canaries, "
          f"k₊ = k₋ = 62, δ = claimed δ, confidence {confidence}")
    print("| recipe | claimed ε (accountant) | ε_LB per seed | max ε_LB | correct / guesses (seed 0) | s / audit |")
    print("|---|---|---|---|---|---|")
    recipes = [("SGD, no DP (same MLP, lr, epochs)", SGDRecipe()), ("zoo digits-mlp (Adam, 40 epochs)",
               adv.zoo.recipe("digits-mlp"))]
    recipes += [(f"DP-SGD ε = {e:g}", DPRecipe(e, 1e-5, epochs=30)) for e in (1.0, 4.0, 8.0)]
    for name, rec in recipes:
        rs = [audit_dp(rec, tr, confidence=confidence, seed=s) for s in range(seeds)]
        lbs = [r.epsilon_lower for r in rs]
        claim = "—" if rs[0].claimed_epsilon is None else f"{rs[0].claimed_epsilon:.3f} (δ = {rs[0].delta:g})"
        print(f"| {name} | {claim} | {', '.join(f'{x:.2f}' for x in lbs)} | {max(lbs):.2f} | "
              f"{rs[0].correct}/{rs[0].guesses} | {np.mean([r.seconds for r in rs]):.1f} |", flush=True)
    print(f"\n### Clopper–Pearson (one random canary, {trainings} trainings each side, threshold on the first half)")
    print("| recipe | claimed ε | ε_LB | FP / negatives | FN / positives | s / audit |")
    print("|---|---|---|---|---|---|")
    for name, rec in [("SGD, no DP", SGDRecipe()), ("DP-SGD ε = 8", DPRecipe(8.0, 1e-5, epochs=30))]:
        r = audit_dp(rec, tr, method="clopper-pearson", trainings=trainings, confidence=confidence, seed=0)
        d = r.details
        claim = "—" if r.claimed_epsilon is None else f"{r.claimed_epsilon:.3f}"
        print(f"| {name} | {claim} | {r.epsilon_lower:.3f} | {d['false_positives']}/{d['negatives']} | "
              f"{d['false_negatives']}/{d['positives']} | {r.seconds:.1f} |", flush=True)


def gradient(seeds: int, confidence: float) -> None:
    tr = digits("train")
    print(f"\n## 4. DP-SGD on digits, one-run with white-box gradient canaries (defaults: m = 5000 of the MLP's "
          f"17226 coordinates, k₊ = k₋ = 100) vs 500 random input canaries (k₊ = k₋ = 62), δ = claimed δ, "
          f"confidence {confidence}, seeds 0..{seeds - 1}")
    print("| recipe | claimed ε (accountant) | gradient ε_LB per seed | max | correct / guesses (seed 0) | s / audit "
          "| input ε_LB per seed | max | s / audit |")
    print("|---|---|---|---|---|---|---|---|---|")
    for e in (1.0, 4.0, 8.0):
        rec = DPRecipe(e, 1e-5, epochs=30)
        gs = [audit_dp(rec, tr, canary="gradient", confidence=confidence, seed=s) for s in range(seeds)]
        ins = [audit_dp(rec, tr, confidence=confidence, seed=s) for s in range(seeds)]
        g_lb, i_lb = [r.epsilon_lower for r in gs], [r.epsilon_lower for r in ins]
        print(f"| DP-SGD ε = {e:g} | {gs[0].claimed_epsilon:.3f} (δ = {gs[0].delta:g}) | "
              f"{', '.join(f'{x:.2f}' for x in g_lb)} | {max(g_lb):.2f} | {gs[0].correct}/{gs[0].guesses} | "
              f"{np.mean([r.seconds for r in gs]):.1f} | {', '.join(f'{x:.2f}' for x in i_lb)} | {max(i_lb):.2f} | "
              f"{np.mean([r.seconds for r in ins]):.1f} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer seeds and trainings")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--gradient", action="store_true", help="only section 4 (gradient canaries)")
    a = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    print(f"# python {sys.version.split()[0]}, torch {torch.__version__}, 1 thread")
    if a.gradient:
        gradient(1 if a.quick else 3, a.confidence)
        print(f"\ntotal {time.perf_counter() - t0:.0f} s")
        return
    randomized_response(50 if a.quick else 200, a.confidence)
    gaussian(50 if a.quick else 200, a.confidence)
    dpsgd(1 if a.quick else 3, a.confidence, 10 if a.quick else 40)
    gradient(1 if a.quick else 3, a.confidence)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
