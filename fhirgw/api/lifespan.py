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
