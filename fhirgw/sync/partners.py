"""Partners are FHIR data: an Organization whose ``endpoint`` is an active Endpoint with
``connectionType`` hl7-fhir-rest (FHIR REST server) or hl7-fhir-msg (FHIR messaging), and
``address`` its base URL. The partner's key is the Endpoint's identifier (``value``; the
config file may also say ``system|value``), or ``Endpoint/<id>`` when it has none.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..model.errors import FhirError
from ..model.references import local_id

CONNECTION_TYPES = {"hl7-fhir-rest": "rest", "hl7-fhir-msg": "msg"}


@dataclass(frozen=True)
class Partner:
    key: str
    endpoint_id: str
    address: str
    protocol: str            # "rest" or "msg"
    organization: str | None = None   # Organization/<id>
    name: str = ""
    system: str | None = None
    status: str = "active"


def endpoint_partner(endpoint: dict, organization: str | None = None, name: str = ""
                     ) -> Partner | None:
    """The partner an Endpoint describes (None: not a FHIR endpoint or not active)."""
    if endpoint.get("status") not in (None, "active"):
        return None
    ct = endpoint.get("connectionType") or {}
    codes = [ct.get("code")] + [c.get("code") for c in ct.get("coding") or []] \
        if isinstance(ct, dict) else []
    protocol = next((CONNECTION_TYPES[c] for c in codes if c in CONNECTION_TYPES), None)
    address = (endpoint.get("address") or "").rstrip("/")
    if protocol is None or not address:
        return None
    ident = next((i for i in endpoint.get("identifier") or [] if i.get("value")), None)
    key = ident["value"] if ident else f"Endpoint/{endpoint.get('id')}"
    return Partner(key, str(endpoint.get("id")), address, protocol, organization,
                   name or endpoint.get("name") or "", ident.get("system") if ident else None)


def organization_partner(tx, org_ref: dict | str | None, protocols=("rest", "msg")
                         ) -> Partner | None:
    """The partner behind a reference to a local Organization (its first usable Endpoint)."""
    ref = {"reference": org_ref} if isinstance(org_ref, str) else org_ref
    org_id = local_id(ref, "Organization")
    if org_id is None:
        return None
    cache = tx.__dict__.setdefault("_sync_partner_cache", {})
    key = (org_id, protocols)
    if key in cache:
        return cache[key]
    found = None
    try:
        org = tx.read("Organization", org_id).resource()
    except FhirError:
        org = None
    for eref in (org or {}).get("endpoint") or []:
        eid = local_id(eref, "Endpoint")
        if not eid:
            continue
        try:
            ep = tx.read("Endpoint", eid).resource()
        except FhirError:
            continue
        p = endpoint_partner(ep, f"Organization/{org_id}", (org or {}).get("name", ""))
        if p is not None and p.protocol in protocols:
            found = p
            break
    cache[key] = found
    return found


def endpoint_by_id(tx, endpoint_id: str) -> Partner | None:
    try:
        ep = tx.read("Endpoint", endpoint_id).resource()
    except FhirError:
        return None
    return endpoint_partner(ep)


def list_partners(tx) -> list[Partner]:
    """Every active FHIR Endpoint, with the Organization that names it (if any)."""
    out: list[Partner] = []
    for s in tx.search("Endpoint", [("status", "active")], limit=None):
        orgs = tx.search("Organization", [("endpoint", f"Endpoint/{s.res_id}")], limit=1)
        org = orgs[0] if orgs else None
        p = endpoint_partner(s.resource(), f"Organization/{org.res_id}" if org else None,
                             org.resource().get("name", "") if org else "")
        if p is not None:
            out.append(p)
    return out
