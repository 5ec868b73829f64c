"""42 CFR Part 2 consent: may this resource be disclosed to this recipient for this purpose?

A resource *needs consent* when its ``meta.security`` (v3-ActCode) has the policy
``42CFRPart2``, the sensitivity ``SUD`` or ``ETH``, or the refrain ``NODSCLCD`` (what
``security.labels`` puts on substance-use-disorder data). Mental-health data labelled only
``PSY``/``BH`` does not: it is disclosed for treatment without a Part 2 consent.

Such a resource is disclosed only when the client's Consents permit it. The Consents of a
client are read once per disclosure (``Consents``): ``Consent?patient=Patient/x&status=
active``. Each Consent is evaluated on its own (``evaluate``):

* it counts only with ``status`` active and ``scope`` patient-privacy
  (http://terminology.hl7.org/CodeSystem/consentscope); anything else says nothing;
* ``Consent.provision`` is a tree. A provision *applies* when all its constraints match the
  disclosure; a constraint that is absent does not restrict:

  - ``period``: covers now (dates cover their whole day, month or year);
  - ``actor``: one actor's ``reference`` is the recipient Organization, as ``Organization/x``
    or an absolute URL ending in ``/Organization/x``;
  - ``purpose`` (v3-ActReason): holds the purpose of the disclosure (exact code: ``TREAT``
    does not cover ``ETREAT``);
  - ``securityLabel``: its v3-ActCode labels intersect the resource's, and the resource's
    confidentiality is at most the highest v3-Confidentiality it lists (R covers R and
    below);
  - ``class`` (resource types): holds the resource's type;
  - ``action`` (consentaction): holds ``disclose``;
  - ``data``: names the resource itself (meaning ``instance``);
  - ``code``: one of its codings is one of the resource's codes (the coded elements of
    ``labels.CODE_PATHS``).

  A provision that applies gives its ``type`` (a nested provision without one takes its
  parent's), unless one of its nested provisions applies: nested provisions override their
  parent, and between siblings that apply a deny wins over a permit. A provision that does
  not apply says nothing, and neither do its nested provisions.

* When in doubt a permit does not apply and a deny does. So a permit covers Part 2 data
  only through a Part 2 sensitivity (``SUD``, ``ETH``; a consent to share psychiatric
  information, ``PSY``, is no consent to share a record that is also labelled ``SUD``); a
  permit needs the recipient named by an actor (with a recipient role, IRCP or PRCP, or no
  role) in it or in a provision above it (42 CFR 2.31(a)(4): the consent names the
  recipient); and constraints this module cannot check (``dataPeriod``, ``data`` by other
  meanings than ``instance``, unreadable periods) make a permit not apply and a deny apply.

The disclosure is permitted only when some Consent yields permit and none yields deny
(``decide``). Revoking a Consent (any status but active) takes effect on the next
disclosure: nothing here is cached beyond one ``Consents`` instance.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from .labels import ACT_CODE, CODE_PATHS, CONFIDENTIALITY, CONFIDENTIALITY_ORDER, _collect

CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
CONSENT_ACTION = "http://terminology.hl7.org/CodeSystem/consentaction"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
RESOURCE_TYPES = "http://hl7.org/fhir/resource-types"
PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
#: v3-ActCode labels that make a resource need a Part 2 consent
PART2_LABELS = frozenset({"42CFRPart2", "SUD", "ETH", "NODSCLCD"})
#: v3-ActCode sensitivities through which a permit covers Part 2 data
PART2_SENSITIVITY = frozenset({"SUD", "ETH", "42CFRPart2"})
#: actor roles (v3-ParticipationType) that name a recipient of the information
RECIPIENT_ROLES = frozenset({"IRCP", "PRCP"})
#: where a resource names its client (the first that is a local Patient)
PATIENT_ELEMENTS = ("subject", "patient", "for", "beneficiary", "individual")

PERMIT = "permit"
DENY = "deny"


# ---------------------------------------------------------------- the resource side

def security_codes(body: dict) -> set[tuple[str | None, str | None]]:
    """(system, code) of every ``meta.security`` label."""
    meta = body.get("meta") if isinstance(body, dict) else None
    labels = meta.get("security") if isinstance(meta, dict) else None
    return {(s.get("system"), s.get("code")) for s in labels or () if isinstance(s, dict)}


def needs_consent(body: dict) -> bool:
    """Is this resource labelled for 42 CFR Part 2 (policy, SUD/ETH, or NODSCLCD)?"""
    return any(system == ACT_CODE and code in PART2_LABELS
               for system, code in security_codes(body))


def _rank(code) -> int:
    try:
        return CONFIDENTIALITY_ORDER.index(code)
    except ValueError:
        return -1


def patient_of(body: dict) -> str | None:
    """``Patient/x`` of the client a resource is about (the resource itself for a Patient)."""
    if body.get("resourceType") == "Patient":
        return f"Patient/{body['id']}" if body.get("id") else None
    for key in PATIENT_ELEMENTS:
        ref = body.get(key)
        if isinstance(ref, list):
            ref = ref[0] if ref else None
        value = ref.get("reference") if isinstance(ref, dict) else None
        if isinstance(value, str):
            found = _local("Patient", value)
            if found:
                return found
    return None


def _local(res_type: str, ref: str) -> str | None:
    """``Type/id`` from ``Type/id``, ``Type/id/_history/n`` or ``http://…/Type/id``."""
    parts = ref.split("/_history/")[0].rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == res_type and parts[-1]:
        return f"{res_type}/{parts[-1]}"
    return None


@dataclass(frozen=True)
class Request:
    """What is being disclosed, to whom, why, when."""
    recipient: str                    # ``Organization/x``
    purpose: str                      # v3-ActReason code
    resource: dict
    now: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def resource_type(self) -> str:
        return self.resource.get("resourceType") or ""

    @property
    def resource_ref(self) -> str | None:
        rid = self.resource.get("id")
        return f"{self.resource_type}/{rid}" if rid else None


# ---------------------------------------------------------------- periods

_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?"
                   r"(Z|[+-]\d{2}:\d{2})?)?)?)?$")


def bounds(value: str) -> tuple[datetime, datetime]:
    """The instants a FHIR date/dateTime covers, [low, high). A dateTime without a zone
    is taken as UTC. Raises ValueError when it is not one.

    >>> [d.isoformat() for d in bounds("2026-02")]
    ['2026-02-01T00:00:00+00:00', '2026-03-01T00:00:00+00:00']
    """
    m = _DATE.match(value or "")
    if m is None:
        raise ValueError(f"not a FHIR date or dateTime: {value!r}")
    year, month, day, hh, mm, ss, frac, zone = m.groups()
    if hh is not None:
        tz = timezone.utc
        if zone and zone != "Z":
            sign = 1 if zone[0] == "+" else -1
            tz = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
        low = datetime(int(year), int(month), int(day), int(hh), int(mm), int(ss or 0),
                       int(float(frac) * 1_000_000) if frac else 0, tzinfo=tz)
        return low, low + timedelta(seconds=1)
    if day is not None:
        low = datetime(int(year), int(month), int(day), tzinfo=timezone.utc)
        return low, low + timedelta(days=1)
    if month is not None:
        low = datetime(int(year), int(month), 1, tzinfo=timezone.utc)
        y, mo = (int(year) + 1, 1) if int(month) == 12 else (int(year), int(month) + 1)
        return low, datetime(y, mo, 1, tzinfo=timezone.utc)
    return (datetime(int(year), 1, 1, tzinfo=timezone.utc),
            datetime(int(year) + 1, 1, 1, tzinfo=timezone.utc))


def period_covers(period: dict, now: datetime) -> bool:
    """Does ``period`` cover ``now``? Raises ValueError when it cannot be read."""
    if not isinstance(period, dict):
        raise ValueError("period is not a Period")
    if period.get("start") and bounds(period["start"])[0] > now:
        return False
    if period.get("end") and bounds(period["end"])[1] <= now:
        return False
    return True


# ---------------------------------------------------------------- provisions

def _codings(items) -> list[dict]:
    """Codings of a list of Codings or CodeableConcepts."""
    out: list[dict] = []
    for item in items or ():
        if not isinstance(item, dict):
            continue
        if "coding" in item:
            out.extend(c for c in item.get("coding") or () if isinstance(c, dict))
        else:
            out.append(item)
    return out


def _actor_matches(provision: dict, req: Request, ptype: str) -> bool | None:
    """None: no actor constraint; else whether an actor is the recipient."""
    actors = provision.get("actor")
    if not actors:
        return None
    for actor in actors:
        if not isinstance(actor, dict):
            continue
        ref = (actor.get("reference") or {}).get("reference")
        if not isinstance(ref, str):
            if ptype == DENY:
                return True     # an actor we cannot resolve (identifier only): deny applies
            continue
        if _local("Organization", ref) != req.recipient:
            continue
        if ptype == DENY:
            return True
        roles = {c.get("code") for c in _codings([actor.get("role")])
                 if c.get("system") in (None, PARTICIPATION_TYPE)}
        if not actor.get("role") or roles & RECIPIENT_ROLES:
            return True
    return False


def _labels_match(provision: dict, req: Request, ptype: str) -> bool:
    listed = provision.get("securityLabel")
    if not listed:
        return True
    act = {c.get("code") for c in listed if isinstance(c, dict) and c.get("system") == ACT_CODE}
    conf = [c.get("code") for c in listed
            if isinstance(c, dict) and c.get("system") == CONFIDENTIALITY
            and c.get("code") in CONFIDENTIALITY_ORDER]
    labels = security_codes(req.resource)
    res_act = {code for system, code in labels if system == ACT_CODE}
    res_conf = max((_rank(code) for system, code in labels if system == CONFIDENTIALITY),
                   default=-1)
    if act:
        if ptype == PERMIT and needs_consent(req.resource):
            if not act & res_act & PART2_SENSITIVITY:
                return False
        elif not act & res_act:
            return False
    if conf:
        if ptype == PERMIT and res_conf > max(_rank(c) for c in conf):
            return False
        if ptype == DENY and res_conf < min(_rank(c) for c in conf):
            return False
    if not act and not conf:
        return ptype == DENY    # labels of other systems: cannot be checked
    return True


def _resource_codes(body: dict) -> set[tuple[str | None, str | None]]:
    concepts: list = []
    for path in CODE_PATHS.get(body.get("resourceType") or "", ()):
        keys = tuple(path.split("."))
        child = body.get(keys[0])
        if child is not None:
            _collect(child, keys, 1, concepts)
    return {(c.get("system"), c.get("code")) for c in _codings(concepts)}


def applies(provision: dict, req: Request, ptype: str) -> tuple[bool, bool]:
    """(does the provision apply, does it name the recipient)."""
    strict = ptype != DENY          # unknown or unreadable: a permit does not apply
    if provision.get("dataPeriod"):
        return not strict, False
    if provision.get("period"):
        try:
            if not period_covers(provision["period"], req.now):
                return False, False
        except ValueError:
            if strict:
                return False, False
    named = _actor_matches(provision, req, ptype)
    if named is False:
        return False, False
    purposes = provision.get("purpose")
    if purposes and not any(c.get("code") == req.purpose and
                            (c.get("system") in (None, ACT_REASON) or not strict)
                            for c in _codings(purposes)):
        return False, False
    if not _labels_match(provision, req, ptype):
        return False, False
    classes = provision.get("class")
    if classes and not any(c.get("code") == req.resource_type and
                           c.get("system") in (None, RESOURCE_TYPES)
                           for c in _codings(classes)):
        return False, False
    actions = provision.get("action")
    if actions:
        wanted = {"disclose"} if strict else {"disclose", "access", "use"}
        if not any(c.get("code") in wanted for c in _codings(actions)
                   if c.get("system") in (None, CONSENT_ACTION)):
            return False, False
    data = provision.get("data")
    if data:
        instance = any(isinstance(d, dict) and d.get("meaning") == "instance" and
                       isinstance((d.get("reference") or {}).get("reference"), str) and
                       req.resource_ref and
                       _local(req.resource_type, d["reference"]["reference"]) == req.resource_ref
                       for d in data)
        other = any(isinstance(d, dict) and d.get("meaning") != "instance" for d in data)
        if not instance and (strict or not other):
            return False, False
    codes = provision.get("code")
    if codes:
        wanted_codes = {(c.get("system"), c.get("code")) for c in _codings(codes)}
        if req.resource_type not in CODE_PATHS:
            if strict:
                return False, False
        elif not wanted_codes & _resource_codes(req.resource):
            return False, False
    return True, bool(named)


def evaluate_provision(provision: dict | None, req: Request, inherited: str | None = None,
                       named: bool = False) -> str | None:
    """``permit``, ``deny`` or None (the provision does not apply) for one provision
    and its nested provisions."""
    if not isinstance(provision, dict):
        return None
    ptype = provision.get("type") or inherited
    if ptype not in (PERMIT, DENY):
        return None
    ok, names = applies(provision, req, ptype)
    if not ok:
        return None
    named = named or names
    results = [evaluate_provision(p, req, ptype, named) for p in provision.get("provision") or ()]
    if DENY in results:
        return DENY
    if PERMIT in results:
        return PERMIT
    if ptype == PERMIT and not named:
        return None     # a permit must name the recipient
    return ptype


def in_force(consent: dict) -> bool:
    """Active and a patient-privacy consent."""
    if consent.get("resourceType") != "Consent" or consent.get("status") != "active":
        return False
    return any(c.get("system") == CONSENT_SCOPE and c.get("code") == "patient-privacy"
               for c in _codings([consent.get("scope")]))


def evaluate(consent: dict, req: Request) -> str | None:
    """What one Consent says about the disclosure: ``permit``, ``deny`` or None."""
    if not in_force(consent):
        return None
    return evaluate_provision(consent.get("provision"), req)


def decide(consents: list[dict], req: Request) -> bool:
    """Permitted only when some Consent permits and none denies."""
    results = [evaluate(c, req) for c in consents]
    return PERMIT in results and DENY not in results


class Consents:
    """The active Consents of each client, read once (per instance) inside ``tx``."""

    def __init__(self, tx) -> None:
        self.tx = tx
        self.cache: dict[str, list[dict]] = {}

    def of(self, patient: str) -> list[dict]:
        found = self.cache.get(patient)
        if found is None:
            found = [s.resource() for s in
                     self.tx.search("Consent", [("patient", patient), ("status", "active")])]
            self.cache[patient] = found
        return found

    def permits(self, body: dict, recipient: str, purpose: str, *,
                patient: str | None = None, now: datetime | None = None) -> bool:
        """Do the client's Consents permit disclosing ``body`` to ``recipient``?
        (Only meaningful for a resource that ``needs_consent``.)"""
        who = patient_of(body) or patient
        if who is None:
            return False
        req = Request(recipient, purpose, body, now or datetime.now(timezone.utc))
        return decide(self.of(who), req)


__all__ = ["ACT_REASON", "CONSENT_SCOPE", "PART2_LABELS", "Consents", "Request", "bounds",
           "decide", "evaluate", "evaluate_provision", "in_force", "needs_consent",
           "patient_of", "period_covers", "security_codes"]
