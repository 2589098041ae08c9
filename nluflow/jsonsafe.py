"""JSON from untrusted input (data files, ``serve`` and ``relay`` bodies) without Python-internal failures.

``json.loads`` has three ways to fail on hostile input that are not a ``JSONDecodeError``:

- an integer literal longer than Python's 4,300-digit conversion limit raises a bare ``ValueError``
  ("Exceeds the limit (4300 digits) for integer string conversion"); :func:`loads` refuses such a literal
  *before* converting it (a ``parse_int`` hook) and raises :class:`NumberTooLong` instead, whose position
  :func:`overlong_number_offset` finds for the caller's message;
- deep nesting raises ``RecursionError`` (callers catch it next to ``JSONDecodeError``);
- a ``\\ud800`` escape gives a string with an unpaired surrogate, which cannot be encoded as UTF-8 and fails
  later, far from the input (a tokenizer, a JSON response); :func:`lone_surrogate` finds one up front.

Integers up to :data:`MAX_INT_DIGITS` digits parse exactly as before, so valid input is unchanged.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_INT_DIGITS = 4300  # Python's default int/str conversion limit: longer literals never parsed before
_OVERLONG_INT = re.compile(
    # json's scanner hands an integer to parse_int as soon as no fraction or exponent follows, even when
    # garbage does ("999…9null", "999…9e"): only a fraction or an exponent with digits makes it a float.
    r'"(?:[^"\\]|\\.)*"|(?<![\w.+-])(-?\d{' + str(MAX_INT_DIGITS + 1) + r",})(?!\d|\.\d|[eE][-+]?\d)"
)
_SURROGATE = re.compile("[\ud800-\udfff]")


class NumberTooLong(ValueError):
    """An integer literal longer than :data:`MAX_INT_DIGITS` digits; ``digits`` is its length."""

    def __init__(self, digits: int) -> None:
        self.digits = digits
        super().__init__(
            f"an integer of {digits} digits (more than {MAX_INT_DIGITS}); expected a number of ordinary size"
        )


def _parse_int(token: str) -> int:
    digits = len(token) - token.startswith("-")
    if digits > MAX_INT_DIGITS:
        raise NumberTooLong(digits)
    return int(token)


def loads(text: str | bytes) -> Any:
    """``json.loads`` that raises :class:`NumberTooLong` for an overlong integer (never converts it)."""
    return json.loads(text, parse_int=_parse_int)


def decoder() -> json.JSONDecoder:
    """A ``JSONDecoder`` with the same integer guard as :func:`loads` (for ``raw_decode`` walks)."""
    return json.JSONDecoder(parse_int=_parse_int)


def overlong_number_offset(text: str) -> int | None:
    """Offset of the first integer literal over :data:`MAX_INT_DIGITS` digits outside strings, if any.

    Meant for text that :func:`loads` refused with :class:`NumberTooLong`: everything before that literal
    was valid JSON, so the strings skipped on the way are well formed. Linear in the text's length.
    """
    for match in _OVERLONG_INT.finditer(text):
        if match.group(1) is not None:
            return match.start(1)
    return None


def lone_surrogate(value: object) -> str | None:
    """Where a decoded JSON value holds an unpaired UTF-16 surrogate (e.g. from ``"\\ud800"``), else None.

    Walks lists and objects (keys too) iteratively, so deep nesting cannot overflow the stack. The answer
    names the place as a JSON path such as ``$.text`` or ``$.entities[0].value``.
    """
    stack: list[tuple[object, str]] = [(value, "$")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return where
        elif isinstance(item, dict):
            for key, child in reversed(list(item.items())):
                if isinstance(key, str) and _SURROGATE.search(key):
                    return f"{where} (a key)"
                stack.append((child, f"{where}.{key}"))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{i}]") for i, child in reversed(list(enumerate(item))))
    return None
