"""The CLI manages a model on an S3 store (moto's server on 127.0.0.1): list, show, promote, rollback and
audit verify through real commands, with the store opened from an ``nluflow-s3-model-store`` block.

The audit log lives in the bucket (``<prefix>/<project>/audit.jsonl``) and each pointer change appends to it
with a conditional write; the tests read the objects back to check what the commands left there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from typer.testing import CliRunner

from flows.cli import app
from nluflow.store import ModelStore
from nluflow.store.audit_log import ObjectAuditLog, open_audit_log
from nluflow.store.s3 import S3FileSystem
from tests.stores.conftest import MotoS3

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.usefixtures("prefect_api")

runner = CliRunner()
PROJECT = "bot"
PREFIX = "nlu"


def _save_block(moto_s3: MotoS3, bucket: str, name: str) -> str:
    from prefect_aws import AwsClientParameters, AwsCredentials
    from prefect_aws.s3 import S3Bucket

    from blocks.s3_store import S3ModelStore

    creds = AwsCredentials(
        aws_access_key_id=moto_s3.access_key_id,
        aws_secret_access_key=moto_s3.secret_access_key,
        region_name=moto_s3.region,
        aws_client_parameters=AwsClientParameters(endpoint_url=moto_s3.endpoint_url),
    )
    S3ModelStore(s3_bucket=S3Bucket(bucket_name=bucket, credentials=creds), prefix=PREFIX).save(
        name, overwrite=True
    )
    return f"nluflow-s3-model-store/{name}"


def _model(store: ModelStore, tmp_path: Path, model_id: str, f1: float) -> None:
    src = tmp_path / model_id
    src.mkdir()
    (src / "intent.pkl").write_bytes(f"weights of {model_id}".encode())
    store.add_model(PROJECT, model_id, src, backend="local", dataset_sha256="d" * 64, test_sha256="t" * 64,
                    config={}, metrics={"intent_accuracy": f1, "macro_f1": f1})  # fmt: skip


@pytest.fixture
def s3_store(moto_s3: MotoS3, s3_bucket: str, s3_client: S3Client, tmp_path: Path) -> tuple[ModelStore, str]:
    """An S3 store with m1 then m2 active, m3 a kept rejected candidate; and its block reference."""
    store = ModelStore(S3FileSystem(s3_client, s3_bucket, PREFIX))
    for model_id, f1 in (("m1", 0.80), ("m2", 0.85), ("m3", 0.84)):
        _model(store, tmp_path, model_id, f1)
    store.activate(PROJECT, "m1", reason="first")
    store.activate(PROJECT, "m2", reason="beats m1")
    store.record_rejected(PROJECT, "m3", reason="macro F1 below the active model")
    return store, _save_block(moto_s3, s3_bucket, f"cli-{s3_bucket}")


def _run(*args: str) -> str:
    out = runner.invoke(app, list(args))
    assert out.exit_code == 0, out.output
    return out.output


def _audit_lines(s3_client: S3Client, bucket: str) -> list[dict[str, Any]]:
    body = s3_client.get_object(Bucket=bucket, Key=f"{PREFIX}/{PROJECT}/audit.jsonl")["Body"].read()
    return [json.loads(line) for line in body.decode().splitlines()]


def test_the_cli_lists_shows_promotes_rolls_back_and_verifies_on_s3(
    s3_store: tuple[ModelStore, str], s3_client: S3Client, s3_bucket: str
) -> None:
    store, block = s3_store
    where = ["--project", PROJECT, "--store-block", block]

    listed = _run("models", "list", *where)
    assert f"S3 store s3://{s3_bucket}/{PREFIX}/" in listed.replace("\n", "")
    rows = {
        line.split("│")[2].strip(): line.split("│")[1].strip()
        for line in listed.splitlines()
        if "│ m" in line
    }
    assert rows == {"m1": "", "m2": "*", "m3": ""}

    shown = _run("models", "show", "m2", *where)
    assert (
        "files verified" in shown
        and "intent.pkl" in shown
        and store.manifest(PROJECT, "m2").sha256() in shown
    )

    promoted = _run(
        "models", "promote", "m3", "--reason", "the gate's test set missed the new intent", *where
    )
    assert "now m3" in promoted and "forced promote" in promoted
    pointer = store.active(PROJECT)
    assert pointer is not None and pointer.model_id == "m3"
    assert [e.model_id for e in store.rejected(PROJECT)] == []

    rolled = _run("models", "rollback", *where)
    assert "now m2" in rolled
    pointer = store.active(PROJECT)
    assert pointer is not None and pointer.model_id == "m2" and pointer.reason == "rollback from m3"

    lines = _audit_lines(s3_client, s3_bucket)
    assert [(x["seq"], x["decision"], x["model_id"], x["previous_model_id"]) for x in lines] == [
        (1, "forced-promote", "m3", "m2"),
        (2, "rollback", "m2", "m3"),
    ]
    assert lines[0]["reasons"] == ["the gate's test set missed the new intent"]
    assert lines[1]["prev_hash"] == lines[0]["hash"]

    verified = _run("audit", "verify", *where)
    assert (
        f"{PROJECT}: intact, 2 lines" in verified and "forced-promote" in verified and "rollback" in verified
    )
    everywhere = _run("audit", "verify", "--store-block", block)  # every project of the store
    assert f"{PROJECT}: intact, 2 lines" in everywhere


def test_audit_verify_on_s3_names_an_edited_line_and_seal_continues_the_chain(
    s3_store: tuple[ModelStore, str], s3_client: S3Client, s3_bucket: str
) -> None:
    store, block = s3_store
    where = ["--project", PROJECT, "--store-block", block]
    _run("models", "rollback", *where)  # m1
    _run("models", "activate", "m2", *where)  # m2 again; two lines
    key = f"{PREFIX}/{PROJECT}/audit.jsonl"
    body = s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read().decode()
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=body.replace('"m2"', '"m9"', 1).encode())

    out = runner.invoke(app, ["audit", "verify", *where])
    assert out.exit_code == 1
    text = out.output.replace("\n", "")
    assert f"broken: {PROJECT}" in text and "audit.jsonl:1:" in text and "nluflow audit seal" in text

    refused = runner.invoke(app, ["models", "activate", "m1", *where])  # the log cannot record it
    assert refused.exit_code != 0 and "audit log is broken" in refused.output.replace("\n", "")
    active = store.active(PROJECT)
    assert active is not None and active.model_id == "m2"

    sealed = _run("audit", "seal", "--reason", "edited by hand in the console; checked", *where)
    assert "sealed bot's audit log at line 3" in sealed
    verified = _run("audit", "verify", *where)
    assert "sealed at line 3" in verified and "intact" in verified


def test_object_audit_log_appends_retry_when_another_writer_got_there_first(
    s3_client: S3Client, s3_bucket: str
) -> None:
    fs = S3FileSystem(s3_client, s3_bucket, PREFIX)
    log = open_audit_log(fs, PROJECT)
    assert isinstance(log, ObjectAuditLog) and not log.exists()
    log.append({"decision": "promote", "model_id": "m1"})

    # The first conditional write meets a line another process appended after our read: S3 refuses it
    # (If-Match on the ETag we read), and the append reads again and chains after that line.
    other = ObjectAuditLog(S3FileSystem(s3_client, s3_bucket, PREFIX), PROJECT)
    real = fs.replace_if
    raced: list[bool] = []

    def racing(key: str, data: bytes, tag: str | None) -> bool:
        if not raced:
            raced.append(True)
            other.append({"decision": "reject", "model_id": "m2"})
        return real(key, data, tag)

    fs.replace_if = racing  # type: ignore[method-assign]
    line = log.append({"decision": "rollback", "model_id": "m0"})
    assert raced and line["seq"] == 3
    records = log.records()
    assert [(r["seq"], r["decision"]) for r in records] == [(1, "promote"), (2, "reject"), (3, "rollback")]
    assert log.verify().ok


def test_a_stale_tag_never_overwrites_the_s3_log(s3_client: S3Client, s3_bucket: str) -> None:
    fs = S3FileSystem(s3_client, s3_bucket, PREFIX)
    assert fs.replace_if("p/audit.jsonl", b"one\n", None) is True
    assert fs.replace_if("p/audit.jsonl", b"two\n", None) is False  # exists already
    data, tag = fs.read_tagged("p/audit.jsonl")
    assert data == b"one\n" and tag is not None
    assert fs.replace_if("p/audit.jsonl", b"one\nthree\n", tag) is True
    assert fs.replace_if("p/audit.jsonl", b"stale\n", tag) is False  # the tag names the old version
    assert fs.read_tagged("p/audit.jsonl")[0] == b"one\nthree\n"
    assert fs.read_tagged("p/missing.jsonl") == (b"", None)


def test_a_torn_tail_on_s3_is_moved_aside_and_recorded(s3_client: S3Client, s3_bucket: str) -> None:
    fs = S3FileSystem(s3_client, s3_bucket, PREFIX)
    log = open_audit_log(fs, PROJECT)
    log.append({"decision": "promote", "model_id": "m1"})
    data, _ = fs.read_tagged(f"{PROJECT}/audit.jsonl")
    s3_client.put_object(
        Bucket=s3_bucket, Key=f"{PREFIX}/{PROJECT}/audit.jsonl", Body=data + b'{"seq": 2, "dec'
    )
    assert not log.verify().ok
    line = log.append({"decision": "reject", "model_id": "m2"})
    assert line["seq"] == 3 and log.verify().ok
    records = log.records()
    assert [r["decision"] for r in records] == ["promote", "repaired", "reject"]
    aside = records[1]["torn_file"]
    assert aside.startswith("audit.jsonl.torn-")
    assert fs.read_bytes(f"{PROJECT}/{aside}") == b'{"seq": 2, "dec'
    assert log.repairs and "moved to" in log.repairs[0]


def test_the_flows_local_copy_takes_the_lines_the_cli_wrote_in_s3_before_it_appends(
    s3_client: S3Client, s3_bucket: str, tmp_path: Path
) -> None:
    """A remote store's flow appends to a local copy and uploads it: it first adopts the store's newer lines
    (here two written by the CLI through the S3 log), so the upload never drops them; a copy that diverged
    from the store is refused and nothing changes."""
    from nluflow.errors import AuditError
    from nluflow.store.audit_log import AuditLog, refresh_audit_copy

    fs = S3FileSystem(s3_client, s3_bucket, PREFIX)
    copy = tmp_path / "work" / "audit" / PROJECT / "audit.jsonl"
    assert refresh_audit_copy(fs, PROJECT, copy) is False  # nothing in the store yet
    cli = open_audit_log(fs, PROJECT)
    cli.append({"decision": "rollback", "model_id": "m1"})
    cli.append({"decision": "activate", "model_id": "m2"})
    assert refresh_audit_copy(fs, PROJECT, copy) is True
    local = AuditLog(copy)
    assert local.append({"decision": "promote", "model_id": "m3"})["seq"] == 3
    assert refresh_audit_copy(fs, PROJECT, copy) is False  # the copy is ahead: its upload follows
    fs.put_file(copy, f"{PROJECT}/audit.jsonl")
    assert [r["decision"] for r in cli.records()] == ["rollback", "activate", "promote"] and cli.verify().ok

    cli.append({"decision": "activate", "model_id": "m1"})  # the store moves on ...
    local.append({"decision": "reject", "model_id": "m4"})  # ... and so does the copy: diverged
    before = copy.read_bytes()
    with pytest.raises(AuditError, match="diverged"):
        refresh_audit_copy(fs, PROJECT, copy)
    assert copy.read_bytes() == before


@pytest.mark.slow
def test_a_retrain_on_s3_keeps_the_line_the_cli_wrote_between_two_runs(
    moto_s3: MotoS3, s3_bucket: str, s3_client: S3Client, demo_data: Path, tmp_path: Path
) -> None:
    """Retrain on an S3 store block, a CLI change in between (a test-set reset, written straight to the S3
    log), retrain again from the same workspace: the second run's local audit copy takes the CLI's line
    first, so the log in the bucket keeps every line and its chain is intact."""
    from flows.retrain import RetrainParams, retrain
    from nluflow.evaluation.gates import GatePolicy

    block = _save_block(moto_s3, s3_bucket, f"flow-{s3_bucket}")

    def run(*files: str) -> None:
        params = RetrainParams(
            project=PROJECT,
            data=[str(demo_data / name) for name in files],
            store_block=block,
            workspace=str(tmp_path / "work"),
            gates=GatePolicy(min_macro_f1=0.5, min_precision=0.5),
        )
        retrain(params)

    run("batch-1.jsonl")
    _run("testset", "reset", "--project", PROJECT, "--store-block", block, "--reason", "new intents")
    run("batch-1.jsonl", "batch-2.jsonl")  # the new test set is split off what the active model never saw
    decisions = [line["decision"] for line in _audit_lines(s3_client, s3_bucket)]
    assert "testset-reset" in decisions and decisions.index("testset-reset") > decisions.index("promote")
    assert (
        decisions[-1] in ("promote", "reject", "unchanged")
        and len(decisions) > decisions.index("testset-reset") + 1
    )
    verified = _run("audit", "verify", "--project", PROJECT, "--store-block", block)
    assert f"{PROJECT}: intact, {len(decisions)} lines" in verified
