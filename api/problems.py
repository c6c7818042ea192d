"""Errors as RFC 9457 problem details (``application/problem+json``).

Raise :class:`Problem` (or one of its helpers) anywhere in a route; ``api.app`` turns it,
FastAPI's own validation errors and unknown paths into a body with ``type``, ``title``,
``status``, ``detail`` and, for a bad parameter, ``parameter`` (its name) so a client can
point at the field it got wrong.
"""

from __future__ import annotations

from typing import Any

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://citystream.example/problems/"  # documentation anchors: docs/api.md

TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    413: "Content too large",
    422: "Unprocessable content",
    500: "Internal server error",
    503: "Service unavailable",
    504: "Gateway timeout",
}


class Problem(Exception):
    """An HTTP error with a problem+json body; ``kind`` names it within TYPE_BASE."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        kind: str | None = None,
        parameter: str | None = None,
        title: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind or TITLES.get(status, "error").lower().replace(" ", "-")
        self.parameter = parameter
        self.title = title or TITLES.get(status, "Error")
        self.headers = headers or {}

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": TYPE_BASE + self.kind,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.parameter is not None:
            body["parameter"] = self.parameter
        if instance is not None:
            body["instance"] = instance
        return body


def bad_parameter(parameter: str, detail: str) -> Problem:
    """400 naming the query parameter (or header) that is wrong."""
    return Problem(400, detail, kind="invalid-parameter", parameter=parameter)


def not_found(detail: str, parameter: str | None = None) -> Problem:
    """404 for an unknown KPI, entity, layer or city (``parameter``: the path/query name)."""
    return Problem(404, detail, kind="not-found", parameter=parameter)


def unavailable(detail: str) -> Problem:
    """503: a dependency (ClickHouse, the audit log, Kafka) failed; the request did not happen."""
    return Problem(503, detail, kind="unavailable")
