"""``.yml`` / ``.yaml`` — Rasa 2/3 NLU YAML, with the file line of every example.

``nlu:`` items with ``intent:`` and ``examples: |`` (or a list of ``{text, metadata}``), inline annotations
(see :mod:`nluflow.data.formats.rasa_annotations`). ``synonym:``, ``regex:`` and ``lookup:`` items and
``metadata`` are skipped and counted in ``Dataset.skipped``. Positions come from the node graph of
:mod:`nluflow.data.yaml_positions`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import yaml

from nluflow.data import yaml_positions as yp
from nluflow.data.formats.base import FIX, FIX_FILE, Parsed, ReadOptions, names, read_text
from nluflow.data.formats.examples import make_example
from nluflow.data.formats.rasa_annotations import parse_annotated
from nluflow.errors import DataError

logger = logging.getLogger(__name__)

RASA_EXPECTED = "Rasa NLU YAML with 'nlu:' items such as '- intent: greet' and 'examples: |' lines"
_RASA_STRIP = "\n\r "  # Rasa strips these around each example
_ITEM_KINDS = ("intent", "synonym", "regex", "lookup")


class RasaYamlReader:
    """Rasa's NLU training data in YAML."""

    name = "Rasa YAML"
    suffixes = (".yml", ".yaml")
    expected = RASA_EXPECTED

    def read(self, path: Path, options: ReadOptions) -> Parsed | None:
        return parse_rasa_yaml(read_text(path), path, options)


def compose_rasa_yaml(text: str, path: Path) -> yaml.Node | None:
    """The YAML node graph of a data file; malformed YAML is a DataError at its line."""
    try:
        return yp.compose(text)
    except yp.YamlPositionError as exc:
        if exc.kind == "character":
            raise DataError(
                f"character {exc.character} is not allowed in YAML; expected printable text; {FIX}",
                path,
                exc.line,
            ) from exc
        if exc.kind == "nested":
            raise DataError(
                f"YAML nested too deeply to read; expected Rasa NLU YAML; {FIX_FILE}; no line is known "
                "because the parser gave up before reaching a position",
                path,
            ) from exc
        if not isinstance(exc.cause, yaml.MarkedYAMLError):  # pragma: no cover - PyYAML errors are marked
            raise DataError(
                f"malformed YAML ({exc.cause}); expected Rasa NLU YAML; {FIX_FILE}", path
            ) from exc
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        raise DataError(f"malformed YAML ({what}); expected Rasa NLU YAML; {FIX}", path, exc.line) from exc


def parse_rasa_yaml(text: str, path: Path, options: ReadOptions) -> Parsed | None:
    """Parse Rasa NLU YAML; None if ``options.require_nlu`` is false and there is no ``nlu:`` key (stories
    etc.)."""
    out = Parsed()
    root = compose_rasa_yaml(text, path)
    items = _nlu_items(root, path, options.require_nlu)
    if items is None:
        return None
    for item in items:
        keys = _item_keys(item, path)
        kind = next((k for k in _ITEM_KINDS if k in keys), None)
        if kind is None:
            raise DataError(
                f"'nlu:' item with {names(keys) or 'no keys'}; expected one of 'intent', 'synonym', "
                f"'regex', 'lookup'; {FIX}",
                path,
                yp.line_of(item),
            )
        if kind != "intent":
            out.skipped[kind] += 1
            continue
        _read_intent(item, keys, path, options, out)
    return out


def _nlu_items(root: yaml.Node | None, path: Path, require_nlu: bool) -> list[yaml.Node] | None:
    """The nodes under ``nlu:``; None for a file that is not NLU data when that is allowed."""
    if root is None:
        return [] if require_nlu else None
    if not isinstance(root, yaml.MappingNode):
        if not require_nlu:
            return None
        raise DataError(
            f"the document is a YAML {yp.kind_of(root)}; expected a mapping with an 'nlu:' key "
            f"({RASA_EXPECTED}); {FIX_FILE}",
            path,
            yp.line_of(root),
        )
    top = yp.mapping(root)
    if "nlu" not in top:
        if not require_nlu:
            return None
        raise DataError(
            f"no 'nlu:' key (top-level keys: {names(top) or 'none'}); expected {RASA_EXPECTED}; {FIX_FILE}",
            path,
            yp.line_of(root),
        )
    nlu = top["nlu"]
    if isinstance(nlu, yaml.ScalarNode) and yp.scalar_text(nlu) is None:
        return []  # "nlu:" with nothing under it
    if not isinstance(nlu, yaml.SequenceNode):
        raise DataError(
            f"'nlu:' holds a YAML {yp.kind_of(nlu)}; expected a list of items; {FIX}", path, yp.line_of(nlu)
        )
    return list(nlu.value)


def _item_keys(item: yaml.Node, path: Path) -> dict[str, yaml.Node]:
    if not isinstance(item, yaml.MappingNode):
        raise DataError(
            f"an 'nlu:' item is a YAML {yp.kind_of(item)}; expected a mapping such as '- intent: greet'; "
            f"{FIX}",
            path,
            yp.line_of(item),
        )
    return yp.mapping(item)


def _read_intent(
    item: yaml.Node, keys: dict[str, yaml.Node], path: Path, options: ReadOptions, out: Parsed
) -> None:
    """The examples of one ``- intent:`` item, appended to ``out``."""
    intent = yp.scalar_text(keys["intent"])
    if intent is None:
        raise DataError(
            f"intent with an empty or non-text name; expected '- intent: <name>'; {FIX}",
            path,
            yp.line_of(item),
        )
    if "metadata" in keys:
        out.skipped["metadata"] += 1
    for line, raw in _example_lines(keys.get("examples"), intent, path, item, out.skipped):
        clean, entities = parse_annotated(raw, path, line, out.skipped)
        if not clean.strip():
            out.skipped["empty_examples"] += 1
            continue
        out.examples.append(
            make_example(
                path,
                line,
                text=clean,
                intent=intent,
                entities=entities,
                default_locale=options.default_locale,
            )
        )


def _example_lines(
    node: yaml.Node | None, intent: str, path: Path, item: yaml.Node, skipped: Counter[str]
) -> Iterator[tuple[int, str]]:
    """(file line, raw annotated example) for each example of one intent."""
    if node is None or (isinstance(node, yaml.ScalarNode) and yp.scalar_text(node) is None):
        logger.warning("%s:%d: intent '%s' has no examples", path, yp.line_of(item), intent)
        return
    if isinstance(node, yaml.SequenceNode):  # Rasa 3: examples as a list of {text, metadata}
        yield from _listed_examples(node, intent, path, skipped)
        return
    if not isinstance(node, yaml.ScalarNode):
        raise DataError(
            f"'examples' of intent '{intent}' is a YAML {yp.kind_of(node)}; expected a '|' block of '- ' "
            f"lines; {FIX}",
            path,
            yp.line_of(node),
        )
    yield from _block_examples(node, intent, path, skipped)


def _listed_examples(
    node: yaml.SequenceNode, intent: str, path: Path, skipped: Counter[str]
) -> Iterator[tuple[int, str]]:
    """Rasa 3's ``- text: ...`` items (with optional ``metadata``)."""
    for entry in node.value:
        fields = yp.mapping(entry) if isinstance(entry, yaml.MappingNode) else {}
        text_node = fields.get("text")
        text = yp.scalar_text(text_node)
        if text_node is None or text is None:
            raise DataError(
                f"an example of intent '{intent}' has no text; expected '- text: ...' items; {FIX}",
                path,
                yp.line_of(entry),
            )
        if "metadata" in fields:
            skipped["metadata"] += 1
        block = isinstance(text_node, yaml.ScalarNode) and text_node.style in ("|", ">")
        yield yp.line_of(text_node) + block, text.strip(_RASA_STRIP)  # block scalars start a line below


def _block_examples(
    node: yaml.ScalarNode, intent: str, path: Path, skipped: Counter[str]
) -> Iterator[tuple[int, str]]:
    """The ``- `` lines of an ``examples: |`` block; other lines are skipped with a warning, as Rasa does."""
    # A literal block starts on the line after "examples: |" and keeps every line, so line i of the value is
    # file line start+1+i. Other scalar styles fold lines; there we can only point at the scalar's first line.
    literal = node.style == "|"
    first = yp.line_of(node) + 1 if literal else yp.line_of(node)
    for i, raw in enumerate(yp.LINE_BREAK.split(node.value)):
        line = first + i if literal else first
        if not raw.strip():
            continue
        if not raw.startswith("-"):
            skipped["lines_without_dash"] += 1
            logger.warning(
                "%s:%d: line %r of intent '%s' does not start with '-'; line skipped (as Rasa does)",
                path,
                line,
                raw[:60],
                intent,
            )
            continue
        yield line, raw[1:].strip(_RASA_STRIP)
