"""The training-data schema: one utterance with its intent and entity spans.

Offsets are Python string indices (Unicode code points), ``end`` exclusive, so ``text[start:end] == value``.
Whether spans match is *not* enforced here: the validator reports it as a configurable rule with file:line.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from nluflow.hashing import sha256_text

SUPPORTED_LOCALES: tuple[str, ...] = ("en-US", "de-DE", "fr-FR", "es-ES")
MAX_TOKENS = 512


class Entity(BaseModel):
    """One entity span in an utterance."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start: int = Field(ge=0, description="First code point of the span.")
    end: int = Field(ge=0, description="One past the last code point of the span.")
    entity: str = Field(min_length=1, description="Entity type, e.g. 'city'.")
    value: str = Field(description="The span's text as annotated; normally text[start:end].")


class IntentScore(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    confidence: float


class Parse(BaseModel):
    """One prediction, in Rasa's ``/model/parse`` shape."""

    model_config = ConfigDict(frozen=True)

    text: str
    intent: IntentScore
    intent_ranking: tuple[IntentScore, ...] = ()
    entities: tuple[Entity, ...] = ()
    entities_predicted: bool = Field(
        default=True,
        description="False when the platform returns no entity predictions at all (e.g. Cognigy's NLU "
        "scores): the empty ``entities`` then means unknown, and entity metrics are absent, not 0.",
    )


class Origin(BaseModel):
    """Where an example was read from; used in messages, never in hashes."""

    model_config = ConfigDict(frozen=True)

    path: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.line}" if self.line is not None else self.path


class Example(BaseModel):
    """One annotated utterance."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    text: str = Field(min_length=1, description="The utterance.")
    intent: str = Field(min_length=1, description="The intent label.")
    entities: tuple[Entity, ...] = Field(default=(), description="Entity spans in the utterance.")
    locale: str | None = Field(default=None, description="BCP-47 locale, e.g. 'en-US'.")
    score: float | None = Field(default=None, ge=0.0, le=1.0, description="Annotation confidence score.")
    origin: Origin | None = Field(default=None, exclude=True, description="File and line it came from.")

    def content(self) -> dict[str, Any]:
        """The example as plain JSON (the shared JSONL format), without its origin."""
        out: dict[str, Any] = {
            "text": self.text,
            "intent": self.intent,
            "entities": [e.model_dump() for e in self.entities],
        }
        if self.locale is not None:
            out["locale"] = self.locale
        if self.score is not None:
            out["score"] = self.score
        return out

    def where(self) -> str:
        return str(self.origin) if self.origin is not None else "<memory>"


class Dataset(BaseModel):
    """An ordered collection of examples with a content hash."""

    model_config = ConfigDict(frozen=True)

    examples: tuple[Example, ...] = ()
    source: str = Field(default="<memory>", description="Where the data came from (paths), for messages.")
    skipped: dict[str, int] = Field(
        default_factory=dict, description="Blocks the loader skipped on purpose, by kind (e.g. 'synonym': 3)."
    )

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[Example]:  # type: ignore[override]
        return iter(self.examples)

    @property
    def texts(self) -> list[str]:
        return [e.text for e in self.examples]

    @property
    def intents(self) -> list[str]:
        return [e.intent for e in self.examples]

    def intent_counts(self) -> Counter[str]:
        return Counter(e.intent for e in self.examples)

    def entity_types(self) -> list[str]:
        return sorted({ent.entity for e in self.examples for ent in e.entities})

    def to_jsonl(self) -> str:
        """The examples in the shared JSONL format, one per line, keys sorted (stable bytes)."""
        return "".join(
            json.dumps(e.content(), ensure_ascii=False, sort_keys=True) + "\n" for e in self.examples
        )

    def sha256(self) -> str:
        """Content hash over the examples in order (not over where they came from)."""
        return sha256_text(self.to_jsonl())

    def write_jsonl(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_jsonl(), encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def of(cls, examples: Iterable[Example], source: str = "<memory>", **kw: Any) -> Dataset:
        return cls(examples=tuple(examples), source=source, **kw)

    def subset(self, indices: Sequence[int]) -> Dataset:
        return Dataset(examples=tuple(self.examples[i] for i in indices), source=self.source)
