"""Named FHIR operations, each a function (or small class) over the repository."""
