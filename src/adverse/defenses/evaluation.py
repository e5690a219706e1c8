"""What a preprocessing defense is worth once the attacker knows about it.

:func:`evaluate` measures, side by side and on the same inputs,

* the **undefended** model under PGD;
* the **oblivious** attacker: the same adversarial inputs, crafted on the undefended model, fed to the defended
  one (what a defense paper without an adaptive evaluation reports);
* the **adaptive** attacker: PGD on the whole defended pipeline with the gradient each layer calls for —
  the exact gradient where the layer is a differentiable torch operation *and* BPDA (the identity backward;
  Athalye, Carlini & Wagner 2018), since either can be the stronger; BPDA alone where the layer has no
  gradient; EOT over ``eot_samples`` draws for randomized layers; and, for detect-and-reject defenses, attacks on
  the classifier and the detector jointly (:func:`adverse.defenses.detection.attack_detector`; Carlini & Wagner
  2017). A sample counts as robust against the adaptive attacker only if every one of these attacks *and* the
  oblivious transfer failed on it (the per-sample worst case), and only if no attack succeeded at a smaller
  budget either;

with the clean-accuracy cost of the defense and a verdict in words.

A randomized defense is judged by its expected logits over ``judge_samples`` draws (``EOT(model, k)``); a
detect-and-reject defense counts a flagged input as defended (a flagged *clean* input counts as an error). Every
randomized layer is reseeded with ``seed`` before each attack and each judgement, so the same call gives the
same numbers. Robust accuracies from attacks are upper bounds: a stronger attack can only lower them.

References
----------
Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018. Carlini & Wagner,
"Adversarial Examples Are Not Easily Detected: Bypassing Ten Detection Methods", AISec 2017. Tramèr, Carlini,
Brendel & Madry, "On Adaptive Attacks to Adversarial Example Defenses", NeurIPS 2020.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, ModelError
from ..evasion._core import check_inputs, make_generator
from ..models import Counted, attack_mode
from ..validation import validated
from ._at import maximize
from .detection import Detector
from .preprocessing import Preprocessor

Tensor = torch.Tensor
DEFAULT_EPS = (0.05, 0.1, 0.2, 0.3)
WORTHLESS = 0.05  # an adaptive gain below this (5 points) is "nothing"


def preprocessing_layers(model: nn.Module) -> list[Preprocessor]:
    """The :class:`~adverse.defenses.preprocessing.Preprocessor` layers inside ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, Preprocessor)]


def without_preprocessing(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every preprocessing layer replaced by the identity: the undefended model when the
    classifier was not retrained behind the defense."""
    if isinstance(model, Preprocessor):
        return nn.Identity()
    bare = copy.deepcopy(model)
    for parent in list(bare.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Preprocessor):
                setattr(parent, name, nn.Identity())
    return bare


def describe(layer: nn.Module) -> str:
    """A one-line description of a layer: its class and settings (``PCA(k=20, gradient='exact')``)."""
    return f"{type(layer).__name__}({layer.extra_repr()})"


def adaptive_gradients(layer: Preprocessor) -> tuple[str, ...]:
    """The gradient modes an adaptive attacker tries on ``layer``: the layer's own ``adaptive_gradients`` when it
    declares them; otherwise EOT for a randomized layer, BPDA for one without an exact gradient, and both the
    exact gradient and BPDA for a differentiable one (the exact gradient of a quantizer is zero, yet the exact
    gradient of a median filter beats BPDA)."""
    declared = getattr(layer, "adaptive_gradients", None)
    if declared:
        return tuple(declared)
    if layer.randomized:
        return ("eot",)
    return ("exact", "bpda") if layer.differentiable else ("bpda",)


@contextlib.contextmanager
def _gradients(layers: Sequence[Preprocessor], modes: Sequence[str]) -> Iterator[None]:
    saved = [layer.gradient for layer in layers]
    try:
        for layer, mode in zip(layers, modes):
            layer.gradient = mode
        yield
    finally:
        for layer, mode in zip(layers, saved):
            layer.gradient = mode


def _reseed(layers: Sequence[Preprocessor], seed: int) -> None:
    for layer in layers:
        if layer.randomized:
            layer.reseed(seed)


def check_budgets(eps: Any) -> list[float]:
    """``eps`` (a number or several) as a sorted list of distinct finite budgets > 0; raises :class:`InputError`."""
    values = [eps] if isinstance(eps, (int, float)) and not isinstance(eps, bool) else list(eps)
    if not values or any(isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e) or e <= 0
                         for e in values):
        raise InputError(f"eps must be one or more finite budgets > 0 in input units, got {eps!r}")
    return sorted({float(e) for e in values})


def verdict(result: dict[str, Any]) -> str:
    """The evaluation's conclusion in words: what the defense is worth once the attacker adapts, how much the
    oblivious attacker overstates it, and what it costs in clean accuracy."""
    rows, clean = result["rows"], result["clean_accuracy"]
    cost = clean["undefended"] - clean["defended"]
    gains = [(r["adaptive"] - r["undefended"], r) for r in rows]
    gain, at = max(gains, key=lambda t: t[0])
    over, over_at = max(((r["oblivious"] - r["adaptive"], r) for r in rows), key=lambda t: t[0])
    last = rows[-1]
    if gain < WORTHLESS:
        text = (f"Worth nothing once the attacker adapts: against the adaptive attack the defended model keeps "
                f"{last['adaptive']:.1%} at ε={last['eps']:g} (undefended {last['undefended']:.1%}), and at no "
                f"budget more than {max(gain, 0) * 100:.1f} points above the undefended model.")
    else:
        text = (f"Some robustness survives the adaptive attacker: {at['adaptive']:.1%} at ε={at['eps']:g} against "
                f"{at['undefended']:.1%} undefended (+{gain * 100:.1f} points); at ε={last['eps']:g} it keeps "
                f"{last['adaptive']:.1%} (undefended {last['undefended']:.1%}).")
    if over >= WORTHLESS:
        text += (f" The oblivious attacker overstates it by up to {over * 100:.1f} points ({over_at['oblivious']:.1%} "
                 f"at ε={over_at['eps']:g}).")
    text += (f" Clean accuracy {'falls' if cost > 0 else 'changes'} from {clean['undefended']:.1%} to "
             f"{clean['defended']:.1%}" + (f" ({clean['rejected']:.1%} of clean inputs rejected)"
                                          if clean.get("rejected") is not None else "") + ".")
    if clean["defended"] < 0.5 * clean["undefended"]:
        text += (" The defended model has lost most of its accuracy: what it keeps under attack is little more than "
                 "a near-constant prediction, not robustness.")
    return text + " Attacks give upper bounds: a stronger adaptive attack can only lower these numbers."


@validated
def evaluate(
    defended_model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    undefended: nn.Module | None = None,
    detector: Detector | None = None,
    eps: float | Iterable[float] = DEFAULT_EPS,
    norm: str = "linf",
    steps: int = 40,
    restarts: int = 1,
    eot_samples: int = 10,
    judge_samples: int = 20,
    batch_size: int = 256,
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
    progress: Callable[[str, float, float], None] | None = None,
) -> dict[str, Any]:
    """Robust accuracy of a preprocessing defense against the undefended, oblivious and adaptive attackers.

    Parameters
    ----------
    defended_model : the classifier with the defense inside it, first (``nn.Sequential(layer, classifier)``);
        its :class:`~adverse.defenses.preprocessing.Preprocessor` layers are found by type. Left as found (the
        layers' ``gradient`` is switched during the adaptive attacks and restored).
    x, y : clean inputs inside ``bounds`` and their labels.
    undefended : the model without the defense (default: ``defended_model`` with its preprocessing layers
        replaced by the identity); give it when the classifier was retrained behind the defense.
    detector : a fitted detector (:class:`~adverse.defenses.detection.Detector`, e.g. ``MagNet.detector``) whose
        flagged inputs the defense rejects.
    eps : the budgets (input units, > 0). norm : "linf", "l2" or "l1".
    steps, restarts : PGD's iterations and restarts (every attack here is PGD with cross-entropy, or the joint
        detector attack with a margin loss; against a randomized defense, ``steps`` steps without early stop from
        one random start).
    eot_samples : draws averaged per gradient for randomized layers (EOT).
    judge_samples : draws whose logits are averaged to classify with a randomized defense.
    batch_size : inputs per attack call. bounds : the input range. seed : every attack's and every draw's seed.
    progress : ``progress(description, completed, total)``.

    Returns
    -------
    dict
        ``n``, ``eps``, ``norm``, ``layers`` (their descriptions), ``detector`` (or None), ``clean_accuracy``
        {``undefended``, ``defended``, ``rejected`` (share of clean inputs flagged; None without detector)},
        ``rows``: per eps ``{eps, undefended, oblivious, adaptive, attacks: {name: robust accuracy}}`` (the first
        three are cumulative worst cases over budgets up to eps; ``attacks`` holds each adaptive attack alone),
        ``adaptive_attacks`` (their names), ``attack`` (settings), ``verdict`` (words), ``seconds``.

    References
    ----------
    Athalye, Carlini & Wagner, ICML 2018 (BPDA, EOT); Carlini & Wagner, AISec 2017 (detectors); Tramèr et al.,
    NeurIPS 2020 (adaptive evaluations).
    """
    from ..evasion import EOT, pgd
    from ..threat import check_norm
    from .detection import attack_detector

    started = time.perf_counter()
    if not isinstance(defended_model, nn.Module):
        raise ModelError(f"defended_model must be a torch.nn.Module returning logits, got "
                         f"{type(defended_model).__name__}")
    norm = check_norm(norm)
    eps_list = check_budgets(eps)
    if not (isinstance(judge_samples, int) and not isinstance(judge_samples, bool) and judge_samples >= 1):
        raise InputError(f"judge_samples must be an integer ≥ 1, got {judge_samples!r}")
    x, y = check_inputs(x, y, bounds)
    layers = preprocessing_layers(defended_model)
    if not layers and detector is None:
        raise InputError("defended_model holds no preprocessing layer (adverse.defenses.preprocessing.Preprocessor) "
                         "and no detector was given; put the defense first: nn.Sequential(layer, classifier)")
    if detector is not None and (not isinstance(detector, Detector) or detector.threshold_ is None):
        raise InputError("detector must be a fitted adverse.defenses.detection.Detector (e.g. MagNet(...).fit(x)"
                         ".detector); call its fit(x_clean) first")
    if undefended is None:
        undefended = without_preprocessing(defended_model)
    elif not isinstance(undefended, nn.Module):
        raise ModelError(f"undefended must be a torch.nn.Module returning logits, got {type(undefended).__name__}")
    randomized = any(layer.randomized for layer in layers)
    judge = EOT(defended_model, judge_samples) if randomized else defended_model
    target = EOT(defended_model, eot_samples) if randomized else defended_model
    combos = _combinations(layers)
    names = [_attack_name(combo, randomized, eot_samples) for combo in combos]
    batches = [(a, min(a + batch_size, x.shape[0])) for a in range(0, x.shape[0], batch_size)]
    total = float(len(eps_list) * (1 + len(combos)) * len(batches))
    done = 0.0

    def tick(what: str) -> None:
        if progress is not None:
            progress(what, done, total)

    def undefended_wrong(xs: Tensor) -> Tensor:
        with attack_mode(undefended), torch.no_grad():
            return torch.cat([undefended(xs[a:b]).argmax(dim=1) != y[a:b] for a, b in batches])

    def defended_outcome(xs: Tensor) -> tuple[Tensor, Tensor]:
        """Per sample: the defended model gets it wrong; the detector flags it (all False without one)."""
        wrong, flagged = [], []
        with attack_mode(judge), torch.no_grad():
            for a, b in batches:
                _reseed(layers, seed)
                wrong.append(judge(xs[a:b]).argmax(dim=1) != y[a:b])
                flagged.append(detector.predict(xs[a:b]) if detector is not None
                               else torch.zeros(b - a, dtype=torch.bool, device=xs.device))
        return torch.cat(wrong), torch.cat(flagged)

    def fooled_defended(xs: Tensor) -> Tensor:
        wrong, flagged = defended_outcome(xs)
        return wrong & ~flagged  # a rejected adversarial input is a defended one

    clean_wrong_undefended = undefended_wrong(x)
    wrong, flagged = defended_outcome(x)
    clean_wrong = wrong | flagged  # a rejected clean input is an error of the defended system
    rejected = float(flagged.double().mean()) if detector is not None else None

    def attack(xb: Tensor, yb: Tensor, e: float) -> Tensor:
        """PGD on the defended pipeline. A randomized one gets every step on every sample and the last iterate
        (each step's loss averages ``eot_samples`` draws): whether a noisy draw was fooled is no reason to stop."""
        if not randomized:
            return pgd(target, xb, yb, eps=e, norm=norm, steps=steps, restarts=restarts, bounds=bounds,
                       seed=seed).x_adv
        generator, _ = make_generator(seed, xb.device)
        with attack_mode(target):
            return maximize(Counted(target), xb, lambda z: F.cross_entropy(z, yb, reduction="none"), eps=e,
                            norm=norm, steps=steps, alpha=2.5 * e / steps, bounds=bounds, generator=generator)

    fooled = {"undefended": clean_wrong_undefended.clone(), "oblivious": clean_wrong.clone(),
              "adaptive": clean_wrong.clone()}
    rows = []
    for e in eps_list:
        tick(f"PGD on the undefended model at eps {e:g}")
        x_obl = torch.cat([pgd(undefended, x[a:b], y[a:b], eps=e, norm=norm, steps=steps, restarts=restarts,
                               bounds=bounds, seed=seed).x_adv for a, b in batches])
        done += len(batches)
        fooled["undefended"] |= undefended_wrong(x_obl)
        transfer = fooled_defended(x_obl)
        fooled["oblivious"] |= transfer
        per_attack: dict[str, float] = {}
        union = transfer.clone()
        for combo, name in zip(combos, names):
            tick(f"{name} at eps {e:g}")
            with _gradients(layers, combo):
                advs: dict[str, list[Tensor]] = {}
                for a, b in batches:
                    _reseed(layers, seed)
                    if detector is None:
                        found = {name: attack(x[a:b], y[a:b], e)}
                    else:
                        found = {f"{name}:{k}": v for k, v in attack_detector(
                            detector, target, x[a:b], y[a:b], eps=e, norm=norm, steps=steps, bounds=bounds,
                            seed=seed).items()}
                    for k, v in found.items():
                        advs.setdefault(k, []).append(v)
                    done += 1
                    tick(f"{name} at eps {e:g}")
            for k, parts in advs.items():
                hit = fooled_defended(torch.cat(parts)) | clean_wrong
                per_attack[k] = int((~hit).sum()) / x.shape[0]
                union |= hit
        fooled["adaptive"] |= union | fooled["oblivious"]
        rows.append({"eps": e, **{k: int((~v).sum()) / x.shape[0] for k, v in fooled.items()},
                     "attacks": per_attack})
    tick("done")
    result: dict[str, Any] = {
        "n": int(x.shape[0]), "eps": eps_list, "norm": norm,
        "layers": [describe(layer) for layer in layers],
        "detector": None if detector is None else f"{type(detector).__name__} (threshold {detector.threshold_:.4g}, "
                                                   f"calibration FPR {detector.realised_fpr_:.3f})",
        "clean_accuracy": {"undefended": int((~clean_wrong_undefended).sum()) / x.shape[0],
                           "defended": int((~clean_wrong).sum()) / x.shape[0], "rejected": rejected},
        "rows": rows,
        "adaptive_attacks": sorted(rows[0]["attacks"]) if rows else [],
        "attack": {"name": "pgd", "steps": steps, "restarts": restarts, "loss": "ce",
                   "eot_samples": eot_samples if randomized else None,
                   "judge_samples": judge_samples if randomized else None,
                   "joint_detector": detector is not None},
    }
    result["verdict"] = verdict(result)
    result["seconds"] = time.perf_counter() - started
    return result


def _combinations(layers: Sequence[Preprocessor]) -> list[tuple[str, ...]]:
    """The gradient settings to attack with: the i-th mode of every layer (its last one when it has fewer)."""
    prefs = [adaptive_gradients(layer) for layer in layers]
    out: list[tuple[str, ...]] = []
    for i in range(max((len(p) for p in prefs), default=1)):
        combo = tuple(p[min(i, len(p) - 1)] for p in prefs)
        if combo not in out:
            out.append(combo)
    return out


def _attack_name(combo: Sequence[str], randomized: bool, eot_samples: int) -> str:
    modes = "+".join(dict.fromkeys(combo)) if combo else "exact"
    if not randomized:
        return f"pgd-{modes}"
    return f"pgd-eot{eot_samples}" if modes == "eot" else f"pgd-{modes}-eot{eot_samples}"


__all__ = ["DEFAULT_EPS", "adaptive_gradients", "check_budgets", "describe", "evaluate", "preprocessing_layers", "verdict",
           "without_preprocessing"]
