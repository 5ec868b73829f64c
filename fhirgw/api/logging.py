"""One JSON log line per request: method, interaction shape, status, duration. No PHI.

Paths are logged as shapes (``Patient/{id}/_history/{vid}``): ids and query strings may
identify a client, so they never reach the log.
"""
from __future__ import annotations

import logging
import time
import uuid

import orjson

log = logging.getLogger("fhirgw.access")


def path_shape(path: str) -> str:
    parts = path.strip("/").split("/")
    out = []
    for i, p in enumerate(parts):
        if i == 0 or p.startswith(("_", "$")) or p == "metadata" or (p[:1].isupper() and i in (1, 3)):
            out.append(p)
        elif i >= 1 and parts[i - 1] == "_history":
            out.append("{vid}")
        else:
            out.append("{id}")
    return "/".join(out)


class AccessLog:
    """Pure ASGI middleware (cheaper than BaseHTTPMiddleware on every request)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = {"code": 500}
        request_id = None
        for k, v in scope.get("headers", ()):
            if k == b"x-request-id":
                request_id = v.decode("latin-1")[:64]
        request_id = request_id or uuid.uuid4().hex

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [
                    (b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if log.isEnabledFor(logging.INFO):
                log.info(orjson.dumps({
                    "event": "request", "request_id": request_id, "method": scope["method"],
                    "path": path_shape(scope["path"]), "status": status["code"],
                    "duration_ms": round((time.perf_counter() - start) * 1000, 2),
                }).decode())
