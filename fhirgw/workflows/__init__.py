"""IOP rules, applied by the repository to every write (see ``store.repository.WriteRule``).

* ``episode``: the EpisodeOfCare (IOP enrollment) status machine.
* ``referral``: the closed-loop referral (Gravity pattern): the Task status machine of
  shared/domain.md, a Task for every ServiceRequest sent to an Organization, the
  ServiceRequest following its Task, and business identifiers for both.
"""
from ..config import Settings
from .episode import EpisodeRules
from .referral import BusinessIdentifiers, ReferralRules


def rules(settings: Settings) -> list:
    return [EpisodeRules(), ReferralRules(), BusinessIdentifiers(settings.identifier_system)]


__all__ = ["rules", "EpisodeRules", "ReferralRules", "BusinessIdentifiers"]
