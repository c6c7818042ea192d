"""The core every other package builds on: settings, Kafka helpers, telemetry, the KPI
definitions and start-up waits.

It imports nothing of ours but :mod:`schemas` (the data contracts), so ``streams``,
``connectors``, the oracles and the CLI can all use it without import cycles. The layers
are enforced by import-linter (``[tool.importlinter]`` in pyproject.toml).
"""

__version__ = "0.1.0"
