"""Fixtures of the browser tests: the read API's served Aarhus day (tests/api/conftest.py)
and a fresh headless chromium per test.

The chromium fixture fails (never skips) when Debian's chromium or chromedriver is missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import aarhus_day, api_server, api_stack  # noqa: F401 (fixtures)
from tests.browser.chrome import chromium, missing_browser


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A headless chromium with a profile of its own in ``tmp_path``."""
    problem = missing_browser()
    if problem:
        pytest.fail(problem, pytrace=False)
    with chromium(tmp_path / "profile") as driver:
        yield driver
