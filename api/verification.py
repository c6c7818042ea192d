"""The latest ``citystream verify`` result per domain, where the API can read it.

``citystream verify`` (aarhus, topics, simulator) calls :func:`save_result` for each domain
it compared; ``/v1/status`` reads :func:`latest_results`. The results live in one small
JSON file per city database under the data directory
(``<data_dir>/verify/<database>.json``), replaced atomically, so the API shows what an
independent recomputation found (matched rows, differences, when) instead of claiming it.
In a deployment, verify and the API share that directory (a volume).
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.settings import Settings


def results_path(data_dir: Path, database: str) -> Path:
    return data_dir / "verify" / f"{database}.json"


def save_result(
    settings: Settings,
    domain: str,
    *,
    matched: int,
    missing: int,
    extra: int,
    different: int,
    at: datetime | None = None,
) -> None:
    """Replace ``domain``'s latest result for the settings' database (atomic rename)."""
    path = results_path(settings.data_dir, settings.clickhouse_database)
    results = latest_results(settings.data_dir, settings.clickhouse_database)
    differences = missing + extra + different
    results[domain] = {
        "domain": domain,
        "ok": differences == 0,
        "matched": matched,
        "differences": differences,
        "missing": missing,
        "extra": extra,
        "different": different,
        "at": (at or datetime.now(UTC)).isoformat().replace("+00:00", "Z"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".verify-")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(results, out, indent=1, sort_keys=True)
    os.replace(tmp, path)


def latest_results(data_dir: Path, database: str) -> dict[str, dict[str, Any]]:
    """Domain -> its latest result; empty when verify has not run for this database."""
    try:
        text = results_path(data_dir, database).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    results: dict[str, dict[str, Any]] = json.loads(text)
    return results
