"""Errors the client raises."""

from __future__ import annotations


class BrokerClientError(Exception):
    """Base of every error :mod:`broker.client` raises."""


class BrokerAPIError(BrokerClientError):
    """broker answered with an error.

    Attributes:
        status_code: The HTTP status.
        code: ``error`` for OAuth endpoints (``invalid_grant``...), ``error.code`` for the admin API
            (``validation_failed``...), ``error_code`` for Plaid-style endpoints.
        message: The human-readable description broker gave.
        request_id: broker's request id (quote it when asking the operator).
    """

    def __init__(self, status_code: int, code: str, message: str, request_id: str | None) -> None:
        super().__init__(f"{status_code} {code}: {message}" + (f" (request_id {request_id})" if request_id else ""))
        self.status_code = status_code
        self.code = code
        self.message = message
        self.request_id = request_id


class WebhookVerificationError(BrokerClientError):
    """A webhook's signature, timestamp or headers did not verify: answer 400 and do not act on it."""
