"""``EpisodeOfCare/[id]/$discharge``: end an IOP enrollment and issue the discharge summary.

In one unit of work (any error rolls all of it back):

1. checks the Parameters (``date`` valueDate, ``followUpCadence`` valueCode weekly |
   biweekly | monthly, ``followUpCount`` valueInteger 0..52; all optional) and the episode
   (404 when unknown; 422 unless it is active or on hold);
2. finishes the EpisodeOfCare: status ``finished``, ``period.end`` = the discharge date, the
   previous status closed in ``statusHistory``;
3. creates the follow-up Appointments (status ``proposed``, the client and the care manager
   as participants, linked to the episode by ``supportingInformation``);
4. writes the discharge summary Composition (profile iop-discharge-summary, LOINC 18842-5),
   every section with a generated XHTML narrative and its entries;
5. stores the FHIR document (Bundle type ``document``) and returns it.

Defaults: the date is today (UTC). No cadence and no count: no follow-ups are proposed; a
cadence without a count proposes 4; a count without a cadence is weekly. A follow-up is
proposed for its day (``requestedPeriod``) with a placeholder time of
``FOLLOW_UP_TIME`` UTC (``start``/``end``) until the program books it.

Where things go (the profile's slices): diagnoses (11535-2), course in the program (8648-8),
allergies (48765-2, with an ``emptyReason`` when none are recorded), discharge medications
(10183-2), plan of treatment (18776-5: the relapse-prevention plan first, the other active
CarePlans, open referrals with their Tasks, the follow-up Appointments), discharge
instructions (8653-8: warning signs, coping strategies, crisis resources, program contact),
goals (61146-7) and the support network (29762-2: RelatedPersons, CareTeams).

A discharge needs a relapse-prevention plan (an active CarePlan of plan type
``relapse-prevention-plan``): without one it is refused with 422 and nothing changes.
"""
from __future__ import annotations

import calendar
import html
import re
import uuid
from datetime import date, datetime, timedelta, timezone

from ..config import Settings
from ..model.datatypes import cc_text, person_name
from ..model.errors import BadRequest, Gone, NotFound, Unprocessable
from ..store.repository import Tx
from .document import (CONFIDENTIALITY_SYSTEM, XHTML_NS, assemble, confidentiality_label,
                       confidentiality_of)

LOINC = "http://loinc.org"
PROFILE = "http://fhirgw.dev/fhir/StructureDefinition/iop-discharge-summary"
PLAN_TYPE = "http://fhirgw.dev/fhir/CodeSystem/iop-plan-type"
RELAPSE = "http://fhirgw.dev/fhir/CodeSystem/iop-relapse-prevention"
TELEHEALTH = "http://fhirgw.dev/fhir/StructureDefinition/iop-telehealth"
EMPTY_REASON = "http://terminology.hl7.org/CodeSystem/list-empty-reason"

CADENCES = {"weekly": "every week", "biweekly": "every 2 weeks", "monthly": "every month"}
DEFAULT_FOLLOW_UP_COUNT = 4
MAX_FOLLOW_UPS = 52
FOLLOW_UP_TIME = "17:00:00"          # UTC: 9-10 am Pacific, noon-1 pm Eastern
FOLLOW_UP_MINUTES = 30
#: statuses an episode may be discharged from
DISCHARGEABLE = ("active", "onhold")

SECTIONS = {
    "diagnoses": ("11535-2", "Hospital discharge Dx Narrative", "Discharge diagnoses"),
    "course": ("8648-8", "Hospital course Narrative", "Course in the program"),
    "allergies": ("48765-2", "Allergies and adverse reactions Document", "Allergies"),
    "medications": ("10183-2", "Hospital discharge medications Narrative",
                    "Discharge medications"),
    "plan": ("18776-5", "Plan of care note", "Plan of treatment"),
    "instructions": ("8653-8", "Hospital Discharge instructions", "Discharge instructions"),
    "goals": ("61146-7", "Goals Narrative", "Goals"),
    "social": ("29762-2", "Social history Narrative", "Support network"),
}
SCORES = [("44261-6", "PHQ-9 (depression)"), ("70274-6", "GAD-7 (anxiety)")]


# ---------------------------------------------------------------- parameters

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_parameters(params: dict | None) -> tuple[date, str | None, int]:
    """(discharge date, cadence or None, follow-up count) from a Parameters body."""
    return _parse(params)[:3]


def _parse(params: dict | None) -> tuple[date, str | None, int, str]:
    """parse_parameters, plus the FHIRPath of the date parameter (for later errors)."""
    date_at = "Parameters.parameter.where(name = 'date').valueDate"
    when: date | None = None
    cadence: str | None = None
    count: int | None = None
    if params is None:
        params = {"resourceType": "Parameters"}
    if not isinstance(params, dict) or params.get("resourceType") != "Parameters":
        raise BadRequest("$discharge takes a Parameters resource (or no body)",
                         expression="Parameters", code="structure")
    items = params.get("parameter", [])
    if not isinstance(items, list):
        raise BadRequest("Parameters.parameter must be a list", expression="Parameters.parameter",
                         code="structure")
    seen: set[str] = set()
    for i, p in enumerate(items):
        where = f"Parameters.parameter[{i}]"
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            raise BadRequest(f"{where} needs a name", expression=f"{where}.name",
                             code="structure")
        name = p["name"]
        if name in seen:
            raise BadRequest(f"The parameter {name!r} is given more than once",
                             expression=f"{where}.name")
        seen.add(name)
        if name == "date":
            value = p.get("valueDate")
            try:
                if not isinstance(value, str) or not _DATE_RE.match(value):
                    raise ValueError
                when = date.fromisoformat(value)
                date_at = f"{where}.valueDate"
            except ValueError:
                raise BadRequest(f"date must be a valueDate such as 2026-02-27, got "
                                 f"{_shown(p, 'valueDate')}",
                                 expression=f"{where}.valueDate") from None
        elif name == "followUpCadence":
            value = p.get("valueCode")
            if value not in CADENCES:
                raise BadRequest(f"followUpCadence must be a valueCode of "
                                 f"{' | '.join(CADENCES)}, got {_shown(p, 'valueCode')}",
                                 expression=f"{where}.valueCode")
            cadence = value
        elif name == "followUpCount":
            value = p.get("valueInteger")
            if type(value) is not int or not 0 <= value <= MAX_FOLLOW_UPS:
                raise BadRequest(f"followUpCount must be a valueInteger from 0 to "
                                 f"{MAX_FOLLOW_UPS}, got {_shown(p, 'valueInteger')}",
                                 expression=f"{where}.valueInteger")
            count = value
        else:
            raise BadRequest(f"Unknown parameter {name!r}; $discharge takes date, "
                             "followUpCadence and followUpCount", expression=f"{where}.name")
    when = when or datetime.now(timezone.utc).date()
    if count is None:
        count = DEFAULT_FOLLOW_UP_COUNT if cadence else 0
    return when, (cadence or ("weekly" if count else None)), count, date_at


def _shown(p: dict, key: str) -> str:
    values = {k: v for k, v in p.items() if k.startswith("value")}
    if not values:
        return "no value"
    if key in values:
        return repr(values[key])
    return ", ".join(f"{k}={v!r}" for k, v in values.items())


def follow_up_dates(start: date, cadence: str, count: int) -> list[date]:
    out = []
    for k in range(1, count + 1):
        if cadence == "weekly":
            out.append(start + timedelta(days=7 * k))
        elif cadence == "biweekly":
            out.append(start + timedelta(days=14 * k))
        else:
            month = start.month - 1 + k
            year, month = start.year + month // 12, month % 12 + 1
            day = min(start.day, calendar.monthrange(year, month)[1])
            out.append(date(year, month, day))
    return out


# ---------------------------------------------------------------- small helpers

def _ref_key(ref: str | None) -> str | None:
    """``Type/id`` of a local reference (relative, versioned or absolute)."""
    if not isinstance(ref, str):
        return None
    parts = ref.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2][:1].isupper():
        return f"{parts[-2]}/{parts[-1]}"
    return None


def has_coding(cc: dict | None, system: str, code: str) -> bool:
    return any(c.get("system") == system and c.get("code") == code
               for c in (cc or {}).get("coding") or ())


def _quantity(q: dict | None) -> str:
    if not q:
        return ""
    value = q.get("value")
    if value is None:
        return ""
    unit = q.get("unit") or q.get("code") or ""
    unit = "" if unit.startswith("{") else unit
    return f"{q.get('comparator', '')}{value:g} {unit}".strip() if isinstance(value, float) \
        else f"{q.get('comparator', '')}{value} {unit}".strip()


def _day(value: str | None) -> str:
    return (value or "")[:10]


class Resolver:
    """Reads referenced resources once, inside the unit of work; None when unresolvable."""

    def __init__(self, tx: Tx):
        self.tx = tx
        self.cache: dict[str, dict | None] = {}

    def get(self, ref: dict | str | None) -> dict | None:
        key = _ref_key(ref.get("reference") if isinstance(ref, dict) else ref)
        if key is None:
            return None
        if key not in self.cache:
            rtype, rid = key.split("/", 1)
            try:
                self.cache[key] = self.tx.read(rtype, rid).resource()
            except (NotFound, Gone):
                self.cache[key] = None
        return self.cache[key]

    def label(self, ref: dict | None) -> str:
        if not ref:
            return ""
        if ref.get("display"):
            return ref["display"]
        target = self.get(ref)
        if target:
            return (person_name(target) or target.get("title") or cc_text(target.get("code"))
                    or ref.get("reference", ""))
        return ref.get("reference", "")


# ---------------------------------------------------------------- XHTML

def _x(text: object) -> str:
    return html.escape(str(text), quote=False)


def div(*parts: str) -> str:
    body = "".join(p for p in parts if p)
    return f'<div xmlns="{XHTML_NS}">{body}</div>'


def para(text: str) -> str:
    return f"<p>{_x(text)}</p>"


def heading(text: str) -> str:
    return f"<h3>{_x(text)}</h3>"


def table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_x(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_x(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def bullets(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{_x(i)}</li>" for i in items) + "</ul>" if items else ""


def section(key: str, narrative: str, entries: list[str] | None = None,
            empty: str | None = None) -> dict:
    code, display, title = SECTIONS[key]
    out: dict = {"title": title,
                 "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
                 "text": {"status": "generated", "div": narrative}}
    refs = list(dict.fromkeys(entries or ()))
    if refs:
        out["entry"] = [{"reference": r} for r in refs]
    elif empty:
        out["emptyReason"] = {"coding": [{"system": EMPTY_REASON, "code": empty,
                                          "display": {"nilknown": "Nil Known",
                                                      "unavailable": "Unavailable"}.get(empty,
                                                                                        empty)}]}
    return out


# ---------------------------------------------------------------- the operation

def discharge(tx: Tx, episode_id: str, params: dict | None, *, base: str,
              settings: Settings) -> dict:
    when, cadence, count, date_at = _parse(params)
    tx.lock(f"EpisodeOfCare/{episode_id}")
    stored = tx.read("EpisodeOfCare", episode_id)
    episode = stored.resource()
    status = episode.get("status")
    if status not in DISCHARGEABLE:
        hint = {"finished": "it was already discharged",
                "cancelled": "it was cancelled",
                "entered-in-error": "it was entered in error",
                "planned": "the client has not started the program; cancel the episode "
                           "instead",
                "waitlist": "the client has not started the program; cancel the episode "
                            "instead"}.get(str(status), "")
        raise Unprocessable(f"EpisodeOfCare/{episode_id} is {status!r} and cannot be "
                            f"discharged" + (f": {hint}" if hint else "")
                            + f" (discharge needs status {' or '.join(DISCHARGEABLE)})",
                            expression="EpisodeOfCare.status")
    patient_key = _ref_key((episode.get("patient") or {}).get("reference"))
    if patient_key is None or not patient_key.startswith("Patient/"):
        raise Unprocessable(f"EpisodeOfCare/{episode_id} has no local patient reference",
                            expression="EpisodeOfCare.patient")
    period = dict(episode.get("period") or {})
    admitted = _day(period.get("start"))
    if admitted and _DATE_RE.match(admitted) and when < date.fromisoformat(admitted):
        raise Unprocessable(f"The discharge date {when.isoformat()} is before the admission "
                            f"date {admitted}", expression=date_at)

    ctx = _Context(tx, episode_id, episode, patient_key, when, base, settings)
    ctx.collect()
    if not ctx.relapse_plans:
        raise Unprocessable(
            f"{patient_key} has no active relapse-prevention plan (a CarePlan with category "
            f"{PLAN_TYPE}#relapse-prevention-plan); the discharge summary must include one",
            expression="EpisodeOfCare.patient")

    # 1. finish the episode
    history = list(episode.get("statusHistory") or ())
    last_end = _day((history[-1].get("period") or {}).get("end")) if history else ""
    history.append({"status": status,
                    "period": {k: v for k, v in (("start", last_end or admitted),
                                                 ("end", when.isoformat())) if v}})
    period["end"] = when.isoformat()
    episode.update(status="finished", period=period, statusHistory=history)
    episode_after = tx.update("EpisodeOfCare", episode_id, episode,
                              if_match=stored.version).stored.resource()
    ctx.resolver.cache[f"EpisodeOfCare/{episode_id}"] = episode_after
    ctx.episode = episode_after

    # 2. the follow-up appointments
    if cadence and count:
        for i, day in enumerate(follow_up_dates(when, cadence, count), start=1):
            body = ctx.follow_up(day, i, count, cadence)
            created = tx.create("Appointment", body).stored
            ctx.follow_ups.append((f"Appointment/{created.res_id}", created.resource()))

    # 3. the Composition
    composition = ctx.composition()
    comp = tx.create("Composition", composition).stored

    # 4. the document, stored as issued
    document = assemble(tx, comp.resource(), comp.res_id, base=base)
    return tx.create("Bundle", document).stored.resource()


class _Context:
    """What the discharge summary is made of, read once inside the unit of work."""

    def __init__(self, tx: Tx, episode_id: str, episode: dict, patient_key: str, when: date,
                 base: str, settings: Settings):
        self.tx = tx
        self.episode_id = episode_id
        self.episode = episode
        self.patient = patient_key
        self.when = when
        self.base = base
        self.settings = settings
        self.resolver = Resolver(tx)
        self.follow_ups: list[tuple[str, dict]] = []

    def _search(self, rtype: str, items: list[tuple[str, str]]) -> list[tuple[str, dict]]:
        found = [(f"{rtype}/{s.res_id}", s.resource()) for s in self.tx.search(rtype, items)]
        for key, body in found:
            self.resolver.cache[key] = body
        return found

    def collect(self) -> None:
        p = self.patient
        # diagnoses: the episode's ranked ones first, then the other active conditions
        conditions = self._search("Condition", [("patient", p),
                                                ("clinical-status", "active,recurrence,relapse")])
        rank: dict[str, int] = {}
        for d in self.episode.get("diagnosis") or ():
            key = _ref_key((d.get("condition") or {}).get("reference"))
            if key:
                rank.setdefault(key, d.get("rank", 99))
        self.conditions = sorted(conditions, key=lambda kv: (rank.get(kv[0], 100),
                                                             kv[1].get("recordedDate") or ""))
        self.med_requests = self._search("MedicationRequest", [("patient", p),
                                                               ("status", "active,on-hold")])
        self.med_statements = self._search("MedicationStatement",
                                           [("subject", p), ("status", "active,intended")])
        self.allergies = [(k, b) for k, b in self._search("AllergyIntolerance", [("patient", p)])
                          if b.get("verificationStatus") is None
                          or not has_coding(b.get("verificationStatus"),
                                            "http://terminology.hl7.org/CodeSystem/"
                                            "allergyintolerance-verification",
                                            "entered-in-error")
                          and not has_coding(b.get("verificationStatus"),
                                             "http://terminology.hl7.org/CodeSystem/"
                                             "allergyintolerance-verification", "refuted")]
        self.allergies = [(k, b) for k, b in self.allergies
                          if not has_coding(b.get("clinicalStatus"),
                                            "http://terminology.hl7.org/CodeSystem/"
                                            "allergyintolerance-clinical", "resolved")]
        plans = self._search("CarePlan", [("subject", p), ("status", "active,on-hold")])
        self.relapse_plans = [(k, b) for k, b in plans if any(
            has_coding(c, PLAN_TYPE, "relapse-prevention-plan") for c in b.get("category") or ())]
        self.other_plans = [(k, b) for k, b in plans if (k, b) not in self.relapse_plans]
        self.goals = [(k, b) for k, b in self._search("Goal", [("subject", p)])
                      if b.get("lifecycleStatus") not in ("entered-in-error", "rejected",
                                                          "cancelled")]
        self.referrals = []
        for key, sr in self._search("ServiceRequest", [("subject", p), ("status", "active")]):
            tasks = self._search("Task", [("focus", key)])
            self.referrals.append((key, sr, tasks))
        self.related = [(k, b) for k, b in self._search("RelatedPerson", [("patient", p)])
                        if b.get("active", True)]
        self.teams = self._search("CareTeam", [("subject", p), ("status", "active")])
        for d in self.episode.get("team") or ():   # the episode's team even if not "active"
            key = _ref_key(d.get("reference"))
            body = self.resolver.get(d)
            if key and body and key not in {k for k, _ in self.teams} \
                    and body.get("status") not in ("inactive", "entered-in-error"):
                self.teams.append((key, body))
        self.encounters = self._search("Encounter", [("episode-of-care",
                                                      f"EpisodeOfCare/{self.episode_id}")])
        self.scores = []
        for code, label in SCORES:
            obs = [(k, b) for k, b in self._search("Observation", [
                ("subject", p), ("code", f"{LOINC}|{code}")])
                if b.get("status") in ("final", "amended", "corrected")]
            obs.sort(key=lambda kv: kv[1].get("effectiveDateTime")
                     or (kv[1].get("effectivePeriod") or {}).get("start") or "")
            if obs:
                self.scores.append((label, obs))

    # ------------------------------------------------------------ follow-ups

    def follow_up(self, day: date, i: int, count: int, cadence: str) -> dict:
        start = datetime.fromisoformat(f"{day.isoformat()}T{FOLLOW_UP_TIME}+00:00")
        end = start + timedelta(minutes=FOLLOW_UP_MINUTES)
        participants = [{"actor": {"reference": self.patient}, "required": "required",
                         "status": "needs-action"}]
        manager = (self.episode.get("careManager") or {}).get("reference")
        if manager:
            participants.append({"actor": {"reference": manager}, "required": "required",
                                 "status": "needs-action"})
        return {
            "resourceType": "Appointment",
            "extension": [{"url": TELEHEALTH, "valueCoding": {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR",
                "display": "virtual"}}],
            "status": "proposed",
            "serviceType": [{"coding": [{"system": "http://snomed.info/sct",
                                         "code": "390906007",
                                         "display": "Follow-up encounter"}],
                             "text": "Post-discharge follow-up"}],
            "appointmentType": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v2-0276", "code": "FOLLOWUP",
                "display": "A follow up visit from a previous appointment"}]},
            "description": f"IOP post-discharge follow-up {i} of {count} "
                           f"({CADENCES[cadence]} from discharge on {self.when.isoformat()})",
            "supportingInformation": [{"reference": f"EpisodeOfCare/{self.episode_id}"}],
            "start": start.isoformat().replace("+00:00", "Z"),
            "end": end.isoformat().replace("+00:00", "Z"),
            "minutesDuration": FOLLOW_UP_MINUTES,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")
            .replace("+00:00", "Z"),
            "requestedPeriod": [{"start": day.isoformat(), "end": day.isoformat()}],
            "participant": participants,
        }

    # ------------------------------------------------------------ the Composition

    def composition(self) -> dict:
        sections = [self.s_diagnoses(), self.s_course(), self.s_allergies(),
                    self.s_medications(), self.s_plan(), self.s_instructions()]
        if self.goals:
            sections.append(self.s_goals())
        sections.append(self.s_social())

        episode = self.episode
        author = (episode.get("careManager") or {}).get("reference") \
            or (episode.get("managingOrganization") or {}).get("reference")
        entry_bodies = [self.resolver.get(e["reference"]) or {}
                        for s in sections for e in s.get("entry") or ()]
        level = confidentiality_of(entry_bodies) or "N"
        # the narrative repeats its entries' content, so it carries their labels
        security = [confidentiality_label(level)]
        for body in entry_bodies:
            for label in (body.get("meta") or {}).get("security") or ():
                if label.get("system") != CONFIDENTIALITY_SYSTEM and not any(
                        s.get("system") == label.get("system")
                        and s.get("code") == label.get("code") for s in security):
                    security.append({k: label[k] for k in ("system", "code", "display")
                                     if k in label})
        client = person_name(self.resolver.get(self.patient)) or self.patient
        period = {k: v for k, v in (episode.get("period") or {}).items() if k in ("start", "end")}
        comp: dict = {
            "resourceType": "Composition",
            "meta": {"profile": [PROFILE], "security": security},
            "text": {"status": "generated", "div": div(
                f"<p><b>IOP discharge summary</b> for {_x(client)}</p>",
                para(f"Program {self.program()}; admitted {_day(period.get('start'))}, "
                     f"discharged {self.when.isoformat()}."))},
            "identifier": {"system": self.settings.identifier_system,
                           "value": str(uuid.uuid4())},
            "status": "final",
            "type": {"coding": [{"system": LOINC, "code": "18842-5",
                                 "display": "Discharge summary"}],
                     "text": "IOP discharge summary"},
            "category": [{"coding": [{"system": LOINC, "code": "78263-1",
                                      "display": "Mental health Discharge summary note"}]}],
            "subject": {"reference": self.patient, "display": client},
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")
            .replace("+00:00", "Z"),
            "author": [{"reference": author}] if author else [],
            "title": "IOP discharge summary",
            "confidentiality": level,
            "event": [{"code": episode.get("type") or [],
                       "period": period,
                       "detail": [{"reference": f"EpisodeOfCare/{self.episode_id}"}]}],
            "section": sections,
        }
        if not comp["event"][0]["code"]:
            del comp["event"][0]["code"]
        if not comp["author"]:
            raise Unprocessable(f"EpisodeOfCare/{self.episode_id} names neither a care "
                                "manager nor a managing organization to author the summary",
                                expression="EpisodeOfCare.careManager")
        encounter = self.last_encounter()
        org = (episode.get("managingOrganization") or {}).get("reference")
        ordered: dict = {}
        for k, v in comp.items():     # FHIR's element order, for people reading the JSON
            ordered[k] = v
            if k == "subject" and encounter:
                ordered["encounter"] = {"reference": encounter}
            if k == "confidentiality" and org:
                ordered["custodian"] = {"reference": org}
        comp = ordered
        return comp

    def program(self) -> str:
        return ", ".join(cc_text(t) for t in self.episode.get("type") or () if cc_text(t)) \
            or "intensive outpatient program"

    def last_encounter(self) -> str | None:
        def start(kv):
            per = kv[1].get("period") or {}
            return per.get("start") or per.get("end") or ""
        usable = [kv for kv in self.encounters
                  if kv[1].get("status") not in ("entered-in-error", "cancelled")]
        return max(usable, key=start)[0] if usable else None

    # ------------------------------------------------------------ sections

    def s_diagnoses(self) -> dict:
        rows = []
        for _key, c in self.conditions:
            codes = [x.get("code") for x in (c.get("code") or {}).get("coding") or ()
                     if x.get("code")]
            rows.append([codes[0] if codes else "", cc_text(c.get("code")),
                         cc_text(c.get("clinicalStatus")) or "active",
                         _day(c.get("onsetDateTime") or c.get("recordedDate"))])
        narrative = div(table(["Code", "Diagnosis", "Status", "Since"], rows)) if rows else \
            div(para("No active diagnoses are recorded."))
        return section("diagnoses", narrative, [k for k, _ in self.conditions], "nilknown")

    def s_course(self) -> dict:
        period = self.episode.get("period") or {}
        start = _day(period.get("start"))
        lines = [f"Program: {self.program()}."]
        if start and _DATE_RE.match(start):
            days = (self.when - date.fromisoformat(start)).days
            lines.append(f"Admitted {start}; discharged {self.when.isoformat()} "
                         f"({days} days in the program).")
        manager = (self.episode.get("careManager") or {})
        if manager:
            lines.append(f"Care manager: {self.resolver.label(manager)}.")
        attended = [b for _, b in self.encounters if b.get("status") == "finished"]
        if attended:
            lines.append(f"Sessions attended: {len(attended)}.")
        entries = []
        rows = []
        for label, obs in self.scores:
            first, last = obs[0], obs[-1]
            rows.append([label, f"{_obs_value(first[1])} ({_obs_day(first[1])})",
                         f"{_obs_value(last[1])} ({_obs_day(last[1])})" if len(obs) > 1
                         else "", str(len(obs))])
            entries += [first[0], last[0]]
        narrative = div(*(para(l) for l in lines),
                        table(["Measure", "First", "Latest", "Measurements"], rows)
                        if rows else "")
        return section("course", narrative, entries)

    def s_allergies(self) -> dict:
        rows = []
        for _key, a in self.allergies:
            reactions = "; ".join(cc_text(m) for r in a.get("reaction") or ()
                                  for m in r.get("manifestation") or ())
            rows.append([cc_text(a.get("code")) or "Unspecified", a.get("criticality", ""),
                         reactions])
        narrative = div(table(["Substance", "Criticality", "Reaction"], rows)) if rows else \
            div(para("No allergies or adverse reactions are recorded for this client."))
        return section("allergies", narrative, [k for k, _ in self.allergies], "nilknown")

    def _medication(self, body: dict) -> str:
        if body.get("medicationCodeableConcept"):
            return cc_text(body["medicationCodeableConcept"])
        ref = body.get("medicationReference")
        if ref:
            med = self.resolver.get(ref)
            return ref.get("display") or cc_text((med or {}).get("code")) \
                or ref.get("reference", "")
        return ""

    def s_medications(self) -> dict:
        rows = []
        for _key, m in self.med_requests:
            dose = "; ".join(d.get("text", "") for d in m.get("dosageInstruction") or ()
                             if d.get("text"))
            rows.append([self._medication(m), dose, "Prescribed",
                         self.resolver.label(m.get("requester")), m.get("status", "")])
        for _key, m in self.med_statements:
            dose = "; ".join(d.get("text", "") for d in m.get("dosage") or () if d.get("text"))
            rows.append([self._medication(m), dose, "Reported",
                         self.resolver.label(m.get("informationSource")), m.get("status", "")])
        narrative = div(table(["Medication", "Instructions", "Kind", "Prescriber / source",
                               "Status"], rows)) if rows else \
            div(para("No medications at discharge."))
        return section("medications", narrative,
                       [k for k, _ in self.med_requests + self.med_statements], "nilknown")

    def s_plan(self) -> dict:
        parts = []
        entries: list[str] = []
        for key, plan in self.relapse_plans:
            parts.append(heading(plan.get("title") or "Relapse-prevention plan"))
            groups: dict[str, list[str]] = {}
            for act in plan.get("activity") or ():
                detail = act.get("detail") or {}
                kind = cc_text(detail.get("code")) or "Other"
                for c in (detail.get("code") or {}).get("coding") or ():
                    if c.get("system") == RELAPSE:
                        kind = _RELAPSE_LABEL.get(c.get("code"), kind)
                text = detail.get("description") or ", ".join(
                    self.resolver.label(p) for p in detail.get("performer") or ())
                groups.setdefault(kind, []).append(text)
            parts.append(table(["Part of the plan", "Details"],
                               [[k, "; ".join(v)] for k, v in groups.items()]))
            entries.append(key)
        if self.other_plans:
            parts.append(heading("Care plans"))
            rows = []
            for key, plan in self.other_plans:
                acts = [cc_text((a.get("detail") or {}).get("code"))
                        for a in plan.get("activity") or ()]
                per = plan.get("period") or {}
                rows.append([plan.get("title") or "Care plan", plan.get("status", ""),
                             " to ".join(x for x in (_day(per.get("start")),
                                                     _day(per.get("end"))) if x),
                             ", ".join(a for a in acts if a)])
                entries.append(key)
            parts.append(table(["Plan", "Status", "Period", "Activities"], rows))
        if self.referrals:
            parts.append(heading("Referrals"))
            rows = []
            for key, sr, tasks in self.referrals:
                to = ", ".join(self.resolver.label(p) for p in sr.get("performer") or ())
                task_text = "; ".join(
                    f"{t.get('status', '')}"
                    + (f" ({self.resolver.label(t['owner'])})" if t.get("owner") else "")
                    for _, t in tasks) or "no task"
                rows.append([cc_text(sr.get("code")) or "Referral", to, task_text,
                             _day(sr.get("authoredOn"))])
                entries.append(key)
                entries.extend(k for k, _ in tasks)
            parts.append(table(["Service", "Referred to", "Status", "Requested"], rows))
        if self.follow_ups:
            parts.append(heading("Follow-up appointments"))
            rows = [[a["requestedPeriod"][0]["start"], f"{a['minutesDuration']} min",
                     cc_text(a["serviceType"][0]), a["status"]] for _, a in self.follow_ups]
            parts.append(table(["Date", "Length", "Service", "Status"], rows))
            entries.extend(k for k, _ in self.follow_ups)
        return section("plan", div(*parts), entries)

    def s_instructions(self) -> dict:
        groups: dict[str, list[str]] = {"warning-sign": [], "coping-strategy": [],
                                        "crisis-resource": []}
        for _key, plan in self.relapse_plans:
            for act in plan.get("activity") or ():
                detail = act.get("detail") or {}
                for code in groups:
                    if has_coding(detail.get("code"), RELAPSE, code) and detail.get("description"):
                        groups[code].append(detail["description"])
        parts = []
        if groups["crisis-resource"]:
            parts += [heading("In a crisis"), bullets(groups["crisis-resource"])]
        else:
            parts += [heading("In a crisis"),
                      para("Call or text 988 (Suicide & Crisis Lifeline); in an emergency "
                           "call 911.")]
        if groups["warning-sign"]:
            parts += [heading("Warning signs to watch for"), bullets(groups["warning-sign"])]
        if groups["coping-strategy"]:
            parts += [heading("What helps"), bullets(groups["coping-strategy"])]
        org = self.resolver.get(self.episode.get("managingOrganization"))
        phones = [t.get("value") for t in (org or {}).get("telecom") or ()
                  if t.get("system") == "phone" and t.get("value")]
        if org:
            parts += [heading("Program contact"),
                      para(f"{org.get('name') or 'The program'}"
                           + (f": {', '.join(phones)}" if phones else ""))]
        if self.follow_ups:
            parts.append(para(f"{len(self.follow_ups)} follow-up appointments are proposed, "
                              f"the first on {self.follow_ups[0][1]['requestedPeriod'][0]['start']};"
                              " the program will confirm the times."))
        return section("instructions", div(*parts))

    def s_goals(self) -> dict:
        rows = []
        for _key, g in self.goals:
            targets = []
            for t in g.get("target") or ():
                detail = _quantity(t.get("detailQuantity")) or t.get("detailString") or ""
                due = t.get("dueDate") or ""
                targets.append(" ".join(x for x in (cc_text(t.get("measure")), detail,
                                                     f"by {due}" if due else "") if x))
            rows.append([cc_text(g.get("description")), "; ".join(targets),
                         g.get("lifecycleStatus", ""),
                         cc_text(g.get("achievementStatus")) or "not assessed"])
        return section("goals", div(table(["Goal", "Target", "Status", "Achievement"], rows)),
                       [k for k, _ in self.goals])

    def s_social(self) -> dict:
        parts = []
        if self.related:
            rows = []
            for _key, r in self.related:
                rel = ", ".join(cc_text(x) for x in r.get("relationship") or () if cc_text(x))
                phone = ", ".join(t.get("value", "") for t in r.get("telecom") or ()
                                  if t.get("value"))
                rows.append([person_name(r), rel, phone])
            parts += [heading("Support contacts"),
                      table(["Name", "Relationship", "Contact"], rows)]
        for _key, team in self.teams:
            rows = []
            for p in team.get("participant") or ():
                role = ", ".join(cc_text(r) for r in p.get("role") or () if cc_text(r))
                rows.append([self.resolver.label(p.get("member")), role])
            parts += [heading(team.get("name") or "Care team"),
                      table(["Member", "Role"], rows)]
        if not parts:
            parts = [para("No support contacts or care team are recorded.")]
        return section("social", div(*parts),
                       [k for k, _ in self.related + self.teams], "nilknown")


_RELAPSE_LABEL = {"trigger": "Triggers", "warning-sign": "Warning signs",
                  "coping-strategy": "Coping strategies", "crisis-resource": "Crisis resources",
                  "support-contact": "Support contacts"}


def _obs_value(obs: dict) -> str:
    if "valueQuantity" in obs:
        return _quantity(obs["valueQuantity"])
    if "valueInteger" in obs:
        return str(obs["valueInteger"])
    if "valueString" in obs:
        return obs["valueString"]
    if "valueCodeableConcept" in obs:
        return cc_text(obs["valueCodeableConcept"])
    return ""


def _obs_day(obs: dict) -> str:
    return _day(obs.get("effectiveDateTime") or (obs.get("effectivePeriod") or {}).get("start")
                or obs.get("issued"))
