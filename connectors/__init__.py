"""Sources into Kafka and sinks out of it; each connector is one module."""
