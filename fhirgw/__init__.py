"""fhirgw: a FHIR R4 interoperability gateway for virtual mental-health IOPs."""

__version__ = "0.1.0"
FHIR_VERSION = "4.0.1"
