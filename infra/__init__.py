"""Local development/CI stack for citystream: Kafka 4.x (KRaft) + Apicurio Registry.

Both services run as plain JVM processes resolved from Maven Central, so no
Docker engine is needed. The public API lives in :mod:`infra.stack`
(``StackConfig``, ``fetch``, ``up``, ``down``, ``status``, ``reset``); the CLI is
``python -m infra.stack {up,down,status,fetch,reset}``.

Nothing is imported here on purpose: importing :mod:`infra.stack` from the
package would make ``python -m infra.stack`` warn about a double import.
"""
