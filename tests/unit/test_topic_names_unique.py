"""Each core topic is declared once in schemas/catalog.py.

CORE_TOPICS is a dict built from a tuple of TopicSpec, so a topic declared twice (two
branches adding the same topic in different places merge without a conflict) would
silently keep the last declaration. This reads the source and refuses that. The families'
topics need no such test: the registry refuses a second declaration itself
(tests/unit/test_families.py).
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

from schemas import catalog


def test_every_topic_is_declared_once() -> None:
    source = ast.parse(Path(catalog.__file__).read_text(encoding="utf-8"))
    names = [
        node.args[0].value
        for node in ast.walk(source)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", None) == "TopicSpec"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    ]
    assert names and len(names) == len(catalog.CORE_TOPICS)
    assert [n for n, count in Counter(names).items() if count > 1] == []
