"""What every format reader shares: the ``Reader`` interface, its options and result, file reading and the
pieces of error messages.

A reader turns one file into a :class:`Parsed` (its examples and what it skipped on purpose). Every problem
raises :class:`~nluflow.errors.DataError` carrying ``path`` and ``line``; the messages read
``what was found; expected ...; what happens next``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from nluflow import jsonsafe
from nluflow.data.schema import Dataset, Example
from nluflow.errors import DataError

FIX = "the file was not loaded; fix the line and rerun"
FIX_FILE = "the file was not loaded; fix the file and rerun"
NESTED = "JSON nested too deeply; expected {expected}; " + FIX


@dataclass(frozen=True)
class ReadOptions:
    """How a file is read: the locale of examples without one, whether entities are kept, and whether a
    YAML file must be NLU data (in folders, stories, rules and domain files are skipped instead)."""

    default_locale: str | None = None
    with_entities: bool = True
    require_nlu: bool = True


@dataclass
class Parsed:
    """What one file gave: its examples and what was skipped on purpose."""

    examples: list[Example] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)

    def dataset(self, source: str) -> Dataset:
        return Dataset(
            examples=tuple(self.examples), source=source, skipped=dict(sorted(self.skipped.items()))
        )


class Reader(Protocol):
    """One data format: the suffixes it owns, what its files hold (for messages), and how to read one."""

    @property
    def name(self) -> str:
        """A short name for messages and logs, e.g. ``"CSV"``."""
        ...

    @property
    def suffixes(self) -> tuple[str, ...]:
        """Lower-case file suffixes this reader owns, with the dot."""
        ...

    @property
    def expected(self) -> str:
        """What a file of this format holds, as the ``expected ...`` part of a message."""
        ...

    def read(self, path: Path, options: ReadOptions) -> Parsed | None:
        """The file's examples; ``None`` only for YAML without ``nlu:`` when ``options.require_nlu`` is
        false. Raises DataError at the file and line of the first problem."""
        ...


# --------------------------------------------------------------------------------------------- reading files


def check_file(path: Path) -> None:
    """Raise DataError unless ``path`` is an existing file (not a folder)."""
    if not path.exists():
        raise DataError(f"file not found; expected an existing data file; {FIX_FILE}", path)
    if path.is_dir():
        raise DataError(f"is a folder; expected a file (use load_paths for folders); {FIX_FILE}", path)


def unreadable(path: Path, exc: OSError) -> DataError:
    return DataError(f"cannot be read ({exc.strerror}); expected a readable file; {FIX_FILE}", path)


def not_utf8(path: Path, line: int, bad: bytes) -> DataError:
    return DataError(f"byte {bad!r} is not valid UTF-8; expected UTF-8 text; {FIX}", path, line)


def read_text(path: Path) -> str:
    """The file decoded as UTF-8 (a leading BOM is dropped); bad bytes raise DataError at their line."""
    check_file(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise unreadable(path, exc) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise not_utf8(path, line, data[exc.start : exc.start + 1]) from exc
    return text.removeprefix("\ufeff")


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text without its "\\n") of each line of a UTF-8 file, read one line at a time.

    The same lines as ``read_text(path).split("\\n")``, without ever holding the whole file: a large
    JSONL file costs its examples, not its raw text and a list of its lines besides.
    """
    check_file(path)
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise unreadable(path, exc) from exc
    with handle:
        lineno = 0
        while True:
            try:
                raw = handle.readline()
            except OSError as exc:
                raise unreadable(path, exc) from exc
            if not raw:
                return
            lineno += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise not_utf8(path, lineno, raw[exc.start : exc.start + 1]) from exc
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            yield lineno, line.removesuffix("\n")


# ------------------------------------------------------------------------------------------ message pieces


def excerpt(text: str, limit: int = 60) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def shown(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: a message never echoes a huge or deeply nested value."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def names(items: Iterable[object], limit: int = 8) -> str:
    """Up to ``limit`` names as ``'a', 'b'`` (each cut by :func:`shown`), then how many more: a header or
    a mapping with thousands of huge keys never becomes a message of megabytes."""
    out: list[str] = []
    more = 0
    for item in items:
        if len(out) < limit:
            out.append(shown(item, 40))
        else:
            more += 1
    return ", ".join(out) + (f" and {more} more" if more else "")


def pydantic_problem(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {err['msg']}" if loc else str(err["msg"]))
    return ", ".join(parts)


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def position(text: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of ``offset`` in ``text``."""
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def overlong_number(exc: jsonsafe.NumberTooLong, text: str) -> tuple[str, int | None]:
    """What an overlong integer literal in ``text`` is and its column, and its 1-based line in ``text``."""
    offset = jsonsafe.overlong_number_offset(text)
    what = f"an integer of {exc.digits} digits (more than {jsonsafe.MAX_INT_DIGITS})"
    if offset is None:  # pragma: no cover - loads only refuses literals the scan finds
        return what, None
    line, column = position(text, offset)
    return f"{what} at column {column}", line


def no_examples(path: Path, expected: str, skipped: Counter[str] | None = None) -> DataError:
    note = ""
    if skipped:
        note = " (only " + ", ".join(f"{n} {kind}" for kind, n in sorted(skipped.items())) + " items)"
    return DataError(f"no examples found in {path}{note}; expected {expected}; {FIX_FILE}", path)
