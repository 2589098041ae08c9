"""The CLI's exit codes and messages for bad input: one clear paragraph, exit 2, nothing changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from nluflow.audit import AuditLog
from nluflow.registry import ModelStore

runner = CliRunner()


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
