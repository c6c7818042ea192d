"""The read API and the dashboard (``citystream serve``): KPIs for people and tools without SQL.

It sits above streams and connectors (it reads ClickHouse through the sink's backend seam
and Kafka for live updates) and below the CLI; ``trust`` below it records every access.
"""
