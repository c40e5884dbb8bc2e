"""A real browser for page tests: Debian's ``chromium``, headless, driven by Playwright.

Browsers cannot be downloaded here, so Playwright launches the system's
chromium (``executable_path``; Debian package ``chromium``, installed by
``make system-deps``) instead of its own build. Without it the test is
skipped with the reason.

Screenshots go to :func:`artifacts` (``build/test-artifacts/<name>/`` in the
checkout, or ``$AIFI_TEST_ARTIFACTS/<name>/``), which is printed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

__all__ = ["artifacts", "chromium", "chromium_path"]

_REPO = Path(__file__).resolve().parents[2]


def chromium_path() -> str | None:
    """The chromium binary itself (not Debian's wrapper script, which adds noise on stderr)."""
    real = Path("/usr/lib/chromium/chromium")
    if real.exists():
        return str(real)
    return shutil.which("chromium") or shutil.which("chromium-browser")


def artifacts(name: str) -> Path:
    """A fresh folder for one test's screenshots; its path is printed."""
    root = Path(os.environ.get("AIFI_TEST_ARTIFACTS", _REPO / "build" / "test-artifacts"))
    folder = root / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    print(f"screenshots: {folder}")
    return folder


@contextmanager
def chromium() -> Iterator[Any]:
    """A Playwright browser page in headless chromium (one context, closed afterwards)."""
    executable = chromium_path()
    if executable is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox"]
        )
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            yield context.new_page()
            context.close()
        finally:
            browser.close()
