"""The generated docs: the KPI catalogue, the configuration table and the topic catalogue come
from the code, their committed copies are up to date, and the AsyncAPI document is valid for
the official AsyncAPI parser (run with node)."""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings

from citystream.catalog import (
    ASYNCAPI_FILE,
    AVRO_SCHEMA_FORMAT,
    BLOCKS,
    CATALOGUE_FILE,
    CONFIG_END,
    CONFIG_FILE,
    CONFIG_START,
    KPI_END,
    KPI_START,
    asyncapi_document,
    asyncapi_yaml,
    config_table,
    kpi_table,
    public_topics,
    with_block,
)
from citystream.cli import main
from core.kpis import Kpi
from core.settings import Settings
from families.registry import KPIS, TOPICS
from families.traffic.domain import SegmentInfo, Traffic
from schemas.catalog import load_schema
from streams.engine.windows import MergeWindows, PartitionWindows

REPO = Path(__file__).resolve().parents[2]
VALIDATOR = REPO / "tests" / "validate_asyncapi.cjs"
TOOLS = Path(
    os.environ.get("ASYNCAPI_TOOLS")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "citystream"
    / "tools"
    / "asyncapi"
)
REGENERATE = "run `make docs` and commit the result"


# --- KPI catalogue ---------------------------------------------------------------------------


def test_catalogue_page_is_the_generated_one() -> None:
    page = CATALOGUE_FILE.read_text()
    assert with_block(page, KPI_START, KPI_END, kpi_table()) == page, REGENERATE
    assert page.count(KPI_START) == 1 and page.count(KPI_END) == 1


def test_kpi_table_has_one_row_per_kpi_with_every_field() -> None:
    rows = kpi_table().splitlines()[2:]
    assert len(rows) == len(KPIS)
    for row, kpi in zip(rows, KPIS.values(), strict=True):
        assert row.startswith(f"| `{kpi.name}` | {kpi.unit} |")
        assert kpi.window in row and ", ".join(kpi.scopes) in row and kpi.source_topic in row


def test_kpi_table_escapes_pipes_in_cells() -> None:
    odd = Kpi("x.y", "%", "a | b", "tumbling 15 min", ("city",), "city.x.v1", "streams.x")
    assert kpi_table([odd]).splitlines()[2] == (
        "| `x.y` | % | a \\| b | tumbling 15 min | city | city.x.v1 |"
    )


def test_markers_are_required() -> None:
    with pytest.raises(ValueError, match="lacks the markers"):
        with_block("# A page without a catalogue\n", KPI_START, KPI_END, kpi_table())


def test_catalog_kpis_command_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["catalog", "kpis"]) == 0
    assert capsys.readouterr().out == kpi_table()


# --- configuration table --------------------------------------------------------------------


def test_configuration_page_is_the_generated_one() -> None:
    """The settings table cannot drift from ``Settings``: add a field, run `make docs`."""
    page = CONFIG_FILE.read_text()
    assert with_block(page, CONFIG_START, CONFIG_END, config_table()) == page, REGENERATE
    assert page.count(CONFIG_START) == 1 and page.count(CONFIG_END) == 1


def test_config_table_has_one_row_per_setting_in_order() -> None:
    rows = config_table().splitlines()[2:]
    assert len(rows) == len(Settings.model_fields)
    for row, (name, field) in zip(rows, Settings.model_fields.items(), strict=True):
        assert row.startswith(f"| `{name}` | `CITYSTREAM_{name.upper()}` |")
        meaning = html.escape(field.description or "", quote=False).replace("|", "\\|")
        assert row.endswith(f" | {meaning} |")


class _Odd(BaseSettings):
    """Every shape of field the renderer must handle, with a known rendering."""

    plain: int = Field(6, ge=1, description="a | pipe")
    optional_secret: SecretStr | None = Field(None, description="never shown")
    home_path: Path = Field(Path.home() / ".cache" / "x", description="under <home>")
    empty: str = Field("", description="")
    table: dict[str, str] = Field(default_factory=dict, description="JSON")


def test_config_table_renders_types_bounds_and_defaults_portably() -> None:
    rows = config_table(_Odd.model_fields).splitlines()[2:]
    assert rows == [
        "| `plain` | `CITYSTREAM_PLAIN` | integer ≥ 1 | `6` | a \\| pipe |",
        "| `optional_secret` | `CITYSTREAM_OPTIONAL_SECRET` | secret |  | never shown |",
        "| `home_path` | `CITYSTREAM_HOME_PATH` | path | `~/.cache/x` | under &lt;home&gt; |",
        '| `empty` | `CITYSTREAM_EMPTY` | string | `""` |  |',
        "| `table` | `CITYSTREAM_TABLE` | JSON object | `{}` | JSON |",
    ]


MIN = 60_000
SIZE = 15 * MIN
T0 = 1_406_872_800_000  # a window boundary


def test_every_kpi_the_traffic_windows_emit_is_in_the_catalogue() -> None:
    """Both stages on a tiny input: a known segment (so congestion is computed), an unknown
    one, and readings an hour later that close the first windows, hourly trends included."""
    reference = {"known": SegmentInfo("8000", 80.0)}
    stage1 = PartitionWindows(Traffic(), 0, 1, SIZE, SIZE)
    readings = [("known", T0 + MIN, 10, 50.0), ("unknown", T0 + 2 * MIN, 4, 30.0)]
    readings += [("known", T0 + 5 * SIZE, 3, 60.0)]
    batch = {
        "segment_id": [r[0] for r in readings],
        "event_time_ms": [r[1] for r in readings],
        "vehicle_count": [r[2] for r in readings],
        "avg_speed_kmh": [r[3] for r in readings],
    }
    emissions = [stage1.add(batch, reference, now_ms=0), stage1.flush(reference, now_ms=1)]
    stage2 = MergeWindows(Traffic(), SIZE, idle_ms=0, size_ms=SIZE)
    emitted = [kpi for e in emissions for kpi in e.kpis]
    for emission in emissions:
        if emission.partial is not None:
            emitted += stage2.add(emission.partial, now_ms=2)
    emitted += stage2.emit_due(now_ms=10_000)
    scopes = {(r["kpi"], r["scope"]) for r in emitted}
    assert {"segment", "district", "city"} <= {scope for _, scope in scopes}  # both stages ran
    assert {"traffic.congestion_index", "traffic.vehicle_count_1h"} <= {k for k, _ in scopes}
    for name, scope in scopes:
        assert name in KPIS, f"{name} is emitted but not defined in core/kpis.py"
        assert scope in KPIS[name].scopes, f"{name} emitted at scope {scope}"


# --- AsyncAPI ---------------------------------------------------------------------------------


def test_committed_asyncapi_is_the_generated_one() -> None:
    assert ASYNCAPI_FILE.read_text() == asyncapi_yaml(), REGENERATE


def test_asyncapi_has_every_public_topic_with_its_avro_schema() -> None:
    document: dict[str, Any] = yaml.safe_load(ASYNCAPI_FILE.read_text())
    channels = {c["address"]: c for c in document["channels"].values()}
    public = {spec.name for spec in TOPICS.values() if not spec.internal}
    assert set(channels) == public == {spec.name for spec in public_topics()}
    assert "city.kpi.v1" in public and "city.kpi.batches.v1" not in channels
    for name in public:
        spec = TOPICS[name]
        (ref,) = (m["$ref"] for m in channels[name]["messages"].values())
        message = document["components"]["messages"][ref.rsplit("/", 1)[1]]
        assert message["payload"] == {
            "schemaFormat": AVRO_SCHEMA_FORMAT,
            "schema": load_schema(spec.schema_file),
        }
        assert spec.key in message["bindings"]["kafka"]["key"]["description"]
        policy = channels[name]["bindings"]["kafka"]["topicConfiguration"]["cleanup.policy"]
        assert policy == ["compact" if spec.compacted else "delete"]
    actions = {op["action"] for op in document["operations"].values()}
    assert actions == {"receive"} and len(document["operations"]) == len(public)
    assert "Confluent wire format" in document["info"]["description"]
    assert document["info"]["license"]["name"] == "Apache-2.0"


def validate(path: Path) -> tuple[int, dict[str, Any], str]:
    """Run the official parser; fails loudly (never skips) when its tooling is missing."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the AsyncAPI parser needs node 20+", pytrace=False)
    if not (TOOLS / "node_modules" / "@asyncapi" / "parser").is_dir():
        pytest.fail(
            f"@asyncapi/parser is missing in {TOOLS}: run `make asyncapi-tools`", pytrace=False
        )
    done = subprocess.run(
        [node, str(VALIDATOR), str(TOOLS), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode == 2 or not done.stdout:
        pytest.fail(f"the AsyncAPI validator crashed: {done.stderr}", pytrace=False)
    return done.returncode, json.loads(done.stdout), done.stderr


def test_asyncapi_document_is_valid_for_the_official_parser() -> None:
    code, report, _ = validate(ASYNCAPI_FILE)
    problems = [d for d in report["diagnostics"] if d["severity"] in ("error", "warning")]
    assert code == 0 and problems == []
    # The Avro schema parser turned each payload into an object with the record's fields.
    assert len(report["messages"]) == len(public_topics())
    for spec in public_topics():
        schema = load_schema(spec.schema_file)
        parsed = report["messages"][f"{schema['namespace']}.{schema['name']}"]
        assert parsed["schemaFormat"] == AVRO_SCHEMA_FORMAT and parsed["type"] == "object"
        assert parsed["properties"] == [field["name"] for field in schema["fields"]]


def test_the_parser_rejects_an_invalid_avro_payload(tmp_path: Path) -> None:
    """The validation can fail: a field type Avro does not know is an error."""
    document = asyncapi_document()
    message = next(iter(document["components"]["messages"].values()))
    message["payload"]["schema"] = {
        **message["payload"]["schema"],
        "fields": [{"name": "x", "type": {"type": "nonsense"}}],
    }
    broken = tmp_path / "broken.yaml"
    broken.write_text(asyncapi_yaml(document))
    code, report, _ = validate(broken)
    assert code == 1
    assert any(d["severity"] == "error" for d in report["diagnostics"])


def test_catalog_commands_write_what_they_generate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out" / "asyncapi.yaml"
    assert main(["catalog", "asyncapi", "--output", str(output)]) == 0
    assert output.read_text() == asyncapi_yaml()
    capsys.readouterr()
    assert main(["catalog", "asyncapi", "--output", "-"]) == 0
    assert capsys.readouterr().out == asyncapi_yaml()
    for what, rendered in (("kpis", kpi_table()), ("config", config_table())):
        block, page = BLOCKS[what], tmp_path / f"{what}.md"
        page.write_text(f"# x\n{block.start}\nstale\n{block.end}\nrest\n")
        assert block.update(page) and not block.update(page)
        assert page.read_text() == f"# x\n{block.start}\n\n{rendered}\n{block.end}\nrest\n"
    capsys.readouterr()
    assert main(["catalog", "config"]) == 0
    assert capsys.readouterr().out == config_table()
