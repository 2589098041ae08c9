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

Reading and checking the file is ``blocks.blocks_file``; this module applies the environment, builds every
block and saves them. Every block is built and validated by its own class before anything is saved: one bad
value and nothing is saved. An existing document is kept unless ``overwrite`` is given. Reports, logs and
errors name variables and fields, never a secret value.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from uuid import UUID

from prefect.blocks.core import Block
from prefect.exceptions import ObjectNotFound
from prefect.utilities.templating import PLACEHOLDER_CAPTURE_REGEX
from pydantic import ValidationError

from blocks.blocks_file import (
    DEFAULT_FILE,
    NOTHING_SAVED,
    BlockSpec,
    FieldSpec,
    Problems,
    admits,
    is_json_type,
    parse_blocks_file,
    redact,
    secret_fields,
    user_fields,
)
from nluflow.errors import NluflowError

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_FILE", "BlockOutcome", "ProvisionReport", "create_blocks"]

# Credentials that prefect-aws keeps as plain ``str``: never shown in a report, like a SecretStr.
_UNMARKED_SECRETS = frozenset({"aws_access_key_id", "aws_session_token"})
_SHOW_CHARS = 60

Action = Literal["created", "updated", "kept", "skipped"]


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


def _build(spec: BlockSpec, env: Mapping[str, str], problems: Problems, secrets: list[str]) -> _Built:
    """Render and validate one entry and its nested ones; problems are recorded, nothing is saved."""
    built = _Built(spec, shown={})
    if spec.when and not env.get(spec.when):
        built.skipped = f"{spec.when} is not set"
        return built
    before = len(problems.items)
    data = _field_values(built, env, problems, secrets)
    data.update(_nested_values(built, env, problems, secrets))
    if len(problems.items) > before:
        return built  # validating now would only repeat what is already reported
    try:
        instance = spec.block_class(**data)
    except ValidationError as exc:
        for error in exc.errors(include_input=False, include_url=False):
            _add_validation_problem(spec, error, problems)
        return built
    except Exception as exc:  # a block's own initialisation code; its message is redacted later
        problems.add(spec.line, f"{spec.label()}: {type(exc).__name__}: {exc}")
        return built
    built.relink(instance)
    return built


def _required(cls: type[Block]) -> set[str]:
    return {name for name in user_fields(cls) if cls.model_fields[name].is_required()}


def _field_values(
    built: _Built, env: Mapping[str, str], problems: Problems, secrets: list[str]
) -> dict[str, Any]:
    """The entry's plain fields with the environment applied (left out: unset templates, problems)."""
    spec, cls = built.spec, built.spec.block_class
    hidden = secret_fields(cls) | _UNMARKED_SECRETS
    data: dict[str, Any] = {}
    for fname, fspec in spec.fields.items():
        if fname in hidden:
            secrets.extend(env[var] for var in fspec.variables() if env.get(var))
        value = _field_value(spec, fname, fspec, env, problems)
        if isinstance(value, _Omitted):
            continue
        data[fname] = value
        built.shown[fname] = "set" if fname in hidden else _show(value)
    return data


def _field_value(
    spec: BlockSpec, fname: str, fspec: FieldSpec, env: Mapping[str, str], problems: Problems
) -> Any:
    """One field's value, or ``_Omitted`` when it is left out (after recording any problem)."""
    cls = spec.block_class
    where = f"{spec.label()}, field {fname!r}"
    try:
        value = _render(fspec.value, env)
    except _RenderError as exc:
        problems.add(fspec.line, f"{where}: {exc}")
        return _Omitted("")
    if isinstance(value, _Omitted):
        if fname in _required(cls):
            problems.add(fspec.line, f"{where}: required, but {value.var} is not set; set {value.var}")
        return value
    if (
        isinstance(value, str)
        and value.lstrip()[:1] in ("[", "{")
        and admits(cls.model_fields[fname].annotation, is_json_type)
    ):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            hint = "; check " + ", ".join(fspec.variables()) if fspec.variables() else ""
            problems.add(fspec.line, f"{where}: not valid JSON ({exc.msg} at char {exc.pos}){hint}")
            return _Omitted("")
    if isinstance(value, Mapping) and not value and isinstance(fspec.value, Mapping) and fspec.value:
        return _Omitted("")  # every key was an unset template: the default applies
    return value


def _nested_values(
    built: _Built, env: Mapping[str, str], problems: Problems, secrets: list[str]
) -> dict[str, Any]:
    """The entry's nested blocks, built first (a skipped one is left out, an error if it is required)."""
    spec = built.spec
    data: dict[str, Any] = {}
    for fname, child_spec in spec.nested.items():
        child = _build(child_spec, env, problems, secrets)
        built.children[fname] = child
        if child.skipped is not None:
            if fname in _required(spec.block_class):
                problems.add(
                    child_spec.line,
                    f"{spec.label()}, field {fname!r}: required, but nested {child_spec.label()} is "
                    f"skipped ({child.skipped}); set {child_spec.when}",
                )
            continue
        if child.instance is not None:
            data[fname] = child.instance
            built.shown[fname] = child_spec.ref
    return data


def _add_validation_problem(spec: BlockSpec, error: Mapping[str, Any], problems: Problems) -> None:
    """One pydantic error as ``file:line``: the line of the field (or of its key, in a nested model)."""
    loc = [str(part) for part in error.get("loc", ())]
    top = loc[0] if loc else ""
    key = loc[1] if len(loc) > 1 else None
    fspec = spec.fields.get(top)
    if fspec is not None:
        line = fspec.line_of(key)
        variables = fspec.variables(key if key in fspec.key_lines else None)
    else:
        line = spec.nested[top].line if top in spec.nested else spec.line
        variables = []
    hint = f"; check {', '.join(variables)}" if variables else ""
    if error.get("type") == "missing" and top not in spec.fields:
        hint = f"; add it to the entry's fields in {problems.path}"
    subject = f", field {'.'.join(loc)!r}" if loc else ""
    problems.add(line, f"{spec.label()}{subject}: {_describe_error(error)}{hint}")


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
    env = os.environ if env is None else env
    where = str(path)
    specs = parse_blocks_file(path)
    problems = Problems(where)
    secrets: list[str] = []
    built = [_build(spec, env, problems, secrets) for spec in specs]
    problems.raise_if_any(secrets)

    order = [item for top in built for item in _handled(top)]
    outcomes = _save_all(order, where, secrets, overwrite=overwrite, dry_run=dry_run)
    report = ProvisionReport(where, tuple(outcomes), dry_run)
    for line in report.lines():
        logger.info("%s", redact(line, secrets))
    return report


def _save_all(
    order: list[_Built], where: str, secrets: list[str], *, overwrite: bool, dry_run: bool
) -> list[BlockOutcome]:
    """Save (in a dry run: only look up) every built block in order; an API failure names what was saved."""
    from prefect.client.orchestration import get_client

    outcomes: list[BlockOutcome] = []
    done: list[str] = []
    try:
        with get_client(sync_client=True) as client:
            for item in order:
                outcomes.append(_save_one(client, item, done, overwrite=overwrite, dry_run=dry_run))
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
    return outcomes


def _save_one(
    client: SyncPrefectClient, item: _Built, done: list[str], *, overwrite: bool, dry_run: bool
) -> BlockOutcome:
    spec = item.spec
    if item.skipped is not None:
        return BlockOutcome(spec.slug, spec.name, "skipped", spec.line, item.skipped)
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
    return BlockOutcome(spec.slug, spec.name, action, spec.line, "", dict(item.shown))


def _handled(top: _Built) -> Iterator[_Built]:
    """Entries in save order; the nested entries of a skipped entry are not looked at."""
    if top.skipped is not None:
        yield top
        return
    for child in top.children.values():
        yield from _handled(child)
    yield top
