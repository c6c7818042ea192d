"""Connectors between Kafka and the outside world: sources feed topics, sinks drain them."""
