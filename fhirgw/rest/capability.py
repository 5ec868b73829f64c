"""The CapabilityStatement, generated from what the router and the search engine really do."""
from __future__ import annotations

from .. import FHIR_VERSION, __version__
from ..model.resources import RESOURCE_TYPES
from ..store.repository import clock, instant

# router handler name -> (level, FHIR interaction code)
_INTERACTIONS = {
    "read": ("type", "read"), "vread": ("type", "vread"), "update": ("type", "update"),
    "patch": ("type", "patch"), "delete": ("type", "delete"),
    "history_instance": ("type", "history-instance"), "history_type": ("type", "history-type"),
    "create": ("type", "create"), "search_type": ("type", "search-type"),
    "bundle": ("system", "transaction"), "history_system": ("system", "history-system"),
    "search_system": ("system", "search-system"),
}


def capability_statement(router) -> dict:
    from .router import _ROUTES

    handlers = {name for _m, _rx, name in _ROUTES}
    type_codes = [code for name, (lvl, code) in _INTERACTIONS.items()
                  if lvl == "type" and name in handlers]
    system = [{"code": code} for name, (lvl, code) in _INTERACTIONS.items()
              if lvl == "system" and name in handlers]
    if "bundle" in handlers:
        system.append({"code": "batch"})
    registry = router.search.registry
    resources = []
    for rtype in RESOURCE_TYPES:
        params = registry.params_for(rtype)
        entry = {
            "type": rtype,
            "interaction": [{"code": c} for c in type_codes],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": "create" in handlers,
            "conditionalRead": "not-supported",
            "conditionalUpdate": "conditional_update" in handlers,
            "conditionalDelete": "multiple" if "conditional_delete" in handlers else "not-supported",
            "referencePolicy": ["literal", "logical", "local"],
            "searchParam": [
                {k: v for k, v in (("name", code), ("definition", getattr(p, "url", None)),
                                   ("type", getattr(p, "type", None))) if v}
                for code, p in sorted(params.items())
            ],
        }
        resources.append(entry)
    from ..operations.catalog import canonical
    from .router import OPERATIONS

    rest_ops = [{"name": op, "definition": canonical(op)} for op in sorted(set(OPERATIONS.values()))]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": instant(clock.now())[:10],
        "kind": "instance",
        "software": {"name": "fhirgw", "version": __version__},
        "implementation": {"description": "fhirgw FHIR R4 gateway for virtual IOPs"},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [{
            "mode": "server",
            "security": _security(router.settings),
            "resource": resources,
            "interaction": system,
            "operation": rest_ops,
        }],
    }


def _security(settings) -> dict:
    """rest.security: SMART Backend Services tokens (or none, with auth disabled)."""
    if not settings.auth_enabled:
        return {"description": "Authentication is DISABLED (FHIRGW_AUTH=disabled): local "
                               "development only."}
    out: dict = {
        "service": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
            "code": "SMART-on-FHIR"}]}],
        "description": "Every request needs a bearer token from the token endpoint "
                       "(OAuth2 client credentials: client_secret_basic or SMART Backend "
                       "Services private_key_jwt). SMART v2 system scopes apply per "
                       "interaction; see /.well-known/smart-configuration.",
    }
    base = settings.base_url.rstrip("/")
    if base:
        from ..security.tokens import origin_of
        origin = origin_of(base)
        out["extension"] = [{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": [{"url": "token", "valueUri": f"{origin}/auth/token"}]}]
    return out
