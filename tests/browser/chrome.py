"""Helpers of the browser tests: the chromium of citystream.bench_dashboard (Debian's
chromium and chromedriver, headless, no sandbox, no GPU, no background traffic, a fresh
profile, console and CDP network logs on) and what the tests read from it."""

from __future__ import annotations

import json
import time
from typing import Any

from citystream.bench_dashboard import chromium, missing_browser, wait_ready

__all__ = ["chromium", "missing_browser", "open_dashboard", "page_errors", "requested_urls"]

PHONE = (390, 2400)


def wait_for(driver: Any, script: str, timeout: float = 60.0) -> Any:
    """Poll ``script`` (a JS function body returning a value) until it is truthy."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for: {script} (last: {value!r})")


def open_dashboard(driver: Any, url: str) -> None:
    """Load the page and wait until every panel has drawn."""
    driver.get(url)
    wait_ready(driver)


def requested_urls(driver: Any) -> list[tuple[str, str]]:
    """(URL, URL of the document that asked) of every request since the last call (CDP
    Network events); the browser's own chrome:// pages are not the page's, and left out."""
    requests = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            params = message["params"]
            document = params.get("documentURL", "")
            if not document.startswith("chrome://"):
                requests.append((params["request"]["url"], document))
    return requests


def page_errors(driver: Any) -> list[str]:
    """SEVERE console entries since the last call: failed loads, CSP refusals, JS errors."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
