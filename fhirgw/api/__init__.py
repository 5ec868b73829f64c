"""HTTP only: routes, content negotiation, headers, and errors -> OperationOutcome."""
