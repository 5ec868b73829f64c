"""A typed OpenAPI document: every resource type with its own paths and schemas.

The FHIR API is served by one generic route, but developers explore an API through
``/docs`` first, so the document lists each type's interactions with the R4B model's JSON
schema and the type's search parameters. Built on first request (about 2 s) and cached.
"""
from __future__ import annotations

from typing import Any

from fastapi.openapi.utils import get_openapi

from ..model.resources import RESOURCE_TYPES, model_class

_REF = "#/components/schemas/{model}"
_OO = {"$ref": "#/components/schemas/OperationOutcome"}
FHIR_JSON = "application/fhir+json"


def _content(schema: dict) -> dict:
    return {FHIR_JSON: {"schema": schema}}


def _errors(*codes: int) -> dict:
    text = {400: "Invalid request or resource", 404: "Unknown type or id", 409: "Conflict",
            410: "Deleted", 412: "Precondition failed (If-Match, several matches)",
            422: "Business rule violated"}
    return {str(c): {"description": text[c], "content": _content(_OO)} for c in codes}


def _header(name: str, description: str) -> dict:
    return {"name": name, "in": "header", "required": False, "schema": {"type": "string"},
            "description": description}


def build(app, registry) -> dict[str, Any]:
    from pydantic.json_schema import models_json_schema

    doc = get_openapi(title=app.title, version=app.version, description=app.description,
                      routes=app.routes)
    models = [(model_class(t), "validation") for t in RESOURCE_TYPES]
    models.append((model_class("Bundle"), "validation"))
    _, top = models_json_schema(models, ref_template=_REF)
    doc.setdefault("components", {})["schemas"] = top.get("$defs", {})
    paths = doc.setdefault("paths", {})
    id_param = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    for t in RESOURCE_TYPES:
        ref = {"$ref": _REF.format(model=model_class(t).__name__)}
        search_params = [
            {"name": code, "in": "query", "required": False, "schema": {"type": "string"},
             "description": f"{getattr(p, 'type', '')}: {getattr(p, 'description', '') or ''}"[:300]}
            for code, p in sorted(registry.params_for(t).items())
        ]
        tag = [t]
        paths[f"/fhir/{t}"] = {
            "get": {"tags": tag, "summary": f"Search {t}", "operationId": f"search{t}",
                    "parameters": search_params,
                    "responses": {"200": {"description": "searchset Bundle",
                                          "content": _content({"$ref": _REF.format(model="Bundle")})},
                                  **_errors(400)}},
            "post": {"tags": tag, "summary": f"Create {t}", "operationId": f"create{t}",
                     "parameters": [_header("If-None-Exist", "conditional create: a search query"),
                                    _header("Prefer", "return=minimal|representation|OperationOutcome")],
                     "requestBody": {"required": True, "content": _content(ref)},
                     "responses": {"201": {"description": "Created", "content": _content(ref)},
                                   "200": {"description": "If-None-Exist matched",
                                           "content": _content(ref)},
                                   **_errors(400, 412)}},
        }
        paths[f"/fhir/{t}/{{id}}"] = {
            "get": {"tags": tag, "summary": f"Read {t}", "operationId": f"read{t}",
                    "parameters": [id_param],
                    "responses": {"200": {"description": t, "content": _content(ref)},
                                  **_errors(404, 410)}},
            "put": {"tags": tag, "summary": f"Update {t} (or create with this id)",
                    "operationId": f"update{t}",
                    "parameters": [id_param, _header("If-Match", 'optimistic lock: W/"n"')],
                    "requestBody": {"required": True, "content": _content(ref)},
                    "responses": {"200": {"description": "Updated", "content": _content(ref)},
                                  "201": {"description": "Created", "content": _content(ref)},
                                  **_errors(400, 412)}},
            "patch": {"tags": tag, "summary": f"Patch {t} (JSON Patch)",
                      "operationId": f"patch{t}",
                      "parameters": [id_param, _header("If-Match", 'optimistic lock: W/"n"')],
                      "requestBody": {"required": True, "content": {
                          "application/json-patch+json": {"schema": {"type": "array",
                                                                     "items": {"type": "object"}}}}},
                      "responses": {"200": {"description": "Patched", "content": _content(ref)},
                                    **_errors(400, 404, 412, 422)}},
            "delete": {"tags": tag, "summary": f"Delete {t}", "operationId": f"delete{t}",
                       "parameters": [id_param],
                       "responses": {"204": {"description": "Deleted"}, **_errors(404, 412)}},
        }
        paths[f"/fhir/{t}/{{id}}/_history"] = {"get": {
            "tags": tag, "summary": f"History of one {t}", "operationId": f"history{t}",
            "parameters": [id_param],
            "responses": {"200": {"description": "history Bundle"}, **_errors(404)}}}
        paths[f"/fhir/{t}/{{id}}/_history/{{vid}}"] = {"get": {
            "tags": tag, "summary": f"Read one version of a {t}", "operationId": f"vread{t}",
            "parameters": [id_param, {"name": "vid", "in": "path", "required": True,
                                      "schema": {"type": "string"}}],
            "responses": {"200": {"description": t, "content": _content(ref)},
                          **_errors(404, 410)}}}
    paths["/fhir"] = {"post": {
        "tags": ["system"], "summary": "Batch or transaction Bundle",
        "operationId": "transaction",
        "requestBody": {"required": True,
                        "content": _content({"$ref": _REF.format(model="Bundle")})},
        "responses": {"200": {"description": "batch-response / transaction-response Bundle"},
                      **_errors(400, 404, 412)}}}
    paths["/fhir/metadata"] = {"get": {"tags": ["system"], "summary": "CapabilityStatement",
                                       "operationId": "capabilities",
                                       "responses": {"200": {"description": "CapabilityStatement"}}}}
    paths["/fhir/_history"] = {"get": {"tags": ["system"], "summary": "Whole-server history",
                                       "operationId": "historySystem",
                                       "responses": {"200": {"description": "history Bundle"}}}}
    _security(doc)
    return doc


def _security(doc: dict) -> None:
    """Bearer tokens from ``POST /auth/token`` on every /fhir path but metadata."""
    doc["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
        "clientCredentials": {"type": "oauth2", "flows": {"clientCredentials": {
            "tokenUrl": "/auth/token",
            "scopes": {"system/*.cruds": "everything", "system/*.rs": "read and search",
                       "fhirgw/admin": "/admin and $reindex"}}}},
    }
    doc["security"] = [{"bearer": []}, {"clientCredentials": []}]
    doc["paths"]["/fhir/metadata"]["get"]["security"] = []
    form = {"type": "object", "required": ["grant_type"], "properties": {
        "grant_type": {"type": "string", "enum": ["client_credentials"]},
        "scope": {"type": "string"},
        "client_assertion_type": {"type": "string"},
        "client_assertion": {"type": "string"}}}
    oauth_error = {"application/json": {"schema": {"type": "object", "properties": {
        "error": {"type": "string"}, "error_description": {"type": "string"}}}}}
    doc["paths"]["/auth/token"] = {"post": {
        "tags": ["auth"], "summary": "Get an access token (OAuth2 client credentials: "
                                     "client_secret_basic or private_key_jwt)",
        "operationId": "token", "security": [],
        "requestBody": {"required": True,
                        "content": {"application/x-www-form-urlencoded": {"schema": form}}},
        "responses": {"200": {"description": "access token", "content": {
            "application/json": {"schema": {"type": "object", "properties": {
                "access_token": {"type": "string"}, "token_type": {"type": "string"},
                "expires_in": {"type": "integer"}, "scope": {"type": "string"}}}}}},
            "400": {"description": "bad request", "content": oauth_error},
            "401": {"description": "client authentication failed", "content": oauth_error}}}}


def install(app, registry) -> None:
    def openapi():
        if app.openapi_schema is None:
            app.openapi_schema = build(app, registry)
        return app.openapi_schema
    app.openapi = openapi
