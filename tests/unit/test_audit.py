"""The hash-chained audit log: appends chain, tampering is located, concurrent appenders keep the chain."""

from __future__ import annotations

import itertools
import json
import multiprocessing
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from nluflow.audit import GENESIS, audit_record
from nluflow.errors import AuditError
from nluflow.hashing import canonical_json, sha256_text
from nluflow.store.audit_log import AuditLog


def _record(i: int, **extra: Any) -> dict[str, Any]:
    return audit_record(
        run_id=f"run-{i}",
        flow_run_id=f"flow-{i}",
        project="banking",
        dataset_sha256="d" * 64,
        test_sha256="t" * 64,
        backend="local",
        job_id=f"job-{i}",
        model_id=f"m-{i}",
        config={"seed": 42, "local": {"C": 10.0}},
        duration_seconds=1.5 * i,
        metrics={"candidate": {"intent_accuracy": 0.9}, "active": {"intent_accuracy": 0.8}},
        decision="promote" if i % 2 else "keep",
        promoted=bool(i % 2),
        reasons=[f"reason {i}"],
        previous_model_id=f"m-{i - 1}" if i > 1 else None,
        manifest_sha256="a" * 64,
        **extra,
    )


def _write_chain(path: Path, n: int) -> AuditLog:
    log = AuditLog(path)
    for i in range(1, n + 1):
        log.append(_record(i))
    return log


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def test_append_chains_lines_and_verifies(tmp_path: Path) -> None:
    log = _write_chain(tmp_path / "logs" / "audit.jsonl", 5)  # folder created on first append
    records = log.records()
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5]
    assert records[0]["prev_hash"] == GENESIS
    for prev, cur in itertools.pairwise(records):
        assert cur["prev_hash"] == prev["hash"]
    for rec in records:
        body = {k: v for k, v in rec.items() if k != "hash"}
        assert rec["hash"] == sha256_text(canonical_json(body))
    assert records[2]["run_id"] == "run-3" and records[2]["metrics"]["candidate"]["intent_accuracy"] == 0.9
    result = log.verify()
    assert result.ok and result.lines == 5
    assert result.first_bad_line is None and result.reason is None


def test_append_returns_the_line_as_written(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    written = log.append({"run_id": "r1", "when": datetime(2025, 1, 2), "values": (1, 2)})
    assert written == log.records()[0]
    assert written["values"] == [1, 2] and written["when"] == "2025-01-02 00:00:00"
    assert log.verify().ok


def test_missing_log_is_empty_and_ok(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "nothing.jsonl")
    assert log.records() == []
    result = log.verify()
    assert result.ok and result.lines == 0


def test_edited_field_in_line_3_is_named(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write_chain(path, 5)
    lines = _lines(path)
    line = json.loads(lines[2])
    line["promoted"] = not line["promoted"]
    lines[2] = json.dumps(line) + "\n"
    path.write_text("".join(lines), encoding="utf-8")
    result = AuditLog(path).verify()
    assert not result.ok
    assert result.first_bad_line == 3
    assert result.reason is not None and f"{path}:3:" in result.reason and "hash" in result.reason


def test_edited_line_with_recomputed_hash_breaks_the_next_link(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write_chain(path, 5)
    lines = _lines(path)
    line = json.loads(lines[2])
    line["decision"] = "promote-forged"
    line["hash"] = sha256_text(canonical_json({k: v for k, v in line.items() if k != "hash"}))
    lines[2] = canonical_json(line) + "\n"
    path.write_text("".join(lines), encoding="utf-8")
    result = AuditLog(path).verify()
    assert result.first_bad_line == 4
    assert result.reason is not None and "prev_hash" in result.reason


def test_deleted_line_2_is_named(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write_chain(path, 5)
    lines = _lines(path)
    del lines[1]
    path.write_text("".join(lines), encoding="utf-8")
    result = AuditLog(path).verify()
    assert not result.ok and result.first_bad_line == 2
    assert result.reason is not None and "seq" in result.reason


def test_reordered_lines_are_named(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write_chain(path, 5)
    lines = _lines(path)
    lines[2], lines[3] = lines[3], lines[2]
    path.write_text("".join(lines), encoding="utf-8")
    result = AuditLog(path).verify()
    assert not result.ok and result.first_bad_line == 3


def test_truncated_last_line_is_named_then_moved_aside_with_a_repaired_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = _write_chain(path, 5)
    data = path.read_bytes()
    path.write_bytes(data[:-40])  # a full disk cut the fifth line off part-way
    result = log.verify()
    assert not result.ok and result.first_bad_line == 5 and result.lines == 5
    assert result.reason is not None and "moves it aside" in result.reason
    with pytest.raises(AuditError, match=r"audit\.jsonl:5:"):
        log.records()

    line = log.append(_record(6))

    [aside] = tmp_path.glob("audit.jsonl.torn-*")
    fifth = data.split(b"\n")[4]
    assert aside.read_bytes() == fifth[:-39]  # exactly the torn bytes, kept for a person to read
    records = log.records()
    assert [(r["seq"], r["decision"]) for r in records][-3:] == [(4, "keep"), (5, "repaired"), (6, "keep")]
    repaired = records[4]
    assert repaired["torn_file"] == aside.name and repaired["torn_bytes"] == len(fifth) - 39
    assert aside.name in repaired["reasons"][0] and "cut off" in repaired["reasons"][0]
    assert line["seq"] == 6 and log.repairs == repaired["reasons"]
    assert log.verify().ok


def test_last_line_without_its_line_end_is_named_and_given_it_back(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = _write_chain(path, 3)
    whole = path.read_bytes()
    path.write_bytes(whole[:-1])  # only the final "\n" is gone: the line itself is whole
    result = log.verify()
    assert not result.ok and result.first_bad_line == 3
    log.append(_record(4))
    assert path.read_bytes().startswith(whole)  # nothing moved aside, nothing lost
    assert [r["decision"] for r in log.records()] == ["promote", "keep", "promote", "keep"]
    assert not list(tmp_path.glob("audit.jsonl.torn-*")) and log.verify().ok


def test_a_broken_chain_is_never_extended_and_the_error_names_the_seal_command(tmp_path: Path) -> None:
    path = tmp_path / "bot" / "audit.jsonl"
    log = _write_chain(path, 4)
    lines = _lines(path)
    lines[1] = lines[1].replace('"reason 2"', '"edited"')
    path.write_text("".join(lines), encoding="utf-8")
    before = path.read_bytes()
    with pytest.raises(AuditError) as err:
        log.append(_record(5))
    assert "audit.jsonl:2:" in str(err.value)
    assert "nluflow audit seal --project bot --reason TEXT" in str(err.value)
    assert path.read_bytes() == before
    result = log.verify()
    assert result.reason is not None and "nluflow audit seal --project bot" in result.reason


def test_seal_records_the_break_and_the_chain_continues_after_it(tmp_path: Path) -> None:
    path = tmp_path / "bot" / "audit.jsonl"
    log = _write_chain(path, 5)
    lines = _lines(path)
    lines[2] = lines[2][:40] + "\n"  # line 3 is garbage; lines 4-5 chain to the old line 3
    path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(AuditError, match="intact"):
        AuditLog(tmp_path / "other" / "audit.jsonl").seal("nothing to seal")

    sealed = log.seal("restored from backup failed; sealed by ops")

    assert sealed["decision"] == "sealed" and sealed["seq"] == 6 and sealed["sealed_from_line"] == 3
    assert sealed["broken_lines"] == 3 and "not valid JSON" in sealed["break"]
    assert sealed["prev_hash"] == json.loads(lines[1])["hash"]  # chained to the last good line
    result = log.verify()
    assert result.ok and result.lines == 6
    assert result.sealed and result.sealed[0].startswith("sealed at line 6: lines 3-5 were broken")
    log.append(_record(7))
    assert log.verify().ok
    # The sealed lines are not part of the history any more; the seal line says what they were.
    assert [r["seq"] for r in log.records()] == [1, 2, 6, 7]
    # An edit after the seal is a new break.
    lines = _lines(path)
    lines[-1] = lines[-1].replace('"reason 7"', '"edited"')
    path.write_text("".join(lines), encoding="utf-8")
    result = log.verify()
    assert not result.ok and result.first_bad_line == 7


def test_a_forged_seal_that_is_not_chained_to_the_last_good_line_does_not_seal(tmp_path: Path) -> None:
    path = tmp_path / "bot" / "audit.jsonl"
    log = _write_chain(path, 3)
    lines = _lines(path)
    lines[1] = lines[1].replace('"reason 2"', '"edited"')
    forged = {"decision": "sealed", "sealed_from_line": 2, "seq": 4, "prev_hash": GENESIS, "reasons": ["x"]}
    forged["hash"] = sha256_text(canonical_json(forged))
    path.write_text("".join(lines) + canonical_json(forged) + "\n", encoding="utf-8")
    result = log.verify()
    assert not result.ok and result.first_bad_line == 2 and not result.sealed


def test_broken_json_in_the_middle_is_named(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write_chain(path, 4)
    lines = _lines(path)
    lines[1] = lines[1][:30] + "\n"
    path.write_text("".join(lines), encoding="utf-8")
    result = AuditLog(path).verify()
    assert result.first_bad_line == 2 and result.reason is not None and "JSON" in result.reason


def test_append_refuses_chain_fields_and_unserialisable_records(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    with pytest.raises(AuditError, match="seq"):
        log.append({"seq": 7, "run_id": "r"})
    with pytest.raises(AuditError, match="JSON"):
        log.append({"bad": {1, 2}, "mixed": {1: "a", "b": 2}})
    assert not (tmp_path / "audit.jsonl").exists()


def test_audit_record_has_every_field_and_a_utc_timestamp() -> None:
    rec = _record(2, error=None)
    for field in (
        "run_id",
        "flow_run_id",
        "project",
        "dataset_sha256",
        "test_sha256",
        "backend",
        "job_id",
        "model_id",
        "config",
        "duration_seconds",
        "metrics",
        "validation_loss",
        "decision",
        "promoted",
        "reasons",
        "previous_model_id",
        "manifest_sha256",
        "error",
    ):
        assert field in rec, field
    stamp = datetime.fromisoformat(rec["timestamp"])
    assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert rec["validation_loss"] is None and rec["reasons"] == ["reason 2"]
    with pytest.raises(AuditError, match="hash"):
        _record(3, hash="x")


def _append_many(path: str, worker: int, count: int, start: Any) -> None:
    log = AuditLog(path)
    start.wait()  # all workers append at the same moment, not one after another as they finish importing
    for i in range(count):
        log.append({"worker": worker, "i": i, "payload": "x" * 200})


@pytest.mark.slow
def test_concurrent_appends_from_several_processes_keep_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    workers, per_worker = 4, 25
    # spawn, not fork: forking a pytest process that may hold other threads' locks can deadlock.
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(workers)
    procs = [ctx.Process(target=_append_many, args=(str(path), w, per_worker, start)) for w in range(workers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    log = AuditLog(path)
    result = log.verify()
    assert result.ok, result.reason
    assert result.lines == workers * per_worker
    records = log.records()
    assert sorted((r["worker"], r["i"]) for r in records) == [
        (w, i) for w in range(workers) for i in range(per_worker)
    ]


def test_pointer_change_records_chain_with_run_lines_and_read_back_as_history(tmp_path: Path) -> None:
    from nluflow.audit import history_rows, pointer_change_record

    log = AuditLog(tmp_path / "audit.jsonl")
    log.append({"timestamp": "2026-01-02T03:04:05+00:00", "decision": "promote", "model_id": "m1"})
    log.append(
        pointer_change_record(
            project="bot",
            decision="forced-promote",
            model_id="m2",
            previous_model_id="m1",
            manifest_sha256="a" * 64,
            reason="the bad intent is retired",
        )
    )
    assert log.verify().ok
    [first, second] = history_rows(log.records())
    assert first == {
        "seq": 1,
        "time": "2026-01-02 03:04:05",
        "decision": "promote",
        "model": "m1",
        "note": "",
    }
    assert (second["seq"], second["decision"], second["model"]) == (2, "forced-promote", "m2")
    assert second["note"] == "the bad intent is retired"
    line = log.records()[1]
    assert line["previous_model_id"] == "m1" and line["actor"] == "cli" and line["promoted"] is True
    with pytest.raises(AuditError, match="not one of"):
        pointer_change_record(
            project="bot",
            decision="promote",
            model_id="m",
            previous_model_id=None,
            manifest_sha256=None,
            reason="",
        )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (OSError("disk full\nmore detail"), "OSError: disk full"),
        (
            ValueError("GET https://user:hunter2@host/x failed"),
            "ValueError: GET https://[REDACTED]@host/x failed",
        ),
        (RuntimeError("401 for /api?token=s3cr3t&x=1"), "RuntimeError: 401 for /api?token=[REDACTED]&x=1"),
        (
            RuntimeError("sent Authorization: Bearer abcdefghijk123"),
            "RuntimeError: sent Authorization: Bearer [REDACTED]",
        ),
        (KeyError(), "KeyError"),
    ],
)
def test_error_summary_is_one_line_without_credentials(error: BaseException, expected: str) -> None:
    from nluflow.audit import error_summary

    assert error_summary(error) == expected
    assert len(error_summary(RuntimeError("x" * 1000))) == 300


@pytest.mark.parametrize("dangling", [False, True], ids=["to-a-file", "dangling"])
def test_a_symlinked_log_is_refused_and_the_file_behind_it_is_untouched(
    tmp_path: Path, dangling: bool
) -> None:
    outside = tmp_path / "outside" / "history.jsonl"
    outside.parent.mkdir()
    if not dangling:
        AuditLog(outside).append(_record(1))
    before = outside.read_bytes() if not dangling else None
    store_log = tmp_path / "store" / "bot" / "audit.jsonl"
    store_log.parent.mkdir(parents=True)
    store_log.symlink_to(outside)
    log = AuditLog(store_log)
    with pytest.raises(
        AuditError, match=r"is a symbolic link \(to .*history\.jsonl\).*Nothing was read or written"
    ):
        log.append(_record(2))
    with pytest.raises(AuditError, match="symbolic link"):
        log.records()
    result = log.verify()
    assert not result.ok and result.reason is not None and "symbolic link" in result.reason
    if dangling:
        assert not outside.exists()  # not created through the link
    else:
        assert outside.read_bytes() == before
    assert store_log.is_symlink()


def test_a_log_whose_project_folder_links_out_of_the_store_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    AuditLog(outside / "audit.jsonl").append(_record(1))
    before = (outside / "audit.jsonl").read_bytes()
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "bot").symlink_to(outside, target_is_directory=True)
    log = AuditLog(tmp_path / "store" / "bot" / "audit.jsonl")
    with pytest.raises(AuditError, match=r"store/bot is a symbolic link to .*outside.*Nothing was read"):
        log.append(_record(2))
    with pytest.raises(AuditError, match="symbolic link"):
        log.records()
    result = log.verify()
    assert not result.ok and result.reason is not None and "symbolic link" in result.reason
    assert (outside / "audit.jsonl").read_bytes() == before
    # A link that stays inside the store is a folder of the store like any other.
    (tmp_path / "store" / "real").mkdir()
    (tmp_path / "store" / "alias").symlink_to(tmp_path / "store" / "real", target_is_directory=True)
    AuditLog(tmp_path / "store" / "alias" / "audit.jsonl").append(_record(1))
    assert AuditLog(tmp_path / "store" / "real" / "audit.jsonl").verify().ok
