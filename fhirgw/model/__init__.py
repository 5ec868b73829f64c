"""Thin helpers over fhir.resources R4B: resource types, JSON codec, validation, errors."""
