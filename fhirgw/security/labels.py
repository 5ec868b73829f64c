"""Security labels on write (DS4P, shared/domain.md "Privacy: HIPAA and 42 CFR Part 2").

``SecurityLabels`` is a ``WriteRule``: on every write of a clinical resource (create,
update, patch, transaction or batch entry, message) it looks at the resource's codes and
adds ``meta.security`` labels:

* a code of ``ValueSet/iop-sud-codes`` (substance use disorder, 42 CFR Part 2):
  sensitivity ``SUD`` and ``ETH``, refrain ``NODSCLCD`` and ``NORDSCLCD``, policy
  ``42CFRPart2`` (all v3-ActCode) and confidentiality ``R``;
* a code of ``ValueSet/iop-mental-health-codes``: sensitivity ``PSY`` and ``BH`` and
  confidentiality ``R`` (v3-Confidentiality defines R as the level for "potentially
  stigmatizing information"; R alone withholds nothing: what is withheld without consent
  is what carries the Part 2 policy and SUD/ETH labels).

Labels are only ever added. A label the sender set is kept, and so is every label of the
version being replaced (an update that omits ``meta.security`` cannot strip the Part 2
labels or downgrade ``V``). There is exactly one confidentiality label: the highest of the
sender's, the previous version's and the rule's (U < L < M < N < R < V). Labelling is
idempotent: a label already there (same system and code) is not added again.

The codes are data: the ValueSets in ``profiles/`` (see ``RULES``), expanded once at start:

* ``compose.include`` with ``concept``: exact (system, code) pairs;
* ``compose.include`` with ``filter`` ``{"property": "code", "op": "regex"}``: the whole
  code must match (e.g. ICD-10-CM ``F1[0-689](\\.[0-9A-Z]{1,4})?``);
* ``compose.include`` with ``filter`` ``{"property": "display", "op": "regex"}``: searched,
  case-insensitively, in ``coding.display`` of that system and in ``CodeableConcept.text``
  (medications named by ingredient where their codes could not be checked).

Anything else in a ValueSet (``valueSet`` imports, ``exclude``, other filters) is refused at
start rather than silently ignored. A resource without any relevant code costs a few dict
look-ups per CodeableConcept.
"""
from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass

from ..store.repository import WriteRule

ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
#: v3-Confidentiality total order, least to most protective
CONFIDENTIALITY_ORDER = ("U", "L", "M", "N", "R", "V")

#: displays as in hl7.terminology.r4@7.0.1 (CodeSystem v3-ActCode 9.0.0,
#: v3-Confidentiality 3.0.0)
DISPLAY = {
    (ACT_CODE, "SUD"): "substance use disorder information sensitivity",
    (ACT_CODE, "ETH"): "substance abuse information sensitivity",
    (ACT_CODE, "PSY"): "psychiatry disorder information sensitivity",
    (ACT_CODE, "MH"): "mental health information sensitivity",
    (ACT_CODE, "BH"): "behavioral health information sensitivity",
    (ACT_CODE, "NODSCLCD"): "no disclosure without consent directive",
    (ACT_CODE, "NORDSCLCD"): "no redisclosure without consent directive",
    (ACT_CODE, "42CFRPart2"): "42 CFR Part2",
    (CONFIDENTIALITY, "U"): "unrestricted",
    (CONFIDENTIALITY, "L"): "low",
    (CONFIDENTIALITY, "M"): "moderate",
    (CONFIDENTIALITY, "N"): "normal",
    (CONFIDENTIALITY, "R"): "restricted",
    (CONFIDENTIALITY, "V"): "very restricted",
}

SUD_VALUE_SET = "http://fhirgw.dev/fhir/ValueSet/iop-sud-codes"
MENTAL_HEALTH_VALUE_SET = "http://fhirgw.dev/fhir/ValueSet/iop-mental-health-codes"


@dataclass(frozen=True)
class LabelRule:
    value_set: str
    #: v3-ActCode labels (sensitivity, refrain, policy), in the order they are added
    act_codes: tuple[str, ...]
    #: the confidentiality the resource gets at least
    confidentiality: str


RULES = (
    LabelRule(SUD_VALUE_SET, ("SUD", "ETH", "NODSCLCD", "NORDSCLCD", "42CFRPart2"), "R"),
    LabelRule(MENTAL_HEALTH_VALUE_SET, ("PSY", "BH"), "R"),
)

#: where each labelled type keeps its CodeableConcepts (dotted paths; lists are walked)
CODE_PATHS: dict[str, tuple[str, ...]] = {
    "Condition": ("code", "evidence.code"),
    "Observation": ("code", "valueCodeableConcept", "component.code",
                    "component.valueCodeableConcept"),
    "MedicationRequest": ("medicationCodeableConcept", "reasonCode"),
    "MedicationStatement": ("medicationCodeableConcept", "reasonCode"),
    "MedicationDispense": ("medicationCodeableConcept",),
    "MedicationAdministration": ("medicationCodeableConcept", "reasonCode"),
    "Procedure": ("code", "reasonCode"),
    "DiagnosticReport": ("code", "conclusionCode"),
    "Composition": ("type", "category", "event.code", "section.code", "section.section.code",
                    "section.section.section.code"),
    "DocumentReference": ("type", "category", "context.event"),
    "CarePlan": ("category", "activity.detail.code", "activity.detail.reasonCode"),
    "Encounter": ("type", "reasonCode"),
    "ServiceRequest": ("code", "reasonCode"),
}


class ValueSetError(ValueError):
    """A ValueSet the labelling rules need is missing or uses what they cannot expand."""


class CodeMatcher:
    """Membership in one ValueSet, precomputed: exact codes, code regexes per system, and
    display regexes (per system, also applied to ``CodeableConcept.text``)."""

    def __init__(self, value_set: dict):
        url = value_set.get("url", "?")
        exact: dict[str, set[str]] = {}
        code_res: dict[str, list[str]] = {}
        display_res: dict[str, list[str]] = {}
        compose = value_set.get("compose") or {}
        if compose.get("exclude"):
            raise ValueSetError(f"{url}: compose.exclude is not supported")
        for inc in compose.get("include") or ():
            system = inc.get("system")
            if not system or inc.get("valueSet"):
                raise ValueSetError(f"{url}: every include needs a system and no valueSet")
            if inc.get("concept"):
                exact.setdefault(system, set()).update(c["code"] for c in inc["concept"])
            for f in inc.get("filter") or ():
                prop, op, value = f.get("property"), f.get("op"), f.get("value")
                if op != "regex" or prop not in ("code", "display") or not value:
                    raise ValueSetError(f"{url}: filter {prop} {op} is not supported "
                                        "(only code or display regex)")
                (code_res if prop == "code" else display_res).setdefault(system, []).append(
                    value)
            if not inc.get("concept") and not inc.get("filter"):
                raise ValueSetError(f"{url}: a whole code system ({system}) is not supported")
        self.url = url
        self.exact = {s: frozenset(c) for s, c in exact.items()}
        self.code_re = {s: re.compile("|".join(f"(?:{r})" for r in rs))
                        for s, rs in code_res.items()}
        self.display_re = {s: re.compile("|".join(f"(?:{r})" for r in rs), re.IGNORECASE)
                           for s, rs in display_res.items()}
        every = [r for rs in display_res.values() for r in rs]
        self.text_re = re.compile("|".join(f"(?:{r})" for r in every), re.IGNORECASE) \
            if every else None
        self.systems = frozenset(self.exact) | frozenset(self.code_re) \
            | frozenset(self.display_re)

    def coding(self, coding: dict) -> bool:
        system = coding.get("system")
        if system not in self.systems:
            return False
        code = coding.get("code")
        if isinstance(code, str):
            codes = self.exact.get(system)
            if codes is not None and code in codes:
                return True
            pattern = self.code_re.get(system)
            if pattern is not None and pattern.fullmatch(code):
                return True
        pattern = self.display_re.get(system)
        display = coding.get("display")
        return pattern is not None and isinstance(display, str) and \
            pattern.search(display) is not None

    def concept(self, cc) -> bool:
        """Is this CodeableConcept (or Coding) in the value set?"""
        if not isinstance(cc, dict):
            return False
        if "system" in cc:  # a bare Coding
            return self.coding(cc)
        for coding in cc.get("coding") or ():
            if isinstance(coding, dict) and self.coding(coding):
                return True
        text = cc.get("text")
        return self.text_re is not None and isinstance(text, str) and \
            self.text_re.search(text) is not None


def _collect(node, keys: tuple[str, ...], depth: int, out: list) -> None:
    """Append every value at ``keys[depth:]`` below ``node`` to ``out``, walking lists."""
    if type(node) is list:
        for item in node:
            _collect(item, keys, depth, out)
    elif depth == len(keys):
        out.append(node)
    elif type(node) is dict:
        child = node.get(keys[depth])
        if child is not None:
            _collect(child, keys, depth + 1, out)


def load_value_sets(folders: list[str]) -> dict[str, dict]:
    """Every ``ValueSet-*.json`` in ``folders``, by canonical URL."""
    out: dict[str, dict] = {}
    for folder in folders:
        for path in sorted(glob.glob(os.path.join(folder, "ValueSet-*.json"))):
            with open(path, encoding="utf-8") as fh:
                vs = json.load(fh)
            if vs.get("resourceType") == "ValueSet" and vs.get("url"):
                out.setdefault(vs["url"], vs)
    return out


def _default_folders() -> list[str]:
    from ..validation.validator import default_profiles_dir

    found = default_profiles_dir()
    return [p for p in found.split(os.pathsep) if p] if found else []


def _rank(code) -> int:
    try:
        return CONFIDENTIALITY_ORDER.index(code)
    except ValueError:
        return -1


class SecurityLabels(WriteRule):
    """Adds DS4P ``meta.security`` labels from the codes of clinical resources."""

    types = frozenset(CODE_PATHS)

    def __init__(self, profiles: str | list[str] | None = None,
                 rules: tuple[LabelRule, ...] = RULES):
        folders = [profiles] if isinstance(profiles, str) else (profiles or _default_folders())
        value_sets = load_value_sets(folders)
        self.rules: list[tuple[CodeMatcher, LabelRule]] = []
        for rule in rules:
            vs = value_sets.get(rule.value_set)
            if vs is None:
                raise ValueSetError(f"security labels: ValueSet {rule.value_set} not found "
                                    f"in {folders}")
            self.rules.append((CodeMatcher(vs), rule))
        self.paths = {t: tuple(tuple(p.split(".")) for p in paths)
                      for t, paths in CODE_PATHS.items()}

    def labels_for(self, res_type: str, body: dict) -> tuple[list[str], str | None]:
        """(v3-ActCode labels, minimum confidentiality) that ``body``'s codes call for."""
        concepts: list = []
        for path in self.paths.get(res_type, ()):
            child = body.get(path[0])
            if child is not None:
                _collect(child, path, 1, concepts)
        act: list[str] = []
        level = None
        if not concepts:
            return act, level
        for matcher, rule in self.rules:
            concept = matcher.concept
            for cc in concepts:
                if concept(cc):
                    act.extend(c for c in rule.act_codes if c not in act)
                    if level is None or _rank(rule.confidentiality) > _rank(level):
                        level = rule.confidentiality
                    break
        return act, level

    def before_write(self, tx, res_type, res_id, body, previous):
        act, level = self.labels_for(res_type, body)
        meta = body.get("meta")
        current = (meta.get("security") if isinstance(meta, dict) else None) or []
        kept = (((previous or {}).get("meta") or {}).get("security") or []) \
            if previous is not None else []
        if not act and level is None and not kept:
            return body  # the common case: nothing to add, nothing to carry over
        labels = merge(current, kept, act, level)
        if labels == current:
            return body
        return {**body, "meta": {**(meta if isinstance(meta, dict) else {}),
                                 "security": labels}}


def label(system: str, code: str) -> dict:
    return {"system": system, "code": code, "display": DISPLAY.get((system, code), code)}


def merge(current: list, previous: list, act: list[str], level: str | None) -> list:
    """The sender's labels, then the previous version's and the rule's that are missing,
    with a single confidentiality label: the highest of them all."""
    out: list = []
    seen: set[tuple] = set()
    best = None  # the confidentiality label dict to keep
    for item in list(current) + list(previous):
        if not isinstance(item, dict):
            continue
        key = (item.get("system"), item.get("code"))
        if key[0] == CONFIDENTIALITY and key[1] in CONFIDENTIALITY_ORDER:
            if best is None or _rank(key[1]) > _rank(best.get("code")):
                best = item
            continue
        if key in seen:
            continue
        seen.add(key)
        out.append(item)
    for code in act:
        if (ACT_CODE, code) not in seen:
            seen.add((ACT_CODE, code))
            out.append(label(ACT_CODE, code))
    if level is not None and (best is None or _rank(level) > _rank(best.get("code"))):
        best = label(CONFIDENTIALITY, level)
    if best is not None:
        out.insert(0, best)
    return out
