"""Alerts for downstream services: rules (pure), processor (Kafka side), agents (dataflow)."""
