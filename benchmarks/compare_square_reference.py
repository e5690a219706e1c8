"""Square Attack against its reference implementation: robust accuracy, queries and wall time.

Runs ``adverse.evasion.square`` and the reference code of Andriushchenko, Croce et al. (fra31/auto-attack:
``autoattack.square.SquareAttack``) with the same settings (L∞, margin loss, ``p_init`` 0.8, one restart,
seed 0) on the same test points of the digits data:

* ``digits-cnn-at`` (PGD adversarially trained, L∞ eps 0.2) at eps 0.2, 5000 queries;
* ``digits-cnn`` (undefended) at eps 0.3, 5000 queries.

Both libraries see the model only as a function returning logits, wrapped in a counter of the rows it was
asked about; a point counts as robust when the model still classifies its adversarial input correctly (a
clean mistake counts as not robust), and every output is checked against the threat model. The columns:

* ``queries/pt``: rows the model was asked about, over the number of points (adverse: the clean query, the
  initial point and one per iteration, never more than 5000 per point; the reference: two clean forward
  passes of the whole batch, the initial point and one per iteration, up to 5000 iterations, and a final
  check of the attacked points);
* ``median q fooled``: adverse's median per-sample queries over the points it fooled (from its result);
* ``wall s`` / ``CPU s``: wall time and process CPU time (``time.process_time``) of one call on all points in
  one batch, CPU, ``--threads`` intra-op threads; on a shared machine the CPU seconds are the better guide.

``--ablation`` adds a row for adverse with the reference's window positions (drawn from ``0 … h − s − 1``, so
no window ever covers the last row or column; adverse draws from ``0 … h − s`` as the paper does), to show
how much of a difference between the two comes from that.

The reference is not part of this project: point ``AUTOATTACK_PATH`` at a copy of fra31/auto-attack (the folder
that contains ``autoattack/``); without it the script says so and exits with status 0. The reference needs
``device="cpu"`` on a machine without CUDA.

    AUTOATTACK_PATH=/path/to/auto-attack python benchmarks/compare_square_reference.py --threads 1
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time

import torch

SETTINGS = (("digits-cnn-at", 0.2), ("digits-cnn", 0.3))


def load_reference():
    path = os.environ.get("AUTOATTACK_PATH")
    if not path:
        return None, "AUTOATTACK_PATH is not set (point it at a copy of fra31/auto-attack)"
    sys.path.insert(0, os.path.abspath(path))
    try:
        from autoattack.square import SquareAttack
    except ImportError as exc:
        return None, f"cannot import the reference from {path}: {exc!r}"
    return SquareAttack, ""


class CountingModel:
    """The model as a function of a batch, counting the rows asked about."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.rows = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        with torch.no_grad():
            return self.model(x)


def _reference_positions(n: int, limit: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
    """Window offsets as the reference draws them: from 0 … limit − 1 (only 0 when limit is 0)."""
    return torch.randint(0, max(limit, 1), (n,), generator=g, device=device)


def score(model, x, y, x_adv, eps):
    with torch.no_grad():
        robust = model(x_adv).argmax(dim=1) == y
    dist = (x_adv - x).flatten(1).abs().amax(dim=1)
    ok = (dist <= eps + 1e-6) & (x_adv.flatten(1).amin(dim=1) >= -1e-6) & (x_adv.flatten(1).amax(dim=1) <= 1 + 1e-6)
    return robust, int((~ok).sum())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=None, help="first n test points (default: all 540)")
    ap.add_argument("--queries", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", nargs="+", default=[m for m, _ in SETTINGS], choices=[m for m, _ in SETTINGS])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--ablation", action="store_true", help="also run adverse with the reference's positions")
    args = ap.parse_args()

    ref, why = load_reference()
    if ref is None:
        print(f"skipped: {why}")
        return 0
    SquareAttack = ref

    from adverse.data import digits
    from adverse.evasion.square import square
    square_module = importlib.import_module("adverse.evasion.square")  # the module; the package's name is the function
    from adverse.models import BlackBox
    from adverse.zoo import pretrained

    torch.set_num_threads(args.threads)
    data = digits("test")
    x, y = data.x, data.y
    if args.n is not None:
        x, y = x[: args.n], y[: args.n]
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"torch.get_num_threads() = {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
    print(f"{x.shape[0]} digits test points (shape {tuple(x.shape[1:])}), L∞, margin loss, p_init 0.8, "
          f"{args.queries} queries, 1 restart, seed {args.seed}\n")
    print("| model | eps | clean acc | implementation | robust acc | queries/pt | median q fooled | wall s | CPU s | bad |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, eps in SETTINGS:
        if name not in args.models:
            continue
        model = pretrained(name).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            clean = float((model(x).argmax(dim=1) == y).float().mean())

        variants = [("adverse square", square_module._positions)]
        if args.ablation:
            variants.append(("adverse, reference positions", _reference_positions))
        for label, positions in variants:
            square_module._positions = positions
            counter = CountingModel(model)
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                r = square(BlackBox(counter), x, y, eps=eps, norm="linf", max_queries=args.queries, seed=args.seed)
            finally:
                square_module._positions = variants[0][1]
            secs, cpu = time.perf_counter() - t0, time.process_time() - c0
            robust, bad = score(model, x, y, r.x_adv, eps)
            med = r.params.get("queries_median_fooled", float("nan"))
            print(f"| {name} | {eps} | {clean:.4f} | {label} | {float(robust.float().mean()):.4f} | "
                  f"{counter.rows / x.shape[0]:.1f} | {med:.0f} | {secs:.1f} | {cpu:.1f} | {bad} |", flush=True)

        counter = CountingModel(model)
        attack = SquareAttack(counter, norm="Linf", n_queries=args.queries, eps=eps, p_init=0.8, n_restarts=1,
                              seed=args.seed, loss="margin", device="cpu")
        t0, c0 = time.perf_counter(), time.process_time()
        x_adv = attack.perturb(x.clone(), y.clone())
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        robust, bad = score(model, x, y, x_adv, eps)
        print(f"| {name} | {eps} | {clean:.4f} | reference SquareAttack | {float(robust.float().mean()):.4f} | "
              f"{counter.rows / x.shape[0]:.1f} | – | {secs:.1f} | {cpu:.1f} | {bad} |", flush=True)
    print("\nbad: outputs outside the threat model (L∞ ball ∩ [0, 1])")
    return 0


if __name__ == "__main__":
    sys.exit(main())
