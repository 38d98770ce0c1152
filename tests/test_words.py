from __future__ import annotations

import random
import re
import unicodedata

from aggregator.words import _PUNCTUATION, WORD, find_words


def test_words_are_what_the_word_pattern_finds() -> None:
    """The ASCII path (bytes.translate, then split) and re.findall agree on any text."""
    rng = random.Random(11)
    ascii_chars = "".join(map(chr, range(128)))
    mixed = "aZ_09 \t\n\r\x0b\x0c.,;-'\"\x00\x1c\x1f\x7f’“”—…ßİıﬁ①²\u00a0\u2003\u200b\u0301éΩ日本😀"
    # Typographic punctuation (the only non-ASCII of most English news text) with ASCII.
    typographic = "aZ_09 .,'\"-\n" + "".join(
        chr(c) for c in range(0x80, 0x3000) if _PUNCTUATION.match(chr(c))
    )
    texts = [
        "",
        " ",
        "Don't stop: it's 2026, e-mail_me at A.B@example.com!",
        "ﬁnal Straße ①②",
        "“It’s over,” she said — twice… «Non» ‹oui›",
        "a\u2019\u0301b",  # a combining mark after the apostrophe: the text stays non-ASCII
    ]
    for alphabet in (ascii_chars, mixed, typographic):
        texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80))) for _ in range(2000)]
    for text in texts:
        assert find_words(text) == re.findall(r"\w+", text), repr(text)


def test_what_the_fast_path_makes_spaces_is_never_part_of_a_word() -> None:
    """Every character the punctuation pattern turns into a space separates words for ``\\w``
    too, before and after NFKC (the duplicate layer normalises first), and combines with none."""
    made_spaces = [chr(c) for c in range(0x110000) if _PUNCTUATION.match(chr(c))]
    assert made_spaces
    for char in made_spaces:
        assert not WORD.match(char), hex(ord(char))
        assert not WORD.search(unicodedata.normalize("NFKC", char)), hex(ord(char))
        assert unicodedata.combining(char) == 0, hex(ord(char))
