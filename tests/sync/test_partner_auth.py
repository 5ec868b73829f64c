"""A partner EHR that wants a token: the partner is a fhirgw with auth on, and our partner
config authenticates with OAuth2 client credentials at the partner's token endpoint
(``auth = { type = "client-credentials", ... }``). The referral is delivered with a real
token, the referral's Task is polled back with it; wrong credentials deliver nothing."""
from __future__ import annotations

import time

from fhirgw.sync import outbox as ob
from tests.auth import grant, token_url
from tests.sync.conftest import (
    OUR_SYSTEM,
    PARTNER_SYSTEM,
    close,
    fhir,
    make_gateway,
    partner_org,
    referral,
    search,
    wait_for,
    write_config,
)

# what we need at the partner: deliver Patient/ServiceRequest/Task, follow the Tasks
PARTNER_SCOPE = "system/Patient.cruds system/ServiceRequest.cruds system/Task.cruds"


def _client_credentials(partner, client_id: str, secret: str) -> dict:
    return {"type": "client-credentials", "token_url": token_url(partner.base),
            "client_id": client_id, "client_secret": secret, "scope": PARTNER_SCOPE}


def test_referral_to_a_partner_with_auth_on(our_db, tmp_path):
    partner = make_gateway(f"sqlite:///{tmp_path}/partner.db", worker=False,
                           identifier_system=PARTNER_SYSTEM, auth=True)
    # the partner registers us as one of its API clients
    cid, secret = grant(partner.app, PARTNER_SCOPE, name="iop-gateway")
    ours = make_gateway(our_db, config=write_config(
        tmp_path, auth=_client_credentials(partner, cid, secret)))
    try:
        assert partner.auth_enabled and ours.auth_enabled
        # the partner refuses a request without a token
        anonymous = fhir("GET", f"{partner.base}/ServiceRequest",
                         headers={"Authorization": ""})
        assert anonymous.status_code == 401

        org = partner_org(ours.base, partner.base)
        _pat, sr = referral(ours.base, org)
        value = sr["identifier"][0]["value"]
        p_sr = wait_for(lambda: search(partner.base,
                                       f"ServiceRequest?identifier={OUR_SYSTEM}|{value}"))
        assert len(p_sr) == 1
        p_task = wait_for(lambda: search(partner.base,
                                         f"Task?focus=ServiceRequest/{p_sr[0]['id']}"))[0]
        task = search(ours.base, f"Task?focus=ServiceRequest/{sr['id']}")[0]

        # the partner accepts; our poller (with its token) brings the status back
        r = fhir("PUT", f"{partner.base}/Task/{p_task['id']}", {**p_task, "status": "accepted"})
        assert r.status_code == 200, r.text
        wait_for(lambda: fhir("GET", f"{ours.base}/Task/{task['id']}").json()["status"]
                 == "accepted", timeout=10)
        metrics = fhir("GET", ours.base.replace("/fhir", "/admin/metrics")).json()
        assert metrics["partners"]["partner-ehr"]["failed"] == 0
        # our /admin wants a token too
        assert fhir("GET", ours.base.replace("/fhir", "/admin/metrics"),
                    headers={"Authorization": ""}).status_code == 401
    finally:
        close(ours)
        close(partner)


def test_wrong_partner_credentials_deliver_nothing(tmp_path):
    partner = make_gateway(f"sqlite:///{tmp_path}/partner.db", worker=False,
                           identifier_system=PARTNER_SYSTEM, auth=True)
    cid, _secret = grant(partner.app, PARTNER_SCOPE, name="iop-gateway")
    ours = make_gateway(f"sqlite:///{tmp_path}/ours.db", config=write_config(
        tmp_path, auth=_client_credentials(partner, cid, "not-the-secret")))
    try:
        org = partner_org(ours.base, partner.base)
        referral(ours.base, org)
        rows = wait_for(lambda: [r for r in ob.list_rows(ours.engine)
                                 if r.get("attempts", 0) >= 2], timeout=15)
        assert all(r["status"] != "sent" for r in rows), rows
        # the partner's token endpoint refused us, and the outbox says so
        assert all("invalid_client" in (r["error"] or "") for r in rows), rows
        time.sleep(0.5)
        assert search(partner.base, "ServiceRequest") == []
        assert search(partner.base, "Patient") == []
    finally:
        close(ours)
        close(partner)
