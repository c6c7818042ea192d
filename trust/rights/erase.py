"""Erasure by crypto-shredding: the case's subject keys are destroyed.

A Kafka log cannot delete one record, so the identifying field of a case's raw events
(its raw id, in ``subject``) was encrypted with a key of that case alone, kept apart in
the subject key store. Destroying the key (under every configured pseudonym key, so
events from before a rotation are covered) leaves every copy of those events unreadable
back to the person, while what the KPIs need (category, district, times, the pseudonym
joining open and close) stays and every aggregate stays exact (docs/rights.md says what
aggregates keep and why). A later event of the same case would get a new key: erase again.
"""

from __future__ import annotations

from typing import Any

from core.privacy.edge import pseudonymiser, subject_key_store
from core.settings import Settings
from trust.rights.record import record_request

FIELD = "request_id"


def erase(settings: Settings, case_id: str) -> dict[str, Any]:
    """Destroys the case's keys; the outcome says how many existed. Recorded first: a
    request the audit log cannot take destroys nothing."""
    pseudonyms = pseudonymiser(settings).every(FIELD, case_id)
    store = subject_key_store(settings)
    held = sum(store.has(p) for p in pseudonyms)
    record_request(settings, "erase", pseudonyms, {"keys_held": held})  # before it acts
    destroyed = [p for p in pseudonyms if store.destroy(p)]
    return {"keys_destroyed": len(destroyed), "pseudonyms": list(pseudonyms)}
