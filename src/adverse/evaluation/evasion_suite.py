"""The evasion suite: robust accuracy under FGSM, PGD, APGD-CE (and optionally Square) at every eps, the worst
case per sample, the gradient-masking checks, the minimal-norm curve confirmed by AutoAttack, and examples.

It reads the test data batch by batch (:meth:`adverse.data.Dataset.batches` or
:meth:`adverse.streaming.Stream.batches`), once per attack and budget, so a streamed test set of any size is
attacked in constant memory; each finished batch goes to the resume state (and, with ``save_adv``, its examples
to disk) as soon as it is done. Its results are the top-level numbers of ``results.json`` (``attacks``,
``worst_case``, ``checks``, ``minimal_norm``, ``autoattack``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from ..errors import InputError
from .common import SuiteContext, check_int, json_safe
from .suites import Suite

ATTACKS = ("fgsm", "pgd", "apgd-ce", "square")
DEFAULT_ATTACKS = ("fgsm", "pgd", "apgd-ce")
DEFAULT_STEPS = {"pgd": 40, "apgd-ce": 100}
SQUARE_QUERIES = 1000
EXAMPLES = 8


def check_attacks(attacks: Any) -> list[str]:
    """The attack names, known and distinct, in a fixed order (cheapest first)."""
    names = [attacks] if isinstance(attacks, str) else list(attacks)
    unknown = [a for a in names if a not in ATTACKS]
    if unknown or not names:
        raise InputError(f"unknown attack(s) {unknown}; choose among {', '.join(ATTACKS)}")
    if len(set(names)) != len(names):
        raise InputError(f"attacks lists an attack twice: {names}")
    return [a for a in ATTACKS if a in names]


def check_steps(steps: int | Mapping[str, int] | None) -> dict[str, int]:
    """Steps of the iterative attacks: an int for all, or a mapping by attack over the defaults."""
    out = dict(DEFAULT_STEPS)
    if steps is None:
        return out
    if isinstance(steps, Mapping):
        unknown = set(steps) - set(DEFAULT_STEPS)
        if unknown:
            raise InputError(f"steps names unknown attack(s) {sorted(unknown)}; iterative attacks are "
                             f"{', '.join(DEFAULT_STEPS)}")
        for k, v in steps.items():
            out[k] = check_int(f"steps[{k!r}]", v, 1)
        return out
    s = check_int("steps", steps, 1)
    return {k: s for k in out}


def attack_specs(names: Sequence[str], steps: Mapping[str, int]) -> dict[str, tuple[Callable[..., Any],
                                                                                   dict[str, Any], int]]:
    """(attack function, its settings, its cost per sample in gradient steps) of each named attack."""
    from ..evasion.apgd import apgd
    from ..evasion.gradient import fgsm, pgd
    from ..evasion.square import square

    recipes = {
        "fgsm": (fgsm, {}, 1),
        "pgd": (pgd, {"steps": steps["pgd"], "restarts": 1}, steps["pgd"]),
        "apgd-ce": (apgd, {"steps": steps["apgd-ce"], "loss": "ce"}, steps["apgd-ce"]),
        "square": (square, {"max_queries": SQUARE_QUERIES}, SQUARE_QUERIES // 3),
    }
    return {a: recipes[a] for a in names}


def black_box_attacks(names: list[str], requested: Any) -> list[str]:
    """A black-box model can only be queried: the default attacks become Square; asking for a white-box attack
    is an error."""
    if list(names) == list(DEFAULT_ATTACKS) and tuple(requested) == DEFAULT_ATTACKS:
        return ["square"]
    white = [a for a in names if a != "square"]
    if white:
        raise InputError(f"the model is a black box (it can only be queried, e.g. an ONNX file without onnx2torch): "
                         f"{', '.join(white)} need gradients; use attacks=['square']")
    return names


def predict_checked(model: Any, x: Any, black_box: bool) -> Any:
    """Predicted labels of one batch, after checking the model's answer (:func:`adverse.models.check_logits` for a
    torch model, the black-box answer checks otherwise); a forward pass that raises on these inputs becomes a
    :class:`~adverse.errors.ModelError` naming the data's shape and what the model expects."""
    import torch

    from ..evasion._query import check_answer
    from ..models import checked_logits

    if black_box:
        out = check_answer(torch.as_tensor(model(x)), x.shape[0], model.output or "scores", None)
        return out.long() if out.dim() == 1 else out.argmax(dim=1)
    # probabilities pass here: the attacks refuse them, naming the fix, and other suites may take them
    return checked_logits(model, x, probabilities=True).argmax(dim=1)


def attack_batch(task: Any) -> dict[str, Any]:
    """One attack on one batch (run by an executor): the per-sample outcome and the budget, JSON-ready."""
    fn, model, x, y, kwargs, *keep = task.payload
    r = fn(model, x, y, **kwargs)
    rec = {"success": r.success.cpu().numpy().astype(int).tolist(), "forwards": r.forwards,
           "backwards": r.backwards, "queries": r.queries, "seconds": r.seconds, "params": r.summary()["params"]}
    if keep and keep[0]:  # the examples themselves, for save_adv (taken out before the record is saved)
        rec["adversarial"] = {"x_adv": r.x_adv.detach().cpu().numpy(), "norms": r.norms.detach().cpu().numpy()}
    return rec


def _tasks(batches: Iterable[tuple[int, int, Any, Any]], pending: set[int], kept: list[tuple[int, int, Any]],
           seed: int, payload: tuple[Any, Any, dict[str, Any], bool]) -> Iterator[Any]:
    """One task per pending batch, built as the data is read (so only the batches in flight are in memory); each
    batch's ``(start, stop, y)`` is appended to ``kept`` as its task is made."""
    from ..execution import Task

    fn, model, settings, keep = payload
    for i, (a, b, xb, yb) in enumerate(t for t in batches if t[0] in pending):
        kept.append((a, b, yb))
        yield Task(i, seed, (fn, model, xb, yb, settings, keep))


def evasion_suite(
    ctx: SuiteContext,
    *,
    attacks: Sequence[str] = DEFAULT_ATTACKS,
    steps: int | Mapping[str, int] | None = None,
    checks: bool = True,
    check_n: int = 100,
    minimal_norm: bool = True,
    autoattack: str | None = "fast",
    autoattack_n: int | None = 100,
    examples: bool = True,
    save_adv: Any = None,
    compile: str = "auto",
) -> dict[str, Any]:
    """Run the evasion suite in an audit (see :func:`adverse.evaluation.audit.audit` for every option).

    ``ctx.extra`` must hold ``clean_correct`` (per sample, of the first ``ctx.extra["total"]`` samples) and
    ``key`` (the audit's fingerprint, for ``save_adv``). Returns ``attacks``, ``worst_case``, ``checks``,
    ``minimal_norm``, ``autoattack``, ``examples``, ``fooled``, ``config`` (what ran, for ``results.json``'s
    config) and ``samples``.
    """
    import numpy as np

    from ..execution import imap_tasks
    from ..zoo import train_with
    from .confirm import adversarial_examples, autoattack_confirmation, minimal_norm_from_batches, robust_at

    model, data, eps_list, norm, seed = ctx.model, ctx.data, ctx.eps, ctx.norm, ctx.seed
    bounds = tuple(data.bounds)
    total_n, clean_correct = ctx.extra["total"], ctx.extra["clean_correct"]
    names = check_attacks(attacks)
    if ctx.black_box:
        names = black_box_attacks(names, attacks)
        checks, minimal_norm, autoattack, examples = False, False, None, False
    specs = attack_specs(names, check_steps(steps))
    state, report, batch_size = ctx.state, ctx.progress, ctx.batch_size
    starts = [(a, min(a + batch_size, total_n)) for a in range(0, total_n, batch_size)]
    adv_writer = None
    if save_adv is not None:
        from ..results import AdversarialWriter

        adv_writer = AdversarialWriter(save_adv, ctx.extra["key"], norm=norm, bounds=bounds)

    rows: list[dict[str, Any]] = []
    fooled: dict[tuple[str, float], np.ndarray] = {}
    total_work = float(sum(specs[a][2] for a in names) * total_n * len(eps_list))
    done = 0.0
    extra = {} if bounds == (0.0, 1.0) else {"bounds": bounds}
    started = time.perf_counter()
    for e in eps_list:
        for name in names:
            fn, kwargs, cost = specs[name]
            description = f"{name} at eps {e:g}"
            report(description, done, total_work)
            # a batch is attacked again when its outcome is not in the state or (with save_adv) its examples are
            # not saved; the seed makes the rerun give the same examples
            pending = {a for a, b in starts if state.get(name, e, a, b) is None
                       or (adv_writer is not None and not adv_writer.has(name, e, a, b))}
            done += cost * (total_n - sum(b - a for a, b in starts if a in pending))
            settings = dict(eps=e, norm=norm, seed=seed, **kwargs, **extra)
            kept: list[tuple[int, int, Any]] = []
            tasks = _tasks(data.batches(batch_size, stop=total_n), pending, kept, seed,
                           (fn, model, settings, adv_writer is not None))
            for i, rec in enumerate(imap_tasks(attack_batch, tasks, ctx.executor)):
                a, b, yb = kept[i]
                kept[i] = (a, b, None)
                adv = rec.pop("adversarial", None)
                if adv_writer is not None:  # streamed to disk as each batch finishes, before its record
                    adv_writer.write(name, e, a, b, y=yb, success=rec["success"], forwards=rec["forwards"],
                                     backwards=rec["backwards"], queries=rec["queries"], seconds=rec["seconds"],
                                     **adv)
                state.put(name, e, a, rec)  # saved as each batch finishes, wherever it ran
                done += cost * (b - a)
                report(description, done, total_work)
            parts, fw, bw, queries, secs, params = [], 0, 0, 0, 0.0, {}
            for a, b in starts:
                rec = state.get(name, e, a, b)
                parts.append(np.asarray(rec["success"], dtype=bool))
                fw, bw, secs = fw + rec["forwards"], bw + rec["backwards"], secs + rec["seconds"]
                queries += rec.get("queries", 0)
                params = rec["params"]
            bad = np.concatenate(parts) | ~clean_correct
            fooled[(name, e)] = bad
            robust = total_n - int(bad.sum())
            rows.append({
                "attack": name, "eps": e, "robust_accuracy": robust / total_n, "robust": robust,
                "success_rate": 1.0 - robust / total_n, "forwards": fw, "backwards": bw, "seconds": secs,
                "params": params, **({"queries": queries} if queries else {}),
            })

    # worst case per sample: fooled by any attack at this eps or a smaller one
    worst: list[dict[str, Any]] = []
    union = ~clean_correct
    for e in eps_list:
        for name in names:
            union = union | fooled[(name, e)]
        fooled[("worst-case", e)] = union.copy()
        robust = total_n - int(union.sum())
        worst.append({"eps": e, "robust_accuracy": robust / total_n, "robust": robust, "attacks": list(names)})
    seconds = {"evasion": time.perf_counter() - started}

    config: dict[str, Any] = {"attacks": {a: dict(specs[a][1]) for a in names}}
    samples = {"evasion": total_n}
    out: dict[str, Any] = {"attacks": rows, "worst_case": worst, "fooled": fooled, "config": config,
                           "samples": samples, "checks": [], "minimal_norm": None, "autoattack": None,
                           "examples": None, "seconds": seconds}
    clean_share = float(clean_correct.mean())
    check_eps = min(eps_list, key=lambda e: abs(worst[eps_list.index(e)]["robust_accuracy"] - clean_share / 2))
    if checks:
        from .checks import run_checks

        k = min(check_n, total_n)
        report(f"sanity checks at eps {check_eps:g} on {k} points", 0, 1)
        with_surrogate = ctx.recipe is not None and ctx.members is not None

        def sanity_checks() -> list[dict[str, Any]]:
            surrogate = None
            if with_surrogate:
                report("training a surrogate with the recipe (transfer check)", 0, 1)
                surrogate = train_with(ctx.recipe, ctx.members, seed + 1)
            first = data.take(k)
            found = run_checks(model, first.x, first.y, eps=check_eps, norm=norm, bounds=bounds, seed=seed,
                               surrogate=surrogate)
            return [json_safe(c.to_dict()) for c in found]

        out["checks"] = ctx.part("checks", sanity_checks)
        config["checks"] = {"eps": check_eps, "n": k, "steps": 20, "square_max_queries": 1000,
                            "surrogate": "recipe, seed + 1" if with_surrogate else None}
        samples["checks"] = k
    if minimal_norm:
        what = f"minimal-norm curve (FMN, 100 steps) on {total_n} points"
        report(what, 0, total_n)
        out["minimal_norm"] = ctx.part("minimal_norm", lambda: minimal_norm_from_batches(
            model, data.batches(batch_size, stop=total_n), total_n, norm=norm, bounds=bounds, steps=100, seed=seed,
            progress=lambda done, total: report(what, done, total)))
        config["minimal_norm"] = {"attack": "fmn", "steps": 100}
        samples["minimal_norm"] = total_n
    if autoattack is not None:
        k = total_n if autoattack_n is None else min(autoattack_n, total_n)
        what = f"AutoAttack ({autoattack}) at eps {check_eps:g} on {k} points"
        report(what, 0, 1)
        mn = out["minimal_norm"]
        curve = robust_at(mn["norms"][:k], check_eps) if mn is not None else None

        def confirm() -> dict[str, Any]:
            first = data.take(k)
            return autoattack_confirmation(
                model, first.x, first.y, eps=check_eps, norm=norm, bounds=bounds, version=autoattack, seed=seed,
                curve_robust=curve, fixed_robust=~fooled[("worst-case", check_eps)][:k],
                progress=lambda attack, done, total: report(what, done, total), compile=compile)

        out["autoattack"] = ctx.part("autoattack", confirm)
        config["autoattack"] = {"version": autoattack, "eps": check_eps, "n": k}
        samples["autoattack"] = k
    if examples and len(data.shape) == 3:
        first = data.take(min(EXAMPLES, total_n))
        out["examples"] = adversarial_examples(model, first.x, first.y, eps=check_eps, norm=norm, bounds=bounds,
                                               k=EXAMPLES, seed=seed)
        samples["examples"] = len(out["examples"]["x"])
    return out


def _check(ctx: SuiteContext, options: Mapping[str, Any]) -> None:
    """Before any work: the attacks, steps and counts are valid, and a black box asks for no white-box attack."""
    names = check_attacks(options.get("attacks", DEFAULT_ATTACKS))
    check_steps(options.get("steps"))
    for k in ("check_n", "autoattack_n"):
        if k in options and not (k == "autoattack_n" and options[k] is None):
            check_int(k, options[k], 1)
    if options.get("autoattack", "fast") not in ("fast", "standard", None):
        raise InputError(f"autoattack must be 'fast', 'standard' or None, got {options['autoattack']!r}")
    if ctx.black_box:
        black_box_attacks(names, options.get("attacks", DEFAULT_ATTACKS))


SUITE = Suite(
    name="evasion", key=None, function=evasion_suite, run=evasion_suite, check=_check, needs=frozenset(),
    default=True, passed={"ctx"}, what="clean and robust accuracy under attack",
    samples=lambda result: None,
)
