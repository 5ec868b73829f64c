"""Tuning for the gateway's long-running processes (the server, the audit writer child).

Not a room: a leaf module any room may import, like ``config``.
"""
from __future__ import annotations

import gc

#: gen0 threshold for a long-running gateway process (Python's default is 700)
GC_THRESHOLD = (20_000, 20, 20)


def tune_gc() -> None:
    """For a long-running process, once it has started: what exists now (modules, the R4B
    model classes, the search registry: millions of objects) is frozen out of the
    collector's scans, and collections come after 20,000 container allocations instead of
    700. A request or a batch allocates thousands of dicts that reference counting frees;
    scanning them and the startup heap cost ~15 µs per ingested resource (5%) in the server,
    pauses of up to 120 ms (a full collection), and ~10% of the audit writer child's time
    per event. ``fhirgw serve`` calls it for its process and the audit writer child for
    itself; an app embedded elsewhere leaves its process's collector alone."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
