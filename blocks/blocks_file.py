"""The blocks file (``blocks.yaml``) read and checked without looking at the environment.

``parse_blocks_file`` turns the file into ``BlockSpec`` entries (type, name, condition, fields with their
templates and lines, nested block entries) and reports every problem of the file at once, ``file:line: ...``.
Rendering the templates and building the blocks is ``blocks.provision``'s part.

A field that holds a plain pydantic model (the gate policy's ``policy``) is a mapping of that model's fields;
each keeps its own line, so a bad value is reported where it is written. A block that once had those fields at
its top level lists them in ``_legacy_flat_fields`` (field → the field that holds it now); the file may still
write them flat, and they are read as if nested.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from prefect.blocks.core import Block, UnknownBlockType
from prefect.types.names import LOWERCASE_LETTERS_NUMBERS_AND_DASHES_ONLY_REGEX
from prefect.utilities.dispatch import get_registry_for_type
from prefect.utilities.templating import PLACEHOLDER_CAPTURE_REGEX
from pydantic import BaseModel

from nluflow.data.yaml_positions import YamlPositionError, compose
from nluflow.data.yaml_positions import line_of as _line
from nluflow.errors import ConfigError

DEFAULT_FILE = "blocks.yaml"
ENTRY_KEYS = frozenset({"type", "name", "when", "fields"})
NOTHING_SAVED = "nothing was saved"

_NAME_RE = re.compile(LOWERCASE_LETTERS_NUMBERS_AND_DASHES_ONLY_REGEX)
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class FieldSpec:
    """One field of an entry as written in the file (templates not yet applied).

    ``key_lines``: for a mapping value, the line of each of its keys (a nested model's fields).
    """

    value: Any
    line: int
    key_lines: Mapping[str, int] = field(default_factory=dict)

    def variables(self, key: str | None = None) -> list[str]:
        """The environment variables the field's templates name (of one key of a mapping value: ``key``)."""
        value = self.value[key] if key is not None and isinstance(self.value, Mapping) else self.value
        return [name.removeprefix("$") for _, name in placeholders(value)]

    def line_of(self, key: str | None) -> int:
        """The line of ``key`` inside a mapping value; the field's own line without one."""
        return self.key_lines.get(key, self.line) if key is not None else self.line


@dataclass(frozen=True)
class BlockSpec:
    """One block document entry of the file: its type, name, condition, plain fields and nested blocks."""

    slug: str
    name: str
    line: int
    block_class: type[Block]
    when: str | None = None
    fields: Mapping[str, FieldSpec] = field(default_factory=dict)
    nested: Mapping[str, BlockSpec] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.slug}/{self.name}"

    def label(self) -> str:
        return f"block {self.name!r} ({self.slug})"

    def walk(self) -> Iterator[BlockSpec]:
        """This entry and every nested one, children first (the order they are saved in)."""
        for child in self.nested.values():
            yield from child.walk()
        yield self


def placeholders(value: Any) -> Iterator[tuple[str, str]]:
    """(template, name as written, e.g. ``$NLUFLOW_RASA_URL``) of every template in a value."""
    if isinstance(value, str):
        for match in PLACEHOLDER_CAPTURE_REGEX.finditer(value):
            yield match.group(1), match.group(2)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from placeholders(item)
    elif isinstance(value, list):
        for item in value:
            yield from placeholders(item)


# ------------------------------------------------------------------------------------- the block classes


def block_class(slug: str) -> type[Block]:
    """The block class registered under ``slug`` (nluflow's blocks and prefect-aws's are imported first).

    Raises ``KeyError`` with the known slugs when there is none.
    """
    import prefect_aws  # noqa: F401  (registers s3-bucket, aws-credentials, minio-credentials)

    import blocks  # noqa: F401  (registers nluflow's block types)

    try:
        return Block.get_block_class_from_key(slug)
    except UnknownBlockType:
        raise KeyError(slug) from None


def known_slugs() -> list[str]:
    block_class("nluflow-gate-policy")  # imports the packages that register the types
    return sorted(get_registry_for_type(Block) or {})


def secret_fields(cls: type[Block]) -> frozenset[str]:
    """Top-level fields of ``cls`` that hold secrets (``SecretStr`` and the like), nested blocks excepted."""
    names = {path.split(".")[0] for path in cls.model_json_schema().get("secret_fields", [])}
    return frozenset(name for name in names if not holds_block(cls, name))


def user_fields(cls: type[Block]) -> list[str]:
    return [name for name in cls.model_fields if name not in Block.model_fields]


def legacy_flat_fields(cls: type[Block]) -> Mapping[str, str]:
    """Fields a block once had at its top level → the field that holds them now (none for most blocks)."""
    found: Mapping[str, str] = getattr(cls, "_legacy_flat_fields", None) or {}
    return found


def admits(annotation: Any, accepts: Any) -> bool:
    """Whether a type annotation (unions, Optional, Annotated and generics included) admits a type that
    ``accepts(tp)`` says yes to."""
    if accepts(annotation):
        return True
    return any(admits(arg, accepts) for arg in get_args(annotation))


def _is_block_type(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Block)


def is_json_type(tp: Any) -> bool:
    if tp in (list, dict) or get_origin(tp) in (list, dict):
        return True
    return isinstance(tp, type) and issubclass(tp, BaseModel) and not issubclass(tp, Block)


def holds_block(cls: type[Block], name: str) -> bool:
    return admits(cls.model_fields[name].annotation, _is_block_type)


# ---------------------------------------------------------------------------------------------- problems


class Problems:
    """Problems found in the file, reported together in file order as one error; identical ones once."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.items: list[tuple[int, str]] = []

    def add(self, line: int, message: str) -> None:
        self.items.append((line, message))

    def raise_if_any(self, secrets: list[str] | None = None) -> None:
        if not self.items:
            return
        counts: dict[tuple[int, str], int] = {}
        for item in sorted(self.items, key=lambda item: item[0]):
            counts[item] = counts.get(item, 0) + 1
        lines = [
            f"{self.path}:{line}: {message}" + (f" ({n} times)" if n > 1 else "")
            for (line, message), n in counts.items()
        ]
        if len(lines) == 1:
            text = f"{lines[0]}; {NOTHING_SAVED}"
        else:
            text = "\n".join([*lines, f"{len(lines)} problems; {NOTHING_SAVED}"])
        raise ConfigError(redact(text, secrets or []))


# Shorter strings are not redacted from messages: replacing them would garble the text, and a secret that
# short is no secret.
_MIN_REDACT_CHARS = 4


def redact(text: str, secrets: list[str]) -> str:
    """``text`` with every known secret value replaced (a last guard: messages are built without them)."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= _MIN_REDACT_CHARS:
            text = text.replace(secret, "***")
    return text


# ------------------------------------------------------------------------------------------------ the file


def _compose(path: Path) -> yaml.Node | None:
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read the blocks file ({exc.strerror}); {NOTHING_SAVED}") from None
    try:
        return compose(text)
    except YamlPositionError as exc:
        line = f":{exc.line}" if exc.line is not None else ""
        problem = exc.problem or type(exc.cause).__name__
        raise ConfigError(f"{where}{line}: not valid YAML ({problem}); {NOTHING_SAVED}") from None


def parse_blocks_file(path: str | Path) -> list[BlockSpec]:
    """Read and check a blocks file without looking at the environment.

    Checks the layout, names, block type slugs, field names, that secret fields are templates and that
    templates are environment templates. Raises ``ConfigError`` (``file:line: ...``) listing every problem.
    """
    path = Path(path)
    root = _compose(path)
    problems = Problems(str(path))
    reader = _Reader(problems)
    entries_node: yaml.Node | None = None
    if isinstance(root, yaml.MappingNode):
        pairs = reader.pairs(root)
        entries_node = pairs["blocks"][1] if "blocks" in pairs else None
        for key, (key_node, _) in pairs.items():
            if key != "blocks":
                problems.add(_line(key_node), f"unknown top-level key {key!r}; expected only 'blocks'")
    if not isinstance(entries_node, yaml.SequenceNode):
        at = entries_node or root
        problems.add(
            _line(at) if at is not None else 1,
            "expected a top-level 'blocks:' list of entries with type, name, when and fields",
        )
        problems.raise_if_any()
        return []
    specs = [spec for node in entries_node.value if (spec := reader.entry(node, parent=None)) is not None]
    _check_unique(specs, problems)
    problems.raise_if_any()
    return specs


def _check_unique(specs: list[BlockSpec], problems: Problems) -> None:
    seen: dict[str, int] = {}
    for spec in specs:
        for item in spec.walk():
            if item.ref in seen:
                problems.add(
                    item.line,
                    f"{item.label()} is defined twice (first at line {seen[item.ref]}); "
                    "give each block document one entry",
                )
            else:
                seen[item.ref] = item.line


class _Reader:
    """Reads entries from YAML nodes, recording the problems it finds (one YAML loader for the file)."""

    def __init__(self, problems: Problems) -> None:
        self.problems = problems
        self.loader = yaml.SafeLoader("")

    def pairs(self, node: yaml.MappingNode) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        self.loader.flatten_mapping(node)  # YAML merge keys (<<: *anchor)
        pairs: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = self.loader.construct_object(key_node)
            if not isinstance(key, str):
                self.problems.add(_line(key_node), f"found key {key!r}, expected a string key")
                continue
            if key in pairs:
                self.problems.add(_line(key_node), f"key {key!r} appears twice")
            pairs[key] = (key_node, value_node)
        return pairs

    def scalar_str(self, node: yaml.Node) -> str | None:
        if not isinstance(node, yaml.ScalarNode):
            return None
        value = self.loader.construct_object(node)
        return value if isinstance(value, str) else None

    def entry(self, node: yaml.Node, parent: str | None) -> BlockSpec | None:
        """One entry (top-level or nested); ``None`` after recording the problems that make it unusable."""
        line = _line(node)
        within = f" (nested in {parent})" if parent else ""
        if not isinstance(node, yaml.MappingNode):
            self.problems.add(line, f"expected an entry with type, name, when and fields{within}")
            return None
        pairs = self.pairs(node)
        for key, (key_node, _) in pairs.items():
            if key not in ENTRY_KEYS:
                self.problems.add(
                    _line(key_node), f"unknown key {key!r}; an entry has type, name, when and fields"
                )
        slug, name = self._type_and_name(pairs, line, within)
        when = self._when(pairs)
        if not slug or not name:
            return None
        label = f"block {name!r} ({slug})"
        try:
            cls = block_class(slug)
        except KeyError:
            self.problems.add(
                _line(pairs["type"][1]),
                f"{label}: unknown block type {slug!r}; known types: {', '.join(known_slugs())}",
            )
            return None
        fields_node = pairs["fields"][1] if "fields" in pairs else None
        if fields_node is None or (
            isinstance(fields_node, yaml.ScalarNode) and self.loader.construct_object(fields_node) is None
        ):
            return BlockSpec(slug, name, line, cls, when)
        if not isinstance(fields_node, yaml.MappingNode):
            self.problems.add(
                _line(fields_node), f"{label}: 'fields' must be a mapping of field names to values"
            )
            return None
        fields, nested = self._fields(cls, fields_node, label, slug)
        return BlockSpec(slug, name, line, cls, when, fields, nested)

    def _type_and_name(
        self, pairs: dict[str, tuple[yaml.Node, yaml.Node]], line: int, within: str
    ) -> tuple[str | None, str | None]:
        slug = self.scalar_str(pairs["type"][1]) if "type" in pairs else None
        name = self.scalar_str(pairs["name"][1]) if "name" in pairs else None
        if not slug:
            self.problems.add(
                line, f"entry without a 'type' (a block type slug such as nluflow-rasa-backend){within}"
            )
        if not name or not _NAME_RE.fullmatch(name):
            found = f"name {name!r}" if name else "no name"
            self.problems.add(
                _line(pairs["name"][1]) if "name" in pairs else line,
                f"{found}{within}: a block document name has lowercase letters, digits and dashes only",
            )
        return slug, name

    def _when(self, pairs: dict[str, tuple[yaml.Node, yaml.Node]]) -> str | None:
        if "when" not in pairs:
            return None
        when = self.scalar_str(pairs["when"][1])
        if not when or not ENV_NAME_RE.fullmatch(when):
            self.problems.add(
                _line(pairs["when"][1]), "'when' must name an environment variable, e.g. NLUFLOW_RASA_URL"
            )
            return None
        return when

    def _fields(
        self, cls: type[Block], fields_node: yaml.MappingNode, label: str, slug: str
    ) -> tuple[dict[str, FieldSpec], dict[str, BlockSpec]]:
        known = user_fields(cls)
        legacy = legacy_flat_fields(cls)
        fields: dict[str, FieldSpec] = {}
        nested: dict[str, BlockSpec] = {}
        flat: dict[str, dict[str, tuple[Any, int]]] = {}  # holder field → legacy key → (value, line)
        for fname, (key_node, value_node) in self.pairs(fields_node).items():
            fline = _line(key_node)
            if fname not in known and fname in legacy:
                value = self.loader.construct_object(value_node, deep=True)
                self._check_templates(label, fname, fline, value)
                flat.setdefault(legacy[fname], {})[fname] = (value, fline)
                continue
            if fname not in known:
                self.problems.add(
                    fline, f"{label}: unknown field {fname!r}; fields of {slug}: {', '.join(known)}"
                )
                continue
            if holds_block(cls, fname) and isinstance(value_node, yaml.MappingNode):
                child = self.entry(value_node, parent=label)
                if child is not None:
                    nested[fname] = child
                continue
            fields[fname] = self._field(cls, label, fname, fline, value_node)
        for holder, items in flat.items():
            fields[holder] = self._merge_flat(label, holder, fields.get(holder), items)
        return fields, nested

    def _field(
        self, cls: type[Block], label: str, fname: str, fline: int, value_node: yaml.Node
    ) -> FieldSpec:
        value = self.loader.construct_object(value_node, deep=True)
        key_lines: dict[str, int] = {}
        if isinstance(value_node, yaml.MappingNode) and isinstance(value, Mapping):
            key_lines = {str(self.loader.construct_object(key)): _line(key) for key, _ in value_node.value}
        spec = FieldSpec(value, fline, key_lines)
        self._check_templates(label, fname, fline, value)
        if fname in secret_fields(cls) and value is not None and not spec.variables():
            self.problems.add(
                fline,
                f"{label}, field {fname!r} is a secret and holds a literal value; expected a template "
                "such as '{{ $NLUFLOW_TOKEN }}' so that no secret is written into the file "
                "(the value is not shown)",
            )
        return spec

    def _check_templates(self, label: str, fname: str, fline: int, value: Any) -> None:
        for template, raw in placeholders(value):
            if not raw.startswith("$") or not ENV_NAME_RE.fullmatch(raw[1:]):
                self.problems.add(
                    fline,
                    f"{label}, field {fname!r}: template {template} is not an environment template; "
                    "expected '{{ $NAME }}'",
                )

    def _merge_flat(
        self, label: str, holder: str, written: FieldSpec | None, items: dict[str, tuple[Any, int]]
    ) -> FieldSpec:
        """Legacy top-level fields read as keys of ``holder`` (merged with a ``holder:`` mapping if any)."""
        value: dict[str, Any] = {}
        key_lines: dict[str, int] = {}
        if written is not None and isinstance(written.value, Mapping):
            value, key_lines = dict(written.value), dict(written.key_lines)
        elif written is not None:
            self.problems.add(
                written.line,
                f"{label}, field {holder!r}: expected a mapping of its fields when {', '.join(items)} "
                "are also given at the top level",
            )
        for key, (item, line) in items.items():
            if key in value:
                self.problems.add(
                    line, f"{label}: field {key!r} is given twice, at the top level and under {holder!r}"
                )
                continue
            value[key], key_lines[key] = item, line
        first = written.line if written is not None else min(key_lines.values())
        return FieldSpec(value, first, key_lines)
