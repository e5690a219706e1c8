"""The audit's corruptions suite: accuracy under the common corruptions of Hendrycks & Dietterich (ICLR 2019).

:func:`corruptions_suite` corrupts the first ``n`` test images with each corruption of
:mod:`adverse.corruptions` at each severity (seeded, so every run sees the same images), and reports accuracy per
corruption and severity, the mean corruption accuracy and, when a baseline model is given, the mCE and relative
mCE against it. These are natural, not adversarial, shifts: noise, blur, weather and digital artefacts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..corruptions import CORRUPTIONS, SEVERITIES, check_selection, corruption_accuracy
from ..errors import InputError
from . import html
from . import schema as s
from .common import ProgressFn, SuiteContext, check_int
from .suites import Suite

DEFAULT_N = 200


def corruptions_suite(model: Callable[..., Any], data: Any, *, corruptions: Sequence[str] = CORRUPTIONS,
                      severities: Sequence[int] = SEVERITIES, n: int | None = DEFAULT_N,
                      baseline: Callable[..., Any] | None = None, seed: int = 0, batch_size: int = 256,
                      progress: ProgressFn | None = None) -> dict[str, Any]:
    """Accuracy of ``model`` on the first ``n`` images of ``data`` under each corruption and severity.

    Parameters
    ----------
    model : the classifier (logits).
    data : an :class:`adverse.data.Dataset` or a streamed :class:`adverse.streaming.Stream` of images.
    corruptions, severities : which corruptions (names from :data:`adverse.corruptions.CORRUPTIONS`) and
        severities (1 … 5).
    n : images used (None: all of them; they are held in memory, corrupted a batch at a time).
    baseline : a second classifier scored on the same corrupted images, for the mCE and relative mCE.
    seed : the corruptions' randomness.
    batch_size : images corrupted and classified at a time.
    progress : ``progress(description, done, total)``.

    Returns
    -------
    :meth:`adverse.corruptions.CorruptionResult.to_dict`, with ``n`` the images used.

    References
    ----------
    Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and Perturbations",
    ICLR 2019.
    """
    k = len(data) if n is None else min(check_int("n", n, 1), len(data))
    if len(data.shape) != 3:
        raise InputError(f"the corruptions suite needs images (channels, height, width), got inputs of shape "
                         f"{tuple(data.shape)}")
    if progress is not None:
        progress("corruptions", 0, 1)
    part = data.take(k)
    result = corruption_accuracy(model, part.x, part.y, corruptions=corruptions, severities=severities, seed=seed,
                                 batch_size=batch_size, baseline=baseline, bounds=tuple(part.bounds)).to_dict()
    if progress is not None:
        progress("corruptions", 1, 1)
    return result


def _run(ctx: SuiteContext, **options: Any) -> dict[str, Any]:
    return corruptions_suite(ctx.model, ctx.data, n=ctx.take_n(options, corruptions_suite), seed=ctx.seed, batch_size=ctx.batch_size,
                             progress=ctx.progress, **options)


def _check(ctx: SuiteContext, options: Mapping[str, Any]) -> None:
    """Before any suite's work: the corruptions, severities and ``n`` are valid."""
    check_selection(options.get("corruptions", CORRUPTIONS), options.get("severities", SEVERITIES),
                    "the corruptions suite")
    if options.get("n") is not None:
        check_int("n", options["n"], 1)


# --------------------------------------------------------------------------------------------- report
def _worst(results: Mapping[str, Any]) -> tuple[str, int, float] | None:
    table = results.get("accuracy") or {}
    cells = [(c, int(sev), a) for c, row in table.items() for sev, a in row.items() if a is not None]
    return min(cells, key=lambda t: t[2]) if cells else None


def _summary(results: Mapping[str, Any]) -> str | None:
    mean = results.get("mean_accuracy")
    if mean is None:
        return None
    worst = _worst(results)
    line = (f"<b>Corruptions.</b> Under {len(results.get('corruptions', []))} common corruptions (noise, blur, "
            f"weather, digital) at severities {html.escape(html.num(results.get('severities', [])))}, accuracy is "
            f"{html.pct(mean)} on average against {html.pct(results.get('clean_accuracy'))} on the clean images")
    if worst is not None:
        line += f"; the worst is {html.escape(worst[0])} at severity {worst[1]} ({html.pct(worst[2])})"
    if results.get("relative_mce") is not None:
        line += (f"; relative mCE {html.escape(html.num(results['relative_mce']))} against the baseline "
                 "(below 1: degrades less than the baseline)")
    return line + "."


def _section(results: Mapping[str, Any], figs: html.Figures) -> str:
    table = results.get("accuracy") or {}
    severities = [str(v) for v in results.get("severities", [])]
    if not table or not severities:
        return ""
    fig = figs.new()
    ax = fig.add_subplot(1, 1, 1)
    xs = [int(v) for v in severities]
    for name, row in table.items():
        ax.plot(xs, [row.get(v) for v in severities], marker=".", lw=1, alpha=0.7, label=html.label(name))
    means = results.get("severity_mean") or {}
    ax.plot(xs, [means.get(v) for v in severities], color="black", lw=3, label="mean")
    if results.get("clean_accuracy") is not None:
        ax.axhline(results["clean_accuracy"], color="gray", ls=":", lw=1, label="clean")
    ax.set_xlabel("severity")
    ax.set_xticks(xs)
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    img = figs.embed(fig, "corruptions", "Accuracy against corruption severity, per corruption and on average")
    ce, rce = results.get("ce") or {}, results.get("relative_ce") or {}
    rows = [[html.escape(name), *[html.pct(row.get(v)) for v in severities],
             html.pct((results.get("corruption_mean") or {}).get(name)),
             *([html.escape(html.num(ce.get(name))), html.escape(html.num(rce.get(name)))] if ce else [])]
            for name, row in table.items()]
    rows.append(["<b>mean</b>", *[html.pct(means.get(v)) for v in severities], html.pct(results.get("mean_accuracy")),
                 *([html.escape(html.num(results.get("mce"))), html.escape(html.num(results.get("relative_mce")))]
                   if ce else [])])
    header = ["corruption", *[f"severity {v}" for v in severities], "mean", *(["CE", "relative CE"] if ce else [])]
    left = results.get("left_out") or {}
    out = "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in left.items())
    return ("<section id='corruptions'><h2>Common corruptions</h2><p>Accuracy on the same images after natural, "
            "non-adversarial corruptions (Hendrycks &amp; Dietterich, ICLR 2019; CIFAR-10-C parameters, seeded). "
            f"Clean accuracy on these images: {html.pct(results.get('clean_accuracy'))}.</p>" + img
            + html.table(header, rows, right=tuple(range(1, len(header))))
            + (f"<p>Left out:</p><ul class='ev'>{out}</ul>" if out else "") + "</section>")


def _schema(full: bool) -> s.Check:
    table = s.map_of(s.map_of(s.FRACTION_OR_NULL, key=lambda k: k in "12345" and len(k) == 1, what="severities 1..5"))
    flat = s.map_of(s.either(s.NONNEG, s.NULL))
    return s.fields({"corruptions": (s.list_of(s.STRING), "R"), "severities": (s.list_of(s.integer(1, 5)), "R"),
                     "n": (s.integer(1), "R"), "seed": (s.COUNT, "O"), "clean_accuracy": (s.FRACTION_OR_NULL, "O"),
                     "accuracy": (table, "R"), "corruption_mean": (s.map_of(s.FRACTION_OR_NULL), "O"),
                     "severity_mean": (s.map_of(s.FRACTION_OR_NULL), "O"), "mean_accuracy": (s.FRACTION_OR_NULL, "O"),
                     "baseline_clean_accuracy": (s.FRACTION_OR_NULL, "O"),
                     "baseline_accuracy": (s.either(table, s.NULL), "O"), "ce": (s.either(flat, s.NULL), "O"),
                     "relative_ce": (s.either(s.map_of(s.either(s.number(), s.NULL)), s.NULL), "O"),
                     "mce": (s.either(s.NONNEG, s.NULL), "O"), "relative_mce": (s.either(s.number(), s.NULL), "O"),
                     "left_out": (s.map_of(s.STRING), "O")}, full)


SUITE = Suite(
    name="corruptions", key="corruptions", function=corruptions_suite, run=_run, needs=frozenset({"images"}),
    default=False, what="accuracy under common corruptions (noise, blur, weather, digital)",
    samples=lambda result: result["n"], section=_section, summary=_summary, schema=_schema, check=_check,
    passed={"model", "data", "seed", "batch_size", "progress"},
)
