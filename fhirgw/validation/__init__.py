"""Profile validation: FHIR R4 StructureDefinitions, ValueSets and CodeSystems.

Base validation (structure, data types) is :func:`fhirgw.model.resources.validate`
(fhir.resources R4B). This package adds validation against profiles: the IOP profiles in
``profiles/``, packages such as the International Patient Summary, and definitions posted
at runtime::

    from fhirgw.validation import ProfileValidator
    v = ProfileValidator()                      # the IOP profiles (profiles/)
    issues = v.validate(resource)               # against resource.meta.profile
    issues = v.validate(resource, [url])        # against given profiles

Modules: :mod:`.definitions` (loading, the vendored R4 core), :mod:`.snapshot`
(differential -> snapshot), :mod:`.compiler` (snapshot -> rule tree), :mod:`.engine`
(walking a resource), :mod:`.terminology` (local ValueSet expansion),
:mod:`.validator` (the public class and its thread-safe state).
"""
from ..model.errors import Issue
from .definitions import DefinitionError
from .terminology import Expansion
from .validator import ProfileValidator, default_profiles_dir

__all__ = ["DefinitionError", "Expansion", "Issue", "ProfileValidator", "default_profiles_dir"]
