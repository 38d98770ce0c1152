"""Word tokens: the runs of ``\\w`` characters of a text, found in C when the text is ASCII.

The extractor's trims and the duplicate layer split every text they look at into words;
``re.findall`` costs about three times as much as the ASCII path below.
"""

from __future__ import annotations

import re

WORD = re.compile(r"\w+")

# Every ASCII byte that \w does not match, made a space: in ASCII text, bytes.translate and
# str.split then find exactly the words WORD.findall finds.
_ASCII_SEPARATORS = bytes(b if chr(b).isalnum() or chr(b) == "_" else 0x20 for b in range(128)) + bytes(
    range(128, 256)
)


def find_words(text: str) -> list[str]:
    """Return ``WORD.findall(text)``."""
    if text.isascii():
        return text.encode("ascii").translate(_ASCII_SEPARATORS).decode("ascii").split()
    return WORD.findall(text)
