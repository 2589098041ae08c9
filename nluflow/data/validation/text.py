"""How the rules see text: normalisation for duplicate, conflict and leakage rules, token counts, excerpts."""

from __future__ import annotations

import functools
import re
import unicodedata

_APOSTROPHES = re.compile("['’‘`´ʼ]")
_NON_WORD = re.compile(r"[^\w\s]")
_SPACES = re.compile(r"\s+")
_TOKEN = re.compile(r"\w+|[^\w\s]")


def normalize_text(text: str) -> str:
    """The text as duplicate, conflict and leakage rules compare it: NFKC, casefold, punctuation removed.

    Apostrophes vanish ("what's" == "whats"), other punctuation becomes a space ("top-up" == "top up"),
    whitespace collapses. Symbols stay ("€1" != "£1"). A text of punctuation only keeps its case-folded form.
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    norm = _SPACES.sub(" ", _NON_WORD.sub(_punctuation_to_space, _APOSTROPHES.sub("", folded))).strip()
    return norm or _SPACES.sub(" ", folded).strip()


@functools.cache
def _is_punctuation(char: str) -> bool:
    return unicodedata.category(char).startswith("P")


def _punctuation_to_space(match: re.Match[str]) -> str:
    char = match.group()
    return " " if _is_punctuation(char) else char


def count_tokens(text: str) -> int:
    """Word and punctuation tokens, as ``token_limit`` counts them."""
    return sum(1 for _ in _TOKEN.finditer(text))


def excerpt(text: str, limit: int = 50) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
