"""The RFC 7807 problem of the /queries resources: what the rules, the store and the routes raise."""

from __future__ import annotations

from genealogy import epcis_api


class Problem(epcis_api.QueryProblem):
    """An RFC 7807 problem of the /queries resources (EPCIS exception types)."""

    TITLES = {"SubscriptionControlsException": "Subscription error", "ValidationException": "Invalid request",
              "ResourceAlreadyExistsException": "A resource with the provided identifier already exists",
              "NoSuchResourceException": "No such resource", "QueryParameterException": "Invalid query parameter",
              "QueryTooComplexException": "Limit reached", "ImplementationException": "Not implemented",
              "SecurityException": "Forbidden", "UnsupportedMediaTypeException": "Unsupported media type"}

    def as_dict(self) -> dict:
        out = super().as_dict()
        out["title"] = self.TITLES.get(self.kind, out["title"])
        return out
