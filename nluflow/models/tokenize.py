"""Tokenization with exact character offsets.

A token is a run of word characters (letters, digits, underscore, with any combining accents that follow them,
so decomposed ``é`` stays one token) or a single other non-space character (punctuation, symbols, emoji).
Offsets are Python string indices (code points, ``end`` exclusive): ``text[token.start:token.end] ==
token.text`` always holds, so entity spans found on tokens map back to the original text exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# Combining marks that may follow a word character (NFD accents, e.g. "e\u0301"); \w does not match them.
_MARKS = "\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
WORD_PATTERN = rf"\w[\w{_MARKS}]*"
TOKEN_PATTERN = re.compile(rf"{WORD_PATTERN}|[^\w\s]")
_WORD = re.compile(WORD_PATTERN)


@dataclass(frozen=True, slots=True)
class Token:
    """One token: its text and where it is in the utterance."""

    text: str
    start: int
    end: int


def tokenize(text: str) -> list[Token]:
    """Split ``text`` into word runs and single punctuation characters, keeping exact offsets."""
    return [Token(m.group(), m.start(), m.end()) for m in TOKEN_PATTERN.finditer(text)]


def words(text: str) -> list[str]:
    """The word tokens of ``text`` (no punctuation), lowercased: what the intent features are built from."""
    return [m.group() for m in _WORD.finditer(text.lower())]


def as_texts(X: Any, what: str = "X") -> list[str]:
    """``X`` as a list of texts; a single str (a common slip) or a non-text item is refused."""
    if isinstance(X, str):
        raise ValueError(f"{what} must be a sequence of texts, got a single str; wrap it in a list")
    texts = list(X)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"{what}[{i}] is a {type(text).__name__}, expected a str")
    return texts
