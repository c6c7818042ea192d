"""Evidence a third party can check: the audit log, signed KPI statements, resident rights.

Above streams and connectors (it reads topics and tables through them), below the API,
which records every access here. The edge's privacy primitives (pseudonyms, per-subject
keys) live in ``core`` because the sources apply them.
"""
