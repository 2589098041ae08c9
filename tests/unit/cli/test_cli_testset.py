"""``nluflow testset show|reset``: what is frozen, its history, and an audited reset."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from nluflow.data.schema import Dataset, Example
from nluflow.store import ModelStore
from nluflow.store.audit_log import AuditLog
from nluflow.store.testsets import TestSetStore

runner = CliRunner()


def _grown_test_set(root: Path) -> tuple[str, str]:
    fs = ModelStore.local(root, create=True).fs
    store = TestSetStore(fs, "bot")
    first = Dataset.of([Example(text=f"book table {k}", intent="book") for k in range(3)])
    first = Dataset.of([*first.examples, *(Example(text=f"hi {k}", intent="greet") for k in range(2))])
    v1 = store.freeze(first, "/data/nlu.jsonl", "split off the data (20%)")
    v2 = store.grow(v1, first, Dataset.of([Example(text="book a table now", intent="book")]), "+1 new")
    return v1.sha256, v2.sha256


def test_show_prints_version_sha_size_intents_and_history(tmp_path: Path) -> None:
    root = tmp_path / "store"
    v1, v2 = _grown_test_set(root)
    result = runner.invoke(app, ["testset", "show", "--project", "bot", "--store", str(root)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "version" in out and v2 in out and "/data/nlu.jsonl" in out
    assert "book" in out and "4" in out and "greet" in out
    assert v1[:16] in out and v2[:16] in out and "+1 new" in out


def test_show_without_a_frozen_test_set_says_what_happens_next(tmp_path: Path) -> None:
    root = tmp_path / "store"
    ModelStore.local(root, create=True)
    result = runner.invoke(app, ["testset", "show", "--project", "bot", "--store", str(root)])
    assert result.exit_code == 0
    assert "no frozen test set for 'bot'" in result.output and "freezes it" in result.output


def test_reset_removes_the_frozen_set_and_writes_an_audit_line(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _, v2 = _grown_test_set(root)
    result = runner.invoke(
        app, ["testset", "reset", "--project", "bot", "--store", str(root), "--reason", "new intents"]
    )
    assert result.exit_code == 0, result.output
    assert "removed version 2" in result.output
    assert TestSetStore(ModelStore.local(root).fs, "bot").current() is None
    log = AuditLog(root / "bot" / "audit.jsonl")
    assert log.verify().ok
    [line] = log.records()
    assert line["decision"] == "testset-reset" and line["test_sha256"] == v2
    assert line["test_set_version"] == 2 and line["reasons"][0].startswith("new intents: test set version 2")
    again = runner.invoke(app, ["testset", "reset", "--project", "bot", "--store", str(root)])
    assert again.exit_code == 0 and "nothing was changed" in again.output
    assert len(log.records()) == 1  # nothing changed, nothing audited


def test_testset_commands_refuse_unsafe_projects_and_missing_stores(tmp_path: Path) -> None:
    result = runner.invoke(app, ["testset", "show", "--project", "../x", "--store", str(tmp_path)])
    assert result.exit_code == 2 and "would leave the store" in result.output
    missing = runner.invoke(app, ["testset", "reset", "--project", "bot", "--store", str(tmp_path / "nope")])
    assert missing.exit_code == 2, missing.output
    assert "Traceback" not in missing.output


def test_reset_on_a_full_disk_exits_1_with_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "store"
    _grown_test_set(root)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    result = runner.invoke(app, ["testset", "reset", "--project", "bot", "--store", str(root)])
    text = result.output.replace("\n", "")
    assert result.exit_code == 1, text
    assert "No space left on device" in text and "free space on the disk" in text and "Traceback" not in text


def test_reset_first_closes_a_promotion_a_killed_run_left_half_way(tmp_path: Path) -> None:
    from nluflow.recovery import intent_record

    root = tmp_path / "store"
    _grown_test_set(root)
    log = AuditLog(root / "bot" / "audit.jsonl")
    log.append(intent_record(project="bot", model_id="m-aaaaaaaaaaaa", previous_model_id=None, run_id="r-1"))
    result = runner.invoke(
        app, ["testset", "reset", "--project", "bot", "--store", str(root), "--reason", "x"]
    )
    assert result.exit_code == 0, result.output
    assert "audit line 2 (promotion-abandoned)" in result.output
    assert [x["decision"] for x in log.records()] == [
        "promote-intent",
        "promotion-abandoned",
        "testset-reset",
    ]
    assert log.verify().ok
