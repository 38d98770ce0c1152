"""The errors aggregator raises on purpose.

    AggregatorError            -- anything the CLI turns into a one-line message and an exit code
    ├── ConfigError            -- a config file is missing, unreadable or invalid (exit 2)
    ├── StorageError           -- the database cannot be reached or migrated (exit 1)
    ├── DeliveryError          -- a digest could not be delivered (exit 1)
    └── FetchError             -- one HTTP fetch failed; ``kind`` says how (recorded on the feed)
        └── BlockedAddressError -- the target resolves to an address we refuse to contact

A failed parse of one feed is a ``FetchError`` of kind ``parse``; a failed extraction is not an
error at all: the extractor returns ``None`` and the feed's own content is used.
"""

from __future__ import annotations


class AggregatorError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class ConfigError(AggregatorError):
    """A config file is missing or invalid; the message names the file and the key."""

    exit_code = 2


class StorageError(AggregatorError):
    """The database is unreachable or its schema cannot be brought up to date."""


class DeliveryError(AggregatorError):
    """The digest could not be handed over. ``temporary``: worth trying again later
    (connection refused, timeout, a 4xx answer); otherwise permanent (a 5xx answer)."""

    def __init__(self, message: str, temporary: bool = False) -> None:
        super().__init__(message)
        self.temporary = temporary


class FetchError(AggregatorError):
    """One fetch failed. ``kind`` is one of FETCH_ERROR_KINDS; ``status`` the HTTP status if any."""

    def __init__(
        self, kind: str, message: str, status: int | None = None, retry_after: str | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[object, ...]:
        # Parsing runs in worker processes: the error must survive pickling with its fields.
        return (FetchError, (self.kind, str(self), self.status, self.retry_after))


class BlockedAddressError(FetchError):
    """The URL's scheme or resolved address is not allowed (SSRF protection)."""

    def __init__(self, message: str) -> None:
        super().__init__("blocked", message)

    def __reduce__(self) -> tuple[object, ...]:
        return (BlockedAddressError, (str(self),))


FETCH_ERROR_KINDS = (
    "dns",
    "connect",
    "tls",
    "timeout",
    "http",
    "too_large",
    "too_many_redirects",
    "blocked",
    "invalid_url",
    "not_a_feed",
    "parse",
)
