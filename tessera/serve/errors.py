"""The one error type of the app: an HTTP status and a message a person can act on (shown as HTML or JSON)."""

from __future__ import annotations

__all__ = ["ServeError"]


class ServeError(Exception):
    """A request the app refuses or cannot complete.

    Args:
        status: HTTP status (4xx: the request is wrong; 5xx: the app failed).
        message: what went wrong and what to do, naming the field, file or limit.
        field: the form field concerned, when there is one.
    """

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field

    def to_json(self) -> dict:
        out = {"status": self.status, "message": self.message}
        if self.field:
            out["field"] = self.field
        return {"error": out}
