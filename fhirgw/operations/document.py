"""FHIR documents: ``Composition/[id]/$document`` and a printable HTML page of one.

A document (R4 documents.html) is a Bundle of type ``document``: an ``identifier``, a
``timestamp``, the Composition as the first entry, then every resource the Composition
references (subject, encounter, author, attester, custodian, event detail, section entries)
and, transitively, the local resources those reference (Patient, Practitioner,
Organization, Medication, Condition, ...). Each entry's ``fullUrl`` is ``{base}/{type}/{id}``
so the relative references inside the resources resolve within the Bundle.

Disclosure (42 CFR Part 2): ``$document`` takes an optional ``recipient`` (an Organization)
and ``purpose`` (v3-ActReason); a partner's client is itself the recipient. What the
client's consent does not let that recipient see is withheld and the document says so, the
Bundle carries its high-water mark confidentiality and, when Part 2 data goes out, the
redisclosure notice: see ``fhirgw.security.disclosure``.

Privacy: the walk does not pull in other clients' records. A resource reached only
transitively (not named by the Composition itself) that is another Patient, or that refers
to a Patient other than the document's subject (e.g. a group session Appointment reached
through an Encounter), is left out; its reference then stays unresolved in the document.

``$document`` assembles the document from the current state of the resources each time (new
identifier and timestamp), as the FHIR operation does without ``persist``; ``$discharge``
stores the document it issues as a Bundle (see fhirgw.operations.discharge).

``render_html`` shows what a clinician prints: the header (client, program, dates, author)
and each section's narrative, which is the attested content of a document. Narratives that
were not generated here are re-serialized through an allow-list of XHTML elements and
attributes, so a stored Composition cannot inject script into the page.
"""
from __future__ import annotations

import html
import uuid
import xml.etree.ElementTree as ET
from collections import deque
from datetime import datetime, timezone

from ..model.datatypes import cc_text, person_name
from ..model.errors import BadRequest, Forbidden, Gone, NotFound, Unprocessable
from ..security import principal as principals
from ..security.disclosure import (NOTHING_TEXT, Disclosure, NothingToDisclose,
                                   confidentiality_label, confidentiality_of)
from ..store.repository import Tx

XHTML_NS = "http://www.w3.org/1999/xhtml"
CONFIDENTIALITY_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
#: v3-Confidentiality codes from least to most restrictive
CONFIDENTIALITY_ORDER = ["U", "L", "M", "N", "R", "V"]
CONFIDENTIALITY_DISPLAY = {"U": "unrestricted", "L": "low", "M": "moderate", "N": "normal",
                           "R": "restricted", "V": "very restricted"}
#: most resources one document gathers (a guard against runaway reference graphs)
MAX_ENTRIES = 2000


# ---------------------------------------------------------------- references

def parse_reference(ref: object, base: str) -> tuple[str, str, str | None] | None:
    """``Type/id``, ``Type/id/_history/v`` or ``{base}/Type/id`` -> (type, id, version);
    None for contained (``#x``), ``urn:`` and other servers' references."""
    if not isinstance(ref, str) or not ref or ref.startswith(("#", "urn:")):
        return None
    if "://" in ref:
        prefix = base.rstrip("/") + "/"
        if not base or not ref.startswith(prefix):
            return None
        ref = ref[len(prefix):]
    parts = ref.split("/")
    if len(parts) == 2:
        rtype, rid, version = parts[0], parts[1], None
    elif len(parts) == 4 and parts[2] == "_history":
        rtype, rid, version = parts[0], parts[1], parts[3]
    else:
        return None
    if not rtype[:1].isupper() or not rtype.isalpha() or not rid:
        return None
    return rtype, rid, version


def iter_references(node: object):
    """Every ``reference`` string in a resource (skipping contained resources' insides
    would be wrong: they may reference local resources too, so they are walked)."""
    stack = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, dict):
            ref = cur.get("reference")
            if isinstance(ref, str):
                yield ref
            for k, v in cur.items():
                if k != "reference" and isinstance(v, (dict, list)):
                    stack.append(v)
        elif isinstance(cur, list):
            stack.extend(v for v in reversed(cur) if isinstance(v, (dict, list)))


def _composition_references(comp: dict) -> list:
    """The Composition's own references, in reading order: the header, then the sections."""
    refs: list = []

    def add(value):
        if isinstance(value, dict):
            refs.append(value.get("reference"))
        elif isinstance(value, list):
            for v in value:
                add(v)

    add(comp.get("subject"))
    add(comp.get("encounter"))
    add(comp.get("author"))
    for att in comp.get("attester") or ():
        add(att.get("party"))
    add(comp.get("custodian"))
    for rel in comp.get("relatesTo") or ():
        add(rel.get("targetReference"))
    for ev in comp.get("event") or ():
        add(ev.get("detail"))

    def sections(items):
        for s in items or ():
            add(s.get("author"))
            add(s.get("focus"))
            add(s.get("entry"))
            sections(s.get("section"))
    sections(comp.get("section"))
    # anything else the Composition references (extensions, ...), after the above
    refs.extend(iter_references(comp))
    return refs


def _patient_refs(body: dict, base: str) -> set[str]:
    out = set()
    for ref in iter_references(body):
        p = parse_reference(ref, base)
        if p is not None and p[0] == "Patient":
            out.add(p[1])
    return out


# ---------------------------------------------------------------- the document

def _now_instant() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def gather(tx: Tx, composition: dict, comp_ref: tuple[str, str], *, base: str
           ) -> list[tuple[str, str, dict]]:
    """The Composition and every local resource it references, transitively, as
    (type, id, body) in document order (breadth first from the Composition)."""
    subject = parse_reference((composition.get("subject") or {}).get("reference"), base)
    subject_id = subject[1] if subject is not None and subject[0] == "Patient" else None
    seen: set[tuple[str, str, str | None]] = {(comp_ref[0], comp_ref[1], None)}
    included: set[tuple[str, str, str]] = set()
    out: list[tuple[str, str, dict]] = [(comp_ref[0], comp_ref[1], composition)]
    version_of_comp = (composition.get("meta") or {}).get("versionId")
    if version_of_comp:
        included.add((comp_ref[0], comp_ref[1], str(version_of_comp)))
    queue: deque[tuple[str, str, str | None, bool]] = deque()

    def enqueue(refs, direct: bool):
        for ref in refs:
            p = parse_reference(ref, base)
            if p is None or p in seen:
                continue
            seen.add(p)
            queue.append((p[0], p[1], p[2], direct))

    enqueue(_composition_references(composition), True)
    while queue:
        rtype, rid, version, direct = queue.popleft()
        try:
            stored = tx.vread(rtype, rid, int(version)) if version and version.isdigit() \
                else tx.read(rtype, rid)
        except (NotFound, Gone):
            continue  # a dangling reference stays unresolved, as it is in the store
        if (rtype, rid, str(stored.version)) in included:
            continue  # reached both with and without a version
        body = stored.resource()
        if not direct and subject_id is not None:
            if rtype == "Patient" and rid != subject_id:
                continue
            if rtype != "Patient" and _patient_refs(body, base) - {subject_id}:
                continue  # another client's record (e.g. a group session)
        if len(out) >= MAX_ENTRIES:
            raise Unprocessable(f"The document would hold more than {MAX_ENTRIES} resources",
                                code="too-costly")
        included.add((rtype, rid, str(stored.version)))
        out.append((rtype, rid, body))
        enqueue(iter_references(body), False)
    return out


def assemble(tx: Tx, composition: dict, comp_id: str, *, base: str) -> dict:
    """A document Bundle (not stored) for a Composition body with id ``comp_id``."""
    if composition.get("resourceType") != "Composition":
        raise Unprocessable("A document starts with a Composition")
    base = base.rstrip("/")
    items = gather(tx, composition, ("Composition", comp_id), base=base)
    bundle: dict = {
        "resourceType": "Bundle",
        "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{uuid.uuid4()}"},
        "type": "document",
        "timestamp": _now_instant(),
        "entry": [{"fullUrl": f"{base}/{t}/{i}", "resource": b} for t, i, b in items],
    }
    level = confidentiality_of([b for _, _, b in items])
    if level is not None:
        # only the confidentiality travels up: sensitivity/refrain tags would reveal content
        bundle["meta"] = {"security": [confidentiality_label(level)]}
    return bundle


def _recipient(value: str | None, base: str) -> str | None:
    """``Organization/x`` from the ``recipient`` parameter (relative or on our base)."""
    if not value:
        return None
    parsed = parse_reference(value, base.rstrip("/"))
    if parsed is None or parsed[0] != "Organization" or parsed[2] is not None:
        raise BadRequest("parameter 'recipient' must reference an Organization on this "
                         "server (Organization/[id])", expression="recipient")
    return f"Organization/{parsed[1]}"


def _purpose(value: str | None) -> str | None:
    """A v3-ActReason code, given as ``CODE`` or ``system|CODE``."""
    if not value:
        return None
    system, _, code = value.rpartition("|")
    if (system and system != principals.PURPOSE_SYSTEM) or not code.isalnum():
        raise BadRequest("parameter 'purpose' must be a v3-ActReason code such as TREAT",
                         expression="purpose")
    return code


def build_document(tx: Tx, composition_id: str, *, base: str, recipient: str | None = None,
                   purpose: str | None = None) -> dict:
    """``Composition/[id]/$document``: the document for a stored Composition, as disclosed
    to ``recipient`` (an Organization) for ``purpose`` (v3-ActReason, default TREAT).

    A partner's client is always the recipient itself (naming another is refused), with
    the purpose of use of its access token. Internal callers without a recipient get the
    whole document (use within the program), still with the Bundle's high-water mark
    confidentiality and, when it holds Part 2 data, the redisclosure notice
    (``security.disclosure``)."""
    recipient = _recipient(recipient, base)
    purpose = _purpose(purpose)
    who = principals.current()
    if who is not None and who.organization is not None:
        if recipient is not None and recipient != who.organization:
            raise Forbidden("A partner receives documents for itself only: 'recipient' "
                            "must be its own Organization or left out")
        if purpose is not None and purpose != who.purpose:
            raise Forbidden("A partner's purpose of use is that of its access token")
        recipient, purpose = who.organization, who.purpose
    if purpose is None:
        purpose = who.purpose if who is not None else "TREAT"
    stored = tx.read("Composition", composition_id)
    bundle = assemble(tx, stored.resource(), stored.res_id, base=base)
    try:
        return Disclosure(tx, recipient, purpose).document(bundle)
    except NothingToDisclose:
        raise Unprocessable(f"The document cannot be disclosed: {NOTHING_TEXT}",
                            code="suppressed") from None


# ---------------------------------------------------------------- HTML

_ALLOWED_TAGS = {"a", "abbr", "acronym", "b", "big", "blockquote", "br", "caption", "cite",
                 "code", "col", "colgroup", "dd", "dfn", "div", "dl", "dt", "em", "h1", "h2",
                 "h3", "h4", "h5", "h6", "hr", "i", "li", "ol", "p", "pre", "q", "samp",
                 "small", "span", "strong", "sub", "sup", "table", "tbody", "td", "tfoot",
                 "th", "thead", "tr", "tt", "ul", "var"}
_ALLOWED_ATTRS = {"class", "colspan", "rowspan", "title", "lang", "abbr", "scope", "href",
                  "span"}


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _safe_children(el: ET.Element) -> str:
    parts = [html.escape(el.text or "", quote=False)]
    for child in el:
        parts.append(_safe_element(child))
        parts.append(html.escape(child.tail or "", quote=False))
    return "".join(parts)


def _safe_element(el: ET.Element) -> str:
    tag = _local(el.tag)
    if tag not in _ALLOWED_TAGS:
        # unknown or unsafe element (script, style, img, iframe, ...): keep its text only
        return "" if tag in ("script", "style") else _safe_children(el)
    attrs = []
    for name, value in el.attrib.items():
        name = _local(name)
        if name not in _ALLOWED_ATTRS:
            continue
        if name == "href" and not value.strip().lower().startswith(("http:", "https:", "#",
                                                                    "tel:", "mailto:")):
            continue
        attrs.append(f' {name}="{html.escape(value)}"')
    if tag in ("br", "hr", "col"):
        return f"<{tag}{''.join(attrs)}>"
    return f"<{tag}{''.join(attrs)}>{_safe_children(el)}</{tag}>"


def safe_narrative(div: str | None) -> str:
    """A narrative ``div`` as HTML safe to embed in a page (inner content, allow-listed)."""
    if not div:
        return ""
    try:
        root = ET.fromstring(div)
    except ET.ParseError:
        return f"<p>{html.escape(div)}</p>"
    return _safe_children(root)


def _date(value: str | None) -> str:
    return (value or "")[:10]


def render_html(document: dict) -> str:
    """A self-contained, printable HTML page of a document Bundle."""
    entries = document.get("entry") or []
    if not entries or (entries[0].get("resource") or {}).get("resourceType") != "Composition":
        raise Unprocessable("Not a FHIR document: the first entry is not a Composition")
    comp = entries[0]["resource"]
    by_url: dict[str, dict] = {}
    for e in entries:
        r = e.get("resource") or {}
        if e.get("fullUrl"):
            by_url[e["fullUrl"]] = r
        if r.get("resourceType") and r.get("id"):
            by_url[f"{r['resourceType']}/{r['id']}"] = r
    base = ""
    first_url = entries[0].get("fullUrl") or ""
    if first_url.endswith(f"/Composition/{comp.get('id')}"):
        base = first_url[: -len(f"/Composition/{comp.get('id')}")]

    def resolve(ref: dict | None) -> dict | None:
        if not ref or not ref.get("reference"):
            return None
        r = ref["reference"]
        p = parse_reference(r, base)
        if p is not None:
            return by_url.get(f"{p[0]}/{p[1]}")
        return by_url.get(r)

    def ref_text(ref: dict | None) -> str:
        if not ref:
            return ""
        target = resolve(ref)
        return (ref.get("display") or person_name(target, prefix=True) or (target or {}).get("title")
                or ref.get("reference") or "")

    e = html.escape
    patient = resolve(comp.get("subject")) or {}
    client = person_name(patient, prefix=True) or ref_text(comp.get("subject")) or "Unknown client"
    rows = [("Client", client)]
    if patient.get("birthDate"):
        rows.append(("Date of birth", patient["birthDate"]))
    if patient.get("gender"):
        rows.append(("Gender", patient["gender"]))
    ids = [f"{i.get('value')}" for i in patient.get("identifier") or () if i.get("value")]
    if ids:
        rows.append(("Identifiers", ", ".join(ids)))
    for ev in comp.get("event") or ():
        period = ev.get("period") or {}
        for d in ev.get("detail") or ():
            target = resolve(d) or {}
            if target.get("resourceType") == "EpisodeOfCare":
                program = ", ".join(cc_text(t) for t in target.get("type") or () if cc_text(t))
                if program:
                    rows.append(("Program", program))
        if period.get("start"):
            rows.append(("Admitted", _date(period["start"])))
        if period.get("end"):
            rows.append(("Discharged", _date(period["end"])))
    authors = ", ".join(ref_text(a) for a in comp.get("author") or ())
    if authors:
        rows.append(("Author", authors))
    if comp.get("custodian"):
        rows.append(("Custodian", ref_text(comp["custodian"])))
    rows.append(("Document date", (comp.get("date") or "").replace("T", " ")[:16]))
    rows.append(("Status", comp.get("status") or ""))

    labels = [s for r in [comp] + [x.get("resource") or {} for x in entries]
              for s in ((r.get("meta") or {}).get("security") or ())]
    part2 = any(s.get("code") in ("42CFRPart2", "ETH", "SUD") for s in labels)
    level = confidentiality_of([comp] + [x.get("resource") or {} for x in entries])

    title = comp.get("title") or cc_text(comp.get("type")) or "Clinical document"
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{e(title)} - {e(client)}</title>", f"<style>{_CSS}</style></head><body>",
           '<main class="doc">', f"<header><h1>{e(title)}</h1>"]
    if level in ("R", "V"):
        out.append(f'<p class="conf">Confidential ({e(CONFIDENTIALITY_DISPLAY[level])})</p>')
    out.append('<table class="meta">')
    for k, v in rows:
        out.append(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>")
    out.append("</table></header>")
    if part2:
        out.append('<aside class="notice"><strong>42 CFR Part 2 notice.</strong> '
                   "This record, which has been disclosed to you, is protected by federal "
                   "confidentiality rules (42 CFR part 2). These rules prohibit you from "
                   "further disclosing information in this record that would identify a "
                   "patient as having or having had a substance use disorder, unless "
                   "further disclosure is expressly permitted by the written consent of "
                   "the individual whose information is being disclosed or as otherwise "
                   "permitted by 42 CFR part 2.</aside>")
    for section in comp.get("section") or ():
        out.append(_render_section(section, 2))
    gen = document.get("timestamp") or ""
    ident = (document.get("identifier") or {}).get("value") or ""
    out.append(f'<footer>Document {e(ident)} &middot; assembled {e(gen)} &middot; '
               f'{len(entries)} resources</footer>')
    out.append("</main></body></html>")
    return "\n".join(out)


def _render_section(section: dict, level: int) -> str:
    e = html.escape
    h = min(level, 6)
    title = section.get("title") or cc_text(section.get("code")) or "Section"
    parts = [f'<section><h{h}>{e(title)}</h{h}>']
    text = (section.get("text") or {}).get("div")
    if text:
        parts.append(f'<div class="narrative">{safe_narrative(text)}</div>')
    elif section.get("emptyReason"):
        parts.append(f'<p class="empty">{e(cc_text(section["emptyReason"]) or "None")}</p>')
    for sub in section.get("section") or ():
        parts.append(_render_section(sub, level + 1))
    parts.append("</section>")
    return "".join(parts)


_CSS = """
*{box-sizing:border-box}
body{font:11pt/1.45 -apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#1a1a1a;
margin:0;background:#f4f5f7}
.doc{max-width:52rem;margin:1.5rem auto;background:#fff;padding:2rem 2.5rem;
box-shadow:0 1px 4px rgba(0,0,0,.12)}
h1{font-size:1.6rem;margin:0 0 .6rem;border-bottom:3px solid #2b5f8a;padding-bottom:.3rem}
h2{font-size:1.15rem;color:#2b5f8a;margin:1.6rem 0 .4rem;border-bottom:1px solid #d5dde5}
h3,h4{font-size:1rem;margin:1rem 0 .3rem}
table{border-collapse:collapse;width:100%;margin:.3rem 0 .6rem}
th,td{text-align:left;vertical-align:top;padding:.25rem .5rem;border-bottom:1px solid #e3e7eb}
th{background:#f0f3f6;font-weight:600}
table.meta th{width:11rem;background:none;color:#555}
.conf{display:inline-block;background:#8a1c1c;color:#fff;padding:.1rem .6rem;
border-radius:3px;font-weight:600;margin:0 0 .6rem}
.notice{border:1px solid #8a1c1c;background:#fbf1f1;padding:.6rem .8rem;margin:1rem 0;
font-size:.9rem}
.empty{color:#666;font-style:italic}
ul{margin:.2rem 0 .6rem;padding-left:1.3rem}
footer{margin-top:2rem;color:#777;font-size:.8rem;border-top:1px solid #e3e7eb;
padding-top:.5rem}
@media print{body{background:#fff}.doc{box-shadow:none;margin:0;max-width:none;padding:0}
section{break-inside:avoid-page}h2{break-after:avoid}@page{margin:1.8cm}}
"""
