"""Headless Chromium for the browser tests: Playwright driving the system's chromium (Debian's package; CI
installs it with apt), so no browser is downloaded. A test that needs it skips, with the reason, when either
is missing."""
from __future__ import annotations

import contextlib
import shutil

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_path() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


@contextlib.contextmanager
def browser():
    """A launched headless Chromium (playwright.sync_api.Browser); closed on exit."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    exe = chromium_path()
    if exe is None:
        pytest.skip(f"no Chromium on PATH (looked for {', '.join(BROWSERS)}; Debian: apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
        b = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()
