"""citystream: city sensor and service events to auditable KPIs (the CLI and tools layer)."""

from core import __version__

__all__ = ["__version__"]
