"""Reading FHIR ``Parameters`` bodies for operations, with 400s that name the parameter."""
from __future__ import annotations

from datetime import date
from typing import Any

from ..model.errors import BadRequest


class Params:
    """The named values of a Parameters resource (``valueX`` by name)."""

    def __init__(self, body: Any, operation: str, allowed: dict[str, str]):
        """``allowed`` maps parameter name -> the value[x] type it takes (``Date``,
        ``Code``, ``Integer``, ``Reference``, ``String``...)."""
        self.values: dict[str, Any] = {}
        if body is None:
            return
        if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
            raise BadRequest(f"${operation} takes a Parameters resource",
                             expression="Parameters")
        for i, p in enumerate(body.get("parameter") or []):
            where = f"Parameters.parameter[{i}]"
            name = p.get("name") if isinstance(p, dict) else None
            if name not in allowed:
                raise BadRequest(f"${operation} has no parameter {name!r} (it takes "
                                 f"{', '.join(allowed)})", expression=f"{where}.name")
            key = "value" + allowed[name]
            if key not in p:
                raise BadRequest(f"parameter {name!r} takes {key}", expression=f"{where}.{key}")
            self.values[name] = (p[key], f"{where}.{key}")

    def get(self, name: str, default: Any = None) -> Any:
        return self.values[name][0] if name in self.values else default

    def where(self, name: str) -> str:
        return self.values[name][1] if name in self.values else "Parameters"

    def date(self, name: str, default: date | None = None) -> date | None:
        if name not in self.values:
            return default
        value, where = self.values[name]
        try:
            return date.fromisoformat(value)
        except (TypeError, ValueError):
            raise BadRequest(f"parameter {name!r} must be a full date (YYYY-MM-DD), got "
                             f"{value!r}", expression=where) from None
