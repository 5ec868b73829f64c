"""Background parts that live as long as the app: started on startup, stopped on shutdown."""
from __future__ import annotations

from collections.abc import Callable
from contextlib import asynccontextmanager


def run_with_app(app, *, start: Callable[[], None] | None = None,
                 stop: Callable[[], None] | None = None) -> None:
    """Call ``start()`` when the app starts and ``stop()`` (in a worker thread: it may block
    while draining) when it shuts down, around whatever lifespan the app already has."""
    previous = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a):
        if start is not None:
            start()
        try:
            async with previous(a) as state:
                yield state
        finally:
            if stop is not None:
                import anyio
                await anyio.to_thread.run_sync(stop)

    app.router.lifespan_context = lifespan


#: gen0 threshold for a server process (Python's default is 700)
GC_THRESHOLD = (20_000, 20, 20)


def tune_gc() -> None:
    """For a server process, once it has started: what exists now (modules, the R4B model
    classes, the search registry: millions of objects) is frozen out of the collector's
    scans, and collections come after 20,000 container allocations instead of 700. A
    request allocates thousands of dicts that reference counting frees; scanning them and
    the startup heap cost ~15 µs per ingested resource (5%) and pauses of up to 120 ms
    (a full collection). ``fhirgw serve`` calls it; an app embedded elsewhere leaves the
    process's collector alone."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
