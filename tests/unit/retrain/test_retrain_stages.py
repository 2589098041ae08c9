"""The retrain's stages without Prefect (nluflow.retrain.testset, .train, .scoring): the test set chosen,
frozen, grown and undone on a real local store; a job waited for with an injected clock; models scored
through the backend protocol. Milliseconds."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from nluflow.backends.base import IntentScore, JobRef, JobState, JobStatus, ModelRef, Parse, TrainingConfig
from nluflow.data.schema import Dataset, Example
from nluflow.data.validation import normalize_text
from nluflow.errors import DataError, TrainingFailedError
from nluflow.pipeline import Workspace
from nluflow.retrain import TestSetPlan, choose_test_set, undo_test_set
from nluflow.retrain.scoring import active_model, must_pass, must_pass_cases, score
from nluflow.retrain.testset import WRITTEN_KEY
from nluflow.retrain.train import Polling, complete_marker, fetch_candidate, submit, wait_for_job
from nluflow.store import ModelStore
from nluflow.store.testsets import TestSetStore

PLAN = TestSetPlan(project="bot", test_fraction=0.2, seed=7, min_test_per_intent=2)


def _data(n: int, start: int = 0) -> Dataset:
    return Dataset(
        examples=tuple(
            Example(text=f"{intent} request number {k}", intent=intent)
            for intent in ("greet", "book")
            for k in range(start, start + n)
        ),
        source="data/nlu.jsonl",
    )


def _texts(data: Dataset) -> set[str]:
    return {normalize_text(t) for t in data.texts}


# -- the test set ------------------------------------------------------------------------------------------


def test_the_first_run_freezes_a_stratified_split_and_trains_on_the_rest(tmp_path: Path) -> None:
    store = ModelStore.local(tmp_path / "store", create=True)
    chosen = choose_test_set(store, _data(20), None, PLAN)
    assert len(chosen.test) == 8 and len(chosen.train) == 32
    assert not _texts(chosen.train) & _texts(chosen.test)
    assert chosen.info["test_set_version"] == 1 and chosen.info[WRITTEN_KEY] == chosen.test.sha256()
    assert chosen.info["test_source"] == "split off the data (20%) and frozen in the store"
    assert chosen.info["new_since_active"].startswith("+40 new")
    current = TestSetStore(store.fs, "bot").current()
    assert current is not None and current[1].sha256() == chosen.test.sha256()


def test_a_later_run_without_an_active_model_grows_the_set_with_new_annotations(tmp_path: Path) -> None:
    store = ModelStore.local(tmp_path / "store", create=True)
    first = choose_test_set(store, _data(20), None, PLAN)
    again = choose_test_set(store, _data(20), None, PLAN)  # the same data: nothing new, nothing moves
    assert again.test.sha256() == first.test.sha256() and again.info[WRITTEN_KEY] is None
    grown = choose_test_set(store, _data(40), None, PLAN)
    assert grown.info["test_set_version"] == 2 and len(grown.test) > len(first.test)
    assert _texts(first.test) <= _texts(grown.test)
    assert undo_test_set(store, "bot", grown.info)  # back to version 1
    current = TestSetStore(store.fs, "bot").current()
    assert current is not None and current[0].version == 1
    assert not undo_test_set(store, "bot", again.info)  # a run that wrote nothing undoes nothing


def test_a_given_test_set_wins_and_nothing_is_frozen(tmp_path: Path) -> None:
    store = ModelStore.local(tmp_path / "store", create=True)
    given = _data(3, start=100)
    chosen = choose_test_set(store, _data(20), given, PLAN)
    assert chosen.test is given and chosen.info["test_source"] == "given (--test)"
    assert chosen.info["test_set"].startswith("given, sha256 ") and chosen.info["test_set_version"] is None
    assert TestSetStore(store.fs, "bot").current() is None


def test_a_split_that_cannot_measure_anything_is_refused_naming_the_data(tmp_path: Path) -> None:
    store = ModelStore.local(tmp_path / "store", create=True)
    with pytest.raises(DataError, match=r"data/nlu\.jsonl"):
        choose_test_set(store, _data(3), None, PLAN.model_copy(update={"min_test_per_intent": 5}))
    assert TestSetStore(store.fs, "bot").current() is None


# -- training ----------------------------------------------------------------------------------------------


class FakePlatform:
    """Answers ``states`` to status calls in order; records submits, binds and what it scores."""

    def __init__(self, states: Sequence[JobState] = (JobState.SUCCEEDED,)) -> None:
        self.states = list(states)
        self.bound: str | None = None
        self.submitted: list[tuple[int, str]] = []

    def submit(self, train: Dataset, config: TrainingConfig, idempotency_key: str) -> JobRef:
        self.submitted.append((len(train), idempotency_key))
        return JobRef(backend="fake", job_id="job-1", idempotency_key=idempotency_key)

    def status(self, job: JobRef) -> JobStatus:
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        return JobStatus(state=state, message="boom" if state is JobState.FAILED else "")

    def fetch(self, job: JobRef, dest: Path) -> ModelRef:
        (dest / "model.bin").write_bytes(b"weights")
        return ModelRef(backend="fake", model_id=job.job_id, path=str(dest))

    def predict(self, model: ModelRef, texts: Sequence[str]) -> list[Parse]:
        return [Parse(text=t, intent=IntentScore(name=t.split()[0], confidence=0.9)) for t in texts]

    def activate(self, model: ModelRef) -> None:
        pass


class ScopedPlatform(FakePlatform):
    def bind_project(self, project: str) -> None:
        self.bound = project

    def check_active_served(self, active: ModelRef, project: str) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_submit_binds_a_project_scoped_platform_and_passes_the_idempotency_key() -> None:
    platform = ScopedPlatform()
    job = submit(platform, "bot", _data(2), TrainingConfig(), "key-1")  # type: ignore[arg-type]
    assert (platform.bound, platform.submitted, job.idempotency_key) == ("bot", [(4, "key-1")], "key-1")


def test_waiting_backs_off_until_the_job_ends() -> None:
    platform = FakePlatform([JobState.QUEUED, JobState.RUNNING, JobState.RUNNING, JobState.SUCCEEDED])
    clock, seen = Clock(), []
    polling = Polling(max_wait_seconds=60, sleep=clock.sleep, clock=clock)
    job = JobRef(backend="fake", job_id="job-1", idempotency_key="k")
    status = wait_for_job(platform, job, "fake", polling, seen.append)  # type: ignore[arg-type]
    assert status.state is JobState.SUCCEEDED and len(seen) == 4
    assert clock.slept == [1.0, 1.5, 2.25]


@pytest.mark.parametrize(
    ("states", "message"),
    [
        ([JobState.RUNNING], "did not finish within 5 s"),
        ([JobState.RUNNING, JobState.FAILED], "ended failed: boom; no model was promoted"),
    ],
)
def test_a_job_that_fails_or_outlives_the_wait_promotes_nothing(states: list[JobState], message: str) -> None:
    clock = Clock()
    polling = Polling(max_wait_seconds=5, sleep=clock.sleep, clock=clock)
    job = JobRef(backend="fake", job_id="job-1", idempotency_key="k")
    with pytest.raises(TrainingFailedError, match=message):
        wait_for_job(FakePlatform(states), job, "fake", polling)  # type: ignore[arg-type]


def test_a_fetched_candidate_is_complete_and_named_by_its_model_id(tmp_path: Path) -> None:
    dest = tmp_path / "candidates" / "bot" / "m-1"
    (dest.with_name("m-1.partial")).mkdir(parents=True)  # a fetch killed half-way before
    job = JobRef(backend="fake", job_id="job-1", idempotency_key="k")
    model = fetch_candidate(FakePlatform(), job, dest, "m-1")  # type: ignore[arg-type]
    assert (model.model_id, model.path) == ("m-1", str(dest))
    assert (dest / "model.bin").read_bytes() == b"weights" and complete_marker(dest).exists()
    assert not dest.with_name("m-1.partial").exists()


# -- scoring -----------------------------------------------------------------------------------------------


class LabelledPlatform(FakePlatform):
    def predict_labelled(self, model: ModelRef, examples: Sequence[Example]) -> list[Parse]:
        return [Parse(text=e.text, intent=IntentScore(name=e.intent, confidence=0.8)) for e in examples]


def test_scoring_uses_labelled_predictions_when_the_platform_has_them() -> None:
    test = _data(5)
    model = ModelRef(backend="fake", model_id="m-1")
    assert score(LabelledPlatform(), model, test, 0.9).accuracy == 1.0  # type: ignore[arg-type]
    by_text = score(FakePlatform(), model, test, 0.9)  # type: ignore[arg-type]
    assert by_text.n == 10 and by_text.accuracy == 1.0 and by_text.test_sha256 == test.sha256()


def test_must_pass_cases_name_the_file_and_line_of_an_unknown_intent(tmp_path: Path) -> None:
    path = tmp_path / "must.jsonl"
    path.write_text(
        '{"text": "greet hi", "intent": "greet"}\n{"text": "book a flight", "intent": "travel"}\n'
    )
    with pytest.raises(DataError, match=r"must\.jsonl.*'travel'"):
        must_pass_cases(str(path), ["greet", "book"])
    cases = must_pass_cases(str(path), ["greet", "travel"])
    result = must_pass(FakePlatform(), ModelRef(backend="fake", model_id="m"), cases)  # type: ignore[arg-type]
    assert result.total == 2 and [f["text"] for f in result.failures] == ["book a flight"]


def test_a_project_without_an_active_model_has_none_to_score(tmp_path: Path) -> None:
    store = ModelStore.local(tmp_path / "store", create=True)
    assert active_model(store, "bot", Workspace(tmp_path / "work")) is None
