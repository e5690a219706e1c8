"""The audit's DP-audit suite: does the training recipe leak as little as its differential-privacy claim says?

It runs :func:`adverse.privacy.audit_dp` on the audit's recipe and training data: canaries inserted into
training, their membership guessed from the trained model, and the guesses turned into an empirical lower bound
on ε at a stated confidence (Steinke, Nasr & Jagielski, NeurIPS 2023, one training run; or Jagielski, Ullman &
Oprea, NeurIPS 2020, Clopper-Pearson over many runs). The recipe's claimed ε (an Opacus accountant's) sits beside
it: a lower bound above the claim means the claim is false; one far below it means the audit could not show the
claim is tight, not that the model is more private.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import InputError
from ..privacy.dp_audit import CANARY_KINDS, METHODS, audit_dp
from . import html
from . import schema as s
from .common import ProgressFn, SuiteContext, check_int, option_default
from .suites import Suite


def dp_audit_suite(recipe: Any, train_data: Any, *, method: str = "one-run", canaries: int | None = None,
                   canary: str = "random", confidence: float = 0.95, delta: float | None = None,
                   trainings: int = 20, claimed_epsilon: float | None = None, n: int | None = None, seed: int = 0,
                   progress: ProgressFn | None = None) -> dict[str, Any]:
    """An empirical lower bound on the ε of ``recipe`` trained on (the first ``n`` records of) ``train_data``.

    Parameters
    ----------
    recipe : ``recipe(dataset, seed) -> model``, e.g. :class:`adverse.defenses.dp.DPRecipe`.
    train_data : the training set (an :class:`adverse.data.Dataset`).
    method, canaries, canary, confidence, delta, trainings, claimed_epsilon : as in
        :func:`adverse.privacy.audit_dp`.
    n : training records used (None: all).
    seed : the canaries, the coins and the training seeds.
    progress : ``progress(description, done, total)`` after each training.

    Returns
    -------
    :meth:`adverse.privacy.dp_audit.DPAuditResult.to_dict`, with ``n`` the training records used and ``summary``
    its plain-language line.

    References
    ----------
    Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training Run", NeurIPS 2023. Jagielski, Ullman &
    Oprea, "Auditing Differentially Private Machine Learning: How Private is Private SGD?", NeurIPS 2020.
    """
    k = len(train_data) if n is None else min(check_int("n", n, 1), len(train_data))
    data = train_data if k == len(train_data) else train_data.take(k)
    result = audit_dp(recipe, data, method=method, canaries=canaries, canary=canary, confidence=confidence,
                      delta=delta, trainings=trainings, claimed_epsilon=claimed_epsilon, seed=seed,
                      progress=None if progress is None else lambda d, t: progress("DP audit", d, t))
    return {**result.to_dict(), "n": k, "summary": result.summary()}


def _run(ctx: SuiteContext, **options: Any) -> dict[str, Any]:
    own = options.pop("n", option_default(dp_audit_suite, "n"))
    return dp_audit_suite(ctx.recipe, ctx.members, n=ctx.bounded(own, ctx.members), seed=ctx.seed, progress=ctx.progress, **options)


def _check(ctx: SuiteContext, options: Mapping[str, Any]) -> None:
    """Before any suite's work: the method, the canary kind and ``n`` are valid."""
    for key, allowed in (("method", METHODS), ("canary", CANARY_KINDS)):
        if key in options and options[key] not in allowed:
            raise InputError(f"the dp-audit suite's {key} must be one of {', '.join(allowed)}, got {options[key]!r}")
    if options.get("n") is not None:
        check_int("n", options["n"], 1)


# --------------------------------------------------------------------------------------------- report
def _verdict(results: Mapping[str, Any]) -> str:
    eps, claim = results.get("epsilon_lower"), results.get("claimed_epsilon")
    if eps is None:
        return "no bound"
    if claim is None:
        return (f"the recipe states no ε; the audit shows it is not ε-DP for any ε below {html.num(eps)} "
                f"({html.pct(results.get('confidence'))} confidence)")
    if eps > claim:
        return (f"the measured lower bound {html.num(eps)} exceeds the claimed ε = {html.num(claim)}: the claim is "
                "false (or the accountant was given the wrong settings)")
    return (f"consistent with the claimed ε = {html.num(claim)}: the measured lower bound is {html.num(eps)} "
            f"({html.pct(eps / claim if claim else None)} of the claim)")


def _summary(results: Mapping[str, Any]) -> str | None:
    if "epsilon_lower" not in results:
        return None
    return f"<b>DP audit.</b> {html.escape(html.sentence(_verdict(results)))}."


def _section(results: Mapping[str, Any], figs: html.Figures) -> str:
    if "epsilon_lower" not in results:
        return ""
    eps, claim = results.get("epsilon_lower"), results.get("claimed_epsilon")
    fig = figs.new(6.0, 1.8)
    ax = fig.add_subplot(1, 1, 1)
    ax.barh([0], [eps or 0.0], color="#2c7fb8", label="measured lower bound")
    if claim is not None:
        ax.axvline(claim, color="#c0392b", lw=2, label="claimed ε")
    ax.set_yticks([])
    ax.set_xlabel("ε")
    ax.set_xlim(0, max(eps or 0.0, claim or 0.0, 1e-3) * 1.15)
    ax.legend(loc="lower right", fontsize=8)
    img = figs.embed(fig, "dp_audit", "Measured lower bound on ε beside the claimed ε")
    over = claim is not None and eps is not None and eps > claim
    rows = [[html.escape(k), html.escape(html.num(results.get(key)))] for k, key in (
        ("method", "method"), ("canary", "canary"), ("canaries per training", "canaries"), ("guesses", "guesses"),
        ("correct guesses", "correct"), ("trainings", "trainings"), ("δ", "delta"), ("confidence", "confidence"),
        ("ε lower bound", "epsilon_lower"), ("claimed ε", "claimed_epsilon"), ("claimed δ", "claimed_delta"),
        ("training records", "n"), ("seconds", "seconds"))]
    return ("<section id='dp_audit'><h2>Differential-privacy audit</h2><p>Canaries are inserted into the training "
            "data, the recipe trains, and the trained model's guesses of which canaries it saw become a lower bound "
            "on ε that holds with the stated confidence: the recipe is not ε-DP for any smaller ε. A bound above the "
            "claim refutes it; a bound below it does not prove the claim (audits are loose, especially in one "
            f"run).</p><p class='{'warnbox' if over else 'okbox'}'>{html.escape(_verdict(results))}</p>" + img
            + html.table(["", "value"], rows, right=(1,)) + "</section>")


def _schema(full: bool) -> s.Check:
    return s.fields({"epsilon_lower": (s.either(s.NONNEG, s.NULL), "R"), "confidence": (s.FRACTION, "R"),
                     "delta": (s.FRACTION, "O"), "method": (s.one_of(METHODS), "R"), "canaries": (s.COUNT, "O"),
                     "guesses": (s.COUNT, "O"), "correct": (s.COUNT, "O"),
                     "claimed_epsilon": (s.either(s.NONNEG, s.NULL), "O"),
                     "claimed_delta": (s.FRACTION_OR_NULL, "O"), "trainings": (s.COUNT, "O"),
                     "seconds": (s.NONNEG, "O"), "canary": (s.one_of(CANARY_KINDS), "O"), "seed": (s.COUNT, "O"),
                     "details": (s.OBJECT, "O"), "n": (s.integer(1), "R"), "summary": (s.STRING, "O")}, full)


SUITE = Suite(
    name="dp-audit", key="dp_audit", function=dp_audit_suite, run=_run, needs=frozenset({"members", "recipe"}),
    default=False, what="an empirical lower bound on the recipe's DP ε (canaries)", samples=lambda r: r["n"],
    section=_section, summary=_summary, schema=_schema, check=_check,
    passed={"recipe", "train_data", "seed", "progress"},
)
