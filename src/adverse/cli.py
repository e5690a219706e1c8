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

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from . import __version__

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


def _parse_eps(value: str) -> list[float]:
    """``"0.05,0.1"`` → ``[0.05, 0.1]``; refuses anything that is not a list of finite numbers ≥ 0."""
    parts = [p.strip() for p in value.split(",")]
    if not value.strip() or any(not p for p in parts):
        raise typer.BadParameter(f"{value!r} is not a comma-separated list of numbers, e.g. --eps 0.05,0.1")
    out = []
    for p in parts:
        try:
            e = float(p)
        except ValueError:
            raise typer.BadParameter(f"{p!r} is not a number; pass budgets like --eps 0.05,0.1") from None
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
        Path, typer.Option("--out", "-o", help="Folder for results.json (created if missing).")
    ] = Path("adverse-audit"),
    eps: Annotated[
        str,
        typer.Option("--eps", callback=lambda v: _parse_eps(v),
                     help="Comma-separated budgets in input units (inputs lie in [0, 1])."),
    ] = DEFAULT_EPS,
    norm: Annotated[
        str, typer.Option("--norm", callback=lambda v: _check_norm(v), help="Threat model: linf, l2 or l1.")
    ] = "linf",
    n: Annotated[
        int | None, typer.Option("--n", min=1, help="Audit only the first N samples.", show_default="all")
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option("--steps", min=1, help="Iterations of PGD and APGD-CE.", show_default="40 and 100"),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of every attack's randomness.")] = 0,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="CPU threads for torch.", show_default="torch's")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the results as JSON on stdout, and nothing else there.")
    ] = False,
    checks: Annotated[
        bool, typer.Option("--checks/--no-checks", help="Run the gradient-masking sanity checks.")
    ] = True,
    model: Annotated[
        Path | None,
        typer.Option("--model", help="Model file: .safetensors (with --arch), .pt2 (torch.export), TorchScript, "
                                     ".pt state dict (with --arch), .onnx.", show_default="the bundled digits CNN"),
    ] = None,
    arch: Annotated[
        str | None,
        typer.Option("--arch", help="Architecture for weights-only files: SmallCNN, MLP, a zoo recipe, or "
                                    "package.module:factory."),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option("--data", help="Data: digits, tabular (':train' for the train split), a .npz file (x, y), "
                                    "a .csv file, or a folder of images per class.", show_default="digits test"),
    ] = None,
    trust_pickle: Annotated[
        bool, typer.Option("--trust-pickle", help="Allow unpickling a model file (it can run arbitrary code).")
    ] = False,
    executor: Annotated[
        str, typer.Option("--executor", help="Where attack batches run: local, or ray (pip install 'adverse[ray]').")
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option("--ray-address", help="A running Ray cluster (host:port or ray://host:port).",
                     show_default="a local Ray instance"),
    ] = None,
) -> None:
    """Audit robustness: clean accuracy, and robust accuracy under FGSM, PGD and APGD-CE at each eps.

    With no model, audits the bundled digits CNN (trained once, ~10 s, then cached) on the bundled digits test split.

    Writes OUT/results.json and OUT/report.html (with its figures in OUT/figures/).
    """
    from .errors import AdverseError

    err = _stderr()
    eps_values: list[float] = eps  # type: ignore[assignment]  # parsed by _parse_eps
    try:
        if out.exists() and not out.is_dir():
            raise AdverseError(f"--out {out} exists and is not a folder; choose another folder")
        out.mkdir(parents=True, exist_ok=True)
        loaded = _load(model, arch, data, trust_pickle)
        runner = _executor(executor, ray_address)
        result = _run_audit(eps_values, norm, n, steps, seed, threads, checks, loaded, out, runner, err)
        path = result.save(out)
        from .evaluation.report import render_report

        report_path = render_report(result.to_dict(), out)
    except AdverseError as e:
        err.print(f"[bold red]Error:[/] {escape(str(e))}")
        raise typer.Exit(2) from None
    except OSError as e:
        err.print(f"[bold red]Error:[/] cannot write to {escape(str(out))}: {escape(e.strerror or str(e))}")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err.print("[yellow]Interrupted.[/]")
        raise typer.Exit(130) from None
    except Exception as e:  # a bug: say so briefly; ADVERSE_DEBUG=1 shows the traceback
        if os.environ.get("ADVERSE_DEBUG"):
            raise
        err.print(f"[bold red]Unexpected error:[/] {type(e).__name__}: {escape(str(e))}\n"
                  "This is a bug in adverse; rerun with ADVERSE_DEBUG=1 to see the traceback, and report it.")
        raise typer.Exit(1) from None

    if as_json:
        sys.stdout.write(result.to_json())
        sys.stdout.flush()
        err.print(f"Report written to {escape(str(report_path))}")
        return
    con = _stdout()
    con.print(_table(result))
    con.print("[dim]Robust accuracy: classified correctly and no adversarial input found within ε. "
              "Worst case: no attack succeeded at this ε or a smaller one.[/]")
    if result.checks:
        con.print(_checks_table(result))
        warned = [c for c in result.checks if c["status"] == "warn"]
        if warned:
            con.print(f"[bold yellow]{len(warned)} check(s) warn: the robust accuracies above may over-estimate "
                      "the truth.[/]")
    con.print(f"Results written to [bold]{escape(str(path))}[/] "
              f"({result.seconds['total']:.1f} s, seed {result.config['seed']}).")
    con.print(f"Report written to [bold]{escape(str(report_path))}[/].")


@app.command()
def report(
    results_json: Annotated[Path, typer.Argument(help="A results.json written by adverse audit (or its folder).")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder for report.html and figures/.",
                                  show_default="the folder holding RESULTS_JSON")
    ] = None,
) -> None:
    """Render report.html (and figures/*.png) from a results.json."""
    import json

    from .errors import AdverseError
    from .evaluation.audit import RESULTS_FILE, AuditResult
    from .evaluation.report import render_report

    err = _stderr()
    src = results_json / RESULTS_FILE if results_json.is_dir() else results_json
    try:
        AuditResult.load(src)  # validates: JSON object, schema_version, required fields
        path = render_report(json.loads(src.read_text(encoding="utf-8")), out if out is not None else src.parent)
    except AdverseError as e:
        err.print(f"[bold red]Error:[/] {escape(str(e))}")
        raise typer.Exit(2) from None
    except OSError as e:
        err.print(f"[bold red]Error:[/] cannot write the report: {escape(e.strerror or str(e))}")
        raise typer.Exit(2) from None
    _stdout().print(f"Report written to [bold]{escape(str(path))}[/].")


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


def _load(model: Path | None, arch: str | None, data: str | None, trust_pickle: bool) -> tuple[Any, Any, dict]:
    """The user's model and data (None, None for the bundled default), and what to record about them."""
    from .errors import AdverseError

    if model is None and data is None:
        if arch is not None:
            raise AdverseError("--arch needs --model")
        return None, None, {}
    if model is None or data is None:
        raise AdverseError("pass both --model and --data to audit your own model (or neither for the demo)")
    from .loading import load_data, load_model

    net = load_model(model, arch=arch, trust_pickle=trust_pickle)
    dataset = load_data(data)
    return net, dataset, {"file": str(model), "arch": arch, "data": data}


def _run_audit(eps: list[float], norm: str, n: int | None, steps: int | None, seed: int, threads: int | None,
               checks: bool, loaded: tuple[Any, Any, dict], out: Path, runner: Any, err: Console) -> AuditResult:
    from rich.progress import (
        BarColumn,
        Progress,
        SpinnerColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    from .evaluation.audit import audit

    columns = (
        SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
        TaskProgressColumn(), TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("left"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("starting", total=None)

        def progress(description: str, completed: float, total: float) -> None:
            bar.update(task, description=description, completed=completed, total=total)

        net, dataset, info = loaded
        result = audit(net, dataset, eps=eps, norm=norm, n=n, steps=steps, seed=seed, checks=checks,
                       state_dir=out, executor=runner, progress=progress)
        if info:
            result.model.update(file=info["file"], arch=info["arch"])
            result.data.update(spec=info["data"])
        return result


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
    table.add_column("passes", justify="right", style="dim")
    table.add_column("time", justify="right", style="dim")
    table.add_row("none (clean)", *[_pct(result.clean_accuracy)] * len(cfg["eps"]), "", "")
    for name, settings in cfg["attacks"].items():
        rows = [r for r in result.attacks if r["attack"] == name]
        label = _NAMES.get(name, name) + (f" ({settings['steps']} steps)" if "steps" in settings else "")
        passes = sum(r["forwards"] + r["backwards"] for r in rows)
        seconds = sum(r["seconds"] for r in rows)
        table.add_row(label, *[_pct(r["robust_accuracy"]) for r in rows], f"{passes:,}", f"{seconds:.1f} s")
    table.add_row("worst case", *[_pct(r["robust_accuracy"]) for r in result.worst_case], "", "",
                  style="bold")
    return table


def _checks_table(result: AuditResult) -> Any:
    from rich.table import Table

    cfg = result.config.get("checks", {})
    table = Table(title=f"Sanity checks (gradient masking) at ε={cfg.get('eps', 0):g} on {cfg.get('n', 0)} points")
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
