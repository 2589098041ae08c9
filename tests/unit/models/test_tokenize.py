"""Tokenization: exact offsets, punctuation, accents."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nluflow.models.tokenize import Token, as_texts, tokenize, words


def _texts(text: str) -> list[str]:
    return [t.text for t in tokenize(text)]


def test_words_and_single_punctuation_characters() -> None:
    assert _texts("Book a flight, to Paris!?") == ["Book", "a", "flight", ",", "to", "Paris", "!", "?"]
    assert _texts("10:30 am") == ["10", ":", "30", "am"]
    assert _texts("R&B...") == ["R", "&", "B", ".", ".", "."]


def test_offsets_are_code_point_indices() -> None:
    text = "  Hello,\tworld  "
    assert tokenize(text) == [Token("Hello", 2, 7), Token(",", 7, 8), Token("world", 9, 14)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Ich möchte nach Düsseldorf fahren", ["Ich", "möchte", "nach", "Düsseldorf", "fahren"]),
        ("Straße über Köln", ["Straße", "über", "Köln"]),
        ("Je voudrais aller à Besançon", ["Je", "voudrais", "aller", "à", "Besançon"]),
        ("l'hôtel près de la gare", ["l", "'", "hôtel", "près", "de", "la", "gare"]),
        (
            "¿Cuál es el clima en Cádiz mañana?",
            ["¿", "Cuál", "es", "el", "clima", "en", "Cádiz", "mañana", "?"],
        ),
    ],
)
def test_accented_words_stay_whole(text: str, expected: list[str]) -> None:
    assert _texts(text) == expected


def test_decomposed_accents_stay_in_their_word() -> None:
    text = unicodedata.normalize("NFD", "café Zürich")
    tokens = tokenize(text)
    assert [t.text for t in tokens] == [text[:5], text[6:]]
    assert all(text[t.start : t.end] == t.text for t in tokens)


def test_emoji_and_symbols_are_single_tokens() -> None:
    text = "play 🎵 now €5"
    assert _texts(text) == ["play", "🎵", "now", "€", "5"]


def test_empty_and_blank_text_have_no_tokens() -> None:
    assert tokenize("") == []
    assert tokenize(" \t\n") == []


def test_words_are_lowercased_and_skip_punctuation() -> None:
    assert words("Hello, WORLD! Ça va?") == ["hello", "world", "ça", "va"]


def test_as_texts_refuses_a_single_string_and_non_texts() -> None:
    with pytest.raises(ValueError, match="single str"):
        as_texts("hello")
    with pytest.raises(ValueError, match=r"X\[1\] is a int"):
        as_texts(["hello", 3])
    assert as_texts(("a", "b")) == ["a", "b"]


@given(st.text(max_size=80))
def test_tokens_cover_every_non_space_character_exactly_once(text: str) -> None:
    tokens = tokenize(text)
    covered = [False] * len(text)
    previous_end = 0
    for token in tokens:
        assert text[token.start : token.end] == token.text
        assert token.start >= previous_end and token.end > token.start
        previous_end = token.end
        for i in range(token.start, token.end):
            covered[i] = True
    for i, ch in enumerate(text):
        assert covered[i] != ch.isspace(), f"character {ch!r} at {i}"
