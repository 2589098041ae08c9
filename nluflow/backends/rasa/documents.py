"""Rasa's file formats as nluflow writes and reads them: the training document (config + NLU YAML), the
archive tag that names a training per project, and an archive's ``metadata.json``."""

from __future__ import annotations

import functools
import json
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from nluflow.backends.base import TrainingConfig
from nluflow.data.schema import Dataset, Example
from nluflow.hashing import sha256_text

# assistant_id of nluflow's trainings: "nluflow.<project>.<key hash>"; Rasa 3.x writes it into the archive's
# metadata.json, which is how an archive is found again after its answer was lost.
TAG_PREFIX = "nluflow"
YAML_CONTENT_TYPE = "application/x-yaml"
FORMAT_VERSION = "3.1"


def default_pipeline(config: TrainingConfig) -> list[dict[str, Any]]:
    """A standard Rasa 3 NLU pipeline with the shared training options mapped onto DIET."""
    return [
        {"name": "WhitespaceTokenizer"},
        {"name": "RegexFeaturizer"},
        {"name": "LexicalSyntacticFeaturizer"},
        {"name": "CountVectorsFeaturizer"},
        {"name": "CountVectorsFeaturizer", "analyzer": "char_wb", "min_ngram": 1, "max_ngram": 4},
        {
            "name": "DIETClassifier",
            "epochs": config.epochs,
            "batch_size": [config.batch_size, config.batch_size],
            "learning_rate": config.learning_rate,
            "drop_rate": config.dropout,
            "random_seed": config.seed,
        },
        {"name": "EntitySynonymMapper"},
    ]


def _annotate(example: Example) -> str:
    """The example in Rasa's inline entity syntax: ``[Paris](city)`` or ``[NYC]{"entity": "city", ...}``."""
    text = example.text
    out: list[str] = []
    cursor = 0
    for ent in sorted(example.entities, key=lambda e: e.start):
        if ent.start < cursor or ent.end > len(text):
            continue  # overlapping or out-of-range spans cannot be written inline; the validator reports them
        span = text[ent.start : ent.end]
        out.append(text[cursor : ent.start])
        if ent.value == span:
            out.append(f"[{span}]({ent.entity})")
        else:
            out.append(
                f"[{span}]" + json.dumps({"entity": ent.entity, "value": ent.value}, ensure_ascii=False)
            )
        cursor = ent.end
    out.append(text[cursor:])
    return "".join(out).replace("\n", " ")


def nlu_yaml(examples: Sequence[Example]) -> str:
    """The ``nlu:`` section in Rasa 3 YAML: one block per intent, examples as a literal block string."""
    by_intent: dict[str, list[str]] = {}
    for example in examples:
        by_intent.setdefault(example.intent, []).append(_annotate(example))
    lines = ["nlu:"]
    for intent, items in by_intent.items():
        lines.append(f"- intent: {json.dumps(intent, ensure_ascii=False)}")
        lines.append("  examples: |")
        lines.extend(f"    - {item}" for item in items)
    return "\n".join(lines) + "\n"


def archive_tag(project: str | None, key: str) -> str:
    """The ``assistant_id`` of the training for ``key`` in ``project``: one per training, per project."""
    digest = sha256_text(key)[:16]
    return f"{TAG_PREFIX}.{project}.{digest}" if project else f"{TAG_PREFIX}.{digest}"


def tag_project(tag: object) -> str | None:
    """The project an ``archive_tag`` names, or None (another tool's archive, or no project bound)."""
    if not isinstance(tag, str):
        return None
    parts = tag.split(".")
    if len(parts) < 3 or parts[0] != TAG_PREFIX:
        return None
    return ".".join(parts[1:-1])


def archive_metadata(path: Path) -> dict[str, Any] | None:
    """The ``metadata.json`` of a Rasa 3.x model archive (at its top level), or None if unreadable.

    Rasa's tar lists ``metadata.json`` after the components, so reading it decompresses the whole archive:
    answers are kept per (path, size, mtime) for the life of the process."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return _archive_metadata(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _archive_metadata(path: str, size: int, mtime_ns: int) -> dict[str, Any] | None:
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for member in tar:
                if member.isfile() and member.name.lstrip("./") == "metadata.json":
                    handle = tar.extractfile(member)
                    if handle is None:
                        return None
                    value = json.loads(handle.read())
                    return value if isinstance(value, dict) else None
    except (tarfile.TarError, EOFError, OSError, zlib.error, ValueError):
        return None
    return None


def training_document(
    train: Dataset,
    config: TrainingConfig,
    language: str,
    pipeline: list[dict[str, Any]] | None,
    assistant_id: str = TAG_PREFIX,
) -> str:
    """The one YAML document ``POST /model/train`` takes: config keys, then the NLU data."""
    head = {
        "version": FORMAT_VERSION,
        "recipe": "default.v1",
        "language": language,
        "assistant_id": assistant_id,
        "pipeline": pipeline if pipeline is not None else default_pipeline(config),
        "policies": [],
    }
    return yaml.safe_dump(head, sort_keys=False, allow_unicode=True) + nlu_yaml(train.examples)


def same_model(served: object, path: str) -> bool:
    """``GET /status`` reports the loaded archive's file name; compare it with a path by file name."""
    return isinstance(served, str) and Path(served).name == Path(path).name
