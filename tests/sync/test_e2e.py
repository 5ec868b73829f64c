"""End to end over real HTTP: ours and a partner EHR, two gateways on 127.0.0.1."""
from __future__ import annotations

from tests.sync.conftest import (
    OUR_SYSTEM,
    close,
    fhir,
    make_gateway,
    partner_org,
    referral,
    search,
    wait_for,
    write_config,
)


def test_referral_round_trip(our_db, partner, tmp_path):
    ours = make_gateway(our_db, config=write_config(tmp_path))
    try:
        org = partner_org(ours.base, partner.base)
        pat, sr = referral(ours.base, org)
        sr_ident = sr["identifier"][0]
        assert sr_ident["system"] == OUR_SYSTEM
        # the Task the referral workflow made on ours
        task = wait_for(lambda: search(ours.base, f"Task?focus=ServiceRequest/{sr['id']}"))[0]
        t_ident = task["identifier"][0]

        # the partner holds ServiceRequest + Task + Patient, found by our identifiers
        p_sr = wait_for(lambda: search(partner.base, f"ServiceRequest?identifier="
                                       f"{OUR_SYSTEM}|{sr_ident['value']}"))
        p_task = wait_for(lambda: search(partner.base,
                                         f"Task?identifier={OUR_SYSTEM}|{t_ident['value']}"))
        assert len(p_sr) == 1 and len(p_task) == 1
        p_task = p_task[0]
        assert p_task["status"] == "requested"
        assert p_task["focus"]["reference"] == f"ServiceRequest/{p_sr[0]['id']}"
        p_pat = search(partner.base, "Patient?identifier=urn:iop:mrn|"
                                     + pat["identifier"][0]["value"])
        assert len(p_pat) == 1
        assert "maritalStatus" not in p_pat[0]          # minimum necessary
        assert p_sr[0]["subject"]["reference"] == f"Patient/{p_pat[0]['id']}"
        assert p_task["owner"]["reference"] == f"{ours.base}/Organization/{org['id']}"

        # the partner accepts, then completes with an output
        p_task = {**p_task, "status": "accepted"}
        r = fhir("PUT", f"{partner.base}/Task/{p_task['id']}", p_task)
        assert r.status_code == 200, r.text
        wait_for(lambda: fhir("GET", f"{ours.base}/Task/{task['id']}").json()["status"]
                 == "accepted")
        p_task = {**r.json(), "status": "completed",
                  "output": [{"type": {"text": "visit note"},
                              "valueString": "seen 2026-12-01; medication started"}]}
        r = fhir("PUT", f"{partner.base}/Task/{p_task['id']}", p_task)
        assert r.status_code == 200, r.text
        done = wait_for(lambda: (t := fhir("GET", f"{ours.base}/Task/{task['id']}").json())
                        ["status"] == "completed" and t)
        assert done["output"][0]["valueString"].startswith("seen")
        assert fhir("GET", f"{ours.base}/ServiceRequest/{sr['id']}").json()["status"] \
            == "completed"
        # nothing was duplicated on the partner, and nothing echoed back as an error
        assert len(search(partner.base, f"Task?identifier={OUR_SYSTEM}|{t_ident['value']}")) == 1
        m = fhir("GET", ours.base.replace("/fhir", "/admin/metrics")).json()["partners"]
        assert m["partner-ehr"]["failed"] == 0
    finally:
        close(ours)
