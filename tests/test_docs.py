"""The user guide's examples run: each page's ```python blocks are executed in order in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted(p for p in DOCS.glob("*.md") if "```python" in p.read_text(encoding="utf-8"))


@pytest.fixture(autouse=True, scope="module")
def _agg_backend():
    matplotlib.use("Agg")  # figures are written, never shown


def blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(encoding="utf-8"), flags=re.S | re.M)


def test_there_is_a_guide():
    assert (DOCS / "guide.md").is_file() and blocks(DOCS / "guide.md")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_examples_run(page: Path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    namespace: dict = {"__name__": f"docs.{page.stem}"}
    for i, code in enumerate(blocks(page)):
        try:
            exec(compile(code, f"{page.name}[block {i}]", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"{page.name}, block {i} failed: {type(e).__name__}: {e}\n{code}") from e
    assert capsys.readouterr().out  # the examples print what they show
