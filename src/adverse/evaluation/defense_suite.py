"""The defense suite: what a preprocessing defense in front of the audited model is worth once the attacker adapts.

:func:`defense_suite` builds the named layer (:data:`LAYERS`), fits it on the model's training data with the
audit's seed, retrains the classifier behind it where the defense's paper does (with the training recipe), and
runs :func:`adverse.defenses.evaluate`: the undefended model, the defense against an oblivious attacker (adversarial
inputs crafted on the undefended model) and against adaptive attackers (exact gradients and BPDA, EOT for
randomized layers, the detector and classifier attacked jointly for MagNet), with the clean-accuracy cost and a
verdict in words. It returns the JSON-ready dictionary the audit stores as ``results["defense"]`` and
:func:`adverse.evaluation.report.render_report` draws.

A layer is named as on the command line, ``name:option=value,option=value`` (``pca:k=20``), or as a mapping
``{"name": "pca", "k": 20}`` (a TOML ``[defense]`` table's ``layer``).

References
----------
Bhagoji et al., CISS 2018 (PCA). Zhang et al., IEEE Trans. Cybernetics 2016 (feature selection). Meng & Chen,
CCS 2017 (MagNet). Guo et al., ICLR 2018 (TV minimization). Athalye, Carlini & Wagner, ICML 2018; Carlini & Wagner,
arXiv:1711.08478, 2017 (the breaks).
"""

from __future__ import annotations

import importlib
import inspect
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from ..validation import validated
from . import html
from .common import DEFAULT_EPS, ProgressFn, SuiteContext, json_safe
from .suites import Suite

if TYPE_CHECKING:
    from torch import nn

    from ..data import Dataset

# name -> (module, class, whether the classifier is retrained behind the layer: "required" (the defense is a
# retrained classifier), "paper" (the paper trains it on transformed inputs; done when a recipe is known), "no")
LAYERS: dict[str, tuple[str, str, str]] = {
    "pca": ("adverse.defenses.dimensionality", "PCA", "paper"),
    "feature-selection": ("adverse.defenses.feature_selection", "FeatureSelection", "required"),
    "magnet": ("adverse.defenses.denoising", "MagNet", "no"),
    "tv": ("adverse.defenses.denoising", "TVMinimization", "paper"),
    "bit-depth": ("adverse.defenses.preprocessing", "BitDepth", "no"),
    "jpeg": ("adverse.defenses.preprocessing", "JPEG", "no"),
    "median": ("adverse.defenses.preprocessing", "MedianFilter", "no"),
    "noise": ("adverse.defenses.preprocessing", "GaussianNoise", "no"),
    "resize-pad": ("adverse.defenses.preprocessing", "RandomResizePad", "no"),
}
_SET_BY_SUITE = {"bounds", "seed"}


def _value(text: str) -> Any:
    """A command-line option value: true/false, an integer, a number, or else the text itself."""
    t = text.strip()
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    for kind in (int, float):
        try:
            return kind(t)
        except ValueError:
            pass
    return t


def parse_layer(spec: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``"pca:k=20"`` or ``{"name": "pca", "k": 20}`` → ``("pca", {"k": 20})``, the name checked against
    :data:`LAYERS` and the options against the layer's parameters (raises :class:`InputError` naming the fix)."""
    if isinstance(spec, Mapping):
        options = dict(spec)
        name = options.pop("name", None)
        if not isinstance(name, str):
            raise InputError(f"a defense layer table needs its name, e.g. layer = {{ name = \"pca\", k = 20 }}; "
                             f"got {dict(spec)!r}")
    elif isinstance(spec, str) and spec.strip():
        name, _, rest = spec.strip().partition(":")
        options = {}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = part.partition("=")
            if not eq or not key.strip():
                raise InputError(f"defense option {part!r} is not key=value; write e.g. --defense pca:k=20,gradient=exact")
            options[key.strip()] = _value(value)
    else:
        raise InputError(f"name the defense layer, e.g. 'pca:k=20' (--defense) or {{name = \"pca\", k = 20}}; "
                         f"got {spec!r}")
    name = name.strip().lower()
    if name not in LAYERS:
        raise InputError(f"unknown defense {name!r}; choose one of {', '.join(LAYERS)}")
    allowed = _parameters(name) - _SET_BY_SUITE
    bad = sorted(set(options) - allowed)
    if bad:
        hint = " (the suite sets bounds and seed)" if set(bad) & _SET_BY_SUITE else ""
        raise InputError(f"unknown option(s) {bad} for the {name} defense{hint}; it takes {', '.join(sorted(allowed))}")
    return name, options


def _class(name: str) -> type:
    module, cls, _ = LAYERS[name]
    return getattr(importlib.import_module(module), cls)


def _parameters(name: str) -> set[str]:
    sig = inspect.signature(_class(name).__init__)
    return {p.name for p in sig.parameters.values() if p.name != "self" and p.kind != p.VAR_KEYWORD}


def build_layer(spec: str | Mapping[str, Any], *, bounds: tuple[float, float] = (0.0, 1.0), seed: int = 0) -> Any:
    """The (unfitted) layer ``spec`` names, with the data's ``bounds`` and the ``seed``."""
    name, options = parse_layer(spec)
    accepted = _parameters(name)
    params = inspect.signature(_class(name).__init__).parameters.values()
    missing = [p.name for p in params if p.name != "self" and p.default is p.empty and p.name not in options
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if missing:
        example = ",".join(f"{m}=..." for m in missing)
        raise InputError(f"the {name} defense needs {', '.join(missing)}: e.g. --defense {name}:{example}")
    extra = {k: v for k, v in (("bounds", tuple(bounds)), ("seed", seed)) if k in accepted}
    return _class(name)(**options, **extra)


def _retrain(name: str, retrain: bool | None, has_recipe: bool) -> bool:
    mode = LAYERS[name][2]
    if retrain is None:
        if mode == "required" and not has_recipe:
            raise InputError(f"the {name} defense is a classifier trained on the selected features: it needs the "
                             "training recipe (recipe=, --recipe)")
        return mode == "required" or (mode == "paper" and has_recipe)
    if not isinstance(retrain, bool):
        raise InputError(f"retrain must be true, false or left out (as the defense's paper does), got {retrain!r}")
    if retrain and not has_recipe:
        raise InputError("retrain=True trains the classifier behind the defense: it needs the training recipe "
                         "(recipe=, --recipe)")
    if mode == "required" and not retrain:
        raise InputError(f"the {name} defense is a classifier trained on the selected features; it cannot be "
                         "evaluated with retrain=False")
    return retrain


def check_layer(spec: Any, *, model: Any = None, train: bool = True, recipe: bool = False,
                retrain: bool | None = None) -> tuple[str, dict[str, Any]]:
    """Check, before any work, that the defense suite can run: the layer and its options (built once, so bad
    values are refused now), a torch model, the training data when the layer is fitted, the recipe when the
    classifier is retrained. Returns ``parse_layer(spec)``."""
    from torch import nn

    if spec is None:
        raise InputError("the defense suite needs a layer: --defense pca:k=20 on the command line, layer = \"pca\" in "
                         "the [defense] table, or defense={\"layer\": \"pca\"}; layers: " + ", ".join(LAYERS))
    name, options = parse_layer(spec)
    layer = build_layer(spec)
    if model is not None and not isinstance(model, nn.Module):
        raise InputError("the defense suite puts a layer in front of a torch module; this model is a black box "
                         "(e.g. an ONNX file without onnx2torch)")
    if hasattr(layer, "fit") and not train:
        raise InputError(f"the {name} defense is fitted on the model's training data: pass train_data= "
                         "(--train-data on the command line)")
    needs = _retrain(name, retrain, recipe)
    if needs and not train:
        raise InputError(f"retraining the classifier behind the {name} defense needs the training data: pass "
                         "train_data= (--train-data)")
    return name, options


@validated
def defense_suite(
    model: nn.Module,
    data: Dataset,
    *,
    layer: str | Mapping[str, Any] | None = None,
    train: Dataset | None = None,
    recipe: Callable[[Any, int], Any] | None = None,
    eps: float | Iterable[float] = DEFAULT_EPS,
    norm: str = "linf",
    n: int | None = 200,
    steps: int = 40,
    eot_samples: int = 10,
    judge_samples: int = 20,
    retrain: bool | None = None,
    batch_size: int = 256,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Evaluate the preprocessing defense ``layer`` in front of ``model`` on the first ``n`` samples of ``data``.

    Parameters
    ----------
    model : the audited torch module (the undefended model; left as found).
    data : the held-out data, an :class:`adverse.data.Dataset` (e.g. ``adverse.data.digits("test")``).
    layer : the defense, ``"name:option=value,..."`` or ``{"name": ..., option: value}``; names in
        :data:`LAYERS` (pca, feature-selection, magnet, tv, bit-depth, jpeg, median, noise, resize-pad), options
        those of the layer's class (e.g. ``pca:k=20``, ``magnet:epochs=50``, ``tv:keep=0.5,weight=0.03``).
    train : the model's training data (a Dataset): the layer is fitted on it (PCA, feature selection, MagNet), and the
        classifier retrained on its transformed version.
    recipe : ``recipe(dataset, seed) -> model``, how the model was trained.
    eps, norm : the budgets (> 0) and the threat model.
    n : how many samples, from the start of ``data`` (None: all).
    steps, eot_samples, judge_samples, batch_size : :func:`adverse.defenses.evaluate`'s.
    retrain : retrain the classifier behind the layer on transformed training data (with ``recipe``). None does
        what the defense's paper does: always for feature selection, for PCA and TV minimization when a recipe is
        known, never for MagNet and the fixed filters.
    seed : the layer's fit, the retraining and every attack.
    progress : ``progress(description, completed, total)``.

    Returns
    -------
    dict
        :func:`adverse.defenses.evaluate`'s result (``clean_accuracy``, ``rows``, ``adaptive_attacks``,
        ``verdict``, ...) plus ``layer`` {``name``, ``options``, ``description``}, ``retrained`` (bool),
        ``config`` and ``seconds`` {``fit``, ``retrain``, ``evaluate``}.

    Raises
    ------
    InputError : an unknown layer or option, a missing training set or recipe, a bad budget (before any work).
    """
    import torch
    from torch import nn

    from ..data import Dataset
    from ..defenses.evaluation import check_budgets, describe, evaluate
    from ..threat import check_norm
    from ..zoo import train_with

    for what, value in (("data", data), ("train", train)):
        if value is not None and not isinstance(value, Dataset):
            raise InputError(f"{what} must be an adverse.data.Dataset (e.g. adverse.data.digits('test') or "
                             f"adverse.data.load_npz(path)), got {type(value).__name__}")
    dataset, members = data, train
    norm = check_norm(norm)
    check_budgets(eps)
    name, options = check_layer(layer, model=model, train=members is not None, recipe=recipe is not None,
                                retrain=retrain)
    retrained = _retrain(name, retrain, recipe is not None)
    if n is not None:
        if n > len(dataset):
            raise InputError(f"n={n} but the data has only {len(dataset)} samples; pass n ≤ {len(dataset)}")
        dataset = dataset.subset(n)
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")

    def step(what: str) -> None:
        if progress is not None:
            progress(what, 0, 1)

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    defense = build_layer(layer, bounds=dataset.bounds, seed=seed).to(device)
    if hasattr(defense, "fit"):
        step(f"fitting the {name} defense on {len(members)} training samples")
        defense.fit(members.x.to(device), members.y.to(device))
    seconds["fit"] = time.perf_counter() - t0
    classifier = model
    t0 = time.perf_counter()
    if retrained:
        step(f"retraining the classifier behind the {name} defense")
        with torch.no_grad():
            if defense.randomized:
                defense.reseed(seed)
            transformed = defense(members.x.to(device)).cpu()
        classifier = train_with(recipe, Dataset(transformed, members.y, members.name, members.num_classes,
                                                members.bounds), seed)
    seconds["retrain"] = time.perf_counter() - t0
    detector = defense.detector if getattr(type(defense), "detector", None) is not None else None
    t0 = time.perf_counter()
    found = evaluate(nn.Sequential(defense, classifier), dataset.x.to(device), dataset.y.to(device),
                     undefended=model, detector=detector, eps=eps, norm=norm, steps=steps,
                     eot_samples=eot_samples, judge_samples=judge_samples, batch_size=batch_size,
                     bounds=dataset.bounds, seed=seed, progress=progress)
    seconds["evaluate"] = time.perf_counter() - t0
    found.pop("seconds", None)
    return json_safe({
        **found,
        "layer": {"name": name, "options": options, "description": describe(defense)},
        "retrained": retrained,
        "config": {"layer": name, "options": options, "eps": found["eps"], "norm": norm, "n": n, "steps": steps,
                   "eot_samples": eot_samples, "judge_samples": judge_samples, "retrain": retrain,
                   "batch_size": batch_size, "seed": seed, "bounds": [float(b) for b in dataset.bounds]},
        "seconds": seconds,
    })


__all__ = ["LAYERS", "build_layer", "check_layer", "defense_suite", "parse_layer"]


def _run(ctx: SuiteContext, **options: Any) -> dict[str, Any]:
    """The defense suite in an audit: evaluated on the first ``n`` samples (at most the audit's ``n``), fitted on
    the training data."""
    k = ctx.take_n(options, defense_suite)
    data = ctx.data.take(min(len(ctx.data), k or len(ctx.data)))
    return defense_suite(ctx.model, data, train=ctx.members, recipe=ctx.recipe, norm=ctx.norm, eps=ctx.eps,
                         seed=ctx.seed, progress=ctx.progress, n=k, **options)


def _check(ctx: SuiteContext, options: Mapping[str, Any]) -> None:
    check_layer(options.get("layer"), model=ctx.model, train=ctx.members is not None, recipe=ctx.recipe is not None,
                retrain=options.get("retrain"))


def _summary(results: Mapping[str, Any]) -> str | None:
    """The defense's verdict, named by its layer."""
    if not results.get("verdict"):
        return None
    layer = results.get("layer") or {}
    return (f"<b>Defense ({html.escape(layer.get('description', layer.get('name', '')))}).</b> "
            f"{html.escape(results['verdict'])}")


SUITE = Suite(
    name="defense", key="defense", function=defense_suite, run=_run, check=_check, needs=frozenset(), default=False,
    what="a preprocessing defense against oblivious and adaptive attackers", samples=lambda result: result["n"],
    summary=_summary, passed={"model", "data", "train", "recipe", "norm", "eps", "seed", "progress"},
)
