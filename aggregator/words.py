"""Word tokens: the runs of ``\\w`` characters of a text, found in C when the text is ASCII.

The extractor's trims and the duplicate layer split every text they look at into words;
``re.findall`` costs about three times as much as the ASCII path below, which also takes text
whose only non-ASCII characters are typographic punctuation.
"""

from __future__ import annotations

import re

WORD = re.compile(r"\w+")

# Every ASCII byte that \w does not match, made a space: in ASCII text, bytes.translate and
# str.split then find exactly the words WORD.findall finds.
_ASCII_SEPARATORS = bytes(b if chr(b).isalnum() or chr(b) == "_" else 0x20 for b in range(128)) + bytes(
    range(128, 256)
)


# The non-ASCII characters that most English news text holds and \w does not match: typographic
# quotes, dashes and spaces, the ellipsis, bullets, guillemets. Made spaces, such a text is
# ASCII and takes the fast path.
_PUNCTUATION = re.compile(
    "[\u00a0\u00ab\u00b7\u00bb\u2002\u2003\u2009\u200a\u2010-\u2015\u2018-\u201f\u2022\u2026"
    "\u202f\u2039\u203a]"
)


def find_words(text: str) -> list[str]:
    """Return ``WORD.findall(text)``."""
    if not text.isascii():
        text = _PUNCTUATION.sub(" ", text)
        if not text.isascii():
            return WORD.findall(text)
    return text.encode("ascii").translate(_ASCII_SEPARATORS).decode("ascii").split()
