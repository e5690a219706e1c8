"""The ``adverse`` command.

``adverse audit`` audits a model's robustness (with no model given, the bundled digits CNN on the bundled digits
test split), shows a progress bar while the attacks run and a table at the end, and writes
``DIR/results.json`` and ``DIR/report.html``; ``adverse report`` re-renders the report from a results.json.
``--json`` prints the same JSON to standard output and nothing else there.

Exit codes: 0 success; 2 bad usage or an input problem (the message says what to fix); 1 an unexpected error;
130 interrupted.

This module imports neither torch nor the attacks at import time, so ``adverse --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from . import __version__
from .evaluation.suites import NAMES as SUITE_NAMES

if TYPE_CHECKING:
    from .evaluation.audit import AuditResult

app = typer.Typer(
    name="adverse",
    help="Attack and defend machine-learning models, and audit how robust they are.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

DEFAULT_EPS = "0.05,0.1,0.2,0.3"  # the same budgets as adverse.evaluation.audit.DEFAULT_EPS
NORMS = ("linf", "l2", "l1")
_NAMES = {"fgsm": "FGSM", "pgd": "PGD", "apgd-ce": "APGD-CE", "worst-case": "worst case"}


def _stdout() -> Console:
    return Console()


def _stderr() -> Console:
    return Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"adverse {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Attack and defend machine-learning models, and audit how robust they are."""


def _budget(text: str) -> float:
    """One budget: a decimal number (``0.031``) or a fraction of two (``8/255``, as papers and RobustBench write
    them)."""
    top, slash, bottom = text.partition("/")
    try:
        if not slash:
            return float(text)
        a, b = float(top.strip()), float(bottom.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a number or a fraction; pass budgets like --eps 0.05,0.1 or "
                                 "--eps 4/255,8/255") from None
    if not (b > 0 and b != float("inf")) or "/" in bottom:
        raise typer.BadParameter(f"{text!r}: the denominator must be a finite number > 0, e.g. 8/255")
    return a / b


def _parse_eps(value: str) -> list[float]:
    """``"0.05,0.1"`` → ``[0.05, 0.1]``, ``"8/255"`` → ``[8/255]``; refuses anything that is not a list of finite
    numbers ≥ 0."""
    parts = [p.strip() for p in value.split(",")]
    if not value.strip() or any(not p for p in parts):
        raise typer.BadParameter(f"{value!r} is not a comma-separated list of numbers, e.g. --eps 0.05,0.1")
    out = []
    for p in parts:
        e = _budget(p)
        if not (e >= 0 and e != float("inf")):
            raise typer.BadParameter(f"{p} is not a valid budget; eps must be finite and ≥ 0 (e.g. 0.1)")
        out.append(e)
    if len(set(out)) != len(out):
        raise typer.BadParameter(f"{value!r} lists a budget twice; list each once")
    return out


def _check_norm(value: str) -> str:
    v = value.lower()
    if v not in NORMS:
        raise typer.BadParameter(f"{value!r} is not a norm; use one of {', '.join(NORMS)}")
    return v


@app.command()
def audit(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder for results.json (created if missing).",
                                  show_default="adverse-audit")
    ] = None,
    eps: Annotated[
        str | None,
        typer.Option("--eps", help="Comma-separated budgets in input units (inputs lie in [0, 1]); at most 100.",
                     show_default=DEFAULT_EPS),
    ] = None,
    norm: Annotated[
        str | None, typer.Option("--norm", help="Threat model: linf, l2 or l1.", show_default="linf")
    ] = None,
    n: Annotated[
        int | None, typer.Option("--n", min=1, help="Audit only the first N samples.", show_default="all")
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option("--steps", min=1, help="Iterations of PGD and APGD-CE (at most 100,000).",
                     show_default="40 and 100"),
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", min=0, help="Seed of all randomness (0 to 2^31 − 1).", show_default="0")
    ] = None,
    protocol: Annotated[
        str | None, typer.Option("--protocol", help="robustbench: standard AutoAttack on every point at one eps; "
                                 "writes robustbench.json and autoattack.log.", show_default="none"),
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="Where the model runs: auto, cpu, cuda, cuda:N or mps.",
                                 show_default="where the model is (the CPU)"),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Samples per attack call.", show_default="256"),
    ] = None,
    precision: Annotated[
        str | None, typer.Option("--precision", help="fp32, bf16 or fp16 (autocast for the model; losses and "
                                 "bookkeeping in fp32; a check compares with fp32).", show_default="fp32"),
    ] = None,
    compile: Annotated[
        str | None, typer.Option("--compile", help="auto, on or off: AutoAttack's channels_last and torch.compile, "
                                 "each used where measured faster on this model.", show_default="auto"),
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="CPU threads for torch (at most 4 × the CPUs).",
                                      show_default="torch's")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the results as JSON on stdout, and nothing else there.")
    ] = False,
    checks: Annotated[
        bool | None, typer.Option("--checks/--no-checks", help="Run the gradient-masking sanity checks.",
                                  show_default="checks")
    ] = None,
    suites: Annotated[
        str | None,
        typer.Option("--suites", help=f"Comma-separated suites: {', '.join(SUITE_NAMES)}.",
                     show_default="every suite the inputs allow"),
    ] = None,
    autoattack: Annotated[
        str | None,
        typer.Option("--autoattack", help="Confirm robust accuracy with AutoAttack: fast, standard or off.",
                     show_default="fast"),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option("--model", help="Model file: .safetensors (with --arch), .pt2 (torch.export), TorchScript, "
                                     ".pt state dict or checkpoint (with --arch), .onnx; or a Hugging Face "
                                     "save_pretrained folder (config.json + model.safetensors; pip install "
                                     "'adverse[hf]').", show_default="the bundled digits CNN"),
    ] = None,
    arch: Annotated[
        str | None,
        typer.Option("--arch", help="Architecture for weights-only files: SmallCNN, MLP, a zoo recipe, or "
                                    "package.module:factory."),
    ] = None,
    mean: Annotated[
        str | None,
        typer.Option("--mean", help="Per-channel means the model's inputs are normalized with, e.g. "
                                    "0.485,0.456,0.406 (or one value for all channels): puts adverse.Normalize(mean, "
                                    "std) in front of the model, so it takes inputs in [0, 1]. With --std.",
                     show_default="none; a Hugging Face folder's preprocessor_config.json"),
    ] = None,
    std: Annotated[
        str | None,
        typer.Option("--std", help="Per-channel standard deviations, e.g. 0.229,0.224,0.225 (or one value). With "
                                   "--mean."),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option("--data", help="Data to audit on: digits, tabular (':train' for the train split), a .npz "
                                    "file (x, y), a .csv file, or a folder of images per class.",
                     show_default="digits test"),
    ] = None,
    label_column: Annotated[
        str | None,
        typer.Option("--label-column", help="The label column of a .csv given to --data and --train-data: a name "
                                            "(any case) or a 0-based index (-1: the last).",
                     show_default="the column named label, y, target or class, else the last"),
    ] = None,
    image_size: Annotated[
        int | None,
        typer.Option("--image-size", help="Resize every image of an image folder (--data, --train-data) to N×N "
                                          "(Pillow, bilinear, antialiased).", show_default="as stored"),
    ] = None,
    resize: Annotated[
        int | None,
        typer.Option("--resize", help="Resize every image of an image folder so its shorter side is N, the aspect "
                                      "kept (Pillow, bilinear, antialiased).", show_default="as stored"),
    ] = None,
    center_crop: Annotated[
        int | None,
        typer.Option("--center-crop", help="Then take the N×N centre of each image; the ImageNet recipe is "
                                           "--resize 256 --center-crop 224.", show_default="no crop"),
    ] = None,
    train_data: Annotated[
        str | None,
        typer.Option("--train-data", help="The model's training data (same forms as --data): enables the privacy "
                                          "suite, and with --recipe the poisoning suite."),
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option("--recipe", help="How the model was trained: a zoo name (digits-cnn) or "
                                      "package.module:function, called as recipe(dataset, seed) -> model."),
    ] = None,
    defense: Annotated[
        str | None,
        typer.Option("--defense", help="Evaluate a preprocessing defense in front of the model (the defense suite), "
                                       "e.g. pca:k=20, feature-selection:k=10, magnet, tv, bit-depth:bits=1, jpeg, "
                                       "median, noise, resize-pad; fitted on the training data (--train-data, or "
                                       "the demo's) with --seed."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="A TOML file with the audit's settings (flags given here win); see "
                                      "docs/guide.md."),
    ] = None,
    trust_pickle: Annotated[
        bool, typer.Option("--trust-pickle", help="Allow unpickling a model file (it can run arbitrary code).")
    ] = False,
    trust_code: Annotated[
        bool, typer.Option("--trust-code", help="Load a .pt2 or TorchScript model without checking it for pickled "
                                                "payloads and non-tensor operators (its code can do anything).")
    ] = False,
    executor: Annotated[
        str | None, typer.Option("--executor", help="Where attack batches run: local, or ray "
                                                    "(pip install 'adverse[ray]').", show_default="local")
    ] = None,
    save_adv: Annotated[
        bool, typer.Option("--save-adv", help="Write every adversarial example of the evasion suite (each attack, "
                                              "eps and sample, with its outcome, norm and budget) to OUT/adversarial "
                                              "as batches finish; load it with adverse.results.load_adversarial.")
    ] = False,
    ray_address: Annotated[
        str | None,
        typer.Option("--ray-address", help="A running Ray cluster (host:port or ray://host:port).",
                     show_default="a local Ray instance"),
    ] = None,
) -> None:
    """Audit a model: robustness (evasion), privacy (membership inference), poisoning (backdoors) and
    certified robustness.

    With no model, audits the bundled digits CNN (trained once, ~10 s, then cached) on the bundled digits test
    split, with every suite.

    Writes OUT/results.json and OUT/report.html (with its figures in OUT/figures/).
    """
    from .errors import AdverseError

    err = _stderr()
    with exit_codes(err, f"cannot write to {out}"):
        settings = _settings(locals())
        out_dir = Path(settings.pop("out"))
        if out_dir.exists() and not out_dir.is_dir():
            raise AdverseError(f"--out {out_dir} exists and is not a folder; choose another folder")
        out_dir.mkdir(parents=True, exist_ok=True)
        from .streaming import bound_heap_growth

        bound_heap_growth()  # this process reads batch after batch: freed batches go back to the system
        loaded = _load(settings.pop("model_file"), settings.pop("arch"), settings.pop("data_spec"),
                       settings.pop("train_spec"), settings.pop("recipe_spec"), settings.pop("trust_pickle"),
                       label_column=settings.pop("label_column"), trust_code=settings.pop("trust_code"),
                       mean=settings.pop("mean"), std=settings.pop("std"),
                       images={k: settings.pop(k) for k in ("image_size", "resize", "center_crop")})
        runner = _executor(settings.pop("executor"), settings.pop("ray_address"))
        protocol = settings.pop("protocol")
        result = _run_audit(settings, loaded, out_dir, runner, err)
        if protocol is not None:
            result.config["protocol"] = protocol
        path = result.save(out_dir)
        if protocol == "robustbench":  # the leaderboard entry and AutoAttack's log, beside results.json
            import json

            from .evaluation.common import write_atomic
            from .evaluation.robustbench import autoattack_log, model_info

            d = result.to_dict()
            write_atomic(out_dir / "robustbench.json", json.dumps(model_info(d), indent=2, allow_nan=False) + "\n")
            write_atomic(out_dir / "autoattack.log", autoattack_log(d))
        from .evaluation.report import render_report

        report_path = render_report(result.to_dict(), out_dir, examples=result.examples)

    if as_json:
        sys.stdout.write(result.to_json())
        sys.stdout.flush()
        err.print(f"Report written to {escape(str(report_path))}")
        return
    con = _stdout()
    if result.attacks:
        con.print(_table(result))
        con.print("[dim]Robust accuracy: classified correctly and no adversarial input found within ε. "
                  "Worst case: no attack succeeded at this ε or a smaller one.[/]")
    else:
        con.print(f"Clean accuracy: {_pct(result.clean_accuracy)} on {result.n} samples.")
    if result.autoattack is not None and "message" in result.autoattack:
        con.print(("[bold yellow]" if result.autoattack.get("status") == "warn" else "")
                  + escape(result.autoattack["message"]))
    if result.checks:
        con.print(_checks_table(result))
        warned = [c for c in result.checks if c["status"] == "warn"]
        if warned:
            con.print(f"[bold yellow]{len(warned)} check(s) warn: the robust accuracies above may over-estimate "
                      "the truth.[/]")
    for line in _suite_lines(result):
        con.print(line)
    con.print(f"Results written to [bold]{escape(str(path))}[/] "
              f"({result.seconds['total']:.1f} s, seed {result.config['seed']}).")
    con.print(f"Report written to [bold]{escape(str(report_path))}[/].")


def _settings(args: dict[str, Any]) -> dict[str, Any]:
    """Command-line flags over the ``--config`` file over the defaults: the audit's keyword arguments plus
    ``out``, the model/data specs and the executor."""
    from .config import SUITE_TABLES, load_config
    from .errors import AdverseError

    cfg = load_config(args["config"]) if args["config"] is not None else {}
    ev, mdl, dat = cfg.get("evasion", {}), cfg.get("model", {}), cfg.get("data", {})

    def pick(flag: Any, value: Any, default: Any) -> Any:
        return flag if flag is not None else (value if value is not None else default)

    try:
        eps = _parse_eps(args["eps"]) if args["eps"] is not None else ev.get("eps", _parse_eps(DEFAULT_EPS))
    except typer.BadParameter as e:
        raise AdverseError(f"invalid value for --eps: {e.message}") from None
    try:
        norm = _check_norm(pick(args["norm"], ev.get("norm"), "linf"))
    except typer.BadParameter as e:
        raise AdverseError(f"invalid value for --norm: {e.message}") from None
    suites = args["suites"].split(",") if args["suites"] is not None else cfg.get("suites")
    if suites is not None:
        suites = [s.strip() for s in suites if s.strip()]
    autoattack = pick(args["autoattack"], ev.get("autoattack"), "fast")
    if autoattack not in ("fast", "standard", "off"):
        raise AdverseError(f"--autoattack must be fast, standard or off, got {autoattack!r}")
    _check_limits(pick(args["threads"], cfg.get("threads"), None), pick(args["steps"], ev.get("steps"), None),
                  eps, pick(args["seed"], cfg.get("seed"), 0))
    from .evaluation.robustbench import protocol_options

    protocol = pick(args["protocol"], cfg.get("protocol"), None)
    if protocol not in (None, "robustbench"):
        raise AdverseError(f"--protocol must be robustbench, got {protocol!r}")
    if protocol is not None and suites is None:
        suites = ["evasion"]
    device = pick(args["device"], cfg.get("device"), None)
    if device is not None:
        from .models import resolve_device

        try:
            resolve_device(device)
        except AdverseError as e:
            raise AdverseError(f"--device: {e}") from None
    precision = pick(args["precision"], cfg.get("precision"), "fp32")
    if precision not in ("fp32", "bf16", "fp16"):
        raise AdverseError(f"--precision must be fp32, bf16 or fp16, got {precision!r}")
    compile_mode = pick(args["compile"], ev.get("compile"), "auto")
    if compile_mode not in ("auto", "on", "off"):
        raise AdverseError(f"--compile must be auto, on or off, got {compile_mode!r}")
    normalize = {k: _parse_values(f"--{k}", args[k]) if args[k] is not None else mdl.get(k) for k in ("mean", "std")}
    return {
        "out": pick(args["out"], cfg.get("out"), "adverse-audit"),
        "protocol": protocol,
        "model_file": pick(args["model"], mdl.get("file"), None),
        "arch": pick(args["arch"], mdl.get("arch"), None),
        **normalize,
        "trust_pickle": args["trust_pickle"] or bool(mdl.get("trust_pickle", False)),
        "trust_code": args["trust_code"] or bool(mdl.get("trust_code", False)),
        "data_spec": pick(args["data"], dat.get("test"), None),
        "label_column": pick(args["label_column"], dat.get("label_column"), None),
        **{k: pick(args[k], dat.get(k), None) for k in ("image_size", "resize", "center_crop")},
        "train_spec": pick(args["train_data"], dat.get("train"), None),
        "recipe_spec": pick(args["recipe"], dat.get("recipe"), None),
        "executor": pick(args["executor"], cfg.get("executor"), "local"),
        "ray_address": pick(args["ray_address"], cfg.get("ray_address"), None),
        "threads": pick(args["threads"], cfg.get("threads"), None),
        "save_adv": args["save_adv"] or bool(ev.get("save_adv", False)),
        "audit": {
            "eps": eps, "norm": norm, "n": pick(args["n"], ev.get("n"), None),
            "steps": pick(args["steps"], ev.get("steps"), None), "seed": pick(args["seed"], cfg.get("seed"), 0),
            "checks": pick(args["checks"], ev.get("checks"), protocol is None), "suites": suites,
            "autoattack": None if autoattack == "off" else autoattack,
            **{k: ev[k] for k in ("attacks", "check_n", "minimal_norm", "autoattack_n", "batch_size", "examples")
               if k in ev},
            **({"batch_size": args["batch_size"]} if args["batch_size"] is not None else {}),
            **(protocol_options(eps) if protocol is not None else {}),
            "device": device, "precision": precision, "compile": compile_mode,
            **({"options": {k: cfg[k] for k in SUITE_TABLES if k in cfg and k != "defense"}}
               if any(k in cfg for k in SUITE_TABLES if k != "defense") else {}),
            **_defense_options(args["defense"], cfg.get("defense")),
        },
    }


def _parse_values(flag: str, value: str) -> list[float]:
    """``"0.485,0.456,0.406"`` → ``[0.485, 0.456, 0.406]`` for --mean/--std (checked further by
    :func:`adverse.loading.check_normalization`)."""
    from .errors import AdverseError

    parts = [p.strip() for p in value.split(",")]
    try:
        if not value.strip() or not all(parts):
            raise ValueError
        return [float(p) for p in parts]
    except ValueError:
        raise AdverseError(f"invalid value for {flag}: {value!r} is not a comma-separated list of numbers; give one "
                           f"value per channel, e.g. {flag} {'0.485,0.456,0.406' if flag == '--mean' else '0.229,0.224,0.225'}, "
                           "or one value for all channels") from None


def _defense_options(flag: str | None, table: dict[str, Any] | None) -> dict[str, Any]:
    """The defense suite's options: the ``[defense]`` table, with ``--defense`` as its layer when given."""
    if flag is None and table is None:
        return {}
    return {"defense": {**(table or {}), **({"layer": flag} if flag is not None else {})}}


MAX_THREADS = 4 * (os.cpu_count() or 1)
"""The most ``--threads`` accepted: 4 × the CPUs (more only slows torch down; thousands hang or crash it)."""
MAX_STEPS = 100_000
"""The most ``--steps`` accepted (AutoAttack uses 100; a million steps would run for days)."""
MAX_EPS = 100
"""The most budgets ``--eps`` may list (each one is a full run of every attack)."""
MAX_SEED = 2**31 - 1
"""The largest ``--seed`` (seeds are passed on to torch, numpy and scikit-learn, whose range is 32-bit)."""


def _check_limits(threads: Any, steps: Any, eps: Any, seed: Any) -> None:
    """Refuse values of --threads, --steps, --eps and --seed (from flags or --config) that cannot be meant: they
    would hang, crash or run for days. The message names the flag and the range."""
    from .errors import AdverseError

    def integer(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if threads is not None and not (integer(threads) and 1 <= threads <= MAX_THREADS):
        raise AdverseError(f"--threads {threads!r} is not a thread count this machine can use: pass an integer "
                           f"between 1 and {MAX_THREADS} (4 × its {os.cpu_count() or 1} CPUs)")
    for name, v in (steps.items() if isinstance(steps, dict) else [("", steps)]):
        if v is not None and integer(v) and v > MAX_STEPS:
            raise AdverseError(f"--steps {v}{f' (for {name})' if name else ''} is more than {MAX_STEPS:,} iterations "
                               "per attack, which would run for days; pass --steps between 1 and "
                               f"{MAX_STEPS:,} (PGD uses 40 by default, APGD 100)")
    if isinstance(eps, (list, tuple)) and len(eps) > MAX_EPS:
        raise AdverseError(f"--eps lists {len(eps)} budgets; each one runs every attack again: pass at most "
                           f"{MAX_EPS} budgets")
    if integer(seed) and not 0 <= seed <= MAX_SEED:
        raise AdverseError(f"--seed {seed} is out of range: pass an integer between 0 and {MAX_SEED}")


@app.command()
def report(
    results_json: Annotated[Path, typer.Argument(help="A results.json written by adverse audit (or its folder).")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder for report.html and figures/.",
                                  show_default="the folder holding RESULTS_JSON")
    ] = None,
) -> None:
    """Render report.html (and figures/*.png) from a results.json.

    The file is checked against the results schema first (docs/results-schema.md): a file that is not what an
    audit wrote is refused with the JSON path at fault (exit 2); examples.npz beside it likewise."""
    from .evaluation.audit import RESULTS_FILE
    from .evaluation.report import load_examples, render_report
    from .evaluation.schema import read_results

    err = _stderr()
    with exit_codes(err, "cannot write the report"):
        src = results_json / RESULTS_FILE if results_json.is_dir() else results_json
        results = read_results(src)  # a regular file, size-limited, valid against the schema
        path = render_report(results, out if out is not None else src.parent, examples=load_examples(src.parent))
    _stdout().print(f"Report written to [bold]{escape(str(path))}[/].")


@contextlib.contextmanager
def exit_codes(err: Console, write_error: str) -> Iterator[None]:
    """The command's exit codes (module docstring): a user's mistake (an AdverseError) or an OS error prints one
    line and exits 2, an interruption exits 130, anything else is a bug: a short message and exit 1
    (``ADVERSE_DEBUG=1`` shows the traceback). ``write_error`` starts the message of an OS error."""
    from .errors import AdverseError

    try:
        yield
    except AdverseError as e:
        err.print(f"[bold red]Error:[/] {escape(str(e))}")
        raise typer.Exit(2) from None
    except OSError as e:
        err.print(f"[bold red]Error:[/] {escape(write_error)}: {escape(e.strerror or str(e))}")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err.print("[yellow]Interrupted.[/]")
        raise typer.Exit(130) from None
    except typer.Exit:
        raise
    except Exception as e:  # a bug: say so briefly; ADVERSE_DEBUG=1 shows the traceback
        if os.environ.get("ADVERSE_DEBUG"):
            raise
        err.print(f"[bold red]Unexpected error:[/] {type(e).__name__}: {escape(str(e))}\n"
                  "This is a bug in adverse; rerun with ADVERSE_DEBUG=1 to see the traceback, and report it.")
        raise typer.Exit(1) from None


def _executor(name: str, address: str | None) -> Any:
    from .errors import AdverseError

    if name not in ("local", "ray"):
        raise AdverseError(f"unknown --executor {name!r}; use local or ray")
    if address is not None and name != "ray":
        raise AdverseError("--ray-address needs --executor ray")
    if name == "local":
        return None
    from .execution import RayExecutor

    return RayExecutor(address)


def _load(model: Path | str | None, arch: str | None, data: str | None, train: str | None, recipe: str | None,
          trust_pickle: bool, label_column: str | int | None = None, trust_code: bool = False,
          mean: Any = None, std: Any = None, images: dict[str, Any] | None = None) -> dict[str, Any]:
    """The user's model, data, training data and recipe (None for the bundled default), and what to record. The
    data's shape is checked against what the model file says it takes (its normalization's channels, a Hugging
    Face folder's input size) before anything runs. ``images``: ``image_size``, ``resize``, ``center_crop`` for
    image folders."""
    from .errors import AdverseError
    from .loading import (
        check_image_transform,
        check_input_shape,
        load_data,
        load_model,
        load_recipe,
        model_info,
    )

    images = {k: v for k, v in (images or {}).items() if v is not None}
    check_image_transform(**images)  # before any model or data is loaded

    loaded: dict[str, Any] = {"model": None, "data": None, "train_data": None,
                              "recipe": load_recipe(recipe) if recipe is not None else None, "info": {}}
    if model is None and data is None:
        if arch is not None:
            raise AdverseError("--arch needs --model")
        if train is not None:
            raise AdverseError("--train-data needs --model and --data (the demo knows its own training data)")
        if label_column is not None:
            raise AdverseError("--label-column needs --data with a .csv file")
        if mean is not None or std is not None:
            raise AdverseError("--mean/--std need --model (the demo model normalizes nothing)")
        if images:
            raise AdverseError("--image-size, --resize and --center-crop need --data with a folder of images")
        return loaded
    if model is None or data is None:
        raise AdverseError("pass both --model and --data to audit your own model (or neither for the demo)")
    loaded["model"] = load_model(model, arch=arch, trust_pickle=trust_pickle, trust_code=trust_code, mean=mean,
                                 std=std)
    # a folder of images is streamed (memory does not grow with the number of images); files are loaded whole
    loaded["data"] = load_data(data, label_column=label_column, stream=Path(data).is_dir(), **images)
    check_input_shape(loaded["model"], loaded["data"].shape, f"--data {data}")
    if train is not None:
        loaded["train_data"] = load_data(train, label_column=label_column, **images)
        check_input_shape(loaded["model"], loaded["train_data"].shape, f"--train-data {train}")
    loaded["info"] = {"file": str(model), "arch": arch, "data": data, "train": train, "recipe": recipe,
                      "loaded": model_info(loaded["model"]), "images": images}
    return loaded


def _run_audit(settings: dict[str, Any], loaded: dict[str, Any], out: Path, runner: Any, err: Console) -> AuditResult:
    from rich.progress import (
        BarColumn,
        Progress,
        SpinnerColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if settings["threads"] is not None:
        import torch

        torch.set_num_threads(settings["threads"])
    from .evaluation.audit import audit

    columns = (
        SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
        TaskProgressColumn(), TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("left"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("starting", total=None)
        current = {"description": ""}

        def progress(description: str, completed: float, total: float) -> None:
            if description != current["description"]:  # a new step: its own bar and time estimate
                current["description"] = description
                bar.reset(task, description=description, total=total, completed=completed)
            else:
                bar.update(task, completed=completed, total=total)

        def show(message: Any, category: Any, filename: Any, lineno: Any, file: Any = None, line: Any = None) -> None:
            err.print(f"[bold yellow]Warning:[/] {escape(str(message))}")  # e.g. a damaged resume state discarded

        with warnings.catch_warnings():
            warnings.simplefilter("default")  # shown once each, never raised
            warnings.showwarning = show
            result = audit(loaded["model"], loaded["data"], train_data=loaded["train_data"], recipe=loaded["recipe"],
                           state_dir=out, executor=runner, progress=progress,
                           save_adv=out / "adversarial" if settings["save_adv"] else None, **settings["audit"])
        info = loaded["info"]
        if info:
            result.model.update(file=info["file"], arch=info["arch"])
            found = info.get("loaded") or {}
            if "normalize" in found and found.get("class"):
                result.model["name"] = found["class"]  # the loaded class, not the Sequential of a normalization
            result.model.update({k: found[k] for k in ("checkpoint", "format", "model_type", "input_shape",
                                                       "input_shape_source") if k in found})
            if "normalize" in found:
                result.config["normalize"] = found["normalize"]
            result.data.update(spec=info["data"])
            if info.get("images"):
                result.data["images"] = dict(info["images"])
            if info["train"] is not None:
                result.data.setdefault("train", {})["spec"] = info["train"]
        if loaded["recipe"] is not None and info.get("recipe"):
            result.model["recipe_spec"] = info["recipe"]
        return result


def _suite_lines(result: AuditResult) -> list[str]:
    """One line per suite (but evasion) that ran: its summary sentence, as the report writes it."""
    from .evaluation.report import summary_lines

    return [escape(line) for line in summary_lines(result.to_dict())]


def _table(result: AuditResult) -> Any:
    from rich.table import Table

    cfg, data = result.config, result.data
    symbol = {"linf": "L∞", "l2": "L2", "l1": "L1"}[cfg["norm"]]
    table = Table(
        title=f"Robust accuracy of {result.model['name']} on {data['name']}"
              f"{' (' + data['split'] + ')' if 'split' in data else ''}, n={result.n}, {symbol}",
    )
    table.add_column("attack")
    for e in cfg["eps"]:
        table.add_column(f"ε={e:g}", justify="right")
    table.add_column("passes / queries", justify="right", style="dim")
    table.add_column("time", justify="right", style="dim")
    table.add_row("none (clean)", *[_pct(result.clean_accuracy)] * len(cfg["eps"]), "", "")
    for name, settings in cfg["attacks"].items():
        rows = [r for r in result.attacks if r["attack"] == name]
        label = _NAMES.get(name, name) + (f" ({settings['steps']} steps)" if "steps" in settings else "")
        passes = sum(r["forwards"] + r["backwards"] or r.get("queries", 0) for r in rows)  # queries: black box
        seconds = sum(r["seconds"] for r in rows)
        table.add_row(label, *[_pct(r["robust_accuracy"]) for r in rows], f"{passes:,}", f"{seconds:.1f} s")
    table.add_row("worst case", *[_pct(r["robust_accuracy"]) for r in result.worst_case], "", "",
                  style="bold")
    return table


def _checks_table(result: AuditResult) -> Any:
    from rich.table import Table

    cfg = result.config.get("checks", {})
    table = Table(title=f"Sanity checks (gradient masking) at ε={cfg['eps']:g} on {cfg['n']} points"
                  if "eps" in cfg and "n" in cfg else "Checks")
    table.add_column("check")
    table.add_column("status")
    table.add_column("what it found")
    style = {"pass": "[green]pass[/]", "warn": "[bold yellow]warn[/]", "skip": "[dim]skip[/]"}
    for c in result.checks:
        table.add_row(c["name"], style.get(c["status"], c["status"]), escape(c["message"]))
    return table


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def main() -> None:
    """Entry point of the ``adverse`` command."""
    # Idle OpenMP threads sleep instead of spinning. The attacks run many small operations; with spinning
    # threads, a machine whose cores are busy with other work slows them several-fold. Set before torch loads;
    # a value the user set wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    app(prog_name="adverse")


if __name__ == "__main__":
    main()
