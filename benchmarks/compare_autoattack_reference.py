"""AutoAttack (standard) against its reference implementation: robust accuracy, agreement, wall time, and the time
left above the passes.

Runs the reference ``AutoAttack`` of Croce & Hein (fra31/auto-attack, ``version='standard'``) and
``adverse.evasion.autoattack(version="standard")`` on the same model and points, one after the other, same thread
setting, and prints one markdown row per model:

- robust accuracy of both, and the share of points on which they agree, for adverse in each ``--precision`` (fp32:
  every pass in float32; bf16: the attacks search under bf16 autocast and every point they fool is confirmed by the
  model in float32, ``autoattack(precision="bf16")``);
- wall time of both and their ratio (ours ÷ reference), measured in one run;
- ours ÷ floor: our time ÷ (our passes × one pass's time), where a pass is timed uncompiled in the layout the run
  chose (``params["acceleration"]["layout"]``) and the precision adverse searched in, on as many points as the
  first member left robust (the batch nearly every later pass is made on: a digits CNN's forward+backward pass
  cost 1.7x more per sample at 530 points than at 300), the fastest of three timings (a forward+backward pass
  for each backward pass counted, a forward pass for each other forward pass and each of Square's queries); the
  acceleration adverse chose and the time per member attack.

Models:

- ``digits-cnn-at``: the PGD-trained digits CNN of the zoo, all 540 test digits, L∞ 0.2;
- ``cifar-resnet18-w16``: a CIFAR-shaped ResNet-18 of width 16 (``tests/resnet_models.py``) trained here with
  PGD-3 adversarial training at L∞ 8/255 for ``--resnet-epochs`` epochs on the digits upsampled to 3×32×32
  (no CIFAR-10 on this machine), then attacked at L∞ 16/255 on the first 64 test points, a budget at which most
  points stay robust (APGD-CE-50 leaves 78 %): the regime where AutoAttack's time goes.

The reference is not part of this project: point ``AUTOATTACK_PATH`` at a copy of fra31/auto-attack (the folder
that contains ``autoattack/``); without it only adverse runs.

    AUTOATTACK_PATH=/path/to/auto-attack python benchmarks/compare_autoattack_reference.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from adverse.acceleration import channels_last_layout, forward_backward_pass, forward_pass, per_sample_ms
from adverse.data import Dataset, digits
from adverse.defenses import adversarial_training
from adverse.evasion.ensemble import autoattack
from adverse.models import Autocast, attack_mode
from adverse.zoo import pretrained

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _reference():
    path = os.environ.get("AUTOATTACK_PATH")
    if not path:
        print("AUTOATTACK_PATH is not set: adverse only (point it at a copy of fra31/auto-attack)")
        return None
    sys.path.insert(0, os.path.abspath(path))
    try:
        from autoattack import AutoAttack
    except ImportError as exc:
        print(f"cannot import the reference from {path}: {exc!r}; adverse only")
        return None
    return AutoAttack


def _upsampled(d: Dataset) -> Dataset:
    x = F.interpolate(d.x, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1).repeat(1, 3, 1, 1)
    return Dataset(x, d.y, d.name + "-32", d.num_classes)


def resnet_case(epochs: int, n: int) -> tuple[str, torch.nn.Module, torch.Tensor, torch.Tensor, float]:
    from resnet_models import cifar_resnet

    torch.manual_seed(0)
    net = cifar_resnet(width=16)
    train, test = _upsampled(digits("train")), _upsampled(digits("test"))
    t0 = time.perf_counter()
    adversarial_training(net, train, "pgd", eps=8 / 255, steps=3, epochs=epochs, seed=0)
    print(f"cifar-resnet18-w16: PGD-3 adversarial training at 8/255, {epochs} epochs on 1257 upsampled digits, "
          f"{time.perf_counter() - t0:.0f} s")
    return "cifar-resnet18-w16", net.eval(), test.x[:n], test.y[:n], 16 / 255


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["digits-cnn-at", "cifar-resnet18-w16"])
    ap.add_argument("--n-digits", type=int, default=540, help="first n digits test points")
    ap.add_argument("--n-resnet", type=int, default=64, help="first n test points for the ResNet")
    ap.add_argument("--resnet-epochs", type=int, default=5)
    ap.add_argument("--compile", default="auto", help="adverse's compile mode: auto, on or off")
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"],
                    help="adverse's search precision(s), each run and compared with the same reference run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="seeds of both implementations: one reference run and one adverse run per seed and precision, "
                         "to show each one's spread over its own randomness")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    AutoAttack = _reference()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}, "
          f"load average {os.getloadavg()[0]:.2f}\n")
    cases = []
    for name in args.models:
        if name == "cifar-resnet18-w16":
            cases.append(resnet_case(args.resnet_epochs, args.n_resnet))
        else:
            te = digits("test")
            cases.append((name, pretrained(name), te.x[: args.n_digits], te.y[: args.n_digits], 0.2))
    print("| model | n | eps | seed | precision | clean | adverse robust acc | reference robust acc | agree | adverse s "
          "| reference s | adverse ÷ reference | adverse ÷ floor |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    details = []
    spread: dict[tuple[str, str], list[float]] = {}
    for (name, model, x, y, eps), seed in ((case, seed) for case in cases for seed in args.seeds):
        t_ref, ref_robust = float("nan"), None
        if AutoAttack is not None:
            with attack_mode(model):
                ref = AutoAttack(model, norm="Linf", eps=eps, version="standard", device="cpu", verbose=False,
                                 seed=seed)
                t0 = time.perf_counter()
                x_ref = ref.run_standard_evaluation(x.clone(), y.clone(), bs=len(y))
                t_ref = time.perf_counter() - t0
                with torch.no_grad():
                    ref_robust = model(x_ref).argmax(1) == y
            spread.setdefault((name, "reference"), []).append(float(ref_robust.float().mean()))
        for precision in args.precision:
            t0 = time.perf_counter()
            ours = autoattack(model, x, y, eps=eps, norm="linf", version="standard", seed=seed, compile=args.compile,
                              precision=precision)
            t_ours = time.perf_counter() - t0
            ours_robust = ~ours.success
            spread.setdefault((name, f"adverse {precision}"), []).append(ours.robust_accuracy)
            # the floor: every counted pass at the speed of one pass in the search precision and the layout the run
            # chose (uncompiled), timed on as many points as the first member left robust, the fastest of three
            cl = ours.params["acceleration"]["layout"] == "channels_last"
            k = max(1, round(ours.params["per_attack"][0]["robust_accuracy"] * len(y)))
            work = x[ours.clean_correct][:k]
            work = work.contiguous(memory_format=torch.channels_last) if cl else work
            searched = model if precision == "fp32" else Autocast(model, precision)
            with attack_mode(model), channels_last_layout(searched, work, cl):
                t_f = min(per_sample_ms(forward_pass(searched, work), len(work)) for _ in range(3)) / 1e3
                t_fb = min(per_sample_ms(forward_backward_pass(searched, work), len(work)) for _ in range(3)) / 1e3
            floor = ours.backwards * t_fb + (ours.forwards - ours.backwards + ours.queries) * t_f
            ref_acc = f"{float(ref_robust.float().mean()):.2%}" if ref_robust is not None else "–"
            agree = f"{float((ours_robust == ref_robust).float().mean()):.2%}" if ref_robust is not None else "–"
            print(f"| {name} | {len(y)} | {eps:.4g} | {seed} | {precision} | {ours.clean_accuracy:.2%} | "
                  f"{ours.robust_accuracy:.2%} | {ref_acc} | {agree} | {t_ours:.1f} | {t_ref:.1f} | "
                  f"{t_ours / t_ref:.3f} | {t_ours / floor:.3f} |", flush=True)
            details.append(
                f"{name}, seed {seed}, {precision}: passes {ours.forwards} forward, {ours.backwards} backward, {ours.queries} "
                f"Square queries (one pass in the run's layout: {1e3 * t_f:.4f} ms forward, {1e3 * t_fb:.4f} ms "
                f"forward+backward per sample; floor {floor:.1f} s); acceleration {ours.params['acceleration']}; "
                "per attack: " + "; ".join(
                    f"{p['attack']} → {p['robust_accuracy']:.2%} ({p['seconds']:.1f} s)"
                    for p in ours.params["per_attack"]))
    print("\n" + "\n\n".join(details))
    if len(args.seeds) > 1:
        print(f"\nrobust accuracy over seeds {args.seeds}:")
        for (name, who), accs in spread.items():
            print(f"  {name}, {who}: " + ", ".join(f"{a:.2%}" for a in accs)
                  + f" (min {min(accs):.2%}, max {max(accs):.2%}, spread {100 * (max(accs) - min(accs)):.2f} pp)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
