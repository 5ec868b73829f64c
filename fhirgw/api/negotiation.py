"""Content negotiation: FHIR JSON in and out; XML is answered 406/415 with an outcome."""
from __future__ import annotations

from ..model.errors import NotAcceptable, UnsupportedMediaType

JSON_TYPES = {"application/fhir+json", "application/json", "application/json+fhir",
              "json", "text/json"}
_FORMAT_ALIASES = JSON_TYPES | {"fhir+json"}
_XML = ("xml", "application/fhir+xml", "application/xml", "text/xml", "application/xml+fhir")
BODY_TYPES = JSON_TYPES | {"application/json-patch+json", "application/x-www-form-urlencoded"}


_HTML = ("html", "text/html")


def check_format(format_param: str | None, accept: str | None) -> str:
    """The format the client wants: ``json`` or ``html`` (only some operations render
    HTML; the others answer 406 for it). XML and anything else: 406 here."""
    if format_param:
        f = format_param.strip().lower().split(";")[0]
        if f in _FORMAT_ALIASES:
            return "json"
        if f in _HTML:
            return "html"
        if f in _XML:
            raise NotAcceptable("XML is not supported by this server; use _format=json",
                                expression="_format")
        raise NotAcceptable(f"_format={format_param} is not supported (use json)",
                            expression="_format")
    if not accept:
        return "json"
    kinds = [a.split(";")[0].strip().lower() for a in accept.split(",")]
    if any(k in JSON_TYPES or k in ("*/*", "application/*", "") for k in kinds):
        return "json"
    if "text/html" in kinds:
        return "html"
    if any(k in _XML for k in kinds):
        raise NotAcceptable("XML is not supported by this server; ask for "
                            "application/fhir+json", expression="Accept")
    raise NotAcceptable(f"Cannot produce {accept}; this server speaks application/fhir+json",
                        expression="Accept")


def check_body_type(content_type: str | None, has_body: bool) -> None:
    if not has_body or not content_type:
        return
    ct = content_type.split(";")[0].strip().lower()
    if ct in BODY_TYPES:
        return
    if ct in _XML:
        raise UnsupportedMediaType("XML bodies are not supported; send application/fhir+json",
                                   expression="Content-Type")
    raise UnsupportedMediaType(f"Content-Type {content_type} is not supported; send "
                               "application/fhir+json", expression="Content-Type")
