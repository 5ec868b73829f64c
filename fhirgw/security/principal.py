"""Who is asking: the authenticated client behind a request, and its SMART scopes.

A ``Principal`` is made from a verified access token (``security.tokens``) or, with
``FHIRGW_AUTH=disabled``, is the local developer (``LOCAL``). Code below the HTTP layer
finds it in ``current()`` (a context variable the router sets for the unit of work), so the
audit trail and the disclosure filter see who acts without every signature carrying it.
"""
from __future__ import annotations

import contextvars
import re
from dataclasses import dataclass, field

#: SMART v2 permission letters, in their canonical order
PERMISSIONS = "cruds"
#: SMART v1 ``.read`` / ``.write`` / ``.*`` in v2 letters
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_SCOPE = re.compile(r"^(system|user|patient)/(\*|[A-Z][A-Za-z]+)\.(\*|read|write|[cruds]+)$")
#: purpose of use codes (v3-ActReason)
PURPOSE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
#: the scope that opens the /admin API and client management over HTTP
ADMIN_SCOPE = "fhirgw/admin"


class ScopeError(ValueError):
    """A scope string this server does not grant."""


def parse_scope(scope: str) -> tuple[str, str]:
    """``system/Patient.rs`` -> ("Patient", "rs"); v1 ``system/*.read`` -> ("*", "rs").

    Only ``system/`` scopes are granted (backend clients); SMART v2 scopes with query
    parameters (``system/Observation.rs?category=…``) are refused rather than widened."""
    if "?" in scope:
        raise ScopeError(f"scope {scope!r}: SMART v2 scopes with search parameters are not "
                         "supported by this server")
    m = _SCOPE.match(scope)
    if m is None:
        raise ScopeError(f"scope {scope!r} is not a SMART scope such as system/Patient.rs, "
                         "system/*.cruds or system/*.read")
    context, rtype, perms = m.groups()
    if context != "system":
        raise ScopeError(f"scope {scope!r}: this server issues system/ scopes only "
                         "(backend services)")
    if perms in _V1:
        perms = _V1[perms]
    elif list(perms) != sorted(set(perms), key=PERMISSIONS.index):
        raise ScopeError(f"scope {scope!r}: permissions must be a subset of 'cruds' in that "
                         "order")
    return rtype, perms


@dataclass(frozen=True)
class Scopes:
    """Granted permissions by resource type (``*`` for every type)."""
    grants: tuple[tuple[str, str], ...] = ()
    admin: bool = False

    @classmethod
    def parse(cls, text: str) -> "Scopes":
        grants = []
        admin = False
        for s in text.split():
            if s == ADMIN_SCOPE:
                admin = True
                continue
            grants.append(parse_scope(s))
        return cls(tuple(grants), admin)

    def allows(self, res_type: str, permission: str) -> bool:
        for rtype, perms in self.grants:
            if (rtype == "*" or rtype == res_type) and permission in perms:
                return True
        return False

    def types_with(self, permission: str) -> set[str] | None:
        """The types ``permission`` is granted on; None means every type."""
        out = set()
        for rtype, perms in self.grants:
            if permission in perms:
                if rtype == "*":
                    return None
                out.add(rtype)
        return out

    def text(self) -> str:
        parts = [f"system/{t}.{p}" for t, p in self.grants]
        if self.admin:
            parts.append(ADMIN_SCOPE)
        return " ".join(parts)


@dataclass(frozen=True)
class Principal:
    client_id: str
    name: str
    scopes: Scopes
    #: ``Organization/x`` for a partner client (isolated to what concerns it), else None
    organization: str | None = None
    #: purpose of use (v3-ActReason code) its requests carry: audit and consent
    purpose: str = "TREAT"
    #: the access token's jti (audit)
    token_id: str | None = None
    #: extra facts (e.g. the remote address) for the audit trail
    details: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_partner(self) -> bool:
        return self.organization is not None


#: the developer on a gateway started with FHIRGW_AUTH=disabled: every permission
LOCAL = Principal("local", "local developer (auth disabled)",
                  Scopes((("*", PERMISSIONS),), admin=True))

_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "fhirgw_principal", default=None)


def current() -> Principal | None:
    """The principal of the request being handled in this thread/task (None: the gateway
    itself, e.g. the sync worker or a CLI command)."""
    return _current.get()


def set_current(principal: Principal | None) -> contextvars.Token:
    return _current.set(principal)


def reset_current(token: contextvars.Token) -> None:
    _current.reset(token)
