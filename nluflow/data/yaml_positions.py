"""YAML that keeps line numbers: the one place nluflow composes YAML into nodes and reads their positions.

PyYAML's ``safe_load`` returns plain values and forgets where they were; the node graph ``compose`` returns
keeps a ``start_mark`` on every node. The Rasa NLU reader, the sweep file and the blocks file all report
problems at ``file:line``, so they read YAML through :func:`compose` and ask :func:`line_of` /
:func:`key_lines` / :func:`child` / :func:`mapping` about nodes. A file that is not YAML raises
:class:`YamlPositionError`, which carries the 1-based line (when PyYAML knows one) and PyYAML's own error, so
each caller words its message as before (a DataError for data and sweep files, a ConfigError for blocks).
"""

from __future__ import annotations

import re
from typing import Any, Literal

import yaml

NULL_TAG = "tag:yaml.org,2002:null"
LINE_BREAK = re.compile("[\n\u2028\u2029]")  # the breaks PyYAML counts in marks and keeps in scalars

Kind = Literal["syntax", "character", "nested"]


class YamlPositionError(ValueError):
    """The text is not YAML: ``kind`` says why, ``line`` where (1-based; None when the parser gave up
    before reaching a position), ``cause`` is PyYAML's error (or the RecursionError of a too-deep file).

    ``kind`` is ``"syntax"`` (a marked PyYAML error), ``"character"`` (a character YAML does not allow;
    ``character`` names it, e.g. ``U+0007``) or ``"nested"`` (nested too deeply to read).
    """

    def __init__(self, kind: Kind, line: int | None, cause: BaseException, character: str = "") -> None:
        super().__init__(str(cause))
        self.kind: Kind = kind
        self.line = line
        self.cause = cause
        self.character = character

    @property
    def problem(self) -> str | None:
        """PyYAML's short description of the problem, e.g. ``"found undefined alias 'x'"`` (None if none)."""
        value = getattr(self.cause, "problem", None)
        return str(value) if value else None

    @property
    def context(self) -> str | None:
        """PyYAML's description of where it was, e.g. ``"while scanning a simple key"`` (None if none)."""
        value = getattr(self.cause, "context", None)
        return str(value) if value else None


def compose(text: str) -> yaml.Node | None:
    """The node graph of the first YAML document in ``text`` (None for an empty document).

    Raises :class:`YamlPositionError` for malformed YAML, characters YAML does not allow, and documents
    nested too deeply for the parser.
    """
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError) as exc:
        raise _position_error(exc, text) from exc


def construct(node: yaml.Node | None) -> Any:
    """The plain Python value of a composed document (what ``yaml.safe_load`` gives for the same text)."""
    if node is None:
        return None
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(node)
    except (yaml.YAMLError, RecursionError) as exc:
        raise _position_error(exc, "") from exc


def _position_error(exc: yaml.YAMLError | RecursionError, text: str) -> YamlPositionError:
    """The YamlPositionError for a PyYAML failure or a RecursionError."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        return YamlPositionError("syntax", int(mark.line) + 1 if mark is not None else None, exc)
    if isinstance(exc, yaml.reader.ReaderError):
        before = text[: exc.position].replace("\r\n", "\n").replace("\r", "\n")
        char = exc.character
        shown = f"U+{char:04X}" if isinstance(char, int) else repr(char)
        return YamlPositionError("character", len(LINE_BREAK.split(before)), exc, shown)
    if isinstance(exc, RecursionError):
        return YamlPositionError("nested", None, exc)
    return YamlPositionError("syntax", None, exc)  # pragma: no cover - PyYAML errors are marked or Reader


def line_of(node: yaml.Node) -> int:
    """The 1-based line where ``node`` starts."""
    return int(node.start_mark.line) + 1


def mapping(node: yaml.MappingNode) -> dict[str, yaml.Node]:
    """A mapping node's values by their (scalar) key; the first of duplicate keys wins."""
    out: dict[str, yaml.Node] = {}
    for key, value in node.value:
        if isinstance(key, yaml.ScalarNode):
            out.setdefault(str(key.value), value)
    return out


def key_lines(node: yaml.Node | None) -> dict[str, int]:
    """The 1-based line of each (scalar) key of a mapping node; empty for any other node."""
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {str(k.value): line_of(k) for k, _ in node.value if isinstance(k, yaml.ScalarNode)}


def child(node: yaml.Node | None, key: str) -> yaml.Node | None:
    """The value node under ``key`` of a mapping node (the first of duplicate keys); None if absent."""
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key and isinstance(v, yaml.Node):
                return v
    return None


def kind_of(node: yaml.Node) -> str:
    """``mapping``, ``list`` or ``scalar``: a node's kind as messages name it."""
    if isinstance(node, yaml.MappingNode):
        return "mapping"
    return "list" if isinstance(node, yaml.SequenceNode) else "scalar"


def scalar_text(node: yaml.Node | None) -> str | None:
    """A scalar node's text; None for null, blank or non-scalar nodes."""
    if not isinstance(node, yaml.ScalarNode) or node.tag == NULL_TAG:
        return None
    value = node.value
    return value if isinstance(value, str) and value.strip() else None
