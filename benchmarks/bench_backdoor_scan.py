"""Backdoor scan (Neural Cleanse + MM-BD) of clean, BadNets and Blended digits CNNs: detection and false positives.

Trains SmallCNNs with the ``digits-cnn`` recipe (``adverse.zoo.recipe``, 30 epochs, Adam) on the digits training
split: clean for ``--clean-seeds`` training seeds, and BadNets (2×2 white patch, bottom-right) and Blended (uniform
noise key, α 0.2) at ``--rate`` with target ``--target`` for ``--seeds`` (the poison draw and the training use the
same seed). Each model is scanned with :func:`adverse.defenses.scan_backdoor` at its defaults, holding the first
half of the digits test split as clean data, and one row is printed per model. The summary gives, per method
alone and for the scan's combined rule, the detection rate (backdoored models flagged *with the right target*) and
the false-positive rate (clean models flagged at all).

Usage: ``python benchmarks/bench_backdoor_scan.py --clean-seeds 10`` (``--json FILE`` also writes every scan;
``--first-clean-seed`` / ``--first-seed`` start the clean / backdoored seeds elsewhere than 0, for fresh models;
``--summarize A.json B.json ...`` prints the summary of scans written earlier, pooled, without training anything).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from digits_halves import digits_halves

from adverse.defenses import scan_backdoor
from adverse.defenses.backdoor_scan import SIZE_RATIO, _decide
from adverse.poisoning import backdoor_metrics, badnets, blended
from adverse.zoo import recipe, train_with


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seeds", type=int, default=3, help="how many backdoored models per attack (training seeds)")
    ap.add_argument("--clean-seeds", type=int, default=3, help="how many clean models (training seeds)")
    ap.add_argument("--first-seed", type=int, default=0, help="first training seed of the backdoored models")
    ap.add_argument("--first-clean-seed", type=int, default=0, help="first training seed of the clean models")
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--target", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--summarize", nargs="+", default=None, metavar="JSON",
                    help="print the pooled summary of scans written earlier with --json, and train nothing")
    args = ap.parse_args()
    if args.summarize:
        rows = []
        for name in args.summarize:
            with open(name) as f:
                rows += json.load(f)
        print(f"{len(rows)} stored scans from {', '.join(args.summarize)}")
        summary(rows)
        return
    torch.set_num_threads(args.threads)
    tr, _, defender, held = digits_halves()
    half = len(defender)
    train_fn = recipe("digits-cnn")
    print(f"digits-cnn recipe; poison rate {args.rate}, target {args.target}; defender holds {half} clean test "
          f"images; torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"{'model':<12} {'seed':>4} {'acc':>5} {'ASR':>5}  {'verdict':<36} {'NC ratio':>8} {'NC flags':<9} "
          f"{'NC max AI':>9} {'MM-BD top':>9} {'MM-BD p':>8} {'s':>5}")
    jobs = [("clean", s) for s in range(args.first_clean_seed, args.first_clean_seed + args.clean_seeds)]
    jobs += [(kind, s) for kind in ("badnets", "blended") for s in range(args.first_seed, args.first_seed + args.seeds)]
    rows = []
    for kind, seed in jobs:
        if kind == "clean":
            model = train_with(train_fn, tr, seed)
            acc, asr, target = float((model(held.x).argmax(1) == held.y).float().mean()), float("nan"), None
        else:
            attack = badnets(tr, target=args.target, rate=args.rate, size=2, seed=seed) if kind == "badnets" else \
                blended(tr, target=args.target, rate=args.rate, alpha=0.2, seed=seed)
            model = train_with(train_fn, attack.dataset(), seed)
            m = backdoor_metrics(model, attack, held)
            acc, asr, target = m["clean_accuracy"], m["asr"], args.target
        t0 = time.perf_counter()
        r = scan_backdoor(model, defender.x, defender.y, seed=0)
        sec = time.perf_counter() - t0
        ai = max(c["nc_anomaly_index"] for c in r.per_class if c["nc_l1"] < sorted(
            d["nc_l1"] for d in r.per_class)[len(r.per_class) // 2])
        rows.append({"kind": kind, "seed": seed, "target": target, "accuracy": acc, "asr": asr, "seconds": sec,
                     "scan": r.to_dict()})
        print(f"{kind:<12} {seed:>4} {acc:>5.3f} {asr:>5.2f}  {r.verdict:<36} "
              f"{r.details['neural-cleanse']['size_ratio']:>8.3f} {r.flagged['neural-cleanse']!s:<9} "
              f"{ai:>9.1f} {r.details['mm-bd']['target']:>9d} {r.p_value:>8.2g} {sec:>5.0f}", flush=True)
    summary(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


def _rules(scan: dict) -> dict[str, tuple[bool, int | None]]:
    """(suspected, target) of a stored scan under each rule: the scan's verdict (Neural Cleanse's trigger-size
    ratio), the papers' own rules (Neural Cleanse's anomaly index, MM-BD's p-value), and three ways of combining
    the last two, for comparison. Scans stored before the ratio existed are judged from their per-class norms."""
    f, pc, det = scan["flagged"], scan["per_class"], scan["details"]
    threshold = det.get("neural-cleanse", {}).get("size_ratio_threshold", SIZE_RATIO)
    out = {f"NC size ratio < {threshold:g} = the scan's verdict":
           _decide(f, pc, ("neural-cleanse", "mm-bd"), det)[:2]}
    flags = f["neural-cleanse"]
    nc = (bool(flags), max(flags, key=lambda c: pc[c]["nc_anomaly_index"]) if flags else None)
    out["NC anomaly index > 2 (the paper's)"] = nc
    mm = out["MM-BD p < 0.05 (the paper's)"] = _decide({"mm-bd": f["mm-bd"]}, pc, ("mm-bd",), det)[:2]
    top = det["mm-bd"]["target"]
    both = sorted(set(f["neural-cleanse"]) & set(f["mm-bd"]))
    out["(other) both flag the same class"] = (bool(both), both[0] if both else None)
    out["(other) either flags"] = mm if mm[0] else nc
    agree = mm[0] or top in f["neural-cleanse"]
    out["(other) MM-BD, or NC flags MM-BD's top"] = (agree, top if agree else None)
    return out


def summary(rows: list[dict]) -> None:
    """Per rule: backdoored models flagged with the right target, and clean models flagged."""
    print()
    for name in _rules(rows[0]["scan"]):
        parts = []
        for kind in ("badnets", "blended", "clean"):
            sel = [r for r in rows if r["kind"] == kind]
            hits = 0
            for r in sel:
                suspected, target = _rules(r["scan"])[name]
                hits += suspected and (kind == "clean" or target == r["target"])
            what = "false positives" if kind == "clean" else "detected, right target"
            parts.append(f"{kind} {hits}/{len(sel)} {what}")
        print(f"{name:<44} " + "; ".join(parts))
    secs = sorted(r["seconds"] for r in rows)
    nc = sorted(r["scan"]["seconds"]["neural-cleanse"] for r in rows)
    mm = sorted(r["scan"]["seconds"]["mm-bd"] for r in rows)
    print(f"seconds per scan: median {secs[len(secs) // 2]:.0f} (Neural Cleanse {nc[len(nc) // 2]:.0f}, MM-BD "
          f"{mm[len(mm) // 2]:.0f}), max {secs[-1]:.0f}")


if __name__ == "__main__":
    main()
