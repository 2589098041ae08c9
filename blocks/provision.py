"""Block documents from environment variables: ``blocks.yaml`` names the blocks, the environment the values.

``make blocks`` (``nluflow blocks create``) reads a file such as::

    blocks:
      - type: nluflow-rasa-backend        # the block type slug
        name: rasa                         # the block document name: lowercase letters, digits, dashes
        when: NLUFLOW_RASA_URL             # created only when this variable is set and non-empty
        fields:
          url: "{{ $NLUFLOW_RASA_URL }}"
          token: "{{ $NLUFLOW_RASA_TOKEN }}"

Templates use Prefect's syntax for environment variables (as in ``prefect.yaml``). The rules:

- A field that is exactly one template of an unset or empty variable is left out, so the block's default
  applies; when the field is required, that is an error naming the variable.
- A template inside a longer string needs its variable set.
- A secret field (``SecretStr``) must be given by a template: a literal value is refused, so the file never
  holds a secret.
- A JSON-looking string (``[...]``/``{...}``) for a list, dict or model field is parsed as JSON.
- A field that holds a block (the S3 store's bucket, the bucket's credentials) is a nested entry with its own
  ``type``, ``name``, ``fields`` and optional ``when``; it is saved first, under its own name, and the parent
  refers to that document.

Every block is built and validated by its own class before anything is saved: one bad value and nothing is
saved. An existing document is kept unless ``overwrite`` is given. Reports, logs and errors name variables and
fields, never a secret value.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin
from uuid import UUID

import yaml
from prefect.blocks.core import Block, UnknownBlockType
from prefect.exceptions import ObjectNotFound
from prefect.types.names import LOWERCASE_LETTERS_NUMBERS_AND_DASHES_ONLY_REGEX
from prefect.utilities.dispatch import get_registry_for_type
from prefect.utilities.templating import PLACEHOLDER_CAPTURE_REGEX
from pydantic import BaseModel, ValidationError

from nluflow.errors import ConfigError, NluflowError

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

logger = logging.getLogger(__name__)

DEFAULT_FILE = "blocks.yaml"
ENTRY_KEYS = frozenset({"type", "name", "when", "fields"})
NOTHING_SAVED = "nothing was saved"

_NAME_RE = re.compile(LOWERCASE_LETTERS_NUMBERS_AND_DASHES_ONLY_REGEX)
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Credentials that prefect-aws keeps as plain ``str``: never shown in a report, like a SecretStr.
_UNMARKED_SECRETS = frozenset({"aws_access_key_id", "aws_session_token"})
# Shorter strings are not redacted from messages: replacing them would garble the text, and a secret that
# short is no secret.
_MIN_REDACT_CHARS = 4
_SHOW_CHARS = 60

Action = Literal["created", "updated", "kept", "skipped"]


# ------------------------------------------------------------------------------------------------ the file


@dataclass(frozen=True)
class FieldSpec:
    """One field of an entry as written in the file (templates not yet applied)."""

    value: Any
    line: int

    def variables(self) -> list[str]:
        """The environment variables the field's templates name, in order of appearance."""
        return [name.removeprefix("$") for _, name in _placeholders(self.value)]


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


def _placeholders(value: Any) -> Iterator[tuple[str, str]]:
    """(template, name as written, e.g. ``$NLUFLOW_RASA_URL``) of every template in a value."""
    if isinstance(value, str):
        for match in PLACEHOLDER_CAPTURE_REGEX.finditer(value):
            yield match.group(1), match.group(2)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _placeholders(item)
    elif isinstance(value, list):
        for item in value:
            yield from _placeholders(item)


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
    return frozenset(name for name in names if not _holds_block(cls, name))


def _user_fields(cls: type[Block]) -> list[str]:
    return [name for name in cls.model_fields if name not in Block.model_fields]


def _admits(annotation: Any, accepts: Any) -> bool:
    """Whether a type annotation (unions, Optional, Annotated and generics included) admits a type that
    ``accepts(tp)`` says yes to."""
    if accepts(annotation):
        return True
    return any(_admits(arg, accepts) for arg in get_args(annotation))


def _is_block_type(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Block)


def _is_json_type(tp: Any) -> bool:
    if tp in (list, dict) or get_origin(tp) in (list, dict):
        return True
    return isinstance(tp, type) and issubclass(tp, BaseModel) and not issubclass(tp, Block)


def _holds_block(cls: type[Block], name: str) -> bool:
    return _admits(cls.model_fields[name].annotation, _is_block_type)


class _Problems:
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


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def parse_blocks_file(path: str | Path) -> list[BlockSpec]:
    """Read and check a blocks file without looking at the environment.

    Checks the layout, names, block type slugs, field names, that secret fields are templates and that
    templates are environment templates. Raises ``ConfigError`` (``file:line: ...``) listing every problem.
    """
    path = Path(path)
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read the blocks file ({exc.strerror}); {NOTHING_SAVED}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{where}{line}: not valid YAML ({problem}); {NOTHING_SAVED}") from None
    problems = _Problems(where)
    loader = yaml.SafeLoader("")
    entries_node: yaml.Node | None = None
    if isinstance(root, yaml.MappingNode):
        pairs = _pairs(loader, root, problems)
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
    specs: list[BlockSpec] = []
    for node in entries_node.value:
        spec = _parse_entry(loader, node, problems, parent=None)
        if spec is not None:
            specs.append(spec)
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
    problems.raise_if_any()
    return specs


def _pairs(
    loader: yaml.SafeLoader, node: yaml.MappingNode, problems: _Problems
) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    loader.flatten_mapping(node)  # YAML merge keys (<<: *anchor)
    pairs: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node)
        if not isinstance(key, str):
            problems.add(_line(key_node), f"found key {key!r}, expected a string key")
            continue
        if key in pairs:
            problems.add(_line(key_node), f"key {key!r} appears twice")
        pairs[key] = (key_node, value_node)
    return pairs


def _scalar_str(loader: yaml.SafeLoader, node: yaml.Node) -> str | None:
    if not isinstance(node, yaml.ScalarNode):
        return None
    value = loader.construct_object(node)
    return value if isinstance(value, str) else None


def _parse_entry(
    loader: yaml.SafeLoader, node: yaml.Node, problems: _Problems, parent: str | None
) -> BlockSpec | None:
    """One entry (top-level or nested); ``None`` after recording the problems that make it unusable."""
    line = _line(node)
    within = f" (nested in {parent})" if parent else ""
    if not isinstance(node, yaml.MappingNode):
        problems.add(line, f"expected an entry with type, name, when and fields{within}")
        return None
    pairs = _pairs(loader, node, problems)
    for key, (key_node, _) in pairs.items():
        if key not in ENTRY_KEYS:
            problems.add(_line(key_node), f"unknown key {key!r}; an entry has type, name, when and fields")
    slug = _scalar_str(loader, pairs["type"][1]) if "type" in pairs else None
    name = _scalar_str(loader, pairs["name"][1]) if "name" in pairs else None
    if not slug:
        problems.add(line, f"entry without a 'type' (a block type slug such as nluflow-rasa-backend){within}")
    if not name or not _NAME_RE.fullmatch(name):
        found = f"name {name!r}" if name else "no name"
        problems.add(
            _line(pairs["name"][1]) if "name" in pairs else line,
            f"{found}{within}: a block document name has lowercase letters, digits and dashes only",
        )
    when: str | None = None
    if "when" in pairs:
        when = _scalar_str(loader, pairs["when"][1])
        if not when or not _ENV_NAME_RE.fullmatch(when):
            problems.add(
                _line(pairs["when"][1]), "'when' must name an environment variable, e.g. NLUFLOW_RASA_URL"
            )
            when = None
    if not slug or not name:
        return None
    label = f"block {name!r} ({slug})"
    try:
        cls = block_class(slug)
    except KeyError:
        problems.add(
            _line(pairs["type"][1]),
            f"{label}: unknown block type {slug!r}; known types: {', '.join(known_slugs())}",
        )
        return None
    fields: dict[str, FieldSpec] = {}
    nested: dict[str, BlockSpec] = {}
    fields_node = pairs["fields"][1] if "fields" in pairs else None
    if fields_node is not None and not (
        isinstance(fields_node, yaml.ScalarNode) and loader.construct_object(fields_node) is None
    ):
        if not isinstance(fields_node, yaml.MappingNode):
            problems.add(_line(fields_node), f"{label}: 'fields' must be a mapping of field names to values")
            return None
        known = _user_fields(cls)
        secrets = secret_fields(cls)
        for fname, (key_node, value_node) in _pairs(loader, fields_node, problems).items():
            fline = _line(key_node)
            if fname not in known:
                problems.add(fline, f"{label}: unknown field {fname!r}; fields of {slug}: {', '.join(known)}")
                continue
            if _holds_block(cls, fname) and isinstance(value_node, yaml.MappingNode):
                child = _parse_entry(loader, value_node, problems, parent=label)
                if child is not None:
                    nested[fname] = child
                continue
            value = loader.construct_object(value_node, deep=True)
            spec = FieldSpec(value, fline)
            for template, raw in _placeholders(value):
                if not raw.startswith("$") or not _ENV_NAME_RE.fullmatch(raw[1:]):
                    problems.add(
                        fline,
                        f"{label}, field {fname!r}: template {template} is not an environment template; "
                        "expected '{{ $NAME }}'",
                    )
            if fname in secrets and value is not None and not spec.variables():
                problems.add(
                    fline,
                    f"{label}, field {fname!r} is a secret and holds a literal value; expected a template "
                    "such as '{{ $NLUFLOW_TOKEN }}' so that no secret is written into the file "
                    "(the value is not shown)",
                )
            fields[fname] = spec
    return BlockSpec(slug, name, line, cls, when, fields, nested)


# ------------------------------------------------------------------------------------------ the environment


class _Omitted:
    """A field whose whole value is one template of an unset variable: left out, the default applies."""

    def __init__(self, var: str) -> None:
        self.var = var


class _RenderError(Exception):
    pass


def _render(value: Any, env: Mapping[str, str]) -> Any:
    """Apply the environment to the templates of a value (strings, lists and mappings, recursively)."""
    if isinstance(value, str):
        matches = list(PLACEHOLDER_CAPTURE_REGEX.finditer(value))
        if not matches:
            return value
        if len(matches) == 1 and matches[0].group(1) == value:
            var = matches[0].group(2).removeprefix("$")
            return env.get(var) or _Omitted(var)

        def substitute(match: re.Match[str]) -> str:
            var = match.group(2).removeprefix("$")
            found = env.get(var)
            if not found:
                raise _RenderError(f"template {match.group(1)} inside {value!r} needs {var}; set {var}")
            return found

        return PLACEHOLDER_CAPTURE_REGEX.sub(substitute, value)  # one pass: values are never re-templated
    if isinstance(value, Mapping):
        rendered = {key: _render(item, env) for key, item in value.items()}
        return {key: item for key, item in rendered.items() if not isinstance(item, _Omitted)}
    if isinstance(value, list):
        items = [_render(item, env) for item in value]
        for item in items:
            if isinstance(item, _Omitted):
                raise _RenderError(f"list item {{{{ ${item.var} }}}} needs {item.var}; set {item.var}")
        return items
    return value


def redact(text: str, secrets: list[str]) -> str:
    """``text`` with every known secret value replaced (a last guard: messages are built without them)."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= _MIN_REDACT_CHARS:
            text = text.replace(secret, "***")
    return text


def _describe_error(error: Mapping[str, Any]) -> str:
    message = str(error.get("msg", "invalid value"))
    if error.get("type") == "missing":
        return "required, but not given"
    for prefix, replacement in (("Input should be ", "expected "), ("Value error, ", "")):
        if message.startswith(prefix):
            message = replacement + message[len(prefix) :]
    return message


def _show(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= _SHOW_CHARS else text[: _SHOW_CHARS - 1] + "…"


@dataclass
class _Built:
    spec: BlockSpec
    shown: dict[str, str]
    instance: Block | None = None
    children: dict[str, _Built] = field(default_factory=dict)
    skipped: str | None = None  # the reason, when skipped

    def relink(self, instance: Block) -> None:
        """Point at the instances the parent really holds, so saving a child marks the parent's copy."""
        self.instance = instance
        for fname, child in self.children.items():
            held = getattr(instance, fname, None)
            if child.instance is not None and isinstance(held, Block):
                child.relink(held)


def _build(spec: BlockSpec, env: Mapping[str, str], problems: _Problems, secrets: list[str]) -> _Built:
    """Render and validate one entry and its nested ones; problems are recorded, nothing is saved."""
    built = _Built(spec, shown={})
    if spec.when and not env.get(spec.when):
        built.skipped = f"{spec.when} is not set"
        return built
    cls = spec.block_class
    hidden = secret_fields(cls) | _UNMARKED_SECRETS
    required = {name for name in _user_fields(cls) if cls.model_fields[name].is_required()}
    before = len(problems.items)
    data: dict[str, Any] = {}
    for fname, fspec in spec.fields.items():
        where = f"{spec.label()}, field {fname!r}"
        if fname in hidden:
            secrets.extend(env[var] for var in fspec.variables() if env.get(var))
        try:
            value = _render(fspec.value, env)
        except _RenderError as exc:
            problems.add(fspec.line, f"{where}: {exc}")
            continue
        if isinstance(value, _Omitted):
            if fname in required:
                problems.add(fspec.line, f"{where}: required, but {value.var} is not set; set {value.var}")
            continue
        if (
            isinstance(value, str)
            and value.lstrip()[:1] in ("[", "{")
            and _admits(cls.model_fields[fname].annotation, _is_json_type)
        ):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                hint = "; check " + ", ".join(fspec.variables()) if fspec.variables() else ""
                problems.add(fspec.line, f"{where}: not valid JSON ({exc.msg} at char {exc.pos}){hint}")
                continue
        if isinstance(value, Mapping) and not value and isinstance(fspec.value, Mapping) and fspec.value:
            continue  # every key was an unset template: the default applies
        data[fname] = value
        built.shown[fname] = "set" if fname in hidden else _show(value)
    for fname, child_spec in spec.nested.items():
        child = _build(child_spec, env, problems, secrets)
        built.children[fname] = child
        if child.skipped is not None:
            if fname in required:
                problems.add(
                    child_spec.line,
                    f"{spec.label()}, field {fname!r}: required, but nested {child_spec.label()} is "
                    f"skipped ({child.skipped}); set {child_spec.when}",
                )
            continue
        if child.instance is not None:
            data[fname] = child.instance
            built.shown[fname] = child_spec.ref
    if len(problems.items) > before:
        return built  # validating now would only repeat what is already reported
    try:
        instance = cls(**data)
    except ValidationError as exc:
        for error in exc.errors(include_input=False, include_url=False):
            loc = [str(part) for part in error.get("loc", ())]
            top = loc[0] if loc else ""
            fspec_or_none = spec.fields.get(top)
            line = (
                fspec_or_none.line
                if fspec_or_none
                else spec.nested[top].line
                if top in spec.nested
                else spec.line
            )
            variables = fspec_or_none.variables() if fspec_or_none else []
            hint = f"; check {', '.join(variables)}" if variables else ""
            if error.get("type") == "missing" and top not in spec.fields:
                hint = f"; add it to the entry's fields in {problems.path}"
            subject = f", field {'.'.join(loc)!r}" if loc else ""
            problems.add(line, f"{spec.label()}{subject}: {_describe_error(error)}{hint}")
        return built
    except Exception as exc:  # a block's own initialisation code; its message is redacted later
        problems.add(spec.line, f"{spec.label()}: {type(exc).__name__}: {exc}")
        return built
    built.relink(instance)
    return built


# ---------------------------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class BlockOutcome:
    """What happened (or, in a dry run, would happen) to one block document."""

    slug: str
    name: str
    action: Action
    line: int
    reason: str = ""  # why it was skipped
    fields: Mapping[str, str] = field(default_factory=dict)  # given fields; secrets as "set"

    @property
    def ref(self) -> str:
        return f"{self.slug}/{self.name}"

    def describe(self, dry_run: bool = False) -> str:
        verb = {
            "created": "would create" if dry_run else "created",
            "updated": "would update" if dry_run else "updated",
            "kept": "exists (kept)",
            "skipped": f"skipped ({self.reason})",
        }[self.action]
        given = ", ".join(f"{key}={value}" for key, value in self.fields.items())
        # A kept document keeps its stored values: listing the ignored ones would mislead.
        shown = given and self.action in ("created", "updated")
        return f"{self.ref}: {verb}" + (f" [{given}]" if shown else "")


@dataclass(frozen=True)
class ProvisionReport:
    """Per block document, in the order they were handled (nested blocks before their parents)."""

    path: str
    outcomes: tuple[BlockOutcome, ...]
    dry_run: bool = False

    def lines(self) -> list[str]:
        return [outcome.describe(self.dry_run) for outcome in self.outcomes]

    def count(self, action: Action) -> int:
        return sum(outcome.action == action for outcome in self.outcomes)

    def summary(self) -> str:
        words = {"created": "to create", "updated": "to update"} if self.dry_run else {}
        actions: tuple[Action, ...] = ("created", "updated", "kept", "skipped")
        parts = [f"{self.count(a)} {words.get(a, a)}" for a in actions if self.count(a)]
        tail = " (dry run: nothing was saved)" if self.dry_run else ""
        return f"{self.path}: " + (", ".join(parts) or "no blocks") + tail


# ---------------------------------------------------------------------------------------------- the run


def _existing_id(client: SyncPrefectClient, spec: BlockSpec) -> UUID | None:
    try:
        document = client.read_block_document_by_name(spec.name, spec.slug, include_secrets=False)
    except ObjectNotFound:
        return None
    return document.id


def create_blocks(
    path: str | Path = DEFAULT_FILE,
    env: Mapping[str, str] | None = None,
    *,
    overwrite: bool = False,
    dry_run: bool = False,
) -> ProvisionReport:
    """Create the block documents that ``path`` describes, with values from ``env`` (default ``os.environ``).

    Every block is built and validated first; one problem and nothing is saved (``ConfigError``, exit 2).
    Existing documents are kept unless ``overwrite``; ``dry_run`` validates and reports without saving.
    """
    from prefect.client.orchestration import get_client

    env = os.environ if env is None else env
    where = str(path)
    specs = parse_blocks_file(path)
    problems = _Problems(where)
    secrets: list[str] = []
    built = [_build(spec, env, problems, secrets) for spec in specs]
    problems.raise_if_any(secrets)

    order = [item for top in built for item in _handled(top)]
    outcomes: list[BlockOutcome] = []
    done: list[str] = []
    try:
        with get_client(sync_client=True) as client:
            for item in order:
                spec = item.spec
                if item.skipped is not None:
                    outcomes.append(BlockOutcome(spec.slug, spec.name, "skipped", spec.line, item.skipped))
                    continue
                assert item.instance is not None
                existing = _existing_id(client, spec)
                action: Action
                if existing is not None and not overwrite:
                    action = "kept"
                    # A parent saved next refers to the stored document, as it is.
                    item.instance._block_document_id = existing
                    item.instance._block_document_name = spec.name
                else:
                    action = "created" if existing is None else "updated"
                    if not dry_run:
                        item.instance.save(spec.name, overwrite=existing is not None)
                        done.append(spec.ref)
                outcomes.append(BlockOutcome(spec.slug, spec.name, action, spec.line, "", dict(item.shown)))
    except NluflowError:
        raise
    except Exception as exc:
        left = [item.spec.ref for item in order if item.spec.ref not in done and item.skipped is None]
        saved = f"saved before the failure: {', '.join(done)}" if done else NOTHING_SAVED
        raise NluflowError(
            redact(
                f"{where}: the Prefect API failed while creating blocks ({type(exc).__name__}: {exc}); "
                f"{saved}; not saved: {', '.join(left) or 'none'}. Check PREFECT_API_URL and run again.",
                secrets,
            )
        ) from None
    report = ProvisionReport(where, tuple(outcomes), dry_run)
    for line in report.lines():
        logger.info("%s", redact(line, secrets))
    return report


def _handled(top: _Built) -> Iterator[_Built]:
    """Entries in save order; the nested entries of a skipped entry are not looked at."""
    if top.skipped is not None:
        yield top
        return
    for child in top.children.values():
        yield from _handled(child)
    yield top
