"""The tamper-evident audit log: a Merkle tree (RFC 9162) over the audit topic's records.

- ``log``: reading the records (and any topic's records, for a copy under test) and
  building the tree; leaf index = position in the topic, leaf bytes =
  ``core.audit_append.leaf_bytes``.
- ``checkpoint``: signed checkpoints (tree size, root hash, time; Ed25519), their topic,
  making one on demand or at an interval.
- ``proofs``: inclusion and consistency proofs as the API serves them.
- ``verify``: rebuild the tree, check every checkpoint's signature, root and consistency
  with the one before, and name the first bad record.
- ``recorder``: the read API's audit recorder (role changes included).

Appending is ``core.audit_append`` (the sink's query endpoint, below this layer, appends too).
"""
