"""Helpers both store test modules share (tests/stores/test_store_suite.py,
tests/unit/store/test_registry.py): a clock that ticks, the files of a model, a tree snapshot, and the
``src``/``add``/``corrupt`` of an env."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from nluflow.store import FileSystem, Manifest, ModelStore


class Clock:
    """One second per call, so 'newest first' is deterministic."""

    def __init__(self) -> None:
        self.now = datetime(2025, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def model_files(name: str) -> dict[str, bytes]:
    return {
        "intent.pkl": f"intent model {name}".encode() * 10,
        "entities/crf.bin": f"crf {name}".encode(),
        "meta.json": json.dumps({"name": name}).encode(),
    }


def tree(root: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        out[path.relative_to(root).as_posix()] = path.read_bytes() if path.is_file() else b"<dir>"
    return out


class ModelSource:
    """What a test env does to make models: source folders, ``add_model`` with defaults, a flipped bit."""

    store: ModelStore
    fs: FileSystem
    tmp: Path
    config: dict[str, Any] = {"seed": 42}  # noqa: RUF012 - read only

    def src(self, name: str, files: dict[str, bytes] | None = None) -> Path:
        folder = self.tmp / "src" / name
        folder.mkdir(parents=True)
        for rel, data in (files or model_files(name)).items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data)
        return folder

    def add(self, model_id: str, project: str = "p", **kwargs: Any) -> Manifest:
        src = self.tmp / "src" / model_id
        if not src.exists():
            src = self.src(model_id)
        args: dict[str, Any] = {
            "backend": "local",
            "dataset_sha256": "d" * 64,
            "test_sha256": "t" * 64,
            "config": self.config,
            "metrics": {"intent_accuracy": 0.9, "macro_f1": 0.85},
        }
        args.update(kwargs)
        return self.store.add_model(project, model_id, src, **args)

    def corrupt(self, key: str) -> None:
        data = bytearray(self.fs.read_bytes(key))
        data[0] ^= 0x01
        self.fs.write_bytes(key, bytes(data))
