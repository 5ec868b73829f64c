"""Small readers over FHIR datatypes in their JSON form."""
from __future__ import annotations


def cc_text(cc: dict | None) -> str:
    """What a person should read for a CodeableConcept: its text, else the first display,
    else the first code.

    >>> cc_text({"coding": [{"code": "F33.1"}, {"display": "Depression"}]})
    'Depression'
    >>> cc_text(None)
    ''
    """
    if not cc:
        return ""
    if cc.get("text"):
        return cc["text"]
    for c in cc.get("coding") or ():
        if c.get("display"):
            return c["display"]
    for c in cc.get("coding") or ():
        if c.get("code"):
            return c["code"]
    return ""


def person_name(body: dict | None, *, prefix: bool = False) -> str:
    """How to address a Patient/Practitioner/RelatedPerson (or an Organization's name):
    the first name's text, else given + family (``prefix`` puts "Dr" etc. first).

    >>> person_name({"name": [{"prefix": ["Dr"], "given": ["Ada"], "family": "Okafor"}]})
    'Ada Okafor'
    >>> person_name({"name": [{"prefix": ["Dr"], "given": ["Ada"], "family": "Okafor"}]}, prefix=True)
    'Dr Ada Okafor'
    >>> person_name({"name": "Riverside Psychiatry"})
    'Riverside Psychiatry'
    """
    if not body:
        return ""
    names = body.get("name")
    if isinstance(names, str):
        return names
    for n in names or ():
        if n.get("text"):
            return n["text"]
        parts = [" ".join(n.get("prefix") or ())] if prefix else []
        parts += [" ".join(n.get("given") or ()), n.get("family") or ""]
        text = " ".join(p for p in parts if p)
        if text:
            return text
    return ""
