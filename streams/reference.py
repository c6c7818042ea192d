"""Reference data followed from compacted topics into memory (moved to :mod:`core.compacted`).

The mechanism is shared with the long-running sources, which follow the opt-out registry
the same way (#16); the processors keep importing it from here.
"""

from core.compacted import KEY_WAIT_S, CompactedTable, FollowStats, Rejection

__all__ = ["KEY_WAIT_S", "CompactedTable", "FollowStats", "Rejection"]
