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
