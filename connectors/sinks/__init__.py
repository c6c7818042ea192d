"""Sinks: consumers that write topic contents to external stores (ClickHouse)."""
