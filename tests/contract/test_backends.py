"""Each backend against its emulator over real HTTP on 127.0.0.1: train, poll, fetch, predict, activate,
roll back, plus what is particular to each platform."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from contract_kit import BACKENDS, SECRETS, TEST_TEXTS, make_backend, rig, tiny_dataset

from nluflow.backends.base import JobState, ModelRef, TrainingBackend, TrainingConfig
from nluflow.backends.cognigy import CognigyBackend, CognigySettings
from nluflow.backends.errors import (
    AuthenticationError,
    ContractError,
    MalformedResponseError,
    ServedModelMismatchError,
    TrainingOutcomeUnknownError,
    TransientHTTPError,
)
from nluflow.backends.http import HttpOptions, default_timeout, wait_for_job
from nluflow.backends.neuralspace import NeuralSpaceBackend, check_minimum, state_of
from nluflow.backends.rasa import (
    PADDING_INTENT,
    PLACEHOLDER_INTENT,
    RasaBackend,
    RasaSettings,
    archive_tag,
    tag_project,
)
from nluflow.backends.rasa.training import lost_answer
from nluflow.backends.service import ServiceSettings, TrainingServiceBackend
from nluflow.data.schema import Dataset, Entity, Example
from nluflow.errors import BackendError, ConfigError, TrainingFailedError, TransientBackendError
from nluflow.testing.emulators import Fault, JobOutcome
from nluflow.testing.emulators.cognigy import CognigyEmulator
from nluflow.testing.emulators.rasa import RasaEmulator, make_jwt

INTENTS = {"greet", "goodbye", "book_flight"}


def variant(n: int) -> Dataset:
    """A slightly different training set each time (drop one example), so each one is a new model."""
    data = tiny_dataset()
    return data.subset([i for i in range(len(data)) if i != n])


@pytest.mark.parametrize("kind", BACKENDS)
def test_full_cycle_then_rollback(kind: str, tmp_path: Path, model_kw: dict[str, Any]) -> None:
    with rig(kind, tmp_path, model_kw, preload=variant(32)) as r:
        assert isinstance(r.backend, TrainingBackend)
        first, parses = r.cycle(variant(0), "key-first", tmp_path / "first", TEST_TEXTS)
        assert [p.text for p in parses] == TEST_TEXTS
        assert {p.intent.name for p in parses} <= INTENTS and parses[0].intent.name == "greet"
        assert all(0.0 <= p.intent.confidence <= 1.0 for p in parses)
        assert first.path and any(Path(first.path).iterdir())
        if kind in ("service", "neuralspace"):  # these platforms return entities from their parse call
            assert [(e.entity, e.value) for e in parses[2].entities] == [("city", "Paris")]
        served_first = r.served_model()
        assert served_first

        second, _ = r.cycle(variant(1), "key-second", tmp_path / "second", TEST_TEXTS)
        assert second.backend_model_id != first.backend_model_id
        assert r.served_model() != served_first
        jobs = r.jobs_started
        r.backend.activate(first)  # rollback: the platform serves the first model again
        assert r.served_model() == served_first
        assert r.jobs_started == jobs, "a rollback never trains"
        assert r.jobs_started == 2


@pytest.mark.parametrize("kind", BACKENDS)
def test_failed_job_is_a_typed_failure_and_nothing_is_served(
    kind: str, tmp_path: Path, model_kw: dict[str, Any]
) -> None:
    with rig(kind, tmp_path, model_kw, preload=variant(32)) as r:
        before = r.served_model()
        r.emulator.outcome = JobOutcome.FAIL
        with pytest.raises(TrainingFailedError):
            r.cycle(variant(0), "key-failing", tmp_path / "m", TEST_TEXTS)
        assert r.jobs_started == 1 and r.served_model() == before


# ------------------------------------------------------------------------------------------------- service


def test_service_same_key_same_job_and_epoch_metrics(tmp_path: Path, model_kw: dict[str, Any]) -> None:
    with rig("service", tmp_path, model_kw) as r:
        data = variant(0)
        a = r.backend.submit(data, TrainingConfig(), "key-1")
        b = r.backend.submit(data, TrainingConfig(), "key-1")
        assert a.job_id == b.job_id and r.jobs_started == 1
        wait_for_job(lambda: r.backend.status(a), max_wait=5, what="job", sleep=r.sleep)
        model = r.backend.fetch(a, tmp_path / "m")
        assert {"loss", "val_loss", "accuracy"} <= set(model.metrics)
        status = r.backend.status(a)
        assert status.state is JobState.SUCCEEDED and status.progress == 1.0
        body = r.emulator.recorded("train")[0].json()
        assert body["config"]["gpu_tier"] == "none"
        assert body["config"]["early_stopping"] == {"enabled": True, "patience": 5}


def test_service_unknown_status_word_is_a_contract_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            return httpx.Response(200, json={"access_token": "t" * 20, "expires_in": 60})
        return httpx.Response(200, json={"id": "j1", "status": "exploded"})

    backend = TrainingServiceBackend(
        "http://svc.test", "c", "secret-x", http=HttpOptions(transport=httpx.MockTransport(handler))
    )
    from nluflow.backends.base import JobRef

    with pytest.raises(ContractError, match="'exploded'"):
        backend.status(JobRef(backend="service", job_id="j1", idempotency_key="k"))


def test_service_field_names_and_paths_are_configurable() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        if request.url.path == "/auth/token":
            return httpx.Response(200, json={"access_token": "t" * 20, "expires_in": 60})
        if request.url.path == "/v2/data":
            return httpx.Response(201, json={"datasetId": "d1"})
        if request.url.path == "/v2/trainings":
            return httpx.Response(201, json={"trainingId": "t1"})
        return httpx.Response(200, json={"trainingId": "t1", "state": "DONE", "pct": 1})

    settings = ServiceSettings(
        paths={
            "token": "/auth/token",
            "datasets": "/v2/data",
            "jobs": "/v2/trainings",
            "job": "/v2/trainings/{job_id}",
        },
        fields={
            "dataset_id": "datasetId",
            "job_id": "trainingId",
            "status": "state",
            "progress": "pct",
            "states": {"done": "succeeded"},
        },
    )
    backend = TrainingServiceBackend(
        "http://svc.test",
        "c",
        "secret-x",
        settings=settings,
        http=HttpOptions(transport=httpx.MockTransport(handler)),
    )
    job = backend.submit(tiny_dataset(), TrainingConfig(), "k")
    assert job.job_id == "t1" and backend.status(job).state is JobState.SUCCEEDED
    assert seen[-1] == "GET /v2/trainings/t1"


# ---------------------------------------------------------------------------------------------------- rasa


def test_rasa_3_trains_unchanged_data_again_and_tags_each_archive_with_its_run(
    tmp_path: Path, model_kw: dict[str, Any]
) -> None:
    """Rasa 3.x has no "Nothing changed" reply: the same data trains again into a new archive. Each archive's
    metadata.json carries the assistant_id nluflow sent: the project and a hash of the run's training key."""
    with rig("rasa", tmp_path, model_kw, preload=variant(32)) as r:
        em, backend = r.emulator, r.backend
        assert isinstance(em, RasaEmulator) and isinstance(backend, RasaBackend)
        backend.bind_project("shop")
        one = backend.submit(variant(0), TrainingConfig(), "k1")
        two = backend.submit(variant(0), TrainingConfig(), "k2")
        assert one.job_id != two.job_id and r.jobs_started == 2
        assert em.assistant_id_of(one.job_id) == archive_tag("shop", "k1") == one.data["assistant_id"]
        assert em.assistant_id_of(two.job_id) == archive_tag("shop", "k2")
        assert archive_tag("shop", "k1").startswith("nluflow.shop.") and tag_project(one.data["assistant_id"])
        assert em.trainings == [archive_tag("shop", "k1"), archive_tag("shop", "k2")]
        body = r.emulator.recorded("train")[0]
        assert body.headers["content-type"] == "application/x-yaml"
        assert "force_training=false" in body.query and "save_to_default_model_directory=true" in body.query


def test_rasa_lost_answer_is_found_in_the_models_folder_without_a_loaded_model(
    tmp_path: Path, model_kw: dict[str, Any]
) -> None:
    """No model loaded: GET /status answers 409 and cannot count trainings. The dropped answer's training
    ran; its archive, found by assistant_id in the server's models folder, is the job's model."""
    with rig("rasa", tmp_path, model_kw) as r:
        r.emulator.faults.inject("train", Fault.DROP)
        job = r.backend.submit(variant(0), TrainingConfig(), "k1")
        assert r.jobs_started == 1 and len(r.emulator.recorded("train")) == 1
        assert isinstance(r.emulator, RasaEmulator) and job.job_id == r.emulator.latest
        model = r.backend.fetch(job, tmp_path / "m")
        assert (Path(model.path or "") / job.job_id).read_bytes() == (
            r.emulator.models_folder / job.job_id
        ).read_bytes()


@pytest.mark.slow
def test_rasa_lost_answer_without_the_models_folder_is_not_resent_and_not_retried(
    tmp_path: Path, model_kw: dict[str, Any]
) -> None:
    """Without the server's models folder nothing can find the archive the lost request wrote: the error is
    not transient (a task retry would train again) and says what happened and what to set."""
    with rig("rasa", tmp_path, model_kw, preload=variant(32), server_models_folder=None) as r:
        r.emulator.faults.inject("train", Fault.SLOW)
        with pytest.raises(TrainingOutcomeUnknownError) as caught:
            r.backend.submit(variant(0), TrainingConfig(), "k1")
        message = str(caught.value)
        assert not isinstance(caught.value, TransientBackendError)
        assert "no answer within the train timeout" in message and "not resent" in message
        assert "server_models_folder" in message and "train_timeout_seconds" in message
        assert archive_tag(None, "k1") in message and SECRETS["rasa"] not in message
        assert r.jobs_started == 1 and len(r.emulator.recorded("train")) == 1
        # Run again (the message says so): it trains once more, now with an answer.
        r.emulator.faults.clear()
        r.backend.submit(variant(0), TrainingConfig(), "k1")
        assert r.jobs_started == 2


@pytest.mark.slow
def test_rasa_training_that_never_ends_is_never_resent(tmp_path: Path, model_kw: dict[str, Any]) -> None:
    with rig("rasa", tmp_path, model_kw, preload=variant(32), train_timeout=1.0, idle_wait=1.0) as r:
        r.emulator.outcome = JobOutcome.NEVER_FINISH
        for _ in range(2):  # the call, then a task retry
            with pytest.raises(TransientHTTPError) as caught:
                r.backend.submit(variant(0), TrainingConfig(), "k1")
            assert "still training" in str(caught.value) and "not resent" in str(caught.value)
        assert r.jobs_started == 1 and len(r.emulator.recorded("train")) == 1


def test_rasa_jwt_auth_and_role(tmp_path: Path, model_kw: dict[str, Any]) -> None:
    em = RasaEmulator(jwt_secret="jwt-signing-secret", workdir=tmp_path / "server", **model_kw)
    em.preload(variant(29))
    with em.serve() as served:
        admin = make_jwt("jwt-signing-secret", {"user": {"username": "ci", "role": "admin"}})
        backend = RasaBackend(served.url, jwt=admin, workdir=tmp_path / "client")
        assert backend.served_model() == em.loaded[0]  # type: ignore[index]
        guest = make_jwt("jwt-signing-secret", {"user": {"username": "ci", "role": "guest"}})
        with pytest.raises(AuthenticationError, match="403"):
            RasaBackend(served.url, jwt=guest, workdir=tmp_path / "client").served_model()
        forged = make_jwt("another-secret", {"user": {"username": "ci", "role": "admin"}})
        with pytest.raises(AuthenticationError, match="401"):
            RasaBackend(served.url, jwt=forged, workdir=tmp_path / "client").served_model()
        assert em.recorded("status")[0].headers["authorization"].startswith("Bearer ")


def test_rasa_evaluation_server_gives_full_parses(tmp_path: Path, model_kw: dict[str, Any]) -> None:
    """With an evaluation server the candidate is parsed there; the production server keeps its model."""
    with rig("rasa", tmp_path, model_kw, preload=variant(32)) as prod:
        assert isinstance(prod.emulator, RasaEmulator)
        serving = prod.emulator.loaded[0]  # type: ignore[index]
        # The evaluation server shares the production server's model folder.
        evaluation = RasaEmulator(token=SECRETS["rasa"], workdir=prod.emulator.workdir, **model_kw)
        with evaluation.serve() as ev:
            backend = RasaBackend(
                prod.served.url,
                token=SECRETS["rasa"],
                settings=RasaSettings(evaluation_url=ev.url),
                workdir=tmp_path / "client",
                http=HttpOptions(timeout=default_timeout(read=5.0)),
            )
            job = backend.submit(variant(0), TrainingConfig(), "k1")
            model = backend.fetch(job, tmp_path / "m")
            parses = backend.predict(model, TEST_TEXTS)
            assert parses[0].intent.name == "greet" and len(parses[0].intent_ranking) >= 2
            assert [(e.entity, e.value) for e in parses[2].entities] == [("city", "Paris")]
            assert prod.emulator.loaded[0] == serving  # type: ignore[index]
            assert evaluation.loaded is not None and evaluation.loaded[0] == job.job_id
            assert [json.loads(r.body)["text"] for r in evaluation.recorded("parse")] == TEST_TEXTS


def test_rasa_server_side_training_failure_is_not_blamed_on_the_data(
    tmp_path: Path, model_kw: dict[str, Any]
) -> None:
    """Rasa's 500 TrainingError covers any error while training: the message says so and shows Rasa's."""
    with rig("rasa", tmp_path, model_kw, preload=variant(32)) as r:
        r.emulator.outcome = JobOutcome.FAIL
        with pytest.raises(TrainingFailedError) as caught:
            r.backend.submit(variant(0), TrainingConfig(), "k1")
        message = str(caught.value)
        assert "needs fixing" not in message and "server's log" in message
        assert "An unexpected error occurred during training" in message
        assert "no model was produced" in message
        assert r.jobs_started == 1


def test_rasa_server_failure_while_training_is_reported_as_the_server_s(
    tmp_path: Path, model_kw: dict[str, Any]
) -> None:
    """Rasa's TrainingError carrying the server's own failure (disk full here) names the server, not the
    data; a bare 5xx to the train call says the server failed or never started it, and is not resent."""
    with rig("rasa", tmp_path, model_kw, preload=variant(32)) as r:
        r.emulator.outcome = JobOutcome.ERROR
        with pytest.raises(TrainingFailedError) as caught:
            r.backend.submit(variant(0), TrainingConfig(), "k1")
        message = str(caught.value)
        assert "No space left on device" in message and "failure of the server" in message
        assert "not of the data or the pipeline" in message and "fix the data" not in message
        r.emulator.faults.inject("train", Fault.SERVER_ERROR)
        with pytest.raises(TransientHTTPError) as lost:
            r.backend.submit(variant(0), TrainingConfig(), "k2")
        message = str(lost.value)
        assert "answered 500" in message and "a server failure, not a problem with the data" in message
        assert "not resent" in message and "the next retry trains once more" in message
        assert r.jobs_started == 1 and len(r.emulator.recorded("train")) == 2


def test_rasa_two_projects_on_one_server_are_refused(tmp_path: Path, model_kw: dict[str, Any]) -> None:
    """Rasa serves one model. With project A's model served, project B may not train, evaluate or activate
    there; when B's model got served anyway (by hand), A's evaluation and rollback are refused, and the
    served model does not change."""
    with rig("rasa", tmp_path, model_kw, preload=variant(32)) as r:
        em, a = r.emulator, r.backend
        assert isinstance(em, RasaEmulator) and isinstance(a, RasaBackend)
        b = make_backend("rasa", em, r.served.url, r.sleep, tmp_path / "rasa-client-b")
        assert isinstance(b, RasaBackend)
        a.bind_project("shop")
        b.bind_project("bank")
        b_job = b.submit(variant(2), TrainingConfig(), "key-b")  # nothing of A's is served yet: allowed
        b_model = b.fetch(b_job, tmp_path / "b1")
        first, _ = r.cycle(variant(0), "key-a1", tmp_path / "a1", TEST_TEXTS)
        second, _ = r.cycle(variant(1), "key-a2", tmp_path / "a2", TEST_TEXTS)
        assert r.served_model() == second.model_id
        trained = r.jobs_started
        with pytest.raises(ServedModelMismatchError) as caught:
            b.submit(variant(3), TrainingConfig(), "key-b2")
        message = str(caught.value)
        assert second.model_id in message and "'shop'" in message and "'bank'" in message
        assert "its own Rasa server" in message and SECRETS["rasa"] not in message
        with pytest.raises(ServedModelMismatchError):
            b.activate(b_model)
        assert r.jobs_started == trained and r.served_model() == second.model_id
        # B's model is loaded by hand: A's active pointer now names a model the server no longer serves.
        httpx.put(
            f"{r.served.url}/model",
            params={"token": SECRETS["rasa"]},
            json={"model_file": f"models/{b_model.model_id}"},
        ).raise_for_status()
        with pytest.raises(ServedModelMismatchError, match="refuses to evaluate"):
            a.predict_labelled(second, [Example(text="hello", intent="greet")])
        with pytest.raises(ServedModelMismatchError, match="refuses to activate or roll back"):
            a.activate(first)  # a rollback
        assert r.served_model() == b_model.model_id, "the served model did not change"
        with pytest.raises(ServedModelMismatchError, match="a model trained for project 'bank'"):
            a.check_active_served(second, "shop")  # what fetch-active-model asks before a run evaluates
        b.check_active_served(b_model, "bank")  # the served model is bank's active one: fine


def test_rasa_rollback_reuploads_an_archive_the_server_lost(tmp_path: Path, model_kw: dict[str, Any]) -> None:
    """The previous archive was removed from the server's models folder: with that folder configured the
    client copies the archive from nluflow's copy (the store's) back there, and the server serves it."""
    server_models = tmp_path / "rasa-server" / "models"  # the rig's server folder, as a shared volume
    with rig("rasa", tmp_path, model_kw, preload=variant(32), server_models_folder=str(server_models)) as r:
        em = r.emulator
        assert isinstance(em, RasaEmulator) and em.models_folder == server_models
        first, _ = r.cycle(variant(0), "key-first", tmp_path / "first", TEST_TEXTS)
        second, _ = r.cycle(variant(1), "key-second", tmp_path / "second", TEST_TEXTS)
        assert r.served_model() == second.model_id
        em.lose_archive(first.model_id)
        refused = len(em.recorded("activate"))
        r.backend.activate(first)  # rollback
        assert r.served_model() == first.model_id, "pointer and served model agree"
        stored = (Path(first.path or "") / first.model_id).read_bytes()
        assert (server_models / first.model_id).read_bytes() == stored
        assert not list(server_models.glob("*.part")), "no half-written archive is left on the server"
        assert len(em.recorded("activate")) == refused + 2  # refused once, loaded after the copy
        assert r.jobs_started == 2, "a rollback never trains"


def test_rasa_rollback_without_the_models_folder_says_what_to_do(
    tmp_path: Path, model_kw: dict[str, Any]
) -> None:
    """Without the server's models folder in the block the archive cannot be put back over Rasa's API (it has
    no upload call): the error names the archive nluflow holds and where it must go; nothing changes."""
    with rig("rasa", tmp_path, model_kw, preload=variant(32), server_models_folder=None) as r:
        em = r.emulator
        assert isinstance(em, RasaEmulator)
        first, _ = r.cycle(variant(0), "key-first", tmp_path / "first", TEST_TEXTS)
        second, _ = r.cycle(variant(1), "key-second", tmp_path / "second", TEST_TEXTS)
        em.lose_archive(first.model_id)
        with pytest.raises(BackendError) as caught:
            r.backend.activate(first)
        message = str(caught.value)
        assert f"models/{first.model_id}" in message
        assert str(Path(first.path or "") / first.model_id) in message
        assert "server_models_folder" in message and SECRETS["rasa"] not in message
        assert r.served_model() == second.model_id, "the served model did not change"


def test_rasa_rollback_with_the_archive_missing_everywhere_is_a_clear_error(
    tmp_path: Path, model_kw: dict[str, Any]
) -> None:
    server_models = tmp_path / "rasa-server" / "models"
    with rig("rasa", tmp_path, model_kw, preload=variant(32), server_models_folder=str(server_models)) as r:
        em = r.emulator
        assert isinstance(em, RasaEmulator)
        first, _ = r.cycle(variant(0), "key-first", tmp_path / "first", TEST_TEXTS)
        second, _ = r.cycle(variant(1), "key-second", tmp_path / "second", TEST_TEXTS)
        em.lose_archive(first.model_id)
        (Path(first.path or "") / first.model_id).unlink()
        with pytest.raises(BackendError, match="nluflow has no copy of it either"):
            r.backend.activate(first)
        assert r.served_model() == second.model_id and not (server_models / first.model_id).exists()


def test_rasa_bad_training_data_fails_at_once(tmp_path: Path, model_kw: dict[str, Any]) -> None:
    with rig("rasa", tmp_path, model_kw, preload=variant(32)) as r:
        backend = r.backend
        assert isinstance(backend, RasaBackend)
        backend.pipeline = [{"name": "WhitespaceTokenizer"}]
        with pytest.raises(ConfigError):
            backend.submit(Dataset(), TrainingConfig(), "k")
        assert r.jobs_started == 0


# Rasa 3.x's answer to POST /model/test/intents, field for field (rasa/nlu/test.py: run_evaluation builds
# {"intent_evaluation", "entity_evaluation", "response_selection_evaluation"}, each None unless evaluated;
# evaluate_intents' predictions are {"text", "intent", "predicted", "confidence"}; evaluate_entities is keyed
# by extractor, its errors are {"text", "entities", "predicted_entities"}).
RASA_INTENTS = {
    "predictions": [
        {"text": "hello there", "intent": "greet", "predicted": "greet", "confidence": 0.93},
        {
            "text": "book a flight to Paris",
            "intent": "book_flight",
            "predicted": "book_flight",
            "confidence": 0.8,
        },
    ],
    "report": {"greet": {"precision": 1.0, "recall": 1.0, "f1-score": 1.0, "support": 1}},
    "precision": 1.0,
    "f1_score": 1.0,
    "accuracy": 1.0,
    "errors": [],
}
RASA_ENTITIES = {
    "DIETClassifier": {
        "report": {},
        "precision": 0.0,
        "f1_score": 0.0,
        "accuracy": 0.9,
        "errors": [
            {
                "text": "book a flight to Paris",
                "entities": [{"start": 17, "end": 22, "value": "Paris", "entity": "city"}],
                "predicted_entities": [
                    {
                        "entity": "city",
                        "start": 14,
                        "end": 22,
                        "confidence_entity": 0.71,
                        "value": "to Paris",
                        "extractor": "DIETClassifier",
                    },
                    {
                        "entity": "GPE",
                        "start": 17,
                        "end": 22,
                        "value": "Paris",
                        "extractor": "SpacyEntityExtractor",
                    },
                ],
            }
        ],
    },
    "SpacyEntityExtractor": {"report": {}, "precision": 1.0, "f1_score": 1.0, "accuracy": 1.0, "errors": []},
}
RASA_TEST_SET = [
    Example(text="hello there", intent="greet"),
    Example(
        text="hello there", intent="greet"
    ),  # identical: Rasa de-duplicates it, both share one prediction
    Example(
        text="book a flight to Paris",
        intent="book_flight",
        entities=(Entity(start=17, end=22, entity="city", value="Paris"),),
    ),
]


def _rasa_answering(answer: dict[str, Any], seen: list[httpx.Request]) -> RasaBackend:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=answer)

    http = HttpOptions(transport=httpx.MockTransport(handler), sleep=lambda _: None)
    return RasaBackend("http://rasa.test", http=http)


def _model() -> ModelRef:
    return ModelRef(backend="rasa", model_id="nlu-1.tar.gz", backend_model_id="models/nlu-1.tar.gz")


def test_rasa_3_test_intents_shapes_are_matched_back_by_text() -> None:
    """De-duplicated predictions, several extractors, an entity error: each utterance gets its prediction."""
    seen: list[httpx.Request] = []
    answer = {
        "intent_evaluation": RASA_INTENTS,
        "entity_evaluation": RASA_ENTITIES,
        "response_selection_evaluation": None,
    }
    parses = _rasa_answering(answer, seen).predict_labelled(_model(), RASA_TEST_SET)
    assert [p.intent.name for p in parses] == ["greet", "greet", "book_flight"]
    assert parses[0] == parses[1] and parses[0].entities == ()
    # DIETClassifier's own wrong span, not the spaCy extractor's: scored for real, not zero and not gold.
    assert [(e.start, e.end, e.entity, e.value) for e in parses[2].entities] == [(14, 22, "city", "to Paris")]
    sent = yaml.safe_load(seen[0].content)
    intents = {item["intent"] for item in sent["nlu"]}
    assert intents == {"greet", "book_flight"}, "the true labels are sent, no placeholder"
    assert "[Paris](city)" in seen[0].content.decode()


def test_rasa_3_null_entity_evaluation_means_no_entities_and_correct_spans_are_the_targets() -> None:
    seen: list[httpx.Request] = []
    no_errors = {"DIETClassifier": {**RASA_ENTITIES["DIETClassifier"], "errors": []}}
    backend = _rasa_answering({"intent_evaluation": RASA_INTENTS, "entity_evaluation": no_errors}, seen)
    assert [(e.entity, e.value) for e in backend.predict_labelled(_model(), RASA_TEST_SET)[2].entities] == [
        ("city", "Paris")
    ]
    backend = _rasa_answering({"intent_evaluation": RASA_INTENTS, "entity_evaluation": None}, seen)
    assert all(p.entities == () for p in backend.predict_labelled(_model(), RASA_TEST_SET))


def test_rasa_3_null_intent_evaluation_and_missing_predictions_are_clear_errors() -> None:
    seen: list[httpx.Request] = []
    null = {"intent_evaluation": None, "entity_evaluation": None, "response_selection_evaluation": None}
    with pytest.raises(ContractError, match=r"intent_evaluation is null.*intent classifier"):
        _rasa_answering(null, seen).predict_labelled(_model(), RASA_TEST_SET)
    partial = {**RASA_INTENTS, "predictions": RASA_INTENTS["predictions"][:1]}
    with pytest.raises(ContractError, match="no prediction for test utterance 'book a flight to Paris'"):
        _rasa_answering({"intent_evaluation": partial, "entity_evaluation": None}, seen).predict_labelled(
            _model(), RASA_TEST_SET
        )


def test_rasa_texts_are_matched_as_rasa_reads_them_back_and_offsets_mapped_to_ours() -> None:
    """Rasa's YAML reader strips each example: a leading-space, two-line text comes back stripped on one line;
    the prediction still reaches it and entity offsets are shifted back into the original text."""
    text = "  fly to\nParis"
    example = Example(
        text=text, intent="book_flight", entities=(Entity(start=9, end=14, entity="city", value="Paris"),)
    )
    answer = {
        "intent_evaluation": {
            **RASA_INTENTS,
            "predictions": [
                RASA_INTENTS["predictions"][0],
                {"text": "fly to Paris", "intent": "book_flight", "predicted": None, "confidence": None},
            ],
        },
        "entity_evaluation": {
            "DIETClassifier": {
                **RASA_ENTITIES["DIETClassifier"],
                "errors": [
                    {
                        "text": "fly to Paris",
                        "entities": [{"start": 7, "end": 12, "value": "Paris", "entity": "city"}],
                        "predicted_entities": [
                            {
                                "start": 4,
                                "end": 12,
                                "value": "to Paris",
                                "entity": "city",
                                "extractor": "DIETClassifier",
                            }
                        ],
                    }
                ],
            }
        },
    }
    seen: list[httpx.Request] = []
    parses = _rasa_answering(answer, seen).predict_labelled(_model(), [RASA_TEST_SET[0], example])
    assert "- fly to [Paris](city)" in seen[0].content.decode()
    assert parses[1].text == text and parses[1].intent.name == "" and parses[1].intent.confidence == 0.0
    assert [(e.start, e.end, e.value) for e in parses[1].entities] == [(6, 14, "to Paris")]
    assert text[6:14] == "to\nParis"


def test_rasa_one_intent_set_is_padded_to_two_intents(tmp_path: Path, model_kw: dict[str, Any]) -> None:
    """Rasa 3.x answers intent_evaluation null for one intent: the client pads; predictions stay per text."""
    with rig("rasa", tmp_path, model_kw, preload=variant(32)) as r:
        assert isinstance(r.backend, RasaBackend)
        model = r.backend.fetch(r.backend.submit(variant(0), TrainingConfig(), "k1"), tmp_path / "m")
        parses = r.backend.predict(model, ["hello there", "hello there", "hi"])
        assert [p.text for p in parses] == ["hello there", "hello there", "hi"]
        assert parses[0] == parses[1] and parses[0].intent.name == "greet"
        sent = yaml.safe_load(r.emulator.recorded("predict")[-1].body)
        assert {item["intent"] for item in sent["nlu"]} == {PLACEHOLDER_INTENT, PADDING_INTENT}


def test_rasa_labelled_test_set_scores_intents_and_entities_against_the_emulator(
    tmp_path: Path, model_kw: dict[str, Any]
) -> None:
    """The emulator answers as Rasa 3.x (de-duplicated, entity errors only); the client rebuilds every
    utterance's prediction, entities included."""
    with rig("rasa", tmp_path, model_kw, preload=variant(32)) as r:
        assert isinstance(r.backend, RasaBackend)
        model = r.backend.fetch(r.backend.submit(variant(0), TrainingConfig(), "k1"), tmp_path / "m")
        parses = r.backend.predict_labelled(model, RASA_TEST_SET)
        sent = r.emulator.recorded("predict")[-1]
        answer = httpx.post(
            f"{r.served.url}/model/test/intents?{sent.query}",
            content=sent.body,
            headers={"Content-Type": "application/x-yaml"},
        ).json()
        assert len(answer["intent_evaluation"]["predictions"]) == 2 < len(RASA_TEST_SET)
        assert answer["response_selection_evaluation"] is None
        one_intent = b'version: "3.1"\nnlu:\n- intent: greet\n  examples: |\n    - hello there\n'
        null = httpx.post(
            f"{r.served.url}/model/test/intents?{sent.query}",
            content=one_intent,
            headers={"Content-Type": "application/x-yaml"},
        ).json()
        assert null["intent_evaluation"] is None
        assert [p.intent.name for p in parses] == ["greet", "greet", "book_flight"]
        assert [(e.entity, e.value) for e in parses[2].entities] == [("city", "Paris")]


# ------------------------------------------------------------------------------------------------- cognigy


def test_cognigy_scores_the_active_model_by_restoring_it(tmp_path: Path, model_kw: dict[str, Any]) -> None:
    with rig("cognigy", tmp_path, model_kw) as r:
        active, active_parses = r.cycle(variant(0), "k0", tmp_path / "a", TEST_TEXTS)
        candidate = r.train(variant(1), "k1", tmp_path / "c")
        assert r.jobs_started == 2
        again = r.backend.predict(active, TEST_TEXTS)  # the flow holds the candidate: restore, retrain, score
        assert [p.intent.name for p in again] == [p.intent.name for p in active_parses]
        assert r.jobs_started == 3
        r.backend.predict(active, TEST_TEXTS)  # now held: no training
        assert r.jobs_started == 3
        r.backend.activate(candidate)  # the flow holds the active model: restore the candidate first
        assert r.jobs_started == 4
        assert r.served_model() == f"nluflow-{(candidate.backend_model_id or '')[:16]}"


def test_cognigy_same_data_again_does_not_train(tmp_path: Path, model_kw: dict[str, Any]) -> None:
    with rig("cognigy", tmp_path, model_kw) as r:
        one = r.backend.submit(variant(0), TrainingConfig(), "k1")
        r.train(variant(0), "k1", tmp_path / "m")
        two = r.backend.submit(variant(0), TrainingConfig(), "k2")
        assert one.job_id == two.job_id and r.jobs_started == 1


def test_cognigy_conventions(tmp_path: Path, model_kw: dict[str, Any]) -> None:
    with rig("cognigy", tmp_path, model_kw) as r:
        r.cycle(variant(0), "k0", tmp_path / "a", TEST_TEXTS)
        em = r.emulator
        assert isinstance(em, CognigyEmulator)
        gets = [q for q in em.requests if q.method == "GET"]
        assert gets and all(q.body == b"" for q in gets), "no body on GET requests"
        assert all(q.path.startswith("/new/v2.0/") for q in em.requests)
        assert all(q.headers.get("x-api-key") == SECRETS["cognigy"] for q in em.requests)
        with httpx.Client() as client:  # the emulator refuses what trial environments refuse
            refused = client.request(
                "GET",
                f"{r.served.url}/new/v2.0/tasks",
                content=b"{}",
                headers={"X-API-Key": SECRETS["cognigy"]},
            )
        assert refused.status_code == 403 and refused.json()["title"] == "Forbidden"


def test_cognigy_locale_matrix_and_credentials_are_checked_up_front() -> None:
    with pytest.raises(ConfigError, match="language matrix"):
        CognigyBackend(
            "http://c.test", CognigySettings(project_id="p", flow_id="f", locale="it-IT"), api_key="k" * 8
        )
    with pytest.raises(ConfigError, match="exactly one"):
        CognigyBackend(
            "http://c.test",
            CognigySettings(project_id="p", flow_id="f"),
            api_key="k" * 8,
            client_id="c",
            client_secret="s",
        )


# --------------------------------------------------------------------------------------------- neuralspace


def test_neuralspace_minimum_is_enforced_with_counts(tmp_path: Path, model_kw: dict[str, Any]) -> None:
    short = tiny_dataset().subset(range(25))
    with pytest.raises(ConfigError, match="book_flight: 3"):
        check_minimum(short)
    with rig("neuralspace", tmp_path, model_kw) as r:
        with pytest.raises(ConfigError, match="examplesPerIntent"):
            r.backend.submit(short, TrainingConfig(), "k")
        assert r.emulator.requests == [] and r.jobs_started == 0
        job = r.backend.submit(tiny_dataset(), TrainingConfig(), "k")
        assert job.data["examplesPerIntent"] == {"book_flight": 11, "goodbye": 11, "greet": 11}


def test_neuralspace_raw_token_and_lifecycle(tmp_path: Path, model_kw: dict[str, Any]) -> None:
    with rig("neuralspace", tmp_path, model_kw) as r:
        r.cycle(tiny_dataset(), "k", tmp_path / "m", TEST_TEXTS)
        assert all(q.headers["authorization"] == SECRETS["neuralspace"] for q in r.emulator.requests)
        queued = r.emulator.recorded("train")[0].json()
        assert queued == {
            "projectId": "project-1",
            "language": "en",
            "modelName": NeuralSpaceBackend.model_name("k"),
            "noOfTrainingJob": 1,
        }
    assert state_of("Initiated") is JobState.QUEUED and state_of("Pipeline Built") is JobState.RUNNING
    assert state_of("Completed") is JobState.SUCCEEDED
    assert {state_of(w) for w in ("Failed", "Timed Out", "Dead")} == {JobState.FAILED}
    with pytest.raises(ContractError):
        state_of("Exploded")


def test_neuralspace_scoring_leaves_deployments_as_it_found_them(
    tmp_path: Path, model_kw: dict[str, Any]
) -> None:
    """NeuralSpace parses deployed models only. Scoring a candidate deploys it for the scoring and
    undeploys it after, also when the scoring fails, so only ``activate`` changes what is served."""
    with rig("neuralspace", tmp_path, model_kw, preload=variant(32)) as r:
        active, _ = r.cycle(variant(0), "key-active", tmp_path / "active", TEST_TEXTS)
        served = r.served_model()
        candidate = r.train(variant(1), "key-candidate", tmp_path / "candidate")
        assert candidate.backend_model_id != active.backend_model_id

        seen = len(r.emulator.requests)
        parses = r.backend.predict(candidate, TEST_TEXTS)
        assert parses[0].intent.name == "greet"
        assert r.served_model() == served
        assert r.emulator.deployed() == [r.emulator.models[active.backend_model_id]["modelName"]]
        new = r.emulator.requests[seen:]
        undeploys = [q.json() for q in new if q.path.endswith("/model/undeploy")]
        assert undeploys == [{"modelId": candidate.backend_model_id}]

        r.backend.predict(active, TEST_TEXTS)  # the active model is deployed already: left deployed
        assert r.served_model() == served and len(r.emulator.deployed()) == 1

        r.emulator.faults.inject("predict", Fault.SERVER_ERROR, times=100)
        with pytest.raises(TransientHTTPError):
            r.backend.predict(candidate, TEST_TEXTS)
        assert r.served_model() == served and len(r.emulator.deployed()) == 1

        r.backend.activate(candidate)
        assert r.served_model() == r.emulator.models[candidate.backend_model_id]["modelName"]


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (
            TransientHTTPError("POST u failed with ReadTimeout after the request may have reached", "POST"),
            "got no answer within the train timeout of 900 s (ReadTimeout)",
        ),
        (
            TransientHTTPError("POST u failed with ConnectError on 5 attempts", "POST"),
            "could not reach the server (ConnectError",
        ),
        (
            TransientHTTPError("POST u failed with RemoteProtocolError after the request", "POST"),
            "lost its connection before the answer arrived (RemoteProtocolError)",
        ),
        (
            TransientHTTPError("x", "POST", "/model/train", 502, None, "Bad Gateway"),
            "answered 502: Bad Gateway",
        ),
        (MalformedResponseError("x", "POST", "/model/train", 200), "answered 200 with a model archive that"),
    ],
)
def test_rasa_lost_train_answer_is_described_as_what_happened(
    error: TransientHTTPError | MalformedResponseError, said: str
) -> None:
    assert said in lost_answer(error, 900.0)


# ------------------------------------------------------------------------------------ closing the clients


class _CountingTransport(httpx.MockTransport):
    """A transport that counts how often the clients built on it were closed."""

    def __init__(self) -> None:
        super().__init__(lambda request: httpx.Response(503))
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_remote_backend_is_a_context_manager_that_closes_its_http_clients(
    kind: str, tmp_path: Path
) -> None:
    em = CognigyEmulator(api_key=None, client_id="nluflow", client_secret="x" * 8, workdir=tmp_path / "em")
    transport = _CountingTransport()
    backend = make_backend(
        kind, em, "http://platform.test", lambda s: None, tmp_path / "client", transport=transport
    )
    with backend as entered:
        assert entered is backend and transport.closed == 0
    assert transport.closed == 1
    model = ModelRef(backend=kind, model_id="m-1", backend_model_id="m-1", path=str(tmp_path))
    with pytest.raises(RuntimeError, match="closed"):
        backend.predict(model, ["hello"])  # nothing is sent on a closed client


def test_rasa_closes_its_evaluation_server_client_too(tmp_path: Path) -> None:
    transport = _CountingTransport()
    settings = RasaSettings(evaluation_url="http://rasa-eval.test")
    with RasaBackend(
        "http://rasa.test", settings=settings, workdir=tmp_path, http=HttpOptions(transport=transport)
    ):
        pass
    assert transport.closed == 2
