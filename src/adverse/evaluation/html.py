"""HTML and figure helpers for the report and the suites' report sections.

Every suite's ``section(results, figures)`` builds its HTML from these: text from the results is escaped
(:func:`escape`), numbers are rendered compactly (:func:`num`, :func:`pct`), tables take cells that are already
HTML (:func:`table`), and figures are drawn on a :class:`Figures` canvas, saved as PNG files and embedded as data
URIs. Text drawn in a figure goes through :func:`label` (no mathtext, no TeX).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .common import write_atomic

FIGURES_DIR = "figures"
MAX_LABEL = 60  # characters of text from the results in a figure's legend, title or axis label


def escape(value: Any) -> str:
    """Any value as escaped HTML text."""
    return html.escape(str(value), quote=True)


def pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * float(x):.1f}%"


def num(x: Any) -> str:
    """A compact rendering of a number (or a list of numbers) from the results."""
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:.4g}"
    if isinstance(x, (list, tuple)):
        return "[" + ", ".join(num(v) for v in x) + "]"
    if isinstance(x, Mapping):
        return "{" + ", ".join(f"{k}: {num(v)}" for k, v in x.items()) + "}"
    return str(x)


def label(text: Any) -> str:
    """Any text from the results as a matplotlib string that is drawn verbatim: every ``$`` escaped (so nothing
    starts mathtext; matplotlib removes the escape when it draws non-math text, whatever backslashes precede it),
    control characters shown as U+FFFD (no missing-glyph warnings), a leading ``_`` kept visible (a legend
    leaves out labels that start with ``_``), and at most :data:`MAX_LABEL` characters (the HTML has the rest)."""
    s = str(text)
    s = s if len(s) <= MAX_LABEL else s[: MAX_LABEL - 1] + "…"
    s = "".join("\ufffd" if (ord(c) < 32 and c != "\n") or 127 <= ord(c) < 160 else c for c in s)
    s = s.replace("$", r"\$")
    return "\u200b" + s if s.startswith("_") else s


def table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """An HTML table; ``header`` is plain text (escaped here), ``rows`` hold cells that are already HTML."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td class='r'>{c}</td>" if i in right else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class Figures:
    """Collects the report's figures: saves each as ``figures/<name>.png`` and returns its ``<figure>`` HTML."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.written: list[Path] = []

    def new(self, width: float = 7.0, height: float = 4.2) -> Any:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        return fig

    def embed(self, fig: Any, name: str, caption: str) -> str:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        png = buf.getvalue()
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{name}.png"
        write_atomic(path, png)
        self.written.append(path)
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        return (f"<figure><img src='{uri}' alt='{escape(caption)}'>"
                f"<figcaption>{escape(caption)} (also saved as {escape(FIGURES_DIR + '/' + path.name)})</figcaption></figure>")


def sentence(text: str) -> str:
    """``text`` with its first letter in upper case (the rest as written, unlike ``str.capitalize``)."""
    return text[:1].upper() + text[1:]
