"""The human-readable report: ``report.html`` (one self-contained file) and its figures as PNG files.

:func:`render_report` reads the dictionary that ``results.json`` holds (:meth:`AuditResult.to_dict`) and writes
``out_dir/report.html`` plus ``out_dir/figures/*.png``. The HTML embeds every figure as a base64 PNG data URI
and carries its CSS inline: it needs no network, no other file and no JavaScript. Every number in it comes from
the results, checked against the results schema first (:mod:`adverse.evaluation.schema`); every piece of text
from them is escaped in the HTML and drawn verbatim in the figures (:func:`_label`: no mathtext, no TeX). Report
code never computes attacks.

Sections, each drawn by one function and each left out when its keys are absent:

* summary: clean accuracy, worst-case robust accuracy at each eps, what they mean, and a prominent line when a
  sanity check warns (``clean_accuracy``, ``worst_case``, ``checks``);
* robustness curves: robust accuracy against eps per attack, and the worst case (``attacks``, ``worst_case``);
* sanity checks: status, message and evidence of each check (``checks``, ``config["checks"]``);
* attacks × eps: robust accuracy, success rate and the budget spent by each attack at each eps (``attacks``);
* privacy (membership inference, model inversion), poisoning and certify (the other suites; shapes below);
* preprocessing defense: undefended vs oblivious vs adaptive attacker, the clean-accuracy cost and the verdict
  (``defense``);
* examples: clean, adversarial and perturbation images (the ``examples`` argument, not in ``results.json``);
* reproduce: the command line, the configuration, seeds, versions and total budget (``config``,
  ``environment``, ``budget``, ``seconds``, ``created``).

Expected shape of the optional suite keys
-----------------------------------------
``results["privacy"]`` (membership inference)::

    {"attacks": [                       # one row per membership attack
        {"attack": "lira",              # name
         "auc": 0.71, "balanced_accuracy": 0.65,
         "tpr_at_fpr": {"0.001": 0.05, "0.01": 0.12},     # as MembershipEvaluation.summary() writes it
         "ci": {"auc": [0.69, 0.73], ...},                 # optional bootstrap intervals
         "confidence": 0.95,                               # optional
         "n_members": 500, "n_nonmembers": 500,
         "roc": {"fpr": [...], "tpr": [...]},              # optional: the ROC, for the log-log figure
         "warnings": ["..."]},                             # optional
        ...]}

``results["poisoning"]`` (poisoning and backdoors)::

    {"attacks": [                       # one row per (attack, poison rate)
        {"attack": "badnets", "poison_rate": 0.01,
         "attack_success_rate": 0.93,   # share of triggered test inputs sent to the target class
         "clean_accuracy": 0.97,        # optional: accuracy of the poisoned model on clean test data
         "n_poison": 12},               # optional
        ...]}

``results["poisoning"]["detectors"]`` (optional): one row per poison detector at one poison rate: ``detector``,
``poison_rate``, ``params`` (``layer``, ...), ``auroc``, ``tpr``, ``fpr``, ``tpr_at_fpr`` ({"0.05": ...}),
``before`` and ``after`` (``clean_accuracy``, ``attack_success_rate``; ``after`` also ``removed``), ``seconds``.

``results["privacy"]["inversion"]`` (optional): MI-Face's reconstructions ``x`` (one per class in ``classes``),
``evaluator_accuracy``, ``baseline_evaluator_accuracy``, ``chance``, ``evaluator``.

``results["certify"]``: what :func:`adverse.evaluation.certify_suite.certify_suite` returns; ``results["minimal_norm"]``
and ``results["autoattack"]``: what :mod:`adverse.evaluation.confirm` returns; ``results["defense"]``: what
:func:`adverse.evaluation.defense_suite.defense_suite` returns.

``examples`` (optional argument): a mapping with numpy arrays ``x`` and ``x_adv`` (shape ``(k, C, H, W)``,
``(k, H, W)`` or ``(k, H, W, C)``, values in ``[0, 1]``), ``y`` and ``pred_adv`` (shape ``(k,)``); at most
eight rows are drawn.
"""

from __future__ import annotations

import contextlib
import html
import io
import json
import os
import re
import shlex
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError
from . import suites as registry
from .common import write_atomic
from .html import FIGURES_DIR
from .html import Figures as _Figures
from .html import escape as _e
from .html import label as _label
from .html import num as _num
from .html import pct as _pct
from .html import table as _table
from .robustbench import report_section

REPORT_FILE = "report.html"
MAX_EXAMPLES = 8
MAX_INVERSIONS = 100  # reconstructions drawn side by side (a figure is at most 2^16 pixels wide)
MAX_EXAMPLES_BYTES = 64 * 2**20  # examples.npz, on disk and unpacked
_NAMES = {"fgsm": "FGSM", "pgd": "PGD", "apgd-ce": "APGD-CE", "worst-case": "worst case"}
_NORMS = {"linf": "L∞", "l2": "L2", "l1": "L1"}

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1d1d1f;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
.meta{color:#666}.headline{display:flex;flex-wrap:wrap;gap:1em;margin:1em 0}
.num{background:#f4f6f8;border-radius:8px;padding:.6em 1em;min-width:9em}
.num b{display:block;font-size:1.6em}.num span{color:#555;font-size:.9em}
.warnbox{background:#fff4d6;border:2px solid #e0a800;border-radius:8px;padding:.7em 1em;font-weight:600}
.okbox{background:#e8f6ec;border:1px solid #5cb85c;border-radius:8px;padding:.5em 1em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f0f0f0}td.r{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#1e7e34;font-weight:600}.warn{color:#b35c00;font-weight:700}.skip{color:#777}
pre{background:#f6f8fa;border:1px solid #ddd;border-radius:6px;padding:.7em;overflow-x:auto;font-size:.88em}
img{max-width:100%;height:auto}figure{margin:1em 0}figcaption{color:#555;font-size:.9em}
ul.ev{margin:0;padding-left:1.1em;font-size:.9em}
"""


# --------------------------------------------------------------------------------------------- helpers
def _name(attack: str) -> str:
    return _NAMES.get(attack, attack)


# --------------------------------------------------------------------------------------------- sections
def _title(results: Mapping[str, Any]) -> str:
    model = results.get("model", {}).get("name", "model")
    data = results.get("data", {})
    split = f" ({data['split']})" if "split" in data else ""
    return f"adverse report: {model} on {data.get('name', 'data')}{split}"


def _header(results: Mapping[str, Any]) -> str:
    env = results.get("environment", {})
    bits = [f"created {results['created']}" if "created" in results else "",
            f"adverse {env['adverse']}" if "adverse" in env else "",
            f"{results['n']:,} samples" if "n" in results else ""]
    return f"<h1>{_e(_title(results))}</h1><p class='meta'>{_e(' · '.join(b for b in bits if b))}</p>"


def _warned(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [c for c in results.get("checks", []) if c.get("status") == "warn"]


def _summary_section(results: Mapping[str, Any]) -> str:
    if "clean_accuracy" not in results:
        return ""
    cfg = results.get("config", {})
    norm = _NORMS.get(cfg.get("norm", ""), cfg.get("norm", ""))
    worst = results.get("worst_case", [])
    n = results.get("n")
    cards = [f"<div class='num'><b>{_pct(results['clean_accuracy'])}</b><span>clean accuracy</span></div>"]
    cards += [f"<div class='num'><b>{_pct(w['robust_accuracy'])}</b><span>worst-case robust accuracy at "
              f"ε={_e(_num(w['eps']))}</span></div>" for w in worst]
    data = results.get("data", {}).get("name", "the data")
    clean = _pct(results["clean_accuracy"])
    text = [f"On {_e(_num(n))} samples of {_e(data)} the model classifies {clean} correctly (clean accuracy)."]
    if worst:
        last = worst[-1]
        attacks = ", ".join(_name(a) for a in last.get("attacks", []))
        text.append(
            f"When an attacker may change every input by at most ε={_e(_num(last['eps']))} ({_e(norm)} norm, in "
            f"input units), only {_pct(last['robust_accuracy'])} of the samples are still classified correctly "
            f"under every attack tried ({_e(attacks)}); each of the others is misclassified already or can be made wrong "
            "by a change that small."
        )
        text.append("These robust accuracies are upper bounds: a stronger attack can only lower them.")
    text += _suite_summaries(results)
    warned = _warned(results)
    if warned:
        names = ", ".join(c.get("name", "?") for c in warned)
        alert = (f"<p class='warnbox'>⚠ {len(warned)} sanity check(s) warn ({_e(names)}): the robust accuracies "
                 "in this report may over-estimate the truth. See “Sanity checks” below.</p>")
    elif results.get("checks"):
        alert = "<p class='okbox'>No sanity check warns.</p>"
    else:
        alert = "<p class='meta'>The sanity checks (gradient masking) were not run for this audit.</p>"
    return (f"<section id='summary'><h2>Summary</h2><div class='headline'>{''.join(cards)}</div>{alert}"
            + "".join(f"<p>{t}</p>" for t in text) + "</section>")


def _suite_summaries(results: Mapping[str, Any]) -> list[str]:
    """A plain-language sentence (HTML) per suite in ``results``, as each suite writes it (``Suite.summary``)."""
    out = []
    for name in registry.NAMES:
        key = registry.key_of(name)
        suite = registry.get(name)
        if key in results and isinstance(results[key], Mapping) and suite.summary is not None:
            line = suite.summary(results[key])
            if line:
                out.append(line)
    return out


def summary_lines(results: Mapping[str, Any]) -> list[str]:
    """The suites' summary sentences as plain text (for the command line)."""
    return [html.unescape(re.sub(r"<[^>]+>", "", line)) for line in _suite_summaries(results)]


def _own_sections(results: Mapping[str, Any]) -> list[tuple[str, registry.Suite]]:
    """The suites in ``results`` that draw their own report section and summary line (registry order)."""
    found = []
    for name in registry.NAMES:
        key = registry.key_of(name)
        if key in results and isinstance(results[key], Mapping):
            suite = registry.get(name)
            if suite.section is not None:
                found.append((key, suite))
    return found


def _per_attack_plot(figs: _Figures, rows: Sequence[Mapping[str, Any]], x: str, y: str, xlabel: str) -> Any:
    """A figure with one line of ``y`` (a rate in [0, 1]) against ``x`` per attack in ``rows``; (fig, ax)."""
    fig = figs.new()
    ax = fig.add_subplot(1, 1, 1)
    for attack in dict.fromkeys(r["attack"] for r in rows):
        pts = sorted((r[x], r[y]) for r in rows if r["attack"] == attack)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=_label(_name(attack)))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(y.replace("_", " "))
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    return fig, ax


def _curves_section(results: Mapping[str, Any], figs: _Figures) -> str:
    rows = results.get("attacks", [])
    if not rows:
        return ""
    norm = _NORMS.get(results.get("config", {}).get("norm", ""), "")
    fig, ax = _per_attack_plot(figs, rows, "eps", "robust_accuracy", f"ε ({norm} budget, input units)")
    worst = sorted((w["eps"], w["robust_accuracy"]) for w in results.get("worst_case", []))
    if worst:
        ax.plot([p[0] for p in worst], [p[1] for p in worst], marker="s", color="black", lw=2.5, label="worst case")
    mn = results.get("minimal_norm")
    if isinstance(mn, Mapping) and mn.get("curve"):
        ax.plot(mn["curve"]["eps"], mn["curve"]["robust_accuracy"], color="tab:purple", lw=1.5, ls="-",
                label=_label(f"minimal norm (FMN, {_num(mn.get('steps'))} steps)"))
    aa = results.get("autoattack")
    if isinstance(aa, Mapping) and "robust_accuracy" in aa:
        ax.plot([aa["eps"]], [aa["robust_accuracy"]], marker="*", ms=16, ls="none", color="tab:red",
                label=_label(f"AutoAttack ({aa.get('version')}, first {_num(aa.get('n'))} points)"))
    if "clean_accuracy" in results:
        ax.axhline(results["clean_accuracy"], color="gray", ls="--", lw=1, label="clean accuracy")
    ax.legend()
    img = figs.embed(fig, "robust_accuracy", "Robust accuracy against ε for each attack and the worst case")
    text = ("<p>Each curve shows the share of samples still classified correctly when the attacker may perturb "
            "inputs by at most ε. Lower is less robust; the worst case counts a sample as fooled if any attack "
            "fooled it.")
    if isinstance(mn, Mapping) and mn.get("curve"):
        text += (" The minimal-norm curve comes from one run of FMN, which finds each sample's smallest adversarial "
                 "perturbation; it gives every ε at once, but a minimal-norm attack can overshoot, so the "
                 "fixed-ε attacks and AutoAttack check it.")
    text += "</p>"
    if isinstance(aa, Mapping) and aa.get("message"):
        cls = "warnbox" if aa.get("status") == "warn" else "okbox"
        text += f"<p class='{cls}'>{_e(aa['message'])}.</p>"
    if isinstance(aa, Mapping) and isinstance(aa.get("acceleration"), Mapping):
        text += f"<p>{_e(acceleration_in_words(aa['acceleration']))}</p>"
    return f"<section id='curves'><h2>Robust accuracy against ε</h2>{text}{img}</section>"


def acceleration_in_words(acc: Mapping[str, Any]) -> str:
    """How AutoAttack's passes ran (:func:`adverse.acceleration.accelerated`), in one sentence."""
    how = [f"inputs in {'channels_last' if acc.get('layout') == 'channels_last' else 'the default'} layout"]
    how.append("gradient-free passes compiled with torch.compile" if acc.get("compiled") else "no compiled passes")
    reduced = acc.get("precision") in ("bf16", "fp16")
    if reduced:
        how.append(f"its attacks searching in {acc['precision']} autocast")
    text = "AutoAttack ran with " + ", ".join(how[:-1]) + " and " + how[-1]
    if acc.get("compiled") or reduced:
        text += (f"; the model itself, in fp32, confirmed every point they fooled ({_num(acc.get('unconfirmed', 0))} "
                 "not confirmed, counted as not fooled by that attack)")
    notes = [n for n in acc.get("notes", []) if isinstance(n, str)]
    return text + (f" ({'; '.join(notes)})" if notes else "") + "."


def _evidence(evidence: Any) -> str:
    if not isinstance(evidence, Mapping) or not evidence:
        return ""
    return "<ul class='ev'>" + "".join(f"<li>{_e(k)}: {_e(_num(v))}</li>" for k, v in evidence.items()) + "</ul>"


def _checks_section(results: Mapping[str, Any]) -> str:
    checks = results.get("checks", [])
    if not checks:
        return ""
    cfg = results.get("config", {}).get("checks", {})
    where = (f" at ε={_e(_num(cfg['eps']))} on {_e(_num(cfg['n']))} points" if "eps" in cfg and "n" in cfg else "")
    rows = [[_e(c.get("name", "")), f"<span class='{_e(c.get('status', ''))}'>{_e(c.get('status', ''))}</span>",
             _e(c.get("message", "")), _evidence(c.get("evidence"))] for c in checks]
    return ("<section id='checks'><h2>Sanity checks</h2><p>Checks for gradient masking and other reasons an "
            f"attack can fail for the wrong reason, run{where}. “warn” means the robust accuracies may be too "
            "optimistic; “skip” means the check did not apply.</p>"
            + _table(["check", "status", "what it found", "evidence"], rows) + "</section>")


_LOSSES = {"ce": "cross-entropy", "dlr": "difference of logits ratio", "margin": "logit margin", "cw": "C&W margin"}


def settings_in_words(params: Any) -> str:
    """An attack's essential settings as a phrase: "5 steps of size 0.025, 1 restart, cross-entropy loss, random
    start, early stop" (the full parameters stay in results.json)."""
    if not isinstance(params, Mapping):
        return ""
    words = []

    def whole(key: str) -> int | None:
        v = params.get(key)
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    steps, size = whole("steps"), params.get("alpha", params.get("step"))
    if steps is not None:
        words.append(f"{steps:,} step{'s' if steps != 1 else ''}" + (f" of size {_num(float(size))}"
                                                                     if isinstance(size, (int, float))
                                                                     and not isinstance(size, bool) else ""))
    for key, one, many in (("restarts", "restart", "restarts"), ("max_queries", "query", "queries"),
                           ("n_target_classes", "target class", "target classes")):
        v = whole(key)
        if v is not None:
            words.append(f"{v:,} {one if v == 1 else many}")
    loss = params.get("loss")
    if isinstance(loss, str):
        words.append(f"{_LOSSES.get(loss, loss)} loss")
    if params.get("random_start") is True:
        words.append("random start")
    if isinstance(params.get("momentum"), (int, float)) and not isinstance(params.get("momentum"), bool):
        words.append(f"momentum {_num(float(params['momentum']))}")
    if params.get("early_stop") is True:
        words.append("early stop")
    if params.get("targeted") is True:
        words.append("targeted")
    return ", ".join(words) if words else "single step" if "steps" not in params else ""


def _attacks_section(results: Mapping[str, Any]) -> str:
    rows = results.get("attacks", [])
    if not rows:
        return ""
    order = {a: i for i, a in enumerate(dict.fromkeys(r["attack"] for r in rows))}
    rows = sorted(rows, key=lambda r: (order[r["attack"]], r["eps"]))
    n = results.get("n")
    body = [[_e(_name(r["attack"])), _e(settings_in_words(r.get("params", {}))), _e(_num(r["eps"])),
             _pct(r["robust_accuracy"]), f"{_e(_num(r.get('robust')))} / {_e(_num(n))}", _pct(r.get("success_rate")),
             _e(_num(r.get("forwards"))), _e(_num(r.get("backwards"))), _e(f"{r.get('seconds', 0.0):.2f}")]
            for r in rows]
    body += [["<b>worst case</b>", _e(", ".join(_name(a) for a in w.get("attacks", []))), _e(_num(w["eps"])),
              f"<b>{_pct(w['robust_accuracy'])}</b>", f"{_e(_num(w.get('robust')))} / {_e(_num(n))}",
              _pct(1 - w["robust_accuracy"]), "", "", ""] for w in results.get("worst_case", [])]
    return ("<section id='attacks'><h2>Attacks × ε</h2><p>Robust accuracy, attack success rate (share of samples "
            "misclassified, clean errors included) and the budget each attack spent: forward and backward passes "
            "through the model, and seconds.</p>"
            + _table(["attack", "settings", "ε", "robust accuracy", "robust", "success rate", "forwards",
                      "backwards", "seconds"], body, right=(2, 3, 4, 5, 6, 7, 8)) + "</section>")


def _privacy_section(results: Mapping[str, Any], figs: _Figures) -> str:
    rows = results.get("privacy", {}).get("attacks", []) if isinstance(results.get("privacy"), Mapping) else []
    if not rows:
        return ""
    fprs = list(dict.fromkeys(k for r in rows for k in r.get("tpr_at_fpr", {})))
    img = ""
    with_roc = [r for r in rows if r.get("roc")]
    if with_roc:
        fig = figs.new(5.5, 5.0)
        ax = fig.add_subplot(1, 1, 1)
        floor = 1.0 / max(max(int(r.get("n_nonmembers") or 1) for r in with_roc), 1)
        ax.plot([floor, 1], [floor, 1], ls="--", color="gray", lw=0.8, label="chance")
        for r in with_roc:
            pts = [(f, t) for f, t in zip(r["roc"]["fpr"], r["roc"]["tpr"]) if f > 0 and t > 0]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=_label(f"{r['attack']} (AUC {r['auc']:.3f})"))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
        img = figs.embed(fig, "privacy_roc", "Membership-inference ROC on log-log axes")

    def with_ci(r: Mapping[str, Any], key: str, ci_key: str, fmt: Any) -> str:
        ci = r.get("ci", {}).get(ci_key)
        value = fmt(r.get(key) if key in r else r.get("tpr_at_fpr", {}).get(key))
        return value + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "")

    def baseline(r: Mapping[str, Any]) -> str:
        b = r.get("baseline")
        return f"{b['auc']:.3f}" if isinstance(b, Mapping) and b.get("auc") is not None else "—"

    body = [[_e(r["attack"]), _e(with_ci(r, "auc", "auc", lambda v: "n/a" if v is None else f"{v:.3f}")),
             _e(with_ci(r, "balanced_accuracy", "balanced_accuracy", _pct)),
             *[_e(with_ci(r, f, f"tpr@{f}", _pct)) if f in r.get("tpr_at_fpr", {}) else "" for f in fprs],
             _e(baseline(r)), f"{_e(_num(r.get('n_members')))} / {_e(_num(r.get('n_nonmembers')))}",
             "<br>".join(_e(w) for w in r.get("warnings", []))] for r in rows]
    return ("<section id='privacy'><h2>Privacy: membership inference</h2><p>How well an attacker can tell whether "
            "a sample was in the training data. What matters is the true-positive rate at a low false-positive "
            "rate: an attack that confidently identifies even a few members is a real leak. Brackets hold "
            "bootstrap confidence intervals; the baseline is the same attack against a model trained on other "
            "data (about 0.5 when the attack measures membership and nothing else).</p>" + img
            + _table(["attack", "AUC", "balanced accuracy", *[f"TPR at FPR {f}" for f in fprs], "baseline AUC",
                      "members / non-members", "warnings"], body)
            + _inversion(results["privacy"].get("inversion"), figs) + "</section>")


def _inversion(inv: Any, figs: _Figures) -> str:
    """Model inversion's reconstructions, one per class, and how an independent classifier judged them."""
    if not isinstance(inv, Mapping) or "x" not in inv:
        return ""
    import numpy as np

    x = np.asarray(inv["x"], dtype=np.float32)
    k = min(len(x), MAX_INVERSIONS)
    fig = figs.new(1.3 * k, 1.8)
    for i in range(k):
        ax = fig.add_subplot(1, k, i + 1)
        img = _image(x[i])
        ax.imshow(np.clip(img, 0, 1), cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
        ax.set_title(_label(f"class {inv['classes'][i]}"), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    img = figs.embed(fig, "inversion", "MI-Face reconstructions, one per class"
                     + (f" (the first {k} of {len(x)} classes)" if k < len(x) else ""))
    base = inv.get("baseline_evaluator_accuracy")
    return (f"<h3>Model inversion</h3><p>MI-Face rebuilds an input per class from the model's confidences alone. "
            f"An independent classifier ({_e(inv.get('evaluator', ''))}) recognises {_pct(inv['evaluator_accuracy'])} "
            f"of the reconstructions as their class; for an untrained copy of the model it recognises "
            f"{_pct(base)} (chance is {_pct(inv.get('chance'))}). Well above the baseline means the model gives "
            f"away what its classes look like.</p>{img}")


def _detectors_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The poison detectors at one poison rate: detection quality, and the backdoor left after removing what they
    flagged and retraining."""
    if not rows:
        return ""
    fprs = list(dict.fromkeys(k for r in rows for k in r.get("tpr_at_fpr", {})))
    body = [[_e(r["detector"]), _e(_num(r.get("params", {}).get("layer", ""))), _e(_num(r["poison_rate"])),
             "n/a" if r.get("auroc") is None else f"{r['auroc']:.3f}", f"{_pct(r.get('tpr'))} / {_pct(r.get('fpr'))}",
             *[_pct(r.get("tpr_at_fpr", {}).get(f)) for f in fprs], _e(_num(r.get("after", {}).get("removed"))),
             *[(f"{_pct(r['before'][k])} → " if k in r.get("before", {}) else "") + _pct(r.get("after", {}).get(k))
               for k in ("attack_success_rate", "clean_accuracy")]]
            for r in rows]
    return ("<h3>Finding the poisons</h3><p>Each detector inspects the poisoned training set through the "
            "poisoned model and flags the samples it suspects; AUROC and TPR at a fixed FPR rate its ranking, TPR / "
            "FPR its own decision. The flagged samples are then removed and the model is retrained: a low attack "
            "success rate afterwards means the defense removed the backdoor.</p>"
            + _table(["detector", "layer", "poison rate", "AUROC", "TPR / FPR", *[f"TPR at FPR {f}" for f in fprs],
                      "removed", "attack success rate (before → after)", "clean accuracy (before → after)"], body,
                     right=tuple(range(2, 8 + len(fprs)))))


def _poisoning_section(results: Mapping[str, Any], figs: _Figures) -> str:
    suite = results.get("poisoning") if isinstance(results.get("poisoning"), Mapping) else {}
    rows, detectors = suite.get("attacks", []), suite.get("detectors", [])
    if not rows and not detectors:
        return ""
    img = table = ""
    if rows:
        fig, ax = _per_attack_plot(figs, rows, "poison_rate", "attack_success_rate",
                                   "poison rate (share of training data poisoned)")
        if all(r["poison_rate"] > 0 for r in rows):
            ax.set_xscale("log")
        ax.legend()
        img = figs.embed(fig, "poisoning_asr", "Attack success rate against poison rate")
        body = [[_e(r["attack"]), _e(_num(r["poison_rate"])), _e(_num(r.get("n_poison", ""))),
                 _pct(r["attack_success_rate"]), _pct(r.get("clean_accuracy"))] for r in rows]
        table = _table(["attack", "poison rate", "poisoned samples", "attack success rate", "clean accuracy"], body,
                       right=(1, 2, 3, 4))
    return ("<section id='poisoning'><h2>Poisoning and backdoors</h2><p>The share of triggered test inputs the "
            "poisoned model sends to the attacker's target, as more of the training data is poisoned; a "
            "high success rate with unchanged clean accuracy is a stealthy backdoor.</p>" + img + table
            + _detectors_table(detectors) + "</section>")


def _certify_rows(method: Mapping[str, Any]) -> list[list[str]]:
    """Table rows of one certification method: its budget, certified accuracy and count."""
    out = []
    for r in method.get("rows", []):
        if "eps" in r:
            budget = f"L∞ ε={_num(r['eps'])}"
        else:
            covers = [f"{_NORMS.get(k[:-4], k[:-4])} ε={_num(v)}" for k, v in r.items() if k.endswith("_eps")]
            budget = f"L2 radius {_num(r['radius'])}" + (f" (covers {covers[0]})" if covers else "")
            if r.get("beyond_max_radius"):
                budget += " — beyond the largest radius these samples can certify"
        out.append([_e(method["method"]), _e(budget), _pct(r["certified_accuracy"]), _e(_num(r.get("certified")))])
    return out


def _certify_section(results: Mapping[str, Any], figs: _Figures) -> str:
    suite = results.get("certify") if isinstance(results.get("certify"), Mapping) else {}
    methods = suite.get("methods", [])
    if not methods:
        return ""
    done = [m for m in methods if m.get("rows")]
    img = ""
    if done:
        fig = figs.new(5.0 * len(done), 4.2)
        for i, m in enumerate(done):
            ax = fig.add_subplot(1, len(done), i + 1)
            key = "eps" if m["method"] == "ibp" else "radius"
            pts = sorted((r[key], r["certified_accuracy"]) for r in m["rows"])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=_label(m["method"]))
            if "clean_accuracy" in suite:
                ax.axhline(suite["clean_accuracy"], color="gray", ls="--", lw=1, label="clean accuracy")
            ax.set_xlabel("L∞ ε (IBP)" if key == "eps" else _label(f"L2 radius (smoothing, σ={_num(m.get('sigma'))})"))
            ax.set_ylabel("certified accuracy")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            ax.legend()
        img = figs.embed(fig, "certified_accuracy", "Certified accuracy against the budget for each certifier")
    notes = []
    for m in methods:
        if m.get("status") == "skipped":
            notes.append(f"<p class='skip'>{_e(m['method'])} was skipped: {_e(m.get('reason', ''))}</p>")
        elif m["method"] == "smoothing":
            notes.append(
                f"<p>Randomized smoothing certifies the smoothed classifier (the majority vote under Gaussian noise of "
                f"σ={_e(_num(m.get('sigma')))}, {_e(_num(m.get('samples')))} noise samples per input, each "
                f"certificate wrong with probability at most {_e(_num(m.get('alpha')))}), not the model itself: it "
                f"is right on {_pct(m.get('smoothed_accuracy'))} of the samples and abstains on "
                f"{_pct(m.get('abstain_rate'))}; no radius above {_e(_num(m.get('max_radius')))} can be certified "
                "with this many samples."
                + (" An L2 ball of radius ε√d contains the L∞ ball of radius ε (d input dimensions), so the L2 "
                   "radius ε√d certifies L∞ ε." if any("linf_eps" in r for r in m.get("rows", [])) else "")
                + "</p>")
    body = [row for m in done for row in _certify_rows(m)]
    return ("<section id='certify'><h2>Certified robustness</h2><p>A certified accuracy is a proven lower bound: "
            "at least this share of the samples is classified correctly under every attack within the budget, "
            "whatever the attacker tries (for smoothing, with high probability). Attacks give upper bounds; the "
            f"truth lies between.</p>{img}{''.join(notes)}"
            + (_table(["method", "budget", "certified accuracy", "certified"], body, right=(2, 3)) if body else "")
            + "</section>")


def _defense_section(results: Mapping[str, Any], figs: _Figures) -> str:
    suite = results.get("defense") if isinstance(results.get("defense"), Mapping) else {}
    rows = suite.get("rows", [])
    if not rows:
        return ""
    clean = suite.get("clean_accuracy", {})
    lines = {"undefended": "undefended model", "oblivious": "defense, oblivious attacker",
             "adaptive": "defense, adaptive attacker"}
    fig = figs.new()
    ax = fig.add_subplot(1, 1, 1)
    for key, label in lines.items():
        ax.plot([r["eps"] for r in rows], [r[key] for r in rows], marker="o", lw=2.5 if key == "adaptive" else 1.5,
                label=label)
    for key, style in (("undefended", ":"), ("defended", "--")):
        if clean.get(key) is not None:
            ax.axhline(clean[key], color="gray", ls=style, lw=1, label=f"clean accuracy, {key}")
    norm = _NORMS.get(str(suite.get("norm", "")), "")
    ax.set_xlabel(f"ε ({norm} budget, input units)")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    img = figs.embed(fig, "defense", "Robust accuracy against ε: undefended, and the defense against an oblivious and "
                                     "an adaptive attacker")
    attacks = list(suite.get("adaptive_attacks", []))
    body = [[_e(_num(r["eps"])), _pct(r["undefended"]), _pct(r["oblivious"]), _pct(r["adaptive"]),
             *[_pct(r.get("attacks", {}).get(a)) for a in attacks]] for r in rows]
    body.insert(0, ["clean", _pct(clean.get("undefended")), _pct(clean.get("defended")), _pct(clean.get("defended")),
                    *[""] * len(attacks)])
    table = _table(["ε", "undefended", "oblivious attacker", "adaptive attacker (worst case)", *attacks], body,
                   right=tuple(range(1, 4 + len(attacks))))
    gain = max(r["adaptive"] - r["undefended"] for r in rows)
    box = "okbox" if gain >= 0.05 else "warnbox"
    layer = suite.get("layer", {})
    retrained = ("the classifier was retrained on the defense's output" if suite.get("retrained")
                 else "the classifier is the audited model, unchanged")
    detector = (f" Inputs the detector flags are rejected ({_e(suite['detector'])}); a rejected adversarial input "
                "counts as defended, a rejected clean input as an error." if suite.get("detector") else "")
    return ("<section id='defense'><h2>Preprocessing defense</h2>"
            f"<p>The defense <code>{_e(layer.get('description', layer.get('name', '')))}</code> sits in front of the "
            f"classifier ({_e(retrained)}). The oblivious attacker crafts its inputs on the undefended model; the "
            "adaptive one attacks the whole defended pipeline (the exact gradient and BPDA, EOT over random draws, "
            "the detector and classifier jointly), and a sample counts as robust only if every attack failed on it "
            f"at this budget and every smaller one.{detector}</p><p class='{box}'>{_e(suite.get('verdict', ''))}</p>"
            + img + table + "</section>")


def _image(a: Any) -> Any:
    """One image as (H, W) or (H, W, C) for imshow."""
    import numpy as np

    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    return a


def _examples_section(examples: Mapping[str, Any] | None, figs: _Figures) -> str:
    if examples is None:
        return ""
    import numpy as np

    ex = check_examples(examples)
    x, x_adv, y, pred = ex["x"], ex["x_adv"], ex["y"], ex["pred_adv"]
    k = min(len(x), MAX_EXAMPLES)
    fig = figs.new(2.0 * k, 6.3)
    for i in range(k):
        clean, adv = _image(x[i]), _image(x_adv[i])
        delta = adv - clean
        scale = float(np.abs(delta).max()) or 1.0
        panels = [
            (clean, {"cmap": "gray", "vmin": 0, "vmax": 1}, f"clean, label {y[i]}"),
            (adv, {"cmap": "gray", "vmin": 0, "vmax": 1}, f"adversarial → {pred[i]}"),
            (delta if delta.ndim == 2 else 0.5 + delta / (2 * scale),
             {"cmap": "seismic", "vmin": -scale, "vmax": scale} if delta.ndim == 2 else {},
             f"change (±{scale:.3g})"),
        ]
        for row, (img, kw, title) in enumerate(panels):
            ax = fig.add_subplot(3, k, row * k + i + 1)
            ax.imshow(np.clip(img, 0, 1) if img is not delta else img, **kw)
            ax.set_title(_label(title), fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    img = figs.embed(fig, "examples", "Clean inputs, adversarial inputs and the change between them")
    return ("<section id='examples'><h2>Examples</h2><p>Top: clean inputs with their true label. Middle: the "
            "adversarial inputs with the model's prediction. Bottom: the change, scaled to be visible (red "
            f"brighter, blue darker).</p>{img}</section>")


def _command(results: Mapping[str, Any]) -> tuple[str | None, str]:
    """The ``adverse audit`` command line that reproduces the results (None when the CLI cannot express the
    configuration) and the equivalent Python call."""
    cfg, model, data = results.get("config", {}), results.get("model", {}), results.get("data", {})
    attacks = cfg.get("attacks", {})
    steps = {a: s["steps"] for a, s in attacks.items() if "steps" in s}
    checks = "checks" in cfg
    suites = list(cfg.get("suites", ["evasion"]))
    aa = cfg.get("autoattack")
    protocol = cfg.get("protocol") == "robustbench"
    mn = "minimal_norm" in cfg or "evasion" not in suites
    options = {k: cfg[k] for k in registry.KEYS if cfg.get(k)}
    defense = cfg.get("defense") or {}
    cli_defense = set(defense) == {"layer"} and isinstance(defense["layer"], str)  # --defense says it all
    eps = ",".join(repr(float(e)) for e in cfg.get("eps", []))
    py_args = [f"eps={tuple(float(e) for e in cfg.get('eps', []))!r}", f"norm={cfg.get('norm')!r}",
               f"n={cfg.get('n')!r}", f"steps={steps!r}", f"attacks={tuple(attacks)!r}",
               f"batch_size={cfg.get('batch_size')!r}", f"seed={cfg.get('seed')!r}", f"checks={checks}",
               f"suites={suites!r}", f"minimal_norm={mn}", f"autoattack={aa['version'] if aa else None!r}"]
    if checks and "n" in cfg["checks"]:
        py_args.append(f"check_n={cfg['checks']['n']!r}")
    if aa:
        py_args.append(f"autoattack_n={aa['n']!r}")
    if cfg.get("precision"):
        py_args.append(f"precision={cfg['precision']!r}")
    named = ("privacy", "poisoning", "certify", "defense")  # audit()'s own keyword arguments; the rest: options=
    py_args += [f"{k}={v!r}" for k, v in options.items() if k in named]
    others = {registry.get(k.replace("_", "-")).name: v for k, v in options.items() if k not in named}
    if others:
        py_args.append(f"options={others!r}")
    user = model.get("source") == "user"
    if user:
        py_args = ["model", "data", *py_args]
        if "train" in data:
            py_args.insert(2, "train_data=train_data")
        if model.get("recipe"):
            py_args.insert(2, "recipe=recipe")
    py = ("import adverse\n"
          + ("# model, data (, train_data, recipe): what was audited\n" if user else "")
          + "result = adverse.evaluation.audit(\n" + "".join(f"    {a},\n" for a in py_args) + ")")
    from .evasion_suite import DEFAULT_ATTACKS, DEFAULT_STEPS

    default_steps = all(DEFAULT_STEPS.get(a) == s for a, s in steps.items())  # no --steps needed
    default_budgets = (not aa or aa.get("n") == min(100, results.get("n") or 0) or protocol) and (
        not checks or cfg["checks"].get("n") == min(100, results.get("n") or 0))
    expressible = ((len(set(steps.values())) <= 1 or default_steps) and (set(attacks) == set(DEFAULT_ATTACKS) or "evasion" not in suites)
                   and isinstance(cfg.get("batch_size"), int) and (mn or protocol) and set(options) <= ({"defense"} if cli_defense else set())
                   and default_budgets
                   and (not user or ("file" in model and "spec" in data
                                     and ("train" not in data or "spec" in data["train"])
                                     and (not model.get("recipe") or "recipe_spec" in model))))
    if not expressible:
        return None, py
    cli = ["adverse", "audit", "--eps", eps, "--norm", str(cfg.get("norm"))]
    if cfg.get("n") is not None:
        cli += ["--n", str(cfg["n"])]
    if steps and not default_steps:
        cli += ["--steps", str(next(iter(steps.values())))]
    cli += ["--seed", str(cfg.get("seed")), "--suites", ",".join(suites)]
    if cli_defense:
        cli += ["--defense", defense["layer"]]
    if protocol:
        cli += ["--protocol", "robustbench"] + (["--checks"] if checks else [])  # the protocol's default: none
    elif "evasion" in suites:
        cli += ["--autoattack", aa["version"] if aa else "off"]
    if not checks and not protocol:
        cli.append("--no-checks")
    if cfg.get("precision"):
        cli += ["--precision", str(cfg["precision"])]
    if cfg.get("batch_size") != 256:
        cli += ["--batch-size", str(cfg["batch_size"])]
    if user:
        cli += ["--model", str(model["file"])] + (["--arch", str(model["arch"])] if model.get("arch") else [])
        given = cfg.get("normalize")
        if isinstance(given, dict) and given.get("source") == "given":  # --mean/--std (a folder's own: implied)
            cli += ["--mean", ",".join(repr(float(v)) for v in given.get("mean", [])),
                    "--std", ",".join(repr(float(v)) for v in given.get("std", []))]
        cli += ["--data", str(data["spec"])]
        images = data.get("images")
        if isinstance(images, dict):  # --image-size, --resize, --center-crop
            cli += [a for k in ("image_size", "resize", "center_crop") if isinstance(images.get(k), int)
                    for a in (f"--{k.replace('_', '-')}", str(images[k]))]
        if "train" in data:
            cli += ["--train-data", str(data["train"]["spec"])]
        if model.get("recipe_spec"):
            cli += ["--recipe", str(model["recipe_spec"])]
    return shlex.join(cli), py


def _reproduce_section(results: Mapping[str, Any]) -> str:
    if "config" not in results:
        return ""
    cli, py = _command(results)
    cfg = results["config"]
    parts = ["<section id='reproduce'><h2>Reproduce</h2>"]
    if cli is not None:
        parts.append(f"<p>Command line (seed {_e(cfg.get('seed'))}; add <code>--out DIR</code>):</p><pre>{_e(cli)}</pre>")
    else:
        parts.append("<p>This configuration has no exact command-line form; the Python call reproduces it.</p>")
    parts.append(f"<p>Python:</p><pre>{_e(py)}</pre>")
    parts.append(f"<h3>Configuration</h3><pre>{_e(json.dumps(cfg, indent=2))}</pre>")
    info = [("model", _num(results.get("model", {}))), ("data", _num(results.get("data", {})))]
    info += [(k, _num(v)) for k, v in results.get("environment", {}).items()]
    budget = results.get("budget", {})
    info += [(f"total {k}", _num(v)) for k, v in budget.items()]
    info += [(f"seconds ({k})", f"{v:.2f}") for k, v in results.get("seconds", {}).items()]
    info += [(k, _num(results[k])) for k in ("created", "schema_version") if k in results]
    parts.append("<h3>Versions, budget and timing</h3>" + _table(["", "value"], [[_e(k), _e(v)] for k, v in info]))
    parts.append("</section>")
    return "".join(parts)


# --------------------------------------------------------------------------------------------- the report
_EXAMPLE_KEYS = ("x", "x_adv", "y", "pred_adv")


def check_examples(examples: Mapping[str, Any], where: str = "examples") -> dict[str, Any]:
    """The example arrays, checked: ``x`` and ``x_adv`` real-valued, finite, of one shape that the report can draw
    (:func:`~adverse.evaluation.schema.image_stack_shape`), ``y`` and ``pred_adv`` 1-D integer labels, one per
    drawn image, ``eps`` (optional) one finite number. Raises :class:`InputError` naming ``where`` and the array."""
    import numpy as np

    from .schema import image_stack_shape

    if not isinstance(examples, Mapping):
        raise InputError(f"{where} must be a mapping of arrays x, x_adv, y and pred_adv, got {type(examples).__name__}")
    missing = [k for k in _EXAMPLE_KEYS if k not in examples]
    if missing:
        raise InputError(f"{where} lacks {missing}; pass a mapping with arrays x, x_adv, y and pred_adv")
    out: dict[str, Any] = {}
    for k in _EXAMPLE_KEYS + (("eps",) if "eps" in examples else ()):
        try:
            a = np.asarray(examples[k])
        except (ValueError, TypeError) as e:
            raise InputError(f"{where}: {k} is not an array ({e})") from None
        if a.dtype.kind not in "fiu":
            raise InputError(f"{where}: {k} holds {a.dtype} values; it must hold real numbers")
        out[k] = a
    x, x_adv = out["x"], out["x_adv"]
    why = image_stack_shape(tuple(x.shape))
    if why is not None:
        raise InputError(f"{where}: x {why}")
    if x.shape != x_adv.shape:
        raise InputError(f"{where}: x {x.shape} and x_adv {x_adv.shape} must match, with a label and an "
                         "adversarial prediction per image")
    for k in ("x", "x_adv"):
        if not np.isfinite(out[k]).all():
            raise InputError(f"{where}: {k} holds NaN or infinite values; rerun the audit to write the examples again")
        if out[k].size and float(np.abs(out[k]).max()) > 1e6:
            raise InputError(f"{where}: {k} holds values beyond ±1e6, not inputs inside a model's bounds; rerun the "
                             "audit to write the examples again")
    k_drawn = min(len(x), MAX_EXAMPLES)
    for k in ("y", "pred_adv"):
        if out[k].dtype.kind not in "iu" or out[k].ndim != 1 or len(out[k]) < k_drawn:
            raise InputError(f"{where}: {k} must be a 1-D array of integer labels, one per image (at least "
                             f"{k_drawn}), got {out[k].dtype} of shape {out[k].shape}")
    if "eps" in out and (out["eps"].size != 1 or not np.isfinite(out["eps"]).all()):
        raise InputError(f"{where}: eps must be one finite number, got shape {out['eps'].shape}")
    return out


def _read_npz(raw: bytes, path: Path) -> dict[str, Any]:
    """The arrays of an .npz archive held in ``raw``, read without unpickling and without trusting its sizes: every
    member's uncompressed size counts towards :data:`MAX_EXAMPLES_BYTES`, and an array whose header declares more
    data than its member holds is refused before anything is allocated."""
    import zipfile

    import numpy as np

    if raw[:4] != b"PK\x03\x04":
        raise ValueError("not an .npz archive (no zip header)")
    out = {}
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        members = [i for i in z.infolist() if i.filename.endswith(".npy") and i.filename[:-4] in
                   (*_EXAMPLE_KEYS, "eps")]
        if sum(i.file_size for i in members) > MAX_EXAMPLES_BYTES:
            raise ValueError(f"its arrays unpack to more than {MAX_EXAMPLES_BYTES:,} bytes")
        for info in members:
            with z.open(info) as f:
                version = np.lib.format.read_magic(f)
                shape, _fortran, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                          else np.lib.format.read_array_header_2_0(f))
                if dtype.hasobject:
                    raise ValueError(f"{info.filename} holds Python objects (pickled data)")
                if int(np.prod(shape, dtype=object)) * dtype.itemsize > info.file_size:
                    raise ValueError(f"{info.filename} declares shape {shape} of {dtype}, more than it holds")
            with z.open(info) as f:
                out[info.filename[:-4]] = np.lib.format.read_array(f, allow_pickle=False)
    return out


def load_examples(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The example images an audit saved next to its ``results.json`` (``examples.npz``), checked
    (:func:`check_examples`), or None when there is no such file. A regular file of at most
    :data:`MAX_EXAMPLES_BYTES`, read without unpickling; anything else is an :class:`InputError` naming the file."""
    import zipfile
    import zlib

    from .audit import EXAMPLES_FILE
    from .schema import read_regular_file

    path = Path(folder) / EXAMPLES_FILE
    if not path.is_file():
        return None
    raw = read_regular_file(path, MAX_EXAMPLES_BYTES, "examples file")
    try:
        arrays = _read_npz(raw, path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as e:
        raise InputError(f"{path} is not a valid examples file ({e}); delete it or rerun the audit") from None
    return check_examples(arrays, str(path))


def render_report(results: Mapping[str, Any], out_dir: str | os.PathLike[str], *,
                  examples: Mapping[str, Any] | None = None) -> Path:
    """Write ``out_dir/report.html`` (self-contained) and ``out_dir/figures/*.png`` from ``results``.

    Parameters
    ----------
    results : the dictionary ``results.json`` holds (:meth:`AuditResult.to_dict`), possibly with the optional
        ``"privacy"`` and ``"poisoning"`` keys described in this module's docstring.
    out_dir : the folder to write into (created if missing).
    examples : optional mapping with numpy arrays ``x``, ``x_adv``, ``y``, ``pred_adv`` for an image grid.

    Returns
    -------
    Path of ``report.html``. Both the HTML and the PNG files are written atomically.

    Raises
    ------
    InputError : ``results`` is not a mapping or fails the results schema (the keys present are checked, naming
        the JSON path: :func:`adverse.evaluation.schema.validate_results` with ``partial=True``), ``out_dir`` is an
        existing file, ``out_dir/figures`` or ``out_dir/report.html`` is a symbolic link, or ``examples`` is
        malformed (:func:`check_examples`). Nothing is written then.
    """
    if not isinstance(results, Mapping):
        raise InputError(f"results must be the dictionary of results.json, got {type(results).__name__}")
    from .schema import validate_results

    validate_results(dict(results), source="results", partial=True)
    if examples is not None:
        examples = check_examples(examples)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder; choose another output folder")
    for p in (out / FIGURES_DIR, out / REPORT_FILE):
        if p.is_symlink():
            raise InputError(f"{p} is a symbolic link; adverse writes the report only inside the output folder: "
                             "remove the link or choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    with _drawing():
        return _render(results, out, examples)


@contextlib.contextmanager
def _drawing() -> Iterator[None]:
    """Matplotlib settings under which text from the results is drawn as written: no LaTeX (a user's
    ``text.usetex`` would hand it to TeX), mathtext parsing on so that :func:`_label`'s escapes apply, and no
    warnings for glyphs the font lacks (they are drawn as boxes)."""
    import warnings

    import matplotlib

    rc: dict[str, Any] = {"text.usetex": False}
    if "text.parse_math" in matplotlib.rcParams:
        rc["text.parse_math"] = True
    with matplotlib.rc_context(rc), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from")
        yield


_SAMPLE_WORDS = {"evasion": "attacked", "checks": "sanity checks", "minimal_norm": "minimal-norm curve",
                 "autoattack": "AutoAttack", "examples": "examples", "privacy": "members, and as many non-members",
                 "poisoning": "test samples", "certify": "certified", "defense": "evaluated",
                 "corruptions": "images corrupted", "backdoor_scan": "clean images", "dp_audit": "training records"}


def _with_samples(section: str, results: Mapping[str, Any], parts: Sequence[str]) -> str:
    """``section`` with the sample counts of ``parts`` (results.json's ``samples``) under its heading."""
    samples = results.get("samples")
    if not section or not isinstance(samples, Mapping) or "</h2>" not in section:
        return section
    found = [f"{_e(_num(samples[p]))} {_e(_SAMPLE_WORDS.get(p, p))}" for p in parts if p in samples]
    if not found:
        return section
    n = results.get("config", {}).get("n")
    bound = f" (bounded by n = {_e(_num(n))})" if n is not None else ""
    head, _, tail = section.partition("</h2>")
    return f"{head}</h2><p class='samples'>Samples: {'; '.join(found)}{bound}.</p>{tail}"


def _render(results: Mapping[str, Any], out: Path, examples: Mapping[str, Any] | None) -> Path:
    figs = _Figures(out / FIGURES_DIR)
    sections = [
        _header(results),
        _summary_section(results),
        report_section(results),
        _with_samples(_curves_section(results, figs), results, ("evasion", "minimal_norm", "autoattack")),
        _with_samples(_checks_section(results), results, ("checks",)),
        _with_samples(_attacks_section(results), results, ("evasion",)),
        _with_samples(_privacy_section(results, figs), results, ("privacy",)),
        _with_samples(_poisoning_section(results, figs), results, ("poisoning",)),
        _with_samples(_certify_section(results, figs), results, ("certify",)),
        _with_samples(_defense_section(results, figs), results, ("defense",)),
        *[_with_samples(suite.section(results[key], figs), results, (key,)) for key, suite in _own_sections(results)],
        _with_samples(_examples_section(examples, figs), results, ("examples",)),
        _reproduce_section(results),
    ]
    page = ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{_e(_title(results))}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(s for s in sections if s) + "\n</body></html>\n")
    path = out / REPORT_FILE
    write_atomic(path, page.encode("utf-8"))
    return path
