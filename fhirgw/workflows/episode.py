"""The EpisodeOfCare (IOP enrollment): planned -> active -> finished, or cancelled."""
from __future__ import annotations

from ..store.repository import WriteRule
from .states import StatusMachine

EPISODE = StatusMachine("EpisodeOfCare", {
    "planned": frozenset({"waitlist", "active", "cancelled"}),
    "waitlist": frozenset({"planned", "active", "cancelled"}),
    "active": frozenset({"onhold", "finished", "cancelled"}),
    "onhold": frozenset({"active", "finished", "cancelled"}),
}, always=frozenset({"entered-in-error"}))


class EpisodeRules(WriteRule):
    types = frozenset({"EpisodeOfCare"})

    def before_write(self, tx, res_type, res_id, body, previous):
        if previous is not None:
            EPISODE.check(previous.get("status"), body.get("status"))
        return body
