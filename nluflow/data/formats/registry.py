"""Which reader reads a file: chosen by suffix, in the order of :data:`READERS`.

Like Rasa's ``loading.py``, the suffix decides the format; content is not sniffed (a ``.json`` file is
read by :class:`~nluflow.data.formats.json_document.JsonReader`, which tells a list of examples, Rasa JSON
and a Label Studio export apart by their shape).
"""

from __future__ import annotations

from pathlib import Path

from nluflow.data.formats.base import FIX_FILE, Reader, read_text
from nluflow.data.formats.csv_table import CsvReader
from nluflow.data.formats.json_document import JsonReader
from nluflow.data.formats.jsonl import JsonlReader
from nluflow.data.formats.rasa_yaml import RasaYamlReader
from nluflow.errors import DataError

READERS: tuple[Reader, ...] = (JsonlReader(), CsvReader(), RasaYamlReader(), JsonReader())
SUPPORTED_SUFFIXES: tuple[str, ...] = tuple(s for reader in READERS for s in reader.suffixes)
_BY_SUFFIX: dict[str, Reader] = {s: reader for reader in READERS for s in reader.suffixes}


def suffix_of(path: Path) -> str:
    """The file's suffix as readers name it (lower case, with the dot; ``""`` if none)."""
    return path.suffix.lower()


def accepts(path: Path) -> bool:
    """Whether some reader owns the file's suffix (folders are searched for such files)."""
    return suffix_of(path) in _BY_SUFFIX


def reader_for(path: Path) -> Reader:
    """The reader for ``path``; a missing file, a folder or an unknown suffix is a DataError."""
    suffix = suffix_of(path)
    reader = _BY_SUFFIX.get(suffix)
    if reader is None:
        if path.is_dir() or not path.exists():
            read_text(path)  # raises the clearer "file not found" / "is a folder"
        raise DataError(
            f"unsupported file type {suffix or '(no suffix)'!r}; expected one of "
            f"{', '.join(SUPPORTED_SUFFIXES)}; {FIX_FILE}",
            path,
        )
    return reader
