"""Fixtures for the dashboard's browser tests: real coordinator and peers (the service tests' own
helpers), and Debian's chromium driven by Playwright (never a downloaded browser)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parents[1] / "service"
sys.path.insert(0, str(SERVICE))  # svc.py and the service tests' Cluster, as tests/service imports them

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _service_conftest():
    spec = importlib.util.spec_from_file_location("prismn_service_conftest", SERVICE / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def chat_ckpt(tmp_path_factory) -> Path:
    return _service_conftest().make_chat_checkpoint(tmp_path_factory.mktemp("chat-llama"))


def _missing_browser() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is missing: pip install playwright (never `playwright install`)"
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing: run scripts/install_browser.sh as root (apt-get install chromium)"
    return None


@pytest.fixture(scope="module")
def chromium():
    # module, not session: while Playwright's sync API is open an event loop runs in this thread, and
    # every later test that calls asyncio.run() would fail
    reason = _missing_browser()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI is set: the browser tests must run)")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
