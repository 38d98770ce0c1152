"""The secrets one feed sends with its own requests, and the origin they are bound to."""

from __future__ import annotations

import base64
from dataclasses import dataclass


@dataclass(frozen=True)
class Credentials:
    """Request headers (``Authorization``, an API key...) for the feed at ``origin_url``.

    The fetcher sends them only to that URL's origin (scheme, host, port; or its https upgrade)
    and drops them for good at the first redirect that leaves it. ``repr`` names the headers,
    never their values.
    """

    origin_url: str
    headers: tuple[tuple[str, str], ...]

    def __repr__(self) -> str:
        names = ", ".join(name for name, _ in self.headers)
        return f"Credentials(headers=[{names}])"


def basic_authorization(username: str, password: str) -> str:
    """Return the ``Authorization`` value of HTTP basic authentication (RFC 7617, UTF-8)."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"
