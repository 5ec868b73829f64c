"""Disclosure: what of a client's record may leave the program, and how the Bundle says so.

Every disclosure (a delivery to a partner, ``$document``, ``$medication-handoff``) makes
one ``Disclosure(tx, recipient, purpose)`` and passes what it would send through it:

* ``permits(body)``: a resource that needs a 42 CFR Part 2 consent (``consent.
  needs_consent``: labelled 42CFRPart2, SUD, ETH or NODSCLCD) goes out only when the
  client's Consents permit that recipient (an ``Organization/x``) and purpose (v3-ActReason,
  ``TREAT`` by default); see ``security.consent`` for the rules. Everything else goes out.
  ``recipient=None`` is use within the program (not a disclosure): everything goes out.
  Several recipients (one endpoint serving several Organizations) must all be permitted.
* ``filter(bodies)``: the resources that may go out, in order. The others are *withheld*
  (``withheld`` counts them, ``withheld_refs`` holds their ``Type/id``). So that what goes
  out does not point at (or, through a reference's ``display``, describe) what is withheld:

  - references in what is kept to a withheld resource are removed (``redact_references``):
    the Reference element goes, then any list or element left empty; an element that
    needs the removed one (minimum cardinality 1 in R4, e.g. ``Encounter.diagnosis.
    condition``) goes with it, and a resource that needs it at its top level is withheld
    too (repeated until nothing changes). A resource that lost a reference also loses its
    narrative (``text``), which may describe what was withheld;
  - local references to resources outside ``bodies`` that could carry Part 2 labels (the
    types ``labels.CODE_PATHS`` labels) are read and, if the recipient may not see them,
    removed the same way (a MedicationRequest's ``reasonReference`` to an opioid-use
    disorder Condition).

  ``disclosed_part2`` says whether Part 2 data goes out. ``screen(bodies)`` is the same,
  position by position (None where a resource is withheld).
* ``document(bundle)`` and ``message(bundle)``: the same for a whole document or message
  Bundle, then ``finish_bundle``. ``NothingToDisclose`` when what the Bundle is for cannot
  go out (the MessageHeader's focus, a Composition that cannot be redacted).
* ``finish_bundle(bundle)``: ``Bundle.meta.security`` gets only the high-water mark
  v3-Confidentiality of what is in it and, when Part 2 data goes out, the refrain
  ``NORDSCLCD``; sensitivity tags (SUD, ETH, PSY, BH, 42CFRPart2) are never copied to the
  Bundle, they would reveal what it holds. ``Bundle.meta.extension`` carries the 42 CFR
  2.32 notice (``REDISCLOSURE_EXTENSION``) when Part 2 data goes out, and
  ``WITHHELD_EXTENSION`` when something was withheld: one fixed sentence, no counts, types
  or codes.

Documents (R4: a section's narrative is derived from its entries). When anything was
withheld from a document sent to a recipient, the withheld entries leave ``section.entry``
and *every* section with entries gets a narrative generated from the entries it keeps (all
of them, so the document does not show which section lost something); sections without
entries keep theirs. The Composition gets an "Information withheld" section and, when Part
2 data goes out, a "Notice of redisclosure" section. A Composition labelled for Part 2 (it
carries its entries' labels because its narrative repeats them) is sent redacted that way
without its Part 2 labels, when the withheld entries explain those labels; when they do
not (its own codes are substance-use codes, or nothing Part 2 was withheld from it),
nothing of the document can be disclosed. Use within the program (no recipient) keeps the
document as it is; only the Bundle's meta is set.
"""
from __future__ import annotations

import functools
import html
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone

from ..model.datatypes import cc_text, person_name
from ..model.errors import FhirError
from .consent import Consents, needs_consent
from .labels import ACT_CODE, CODE_PATHS, CONFIDENTIALITY, CONFIDENTIALITY_ORDER, label

WITHHELD_EXTENSION = "http://fhirgw.dev/fhir/StructureDefinition/information-withheld"
REDISCLOSURE_EXTENSION = "http://fhirgw.dev/fhir/StructureDefinition/redisclosure-notice"
#: says that something was withheld, not what (no counts, types or codes)
WITHHELD_TEXT = ("Some information was withheld: the client's consent does not permit its "
                 "disclosure to this recipient.")
#: the abbreviated notice of 42 CFR 2.32(a)(2)
REDISCLOSURE_TEXT = "42 CFR part 2 prohibits unauthorized use or disclosure of these records."
#: why an operation or a delivery has nothing to send (reveals nothing either)
NOTHING_TEXT = "nothing can be disclosed to this recipient without the client's consent"
#: labels a redacted Composition loses: the content that called for them is gone
PART2_ONLY = frozenset({"SUD", "ETH", "NODSCLCD", "NORDSCLCD", "42CFRPart2"})
XHTML_NS = "http://www.w3.org/1999/xhtml"


class NothingToDisclose(Exception):
    """What a Bundle is for cannot go out to this recipient."""

    def __init__(self, message: str = NOTHING_TEXT):
        super().__init__(message)


# ---------------------------------------------------------------- confidentiality

def confidentiality_of(resources: Iterable[dict]) -> str | None:
    """The most restrictive v3-Confidentiality code among the resources' meta.security."""
    best = None
    for body in resources:
        for item in ((body.get("meta") or {}).get("security") or ()):
            if item.get("system") == CONFIDENTIALITY and item.get("code") in CONFIDENTIALITY_ORDER:
                if best is None or (CONFIDENTIALITY_ORDER.index(item["code"])
                                    > CONFIDENTIALITY_ORDER.index(best)):
                    best = item["code"]
    return best


def confidentiality_label(code: str) -> dict:
    return label(CONFIDENTIALITY, code)


# ---------------------------------------------------------------- references

def ref_of(body: dict) -> str | None:
    rtype, rid = body.get("resourceType"), body.get("id")
    return f"{rtype}/{rid}" if rtype and rid else None


def _key(ref: str) -> str | None:
    """``Type/id`` of ``Type/id``, ``Type/id/_history/n`` or an absolute URL ending in
    ``/Type/id``; None for contained, ``urn:`` and conditional references."""
    if not ref or ref.startswith(("#", "urn:")) or "?" in ref:
        return None
    parts = ref.split("/_history/")[0].rstrip("/").split("/")
    if len(parts) < 2 or not parts[-2][:1].isupper() or not parts[-1]:
        return None
    return f"{parts[-2]}/{parts[-1]}"


def _is_local(ref: str) -> bool:
    return "://" not in ref and _key(ref) is not None


def iter_references(node):
    """Every ``reference`` string below ``node``."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "reference" and isinstance(v, str):
                yield v
            elif isinstance(v, (dict, list)):
                yield from iter_references(v)
    elif isinstance(node, list):
        for v in node:
            yield from iter_references(v)


@functools.lru_cache(maxsize=64)
def _elements(type_code: str) -> dict[str, dict]:
    from ..validation.definitions import CORE_PREFIX, core

    sd = core().get("StructureDefinition", CORE_PREFIX + type_code) or {}
    return {e["path"]: e for e in (sd.get("snapshot") or {}).get("element") or ()}


@functools.lru_cache(maxsize=4096)
def min_cardinality(path: tuple[str, ...]) -> int:
    """R4's minimum cardinality of the element at ``path`` (a resource type, then JSON
    keys; list positions left out), following data types and content references. 0 when
    unknown.

    >>> min_cardinality(("Encounter", "diagnosis", "condition"))
    1
    >>> min_cardinality(("Condition", "evidence", "detail"))
    0
    """
    elements = _elements(path[0])
    prefix = path[0]
    for i, key in enumerate(path[1:], start=1):
        el = elements.get(f"{prefix}.{key}")
        if el is None:  # a choice: valueReference -> value[x]
            el = next((e for p, e in elements.items() if p.endswith("[x]") and
                       p.startswith(prefix + ".") and "." not in p[len(prefix) + 1:] and
                       key.startswith(p[len(prefix) + 1:-3]) and
                       key[len(p) - len(prefix) - 4:][:1].isupper()), None)
            if el is None:
                return 0
        if i == len(path) - 1:
            return int(el.get("min") or 0)
        if el.get("contentReference"):
            prefix = el["contentReference"].split("#", 1)[-1]
            continue
        types = [t.get("code") for t in el.get("type") or ()]
        if len(types) != 1:
            return 0
        if types[0] in ("BackboneElement", "Element"):
            prefix = el["path"]
        else:
            elements, prefix = _elements(types[0]), types[0]
            if not elements:
                return 0
    return 0


_DROP = object()


def redact_references(body: dict, withheld_refs: set[str] | frozenset[str]) -> dict | None:
    """A copy of ``body`` without its references to ``withheld_refs`` (``Type/id``):
    the Reference elements removed, then every list or element they leave empty, and every
    element that cannot be without what was removed (R4 minimum cardinality). None when
    the resource itself cannot be without it. ``body`` itself when nothing changes.

    >>> redact_references({"resourceType": "Encounter", "id": "e", "text": {"div": "x"},
    ...     "diagnosis": [{"condition": {"reference": "Condition/sud"}, "rank": 1},
    ...                   {"condition": {"reference": "Condition/mdd"}}]}, {"Condition/sud"})
    {'resourceType': 'Encounter', 'id': 'e', 'diagnosis': [{'condition': {'reference': 'Condition/mdd'}}]}
    """
    if not withheld_refs:
        return body
    changed = [False]

    def hit(node) -> bool:
        ref = node.get("reference") if isinstance(node, dict) else None
        return isinstance(ref, str) and _key(ref) in withheld_refs

    def walk(node, path: tuple[str, ...]):
        """The redacted node, or _DROP when it must go."""
        if isinstance(node, list):
            out = []
            for item in node:
                if hit(item):
                    changed[0] = True
                    continue
                value = walk(item, path)
                if value is not _DROP:
                    out.append(value)
            return out
        if not isinstance(node, dict):
            return node
        if "resourceType" in node and path and len(path) > 1:
            path = (node["resourceType"],)      # a contained resource
        found: dict = {}
        for k, v in node.items():
            if not isinstance(v, (dict, list)):
                found[k] = v
                continue
            sub = path + (k,)
            if hit(v):
                changed[0] = True
                value = _DROP
            else:
                value = walk(v, sub)
                if value is not _DROP and not value and v:
                    value = _DROP           # emptied by the redaction
            if value is _DROP:
                if min_cardinality(sub) > 0:
                    return _DROP
                continue
            found[k] = value
        if node and set(found) <= {"url", "id"} and set(found) != set(node):
            return _DROP                        # an extension without its value, or emptied
        return found

    result = walk(body, (body.get("resourceType") or "Resource",))
    if result is _DROP:
        return None
    if not changed[0]:
        return body
    result.pop("text", None)                    # the narrative may describe what went
    return result


# ---------------------------------------------------------------- narratives

def _label_of(body: dict) -> str:
    for key in ("code", "medicationCodeableConcept", "vaccineCode", "title", "description",
                "type", "category", "serviceType", "name"):
        value = body.get(key)
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, dict):
            text = cc_text(value) if key != "name" else ""
            if text:
                return text
        elif isinstance(value, str) and value:
            return value
    return person_name(body) or body.get("resourceType") or ""


def _value_of(body: dict) -> str:
    """An Observation's value, a medication's dosage text, or ''."""
    for key, value in body.items():
        if not key.startswith("value") or key == "value":
            continue
        if isinstance(value, dict):
            if "value" in value:
                unit = value.get("unit") or value.get("code") or ""
                return f"{value.get('comparator', '')}{value['value']} {unit}".strip()
            return cc_text(value)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    for key in ("dosageInstruction", "dosage"):
        items = body.get(key)
        if isinstance(items, list) and items and isinstance(items[0], dict):
            return items[0].get("text") or ""
    return ""


def _date_of(body: dict) -> str:
    for key in ("effectiveDateTime", "onsetDateTime", "recordedDate", "authoredOn",
                "dateAsserted", "issued", "date", "start"):
        if isinstance(body.get(key), str):
            return body[key][:10]
    for key in ("period", "effectivePeriod", "executionPeriod"):
        start = (body.get(key) or {}).get("start") if isinstance(body.get(key), dict) else None
        if isinstance(start, str):
            return start[:10]
    return ""


def describe(body: dict | None) -> str:
    """A short human line for a resource (for generated section narratives): what it is,
    its value or dosage, its date.

    >>> describe({"resourceType": "Observation", "code": {"text": "PHQ-9 total score"},
    ...           "valueInteger": 8, "effectiveDateTime": "2026-02-25"})
    'PHQ-9 total score: 8 (2026-02-25)'
    """
    if not body:
        return ""
    text = _label_of(body)
    value = _value_of(body)
    if value and value != text:
        text = f"{text}: {value}"
    day = _date_of(body)
    return f"{text} ({day})" if day else text


def _div(inner: str) -> str:
    return f'<div xmlns="{XHTML_NS}">{inner}</div>'


def _para(text: str) -> str:
    return f"<p>{html.escape(text, quote=False)}</p>"


def entries_narrative(entries: list, bodies: dict[str, dict]) -> dict:
    """A generated narrative listing a section's entries."""
    items = []
    for entry in entries:
        ref = entry.get("reference") if isinstance(entry, dict) else None
        text = describe(bodies.get(_key(ref) or "")) if isinstance(ref, str) else ""
        text = text or (entry.get("display") if isinstance(entry, dict) else "") or ref or ""
        items.append(f"<li>{html.escape(str(text), quote=False)}</li>")
    inner = f"<ul>{''.join(items)}</ul>" if items else _para("No entries are included.")
    return {"status": "generated", "div": _div(inner)}


def notice_section(title: str, text: str) -> dict:
    return {"title": title, "code": {"text": title},
            "text": {"status": "generated", "div": _div(_para(text))}}


@functools.lru_cache(maxsize=1)
def _labeller():
    from .labels import SecurityLabels

    return SecurityLabels()


# ---------------------------------------------------------------- the disclosure

class Disclosure:
    """One disclosure to ``recipient`` (``Organization/x``; a sequence: several, all must
    be permitted; None: use within the program) for ``purpose`` (v3-ActReason)."""

    def __init__(self, tx, recipient: str | Sequence[str] | None, purpose: str = "TREAT",
                 *, now: datetime | None = None, read=None) -> None:
        self.tx = tx
        if recipient is None or isinstance(recipient, str):
            self.recipients: tuple[str, ...] | None = \
                None if recipient is None else (recipient,)
        else:
            self.recipients = tuple(recipient)
        self.purpose = purpose or "TREAT"
        self.now = now or datetime.now(timezone.utc)
        self.consents = Consents(tx)
        self._read = read
        self._outside: dict[str, dict | None] = {}
        #: resources withheld so far (each counted once)
        self.withheld = 0
        self.withheld_refs: set[str] = set()
        #: whether Part 2 data goes out
        self.disclosed_part2 = False

    @property
    def recipient(self) -> str | None:
        return self.recipients[0] if self.recipients else None

    @property
    def internal(self) -> bool:
        return self.recipients is None

    # ------------------------------------------------------------ resources

    def permits(self, body: dict) -> bool:
        """May ``body`` go out to the recipient?"""
        if not needs_consent(body) or self.internal:
            return True
        if not self.recipients:
            return False
        return all(self.consents.permits(body, r, self.purpose, now=self.now)
                   for r in self.recipients)

    def _withhold(self, body_or_ref) -> None:
        ref = body_or_ref if isinstance(body_or_ref, str) else ref_of(body_or_ref)
        if ref is None:
            self.withheld += 1
        elif ref not in self.withheld_refs:
            self.withheld_refs.add(ref)
            self.withheld += 1

    def read(self, ref: str) -> dict | None:
        if self._read is not None:
            return self._read(ref)
        rtype, _, rid = ref.partition("/")
        try:
            return self.tx.read(rtype, rid).resource()
        except FhirError:
            return None

    def _check_outside(self, kept: list[dict], inside: set[str]) -> None:
        """Withhold (by reference) what ``kept`` points at outside ``inside`` that the
        recipient may not see."""
        for body in kept:
            for ref in iter_references(body):
                key = _key(ref)
                if key is None or key in inside or key in self.withheld_refs or \
                        not _is_local(ref) or key.split("/")[0] not in CODE_PATHS:
                    continue
                if key not in self._outside:
                    self._outside[key] = self.read(key)
                target = self._outside[key]
                if target is not None and not self.permits(target):
                    self._withhold(key)

    def filter(self, bodies: Iterable[dict]) -> list[dict]:
        """The resources that may go out (references to withheld ones removed)."""
        return [b for b in self.screen(bodies) if b is not None]

    def screen(self, bodies: Iterable[dict]) -> list[dict | None]:
        """``filter`` position by position: each body as it may go out, or None."""
        bodies = list(bodies)
        out: list[dict | None] = []
        for body in bodies:
            if self.permits(body):
                out.append(body)
            else:
                self._withhold(body)
                out.append(None)
        if not self.internal:
            self._check_outside([b for b in out if b is not None],
                                {r for b in bodies if (r := ref_of(b))})
        again = bool(self.withheld_refs)
        while again:        # until no resource needs one withheld meanwhile
            again = False
            for i, current in enumerate(out):
                if current is None:
                    continue
                red = redact_references(current, self.withheld_refs)
                if red is None:
                    self._withhold(current)
                    again = True
                out[i] = red
        if any(needs_consent(b) for b in out if b is not None):
            self.disclosed_part2 = True
        return out

    def redact_references(self, body: dict) -> dict | None:
        return redact_references(body, self.withheld_refs)

    # ------------------------------------------------------------ Bundles

    def message(self, bundle: dict) -> dict:
        """A message Bundle as disclosed: its entries filtered, the MessageHeader's focus
        kept to what goes out. NothingToDisclose when none of the focus may go."""
        entries = [e for e in bundle.get("entry") or () if isinstance(e, dict)]
        if not entries:
            return self.finish_bundle(dict(bundle))
        header = entries[0].get("resource") or {}
        had_focus = bool(header.get("focus"))
        rest = [e for e in entries[1:] if isinstance(e.get("resource"), dict)]
        kept = self.screen(e["resource"] for e in rest)
        header = redact_references(header, self.withheld_refs)
        if header is None or (had_focus and not header.get("focus")):
            raise NothingToDisclose()
        out_entries = [{**entries[0], "resource": header}]
        out_entries += [{**e, "resource": body} for e, body in zip(rest, kept)
                        if body is not None]
        return self.finish_bundle({**bundle, "entry": out_entries})

    def document(self, bundle: dict) -> dict:
        """A document Bundle as disclosed (see the module docstring)."""
        entries = [e for e in bundle.get("entry") or () if isinstance(e, dict)]
        comp = (entries[0].get("resource") if entries else None) or {}
        if comp.get("resourceType") != "Composition":
            raise NothingToDisclose("not a document: the first entry is not a Composition")
        rest = [e for e in entries[1:] if isinstance(e.get("resource"), dict)]
        kept = self.screen(e["resource"] for e in rest)
        comp = self._composition(comp, [b for b in kept if b is not None])
        out_entries = [{**entries[0], "resource": comp}]
        out_entries += [{**e, "resource": body} for e, body in zip(rest, kept)
                        if body is not None]
        return self.finish_bundle({**bundle, "entry": out_entries})

    def _composition(self, comp: dict, kept: list[dict]) -> dict:
        if self.internal:
            if needs_consent(comp):
                self.disclosed_part2 = True
            return comp
        permitted = self.permits(comp)
        if self.withheld:
            bodies = {r: b for b in kept if (r := ref_of(b))}
            comp = {**comp, "section": _renarrate(comp.get("section") or [],
                                                  self.withheld_refs, bodies)}
        redacted = redact_references(comp, self.withheld_refs)
        if redacted is None:
            raise NothingToDisclose()
        out = redacted
        if not permitted:
            own, _level = _labeller().labels_for("Composition", out)
            if not self.withheld or PART2_ONLY & set(own):
                raise NothingToDisclose()
            meta = dict(out.get("meta") or {})
            meta["security"] = [s for s in meta.get("security") or ()
                                if not (s.get("system") == ACT_CODE and
                                        s.get("code") in PART2_ONLY)]
            if not meta["security"]:
                del meta["security"]
            out = {**out, "meta": meta} if meta else \
                {k: v for k, v in out.items() if k != "meta"}
        elif needs_consent(out):
            self.disclosed_part2 = True
        return out

    def finish_bundle(self, bundle: dict) -> dict:
        """``bundle`` (a copy) with its meta set for this disclosure: the high-water mark
        confidentiality of its entries, NORDSCLCD and the redisclosure notice when Part 2
        data goes out, the information-withheld notice when something was withheld. For a
        document sent to a recipient, the Composition also gets the notices as sections
        (and loses its entries to withheld resources)."""
        out = dict(bundle)
        entries = [e for e in out.get("entry") or () if isinstance(e, dict)]
        if self.withheld_refs:
            entries = [e for e in entries
                       if ref_of(e.get("resource") or {}) not in self.withheld_refs]
        resources = [e["resource"] for e in entries if isinstance(e.get("resource"), dict)]
        if any(needs_consent(r) for r in resources):
            self.disclosed_part2 = True
        if out.get("type") == "document" and entries and not self.internal and \
                (entries[0].get("resource") or {}).get("resourceType") == "Composition":
            comp = entries[0]["resource"]
            comp = redact_references(comp, self.withheld_refs) or comp
            sections = list(comp.get("section") or [])
            if self.withheld:
                sections.append(notice_section("Information withheld", WITHHELD_TEXT))
            if self.disclosed_part2:
                sections.append(notice_section("Notice of redisclosure", REDISCLOSURE_TEXT))
            entries = [{**entries[0], "resource": {**comp, "section": sections}}] + entries[1:]
            resources = [e["resource"] for e in entries if isinstance(e.get("resource"), dict)]
        if "entry" in out or entries:
            out["entry"] = entries
        meta = {k: v for k, v in (out.get("meta") or {}).items()
                if k not in ("security", "extension")}
        extensions = [x for x in (out.get("meta") or {}).get("extension") or ()
                      if x.get("url") not in (WITHHELD_EXTENSION, REDISCLOSURE_EXTENSION)]
        security = []
        level = confidentiality_of(resources)
        if level is not None:
            security.append(confidentiality_label(level))
        if self.disclosed_part2:
            security.append(label(ACT_CODE, "NORDSCLCD"))
            extensions.append({"url": REDISCLOSURE_EXTENSION, "valueString": REDISCLOSURE_TEXT})
        if self.withheld:
            extensions.append({"url": WITHHELD_EXTENSION, "valueString": WITHHELD_TEXT})
        if extensions:
            meta["extension"] = extensions
        if security:
            meta["security"] = security
        if meta:
            out["meta"] = meta
        else:
            out.pop("meta", None)
        return out


def _renarrate(sections: list, withheld: set[str], bodies: dict[str, dict]) -> list:
    """Sections without their entries to ``withheld`` and, wherever there were entries,
    with a narrative generated from the entries kept (see the module docstring)."""
    out = []
    for s in sections:
        if isinstance(s, dict):
            s = dict(s)
            if s.get("entry"):
                entries = [e for e in s["entry"] if not (
                    isinstance(e, dict) and _key(e.get("reference") or "") in withheld)]
                if entries:
                    s["entry"] = entries
                else:
                    del s["entry"]
                s["text"] = entries_narrative(entries, bodies)
            if s.get("section"):
                s["section"] = _renarrate(s["section"], withheld, bodies)
        out.append(s)
    return out


__all__ = ["Disclosure", "NOTHING_TEXT", "NothingToDisclose", "REDISCLOSURE_EXTENSION",
           "REDISCLOSURE_TEXT", "WITHHELD_EXTENSION", "WITHHELD_TEXT", "confidentiality_label",
           "confidentiality_of", "describe", "min_cardinality", "redact_references"]


def merge_meta(bundles: Iterable[dict]) -> dict:
    """The ``meta`` of a Bundle that carries the entries of several finished Bundles (one
    transaction for several referrals): the highest confidentiality, NORDSCLCD and each
    notice once when any of them has it."""
    level = None
    refrain = False
    extensions: dict[str, dict] = {}
    for bundle in bundles:
        meta = bundle.get("meta") or {}
        for tag in meta.get("security") or ():
            if tag.get("system") == CONFIDENTIALITY and tag.get("code") in CONFIDENTIALITY_ORDER:
                if level is None or CONFIDENTIALITY_ORDER.index(tag["code"]) > \
                        CONFIDENTIALITY_ORDER.index(level):
                    level = tag["code"]
            elif tag.get("system") == ACT_CODE and tag.get("code") == "NORDSCLCD":
                refrain = True
        for ext in meta.get("extension") or ():
            if ext.get("url") in (WITHHELD_EXTENSION, REDISCLOSURE_EXTENSION):
                extensions.setdefault(ext["url"], ext)
    out: dict = {}
    security = ([confidentiality_label(level)] if level else []) + \
        ([label(ACT_CODE, "NORDSCLCD")] if refrain else [])
    if security:
        out["security"] = security
    if extensions:
        out["extension"] = list(extensions.values())
    return out
