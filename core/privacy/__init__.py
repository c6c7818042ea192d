"""Privacy at the edge (issue #16): what a source applies before anything enters Kafka.

- :mod:`core.privacy.pseudonym`: keyed HMAC-SHA256 pseudonyms with a key id, for rotation.
- :mod:`core.privacy.subject_keys`: per-subject AES-GCM keys kept apart from Kafka and
  ClickHouse, destroyed on erasure (crypto-shredding).
- :mod:`core.privacy.minimise`: the coarse grid (geohash-6) and minimal dead letters.
- :mod:`core.privacy.optout`: the opt-out registry (a compacted topic of pseudonyms).
- :mod:`core.privacy.edge`: the three together, as a source's setup builds them.

Settings are read by the entry points and passed in; nothing here logs a key.
"""
