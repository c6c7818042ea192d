"""KPI families: one package per family (``families/<name>/``), registered once.

A family package declares ``FAMILY = Family(...)`` (core/family.py) in its ``__init__.py``:
its events and their schemas, its reference data, its KPIs and its oracle; its rules (a
``Domain``) are in its ``domain.py``, which imports only the core. ``families/registry.py``
lists the families and derives the topic catalogue, the KPI catalogue and the sources'
event streams from them. This package imports only ``core``, ``schemas`` and each
family's oracle (``oracles/``, which may not import it back); ``streams``, ``connectors``
and the CLI import it (docs/extending.md walks through adding
a family).
"""
