"""The CLI's exit codes and messages for bad input: one clear paragraph, exit 2, nothing changed."""

from __future__ import annotations

import errno
import http.server
import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from nluflow.store import ModelStore
from nluflow.store.audit_log import AuditLog

runner = CliRunner()
# `models promote / activate / rollback` take the project's promotion slot, a Prefect concurrency limit:
# they need the session's Prefect API.
pytestmark = pytest.mark.usefixtures("prefect_api")


def _store_with_two_models(root: Path) -> ModelStore:
    store = ModelStore.local(root, create=True)
    for i, model_id in enumerate(("m-aaaaaaaaaaaa", "m-bbbbbbbbbbbb")):
        src = root.parent / f"src-{model_id}"
        src.mkdir()
        (src / "intent.joblib").write_bytes(b"model bytes %d" % i)
        store.add_model(
            "bot",
            model_id,
            src,
            backend="local",
            dataset_sha256="d" * 64,
            test_sha256="t" * 64,
            config={},
            metrics={"intent_accuracy": 0.9 + i / 100, "macro_f1": 0.88 + i / 100, "entity_f1": 0.8},
        )
        store.activate("bot", model_id, reason=f"test {i}")
    return store


def test_models_list_show_and_rollback(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _store_with_two_models(root)
    out = runner.invoke(app, ["models", "list", "--project", "bot", "--store", str(root)])
    assert out.exit_code == 0, out.output
    assert "m-aaaaaaaaaaaa" in out.output and "m-bbbbbbbbbbbb" in out.output
    out = runner.invoke(app, ["models", "show", "--project", "bot", "--store", str(root)])
    assert out.exit_code == 0, out.output
    assert "m-bbbbbbbbbbbb" in out.output and "0.9100" in out.output and "macro_f1" in out.output
    out = runner.invoke(app, ["models", "rollback", "--project", "bot", "--store", str(root)])
    assert out.exit_code == 0, out.output
    pointer = ModelStore.local(root).active("bot")
    assert pointer is not None and pointer.model_id == "m-aaaaaaaaaaaa"


@pytest.mark.parametrize("bad", ["../x", "/etc", "a/b", ".."])
def test_unsafe_project_ids_are_refused(tmp_path: Path, bad: str) -> None:
    root = tmp_path / "store"
    _store_with_two_models(root)
    before = (root / "bot" / "active.json").read_bytes()
    for args in (["models", "list"], ["models", "rollback"], ["audit", "verify"]):
        out = runner.invoke(app, [*args, "--project", bad, "--store", str(root)])
        assert out.exit_code == 2, (args, out.output)
        assert "Traceback" not in out.output
    assert (root / "bot" / "active.json").read_bytes() == before


def test_unsafe_model_id_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _store_with_two_models(root)
    out = runner.invoke(
        app, ["models", "rollback", "--project", "bot", "--store", str(root), "--to", "../../x"]
    )
    assert out.exit_code == 2
    assert "leave the store" in out.output


def test_missing_store_is_a_clear_error(tmp_path: Path) -> None:
    out = runner.invoke(app, ["models", "list", "--store", str(tmp_path / "nope")])
    assert out.exit_code == 2
    assert "does not exist" in out.output and "Traceback" not in out.output


def test_corrupted_model_file_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _store_with_two_models(root)
    target = root / "bot" / "models" / "m-bbbbbbbbbbbb" / "intent.joblib"
    target.write_bytes(b"tampered")
    out = runner.invoke(app, ["models", "show", "--project", "bot", "--store", str(root)])
    assert out.exit_code == 1
    assert "intent.joblib" in out.output and "sha256" in out.output


def test_pointer_to_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _store_with_two_models(root)
    import shutil

    shutil.rmtree(root / "bot" / "models" / "m-bbbbbbbbbbbb")
    out = runner.invoke(app, ["models", "show", "--project", "bot", "--store", str(root)])
    assert out.exit_code == 2
    assert "m-bbbbbbbbbbbb" in out.output and "Traceback" not in out.output


def test_validate_reports_file_and_line_of_malformed_data(tmp_path: Path) -> None:
    bad = tmp_path / "nlu.jsonl"
    bad.write_text('{"text": "hi", "intent": "greet"}\n{"text": "oops", "intent": \n')
    out = runner.invoke(app, ["validate", str(bad)])
    assert out.exit_code == 2
    assert f"{bad}:2" in out.output.replace("\n", "") and "Traceback" not in out.output


def test_validate_blocking_findings_exit_2(tmp_path: Path) -> None:
    data = tmp_path / "nlu.jsonl"
    data.write_text("".join(json.dumps({"text": f"hi {i}", "intent": "greet"}) + "\n" for i in range(12)))
    out = runner.invoke(app, ["validate", str(data)])
    assert out.exit_code == 2
    assert "min_intents" in out.output


def test_validate_clean_data_exits_0(demo_data: Path) -> None:
    out = runner.invoke(app, ["validate", str(demo_data / "batch-1.jsonl"), str(demo_data / "batch-2.jsonl")])
    assert out.exit_code == 0, out.output


def test_retrain_refuses_bad_config_before_training(tmp_path: Path, demo_data: Path) -> None:
    cfg = tmp_path / "config.yml"
    cfg.write_text("epochs: 5000\ncv_folds: 1\n")
    out = runner.invoke(
        app,
        [
            "retrain",
            "--data",
            str(demo_data / "batch-1.jsonl"),
            "--config",
            str(cfg),
            "--store",
            str(tmp_path),
        ],
    )
    assert out.exit_code == 2
    assert "epochs" in out.output and "Traceback" not in out.output


def test_retrain_refuses_malformed_data_before_starting_prefect(tmp_path: Path) -> None:
    bad = tmp_path / "nlu.csv"
    bad.write_text("text,label\nhello,greet\n")
    out = runner.invoke(app, ["retrain", "--data", str(bad), "--store", str(tmp_path / "store")])
    assert out.exit_code == 2
    assert str(bad) in out.output.replace("\n", "")
    assert not (tmp_path / "store").exists()


def test_audit_verify_names_the_first_broken_line(tmp_path: Path) -> None:
    root = tmp_path / "store"
    log = AuditLog(root / "bot" / "audit.jsonl")
    for i in range(3):
        log.append({"run": i, "decision": "promote"})
    out = runner.invoke(app, ["audit", "verify", "--project", "bot", "--store", str(root)])
    assert out.exit_code == 0 and "3 lines" in out.output
    lines = (root / "bot" / "audit.jsonl").read_text().splitlines()
    lines[1] = lines[1].replace('"promote"', '"reject"')
    (root / "bot" / "audit.jsonl").write_text("\n".join(lines) + "\n")
    out = runner.invoke(app, ["audit", "verify", "--project", "bot", "--store", str(root)])
    assert out.exit_code == 1
    assert "audit.jsonl:2" in out.output.replace("\n", "")


def _audit(root: Path, project: str = "bot") -> list[dict[str, object]]:
    return AuditLog(root / project / "audit.jsonl").records()


def test_every_pointer_change_from_the_cli_writes_an_audit_line(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = _store_with_two_models(root)  # a active, then b active
    args = ["--project", "bot", "--store", str(root)]
    out = runner.invoke(app, ["models", "rollback", *args])
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, ["models", "activate", "m-bbbbbbbbbbbb", *args])
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, ["models", "activate", "m-bbbbbbbbbbbb", *args])  # already active: no change
    assert out.exit_code == 0, out.output
    out = runner.invoke(
        app, ["models", "promote", "m-aaaaaaaaaaaa", "--reason", "  rejected on a noisy intent  ", *args]
    )
    assert out.exit_code == 0, out.output
    assert "forced promote" in out.output
    lines = _audit(root)
    assert [(x["decision"], x["model_id"], x["previous_model_id"]) for x in lines] == [
        ("rollback", "m-aaaaaaaaaaaa", "m-bbbbbbbbbbbb"),
        ("activate", "m-bbbbbbbbbbbb", "m-aaaaaaaaaaaa"),
        ("forced-promote", "m-aaaaaaaaaaaa", "m-bbbbbbbbbbbb"),
    ]
    assert lines[2]["reasons"] == ["rejected on a noisy intent"]
    pointer = store.active("bot")
    assert pointer is not None and pointer.model_id == "m-aaaaaaaaaaaa"
    assert pointer.reason == "forced promote: rejected on a noisy intent"
    assert lines[2]["manifest_sha256"] == pointer.manifest_sha256
    assert AuditLog(root / "bot" / "audit.jsonl").verify().ok


def test_forced_promote_needs_a_reason_and_a_stored_model(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _store_with_two_models(root)
    before = (root / "bot" / "active.json").read_bytes()
    args = ["--project", "bot", "--store", str(root)]
    out = runner.invoke(app, ["models", "promote", "m-aaaaaaaaaaaa", *args])
    assert out.exit_code == 2 and "--reason" in out.output
    out = runner.invoke(app, ["models", "promote", "m-aaaaaaaaaaaa", "--reason", "   ", *args])
    assert out.exit_code == 2 and "--reason is empty" in out.output
    out = runner.invoke(app, ["models", "promote", "m-cccccccccccc", "--reason", "why not", *args])
    assert out.exit_code == 2 and "does not exist" in out.output
    out = runner.invoke(app, ["models", "promote", "m-bbbbbbbbbbbb", "--reason", "again", *args])
    assert out.exit_code == 2 and "already the active model" in out.output
    assert (root / "bot" / "active.json").read_bytes() == before
    assert not (root / "bot" / "audit.jsonl").exists()


def _keep_rejected(store: ModelStore, root: Path, model_id: str = "m-cccccccccccc") -> None:
    """A candidate the gates rejected, kept in the store for a forced promotion (as a retrain keeps it)."""
    src = root.parent / f"src-{model_id}"
    src.mkdir()
    (src / "intent.joblib").write_bytes(b"rejected model bytes")
    store.add_model(
        "bot",
        model_id,
        src,
        backend="local",
        dataset_sha256="d" * 64,
        test_sha256="t" * 64,
        config={},
        metrics={"intent_accuracy": 0.5, "macro_f1": 0.4, "entity_f1": 0.3},
    )
    store.record_rejected("bot", model_id, reason="rejected: below the macro F1 floor")


def test_activating_a_rejected_candidate_needs_a_reason_and_is_a_forced_promotion(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = _store_with_two_models(root)
    _keep_rejected(store, root)
    before = (root / "bot" / "active.json").read_bytes()
    args = ["--project", "bot", "--store", str(root)]
    for command in (["activate", "m-cccccccccccc"], ["rollback", "--to", "m-cccccccccccc"]):
        out = runner.invoke(app, ["models", *command, *args])
        assert out.exit_code == 2, out.output
        assert "the gates rejected" in out.output and "nothing was changed" in out.output
        assert "nluflow models promote m-cccccccccccc" in out.output and "--reason" in out.output
        assert (root / "bot" / "active.json").read_bytes() == before
        assert not (root / "bot" / "audit.jsonl").exists()
    out = runner.invoke(app, ["models", "activate", "m-cccccccccccc", "--reason", "  ", *args])
    assert out.exit_code == 2 and "the gates rejected" in out.output  # a blank reason is no reason
    out = runner.invoke(app, ["models", "activate", "m-cccccccccccc", "--reason", "gates too strict", *args])
    assert out.exit_code == 0, out.output
    pointer = store.active("bot")
    assert pointer is not None and pointer.model_id == "m-cccccccccccc"
    assert pointer.reason == "forced promote: gates too strict"
    [line] = _audit(root)
    assert (line["decision"], line["model_id"], line["reasons"]) == (
        "forced-promote",
        "m-cccccccccccc",
        ["gates too strict"],
    )
    assert store.rejected("bot") == []  # promoted: no longer listed (or pruned) as rejected


def test_a_pointer_change_the_broken_log_cannot_record_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _store_with_two_models(root)
    log = root / "bot" / "audit.jsonl"
    AuditLog(log).append({"decision": "promote"})
    log.write_text(log.read_text().replace("promote", "reject"))
    before = (root / "bot" / "active.json").read_bytes()
    out = runner.invoke(app, ["models", "rollback", "--project", "bot", "--store", str(root)])
    assert out.exit_code == 1
    assert "the audit log is broken" in out.output and "nothing was changed" in out.output
    assert (root / "bot" / "active.json").read_bytes() == before


def test_audit_verify_without_project_checks_and_lists_every_project(tmp_path: Path) -> None:
    root = tmp_path / "store"
    for project, decisions in (("alpha", ["promote", "reject"]), ("beta", ["blocked"])):
        log = AuditLog(root / project / "audit.jsonl")
        for i, decision in enumerate(decisions):
            log.append(
                {"timestamp": f"2026-01-0{i + 1}T10:00:00+00:00", "decision": decision, "model_id": f"m-{i}"}
            )
    out = runner.invoke(app, ["audit", "verify", "--store", str(root)])
    assert out.exit_code == 0, out.output
    assert "alpha: intact, 2 lines" in out.output and "beta: intact, 1 lines" in out.output
    rows = [line.split("│") for line in out.output.splitlines() if line.startswith("│")]
    assert [[c.strip() for c in row[1:5]] for row in rows] == [
        ["1", "2026-01-01 10:00:00", "promote", "m-0"],
        ["2", "2026-01-02 10:00:00", "reject", "m-1"],
        ["1", "2026-01-01 10:00:00", "blocked", "m-0"],
    ]
    (root / "beta" / "audit.jsonl").write_text("not json\n")
    out = runner.invoke(app, ["audit", "verify", "--store", str(root)])
    assert out.exit_code == 1
    assert "alpha: intact" in out.output and "broken: beta" in out.output
    out = runner.invoke(app, ["audit", "verify", "--store", str(tmp_path / "nowhere")])
    text = out.output.replace("\n", " ")
    assert out.exit_code == 2 and "model store folder" in text and "does not exist" in text


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"true" if self.path == "/api/health" else b"{}"
        self.send_response(200 if self.path == "/api/health" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_the_console_script_uses_a_running_local_server_like_the_makefile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows.cli import _use_running_server

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = str(server.server_address[1])
        monkeypatch.setenv("PREFECT_API_URL", "")  # so the test's end puts back what was there before
        monkeypatch.delenv("PREFECT_API_URL")
        monkeypatch.setenv("PREFECT_PORT", port)
        assert _use_running_server() == f"http://127.0.0.1:{port}/api"
        assert os.environ["PREFECT_API_URL"] == f"http://127.0.0.1:{port}/api"
        # An explicit PREFECT_API_URL wins: nothing is probed or changed.
        monkeypatch.setenv("PREFECT_API_URL", "http://elsewhere:4200/api")
        assert _use_running_server() is None
        assert os.environ["PREFECT_API_URL"] == "http://elsewhere:4200/api"
    finally:
        server.shutdown()
        server.server_close()
    # Nothing listening: Prefect is left to start its ephemeral server.
    monkeypatch.delenv("PREFECT_API_URL")
    assert _use_running_server() is None
    assert "PREFECT_API_URL" not in os.environ


def test_models_list_shows_a_linked_out_model_as_refused_and_lists_the_others(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _store_with_two_models(root)
    outside = tmp_path / "outside"
    shutil.copytree(root / "bot" / "models" / "m-aaaaaaaaaaaa", outside)
    (root / "bot" / "models" / "m-cccccccccccc").symlink_to(outside, target_is_directory=True)
    out = runner.invoke(app, ["models", "list", "--project", "bot", "--store", str(root)])
    assert out.exit_code == 0, out.output
    text = out.output.replace("\n", "")
    assert "m-aaaaaaaaaaaa" in text and "m-bbbbbbbbbbbb" in text
    assert "refused: m-cccccccccccc" in text and "outside the local folder" in text


def test_audit_verify_refuses_a_symlinked_log(tmp_path: Path) -> None:
    root = tmp_path / "store"
    outside = tmp_path / "elsewhere.jsonl"
    AuditLog(outside).append({"decision": "promote"})
    (root / "bot").mkdir(parents=True)
    (root / "bot" / "audit.jsonl").symlink_to(outside)
    out = runner.invoke(app, ["audit", "verify", "--project", "bot", "--store", str(root)])
    assert out.exit_code == 1
    assert "symbolic link" in out.output.replace("\n", "")
    outside.unlink()  # a dangling link is still listed and refused when every project is checked
    out = runner.invoke(app, ["audit", "verify", "--store", str(root)])
    assert out.exit_code == 1
    assert "broken: bot" in out.output and "symbolic link" in out.output.replace("\n", "")


@pytest.mark.parametrize(
    ("code", "advice"),
    [
        (errno.ENOSPC, "free space"),
        (errno.EROFS, "read-write"),
        (errno.EACCES, "writable"),
    ],
    ids=["disk-full", "read-only", "permission-denied"],
)
def test_a_full_or_read_only_store_exits_1_with_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, advice: str
) -> None:
    import nluflow.store.local as registry

    root = tmp_path / "store"
    _store_with_two_models(root)
    pointer = (root / "bot" / "active.json").read_bytes()

    def failing_write(target: Path, chunks: object) -> None:
        raise OSError(code, os.strerror(code), str(target))

    monkeypatch.setattr(registry, "_atomic_write", failing_write)
    out = runner.invoke(app, ["models", "rollback", "--project", "bot", "--store", str(root)])
    text = out.output.replace("\n", "")
    assert out.exit_code == 1, text
    assert "Traceback" not in text and advice in text and os.strerror(code) in text
    assert (root / "bot" / "active.json").read_bytes() == pointer


def test_a_full_disk_under_a_bare_os_error_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nluflow.store.models as registry

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(registry.ModelStore, "local", full)
    out = runner.invoke(app, ["models", "list", "--project", "bot", "--store", str(tmp_path)])
    assert out.exit_code == 1
    assert "free space on the disk that holds the model store" in out.output.replace("\n", "")


def test_bad_input_still_exits_2(tmp_path: Path) -> None:
    out = runner.invoke(app, ["models", "show", "nope", "--project", "bot", "--store", str(tmp_path)])
    assert out.exit_code == 2


def test_a_read_only_store_whose_error_lost_its_cause_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error that crossed a Prefect task result keeps only its message; the errno in it still counts."""
    import nluflow.store.models as registry
    from nluflow.errors import StoreError

    def read_only(*args: object, **kwargs: object) -> None:
        raise StoreError(f"cannot write 'bot/active.json': [Errno {errno.EROFS}] Read-only file system")

    monkeypatch.setattr(registry.ModelStore, "local", read_only)
    out = runner.invoke(app, ["models", "list", "--project", "bot", "--store", str(tmp_path)])
    assert out.exit_code == 1
    assert "remount it read-write" in out.output.replace("\n", "")


def test_a_promotion_a_killed_run_left_half_way_is_closed_before_a_pointer_change(tmp_path: Path) -> None:
    from nluflow.recovery import intent_record

    root = tmp_path / "store"
    store = _store_with_two_models(root)  # a, then b active
    log = AuditLog(root / "bot" / "audit.jsonl")
    log.append(
        intent_record(
            project="bot", model_id="m-aaaaaaaaaaaa", previous_model_id="m-bbbbbbbbbbbb", run_id="r-7"
        )
    )
    store.activate("bot", "m-aaaaaaaaaaaa", run_id="r-7")  # the run switched the pointer, then was killed
    out = runner.invoke(app, ["models", "rollback", "--project", "bot", "--store", str(root)])
    assert out.exit_code == 0, out.output
    assert "audit line 2 (promote): recovered by cli: run r-7 switched the active pointer" in " ".join(
        out.output.split()
    )
    lines = _audit(root)
    assert [(x["decision"], x["model_id"], x.get("intent_seq")) for x in lines] == [
        ("promote-intent", "m-aaaaaaaaaaaa", None),
        ("promote", "m-aaaaaaaaaaaa", 1),
        ("rollback", "m-bbbbbbbbbbbb", None),
    ]
    assert lines[1]["recovered"] is True and log.verify().ok


def test_audit_seal_records_a_break_so_changes_can_be_recorded_again(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _store_with_two_models(root)
    path = root / "bot" / "audit.jsonl"
    log = AuditLog(path)
    for i in range(3):
        log.append({"run": i, "decision": "promote"})
    path.write_text(path.read_text().replace('"run":1', '"run":5'))
    args = ["--project", "bot", "--store", str(root)]
    out = runner.invoke(app, ["models", "rollback", *args])
    assert out.exit_code == 1
    assert "nluflow audit seal --project bot --reason TEXT" in " ".join(out.output.split())
    out = runner.invoke(app, ["audit", "seal", *args])
    assert out.exit_code == 2 and "--reason" in out.output  # a seal always says why

    out = runner.invoke(app, ["audit", "seal", *args, "--reason", "line 2 edited by hand; copy kept"])

    assert out.exit_code == 0, out.output
    assert "sealed bot's audit log at line 4: lines 2-3 were broken" in " ".join(out.output.split())
    out = runner.invoke(app, ["audit", "verify", *args])
    assert out.exit_code == 0, out.output
    assert "bot: sealed at line 4: lines 2-3 were broken" in " ".join(out.output.split())
    assert "intact, 4 lines" in out.output
    out = runner.invoke(app, ["models", "rollback", *args])
    assert out.exit_code == 0, out.output
    assert [x["decision"] for x in _audit(root)] == ["promote", "sealed", "rollback"]
    out = runner.invoke(app, ["audit", "seal", *args, "--reason", "again"])
    assert out.exit_code == 1 and "nothing to seal" in out.output
