from __future__ import annotations

import random
import re

from aggregator.words import find_words


def test_words_are_what_the_word_pattern_finds() -> None:
    """The ASCII path (bytes.translate, then split) and re.findall agree on any text."""
    rng = random.Random(11)
    ascii_chars = "".join(map(chr, range(128)))
    mixed = "aZ_09 \t\n\r\x0b\x0c.,;-'\"\x00\x1c\x1f\x7f’“”—…ßİıﬁ①²\u00a0\u2003\u200b\u0301éΩ日本😀"
    texts = ["", " ", "Don't stop: it's 2026, e-mail_me at A.B@example.com!", "ﬁnal Straße ①②"]
    for alphabet in (ascii_chars, mixed):
        texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80))) for _ in range(2000)]
    for text in texts:
        assert find_words(text) == re.findall(r"\w+", text), repr(text)
