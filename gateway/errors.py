"""Domain errors that map one-to-one onto the Anthropic API's error types.

Domain modules raise these; ``gateway.api`` turns them into HTTP responses shaped
``{"type": "error", "error": {"type": ..., "message": ...}}``.
"""

from __future__ import annotations


class TetherError(Exception):
    status_code = 500
    error_type = "api_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def extra(self) -> dict[str, object]:
        """Further fields of the error object (e.g. ``error_code``, ``details``)."""
        return {}


class InvalidRequest(TetherError):
    status_code = 400
    error_type = "invalid_request_error"


class AuthenticationFailed(TetherError):
    status_code = 401
    error_type = "authentication_error"


class PermissionDenied(TetherError):
    status_code = 403
    error_type = "permission_error"


class NotFound(TetherError):
    status_code = 404
    error_type = "not_found_error"

    def __init__(self, kind: str, resource_id: str) -> None:
        super().__init__(f"{kind} {resource_id!r} not found")


class Conflict(TetherError):
    status_code = 409
    error_type = "conflict_error"


class RequestTooLarge(TetherError):
    status_code = 413
    error_type = "request_too_large"
