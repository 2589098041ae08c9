"""Recorded contract: the requests our clients send, as the emulators received them, have the documented
shapes (restated here from the specs, independently of the emulators' own checks)."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs

import pytest
import yaml
from contract_kit import SECRETS, TEST_TEXTS, rig, tiny_dataset
from pydantic import BaseModel, ConfigDict, Field

from nluflow.testing.emulators import Fault
from nluflow.testing.emulators.cognigy import parse_multipart

HEX24 = r"^[0-9a-f]{24}$"
UUID = r"^[0-9a-f-]{36}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- Rasa 3.x (specs/rasa/README.md §1, §5, §6)
class RasaNLUItem(Strict):
    intent: str
    examples: str


class RasaTrainingDocument(Strict):
    version: str
    recipe: Literal["default.v1"]
    language: str
    assistant_id: str
    pipeline: list[dict[str, Any]]
    policies: list[dict[str, Any]]
    nlu: list[RasaNLUItem]


class RasaModelRequest(Strict):
    model_file: str


# --- Cognigy.AI (specs/cognigy/README.md §3.2)
class CognigyTrain(Strict):
    localeId: str = Field(pattern=HEX24)
    mode: Literal["full", "quick"]


class CognigyScores(Strict):
    flowReferenceId: str = Field(pattern=UUID)
    localeReferenceId: str = Field(pattern=UUID)
    sentence: str


class CognigySnapshot(Strict):
    projectId: str = Field(pattern=HEX24)
    name: str
    description: str


class CognigyEndpointPatch(Strict):
    entrypoint: str = Field(pattern=HEX24)


class CognigyExport(Strict):
    localeId: str = Field(pattern=HEX24)
    format: Literal["json", "csv"]


# --- NeuralSpace (specs/neuralspace/README.md)
class NSEntity(Strict):
    start: int
    end: int
    value: str
    entity: str


class NSExample(Strict):
    text: str
    intent: str
    entities: list[NSEntity]
    type: Literal["train", "test"]


class NSQueue(Strict):
    projectId: str
    language: str
    modelName: str
    noOfTrainingJob: int = Field(ge=1, le=5)


class NSParse(Strict):
    modelId: str
    text: str


# --- generic training service (nluflow/backends/service.py docstring)
class EarlyStopping(Strict):
    enabled: bool
    patience: int


class Folds(Strict):
    folds: int


class ServiceConfig(BaseModel):
    gpu_tier: Literal["none", "t4", "a10g", "a100"]
    early_stopping: EarlyStopping
    cross_validation: Folds
    epochs: int
    seed: int


class ServiceJob(Strict):
    dataset_id: str
    config: ServiceConfig


class ServicePredict(Strict):
    texts: list[str]


class ServiceDeploy(Strict):
    model_id: str


def test_rasa_requests(tmp_path: Path, model_kw: dict[str, Any]) -> None:
    data = tiny_dataset()
    with rig("rasa", tmp_path, model_kw, preload=data.subset(range(1, len(data)))) as r:
        r.cycle(data, "k", tmp_path / "m", TEST_TEXTS)
        em = r.emulator
    train = em.recorded("train")
    assert len(train) == 1
    assert train[0].headers["content-type"] == "application/x-yaml"
    query = parse_qs(train[0].query)
    assert query["save_to_default_model_directory"] == ["true"] and query["force_training"] == ["false"]
    document = RasaTrainingDocument.model_validate(yaml.safe_load(train[0].body))
    assert {item.intent for item in document.nlu} == {"greet", "goodbye", "book_flight"}
    for item in document.nlu:
        assert all(line.startswith("- ") for line in item.examples.splitlines())
    assert any("[Paris](city)" in item.examples for item in document.nlu)
    (test,) = em.recorded("predict")
    assert test.headers["content-type"] == "application/x-yaml"  # exactly, or Rasa reads it as JSON
    assert parse_qs(test.query)["model"][0].startswith("models/")
    for put in em.recorded("activate"):
        RasaModelRequest.model_validate_json(put.body)
    assert all(parse_qs(q.query)["token"] == [SECRETS["rasa"]] for q in em.requests)


@pytest.mark.parametrize("kind", ["cognigy", "cognigy-oauth2"])
def test_cognigy_requests(kind: str, tmp_path: Path, model_kw: dict[str, Any]) -> None:
    with rig(kind, tmp_path, model_kw) as r:
        r.cycle(tiny_dataset(), "k", tmp_path / "m", TEST_TEXTS)
        em = r.emulator
    (upload,) = em.recorded("upload")
    assert upload.headers["content-type"].startswith("multipart/form-data")
    parts = parse_multipart(upload.body, upload.headers["content-type"])
    assert set(parts) == {"file", "localeId", "mode", "flowId"}
    assert parts["mode"][1] in (b"skip", b"overwrite", b"merge") and re.match(
        HEX24, parts["localeId"][1].decode()
    )
    rows = list(csv.reader(io.StringIO(parts["file"][1].decode("utf-8"))))
    assert rows and all(len(row) == 3 and row[1] == "exampleSentence" for row in rows)
    assert parts["file"][0] is not None and parts["file"][0].endswith(".csv")
    for q in em.recorded("train"):
        CognigyTrain.model_validate_json(q.body)
    scores = em.recorded("predict")
    assert [CognigyScores.model_validate_json(q.body).sentence for q in scores] == TEST_TEXTS
    for q in em.recorded("snapshot"):
        CognigySnapshot.model_validate_json(q.body)
    for q in em.recorded("activate"):
        CognigyEndpointPatch.model_validate_json(q.body)
    for q in em.recorded("export"):
        CognigyExport.model_validate_json(q.body)
    assert all(q.body == b"" for q in em.requests if q.method == "GET")
    api = [q for q in em.requests if q.path.startswith("/new/v2.0/")]
    if kind == "cognigy":
        assert all(q.headers["x-api-key"] == SECRETS[kind] for q in api)
    else:
        (token,) = em.recorded("token")
        assert token.headers["content-type"] == "application/x-www-form-urlencoded"
        form = parse_qs(token.body.decode())
        assert form["grant_type"] == ["client_credentials"] and form["client_secret"] == [SECRETS[kind]]
        assert all(q.headers["authorization"].startswith("Bearer ") for q in api)


def test_neuralspace_requests(tmp_path: Path, model_kw: dict[str, Any]) -> None:
    with rig("neuralspace", tmp_path, model_kw) as r:
        r.cycle(tiny_dataset(), "k", tmp_path / "m", TEST_TEXTS)
        em = r.emulator
    (queue,) = em.recorded("train")
    NSQueue.model_validate_json(queue.body)
    (upload,) = em.recorded("upload")
    rows = upload.json()["trainingData"]
    assert len(rows) == len(tiny_dataset())
    for row in rows:
        NSExample.model_validate(row)
    assert [NSParse.model_validate_json(q.body).text for q in em.recorded("predict")] == TEST_TEXTS
    assert all(q.headers["authorization"] == SECRETS["neuralspace"] for q in em.requests)  # raw, no Bearer


def test_service_requests_and_one_idempotency_key(tmp_path: Path, model_kw: dict[str, Any]) -> None:
    with rig("service", tmp_path, model_kw) as r:
        r.emulator.faults.inject("train", Fault.BAD_GATEWAY, times=2)  # the job starts; two answers are lost
        r.cycle(tiny_dataset(), "the-key", tmp_path / "m", TEST_TEXTS)
        em = r.emulator
        assert r.jobs_started == 1
    jobs = em.recorded("train")
    assert len(jobs) == 3
    assert {q.headers["idempotency-key"] for q in jobs} == {"the-key"}
    assert {q.body for q in jobs} == {jobs[0].body}
    ServiceJob.model_validate_json(jobs[0].body)
    (upload,) = em.recorded("upload")
    assert upload.headers["content-type"] == "application/x-ndjson" and upload.headers["idempotency-key"]
    assert all(ServicePredict.model_validate_json(q.body) for q in em.recorded("predict"))
    assert all(ServiceDeploy.model_validate_json(q.body) for q in em.recorded("activate"))
