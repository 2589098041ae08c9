"""Rasa's inline entity annotations: ``[text](entity)``, ``[text](entity:value)``, ``[text]{"entity": ...}``
and ``[text][{...}, ...]``, found in linear time and stripped from an example's text.

A synonym value, a role and a group are counted in ``skipped`` (the value stays the span's text); a broken
annotation ("[Paris](city", a '[' never closed) is a DataError at the example's line. A stray ']' is kept
as text, as Rasa does.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from nluflow import jsonsafe
from nluflow.data.formats.base import FIX, excerpt, pydantic_problem, shown
from nluflow.data.formats.examples import compact, intern_name
from nluflow.data.schema import Entity
from nluflow.errors import DataError

# Rasa's inline annotation: [entity_text] then (type), (type:synonym), {json dict} or [list of json dicts].
ANNOTATION = re.compile(
    r"\[(?P<text>[^\]]+?)\]"
    r"(?:\((?P<entity>[^:)]+?)(?::(?P<value>[^)]+))?\)"
    r"|\{(?P<dict>[^}]+?)\}"
    r"|\[(?P<list>.*?)\])"
)
# What is left of an annotation that did not parse, e.g. "[Paris](city" or "[x]{bad".
_BROKEN_ANNOTATION = re.compile(r"\][({\[]")


def _rasa_entity_dicts(match: re.Match[str], path: Path, line: int) -> list[dict[str, Any]]:
    blob = match.group("dict")
    source = "{" + blob + "}" if blob is not None else "[" + match.group("list") + "]"
    try:
        data = jsonsafe.loads(source)
    except jsonsafe.NumberTooLong as exc:
        raise DataError(
            f"entity annotation {excerpt(match.group(0))} holds an integer of {exc.digits} digits (more "
            f"than {jsonsafe.MAX_INT_DIGITS}); expected "
            f'[text]{{"entity": "type", "value": "..."}}; {FIX}',
            path,
            line,
        ) from exc
    except (json.JSONDecodeError, RecursionError) as exc:
        raise DataError(
            f"entity annotation {excerpt(match.group(0))} is not valid JSON; expected "
            f'[text]{{"entity": "type", "value": "..."}}; {FIX}',
            path,
            line,
        ) from exc
    items = data if isinstance(data, list) else [data]
    if not items or not all(isinstance(d, dict) for d in items):
        raise DataError(
            f"entity annotation {excerpt(match.group(0))} has no entity object; expected "
            f'[text]{{"entity": "type"}}; {FIX}',
            path,
            line,
        )
    return items


class _NextChar:
    """``text.find(char, pos)`` (``len(text)`` when absent) that remembers its answers, so that a scan whose
    positions grow never reads the same stretch twice, however often it asks."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.known: dict[str, tuple[int, int]] = {}  # char -> (searched from, found at)

    def __call__(self, char: str, pos: int) -> int:
        start, found = self.known.get(char, (-1, -1))
        if not start <= pos <= found:
            found = self.text.find(char, pos)
            found = len(self.text) if found < 0 else found
            self.known[char] = (pos, found)
        return found


def _annotation_at(raw: str, i: int, j: int, after: _NextChar) -> bool:
    """Whether ``ANNOTATION`` matches at ``i`` (``raw[i] == "["``; ``j`` is the first ``]`` after it).

    The entity text can hold no ``]``, so it ends at ``j`` and the outcome depends on what follows ``j``
    only: the caller tries one start per ``]`` instead of every ``[`` (``finditer`` was quadratic on a line
    of ``[``). Each branch mirrors one alternative of the pattern.
    """
    if j == i + 1:  # empty entity text
        return False
    s = j + 1
    opener = raw[s : s + 1]
    if opener == "(":  # (entity) or (entity:value): entity up to the first ':' or ')', never empty
        close, colon = after(")", s + 1), after(":", s + 1)
        k = min(close, colon)
        if k >= len(raw) or k == s + 1:
            return False
        return raw[k] == ")" or k + 1 < close < len(raw)
    if opener == "{":  # {dict}: up to the first '}', never empty
        close = after("}", s + 1)
        return s + 1 < close < len(raw)
    if opener == "[":  # [list]: up to the first ']' on the same line (may be empty)
        close = after("]", s + 1)
        return close < len(raw) and after("\n", s + 1) > close
    return False


def find_annotations(raw: str) -> Iterator[re.Match[str]]:
    """``ANNOTATION.finditer(raw)`` in linear time (same matches, same order)."""
    after = _NextChar(raw)
    pos = 0
    while True:
        i = raw.find("[", pos)
        if i < 0:
            return
        j = after("]", i + 1)
        if j >= len(raw):
            return  # no ']' after: nothing from here on can match
        if not _annotation_at(raw, i, j, after):
            # every '[' before j shares this ']' and its outcome; an empty text at j - 1 fails too
            pos = i + 1 if j == i + 1 else j + 1
            continue
        match = ANNOTATION.match(raw, i)
        if match is None:  # pragma: no cover - _annotation_at mirrors the pattern (property-tested)
            pos = i + 1
            continue
        yield match
        pos = match.end()


def parse_annotated(raw: str, path: Path, line: int, skipped: Counter[str]) -> tuple[str, tuple[Entity, ...]]:
    """Strip Rasa's inline annotations: the clean text and its entity spans (value = the span's text)."""
    pieces: list[str] = []
    residual: list[str] = []
    entities: list[Entity] = []
    pos = 0
    length = 0  # length of the clean text so far
    for match in find_annotations(raw):
        before = raw[pos : match.start()]
        pieces.append(before)
        residual.append(before)
        length += len(before)
        span = match.group("text")
        entities += _span_entities(match, length, path, line, skipped)
        pieces.append(span)
        length += len(span)
        pos = match.end()
    pieces.append(raw[pos:])
    residual.append(raw[pos:])
    _check_brackets("\x00".join(residual), raw, path, line)
    return "".join(pieces), tuple(entities)


def _span_entities(
    match: re.Match[str], start: int, path: Path, line: int, skipped: Counter[str]
) -> list[Entity]:
    """The entities one annotation puts on its span, which starts at ``start`` in the clean text."""
    span = match.group("text")
    if match.group("entity") is not None:
        found: list[dict[str, Any]] = [{"entity": match.group("entity"), "value": match.group("value")}]
    else:
        found = _rasa_entity_dicts(match, path, line)
    out: list[Entity] = []
    for ann in found:
        etype = ann.get("entity")
        if not isinstance(etype, str) or not etype.strip():
            raise DataError(
                f"entity annotation {excerpt(match.group(0))} has entity type {shown(etype)}; "
                f"expected a non-empty name as in [text](entity); {FIX}",
                path,
                line,
            )
        synonym = ann.get("value")
        if synonym is not None and not isinstance(synonym, str):
            raise DataError(
                f"entity annotation {excerpt(match.group(0))} has value {shown(synonym)}; expected a "
                f"string; {FIX}",
                path,
                line,
            )
        if synonym is not None and synonym != span:
            skipped["synonym_values"] += 1  # the synonym mapping is dropped; value stays the span text
        for extra in ("role", "group"):
            if ann.get(extra) is not None:
                skipped[f"entity_{extra}s"] += 1
        try:
            entity = Entity(start=start, end=start + len(span), entity=intern_name(etype), value=span)
        except ValidationError as exc:  # e.g. an unpaired surrogate from a "\ud800" escape
            raise DataError(
                f"entity annotation {excerpt(match.group(0))} is invalid ({pydantic_problem(exc)}); "
                f"expected valid Unicode text; {FIX}",
                path,
                line,
            ) from exc
        out.append(compact(entity))
    return out


def _check_brackets(residual: str, raw: str, path: Path, line: int) -> None:
    """Text outside parsed annotations must not hold a broken annotation: a '[' never closed, or "[x](y".

    A stray ']' is kept as text, as Rasa does (rasa-demo has the example "hello]").
    """
    depth = 0
    for ch in residual:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth = max(depth - 1, 0)
    problem = "a '[' without its ']'" if depth > 0 else ""
    if not problem and _BROKEN_ANNOTATION.search(residual):
        problem = "an annotation that does not close"
    if problem:
        raise DataError(
            f"broken entity annotation in {excerpt(raw)}: {problem}; expected [text](entity), "
            f'[text](entity:value) or [text]{{"entity": "type"}}; {FIX}',
            path,
            line,
        )
