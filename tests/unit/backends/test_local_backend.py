"""The NLU model (fit / parse / save / load) and the local backend (submit / status / fetch / predict)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from nluflow.backends.base import (
    JobRef,
    JobState,
    LocalModelOptions,
    ModelRef,
    TrainingBackend,
    TrainingConfig,
)
from nluflow.backends.local import FAILED_FILE, JOB_FILE, LocalBackend
from nluflow.data.schema import Dataset, Entity, Example
from nluflow.errors import (
    BackendError,
    ConfigError,
    DataError,
    ModelNotFoundError,
    NotFittedError,
    TrainingFailedError,
    UnsafePathError,
)
from nluflow.models.nlu import (
    ENTITY_FILE,
    GAZETTEER_FILE,
    INTENT_FILE,
    META_FILE,
    NLUModel,
    cross_validate_intents,
)

CITIES = ["Paris", "Berlin", "München", "Besançon", "Cádiz", "Oslo", "Kraków", "Zürich"]
GREET = ["hi", "hello there", "hey", "good morning", "hello friend", "hi bot", "greetings", "howdy"]
BYE = ["bye", "goodbye", "see you later", "bye bye", "farewell", "good night", "so long", "later"]
PROBES = ["hello", "see you", "book a flight to Cádiz", "fly me to Rome", "¿qué?", ""]


def _flight(city: str, template: str) -> Example:
    text = template.format(city)
    start = text.index(city)
    return Example(
        text=text,
        intent="book_flight",
        entities=(Entity(start=start, end=start + len(city), entity="city", value=city),),
    )


def make_dataset(with_entities: bool = True) -> Dataset:
    examples = [Example(text=t, intent="greet") for t in GREET]
    examples += [Example(text=t, intent="goodbye") for t in BYE]
    templates = ["book a flight to {}", "I want to fly to {} please", "{} flights"]
    for i, city in enumerate(CITIES):
        example = _flight(city, templates[i % 3])
        examples.append(example if with_entities else example.model_copy(update={"entities": ()}))
    return Dataset.of(examples, source="tests/tiny.jsonl")


DATA = make_dataset()


@pytest.fixture(scope="module")
def model() -> NLUModel:
    return NLUModel(LocalModelOptions(), random_state=7).fit(DATA)


# -- NLUModel ------------------------------------------------------------------------------------------------


def test_parse_has_rasa_shape(model: NLUModel) -> None:
    parses = model.parse(PROBES)
    assert [p.text for p in parses] == PROBES
    for p in parses:
        ranking = p.intent_ranking
        assert p.intent == ranking[0]
        assert len(ranking) == 3  # fewer intents than the top-10 cut
        assert [s.confidence for s in ranking] == sorted((s.confidence for s in ranking), reverse=True)
        assert sum(s.confidence for s in ranking) == pytest.approx(1.0)
        assert all(p.text[e.start : e.end] == e.value for e in p.entities)
    assert [p.intent.name for p in parses[:3]] == ["greet", "goodbye", "book_flight"]
    assert [(e.entity, e.value) for e in parses[2].entities] == [("city", "Cádiz")]
    assert model.parse([]) == []


def test_ranking_is_cut_at_ten_intents() -> None:
    examples = [
        Example(text=f"{w} {w}{i} please", intent=f"intent_{w}") for w in "abcdefghijkl" for i in range(3)
    ]
    parses = NLUModel().fit(Dataset.of(examples)).parse(["a a1 please"])
    assert len(parses[0].intent_ranking) == 10
    assert parses[0].intent.name == "intent_a"


def test_parse_before_fit_raises_not_fitted() -> None:
    with pytest.raises(NotFittedError):
        NLUModel().parse(["hi"])
    with pytest.raises(NotFittedError):
        NLUModel().save(Path("unused"))


def test_save_load_round_trip_keeps_predictions_and_probabilities(model: NLUModel, tmp_path: Path) -> None:
    written = model.save(tmp_path)
    assert sorted(p.name for p in written) == sorted([INTENT_FILE, ENTITY_FILE, GAZETTEER_FILE, META_FILE])
    meta = json.loads((tmp_path / META_FILE).read_text())
    assert json.loads((tmp_path / GAZETTEER_FILE).read_text())["cádiz"] == ["city"]
    assert meta["intents"] == ["book_flight", "goodbye", "greet"]
    assert meta["entity_types"] == ["city"]
    assert meta["options"] == LocalModelOptions().model_dump(mode="json")
    assert meta["seed"] == 7 and meta["n_train"] == len(DATA)
    assert {"scikit-learn", "python-crfsuite", "numpy"} <= set(meta["versions"])
    loaded = NLUModel.load(tmp_path)
    assert loaded.parse(PROBES) == model.parse(PROBES)  # exact equality, probabilities included


def test_same_data_and_config_give_the_same_model(model: NLUModel, tmp_path: Path) -> None:
    again = NLUModel(LocalModelOptions(), random_state=7).fit(DATA)
    assert again.parse(PROBES) == model.parse(PROBES)
    model.save(tmp_path / "a")
    again.save(tmp_path / "b")
    for name in (ENTITY_FILE, GAZETTEER_FILE, META_FILE):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_model_without_entities_saves_no_crf_file(tmp_path: Path) -> None:
    plain = NLUModel(random_state=1).fit(make_dataset(with_entities=False))
    written = plain.save(tmp_path)
    assert ENTITY_FILE not in [p.name for p in written] and not (tmp_path / ENTITY_FILE).exists()
    loaded = NLUModel.load(tmp_path)
    assert loaded.entity_types == []
    assert all(p.entities == () for p in loaded.parse(PROBES))
    assert loaded.parse(PROBES) == plain.parse(PROBES)


def test_load_refuses_missing_or_foreign_folders(model: NLUModel, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"no meta\.json"):
        NLUModel.load(tmp_path / "nothing")
    model.save(tmp_path / "m")
    (tmp_path / "m" / GAZETTEER_FILE).unlink()
    with pytest.raises(ModelNotFoundError, match=r"entities\.gazetteer\.json is missing"):
        NLUModel.load(tmp_path / "m")
    (tmp_path / "m" / GAZETTEER_FILE).write_text("{not json")
    with pytest.raises(BackendError, match="unreadable"):
        NLUModel.load(tmp_path / "m")
    (tmp_path / "m" / ENTITY_FILE).unlink()
    with pytest.raises(ModelNotFoundError, match=r"entities\.crfsuite is missing"):
        NLUModel.load(tmp_path / "m")
    (tmp_path / "m" / META_FILE).write_text(json.dumps({"format": "other"}))
    with pytest.raises(BackendError, match="expected 'nluflow-local-nlu'"):
        NLUModel.load(tmp_path / "m")


def test_fit_refuses_data_with_fewer_than_two_intents() -> None:
    one = Dataset.of(
        [Example(text="hi", intent="greet"), Example(text="hey", intent="greet")], source="one.yml"
    )
    with pytest.raises(DataError, match=r"^one.yml: found 1 intent \('greet'\).*at least 2 intents"):
        NLUModel().fit(one)
    with pytest.raises(DataError, match="no training examples"):
        NLUModel().fit(Dataset())


def test_fit_reports_progress_in_order() -> None:
    seen: list[tuple[float, str]] = []
    NLUModel().fit(DATA, on_progress=lambda f, m: seen.append((f, m)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    messages = " | ".join(m for _, m in seen)
    for stage in ("features", "intent classifier", "entity CRF"):
        assert stage in messages


def test_cross_validation_gives_accuracy_and_macro_f1() -> None:
    scores = cross_validate_intents(DATA, LocalModelOptions(), folds=4, seed=0)
    assert set(scores) == {"cv_accuracy", "cv_macro_f1"}
    assert 0.5 < scores["cv_accuracy"] <= 1.0 and 0.0 < scores["cv_macro_f1"] <= 1.0


# -- LocalBackend --------------------------------------------------------------------------------------------


def test_local_backend_implements_the_protocol(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    assert isinstance(backend, TrainingBackend)
    assert backend.name == "local"


def test_local_backend_is_a_context_manager_whose_close_changes_nothing(tmp_path: Path) -> None:
    with LocalBackend(tmp_path) as backend:
        job = backend.submit(DATA, TrainingConfig(seed=3), "k")
        model = backend.fetch(job, tmp_path / "model")
    backend.close()  # twice, and after the block: still a no-op
    assert backend.predict(model, [DATA.examples[0].text])[0].text == DATA.examples[0].text


def test_submit_status_fetch_predict(tmp_path: Path) -> None:
    progress: list[tuple[float, str]] = []
    backend = LocalBackend(tmp_path / "work", on_progress=lambda f, m: progress.append((f, m)))
    job = backend.submit(DATA, TrainingConfig(seed=3), idempotency_key="job-1")
    assert (job.backend, job.job_id, job.idempotency_key) == ("local", "job-1", "job-1")

    status = backend.status(job)
    assert status.state is JobState.SUCCEEDED and status.progress == 1.0
    assert status.metrics["n_train"] == len(DATA) and status.metrics["train_seconds"] > 0
    assert "cv_accuracy" not in status.metrics  # cv_folds is 0 by default

    messages = " | ".join(m for _, m in progress)
    for stage in ("features", "intent classifier", "entity CRF", "saving"):
        assert stage in messages
    assert [f for f, _ in progress] == sorted(f for f, _ in progress) and progress[-1][0] == 1.0

    ref = backend.fetch(job, tmp_path / "candidate")
    assert (ref.backend, ref.model_id, ref.path) == ("local", "job-1", str(tmp_path / "candidate"))
    assert ref.metrics == status.metrics
    assert sorted(p.name for p in (tmp_path / "candidate").iterdir()) == sorted(
        [ENTITY_FILE, GAZETTEER_FILE, INTENT_FILE, META_FILE]
    )

    parses = backend.predict(ref, PROBES)
    assert parses == NLUModel(TrainingConfig().local, random_state=3).fit(DATA).parse(PROBES)
    backend.activate(ref)  # a no-op that must not fail


def test_cv_folds_add_cross_validated_metrics(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    job = backend.submit(DATA, TrainingConfig(cv_folds=3), idempotency_key="cv")
    metrics = backend.status(job).metrics
    assert 0.0 < metrics["cv_accuracy"] <= 1.0 and 0.0 < metrics["cv_macro_f1"] <= 1.0
    assert backend.fetch(job, tmp_path / "m").metrics["cv_accuracy"] == metrics["cv_accuracy"]


def test_resubmitting_a_finished_key_does_not_retrain(tmp_path: Path) -> None:
    calls: list[str] = []
    backend = LocalBackend(tmp_path, on_progress=lambda f, m: calls.append(m))
    config = TrainingConfig()
    first = backend.submit(DATA, config, idempotency_key="same")
    record = tmp_path / "jobs" / "same" / JOB_FILE
    before = (record.stat().st_mtime_ns, record.read_bytes())
    calls.clear()
    second = LocalBackend(tmp_path, on_progress=lambda f, m: calls.append(m)).submit(
        DATA, config, idempotency_key="same"
    )
    assert second == first
    assert calls == []  # nothing was trained
    assert (record.stat().st_mtime_ns, record.read_bytes()) == before


def test_reusing_a_key_for_other_data_is_refused(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    backend.submit(DATA, TrainingConfig(), idempotency_key="k")
    with pytest.raises(ConfigError, match="'k' was used for a job on other data or config"):
        backend.submit(make_dataset(with_entities=False), TrainingConfig(), idempotency_key="k")
    with pytest.raises(ConfigError, match="nothing was trained"):
        backend.submit(DATA, TrainingConfig(seed=1), idempotency_key="k")


def test_failed_training_is_a_failed_job(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    one_intent = Dataset.of([Example(text="hi", intent="greet"), Example(text="yo", intent="greet")])
    job = backend.submit(one_intent, TrainingConfig(), idempotency_key="bad")
    status = backend.status(job)
    assert status.state is JobState.FAILED
    assert "DataError" in status.message and "at least 2 intents" in status.message
    assert sorted(p.name for p in (tmp_path / "jobs" / "bad").iterdir()) == [FAILED_FILE]
    with pytest.raises(TrainingFailedError, match="at least 2 intents"):
        backend.fetch(job, tmp_path / "dest")
    # a failed key is trained again when submitted again (here with data that works)
    retried = backend.submit(DATA, TrainingConfig(), idempotency_key="bad")
    assert backend.status(retried).state is JobState.SUCCEEDED
    assert not (tmp_path / "jobs" / "bad" / FAILED_FILE).exists()


def test_a_failure_while_saving_leaves_no_half_written_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_save(self: NLUModel, directory: Path) -> list[Path]:
        directory.mkdir(parents=True)
        (directory / INTENT_FILE).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(NLUModel, "save", broken_save)
    backend = LocalBackend(tmp_path)
    job = backend.submit(DATA, TrainingConfig(), idempotency_key="half")
    assert backend.status(job).state is JobState.FAILED
    assert "disk full" in backend.status(job).message
    assert [p.name for p in (tmp_path / "jobs").iterdir()] == ["half"]  # no temp folder left behind
    assert [p.name for p in (tmp_path / "jobs" / "half").iterdir()] == [FAILED_FILE]


def test_status_while_training_is_running(tmp_path: Path) -> None:
    seen: list[JobState] = []
    backend = LocalBackend(tmp_path)

    def watch(fraction: float, message: str) -> None:
        if message.startswith("entity CRF"):
            # called from inside submit: another caller asking now sees a running job
            result: list[JobState] = []
            t = threading.Thread(target=lambda: result.append(backend.status(job_ref).state))
            t.start()
            t.join()
            seen.extend(result)

    backend.on_progress = watch
    job_ref = JobRef(backend="local", job_id="live", idempotency_key="live")
    backend.submit(DATA, TrainingConfig(), idempotency_key="live")
    assert seen == [JobState.RUNNING]


def test_a_failing_progress_callback_does_not_fail_training(tmp_path: Path) -> None:
    def explode(fraction: float, message: str) -> None:
        raise RuntimeError("artifact service down")

    backend = LocalBackend(tmp_path, on_progress=explode)
    job = backend.submit(DATA, TrainingConfig(), idempotency_key="p")
    assert backend.status(job).state is JobState.SUCCEEDED


@pytest.mark.parametrize("key", ["", "../escape", "a/b", "/abs", ".hidden", "a" * 129, "spaces here"])
def test_unsafe_keys_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(UnsafePathError, match="not a safe folder name"):
        LocalBackend(tmp_path).submit(DATA, TrainingConfig(), idempotency_key=key)
    assert not (tmp_path / "jobs").exists() or not any((tmp_path / "jobs").iterdir())


def test_unknown_job_and_missing_model_are_clear_errors(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    ghost = JobRef(backend="local", job_id="ghost", idempotency_key="ghost")
    with pytest.raises(BackendError, match="'ghost' not found"):
        backend.status(ghost)
    with pytest.raises(BackendError, match="'ghost' not found"):
        backend.fetch(ghost, tmp_path / "dest")
    with pytest.raises(ModelNotFoundError, match="no local folder"):
        backend.predict(ModelRef(backend="local", model_id="m"), ["hi"])
    with pytest.raises(ModelNotFoundError, match="not found"):
        backend.predict(ModelRef(backend="local", model_id="m", path=str(tmp_path / "gone")), ["hi"])


def test_predict_caches_the_loaded_model_until_it_changes(
    model: NLUModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[Path] = []
    real_load = NLUModel.load

    def counting_load(directory: Path) -> NLUModel:
        loads.append(directory)
        return real_load(directory)

    monkeypatch.setattr(NLUModel, "load", staticmethod(counting_load))
    model.save(tmp_path / "m")
    ref = ModelRef(backend="local", model_id="m", path=str(tmp_path / "m"))
    backend = LocalBackend(tmp_path / "work")
    first = backend.predict(ref, PROBES)
    assert backend.predict(ref, PROBES) == first
    assert len(loads) == 1
    # a different model written into the same folder is loaded afresh
    NLUModel(random_state=1).fit(make_dataset(with_entities=False)).save(tmp_path / "m")
    (tmp_path / "m" / ENTITY_FILE).unlink()
    backend.predict(ref, PROBES)
    assert len(loads) == 2
