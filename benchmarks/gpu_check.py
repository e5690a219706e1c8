"""The GPU check of issue 14, one short run (under 8 minutes on one GPU; ``--quick`` for a CPU rehearsal).

On a CIFAR-shaped ResNet-18 (tests/resnet_models.py, width 64 — the usual ResNet-18 — random weights with set
BatchNorm statistics, inline normalization) and random 3×32×32 inputs labelled by the model:

1. every attack of ``adverse.evasion`` once on ``--n`` points on the device: time, success rate, passes;
2. one audit (``adverse.audit(..., device=...)``: evasion and certify suites) on the device;
3. throughput of the forward pass in fp32 and bf16 (``adverse.models.Autocast``), images/s;
4. adverse's PGD against torchattacks' PGD, and adverse's AutoAttack against the reference ``autoattack`` package,
   on the same model and points, when those packages are importable (time and robust accuracy side by side).

    bash benchmarks/gpu_check.sh            # on the GPU machine
    python benchmarks/gpu_check.py --quick  # on the CPU, small, to test the script
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _kwargs(fn, **wanted):
    names = inspect.signature(fn).parameters
    return {k: v for k, v in wanted.items() if k in names}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="width 8, 8 points, few steps: a CPU rehearsal")
    ap.add_argument("--n", type=int, default=64)
    args = ap.parse_args()

    from resnet_models import cifar_resnet, randomize_batch_norm

    import adverse as adv
    from adverse import evasion
    from adverse.models import Autocast, as_classifier, resolve_device

    device = resolve_device(args.device)
    width, n, steps = (8, 8, 5) if args.quick else (64, args.n, 40)
    torch.manual_seed(0)
    net = randomize_batch_norm(cifar_resnet(width=width), torch.Generator().manual_seed(0)).eval().to(device)
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        y = net(x).argmax(1)
    eps = 8 / 255
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"adverse {adv.__version__}, torch {torch.__version__}, device {device} ({name}); ResNet-18 width {width} "
          f"({sum(p.numel() for p in net.parameters()):,} parameters), {n} points, eps 8/255")

    print("\n1. every attack family")
    print(f"{'attack':<12} {'success':>8} {'forwards':>9} {'backwards':>10} {'queries':>8} {'seconds':>8}  note")
    budgets = {"steps": steps, "max_queries": 200 if args.quick else 1000, "n_queries": 200 if args.quick else 1000}
    surrogate = randomize_batch_norm(cifar_resnet(width=width), torch.Generator().manual_seed(5)).eval().to(device)
    for attack in ("fgsm", "bim", "mifgsm", "pgd", "apgd", "cw_l2", "deepfool", "fmn", "fab", "square", "simba",
                   "nes", "hopskipjump", "transfer", "autoattack"):
        fn = getattr(evasion, attack)
        kw = _kwargs(fn, eps=eps, norm="linf", seed=0, **budgets)
        if attack == "autoattack":
            kw.update(version="standard", square_queries=200 if args.quick else 5000)
        call = (lambda f=fn, k=kw: f(surrogate, net, x, y, **k)) if attack == "transfer" else \
            (lambda f=fn, k=kw: f(net, x, y, **k))
        try:
            _sync(device)
            t0 = time.perf_counter()
            r = call()
            _sync(device)
            seconds = time.perf_counter() - t0
            ok = r.x_adv.device.type == device.type
            print(f"{attack:<12} {float(r.success.float().mean()):>8.3f} {r.forwards:>9,} {r.backwards:>10,} "
                  f"{getattr(r, 'queries', 0):>8,} {seconds:>8.2f}  {'on ' + device.type if ok else 'OUTPUT MOVED'}")
        except Exception as e:  # noqa: BLE001  (a check reports every failure and goes on)
            print(f"{attack:<12} FAILED: {type(e).__name__}: {str(e)[:150]}")

    print("\n2. one audit on the device (evasion + certify)")
    t0 = time.perf_counter()
    try:
        result = adv.audit(net, (x.cpu(), y.cpu()), device=str(device), eps=(eps,), n=n, steps=steps,
                           suites=["evasion", "certify"], autoattack_n=min(n, 32), check_n=min(n, 32),
                           certify={"n": min(n, 16), "samples": 100})
        print(f"audit: {time.perf_counter() - t0:.1f} s; clean {result.clean_accuracy:.3f}; worst case "
              f"{[round(w['robust_accuracy'], 3) for w in result.worst_case]}; checks "
              f"{[(c['name'], c['status']) for c in result.checks]}; device {result.environment['device']}")
    except Exception as e:  # noqa: BLE001
        print(f"audit FAILED: {type(e).__name__}: {str(e)[:300]}")

    print("\n3. forward throughput, fp32 vs bf16")
    batch = torch.rand(256 if not args.quick else 32, 3, 32, 32, device=device)
    for precision in ("fp32", "bf16"):
        model = as_classifier(net) if precision == "fp32" else Autocast(net, "bf16")
        with torch.no_grad():
            model(batch)
            _sync(device)
            t0 = time.perf_counter()
            rounds = 20 if not args.quick else 2
            for _ in range(rounds):
                model(batch)
            _sync(device)
        print(f"{precision}: {rounds * batch.shape[0] / (time.perf_counter() - t0):,.0f} images/s")

    print("\n4. against the references (when importable)")
    try:
        import torchattacks
    except Exception as e:  # noqa: BLE001
        print(f"torchattacks not importable ({type(e).__name__}); skipped")
    else:
        ours = evasion.pgd(net, x, y, eps=eps, steps=steps, alpha=2 / 255, seed=0)
        _sync(device)
        t0 = time.perf_counter()
        ours = evasion.pgd(net, x, y, eps=eps, steps=steps, alpha=2 / 255, seed=0)
        _sync(device)
        t_ours = time.perf_counter() - t0
        ta = torchattacks.PGD(net, eps=eps, alpha=2 / 255, steps=steps, random_start=True)
        t0 = time.perf_counter()
        adv_x = ta(x, y)
        _sync(device)
        t_ref = time.perf_counter() - t0
        with torch.no_grad():
            ref_robust = float((net(adv_x).argmax(1) == y).float().mean())
        print(f"PGD-{steps}: adverse {t_ours:.2f} s robust {float((~ours.success).float().mean()):.3f}; torchattacks "
              f"{t_ref:.2f} s robust {ref_robust:.3f}; time ratio {t_ours / t_ref:.3f}")
    try:
        from autoattack import AutoAttack
    except Exception as e:  # noqa: BLE001
        print(f"reference autoattack not importable ({type(e).__name__}); skipped")
    else:
        k = min(n, 32)
        t0 = time.perf_counter()
        ours = evasion.autoattack(net, x[:k], y[:k], eps=eps, version="standard", seed=0)
        _sync(device)
        t_ours = time.perf_counter() - t0
        ref = AutoAttack(net, norm="Linf", eps=eps, version="standard", device=str(device), verbose=False)
        t0 = time.perf_counter()
        adv_x = ref.run_standard_evaluation(x[:k], y[:k], bs=k)
        _sync(device)
        t_ref = time.perf_counter() - t0
        with torch.no_grad():
            ref_robust = float((net(adv_x).argmax(1) == y[:k]).float().mean())
        print(f"AutoAttack standard on {k} points: adverse {t_ours:.1f} s robust "
              f"{float((ours.clean_correct & ~ours.success).float().mean()):.3f}; reference {t_ref:.1f} s robust "
              f"{ref_robust:.3f}; time ratio {t_ours / t_ref:.3f}")
        t0 = time.perf_counter()
        half = evasion.autoattack(net, x[:k], y[:k], eps=eps, version="standard", seed=0, precision="bf16")
        _sync(device)
        t_half = time.perf_counter() - t0
        print(f"AutoAttack standard, bf16 search confirmed in fp32: adverse {t_half:.1f} s robust "
              f"{float((half.clean_correct & ~half.success).float().mean()):.3f} "
              f"(unconfirmed {half.params['acceleration']['unconfirmed']}); time ratio to the reference "
              f"{t_half / t_ref:.3f}")


if __name__ == "__main__":
    main()
