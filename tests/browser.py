"""Headless Chromium for the report tests: render a page, collect console errors, probe the images."""

from __future__ import annotations

import shutil
import subprocess

CHROMIUM = shutil.which("chromium")
HARNESS = ("<script>window.addEventListener('load', () => {const bad = [...document.images].filter("
           "i => !i.complete || i.naturalWidth === 0); document.body.dataset.images = document.images.length + "
           "':' + bad.length;});</script>")
"""Appended to a copy of a page: after loading, ``<body data-images="N:B">`` counts its images and the broken ones."""


def chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", "--virtual-time-budget=5000", *args], check=False, capture_output=True, text=True,
                          timeout=90)


def console(stderr: str) -> list[str]:
    """The console messages and uncaught errors in Chromium's log."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
