"""docs/api.md's examples run as written against the Aarhus day, with the status it shows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.api.conftest import ApiStack

PAGE = Path(__file__).resolve().parents[2] / "docs" / "api.md"
EXAMPLE = re.compile(r"<!-- api-example: (\d{3}) -->\s*```http\s*\nGET (\S+)\s*\n```")
EXAMPLES = EXAMPLE.findall(PAGE.read_text(encoding="utf-8"))


def test_the_page_has_examples() -> None:
    assert len(EXAMPLES) >= 8


@pytest.mark.parametrize(("status", "target"), EXAMPLES, ids=[t for _, t in EXAMPLES])
def test_each_example_answers_as_documented(api_stack: ApiStack, status: str, target: str) -> None:
    answer = api_stack.client.get(target)
    assert answer.status_code == int(status), answer.text
    if answer.status_code >= 400:
        assert answer.headers["content-type"].startswith("application/problem+json")
