"""The ClickHouse sink and what its callers use of it.

- ``sink``: :class:`ClickHouseSink`, the KPI batches' way into the ``kpi`` table;
- ``schema``: the tables, their migrations and retention;
- ``backend``: chDB or a server, and how a process reaches the tables (``connect``);
- ``endpoint``: the read-only query endpoint the sink serves in chDB mode.
"""

from connectors.sinks.clickhouse.backend import connect
from connectors.sinks.clickhouse.schema import KPI_COLUMN_NAMES
from connectors.sinks.clickhouse.sink import KPI_TOPIC, ClickHouseSink

__all__ = ["KPI_COLUMN_NAMES", "KPI_TOPIC", "ClickHouseSink", "connect"]
