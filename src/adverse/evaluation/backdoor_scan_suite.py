"""The audit's backdoor-scan suite: is the audited model itself backdoored, and towards which class?

It runs :func:`adverse.defenses.scan_backdoor` on the model with clean test data only (no retraining, no
poisoned data): Neural Cleanse's trigger reverse-engineering per class, and MM-BD's maximum-margin statistic,
which does not assume a patch trigger. The verdict's false-positive rate on clean models and its detection rate
on backdoored ones, as measured, travel with the result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..defenses.backdoor_scan import METHODS, SIZE_RATIO, check_methods, scan_backdoor
from ..errors import InputError
from . import html
from . import schema as s
from .common import ProgressFn, SuiteContext, check_int
from .suites import Suite

DEFAULT_N = 270  # the clean images the scan's false-positive and detection rates were measured with


def backdoor_scan_suite(model: Any, data: Any, *, methods: Sequence[str] = METHODS, n: int | None = DEFAULT_N,
                        nc_steps: int = 300, nc_threshold: float = 2.0, size_ratio: float = SIZE_RATIO,
                        starts: int = 30, mm_steps: int = 300,
                        significance: float = 0.05, seed: int = 0,
                        progress: ProgressFn | None = None) -> dict[str, Any]:
    """Scan ``model`` for a backdoor with the first ``n`` clean images of ``data``.

    Parameters
    ----------
    model : the classifier (a torch module returning logits).
    data : an :class:`adverse.data.Dataset` or a streamed :class:`adverse.streaming.Stream` of clean images.
    methods : "neural-cleanse" and/or "mm-bd".
    n : clean images Neural Cleanse optimizes its triggers on (MM-BD needs only their shape).
    nc_steps, nc_threshold, size_ratio, starts, mm_steps, significance : as in
        :func:`adverse.defenses.scan_backdoor`.
    seed : the optimizations' randomness.
    progress : ``progress(description, done, total)``.

    Returns
    -------
    :meth:`adverse.defenses.backdoor_scan.BackdoorScanResult.to_dict`, with ``n`` the clean images used.

    References
    ----------
    Wang et al., "Neural Cleanse", IEEE S&P 2019. Wang, Xiang, Miller & Kesidis, "MM-BD", IEEE S&P 2024.
    """
    if len(data.shape) != 3:
        raise InputError(f"the backdoor-scan suite needs images (channels, height, width), got inputs of shape "
                         f"{tuple(data.shape)}")
    k = len(data) if n is None else min(check_int("n", n, 1), len(data))
    part = data.take(k)
    result = scan_backdoor(model, part.x, part.y, methods=methods, num_classes=data.num_classes, nc_steps=nc_steps,
                           nc_threshold=nc_threshold, size_ratio=size_ratio, starts=starts, mm_steps=mm_steps, significance=significance,
                           bounds=tuple(part.bounds), seed=seed,
                           progress=None if progress is None else lambda d, t: progress("backdoor scan", d, t))
    return {**result.to_dict(), "n": k}


def _run(ctx: SuiteContext, **options: Any) -> dict[str, Any]:
    return backdoor_scan_suite(ctx.model, ctx.data, n=ctx.take_n(options, backdoor_scan_suite), seed=ctx.seed, progress=ctx.progress,
                               **options)


def _check(ctx: SuiteContext, options: Mapping[str, Any]) -> None:
    """Before any suite's work: the methods and ``n`` are valid."""
    check_methods(options.get("methods", METHODS))
    if options.get("n") is not None:
        check_int("n", options["n"], 1)


# --------------------------------------------------------------------------------------------- report
def _rate(fpr: Mapping[str, Any]) -> str:
    if not fpr.get("scanned"):
        return "not measured for these methods"
    return f"{fpr.get('flagged')} of {fpr.get('scanned')} clean models flagged ({html.pct(fpr.get('rate'))})"


def _summary(results: Mapping[str, Any]) -> str | None:
    if "verdict" not in results:
        return None
    fpr = results.get("false_positive_rate") or {}
    return (f"<b>Backdoor scan.</b> {html.escape(html.sentence(str(results['verdict'])))} (scanned with clean data "
            f"only; the verdict's false-positive rate on clean models: {html.escape(_rate(fpr))}).")


def _section(results: Mapping[str, Any], figs: html.Figures) -> str:
    per_class = [c for c in results.get("per_class") or [] if isinstance(c, Mapping)]
    if "verdict" not in results or not per_class:
        return ""
    has = {k for c in per_class for k in c}
    columns = [(k, h) for k, h in (("nc_l1", "NC trigger L1"), ("nc_anomaly_index", "NC anomaly index"),
                                   ("nc_flagged", "NC flags"), ("mm_bd_statistic", "MM-BD max margin"),
                                   ("mm_bd_flagged", "MM-BD flags")) if k in has]
    rows = [[html.escape(html.num(c.get("class"))), *[html.escape(html.num(c.get(k))) for k, _ in columns]]
            for c in per_class]
    fig = figs.new(7.0, 3.2)
    numeric = [(k, h) for k, h in columns if k in ("nc_anomaly_index", "mm_bd_statistic")]
    for i, (k, h) in enumerate(numeric):
        ax = fig.add_subplot(1, len(numeric), i + 1)
        values = [float(c.get(k) or 0.0) for c in per_class]
        target = results.get("target")
        ax.bar(range(len(values)), values,
               color=["#c0392b" if c.get("class") == target else "#7f8c8d" for c in per_class])
        ax.set_xlabel("class")
        ax.set_title(html.label(h))
        ax.grid(alpha=0.3, axis="y")
    img = figs.embed(fig, "backdoor_scan", "Per-class evidence (the suspected target in red)") if numeric else ""
    fpr = results.get("false_positive_rate") or {}
    detection = fpr.get("detection") or {}
    measured = "; ".join(f"{html.escape(a)}: {html.escape(html.num(d.get('detected')))} of "
                         f"{html.escape(html.num(d.get('scanned')))}" for a, d in detection.items()
                         if isinstance(d, Mapping))
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in results.get("notes") or [])
    box = "warnbox" if results.get("suspected") else "okbox"
    p = results.get("p_value")
    return ("<section id='backdoor_scan'><h2>Backdoor scan</h2><p>The audited model, scanned with clean data only: "
            "Neural Cleanse reverse-engineers the smallest patch trigger per class (a target needs an anomalously "
            "small one); MM-BD finds each class's largest achievable margin (a target's is abnormally large, whatever "
            f"the trigger's shape). Decision: {html.escape(results.get('rule', ''))}"
            + (f" (p = {html.escape(html.num(p))})" if p is not None else "") + ".</p>"
            f"<p class='{box}'>{html.escape(results['verdict'])}</p>" + img
            + html.table(["class", *[h for _, h in columns]], rows, right=tuple(range(len(columns) + 1)))
            + f"<p>Measured on clean models: {html.escape(_rate(fpr))}"
            + (f"; detected with the right target: {measured}" if measured else "")
            + (f" ({html.escape(fpr.get('models', ''))}; <code>{html.escape(fpr.get('measured_by', ''))}</code>)"
               if fpr.get("measured_by") else "") + ".</p>"
            + (f"<ul class='ev'>{notes}</ul>" if notes else "") + "</section>")


def _schema(full: bool) -> s.Check:
    cls = s.fields({"class": (s.COUNT, "R"), "nc_l1": (s.either(s.NONNEG, s.NULL), "O"),
                    "nc_anomaly_index": (s.either(s.number(), s.NULL), "O"), "nc_success": (s.FRACTION_OR_NULL, "O"),
                    "nc_flagged": (s.BOOLEAN, "O"), "mm_bd_statistic": (s.either(s.number(), s.NULL), "O"),
                    "mm_bd_flagged": (s.BOOLEAN, "O")}, full)
    return s.fields({"verdict": (s.STRING, "R"), "suspected": (s.BOOLEAN, "R"),
                     "target": (s.either(s.COUNT, s.NULL), "O"), "per_class": (s.list_of(cls), "R"),
                     "flagged": (s.map_of(s.list_of(s.COUNT)), "O"), "p_value": (s.FRACTION_OR_NULL, "O"),
                     "rule": (s.STRING, "O"), "false_positive_rate": (s.OBJECT, "O"),
                     "methods": (s.list_of(s.one_of(METHODS), 1, unique=True), "O"),
                     "seconds": (s.map_of(s.NONNEG), "O"), "notes": (s.list_of(s.STRING), "O"),
                     "details": (s.OBJECT, "O"), "n": (s.integer(1), "R")}, full)


SUITE = Suite(
    name="backdoor-scan", key="backdoor_scan", function=backdoor_scan_suite, run=_run,
    needs=frozenset({"white-box", "images"}), default=False,
    what="is this model backdoored (Neural Cleanse, MM-BD; clean data only)", samples=lambda result: result["n"],
    section=_section, summary=_summary, schema=_schema, check=_check, passed={"model", "data", "seed", "progress"},
)
