"""Transfer attacks: adverse's ``transfer`` against torchattacks' MIFGSM, DIFGSM, TIFGSM and VMIFGSM.

Same surrogate (a SmallCNN of width 16 trained on the digits train split with seed 1), same undefended target
(``pretrained("digits-cnn")``), all 540 digits test points, L∞ eps 0.15, 10 steps of eps/10. Each method is run
with the same hyper-parameters on both sides; the randomized ones (DI, VMI) over 3 seeds. TI runs on the digits as 3 equal channels (torchattacks'
TI-FGSM handles RGB only) for both libraries. Printed: the transfer
rate (the share of the target's correctly classified points that the adversarials fool), the white-box success
on the surrogate, and seconds. torchattacks is only needed to run this script, never by the library.

    python benchmarks/compare_transfer_reference.py [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

import adverse.evasion as ev
from adverse import data, zoo

EPS, STEPS = 0.15, 10


class Gray(torch.nn.Module):
    """torchattacks' TI-FGSM handles 3-channel images only: feed the digits as 3 equal channels, averaged."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.mean(dim=1, keepdim=True))


def rates(target, surrogate, x, y, x_adv):
    with torch.no_grad():
        ok = target(x).argmax(1) == y
        fooled = target(x_adv).argmax(1) != y
        on_sur = (surrogate(x_adv).argmax(1) != y).float().mean().item()
    return (fooled & ok).sum().item() / ok.sum().item(), on_sur


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import torchattacks

    test = data.digits("test")
    x, y = test.x, test.y
    target = zoo.pretrained("digits-cnn")
    torch.manual_seed(1)
    surrogate = zoo.train_classifier(zoo.SmallCNN(width=16), data.digits("train"), epochs=15, seed=1)
    alpha = EPS / STEPS
    methods = {
        "MI-FGSM (μ=1)": (dict(decay=1.0), lambda m: torchattacks.MIFGSM(m, eps=EPS, alpha=alpha, steps=STEPS)),
        "DI-FGSM (p=0.5, 0.9)": (dict(decay=0.0, diversity_prob=0.5, resize_rate=0.9),
                                 lambda m: torchattacks.DIFGSM(m, eps=EPS, alpha=alpha, steps=STEPS)),
        "TI-FGSM (k=3)": (dict(decay=0.0, kernel_size=3),
                          lambda m: torchattacks.TIFGSM(m, eps=EPS, alpha=alpha, steps=STEPS, len_kernel=3,
                                                        diversity_prob=0.0)),
        "VMI-FGSM (N=5, β=1.5)": (dict(decay=1.0, vmi_samples=5, vmi_beta=1.5),
                                  lambda m: torchattacks.VMIFGSM(m, eps=EPS, alpha=alpha, steps=STEPS)),
    }
    print(f"digits, {len(y)} test points, L∞ eps {EPS}, {STEPS} steps, threads {args.threads}")
    print(f"{'method':<24}{'library':<14}{'transfer':>10}{'surrogate':>11}{'seconds':>9}")
    for name, (kw, make) in methods.items():
        for lib in ("adverse", "torchattacks"):
            tr, sr, sec = [], [], []
            rgb = "kernel_size" in kw
            sur, tgt, xx = (Gray(surrogate), Gray(target), x.repeat(1, 3, 1, 1)) if rgb else (surrogate, target, x)
            for seed in range(3):
                t0 = time.perf_counter()
                if lib == "adverse":
                    x_adv = ev.transfer(sur, tgt, xx, y, eps=EPS, steps=STEPS, seed=seed, **kw).x_adv
                else:
                    torch.manual_seed(seed)
                    x_adv = make(sur)(xx, y)
                sec.append(time.perf_counter() - t0)
                t, s = rates(tgt, sur, xx, y, x_adv)
                tr.append(t)
                sr.append(s)
            mean = lambda v: sum(v) / len(v)  # noqa: E731
            print(f"{name:<24}{lib:<14}{mean(tr):>10.4f}{mean(sr):>11.4f}{mean(sec):>9.2f}")


if __name__ == "__main__":
    main()
