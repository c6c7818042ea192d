"""Signed, independently verifiable KPI statements for outcome-based contracts.

``contract`` (contracts/*.toml), ``periods`` (a month or ISO week in the city's local
time), ``rules`` (how a period aggregates each KPI's windows), ``inputs`` (offset ranges
and their SHA-256), ``rows`` (the KPI rows used and their Merkle root), ``signing``
(Ed25519 over canonical JSON), ``statement`` (issue and verify), ``render`` (Markdown).
docs/statements.md explains what a statement proves and what it does not.
"""
