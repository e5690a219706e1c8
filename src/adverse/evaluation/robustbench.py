"""The RobustBench protocol (``adverse audit --protocol robustbench``): standard AutoAttack on every selected point
at one budget, clean and robust accuracy as the leaderboard defines them, and the two files a leaderboard entry is
made of.

RobustBench's definitions (Croce et al., NeurIPS 2021 Datasets and Benchmarks): clean accuracy is the share of the
evaluated points the model classifies correctly; robust accuracy (``autoattack_acc``) is the share classified
correctly *and* not fooled by any of standard AutoAttack's four attacks (APGD-CE, APGD-T, FAB-T, Square 5000) at
``eps`` — a per-point worst case. The leaderboard evaluates the full test set (10,000 CIFAR-10 points; 5,000
ImageNet points) with ε = 8/255 (L∞) or 0.5 (L2) on CIFAR, 4/255 (L∞) on ImageNet; an entry on fewer points or
another ε is not comparable, and the files say so.

:func:`protocol_options` turns the command line's settings into the audit's; :func:`model_info` builds the
``robustbench.json`` entry (the fields of a RobustBench ``model_info`` file, plus the evaluation's own), and
:func:`autoattack_log` writes AutoAttack's text log from the per-attack record the audit keeps. Nothing here
attacks: the audit does, through :func:`adverse.evasion.autoattack`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import InputError

LEADERBOARD = {("linf", 8 / 255): "CIFAR-10/100 L∞", ("l2", 0.5): "CIFAR-10 L2", ("linf", 4 / 255): "ImageNet L∞"}
"""The leaderboards' budgets (threat model, ε)."""
MIN_POINTS = 5000
"""The fewest points a leaderboard evaluates (ImageNet's 5,000; CIFAR's is 10,000)."""
THREAT_MODELS = {"linf": "Linf", "l2": "L2", "l1": "L1"}
CAVEATS = (
    ("AutoAttack gives an upper bound on robust accuracy: a stronger or adaptive attack may find more errors; "
     "models with randomness or non-differentiable parts need an adaptive evaluation (the audit's checks), and "
     "RobustBench flags such entries as unreliable."),
    ("The leaderboard evaluates the full test set (10,000 CIFAR points, 5,000 ImageNet points); an evaluation on "
     "fewer points carries sampling error and is not comparable."),
    ("Only the leaderboard's budgets are comparable: L∞ 8/255 and L2 0.5 on CIFAR, L∞ 4/255 on ImageNet, on inputs "
     "in [0, 1] with any normalization inside the model."),
)
REDUCED_PRECISION_CAVEAT = (
    "AutoAttack searched in {precision} autocast, the leaderboard's reference in fp32: every point reported fooled "
    "was confirmed by the model in fp32, but the search can differ from an fp32 one (measured on a PGD-trained "
    "digits CNN and a ResNet-18 in benchmarks/BENCHMARKS.md); rerun with --precision fp32 for the reference's "
    "computation.")


def _precision(results: Mapping[str, Any]) -> str:
    """The precision AutoAttack searched in (its ``acceleration`` record; fp32 where it has none)."""
    acc = results["autoattack"].get("acceleration")
    return str(acc.get("precision", "fp32")) if isinstance(acc, Mapping) else "fp32"


def protocol_options(eps: list[float]) -> dict[str, Any]:
    """The audit settings of the protocol: one budget; standard AutoAttack on every point the audit selects (all,
    or the first ``n``); no minimal-norm curve (AutoAttack decides alone); the checks as asked."""
    if len(eps) != 1:
        raise InputError(f"--protocol robustbench evaluates one budget, got --eps {','.join(f'{e:g}' for e in eps)}; "
                         "pass one, e.g. --eps 8/255")
    return {"autoattack": "standard", "autoattack_n": None, "minimal_norm": False}


def _pct(x: float | None) -> str | None:
    return None if x is None else f"{100 * x:.2f}"


def _eps_text(eps: float) -> str:
    """``8/255`` for a multiple of 1/255 below 1 (as the leaderboard writes L∞ budgets), else the number."""
    k = eps * 255
    return f"{round(k)}/255" if 0 < eps < 1 and abs(k - round(k)) < 1e-6 and round(k) % 255 else f"{eps:g}"


def model_info(results: Mapping[str, Any]) -> dict[str, Any]:
    """A ``robustbench.json`` entry from an audit run under the protocol: RobustBench's ``model_info`` fields
    (``name``, ``dataset``, ``threat_model``, ``eps``, ``clean_acc``, ``autoattack_acc`` as percentages with two
    decimals, ``number_forward_passes``, ``architecture``; ``link``, ``authors``, ``venue``, ``additional_data``,
    ``reported`` and ``footnote`` left for the author), and the evaluation's own: points, attack budget, per-attack
    robust accuracy, versions and whether it is comparable with the leaderboard."""
    aa = results.get("autoattack")
    if not isinstance(aa, Mapping) or aa.get("version") != "standard":
        raise InputError("the results hold no standard AutoAttack run; rerun with --protocol robustbench")
    cfg, model, data, env = (results.get(k, {}) for k in ("config", "model", "data", "environment"))
    eps, norm, n = float(aa["eps"]), str(cfg.get("norm", "linf")), int(aa["n"])
    per_attack = [p for p in aa.get("per_attack") or [] if isinstance(p, Mapping)]
    board = next((name for (nm, e), name in LEADERBOARD.items() if nm == norm and abs(e - eps) < 1e-9), None)
    clean = _clean_share(results, n)
    precision = _precision(results)
    return {
        "link": None, "name": model.get("name"), "authors": None, "additional_data": None,
        "number_forward_passes": 1, "dataset": data.get("name"), "venue": None,
        "architecture": model.get("class") or model.get("name"), "eps": _eps_text(eps),
        "clean_acc": _pct(clean), "reported": None, "autoattack_acc": _pct(float(aa["robust_accuracy"])),
        "footnote": None, "threat_model": THREAT_MODELS.get(norm, norm),
        "evaluation": {
            "protocol": "robustbench", "attack": "AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square 5000)",
            "n_points": n, "eps_value": eps, "seed": cfg.get("seed"),
            "per_attack": [{"attack": p.get("attack"), "robust_accuracy": p.get("robust_accuracy"),
                            "fooled": p.get("fooled"), "seconds": p.get("seconds")} for p in per_attack],
            "attack_forwards": aa.get("forwards"), "attack_backwards": aa.get("backwards"),
            "seconds": aa.get("seconds"), "leaderboard_budget": board,
            "comparable": board is not None and n >= MIN_POINTS,
            "caveats": list(CAVEATS) + ([REDUCED_PRECISION_CAVEAT.format(precision=precision)]
                                        if precision != "fp32" else []),
            "precision": precision,
            "versions": {k: env.get(k) for k in ("adverse", "torch", "python") if k in env},
            "device": env.get("device"),
        },
    }


def _clean_share(results: Mapping[str, Any], n: int) -> float | None:
    """Clean accuracy on the AutoAttack points: the audit's when AutoAttack ran on all of them in fp32, else from
    AutoAttack's own count of initially correct points (its first attack attacks exactly those; its clean pass is
    in fp32 whatever precision it searched in)."""
    aa = results["autoattack"]
    if n == results.get("n") and _precision(results) == "fp32":  # else the audit's clean pass was not in fp32
        return float(results["clean_accuracy"])
    first = (aa.get("per_attack") or [{}])[0]
    return first.get("attacked", 0) / n if isinstance(first, Mapping) and n else None


def autoattack_log(results: Mapping[str, Any]) -> str:
    """AutoAttack's text log (as ``autoattack.AutoAttack(..., log_path=...)`` writes it) of the protocol's run."""
    aa = results["autoattack"]
    n, eps = int(aa["n"]), float(aa["eps"])
    per_attack = [p for p in aa.get("per_attack") or [] if isinstance(p, Mapping)]
    names = [str(p.get("attack")) for p in per_attack]
    clean = _clean_share(results, n)
    lines = ["setting parameters for standard version",
             f"using standard version including {', '.join(names)}.",
             (f"norm {THREAT_MODELS.get(results.get('config', {}).get('norm', 'linf'))}, eps {_eps_text(eps)} "
              f"({eps:.5f}), {n} points"),
             f"initial accuracy: {100 * (clean or 0.0):.2f}%"]
    elapsed = 0.0
    for p in per_attack:
        elapsed += float(p.get("seconds") or 0.0)
        lines.append(f"{p.get('attack')} - {p.get('fooled', 0)} out of {p.get('attacked', 0)} successfully perturbed")
        lines.append(f"robust accuracy after {str(p.get('attack')).upper()}: "
                     f"{100 * float(p.get('robust_accuracy') or 0.0):.2f}% (total time {elapsed:.1f} s)")
    lines.append(f"robust accuracy: {100 * float(aa['robust_accuracy']):.2f}%")
    return "\n".join(lines) + "\n"


def report_section(results: Mapping[str, Any]) -> str:
    """The report's protocol section (HTML): the numbers as the leaderboard states them, and the caveats."""
    from .html import escape, table

    if results.get("config", {}).get("protocol") != "robustbench" or not isinstance(results.get("autoattack"),
                                                                                      Mapping):
        return ""
    try:
        info = model_info(results)
    except (InputError, KeyError, TypeError, ValueError):
        return ""
    ev = info["evaluation"]
    rows = [[escape(k), escape(v)] for k, v in (
        ("dataset", info["dataset"]), ("threat model", info["threat_model"]), ("eps", info["eps"]),
        ("clean accuracy (%)", info["clean_acc"]), ("AutoAttack robust accuracy (%)", info["autoattack_acc"]),
        ("points", ev["n_points"]), ("leaderboard budget", ev["leaderboard_budget"] or "none"),
        ("comparable with the leaderboard", "yes" if ev["comparable"] else "no"))]
    caveats = "".join(f"<li>{escape(c)}</li>" for c in ev["caveats"])
    return ("<section id='protocol'><h2>Protocol: RobustBench</h2><p>Standard AutoAttack on every evaluated point "
            "at one budget; robust accuracy counts a point only when it is classified correctly and no attack of the "
            "four fooled it. Written to <code>robustbench.json</code> (a leaderboard entry) and "
            "<code>autoattack.log</code>.</p>" + table(["", "value"], rows) + f"<ul class='ev'>{caveats}</ul>"
            + "</section>")
