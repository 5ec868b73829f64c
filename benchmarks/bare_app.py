"""The framework floor for read.py: a bare FastAPI app answering GET /fhir/Patient/{id} with
the same bytes and headers the gateway sends, from a dict in memory (no database, no FHIR).

    FHIRGW_BENCH_BARE_DATA=resources.json uvicorn bare_app:create --factory --app-dir benchmarks
"""
from __future__ import annotations

import json
import os

from fastapi import FastAPI
from fastapi.responses import Response

FHIR_JSON = "application/fhir+json; charset=utf-8"


def create() -> FastAPI:
    with open(os.environ["FHIRGW_BENCH_BARE_DATA"]) as f:
        data = json.load(f)
    stored = {rid: (d["body"].encode(), {"ETag": d["etag"], "Last-Modified": d["last_modified"]})
              for rid, d in data.items()}
    app = FastAPI()

    @app.get("/fhir/Patient/{rid}")
    async def read(rid: str) -> Response:
        hit = stored.get(rid)
        if hit is None:
            return Response(b'{"resourceType":"OperationOutcome"}', status_code=404,
                            media_type=FHIR_JSON)
        return Response(hit[0], media_type=FHIR_JSON, headers=hit[1])

    @app.get("/thread/fhir/Patient/{rid}")
    async def read_via_thread(rid: str) -> Response:
        """The same, but through one anyio worker-thread hop (as the gateway's handler does)."""
        import anyio

        hit = await anyio.to_thread.run_sync(stored.get, rid)
        if hit is None:
            return Response(b'{"resourceType":"OperationOutcome"}', status_code=404,
                            media_type=FHIR_JSON)
        return Response(hit[0], media_type=FHIR_JSON, headers=hit[1])

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    return app
