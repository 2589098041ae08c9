"""The relay's configuration: the shared secret, header names, limits and the Label Studio project routes."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from nluflow.apps.relay_events import DEFAULT_SIGNATURE_HEADER, DEFAULT_TIMESTAMP_HEADER
from nluflow.errors import ConfigError
from nluflow.sources.base import LABEL_STUDIO_SLUG, SOURCE_SLUGS, is_source_ref
from nluflow.store import ID_PATTERN

DEFAULT_SECRET_HEADER = "X-Relay-Secret"
DEFAULT_SIGNATURE_TOLERANCE_SECONDS = 300  # Stripe's and Slack's window: a signed body is good for 5 minutes
DEFAULT_REPLAY_MEMORY = 10_000  # delivery keys remembered (an LRU): ~1-2 MB at most
DEFAULT_SECRET_ENV = "NLUFLOW_RELAY_SECRET"
# Label Studio bodies are 3-8 KB per task; a bulk ANNOTATIONS_CREATED over thousands of tasks is megabytes.
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
MIN_SECRET_CHARS = 16


class LabelStudioRoute(BaseModel):
    """Where the annotations of one Label Studio project go: an nluflow project and the source it reads.

    ``source`` names the ``LabelStudioSource`` block the retrain exports the project through: a block name
    (``bookings``, read as ``nluflow-label-studio-source/bookings``) or a full source reference. ``data`` (a
    path) is still accepted instead, for data that something else exports; give exactly one of the two.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    project: str = Field(pattern=ID_PATTERN, description="The nluflow project to retrain.")
    source: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Source block: '<name>' of a LabelStudioSource, or '<source-slug>/<name>'.",
    )
    data: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="A data path handed to the retrain instead of a source (e.g. where an export lands).",
    )

    @field_validator("source")
    @classmethod
    def _source_reference(cls, value: str | None) -> str | None:
        if value is None:
            return None
        ref = value if "/" in value else f"{LABEL_STUDIO_SLUG}/{value}"
        if not is_source_ref(ref):
            raise ValueError(
                f"{value!r} is not a source block; expected a block name or "
                f"'<{'|'.join(SOURCE_SLUGS)}>/<block-name>'"
            )
        return ref

    @model_validator(mode="after")
    def _one_target(self) -> LabelStudioRoute:
        if (self.source is None) == (self.data is None):
            raise ValueError("give exactly one of 'source' (a LabelStudioSource block) and 'data' (a path)")
        return self

    @property
    def target(self) -> str:
        """What the retrain's ``data`` gets: the source reference, or the path."""
        return self.source or self.data or ""


class RelayConfig(BaseModel):
    """The relay's shared secret, header names, size limit and Label Studio project routes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    secret: SecretStr = Field(description="Shared secret: the header value, and the HMAC key.")
    header: str = Field(
        default=DEFAULT_SECRET_HEADER,
        pattern=r"^[A-Za-z0-9_-]+$",  # the names Label Studio accepts for custom webhook headers
        description="Header carrying the shared secret.",
    )
    signature_header: str = Field(
        default=DEFAULT_SIGNATURE_HEADER,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Header carrying the HMAC-SHA256 signature of generic payloads.",
    )
    timestamp_header: str = Field(
        default=DEFAULT_TIMESTAMP_HEADER,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Header carrying the Unix time (seconds) a generic payload was signed at.",
    )
    signature_tolerance_seconds: int = Field(
        default=DEFAULT_SIGNATURE_TOLERANCE_SECONDS,
        gt=0,
        description="How far a generic payload's signed timestamp may be from the relay's clock.",
    )
    replay_memory: int = Field(
        default=DEFAULT_REPLAY_MEMORY,
        gt=0,
        description="Delivery keys remembered to refuse replays (an LRU; bounded memory, lost on restart).",
    )
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, gt=0, description="Largest accepted body.")
    label_studio: dict[str, LabelStudioRoute] = Field(
        default_factory=dict, description="Label Studio project id → nluflow project and data location."
    )

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < MIN_SECRET_CHARS:
            raise ValueError(f"the shared secret must have at least {MIN_SECRET_CHARS} characters")
        return value

    @field_validator("label_studio", mode="before")
    @classmethod
    def _ids_as_text(cls, value: object) -> object:
        # YAML reads `1:` as an int key; Label Studio ids arrive as ints in JSON too. Compare as text.
        if isinstance(value, Mapping):
            return {str(k): v for k, v in value.items()}
        return value

    @classmethod
    def from_file(cls, path: str | Path, environ: Mapping[str, str] | None = None) -> RelayConfig:
        """Read a YAML/JSON config; the secret comes from the environment variable named by ``secret_env``.

        The file never holds the secret (so it can live in the repo)::

            secret_env: NLUFLOW_RELAY_SECRET      # default
            header: X-Relay-Secret                # default
            label_studio:
              1: {project: bookings, source: bookings}   # LabelStudioSource block 'bookings'
              2: {project: support, source: nluflow-label-studio-source/support-ls}
        """
        env = os.environ if environ is None else environ
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(
                f"{path}: cannot read the relay config ({exc.strerror}); relay not started"
            ) from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML/JSON ({exc}); relay not started") from exc
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(
                f"{path}: found a {type(raw).__name__}, expected a mapping (label_studio, header, ...); "
                "relay not started"
            )
        if "secret" in raw:
            raise ConfigError(
                f"{path}: found a 'secret' key; the secret must not be written in a file: put it in "
                f"the environment variable named by 'secret_env' (default {DEFAULT_SECRET_ENV}); "
                "relay not started"
            )
        secret_env = str(raw.pop("secret_env", DEFAULT_SECRET_ENV))
        secret = env.get(secret_env)
        if not secret:
            raise ConfigError(
                f"{path}: environment variable {secret_env} is not set; expected the shared secret "
                f"(at least {MIN_SECRET_CHARS} characters) also configured on the webhook; relay not started"
            )
        try:
            return cls.model_validate({**raw, "secret": secret})
        except ValidationError as exc:
            raise ConfigError(f"{path}: {validation_problems(exc)}; relay not started") from None


def validation_problems(exc: ValidationError) -> str:
    """Validation errors as ``field: message`` without the input values (they may hold secrets)."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "payload"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)
