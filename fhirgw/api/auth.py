"""Authentication over HTTP: the token endpoint, SMART discovery, bearer-token checks.

* ``POST /auth/token``: OAuth2 client credentials (``security.tokens``). Errors follow
  RFC 6749 (``{"error": "invalid_client", ...}``) for OAuth clients; a caller that accepts
  ``application/fhir+json`` gets them as an OperationOutcome instead.
* ``GET /.well-known/smart-configuration`` (also under ``/fhir``): SMART App Launch 2.0
  discovery for backend services.
* ``Auth.principal(request, base)``: the Principal behind a FHIR request, or 401. Only
  ``/fhir/metadata`` and the discovery document are open. With ``FHIRGW_AUTH=disabled``
  every request is the local developer (``principal.LOCAL``).
"""
from __future__ import annotations

import logging
from urllib.parse import parse_qsl

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from ..config import Settings
from ..model.errors import Issue, Unauthorized, outcome_bytes
from ..security.clients import ClientStore
from ..security.principal import LOCAL, Principal
from ..security.tokens import ASSERTION_ALGORITHMS, OAuthError, TokenService, origin_of

log = logging.getLogger("fhirgw.auth")
FHIR_JSON = "application/fhir+json; charset=utf-8"
OPEN_PATHS = frozenset({"metadata", ".well-known/smart-configuration"})
_CHALLENGE = 'Bearer realm="fhirgw"'


def _claimed_client(form: dict, authorization: str | None) -> str | None:
    """The client_id a refused token request claimed (for the audit record), if readable."""
    import base64

    if form.get("client_id"):
        return form["client_id"][:64]
    if authorization and authorization[:6].lower() == "basic ":
        try:
            return base64.b64decode(authorization[6:].strip()).decode().split(":", 1)[0][:64]
        except (ValueError, UnicodeDecodeError):
            return None
    return None


class Auth:
    def __init__(self, settings: Settings, engine) -> None:
        #: where refused token requests are audited (set by create_app)
        self.audit = None
        self.enabled = settings.auth_enabled
        self.clients = ClientStore(engine)
        self.tokens = TokenService(engine, self.clients, settings.token_lifetime)

    def urls(self, base: str) -> tuple[str, str]:
        """(issuer, token endpoint) for a FHIR base."""
        issuer = f"{origin_of(base)}/auth"
        return issuer, f"{issuer}/token"

    def principal(self, method: str, path: str, authorization: str | None,
                  base: str) -> Principal | None:
        """The caller, None for the open paths; Unauthorized without a valid token."""
        if not self.enabled:
            return LOCAL
        if path in OPEN_PATHS and method in ("GET", "HEAD"):
            return None
        if not authorization or authorization[:7].lower() != "bearer " or \
                not authorization[7:].strip():
            raise Unauthorized("This request needs an access token: get one from POST "
                               "/auth/token and send 'Authorization: Bearer <token>'",
                               headers={"WWW-Authenticate": _CHALLENGE})
        issuer, _ = self.urls(base)
        found = self.tokens.verify(authorization[7:].strip(), audience=base, issuer=issuer)
        if found is None:
            raise Unauthorized("The access token is invalid or expired",
                               headers={"WWW-Authenticate": _CHALLENGE +
                                        ', error="invalid_token"'})
        return found

    def smart_configuration(self, base: str) -> dict:
        issuer, token_url = self.urls(base)
        return {
            "issuer": issuer,
            "token_endpoint": token_url,
            "token_endpoint_auth_methods_supported": ["private_key_jwt",
                                                      "client_secret_basic"],
            "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
            "grant_types_supported": ["client_credentials"],
            "scopes_supported": ["system/*.cruds", "system/*.rs", "system/*.read",
                                 "system/*.write", "fhirgw/admin"],
            "capabilities": ["client-confidential-asymmetric",
                             "client-confidential-symmetric", "permission-v1",
                             "permission-v2"],
        }


def fhir_base(request: Request, settings: Settings) -> str:
    """The FHIR base a request addresses: ``FHIRGW_BASE_URL``, else ``scheme://Host/fhir``
    (tokens are issued for, and checked against, this audience)."""
    if settings.base_url:
        return settings.base_url.rstrip("/")
    host = request.headers.get("host") or "localhost"
    return f"{request.url.scheme}://{host}/fhir"


def _oauth_error(request: Request, exc: OAuthError) -> Response:
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="fhirgw"'
    if "fhir" in (request.headers.get("accept") or ""):
        return Response(outcome_bytes([Issue(exc.description, code="login"
                                             if exc.status == 401 else "invalid")]),
                        status_code=exc.status, headers=headers, media_type=FHIR_JSON)
    return Response(orjson.dumps({"error": exc.error, "error_description": exc.description}),
                    status_code=exc.status, headers=headers, media_type="application/json")


def install(app: FastAPI, auth: Auth, base_of) -> None:
    """Add the token endpoint and discovery; call before the /fhir catch-all routes."""

    async def token(request: Request) -> Response:
        ctype = (request.headers.get("content-type") or "").split(";")[0].strip()
        if ctype != "application/x-www-form-urlencoded":
            return _oauth_error(request, OAuthError(
                "invalid_request", "The token endpoint takes application/x-www-form-urlencoded"))
        raw = await request.body()
        if len(raw) > 64 * 1024:
            return _oauth_error(request, OAuthError("invalid_request", "Request too large"))
        try:
            form = dict(parse_qsl(raw.decode(), keep_blank_values=True))
        except (UnicodeDecodeError, ValueError):
            return _oauth_error(request, OAuthError("invalid_request", "Malformed form body"))
        base = base_of(request)
        issuer, token_url = auth.urls(base)
        from anyio import to_thread
        try:
            issued = await to_thread.run_sync(
                lambda: auth.tokens.token(form, request.headers.get("authorization"),
                                          token_url=token_url, audience=base, issuer=issuer))
        except OAuthError as exc:
            if auth.audit is not None and exc.status == 401:  # a refused authentication
                from ..security.audit import denied_event
                auth.audit.record(denied_event(
                    None, None, 401, reason="client authentication failed at the token "
                                            "endpoint",
                    address=request.client.host if request.client else None,
                    client_id=_claimed_client(form, request.headers.get("authorization"))))
            return _oauth_error(request, exc)
        return Response(orjson.dumps(issued.json()), media_type="application/json",
                        headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    async def smart(request: Request) -> Response:
        return Response(orjson.dumps(auth.smart_configuration(base_of(request))),
                        media_type="application/json")

    app.router.add_route("/auth/token", token, methods=["POST"], include_in_schema=False)
    app.router.add_route("/.well-known/smart-configuration", smart, methods=["GET"],
                         include_in_schema=False)
    app.router.add_route("/fhir/.well-known/smart-configuration", smart, methods=["GET"],
                         include_in_schema=False)
