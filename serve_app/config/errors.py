"""Errors the serving side raises, each carrying the HTTP status it becomes.

Routes do not catch them: one exception handler (:mod:`serve_app.http.errors`) turns any
of them into a JSON error, so a status is decided once, where the error is raised, and
not by matching its message.
"""

from __future__ import annotations


class ServingError(Exception):
    """A request that cannot be answered; ``str()`` names the problem for the client."""

    status: int = 400
    #: refused before any model ran (counted as a rejection); a model's own failure is not
    before_model: bool = True

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status


class InvalidRequest(ServingError):
    """The body or headers cannot be predicted on."""

    status = 422


class NotReady(ServingError):
    """No experiment is configured yet, or a dependency (the event store) is down."""

    status = 503
    #: seconds a client should wait before trying again (the Retry-After header)
    retry_after_s: int | None = 5


class RoutingError(ServingError):
    """A request asked for a variant it may not have."""

    status = 400


class OverrideDisabled(RoutingError):
    """``X-Variant`` was sent to an experiment that does not allow overrides."""

    status = 403


class PredictionFailed(ServingError):
    """The assigned variant's model raised: a 500 that names the variant and version."""

    status = 500
    before_model = False
