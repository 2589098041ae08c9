"""Annotated NLU data formats, one module each behind the :class:`Reader` interface.

- :mod:`~nluflow.data.formats.jsonl` — ``.jsonl``, the shared format, one object a line (streamed).
- :mod:`~nluflow.data.formats.csv_table` — ``.csv`` with ``text`` and ``intent`` columns (streamed).
- :mod:`~nluflow.data.formats.rasa_yaml` — ``.yml`` / ``.yaml``, Rasa 2/3 NLU YAML, with inline
  annotations parsed by :mod:`~nluflow.data.formats.rasa_annotations`.
- :mod:`~nluflow.data.formats.json_document` — ``.json``: a list of examples, Rasa JSON, or a Label Studio
  export (:mod:`~nluflow.data.formats.label_studio`).

:mod:`~nluflow.data.formats.registry` picks the reader by suffix; :mod:`nluflow.data.loaders` is the public
entry point (``load_file``, ``load_paths``, ...). Readers check the *format* only: entity spans are kept as
written, and :mod:`nluflow.data.validation` reports span problems as a configurable rule.
"""

from nluflow.data.formats.base import Parsed, Reader, ReadOptions
from nluflow.data.formats.registry import READERS, SUPPORTED_SUFFIXES, accepts, reader_for

__all__ = ["READERS", "SUPPORTED_SUFFIXES", "Parsed", "ReadOptions", "Reader", "accepts", "reader_for"]
