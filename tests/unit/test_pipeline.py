"""The retrain's plain logic: keys, snapshots that keep file:line, the test set kept out of training."""

from __future__ import annotations

from pathlib import Path

from nluflow.backends.base import LocalModelOptions, TrainingConfig
from nluflow.data.loaders import load_file
from nluflow.data.schema import Dataset, Example
from nluflow.pipeline import (
    Workspace,
    model_files_sha256,
    model_id_for,
    remove_test_overlap,
    snapshot,
    training_key,
)
from nluflow.store import check_id


def test_training_key_changes_with_data_config_and_backend() -> None:
    base = training_key("a" * 64, TrainingConfig(), "local")
    assert base == training_key("a" * 64, TrainingConfig(), "local")
    assert base != training_key("b" * 64, TrainingConfig(), "local")
    assert base != training_key("a" * 64, TrainingConfig(local=LocalModelOptions(C=2.0)), "local")
    assert base != training_key("a" * 64, TrainingConfig(), "rasa")
    assert check_id(model_id_for(base), "model id") == model_id_for(base)


def test_snapshot_round_trip_keeps_the_users_file_and_line(tmp_path: Path) -> None:
    src = tmp_path / "nlu.jsonl"
    src.write_text('{"text": "hi", "intent": "greet"}\n\n{"text": "bye", "intent": "goodbye"}\n')
    data = load_file(src)
    snap = snapshot(data, Workspace(tmp_path / "ws"))
    assert snap.sha256 == data.sha256() and snap.n_examples == 2 and snap.n_intents == 2
    again = snap.load()
    assert again.sha256() == data.sha256()
    assert [e.where() for e in again] == [f"{src}:1", f"{src}:3"]


def test_test_examples_are_removed_from_training_after_normalisation() -> None:
    train = Dataset.of(
        [Example(text="Book a table!", intent="book"), Example(text="play jazz", intent="play")]
    )
    test = Dataset.of([Example(text="book a table", intent="book")])
    kept, removed = remove_test_overlap(train, test)
    assert removed == 1 and [e.text for e in kept] == ["play jazz"]


def test_model_files_hash_ignores_the_store_manifest(tmp_path: Path) -> None:
    (tmp_path / "intent.joblib").write_bytes(b"x")
    before = model_files_sha256(tmp_path)
    (tmp_path / "manifest.json").write_text("{}")
    assert model_files_sha256(tmp_path) == before
    (tmp_path / "intent.joblib").write_bytes(b"y")
    assert model_files_sha256(tmp_path) != before
