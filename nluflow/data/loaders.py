"""Read annotated NLU data into a :class:`Dataset`, with file:line per example: the public entry points.

Formats, by suffix (one module each in :mod:`nluflow.data.formats`, chosen by its registry):

- ``.jsonl`` — the shared format, one object a line: ``{"text", "intent", "entities": [{start, end, entity,
  value}], "locale"?, "score"?}``. Blank lines are ignored.
- ``.csv`` — a header with ``text`` and ``intent``, optional ``entities`` (a JSON list in the cell),
  ``locale`` and ``score``; other columns are ignored.
- ``.yml`` / ``.yaml`` — Rasa 2/3 NLU YAML: ``nlu:`` items with ``intent:`` and ``examples: |`` (or a list
  of ``{text, metadata}``), inline annotations ``[text](entity)``, ``[text](entity:value)``,
  ``[text]{"entity": ...}`` and ``[text][{...}, ...]``. ``synonym:``, ``regex:`` and ``lookup:`` items and
  ``metadata`` are skipped and counted in ``Dataset.skipped``.
- ``.json`` — a JSON list of shared-format objects, Rasa's JSON format
  (``{"rasa_nlu_data": {"common_examples": [...]}}``) or a Label Studio export (a list of tasks with
  ``data.text``, a ``choices`` result for the intent and ``labels`` results for entity spans). Of a task's
  annotations the ground-truth one is used, else the latest; cancelled (skipped) annotations never; tasks
  without a usable annotation, superseded annotations and disagreeing tasks are counted in
  ``Dataset.skipped`` (see :func:`nluflow.data.formats.label_studio.choose_annotation`).

The loader checks the *format* only. Entity spans are kept as written even when
``text[start:end] != value`` or the offsets are out of range: :mod:`nluflow.data.validation` reports those
as a configurable rule, with file:line. Every problem raises :class:`~nluflow.errors.DataError` carrying
``path`` and ``line``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from nluflow.data.formats.base import FIX_FILE, Parsed, Reader, ReadOptions, no_examples, unreadable
from nluflow.data.formats.csv_table import CsvReader
from nluflow.data.formats.json_document import JsonReader
from nluflow.data.formats.jsonl import JsonlReader
from nluflow.data.formats.rasa_yaml import RasaYamlReader
from nluflow.data.formats.registry import SUPPORTED_SUFFIXES, accepts, reader_for
from nluflow.data.schema import Dataset, Example
from nluflow.errors import DataError

logger = logging.getLogger(__name__)

__all__ = [
    "SUPPORTED_SUFFIXES",
    "data_files_sha256",
    "load_csv",
    "load_file",
    "load_json",
    "load_jsonl",
    "load_must_pass",
    "load_paths",
    "load_rasa_yaml",
]

_HASH_CHUNK = 1 << 20


def _load(reader: Reader, path: str | Path, default_locale: str | None) -> Dataset:
    """One file read by ``reader``, whatever its suffix; a file without examples is a DataError."""
    path = Path(path)
    parsed = reader.read(path, ReadOptions(default_locale=default_locale))
    assert parsed is not None  # only a YAML file that need not be NLU data reads as None
    if not parsed.examples:
        raise no_examples(path, reader.expected, parsed.skipped)
    return parsed.dataset(str(path))


def load_jsonl(path: str | Path, *, default_locale: str | None = None) -> Dataset:
    """Load a JSONL file in the shared format."""
    return _load(JsonlReader(), path, default_locale)


def load_csv(path: str | Path, *, default_locale: str | None = None) -> Dataset:
    """Load a CSV file with columns text, intent and optional entities (JSON list), locale, score."""
    return _load(CsvReader(), path, default_locale)


def load_rasa_yaml(path: str | Path, *, default_locale: str | None = None) -> Dataset:
    """Load a Rasa 2/3 NLU YAML file (intents; synonym/regex/lookup items are counted, not loaded)."""
    return _load(RasaYamlReader(), path, default_locale)


def load_json(path: str | Path, *, default_locale: str | None = None) -> Dataset:
    """Load a JSON file: a list of shared-format examples, Rasa JSON, or a Label Studio export."""
    return _load(JsonReader(), path, default_locale)


def load_file(path: str | Path, *, default_locale: str | None = None) -> Dataset:
    """Load one data file, choosing the format by its suffix (see ``SUPPORTED_SUFFIXES``)."""
    path = Path(path)
    return _load(reader_for(path), path, default_locale)


def _is_hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _collect(paths: Sequence[str | Path]) -> list[tuple[Path, str, bool]]:
    """(file, name relative to its argument, found in a folder?) for every file to read, in order."""
    if isinstance(paths, str | Path):
        raise TypeError("load_paths takes a sequence of paths; wrap a single path in a list")
    found: list[tuple[Path, str, bool]] = []
    seen: set[Path] = set()
    for arg in paths:
        root = Path(arg)
        if root.is_dir():
            files: list[tuple[str, Path]] = []
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                for name in filenames:
                    file = Path(dirpath) / name
                    rel = file.relative_to(root)
                    if accepts(file) and not _is_hidden(rel):
                        files.append((rel.as_posix(), file))
            entries = [(file, name, True) for name, file in sorted(files)]
        elif root.exists():
            entries = [(root, root.name, False)]
        else:
            raise DataError(
                f"no such file or folder; expected data files ({', '.join(SUPPORTED_SUFFIXES)}) or folders "
                f"holding them; nothing was loaded; fix the path and rerun",
                root,
            )
        for file, name, in_folder in entries:
            key = file.resolve()
            if key not in seen:  # a file named twice (directly and through its folder) is read once
                seen.add(key)
                found.append((file, name, in_folder))
    return found


def load_paths(paths: Sequence[str | Path], *, default_locale: str | None = None) -> Dataset:
    """Load files and folders (recursively, sorted; hidden entries skipped) into one Dataset.

    In folders, YAML files without an ``nlu:`` key (stories, rules, domain) are skipped and counted as
    ``skipped["non_nlu_yaml_files"]``, and files holding only synonym/regex/lookup items are fine; any other
    file without examples is an error, as is an empty result.
    """
    merged = Parsed()
    for file, _rel, in_folder in _collect(paths):
        reader = reader_for(file)
        parsed = reader.read(file, ReadOptions(default_locale=default_locale, require_nlu=not in_folder))
        if parsed is None:
            merged.skipped["non_nlu_yaml_files"] += 1
            logger.info("%s: no 'nlu:' key; file skipped", file)
            continue
        if not parsed.examples and not parsed.skipped:
            raise no_examples(file, reader.expected)
        merged.examples.extend(parsed.examples)
        merged.skipped.update(parsed.skipped)
    source = ", ".join(str(p) for p in paths)
    if not merged.examples:
        raise DataError(
            f"no examples found in {source or 'the given paths'}; expected at least one data file with "
            "examples "
            f"({', '.join(SUPPORTED_SUFFIXES)}); nothing was loaded; fix the paths and rerun",
            source or None,
        )
    return merged.dataset(source)


def load_must_pass(path: str | Path) -> list[Example]:
    """Examples the model must get right (any supported format); entities are ignored."""
    path = Path(path)
    reader = reader_for(path)
    parsed = reader.read(path, ReadOptions(with_entities=False))
    assert parsed is not None
    if not parsed.examples:
        raise no_examples(path, reader.expected, parsed.skipped)
    return [e.model_copy(update={"entities": ()}) if e.entities else e for e in parsed.examples]


def data_files_sha256(paths: Sequence[str | Path]) -> str:
    """sha256 over the relative names, sizes and bytes of every data file ``load_paths`` would read, in its
    order: a cheap cache key for the data, computed without parsing it."""
    digest = hashlib.sha256()
    for n, (file, rel, _in_folder) in enumerate(_collect(paths)):
        try:
            with file.open("rb") as handle:  # in chunks: a large file is never held whole
                size = os.fstat(handle.fileno()).st_size
                digest.update(f"{n}\0{rel}\0{size}\0".encode())
                read = 0
                while chunk := handle.read(_HASH_CHUNK):
                    digest.update(chunk)
                    read += len(chunk)
        except OSError as exc:
            raise unreadable(file, exc) from exc
        if read != size:
            raise DataError(
                f"changed while it was being read ({size} bytes, then {read}); expected a file nobody writes "
                f"during a run; {FIX_FILE}",
                file,
            )
    return digest.hexdigest()
