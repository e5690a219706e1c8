"""The audit's privacy suite: how well an attacker can tell the model's training points from other points.

:func:`privacy_suite` evaluates membership inference on a balanced sample of known members (points of the
model's training set) and non-members (points it never saw), with the attacks of :mod:`adverse.privacy`:

* always, the metric attacks that need only the model's outputs: loss (Yeom et al. 2018), confidence, entropy
  and modified entropy (Song & Mittal 2021);
* for image classifiers, model inversion: MI-Face (Fredrikson et al. 2015) reconstructs one input per class from
  the model's confidences; an independent classifier (an RBF SVM fitted on the non-members) judges whether the
  reconstructions look like their class, next to the same attack on an untrained copy of the model (the
  sanity baseline, at chance);
* when the model's training recipe is given, the attacks that calibrate per example on reference models
  trained on random halves of the data: LiRA (Carlini et al. 2022; online, fixed variance) and RMIA (Zarifzadeh
  et al. 2024; offline). Both also run against a model trained on disjoint data, the sanity baseline whose AUC
  should be about 0.5.

Each attack's row holds its AUC, balanced accuracy, TPR at low FPR with bootstrap intervals, the ROC (thinned for
the log-log figure) and any caveat, in the shape the report renders. Nothing is cached between calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from . import html
from .common import SuiteContext, json_safe, option_default
from .suites import Suite

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..data import Dataset

THRESHOLD_SIGNALS = ("loss", "confidence", "entropy", "modified_entropy")
REFERENCE_ATTACKS = ("lira", "rmia")
ATTACKS = THRESHOLD_SIGNALS + REFERENCE_ATTACKS
DEFAULT_FPRS = (0.001, 0.01, 0.1)
ROC_POINTS = 400

ProgressFn = Callable[[str, float, float], None]
Recipe = Callable[["Dataset", int], "nn.Module"]


class _RecipeTrainFn:
    """``train_fn(x, y, seed)`` of :class:`~adverse.privacy.ReferenceModels` from a recipe ``(dataset, seed)``;
    a class (not a closure) so that executors can ship it to workers."""

    def __init__(self, recipe: Recipe, like: Dataset) -> None:
        self.recipe, self.name, self.num_classes, self.bounds = recipe, like.name, like.num_classes, like.bounds

    def __call__(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
        from ..data import Dataset
        from ..zoo import train_with

        return train_with(self.recipe, Dataset(x, y, self.name, self.num_classes, self.bounds), seed)


def thin_roc(fpr: np.ndarray, tpr: np.ndarray, points: int = ROC_POINTS) -> dict[str, list[float]]:
    """At most about ``points`` ROC vertices, spread evenly in log(FPR) so the low-FPR end keeps its detail,
    always with the first and last vertex."""
    if len(fpr) <= points:
        keep = np.arange(len(fpr))
    else:
        grid = np.concatenate([[0.0], np.geomspace(max(float(fpr[fpr > 0].min(initial=1.0)), 1e-6), 1.0, points)])
        keep = np.unique(np.concatenate([[0, len(fpr) - 1], np.searchsorted(fpr, grid, side="right") - 1]))
        keep = keep[(keep >= 0) & (keep < len(fpr))]
    return {"fpr": [float(v) for v in fpr[keep]], "tpr": [float(v) for v in tpr[keep]]}


def _row(name: str, scores: Any, is_member: torch.Tensor, fprs: Sequence[float], seed: int, params: dict[str, Any],
         seconds: float, baseline_scores: Any = None, note: str = "") -> dict[str, Any]:
    from ..privacy import evaluate

    ev = evaluate(scores, is_member, fprs=tuple(fprs), n_bootstrap=200, seed=seed)
    row = {"attack": name, **ev.summary(), "roc": thin_roc(ev.fpr, ev.tpr), "params": params, "seconds": seconds}
    if baseline_scores is not None:
        base = evaluate(baseline_scores, is_member, fprs=tuple(fprs), n_bootstrap=0)
        row["baseline"] = {"auc": base.auc, "tpr_at_fpr": {str(k): v for k, v in base.tpr_at_fpr.items()}}
    elif note:
        row["baseline_note"] = note
    return row


def _check_attacks(attacks: Sequence[str] | None, with_recipe: bool) -> list[str]:
    if attacks is None:
        return list(ATTACKS if with_recipe else THRESHOLD_SIGNALS)
    names = [attacks] if isinstance(attacks, str) else list(attacks)
    unknown = [a for a in names if a not in ATTACKS]
    if unknown or not names:
        raise InputError(f"unknown privacy attack(s) {unknown}; choose among {', '.join(ATTACKS)}")
    needs = [a for a in names if a in REFERENCE_ATTACKS]
    if needs and not with_recipe:
        raise InputError(f"{', '.join(needs)} train reference models and need the model's training recipe "
                         "(recipe=..., or --recipe on the command line); without one, use the threshold attacks "
                         f"{', '.join(THRESHOLD_SIGNALS)}")
    return [a for a in ATTACKS if a in names]


def _sample(n_total: int, k: int, gen: torch.Generator) -> torch.Tensor:
    import torch

    return torch.randperm(n_total, generator=gen)[:k]


def privacy_suite(
    model: nn.Module,
    members: Dataset,
    nonmembers: Dataset,
    *,
    recipe: Recipe | None = None,
    n: int = 500,
    references: int = 8,
    attacks: Sequence[str] | None = None,
    fprs: Sequence[float] = DEFAULT_FPRS,
    seed: int = 0,
    inversion: bool = True,
    inversion_steps: int = 300,
    executor: Any = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Membership inference against ``model`` on a balanced sample of members and non-members, and model
    inversion where it applies.

    Parameters
    ----------
    model : the audited model (a torch module returning logits), trained on ``members`` (and more, possibly).
    members : points the model was trained on (e.g. its training set).
    nonmembers : points it never saw (e.g. the test set).
    recipe : how the model was trained, ``recipe(dataset, seed) -> model`` (e.g. ``adverse.zoo.recipe(...)``).
        With it, ``references`` reference models are trained on random halves of a pool made of all of
        ``members`` and the evaluated non-members, for LiRA and RMIA, plus one model on held-out non-members for
        the sanity baseline. Without it only the threshold attacks run.
    n : at most this many members and as many non-members are evaluated (fewer if the data is smaller; with a
        recipe, non-members are split between evaluation and the held-out population that RMIA compares with
        and the baseline trains on).
    references : reference models (≥ 4 for online LiRA).
    attacks : a subset of :data:`ATTACKS` (default: all that apply).
    fprs : the false-positive rates at which the TPR is reported; those below ``1 / n`` (which ``n`` non-members
        cannot resolve) are left out and listed in ``config["fprs_below_resolution"]``.
    seed : the samples, the reference models' halves and seeds, and the bootstrap.
    inversion : run MI-Face when the model is a torch module on images (inputs of shape (c, h, w)).
    inversion_steps : MI-Face's most gradient steps per class.
    executor : where reference models train (:func:`adverse.execution.get_executor`).
    progress : ``progress(description, completed, total)``.

    Returns
    -------
    dict
        ``attacks``: one row per attack (``attack``, ``auc``, ``balanced_accuracy``, ``tpr_at_fpr``, ``ci``,
        ``n_members``, ``n_nonmembers``, ``roc``, ``params``, ``seconds``, ``baseline`` or ``baseline_note``,
        ``warnings``); ``inversion`` (when it ran: ``evaluator_accuracy``, ``baseline_evaluator_accuracy``,
        ``chance``, ``classes``, the reconstructions ``x``, ``params``, ``seconds``); ``config``; ``seconds``
        (``references``, ``total``).

    References
    ----------
    Yeom et al., IEEE CSF 2018. Song & Mittal, USENIX Security 2021. Fredrikson, Jha & Ristenpart, "Model Inversion
    Attacks that Exploit Confidence Information and Basic Countermeasures", ACM CCS 2015. Carlini et al., "Membership Inference Attacks
    From First Principles", IEEE S&P 2022. Zarifzadeh, Liu & Shokri, "Low-Cost High-Power Membership Inference
    Attacks", ICML 2024.
    """
    import torch

    from ..privacy import ReferenceModels, lira, rmia, threshold_attack

    started = time.perf_counter()
    names = _check_attacks(attacks, recipe is not None)
    if recipe is not None and not callable(recipe):
        raise InputError(f"recipe must be a callable recipe(dataset, seed) -> model, got {type(recipe).__name__}")
    for what, v, lo in (("n", n, 1), ("references", references, 2 if recipe is None else 4)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise InputError(f"{what} must be an integer ≥ {lo}, got {v!r}")
    if len(members) == 0 or len(nonmembers) == 0:
        raise InputError("the privacy suite needs both members (training points) and non-members (unseen points)")
    if members.num_classes != nonmembers.num_classes or members.x.shape[1:] != nonmembers.x.shape[1:]:
        raise InputError(f"members {tuple(members.x.shape[1:])} and non-members {tuple(nonmembers.x.shape[1:])} "
                         "must have the same input shape and classes")

    def report(description: str, done: float, total: float) -> None:
        if progress is not None:
            progress(description, done, total)

    gen = torch.Generator().manual_seed(int(seed))
    use_refs = any(a in REFERENCE_ATTACKS for a in names)
    n_out_eval = len(nonmembers) // 2 if use_refs else len(nonmembers)
    k = min(n, len(members), n_out_eval)
    if use_refs and k < 2:
        raise InputError("too few non-members to split between evaluation and the held-out population; pass more")
    in_idx = _sample(len(members), k, gen)
    out_perm = torch.randperm(len(nonmembers), generator=gen)
    out_idx, held = out_perm[:k], out_perm[k:]
    resolvable = [float(f) for f in fprs if float(f) >= 1.0 / k]  # TPR at an FPR below 1/k is TPR at FPR 0
    dropped = [float(f) for f in fprs if float(f) < 1.0 / k]
    fprs = resolvable or [1.0 / k]
    x = torch.cat([members.x[in_idx], nonmembers.x[out_idx]])
    y = torch.cat([members.y[in_idx], nonmembers.y[out_idx]])
    is_member = torch.cat([torch.ones(k, dtype=torch.bool), torch.zeros(k, dtype=torch.bool)])
    total_units = len(names) + (references + 1 if use_refs else 0)
    done = 0.0
    rows: list[dict[str, Any]] = []
    for signal in (a for a in names if a in THRESHOLD_SIGNALS):
        report(f"membership: {signal} threshold attack", done, total_units)
        r = threshold_attack(model, x, y, signal=signal)
        rows.append(_row(signal, r.scores, is_member, fprs, seed, r.params, r.seconds,
                         note="threshold attacks have no baseline model (no training recipe)"))
        done += 1
    ref_seconds = 0.0
    if use_refs:
        pool_x = torch.cat([members.x, nonmembers.x[out_idx]])
        pool_y = torch.cat([members.y, nonmembers.y[out_idx]])
        pool_index = torch.cat([in_idx, len(members) + torch.arange(k)])
        train_fn = _RecipeTrainFn(recipe, members)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        what = f"membership: training {references} reference models on halves of {len(pool_x)} points"
        report(what, done, total_units)
        refs = ReferenceModels(train_fn, pool_x, pool_y, n=references, seed=seed, executor=executor)
        refs.fit(progress=lambda i, _: report(what, done + i, total_units))
        done += references
        report("membership: training the disjoint-data baseline model", done, total_units)
        population = (nonmembers.x[held], nonmembers.y[held])
        refs.train_disjoint(*population)
        done += 1
        ref_seconds = time.perf_counter() - t0
        for name in (a for a in names if a in REFERENCE_ATTACKS):
            report(f"membership: {name}", done, total_units)
            if name == "lira":
                r = lira(model, x, y, refs, pool_index=pool_index, online=True, fixed_variance=True)
            else:
                r = rmia(model, x, y, refs, population=population, pool_index=pool_index)
            params = {k_: v for k_, v in r.params.items() if k_ != "tuning_auc"}
            rows.append(_row(name, r.scores, is_member, fprs, seed, params, r.seconds, r.baseline_scores,
                             r.baseline_note))
            done += 1
    report("membership: done", total_units, total_units)
    inverted = None
    if inversion and _invertible(model, members):
        report("model inversion (MI-Face), one reconstruction per class", 0, 1)
        inverted = model_inversion(model, nonmembers, steps=inversion_steps, seed=seed)
        report("model inversion (MI-Face), one reconstruction per class", 1, 1)
    return json_safe({
        "attacks": rows,
        **({"inversion": inverted} if inverted is not None else {}),
        "config": {"n": k, "references": references if use_refs else 0, "attacks": names,
                   "inversion": inverted is not None, "fprs": [float(f) for f in fprs], "fprs_below_resolution": dropped, "seed": seed,
                   "recipe": None if recipe is None else repr(recipe),
                   "pool": (len(members) + k) if use_refs else None,
                   "members": {"name": members.name, "size": len(members)},
                   "nonmembers": {"name": nonmembers.name, "size": len(nonmembers)}},
        "seconds": {"references": ref_seconds, "total": time.perf_counter() - started},
    })



MAX_INVERTED_CLASSES = 10
EVALUATOR_SAMPLES = 2000


def _invertible(model: Any, data: Dataset) -> bool:
    from torch import nn

    return isinstance(model, nn.Module) and data.x.dim() == 4


def model_inversion(model: nn.Module, reference: Dataset, *, steps: int = 300, tv: float = 0.003,
                    seed: int = 0) -> dict[str, Any]:
    """MI-Face on the first (up to) 10 classes, judged by an RBF SVM fitted on ``reference`` (data the model did
    not train on, at most 2,000 points), with the untrained-copy baseline. The total-variation prior (weight
    ``tv``) keeps reconstructions image-like."""
    import torch
    from sklearn.svm import SVC

    from ..privacy import miface

    k = min(reference.num_classes, MAX_INVERTED_CLASSES)
    x, y = reference.x[:EVALUATOR_SAMPLES], reference.y[:EVALUATOR_SAMPLES]
    evaluator = SVC().fit(x.flatten(1).numpy(), y.numpy())
    r = miface(model, torch.arange(k), shape=tuple(reference.x.shape[1:]), evaluator=evaluator, steps=steps,
               tv=tv, bounds=reference.bounds, seed=seed)
    return {"attack": "mi-face", "classes": list(range(k)), "x": r.x.detach().cpu().tolist(),
            "evaluator": f"RBF SVM on {len(y)} non-member points", **r.summary()}


def _run(ctx: SuiteContext, **options: Any) -> dict[str, Any]:
    """The privacy suite in an audit: members from the training data, non-members from all of the test data (held
    in memory: the held-out non-members are RMIA's population); at most the audit's ``n`` of each."""
    own = options.pop("n", option_default(privacy_suite, "n"))
    k = own if ctx.n is None else min(own, ctx.n)
    nonmembers = ctx.data.take(len(ctx.data))
    return privacy_suite(ctx.model, ctx.members, nonmembers, recipe=ctx.recipe, seed=ctx.seed, executor=ctx.executor,
                         progress=ctx.progress, n=k, **options)


def _summary(results: Mapping[str, Any]) -> str | None:
    """The strongest membership-inference attack's AUC and its TPR at 1 % FPR, in words."""
    rows = [r for r in results.get("attacks") or [] if isinstance(r, Mapping)]
    if not rows:
        return None
    best = max(rows, key=lambda r: r.get("auc") or 0.0)
    tpr = (best.get("tpr_at_fpr") or {}).get("0.01")
    return (f"<b>Privacy.</b> The strongest membership-inference attack ({html.escape(best['attack'])}) tells "
            f"training points from unseen ones with AUC {html.escape(html.num(best.get('auc')))} (0.5 is a coin flip)"
            + (f"; at a 1% false-positive rate it identifies {html.pct(tpr)} of the training points"
               if tpr is not None else "") + ".")


SUITE = Suite(
    name="privacy", key="privacy", function=privacy_suite, run=_run, needs=frozenset({"members"}), default=True,
    what="membership inference and model inversion", samples=lambda result: result["config"]["n"], summary=_summary,
    passed={"model", "members", "nonmembers", "recipe", "seed", "executor", "progress"},
)
