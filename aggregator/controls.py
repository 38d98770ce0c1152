"""Control characters from untrusted text: stripped from what we store, escaped where we show it.

A feed's title may carry NUL (PostgreSQL refuses it in text), a lone surrogate (no UTF-8
encoder takes it), or terminal escape sequences (``ESC ]0;…BEL`` retitles a terminal, ``ESC [``
recolours it). ``clean_text`` is applied to every text field before it is stored;
``printable`` to every line a person reads on a terminal or in a log, for text stored before
these rules or coming from elsewhere (an HTTP reason phrase, an exception's message).
"""

from __future__ import annotations

import re

__all__ = ["clean_text", "json_safe", "printable", "shorten"]

# C0 controls but tab and newline, DEL, C1 controls, and lone surrogates.
_STORED_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
# On a terminal also the bidirectional overrides and isolates, which reorder what is shown
# ("Trojan Source"), and the line and paragraph separators.
_SHOWN_CONTROLS = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_SHOWN_CONTROLS_AND_LINES = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r", "\x1b": "\\x1b"}


def clean_text(value: str, limit: int | None = None) -> str:
    """Return ``value`` without NUL, C0/C1 controls (tab and newline kept) and lone surrogates,
    cut to ``limit`` characters (ending in "…") when longer."""
    if _STORED_CONTROLS.search(value):
        value = _STORED_CONTROLS.sub("", value)
    if limit is not None and len(value) > limit:
        value = shorten(value, limit)
    return value


def shorten(value: str, limit: int) -> str:
    """Return ``value`` cut to at most ``limit`` characters, at a space when one is near, with
    "…" at the end; unchanged when it is short enough."""
    if len(value) <= limit:
        return value
    cut = value[: limit - 1]
    space = cut.rfind(" ", max(0, limit - 40))
    return (cut[:space] if space > 0 else cut).rstrip() + "…"


def printable(value: str, *, keep_newlines: bool = False) -> str:
    """Return ``value`` with control characters shown as escapes (``\\x1b``), so that nothing
    it holds acts on a terminal or forges a log line; ``keep_newlines`` keeps line breaks and
    tabs (a command's multi-line output)."""
    pattern = _SHOWN_CONTROLS if keep_newlines else _SHOWN_CONTROLS_AND_LINES
    if not pattern.search(value):
        return value
    return pattern.sub(_escape, value)


def json_safe(encoded: str) -> str:
    """Return JSON text (``json.dumps(..., ensure_ascii=False)``) with the controls it leaves raw
    (DEL, C1, the separators and bidirectional overrides) written as ``\\uXXXX`` escapes."""
    return _SHOWN_CONTROLS_AND_LINES.sub(lambda m: f"\\u{ord(m.group()):04x}", encoded)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
