"""Strength and time of L∞ PGD-40: adverse against torchattacks, Foolbox 3 and ART, on the same model and data.

Model ``digits-cnn-at`` (PGD adversarially trained, L∞ eps 0.2), all 540 points of the digits test set as one
batch, L∞ eps 0.2, 40 steps, random start, 1 restart. Two settings of the step size:

* ``same``: 0.0125 = 2.5 · eps / 40 for every library (adverse's default);
* ``default``: each library's own default step size (torchattacks ``alpha=2/255``; Foolbox ``LinfPGD``
  ``rel_stepsize=0.01/0.3``, i.e. eps/30; ART ``eps_step=0.1``; adverse 2.5 · eps / steps), still with a random
  start; plus ART with all its defaults but eps and steps (no random start, ``batch_size=32``), and adverse
  with ART's default step (0.1), to separate the step size from the implementation.

Every library's output is scored the same way here: a point is robust when the model still classifies its
adversarial input correctly (a clean mistake counts as not robust); outputs are checked against the threat model
(‖x_adv − x‖∞ ≤ eps + 1e-6, inside [0, 1]). Parameters are frozen and the model is in eval mode for all. Each
library is seeded through the RNG it uses (adverse: its ``seed`` argument; the others: the global torch and
numpy RNGs). A library that does not import is skipped with a message. These libraries are comparison tools
only, never dependencies of adverse.

Usage::

    python benchmarks/compare_pgd_reference.py --threads 1 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import numpy as np
import torch
from torch import nn

from adverse.data import digits
from adverse.evasion import pgd
from adverse.zoo import pretrained

EPS, STEPS, SAME = 0.2, 40, 2.5 * 0.2 / 40


def run_adverse(model, x, y, alpha, seed, early_stop=True):
    return pgd(model, x, y, eps=EPS, steps=STEPS, alpha=alpha, restarts=1, early_stop=early_stop, seed=seed).x_adv


def make_torchattacks():
    import torchattacks

    def run(model, x, y, alpha, seed):
        torch.manual_seed(seed)
        kw = {} if alpha is None else {"alpha": alpha}
        atk = torchattacks.PGD(model, eps=EPS, steps=STEPS, random_start=True, **kw)
        return atk(x, y)

    return f"torchattacks {torchattacks.__version__}", run, 2 / 255


def make_foolbox():
    import foolbox

    def run(model, x, y, alpha, seed):
        torch.manual_seed(seed)
        fmodel = foolbox.PyTorchModel(model, bounds=(0.0, 1.0))
        kw = {} if alpha is None else {"abs_stepsize": alpha}
        attack = foolbox.attacks.LinfPGD(steps=STEPS, random_start=True, **kw)
        _, clipped, _ = attack(fmodel, x, y, epsilons=EPS)
        return clipped

    return f"foolbox {foolbox.__version__}", run, 0.01 / 0.3 * EPS


def make_art():
    import art
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    def run(model, x, y, alpha, seed, all_defaults=False):
        np.random.seed(seed)
        torch.manual_seed(seed)
        clf = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")
        kw = dict(norm=np.inf, eps=EPS, max_iter=STEPS, verbose=False)
        if not all_defaults:
            kw.update(num_random_init=1, batch_size=x.shape[0])
            if alpha is not None:
                kw["eps_step"] = alpha
        atk = ProjectedGradientDescent(clf, **kw)
        return torch.from_numpy(atk.generate(x.numpy(), y.numpy()))

    return f"ART {art.__version__}", run, 0.1


def score(model, x, y, x_adv):
    with torch.no_grad():
        robust = model(x_adv).argmax(dim=1) == y
    dist = (x_adv - x).flatten(1).abs().amax(dim=1)
    ok = (dist <= EPS + 1e-6) & (x_adv.flatten(1).amin(dim=1) >= -1e-6) & (x_adv.flatten(1).amax(dim=1) <= 1 + 1e-6)
    return robust, int((~ok).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore")

    data = digits("test")
    x, y = data.x, data.y
    model = pretrained("digits-cnn-at").eval()
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        clean = float((model(x).argmax(dim=1) == y).float().mean())
    print(f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"digits-cnn-at on {x.shape[0]} test points, clean accuracy {clean:.4f}; L∞ eps {EPS}, {STEPS} steps, "
          f"random start, 1 restart, one batch of {x.shape[0]}; seeds {a.seeds}")

    rows = [("adverse", "same", SAME, run_adverse),
            ("adverse", "same, early_stop=False", SAME,
             lambda m, x, y, al, s: run_adverse(m, x, y, al, s, early_stop=False)),
            ("adverse", "default", SAME, run_adverse),
            ("adverse", "ART's default step", 0.1, run_adverse)]
    for make in (make_torchattacks, make_foolbox, make_art):
        try:
            label, run, default_step = make()
        except Exception as e:  # not installed, or broken against this torch
            print(f"skipped {make.__name__[5:]}: not importable ({type(e).__name__}: {e})")
            continue
        rows.append((label, "same", SAME, run))
        rows.append((label, "default", default_step, run))
        if label.startswith("ART"):
            rows.append((label, "all defaults", 0.1,
                         lambda m, x, y, al, s, run=run: run(m, x, y, None, s, all_defaults=True)))

    head = f"{'library':<22}{'step size':<26}{'step':>8}{'robust acc (mean)':>19}{'per seed':>22}{'time s':>9}{'bad':>5}"
    print(head)
    print("-" * len(head))
    fooled_sets = {}
    for label, setting, step, run in rows:
        accs, times, bad = [], [], 0
        fooled_any = torch.zeros_like(y, dtype=torch.bool)
        for seed in a.seeds:
            alpha = step if setting.startswith("same") or label == "adverse" else None
            t0 = time.perf_counter()
            x_adv = run(model, x, y, alpha, seed).detach().to(x.dtype)
            times.append(time.perf_counter() - t0)
            robust, nbad = score(model, x, y, x_adv)
            bad += nbad
            accs.append(float(robust.float().mean()))
            fooled_any |= ~robust
        fooled_sets[(label, setting)] = fooled_any
        per = " ".join(f"{v:.4f}" for v in accs)
        print(f"{label:<22}{setting:<26}{step:>8.5f}{statistics.mean(accs):>19.4f}{per:>22}"
              f"{statistics.median(times):>9.2f}{bad:>5}", flush=True)

    # points that some seed of another library fooled but no seed of adverse did
    ours = fooled_sets[("adverse", "same")]
    print("\npoints fooled by a reference run (any seed) but by no adverse PGD-40 run (default settings, any seed):")
    for (label, setting), fooled in fooled_sets.items():
        if label != "adverse":
            print(f"  {label:<22}{setting:<16}{int((fooled & ~ours).sum()):>4}   "
                  f"(and the reverse: {int((ours & ~fooled).sum())})")
    print("time s: median wall time of one attack on all 540 points; bad: outputs outside the threat model")


if __name__ == "__main__":
    main()
