"""A status machine as data, and the 422 that names the allowed moves."""
from __future__ import annotations

from dataclasses import dataclass

from ..model.errors import Unprocessable


@dataclass(frozen=True)
class StatusMachine:
    resource_type: str
    #: status -> statuses it may move to (a status absent here is final)
    moves: dict[str, frozenset[str]]
    #: statuses any status may move to (e.g. entered-in-error)
    always: frozenset[str] = frozenset()

    def check(self, old: str | None, new: str | None) -> None:
        if old is None or new is None or old == new:
            return
        moves = self.moves.get(old, frozenset())
        if new in moves or new in self.always:
            return
        names = ", ".join(sorted(moves)) if moves else "none (it is final)"
        if self.always:
            names += f"; from any status: {', '.join(sorted(self.always))}"
        raise Unprocessable(
            f"{self.resource_type} status cannot change from {old!r} to {new!r}; "
            f"allowed from {old!r}: {names}", expression=f"{self.resource_type}.status")
