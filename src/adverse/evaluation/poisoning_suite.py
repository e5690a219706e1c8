"""The poisoning suite: how a BadNets backdoor grows with the poison rate, and what training-set poison
detection leaves of it.

:func:`poisoning_suite` is a pure function of a training recipe and the data; it returns the JSON-ready
dictionary that the audit stores as ``results["poisoning"]`` and that
:func:`adverse.evaluation.report.render_report` draws. It uses the attacks, metrics and detectors of
:mod:`adverse.poisoning` and :mod:`adverse.defenses.poison_detection` and never re-implements one:

1. for each poison rate, poison the training set with BadNets, train a model with the recipe and measure its
   clean accuracy and the attack success rate (ASR) on triggered test inputs of the non-target classes;
2. at ``detect_rate``, run each detector on the poisoned training set with the poisoned model, score it against
   the truth (AUROC, TPR/FPR of the detector's own decision, TPR at a fixed FPR), remove the flagged samples,
   retrain with the recipe and measure clean accuracy and ASR again. Activation clustering decides by
   exclusionary reclassification (one more training per detection: a model without the suspect clusters must
   still classify them as their labels), the analysis that holds at every poison rate.

Metric definitions are BackdoorBench's (C-Acc, ASR).

References
----------
Gu, Dolan-Gavitt & Garg, "BadNets: Identifying Vulnerabilities in the Machine Learning Model Supply Chain",
arXiv:1708.06733, 2017.
Chen, Carvalho, Baracaldo, Ludwig, Edwards, Lee, Molloy & Srivastava, "Detecting Backdoor Attacks on Deep Neural
Networks by Activation Clustering", arXiv:1811.03728, 2018.
Tran, Li & Madry, "Spectral Signatures in Backdoor Attacks", NeurIPS 2018.
Wu et al., "BackdoorBench: A Comprehensive Benchmark of Backdoor Learning", NeurIPS 2022 Datasets and Benchmarks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import InputError, ModelError
from . import html
from .common import ProgressFn, SuiteContext, check_int
from .suites import Suite

if TYPE_CHECKING:
    from torch import nn

    from ..data import Dataset
    from ..defenses.poison_detection import PoisonScores
    from ..poisoning.data import PoisonedData

DETECTORS = ("activation_clustering", "spectral_signatures")
MAX_SHARE = 0.6
"""The largest poison share of a label spectral signatures is told to expect (it removes 1.5 × that of every label)."""
Recipe = Callable[["Dataset", int], "nn.Module"]


# --------------------------------------------------------------------------------------------- helpers
def _finite(value: float) -> float | None:
    """A metric as a JSON-ready number: ``None`` where it is undefined (NaN), e.g. AUROC without poisons."""
    return None if value is None or math.isnan(value) else float(value)


def _check_rates(rates: float | Iterable[float]) -> list[float]:
    from ..poisoning._common import check_rate

    values = [rates] if isinstance(rates, (int, float)) else list(rates)
    if not values:
        raise InputError("rates is empty; pass at least one poison rate, e.g. rates=(0.0, 0.05)")
    values = [check_rate(r, "every poison rate") for r in values]
    if len(set(values)) != len(values):
        raise InputError(f"rates lists a value twice: {values}; list each poison rate once")
    return sorted(values)


def _check_detectors(detectors: str | Iterable[str]) -> list[str]:
    names = [detectors] if isinstance(detectors, str) else list(detectors)
    unknown = [d for d in names if d not in DETECTORS]
    if unknown:
        raise InputError(f"unknown detector(s) {unknown}; choose among {', '.join(DETECTORS)}")
    if len(set(names)) != len(names):
        raise InputError(f"detectors lists a detector twice: {names}")
    return names


def representation_layer(model: nn.Module) -> str:
    """The layer whose input the detectors read, by name: for a convolutional network the first ``nn.Linear``
    after the last convolution (its input is the flattened convolutional features), otherwise the last
    ``nn.Linear`` (its input is the last hidden layer, the papers' choice).

    On :class:`adverse.zoo.SmallCNN` this is ``"head.1"``: with 5 % BadNets on digits, activation clustering on
    the convolutional features finds every poison, on the last hidden layer 62 % (benchmarks/BENCHMARKS.md).
    """
    from torch import nn

    named = [(name, m) for name, m in model.named_modules() if name]
    convs = [i for i, (_, m) in enumerate(named) if isinstance(m, nn.modules.conv._ConvNd)]
    linears = [i for i, (_, m) in enumerate(named) if isinstance(m, nn.Linear)]
    after = [i for i in linears if convs and i > convs[-1]]
    if after:
        return named[after[0]][0]
    if linears:
        return named[linears[-1]][0]
    raise ModelError(f"{type(model).__name__} has no nn.Linear layer whose input the poison detectors could read; "
                     "pass layer= naming the module whose input is the representation")


def _detect(name: str, model: nn.Module, poisoned: PoisonedData, layer: str, seed: int,
            retrain: Callable[[Dataset, int], nn.Module]) -> PoisonScores:
    """Run detector ``name`` on the poisoned training set with the poisoned model.

    Activation clustering decides with Chen et al.'s exclusionary reclassification (``retrain``: the recipe):
    it holds at every poison rate, where the relative-size rule breaks once poisons are a large share of their
    label (benchmarks/BENCHMARKS.md, "Poison defenses"). Spectral signatures removes ``1.5 ε`` of every label,
    where ε bounds the poisons' share of a label: with an all-to-one backdoor at rate ``ρ`` over ``K`` classes that
    share is at most ``ρK / (1 + ρK)`` (every poison relabelled to one class of about ``n / K`` samples), capped
    at :data:`MAX_SHARE` (removing more than 1.5 × 0.6 of every label leaves too little to train on).
    """
    from ..defenses.poison_detection import activation_clustering, spectral_signatures

    data = poisoned.dataset()
    if name == "activation_clustering":
        return activation_clustering(model, data, layer=layer, seed=seed, analysis="exclusionary", train_fn=retrain)
    share = poisoned.poison_rate * data.num_classes
    return spectral_signatures(model, data, expected_fraction=min(share / (1 + share), MAX_SHARE), layer=layer)


def _attack_row(recipe: Recipe, train: Dataset, test: Dataset, rate: float, *, target: int, size: int,
                seed: int) -> tuple[dict[str, Any], PoisonedData, nn.Module]:
    """BadNets at ``rate``, a model trained on it, and its clean accuracy and ASR."""
    from ..poisoning import backdoor_metrics, badnets
    from ..zoo import train_with

    started = time.perf_counter()
    poisoned = badnets(train, target=target, rate=rate, size=size, seed=seed)
    model = train_with(recipe, poisoned.dataset(), seed)
    m = backdoor_metrics(model, poisoned, test)
    row = {"attack": "badnets", "poison_rate": rate, "n_poison": int(poisoned.indices.numel()),
           "attack_success_rate": _finite(m["asr"]), "clean_accuracy": _finite(m["clean_accuracy"]),
           "seconds": time.perf_counter() - started}
    return row, poisoned, model


def _detector_row(recipe: Recipe, name: str, model: nn.Module, poisoned: PoisonedData, test: Dataset,
                  before: dict[str, Any], *, layer: str, fpr: float, seed: int) -> dict[str, Any]:
    """Detection quality of ``name`` and the backdoor left after removing what it flagged and retraining
    (``before``: the attack row of the poisoned model)."""
    from ..zoo import train_with

    started = time.perf_counter()
    def retrain(data: Dataset, s: int) -> nn.Module:
        return train_with(recipe, data, s)

    scores = _detect(name, model, poisoned, layer, seed, retrain)
    params = {"layer": layer, **{k: v for k, v in scores.details.items() if isinstance(v, (str, int, float))}}
    out = scores.outcome(retrain, poisoned, test, fpr=fpr, seed=seed)
    q, after = out["detection"], out["after_removal"]
    return {
        "detector": name, "poison_rate": float(poisoned.params["rate"]), "params": params, "auroc": _finite(q["auroc"]),
        "tpr": _finite(q["tpr"]), "fpr": _finite(q["fpr"]),
        "tpr_at_fpr": {f"{fpr:g}": _finite(q[f"tpr_at_fpr_{fpr:g}"])},
        "before": {k: before[k] for k in ("clean_accuracy", "attack_success_rate")},
        "after": {"clean_accuracy": _finite(after["clean_accuracy"]), "attack_success_rate": _finite(after["asr"]),
                  "removed": int(q["flagged"])},
        "notes": list(scores.notes), "seconds": time.perf_counter() - started,
    }


# --------------------------------------------------------------------------------------------- the suite
def poisoning_suite(
    recipe: Recipe,
    train: Dataset,
    test: Dataset,
    *,
    rates: float | Sequence[float] = (0.0, 0.01, 0.05),
    target: int = 0,
    size: int = 2,
    detect_rate: float = 0.05,
    detectors: str | Sequence[str] = DETECTORS,
    fpr: float = 0.05,
    layer: str | None = None,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """BadNets at each poison rate against a model trained by ``recipe``, and poison detection at
    ``detect_rate`` followed by removal and retraining.

    Parameters
    ----------
    recipe : ``recipe(dataset, seed) -> trained nn.Module``, the victim's training (e.g.
        ``adverse.poisoning.trainer(SmallCNN, epochs=30)``); called once per rate not equal to ``detect_rate``,
        once more for ``detect_rate`` if it is not among ``rates``, and once per detector.
    train, test : the clean training set and the test set (:class:`adverse.data.Dataset`).
    rates : poison rates (shares of the whole training set) in [0, 1].
    target : the backdoor's target class.
    size : side of the square white BadNets patch (bottom-right corner), in pixels.
    detect_rate : the poison rate the detectors are run at (the model trained at this rate is reused when it is
        among ``rates``).
    detectors : a subset of ("activation_clustering", "spectral_signatures"); empty for no detection.
    fpr : the false-positive rate at which the TPR of each detector's ranking is reported.
    layer : the module whose input the detectors read; default :func:`representation_layer` (``"head.1"``, the
        convolutional features, on :class:`adverse.zoo.SmallCNN`).
    seed : which samples are poisoned, the recipe's seed and the detectors' seed.
    progress : ``progress(description, completed, total)``, in trainings.

    Returns
    -------
    dict
        ``{"attacks": [...], "detectors": [...], "config": {...}}``; each attack row has ``attack``,
        ``poison_rate``, ``n_poison``, ``attack_success_rate``, ``clean_accuracy``, ``seconds``; each detector row
        ``detector``, ``poison_rate``, ``params`` (layer and the detector's settings), ``auroc``, ``tpr``, ``fpr``,
        ``tpr_at_fpr`` (``{"0.05": ...}``), ``before`` (``clean_accuracy``, ``attack_success_rate`` of the poisoned
        model), ``after`` (the same after removal and retraining, and ``removed``), ``notes`` (sentences saying
        where the detector's assumptions do not hold, e.g. poisons too large a share of their label for the size
        rule) and ``seconds``. Plain numbers and strings only; an undefined metric is ``None``.

    Raises
    ------
    InputError : bad data, rates, target, detectors or fpr, or a recipe that is not callable (before any work).
    ModelError : the recipe returns something other than a torch module, or the model has no layer for the
        detectors.
    """
    from ..poisoning._common import check_class, check_data, check_rate

    if not callable(recipe):
        raise InputError(f"recipe must be a function recipe(dataset, seed) -> trained model, got "
                         f"{type(recipe).__name__}; see adverse.poisoning.trainer")
    check_data(train)
    check_data(test)
    if train.x.shape[1:] != test.x.shape[1:] or train.num_classes != test.num_classes:
        raise InputError(f"train and test disagree: inputs {tuple(train.x.shape[1:])} vs {tuple(test.x.shape[1:])}, "
                         f"{train.num_classes} vs {test.num_classes} classes")
    rate_list = _check_rates(rates)
    target = check_class(target, train.num_classes, "target")
    size = check_int("size", size, 1)
    detect_rate = check_rate(detect_rate, "detect_rate")
    names = _check_detectors(detectors)
    if names and detect_rate == 0:
        raise InputError("detect_rate is 0: there are no poisons to detect; pass detect_rate > 0 or detectors=()")
    fpr = check_rate(fpr, "fpr")
    seed = check_int("seed", seed, 0)

    extra = 1 if names and not any(math.isclose(r, detect_rate) for r in rate_list) else 0
    total = len(rate_list) + extra + len(names)
    done = 0

    def step(description: str) -> None:
        if progress is not None:
            progress(description, done, total)

    attacks, trained = [], {}
    for rate in rate_list:
        step(f"BadNets at rate {rate:g}: training")
        row, poisoned, model = _attack_row(recipe, train, test, rate, target=target, size=size, seed=seed)
        attacks.append(row)
        trained[rate] = (row, poisoned, model)
        done += 1
    rows: list[dict[str, Any]] = []
    chosen = layer
    if names:
        key = next((r for r in trained if math.isclose(r, detect_rate)), None)
        if key is None:
            step(f"BadNets at rate {detect_rate:g} for the detectors: training")
            before, poisoned, model = _attack_row(recipe, train, test, detect_rate, target=target, size=size,
                                                  seed=seed)
            done += 1
        else:
            before, poisoned, model = trained[key]
        chosen = representation_layer(model) if layer is None else layer
        for name in names:
            step(f"{name} at rate {detect_rate:g}: detection and retraining")
            rows.append(_detector_row(recipe, name, model, poisoned, test, before, layer=chosen, fpr=fpr,
                                      seed=seed))
            done += 1
    step("poisoning suite done")
    return {
        "attacks": attacks, "detectors": rows,
        "config": {"attack": "badnets", "rates": rate_list, "target": target, "size": size,
                   "position": "bottom-right", "value": 1.0, "detect_rate": detect_rate, "detectors": names,
                   "fpr": fpr, "layer": chosen, "seed": seed, "n_train": len(train), "n_test": len(test)},
    }


__all__ = ["DETECTORS", "poisoning_suite", "representation_layer"]


def _run(ctx: SuiteContext, **options: Any) -> dict[str, Any]:
    """The poisoning suite in an audit: tested on the first ``n`` samples (all without ``n``), in memory."""
    test = ctx.data.take(len(ctx.data) if ctx.n is None else ctx.n)
    return poisoning_suite(ctx.recipe, ctx.members, test, seed=ctx.seed, progress=ctx.progress, **options)


def _summary(results: Mapping[str, Any]) -> str | None:
    """The backdoor at the largest poison rate: its attack success and the clean accuracy, in words."""
    rows = [r for r in results.get("attacks") or [] if isinstance(r, Mapping)]
    if not rows:
        return None
    top = max(rows, key=lambda r: r.get("poison_rate", 0))
    return (f"<b>Poisoning.</b> Retrained with {html.pct(top['poison_rate'])} of its training data poisoned by a "
            f"BadNets trigger, the model sends {html.pct(top['attack_success_rate'])} of triggered inputs to the "
            f"attacker's class while its clean accuracy is {html.pct(top.get('clean_accuracy'))}.")


SUITE = Suite(
    name="poisoning", key="poisoning", function=poisoning_suite, run=_run, needs=frozenset({"members", "recipe"}),
    default=True, what="how easily the training can be backdoored, and whether the detectors find it",
    samples=lambda result: result["config"]["n_test"], summary=_summary, passed={"recipe", "train", "test", "seed", "progress"},
)
