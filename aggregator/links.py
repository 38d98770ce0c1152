"""Links from untrusted text, made safe to store, to put in an email and to show.

``safe_link`` is the one gate every URL from a feed or a page passes before it is stored or
emitted: after the normalisation a browser applies (WHATWG URL standard: leading and trailing
C0 controls and spaces stripped, tabs and newlines removed anywhere, the scheme's case
ignored), only an absolute http(s) URL with a host is a link; anything else (``javascript:``,
``data:``, ``vbscript:``, ``java<TAB>script:``, a malformed host) is not a link at all.

``redact_url`` is the one function every URL we display or log goes through: a password in
the URL, and the values of query parameters that carry secrets, never show.
"""

from __future__ import annotations

import re
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

__all__ = ["MAX_URL_LENGTH", "redact_secrets", "redact_url", "safe_link"]

# Longer URLs are not links: browsers and mail clients cut them, and no article needs one.
MAX_URL_LENGTH = 2048
_C0_AND_SPACE = "".join(map(chr, range(0x21)))
_TAB_AND_NEWLINES = str.maketrans("", "", "\t\n\r")
# What a URL we emit holds only percent-encoded: controls, spaces of every kind, and the
# invisible format characters (zero-width, bidirectional overrides) that could disguise it.
_UNSAFE_IN_URL = re.compile(
    r"[\x00-\x20\x7f-\xa0\xad\u1680\u2000-\u200f\u2028-\u202f\u205f-\u206f\u3000\ufeff]"
)
# Query parameters whose values are secrets wherever they appear (database URLs, API feeds).
_SECRET_PARAMETERS = re.compile(
    r"(?i)^(password|passwd|pass|pwd|secret|token|access_token|api_key|apikey|key|auth|sig|signature)$"
)
_HIDDEN = "***"
# A URL inside free text (a log line, an error message): scheme, then anything but spaces,
# quotes and angle brackets.
_URL_IN_TEXT = re.compile(r"""\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s"'<>]+""")


def safe_link(value: str | None, base: str | None = None) -> str | None:
    """Return ``value`` (resolved against ``base``) as an absolute http(s) URL, or None.

    The user name and password of a URL are dropped (``http://bank.example@evil.example/``
    shows one host and goes to another), controls and spaces inside it are percent-encoded,
    and a URL over MAX_URL_LENGTH is not a link.
    """
    if not value:
        return None
    url = value.strip(_C0_AND_SPACE).translate(_TAB_AND_NEWLINES)
    try:
        if base:
            url = urljoin(base, url)
        scheme, colon, _ = url.partition(":")
        if not colon or scheme.lower() not in ("http", "https"):
            return None
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:  # "http://[::1/x", a port out of range
        return None
    if not host or _UNSAFE_IN_URL.search(host):
        return None
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    url = urlunsplit((scheme.lower(), netloc, parts.path, parts.query, parts.fragment))
    if _UNSAFE_IN_URL.search(url):
        url = _UNSAFE_IN_URL.sub(lambda m: quote(m.group(), safe=""), url)
    return url if len(url) <= MAX_URL_LENGTH else None


def redact_url(url: str) -> str:
    """Return ``url`` with its password and secret query values replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _redact_userinfo(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:{_HIDDEN}@{hostport}" if colon else f"{user}@{hostport}"
    query = parts.query
    if query:
        query = "&".join(_redact_parameter(pair) for pair in query.split("&"))
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_secrets(text: str) -> str:
    """Return free text (a log line, an error message) with every URL in it redacted."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group()), text)


def _redact_parameter(pair: str) -> str:
    name, equals, value = pair.partition("=")
    if equals and value and _SECRET_PARAMETERS.match(name):
        return f"{name}={_HIDDEN}"
    return pair


def _redact_userinfo(url: str) -> str:
    """A URL too malformed to take apart: everything up to its last "@" may be a secret."""
    return re.sub(r"(://)[^\s]*@", rf"\1{_HIDDEN}@", url)
