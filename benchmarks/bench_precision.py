"""Attack time against its passes on a CIFAR-shaped ResNet-18, and bf16 against fp32 on the CPU.

1. PGD-40 and APGD-CE-100 on a CIFAR-shaped ResNet-18 (tests/resnet_models.py, width 16, inline normalization,
   random weights with BatchNorm statistics set) at batch 64: attack time ÷ (k × one forward+backward pass of the
   batch), with early stop off (every step runs), so 1.00 is the floor of an attack that does nothing but its k
   gradient steps. The k passes are timed as the attack runs them: k in a row, each on a new input (the batch
   plus fresh noise of the budget's size), the cross-entropy's input gradient; a single pass timed alone on the
   same tensor runs 5-10 % faster than a sustained sequence on this machine (measured 70 vs 75-77 ms), which
   made the ratio depend on how long the pass was timed.
2. bf16 (``adverse.models.Autocast``) against fp32: the time of the same PGD, and on the PGD-trained digits CNN
   (``digits-cnn-at``, all 540 test digits) robust accuracy under PGD-20 at ε = 0.2 in both precisions.

Passes are timed in one run, interleaved with the attacks round by round (medians of ``--repeats`` rounds).

    python benchmarks/bench_precision.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--width", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from resnet_models import cifar_resnet, randomize_batch_norm

    import adverse as adv
    from adverse.evasion import apgd, pgd
    from adverse.models import Autocast, as_classifier

    torch.manual_seed(0)
    net = randomize_batch_norm(cifar_resnet(width=args.width), torch.Generator().manual_seed(0)).eval()
    x = torch.rand(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x).argmax(1)
    eps = 8 / 255
    print(f"torch {torch.__version__}, {args.threads} thread(s); CIFAR-shaped ResNet-18 width {args.width} "
          f"({sum(p.numel() for p in net.parameters()):,} parameters), batch {args.batch}, eps 8/255, "
          f"{args.repeats} rounds (medians)")

    noise = torch.Generator().manual_seed(2)

    def fb(model, k: int = 1) -> None:
        for _ in range(k):  # the attack's k passes: k in a row, each on a new input
            xr = (x + eps * (2 * torch.rand(x.shape, generator=noise) - 1)).clamp(0, 1).requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(xr), y), xr)

    print(f"{'model':<10} {'attack':<13} {'k':>4} {'fb ms':>8} {'attack s':>9} {'ratio':>7}")
    times = {}
    for precision in ("fp32", "bf16"):
        model = as_classifier(net) if precision == "fp32" else Autocast(net, "bf16")
        fb(model)  # warm-up
        for name, k, run in (("PGD", 40, lambda m: pgd(m, x, y, eps=eps, steps=40, early_stop=False, seed=0)),
                             ("APGD-CE", 100, lambda m: apgd(m, x, y, eps=eps, steps=100, early_stop=False,
                                                             seed=0))):
            passes, attacks = [], []
            for _ in range(args.repeats):  # interleaved: a drift of the machine's speed hits both alike
                passes.append(_median_time(lambda m=model, k=k: fb(m, k), 1))
                attacks.append(_median_time(lambda m=model, r=run: r(m), 1))
            k_passes, attack = statistics.median(passes), statistics.median(attacks)
            times[(precision, name)] = attack
            print(f"{precision:<10} {name:<13} {k:>4} {1000 * k_passes / k:>8.1f} {attack:>9.2f} "
                  f"{attack / k_passes:>7.3f}")
    for name in ("PGD", "APGD-CE"):
        print(f"bf16 ÷ fp32 time, {name}: {times[('bf16', name)] / times[('fp32', name)]:.3f}")

    cnn, test = adv.zoo.pretrained("digits-cnn-at"), adv.data.digits("test")
    robust = {}
    for precision in ("fp32", "bf16"):
        model = as_classifier(cnn) if precision == "fp32" else Autocast(cnn, "bf16")
        t0 = time.perf_counter()
        r = pgd(model, test.x, test.y, eps=0.2, steps=20, seed=0)
        robust[precision] = float((~r.success).float().mean())
        print(f"digits-cnn-at, PGD-20 at 0.2, 540 points, {precision}: robust accuracy {robust[precision]:.4f} "
              f"({time.perf_counter() - t0:.2f} s)")
    print(f"robust accuracy bf16 − fp32: {100 * (robust['bf16'] - robust['fp32']):+.2f} pp")


if __name__ == "__main__":
    main()
