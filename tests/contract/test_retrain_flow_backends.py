"""The retrain flow end to end against each remote-backend emulator (issue 5, must-show 1).

For every backend, one emulator serves on 127.0.0.1 and one block document points at it; the flow runs with
``RetrainParams.backend = "<block-type-slug>/<name>"`` exactly as a deployment would. The steps of a backend
share its emulator, store and workspace and run in this order, each building on the last, as a bot's retrains
do (one test a backend runs them, so the module runs in any order):

1. first run (batch-1) → promoted; the store's active pointer and the platform's served model name it;
2. second run (batch-1 + batch-2) → candidate and active model evaluated on the same frozen test set and
   decided by the shared ``decide``; the store and the platform agree with the decision, whatever it is;
3. the platform refuses the activation (HTTP 400, not retried) → the flow fails, nothing changes; the same
   refusal after the platform already switched → the previous model is served again before the run fails;
4. the pointer switch fails after the platform activated the candidate → the flow's transaction rolls the
   platform back;
5. the same run once the faults are gone → promoted, without training again;
6. a manual rollback (``ModelStore.rollback`` + the backend's ``activate``), then ``nluflow models activate``
   forward again → store and platform agree;
7. the emulator's job counter: one training per distinct training set, never two;
8. a run whose evaluations are not cached (new target precision) still trains its new data set once only.

The refusal in 3 is armed only once the candidate is stored: NeuralSpace's activation endpoint (deploy) also
serves scoring, and the evaluation must not meet the fault.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from contract_kit import SECRETS, make_emulator
from prefect.blocks.core import Block
from typer.testing import CliRunner

import flows.retrain
import nluflow.retrain.promote
from blocks.cognigy import CognigyBackendBlock
from blocks.neuralspace import NeuralSpaceBackendBlock
from blocks.rasa import RasaBackendBlock
from blocks.service import TrainingServiceBlock
from flows.cli import app as cli_app
from flows.retrain import RetrainParams, RetrainResult, retrain
from nluflow.backends.base import ModelRef
from nluflow.backends.cognigy import SNAPSHOT_PREFIX
from nluflow.data.loaders import load_jsonl
from nluflow.errors import BackendError
from nluflow.evaluation.gates import Decision, GatePolicy, MustPassResult, decide
from nluflow.evaluation.metrics import EvaluationResult, evaluate
from nluflow.store import ActivePointer, ModelStore
from nluflow.store.audit_log import AuditLog
from nluflow.testing.emulators import EmulatorSettings, ServedApp
from nluflow.testing.emulators._base import Emulator
from nluflow.testing.emulators._middleware import Receive, Scope, Send
from nluflow.testing.emulators.cognigy import CognigyEmulator
from nluflow.testing.emulators.neuralspace import PREFIX, NeuralSpaceEmulator
from nluflow.testing.emulators.rasa import RasaEmulator
from nluflow.testing.emulators.service import TrainingServiceEmulator
from tasks.common import BackendSpec

pytestmark = pytest.mark.slow

KINDS = ("rasa", "cognigy", "neuralspace", "service")
DEMO = Path(__file__).resolve().parents[2] / "examples" / "snips-demo"
FIRST = ["batch-1.jsonl"]
SECOND = ["batch-1.jsonl", "batch-2.jsonl"]
THIRD = ["batch-2.jsonl"]  # a third distinct training set, promoted under permissive gates
# Gates every candidate passes: the promotion (and its failure) must happen whatever the metrics are.
PERMISSIVE = GatePolicy(
    min_macro_f1=0.0, min_precision=0.0, min_delta=-1.0, tolerance=1.0, max_intent_f1_drop=1.0
)


# ------------------------------------------------------------------------------------------------ harness


class RefuseActivation:
    """ASGI middleware before an emulator: while armed, its activation endpoint answers 400 in the
    platform's own error shape (a refusal, not a transient fault: no layer may retry it); with ``after``,
    the platform does the activation first."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.armed = False
        self.refused = 0
        # Let the platform do the activation, then answer the refusal (once): the switch happened, the answer
        # says it did not.
        self.after = False

    def _is_activation(self, scope: Scope) -> bool:
        endpoint = self.emulator.endpoint_of(scope)
        return endpoint is not None and endpoint.fault == "activate"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.armed and scope["type"] == "http" and self._is_activation(scope):
            self.refused += 1
            if self.after:
                self.armed = False

                async def discard(message: Any) -> None:
                    return None

                await self.emulator.app(scope, receive, discard)
            body, ctype = self.emulator.error_body(
                400, "Bad Request", "injected: this model cannot be activated"
            )
            headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 400, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        await self.emulator.app(scope, receive, send)


@dataclass
class Platform:
    """One emulator served on 127.0.0.1, its block document, and the project history run against it."""

    kind: str
    emulator: Emulator
    served: ServedApp
    refuse: RefuseActivation
    block_ref: str
    home: Path
    results: dict[str, RetrainResult] = field(default_factory=dict)

    @property
    def project(self) -> str:
        return f"e2e-{self.kind}"

    def params(self, files: list[str], **kw: Any) -> RetrainParams:
        return RetrainParams(
            project=self.project,
            data=[str(DEMO / f) for f in files],
            test=[str(DEMO / "test.jsonl")],
            store=str(self.home / "store"),
            workspace=str(self.home / "work"),
            backend=self.block_ref,
            max_wait_seconds=120,
            **kw,
        )

    def store(self) -> ModelStore:
        return ModelStore.local(self.home / "store")

    def pointer(self) -> ActivePointer | None:
        return self.store().active(self.project)

    def stored(self) -> list[str]:
        return sorted(m.model_id for m in self.store().list_models(self.project))

    def audit(self) -> AuditLog:
        return AuditLog(self.home / "store" / self.project / "audit.jsonl")

    def _served_raw(self) -> str | None:
        """What the platform serves now, in the platform's own terms."""
        em = self.emulator
        if isinstance(em, RasaEmulator):
            return em.loaded[0] if em.loaded else None
        if isinstance(em, CognigyEmulator):
            return em.served_snapshot_name()
        if isinstance(em, NeuralSpaceEmulator):
            live = [m for m in em.deploy_history if m in em.models and em.models[m]["deployed"]]
            return live[-1] if live else None
        assert isinstance(em, TrainingServiceEmulator)
        return em.deployed()

    def _identity(self, backend_model_id: str) -> str:
        """A stored model's backend id in the terms ``_served_raw`` uses."""
        if self.kind == "rasa":
            return Path(backend_model_id).name
        if self.kind == "cognigy":
            return f"{SNAPSHOT_PREFIX}{backend_model_id[:16]}"
        return backend_model_id

    def serving(self) -> str | None:
        """The store model id of what the platform serves (``unstored:<id>`` for a model not stored)."""
        raw = self._served_raw()
        if raw is None:
            return None
        for manifest in self.store().list_models(self.project):
            if manifest.backend_model_id and self._identity(manifest.backend_model_id) == raw:
                return manifest.model_id
        return f"unstored:{raw}"

    def trained_sets(self) -> list[str]:
        """The content hash of the training set of every job the emulator started, in order."""
        return [job.dataset.sha256() for job in self.emulator.jobs.values()]


def _block(kind: str, em: Emulator, url: str) -> Block:
    secret = SECRETS[kind]
    if kind == "rasa":
        assert isinstance(em, RasaEmulator)
        # The server's models folder as mounted here, so a rollback can put back an archive it lost.
        return RasaBackendBlock(url=url, token=secret, server_models_folder=str(em.models_folder))
    if kind == "cognigy":
        assert isinstance(em, CognigyEmulator)
        return CognigyBackendBlock(
            url=url,
            project_id=em.project_id,
            flow_id=em.flow_id,
            endpoint_id=em.endpoint_id,
            api_key=secret,
        )
    if kind == "neuralspace":
        return NeuralSpaceBackendBlock(url=url + PREFIX, token=secret, project_id="project-1")
    return TrainingServiceBlock(url=url, client_id="nluflow", client_secret=secret)


@pytest.fixture(scope="module", params=KINDS)
def platform(
    request: pytest.FixtureRequest, prefect_api: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    kind = cast(str, request.param)
    home = tmp_path_factory.mktemp(f"flow-{kind}")
    settings = EmulatorSettings(retry_after_seconds=1, slow_seconds=1.0, job_min_seconds=0.05)
    em = make_emulator(kind, settings, {}, home / "server")
    refuse = RefuseActivation(em)
    served = ServedApp(refuse, on_stop=em.release_jobs).start()
    try:
        block = _block(kind, em, served.url)
        type(block).register_type_and_schema()
        name = f"flow-e2e-{kind}"
        block.save(name, overwrite=True)
        yield Platform(kind, em, served, refuse, f"{block.get_block_type_slug()}/{name}", home)
    finally:
        served.stop()


@dataclass
class DecideCall:
    candidate: EvaluationResult
    active: EvaluationResult | None
    policy: GatePolicy
    must_pass: MustPassResult | None
    decision: Decision


@pytest.fixture
def decide_calls(monkeypatch: pytest.MonkeyPatch) -> list[DecideCall]:
    """Every call the flow makes to the shared, pure ``decide``, with its inputs and its answer."""
    calls: list[DecideCall] = []

    def spy(
        candidate: EvaluationResult,
        active: EvaluationResult | None,
        policy: GatePolicy,
        must_pass: MustPassResult | None = None,
    ) -> Decision:
        decision = decide(candidate, active, policy, must_pass)
        calls.append(DecideCall(candidate, active, policy, must_pass, decision))
        return decision

    monkeypatch.setattr(flows.retrain, "decide", spy)
    return calls


def _test_size() -> int:
    return len(load_jsonl(DEMO / "test.jsonl"))


def _assert_agree(p: Platform, model_id: str | None) -> None:
    """The store's active pointer and the platform's served model both name ``model_id``."""
    pointer = p.pointer()
    assert (pointer.model_id if pointer else None) == model_id
    assert p.serving() == model_id, f"{p.kind} serves {p.serving()}, the store's active model is {model_id}"


# -------------------------------------------------------------------------------------------------- steps
# A bot's history on one platform is a story: each step builds on the one before (the first promotion, the
# second run judged against it, the faults, the rerun without training, the rollback, the job count). So it
# is one test a platform that runs the steps in order (below, after the steps), and the module's tests run
# alone and in any order; each step keeps its own assertions, and a failure names the step.


def step_first_run_promotes_and_the_platform_serves_it(
    platform: Platform, decide_calls: list[DecideCall]
) -> None:
    p = platform
    result = retrain(p.params(FIRST))
    p.results["first"] = result
    assert result.promoted and result.decision.first_model, result.decision.reasons
    assert result.previous_active is None and result.active == result.candidate_id
    [call] = decide_calls
    assert call.active is None and call.candidate.n == _test_size()
    assert call.decision == result.decision
    manifest = p.store().verify(p.project, result.candidate_id)
    assert manifest.backend == p.kind and manifest.backend_model_id
    _assert_agree(p, result.candidate_id)
    intent, line = p.audit().records()  # the intent before the pointer switch, the run's line after it
    assert intent["decision"] == "promote-intent" and intent["model_id"] == result.candidate_id
    assert line["decision"] == "promote" and line["intent_seq"] == intent["seq"]
    assert line["promoted"] is True and line["backend"] == p.block_ref
    assert line["model_id"] == result.candidate_id and line["manifest_sha256"] == manifest.sha256()
    assert p.emulator.jobs_started == 1


def step_second_run_is_decided_by_the_shared_gates_on_the_same_test_set(
    platform: Platform, decide_calls: list[DecideCall]
) -> None:
    p = platform
    first = p.results["first"].candidate_id
    result = retrain(p.params(SECOND))
    p.results["second"] = result
    assert result.previous_active == first and result.candidate_id != first

    # Both models were evaluated through the platform, on the same frozen test set, in the same order.
    [call] = decide_calls
    assert call.active is not None
    assert call.candidate.test_sha256 == call.active.test_sha256
    assert call.candidate.n == call.active.n == _test_size()
    assert call.candidate.y_true == call.active.y_true
    assert result.active_metrics == call.active.headline()
    assert result.candidate_metrics == call.candidate.headline()
    # The decision is the pure function of those evaluations and the flow's gates, as on the local backend.
    assert call.policy == GatePolicy()
    assert call.decision == result.decision == decide(call.candidate, call.active, GatePolicy())
    assert not result.decision.first_model
    assert {g.name for g in result.decision.gates} >= {"beats_active", "min_macro_f1"}
    assert result.decision.promote == all(g.passed for g in result.decision.gates)

    # Store and platform follow the decision, whichever it was.
    assert result.promoted == result.decision.promote
    if result.promoted:
        assert result.active == result.candidate_id
        assert p.stored() == sorted([first, result.candidate_id])
        _assert_agree(p, result.candidate_id)
    else:
        assert result.active == first
        # A rejected candidate is kept in the store, not active, for `nluflow models promote`.
        assert p.stored() == sorted([first, result.candidate_id])
        assert [e.model_id for e in p.store().rejected(p.project)] == [result.candidate_id]
        _assert_agree(p, first)
    line = p.audit().records()[-1]
    assert line["decision"] == ("promote" if result.decision.promote else "reject")
    assert line["promoted"] is result.promoted and line["previous_model_id"] == first
    assert p.emulator.jobs_started == 2
    if p.kind == "rasa":
        _assert_rasa_scores_are_real(p, {result.candidate_id: call.candidate, first: call.active})
    if p.kind == "cognigy":  # its NLU scores carry no entities: entity metrics absent, gate skipped, no 0
        for scored in (call.candidate, call.active):
            assert scored.entity is None and scored.entity_absent_reason
        assert "entity_f1" not in result.candidate_metrics and "entity_f1" not in result.active_metrics
        [gate] = [g for g in result.decision.gates if g.name == "no_regression_entity_f1"]
        assert gate.status == "skipped" and "no entity predictions" in gate.reason


def _assert_rasa_scores_are_real(p: Platform, evaluations: dict[str, EvaluationResult]) -> None:
    """Without evaluation_url, both models were scored through ``/model/test/intents`` (the test set sent
    with its true labels, Rasa 3.x shapes): intent and entity metrics equal those of the served model's own
    predictions on the test set, entity F1 included (not a zero)."""
    em = p.emulator
    assert isinstance(em, RasaEmulator)
    block = RasaBackendBlock.load(p.block_ref.split("/", 1)[1])
    assert block.evaluation_url is None
    sent = [yaml.safe_load(r.body) for r in em.recorded("predict")]
    test_set = load_jsonl(DEMO / "test.jsonl")
    labels = {item["intent"] for body in sent for item in body["nlu"]}
    assert labels >= set(test_set.intents) and "nluflow_unlabelled" not in labels
    for model_id, scored in evaluations.items():
        backend_model_id = p.store().manifest(p.project, model_id).backend_model_id
        assert backend_model_id
        loaded = em._load(backend_model_id)
        assert loaded is not None
        direct = evaluate(test_set, loaded[1].parse(test_set.texts), target_precision=scored.target_precision)
        assert direct.test_sha256 == scored.test_sha256
        assert scored.y_pred == direct.y_pred and scored.accuracy == direct.accuracy
        assert scored.entity is not None and direct.entity is not None
        assert scored.entity.f1 == pytest.approx(direct.entity.f1) and scored.entity.f1 > 0.0
        assert scored.entity.precision == pytest.approx(direct.entity.precision)
        assert scored.entity.recall == pytest.approx(direct.entity.recall)


def _hook_add_model(monkeypatch: pytest.MonkeyPatch, then: Callable[[], None]) -> list[str]:
    """Call ``then()`` right after the flow stores its candidate (promotion has begun); returns the ids
    of the models stored that way."""
    added: list[str] = []
    real = ModelStore.add_model

    def add_model(self: ModelStore, project: str, model_id: str, *args: Any, **kwargs: Any) -> Any:
        out = real(self, project, model_id, *args, **kwargs)
        added.append(model_id)
        then()
        return out

    monkeypatch.setattr(ModelStore, "add_model", add_model)
    return added


def step_refused_activation_fails_the_run_and_changes_nothing(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = platform
    pointer_before, stored_before, served_before = p.pointer(), p.stored(), p.serving()
    audit_before = len(p.audit().records())
    assert pointer_before is not None and served_before == pointer_before.model_id

    def arm() -> None:
        p.refuse.armed = True

    added = _hook_add_model(monkeypatch, arm)
    try:
        with pytest.raises(BackendError, match="400"):
            retrain(p.params(THIRD, gates=PERMISSIVE))
    finally:
        p.refuse.armed = False
    # Once for the candidate (a refusal is not retried), once to serve the previous model again: the task
    # cannot know whether the platform switched before it refused.
    assert p.refuse.refused == 2, "a refusal was retried"
    assert len(added) == 1, "the candidate was stored before the activation was attempted"
    assert added[0] not in p.stored(), "the rollback removed the candidate from the store"
    assert p.pointer() == pointer_before
    assert p.stored() == stored_before
    # The failed run says so on the audit log, with the error as one line.
    failed = p.audit().records()[audit_before:]
    assert [line["decision"] for line in failed] == ["failed"]
    assert failed[0]["error"].startswith("HTTPStatusError: ") and "answered 400" in failed[0]["error"]
    assert p.audit().verify().ok
    assert p.emulator.jobs_started == 3
    assert p.serving() == served_before, f"{p.kind} serves {p.serving()} after a failed promotion"


def step_activation_that_fails_after_the_platform_switched_is_undone(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The platform switched to the candidate, then the activation call failed: the task serves the previous
    model again before the run fails, so the platform and the store's pointer still agree."""
    p = platform
    pointer_before, stored_before, served_before = p.pointer(), p.stored(), p.serving()
    assert pointer_before is not None and served_before == pointer_before.model_id
    switched: list[str | None] = []
    refused_before = p.refuse.refused

    def arm() -> None:
        p.refuse.after = p.refuse.armed = True

    added = _hook_add_model(monkeypatch, arm)
    real_restore = nluflow.retrain.promote._restore

    def restore(client: Any, previous: ModelRef) -> None:
        switched.append(p.serving())  # what the platform served when the failed activation returned
        real_restore(client, previous)

    monkeypatch.setattr(nluflow.retrain.promote, "_restore", restore)
    try:
        with pytest.raises(BackendError, match="400"):
            retrain(p.params(THIRD, gates=PERMISSIVE))
    finally:
        p.refuse.armed = p.refuse.after = False
    assert p.refuse.refused == refused_before + 1
    assert len(added) == 1 and switched == [added[0]], "the platform had switched to the candidate"
    assert p.serving() == served_before, f"{p.kind} serves {p.serving()} after a failed activation"
    assert p.pointer() == pointer_before and p.stored() == stored_before
    assert p.audit().verify().ok
    assert p.emulator.jobs_started == 3


def step_failed_pointer_switch_rolls_the_platform_back(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = platform
    pointer_before = p.pointer()
    assert pointer_before is not None
    stored_before = p.stored()
    served_at_switch: list[str | None] = []
    added = _hook_add_model(monkeypatch, lambda: None)

    def broken_activate(self: ModelStore, *args: Any, **kwargs: Any) -> Any:
        served_at_switch.append(p.serving())  # the platform was activated just before the pointer switch
        raise OSError("disk full while writing active.json")

    monkeypatch.setattr(ModelStore, "activate", broken_activate)
    with pytest.raises(OSError, match="disk full"):
        retrain(p.params(THIRD, gates=PERMISSIVE))
    monkeypatch.undo()
    # The platform did serve the candidate (stored by then) when the pointer switch failed ...
    assert len(added) == 1 and served_at_switch == [added[0]], served_at_switch
    # ... and the transaction put everything back.
    assert added[0] not in p.stored() and p.stored() == stored_before
    _assert_agree(p, pointer_before.model_id)
    assert p.emulator.jobs_started == 3, "a rerun of the same data does not train again"
    # On the log: the intent written before the switch, closed as abandoned, then the run's failed line.
    intent, abandoned, failed = p.audit().records()[-3:]
    assert (intent["decision"], abandoned["decision"], failed["decision"]) == (
        "promote-intent",
        "promotion-abandoned",
        "failed",
    )
    assert abandoned["intent_seq"] == intent["seq"] and abandoned["model_id"] == added[0]
    assert p.audit().verify().ok


def step_rerun_after_the_faults_promotes_without_training_again(platform: Platform) -> None:
    p = platform
    before = p.pointer()
    assert before is not None
    result = retrain(p.params(THIRD, gates=PERMISSIVE))
    p.results["third"] = result
    assert result.promoted and result.previous_active == before.model_id
    _assert_agree(p, result.candidate_id)
    pointer = p.pointer()
    assert pointer is not None and pointer.history[0].model_id == before.model_id
    assert p.emulator.jobs_started == 3, "the candidate trained by the failed runs was reused"


def step_rollback_returns_store_and_platform_to_the_previous_model(platform: Platform) -> None:
    p = platform
    current = p.pointer()
    assert current is not None and current.model_id == p.results["third"].candidate_id
    previous = current.history[0].model_id
    jobs = p.emulator.jobs_started

    pointer = p.store().rollback(p.project, run_id="manual-rollback")
    assert pointer.model_id == previous
    manifest = p.store().manifest(p.project, previous)
    assert manifest.backend_block == p.block_ref, "the manifest names the block that trained it"
    ref = ModelRef.stored(manifest, p.store().materialize(p.project, previous))
    if isinstance(p.emulator, RasaEmulator):
        # The previous archive was cleaned from the server's models folder: PUT /model alone answers 400;
        # the client puts the store's copy back there and the server serves it again.
        assert ref.backend_model_id is not None
        p.emulator.lose_archive(Path(ref.backend_model_id).name)
    backend = BackendSpec(name=p.block_ref, workspace=str(p.home / "work")).build()
    backend.activate(ref)
    _assert_agree(p, previous)
    assert p.emulator.jobs_started == jobs, "a rollback never trains"

    # Rolling forward from the CLI: `nluflow models activate` moves the pointer and the platform together.
    out = CliRunner().invoke(
        cli_app,
        ["models", "activate", current.model_id, "--project", p.project, "--store", str(p.home / "store")],
    )
    assert out.exit_code == 0, out.output
    _assert_agree(p, current.model_id)
    assert p.emulator.jobs_started == jobs


def step_every_distinct_training_set_was_trained_exactly_once(platform: Platform) -> None:
    p = platform
    trained = p.trained_sets()
    assert len(trained) == p.emulator.jobs_started == 3
    assert len(set(trained)) == len(trained), f"{p.kind} trained the same data twice: {trained}"
    assert p.audit().verify().ok
    second = ["promote-intent", "promote"] if p.results["second"].promoted else ["reject"]
    # Three runs failed on purpose (refused activation, failed after the switch, failed pointer switch: only
    # the last had written its intent line, closed as abandoned); the store-level rollback is not on the log,
    # the CLI's `models activate` is. Each promotion is an intent line plus its completion line.
    decisions = [r["decision"] for r in p.audit().records()]
    assert decisions == [
        "promote-intent",
        "promote",
        *second,
        "failed",
        "failed",
        "promote-intent",
        "promotion-abandoned",
        "failed",
        "promote-intent",
        "promote",
        "activate",
    ], decisions


def step_uncached_evaluation_of_the_active_model_does_not_train_twice(platform: Platform) -> None:
    """A new target precision changes the evaluation cache key, so the active model is evaluated on the
    platform again (as on a worker without the result cache). Still one training for the one new data set."""
    p = platform
    data = p.home / "batch-1-and-half-of-batch-2.jsonl"
    lines = (DEMO / "batch-2.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    data.write_text((DEMO / "batch-1.jsonl").read_text(encoding="utf-8") + "".join(lines[::2]), "utf-8")
    jobs = p.emulator.jobs_started
    result = retrain(p.params([str(data)], gates=PERMISSIVE, target_precision=0.9))
    assert result.promoted
    _assert_agree(p, result.candidate_id)
    trained = p.trained_sets()
    assert len(set(trained)) == len(trained), f"{p.kind} trained the same data twice: {trained}"
    assert p.emulator.jobs_started == jobs + 1


# -------------------------------------------------------------------------------------------------- tests


def test_a_bots_history_on_the_platform(platform: Platform, decide_calls: list[DecideCall]) -> None:
    """The steps above, in order, on one platform (a fresh emulator, store and workspace per platform)."""
    p = platform
    for step in (
        step_first_run_promotes_and_the_platform_serves_it,
        step_second_run_is_decided_by_the_shared_gates_on_the_same_test_set,
    ):
        decide_calls.clear()  # each step sees only the decide() calls of its own run
        step(p, decide_calls)
    for faulty in (
        step_refused_activation_fails_the_run_and_changes_nothing,
        step_activation_that_fails_after_the_platform_switched_is_undone,
        step_failed_pointer_switch_rolls_the_platform_back,
    ):
        with pytest.MonkeyPatch.context() as mp:  # each step's faults end with the step
            faulty(p, mp)
    step_rerun_after_the_faults_promotes_without_training_again(p)
    step_rollback_returns_store_and_platform_to_the_previous_model(p)
    step_every_distinct_training_set_was_trained_exactly_once(p)
    step_uncached_evaluation_of_the_active_model_does_not_train_twice(p)
