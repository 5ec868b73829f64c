"""security: DS4P security labels on write (see ``labels``)."""
from .labels import (
                     ACT_CODE,
                     CONFIDENTIALITY,
                     CONFIDENTIALITY_ORDER,
                     MENTAL_HEALTH_VALUE_SET,
                     RULES,
                     SUD_VALUE_SET,
                     CodeMatcher,
                     LabelRule,
                     SecurityLabels,
                     ValueSetError,
)

__all__ = ["ACT_CODE", "CONFIDENTIALITY", "CONFIDENTIALITY_ORDER", "MENTAL_HEALTH_VALUE_SET",
           "RULES", "SUD_VALUE_SET", "CodeMatcher", "LabelRule", "SecurityLabels",
           "ValueSetError"]
