"""citystream: city sensor and service events to auditable KPIs."""

__version__ = "0.1.0"
