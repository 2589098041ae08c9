"""End to end with a real Label Studio 1.23.2 (slow; it runs in CI through ``make test``).

Label Studio is installed into its own cached venv when missing (see ``labelstudio.py``) and started by the
test on 127.0.0.1; everything it is asked is asked through its REST API, as a script or the browser would.

* ``test_export_holds_exactly_the_annotated_tasks``: the harness against the real server: import, annotate
  (entities, one skipped task, untouched tasks, an emoji before a span), export through nluflow's Label
  Studio source, and the converted dataset holds exactly the annotated texts with their intents and
  entities; the skipped and untouched tasks are counted, not trained on.
* ``test_annotations_retrain_through_the_relay``: the whole path, with a real Prefect server, a process
  worker, the ``retrain-on-annotation`` deployment from ``prefect.yaml`` and ``nluflow relay`` registered as
  the project's webhook (custom secret header). N annotations → exactly one run, whose report and audit
  line say "+N new" and whose training snapshot (or test set) holds them, promoted; a run with nothing new
  annotated → ``unchanged``, training from the cache; a second burst → exactly one more run that trains
  again (new dataset sha, new model); nothing new again → a cache hit on that model.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from nluflow.data.loaders import load_paths
from nluflow.data.schema import Entity
from nluflow.outcome import AUDIT_DECISION
from nluflow.sources.labelstudio import LabelStudioClient, LabelStudioExportSource
from nluflow.store.audit_log import AuditLog

from . import labelstudio
from .annotations import Utterance, UtterancePool
from .conftest import (
    BIN,
    FLOW_NAME,
    OUTPUT,
    PREFECT,
    REPO,
    RUN_TIMEOUT,
    TERMINAL_STATES,
    Reporter,
    Service,
    Stack,
    _create_pool_and_blocks,
    _new_stack,
    _start_server,
    _start_worker,
    _wait,
    free_port,
)
from .labelstudio import (
    LabelStudioAPI,
    LabelStudioInstall,
    LabelStudioServer,
    ensure_label_studio,
    find_span,
    labeling_config,
    running_label_studio,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # a cold install alone takes minutes

NLU_PROJECT = "ls-bookings"
SOURCE_BLOCK = "e2e-bookings"
SOURCE_REF = f"nluflow-label-studio-source/{SOURCE_BLOCK}"
DEPLOYMENT_ON_ANNOTATION = "retrain-on-annotation"
REPORT_KEY = f"{NLU_PROJECT}-retrain-report"
RELAY_HEADER = "X-Relay-Secret"
RELAY_SECRET_ENV = "NLUFLOW_RELAY_SECRET"
DEBOUNCE_SECONDS = 60.0  # prefect.yaml: the trigger's `within` and `schedule_after`
# 45 annotations: the first run routes 20% (3 per intent) to the test set and keeps 12 per intent for
# training (validation blocks fewer than 10 per intent).
FIRST_PER_INTENT = 15
SECOND_PER_INTENT = 5  # 15 more, in cities and phrasings the first burst never used


@pytest.fixture(scope="session")
def label_studio_install(progress: Reporter) -> LabelStudioInstall:
    return ensure_label_studio(progress)


@pytest.fixture(scope="session")
def label_studio(
    label_studio_install: LabelStudioInstall, tmp_path_factory: pytest.TempPathFactory, progress: Reporter
) -> Iterator[LabelStudioServer]:
    with running_label_studio(
        label_studio_install, tmp_path_factory.mktemp("label-studio"), progress
    ) as server:
        yield server


def test_an_install_that_fails_fails_the_test_with_pips_reason(
    tmp_path: Path, progress: Reporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No silent skip: when pip cannot install Label Studio, the test fails and says why (here: a version
    that does not exist), and nothing half-made is taken for a healthy venv next time."""
    monkeypatch.setattr(labelstudio, "LS_VERSION", "0.0.0.dev0")
    with pytest.raises(
        pytest.fail.Exception,
        match=r"(?s)cannot install Label Studio 0\.0\.0\.dev0.*No matching distribution",
    ):
        labelstudio.ensure_label_studio(progress, cache_root=tmp_path)
    assert "label-studio==0.0.0.dev0" in (tmp_path / "label-studio-0.0.0.dev0" / "install.log").read_text()
    assert not (tmp_path / "label-studio-0.0.0.dev0" / "installed.json").exists()


def _key(
    text: str, intent: str, entities: Sequence[Entity]
) -> tuple[str, str, tuple[tuple[int, int, str, str], ...]]:
    spans = tuple(sorted((e.start, e.end, e.entity, e.value) for e in entities))
    return text, intent, spans


def test_export_holds_exactly_the_annotated_tasks(
    label_studio: LabelStudioServer, tmp_path: Path, progress: Reporter
) -> None:
    api = label_studio.api()
    try:
        project = api.create_project("e2e export", labeling_config())
        annotated = UtterancePool().burst(per_intent=2, cities=slice(0, 4))
        rain = "will it rain in São Paulo 🌧 next week"  # a span after an astral char (UTF-16 ≠ code points)
        annotated.append(
            Utterance(
                rain, "weather", (find_span(rain, "São Paulo", "city"), find_span(rain, "next week", "date"))
            )
        )
        skipped = ["asdf qwerty zxcv"]
        untouched = ["book me something nice", "hello hello hello"]
        texts = [u.text for u in annotated] + skipped + untouched
        ids = dict(zip(texts, api.import_tasks(project, texts), strict=True))
        for utterance in annotated:
            api.annotate(ids[utterance.text], utterance.text, utterance.intent, utterance.spans)
        api.annotate(ids[skipped[0]], skipped[0], "greet", cancelled=True)
        progress(
            f"Label Studio project {project}: {len(texts)} tasks, {len(annotated)} annotated, "
            f"{len(skipped)} skipped, {len(untouched)} untouched"
        )

        started = time.monotonic()
        source = LabelStudioExportSource(LabelStudioClient(label_studio.url, label_studio.token), project)
        pulled = source.pull(tmp_path / "pulled")
        dataset = load_paths(pulled.paths)
        progress(
            f"exported and converted in {time.monotonic() - started:.2f} s: {pulled.provenance.summary()}"
        )
    finally:
        api.close()

    got = sorted(_key(e.text, e.intent, e.entities) for e in dataset.examples)
    expected = sorted(
        (u.text, u.intent, tuple(sorted((s.start, s.end, s.label, u.text[s.start : s.end]) for s in u.spans)))
        for u in annotated
    )
    assert got == expected
    assert rain in {e.text for e in dataset.examples}

    provenance = pulled.provenance
    assert provenance.kind == "label-studio"
    assert provenance.tasks == len(texts)
    assert provenance.annotations == len(annotated) + len(skipped)
    assert provenance.used_annotations == len(annotated)
    assert provenance.cancelled == len(skipped)
    assert provenance.skipped_tasks == len(skipped)
    assert provenance.unannotated_tasks == len(untouched)
    assert provenance.disagreements == 0
    assert label_studio.token not in provenance.summary()


# --------------------------------------------------------------------------------------------- the full path


@dataclass
class Burst:
    """Tasks imported and annotated together, and the deployment run they caused."""

    name: str
    utterances: list[Utterance]
    run: dict[str, Any] = field(default_factory=dict)
    audit: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def texts(self) -> set[str]:
        return {u.text for u in self.utterances}


@dataclass
class Pipeline:
    """Label Studio → webhook → relay → Prefect event → retrain-on-annotation deployment → worker."""

    stack: Stack
    label_studio: LabelStudioServer
    api: LabelStudioAPI
    ls_project: int
    deployment_id: str
    relay_url: str
    store: Path
    timings: dict[str, float] = field(default_factory=dict)

    def runs(self) -> list[dict[str, Any]]:
        """Every flow run of the deployment, oldest first."""
        with self.stack.client() as client:
            response = client.post(
                "/flow_runs/filter",
                json={
                    "flow_runs": {"deployment_id": {"any_": [self.deployment_id]}},
                    "sort": "EXPECTED_START_TIME_ASC",
                    "limit": 50,
                    "offset": 0,
                },
            )
        response.raise_for_status()
        return list(response.json())

    def relay_counts(self) -> dict[str, int]:
        response = httpx.get(f"{self.relay_url}/healthz", timeout=10.0, trust_env=False)
        response.raise_for_status()
        body = response.json()
        counts = body.get("counts", body)
        return {str(k): int(v) for k, v in counts.items() if isinstance(v, int)}

    def audit_line(self, flow_run_id: str) -> dict[str, Any]:
        audit = AuditLog(self.store / NLU_PROJECT / "audit.jsonl")
        verification = audit.verify()
        assert verification.ok, verification.reason
        lines = [r for r in audit.records() if r.get("flow_run_id") == flow_run_id]
        assert len(lines) == 1, f"expected one audit line of flow run {flow_run_id}, found {len(lines)}"
        # A promotion also has its intent line (written before the pointer switch), which the line names.
        intents = [
            r for r in audit.records() if r["decision"] == "promote-intent" and r["run_id"] == flow_run_id
        ]
        if lines[0]["decision"] == "promote":
            assert [r["seq"] for r in intents] == [lines[0]["intent_seq"]], intents
        else:
            assert intents == [], intents
        return lines[0]

    def report(self, flow_run_id: str) -> str:
        """The markdown of the run's retrain report artifact."""
        with self.stack.client() as client:
            response = client.post(
                "/artifacts/filter",
                json={
                    "artifacts": {"key": {"any_": [REPORT_KEY]}},
                    "flow_runs": {"id": {"any_": [flow_run_id]}},
                    "limit": 5,
                    "offset": 0,
                },
            )
        response.raise_for_status()
        found = response.json()
        assert len(found) == 1, f"flow run {flow_run_id}: {len(found)} artifacts with key {REPORT_KEY}"
        return str(found[0]["data"])

    def task_states(self, flow_run_id: str) -> dict[str, str]:
        """Task name → state name of the run, once every task run is terminal (states arrive async)."""
        states: dict[str, str] = {}

        def settled() -> bool:
            with self.stack.client() as client:
                response = client.post(
                    "/task_runs/filter",
                    json={"flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 200, "offset": 0},
                )
            response.raise_for_status()
            runs = response.json()
            states.clear()
            states.update({r["name"].rsplit("-", 1)[0]: r["state_name"] for r in runs})
            return bool(runs) and all(r["state_type"] in TERMINAL_STATES for r in runs)

        _wait(f"the task runs of {flow_run_id} to be terminal", settled, 60.0, self.stack)
        return states


def _relay_config(home: Path, ls_project: int) -> Path:
    path = home / "relay.yml"
    path.write_text(
        f"secret_env: {RELAY_SECRET_ENV}\n"
        f"header: {RELAY_HEADER}\n"
        "label_studio:\n"
        f"  {ls_project}: {{project: {NLU_PROJECT}, source: {SOURCE_REF}}}\n",
        encoding="utf-8",
    )
    return path


def _save_source_block(stack: Stack, label_studio: LabelStudioServer, ls_project: int) -> None:
    """Save the LabelStudioSource block the relay names (the token through the environment, not argv)."""
    script = (
        "import os\n"
        "from blocks.sources import LabelStudioSource\n"
        "LabelStudioSource(url=os.environ['LS_URL'], project_id=int(os.environ['LS_PROJECT']),\n"
        "    token=os.environ['LS_TOKEN'], token_kind='legacy').save(os.environ['BLOCK'], overwrite=True)\n"
    )
    env = {
        **stack.env,
        "LS_URL": label_studio.url,
        "LS_PROJECT": str(ls_project),
        "LS_TOKEN": label_studio.token,
        "BLOCK": SOURCE_BLOCK,
    }
    saved = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert saved.returncode == 0, f"saving the source block failed:\n{saved.stdout}\n{saved.stderr}"
    assert label_studio.token not in saved.stdout + saved.stderr


def _deploy_on_annotation(stack: Stack) -> str:
    deployed = stack.cli("deploy", "--name", DEPLOYMENT_ON_ANNOTATION, cwd=REPO, timeout=240.0)
    assert deployed.returncode == 0, (
        f"prefect deploy --name {DEPLOYMENT_ON_ANNOTATION} exited {deployed.returncode}:\n"
        f"{deployed.stdout}\n{deployed.stderr}\n" + stack.diagnostics()
    )
    with stack.client() as client:
        response = client.get(f"/deployments/name/{FLOW_NAME}/{DEPLOYMENT_ON_ANNOTATION}")
        assert response.status_code == 200, response.text
        deployment_id = str(response.json()["id"])
        automations = client.post(f"/automations/related-to/prefect.deployment.{deployment_id}")
        if automations.status_code == 405:  # GET in this Prefect version
            automations = client.get(f"/automations/related-to/prefect.deployment.{deployment_id}")
        automations.raise_for_status()
        assert automations.json(), f"{DEPLOYMENT_ON_ANNOTATION} has no trigger automation"
    return deployment_id


def _start_relay(stack: Stack, config: Path, secret: str) -> str:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**stack.env, RELAY_SECRET_ENV: secret}
    stack.services.append(
        Service.start(
            "relay",
            [
                str(BIN / "nluflow"),
                "relay",
                "--config",
                str(config),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env,
            stack.home,
            stack.home / "relay.log",
        )
    )

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=5.0, trust_env=False).status_code == 200
        except httpx.TransportError:
            return False

    _wait(f"the relay's {url}/healthz", healthy, 60.0, stack)
    return url


@pytest.fixture(scope="module")
def pipeline(
    label_studio: LabelStudioServer, tmp_path_factory: pytest.TempPathFactory, progress: Reporter
) -> Iterator[Pipeline]:
    """Prefect server + process worker + the retrain-on-annotation deployment + the relay, and a Label
    Studio project whose webhook (with the relay's secret header) points at the relay."""
    if not Path(PREFECT).exists():
        pytest.fail(f"the prefect CLI is not at {PREFECT}; run the tests with the project's .venv")
    home = tmp_path_factory.mktemp("e2e-label-studio-flow")
    stack = _new_stack(home, progress)
    api = label_studio.api()
    started = time.monotonic()
    try:
        _start_server(stack)
        _create_pool_and_blocks(stack)  # `make blocks`: registers nluflow's block types too
        _start_worker(stack)
        ls_project = api.create_project("e2e bookings", labeling_config())
        _save_source_block(stack, label_studio, ls_project)
        t0 = time.monotonic()
        deployment_id = _deploy_on_annotation(stack)
        stack.timings["deploy"] = time.monotonic() - t0
        secret = secrets.token_urlsafe(24)
        relay_url = _start_relay(stack, _relay_config(home, ls_project), secret)
        api.add_webhook(ls_project, f"{relay_url}/hooks/label-studio", {RELAY_HEADER: secret})
        progress(
            f"pipeline up in {time.monotonic() - started:.1f} s: Label Studio project {ls_project} → relay "
            f"{relay_url} → {FLOW_NAME}/{DEPLOYMENT_ON_ANNOTATION} ({deployment_id})"
        )
        yield Pipeline(
            stack=stack,
            label_studio=label_studio,
            api=api,
            ls_project=ls_project,
            deployment_id=deployment_id,
            relay_url=relay_url,
            store=Path(stack.env["NLUFLOW_HOME"]) / "store",
            timings=stack.timings,
        )
    finally:
        api.close()
        for service in reversed(stack.services):
            how = service.stop()
            progress(f"{service.name} {how} (exit code {service.proc.returncode})")
        OUTPUT.mkdir(exist_ok=True)
        for service in stack.services:
            with contextlib.suppress(OSError):
                shutil.copyfile(service.log_path, OUTPUT / f"label-studio-flow-{service.name}.log")
        with contextlib.suppress(OSError):
            shutil.copyfile(label_studio.service.log_path, OUTPUT / "label-studio.log")


def _annotate_burst(pipeline: Pipeline, burst: Burst, progress: Reporter) -> None:
    texts = [u.text for u in burst.utterances]
    ids = pipeline.api.import_tasks(pipeline.ls_project, texts)
    started = time.monotonic()
    for utterance, task_id in zip(burst.utterances, ids, strict=True):
        pipeline.api.annotate(task_id, utterance.text, utterance.intent, utterance.spans)
    seconds = time.monotonic() - started
    # The trigger fires on the first event and schedules the run 60 s later, which then exports: the whole
    # burst must land before (the worker needs a few seconds to start the run, hence the margin).
    assert seconds < DEBOUNCE_SECONDS - 15, (
        f"annotating {len(texts)} tasks took {seconds:.0f} s, too long for one debounce window"
    )
    progress(
        f"{burst.name}: imported and annotated {len(texts)} tasks through the REST API in {seconds:.1f} s"
    )


def _one_more_run(pipeline: Pipeline, before: int, burst: Burst, progress: Reporter) -> dict[str, Any]:
    """Wait for exactly one new run of the deployment to finish, then check that no other one came."""
    started = time.monotonic()
    runs: list[dict[str, Any]] = []

    def finished() -> bool:
        runs[:] = pipeline.runs()
        return len(runs) > before and all(r["state_type"] in TERMINAL_STATES for r in runs)

    _wait(
        f"the run caused by {burst.name}", finished, DEBOUNCE_SECONDS + RUN_TIMEOUT, pipeline.stack, poll=2.0
    )
    # Any event of the burst after the trigger's window would have scheduled its own run by now (a fired
    # trigger creates the run at once, scheduled 60 s later); give the server's trigger loop a moment.
    time.sleep(5.0)
    runs = pipeline.runs()
    assert len(runs) == before + 1, f"{burst.name}: expected exactly one new run, found " + ", ".join(
        f"{r['name']} {r['state_name']}" for r in runs[before:]
    )
    run = runs[-1]
    burst.seconds = time.monotonic() - started
    if run["state_type"] != "COMPLETED":
        pytest.fail(
            f"{burst.name}: run {run['id']} ended {run['state_name']}\n" + pipeline.stack.diagnostics()
        )
    progress(
        f"{burst.name}: exactly one run, {run['name']} {run['state_name']} in {burst.seconds:.1f} s: "
        f"{run['state']['message']}"
    )
    return dict(run)


def _check_outcome(run: dict[str, Any], audit: dict[str, Any], allowed: set[str]) -> str:
    """The run says its outcome where users look: tag, state message and name agree with the audit line."""
    outcomes = [t.split(":", 1)[1] for t in run["tags"] if t.startswith("outcome:")]
    assert len(outcomes) == 1 and outcomes[0] in allowed, f"run {run['name']}: tags {run['tags']}"
    outcome = outcomes[0]
    assert AUDIT_DECISION[outcome] == audit["decision"], (outcome, audit["decision"])
    message = run["state"]["message"] or ""
    assert message.startswith(outcome), f"run {run['name']}: state message {message!r}"
    assert run["name"].startswith(f"retrain-{NLU_PROJECT}-{outcome}"), run["name"]
    return outcome


def _snapshot_texts(pipeline: Pipeline, dataset_sha256: str) -> set[str]:
    """Texts of the training data a run trained on, as the store keeps it (content-addressed)."""
    path = pipeline.store / NLU_PROJECT / "datasets" / f"{dataset_sha256}.jsonl"
    assert path.exists(), f"no training data snapshot {path}"
    return {
        json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    }


def _test_set_texts(pipeline: Pipeline) -> set[str]:
    path = pipeline.store / NLU_PROJECT / "testset" / "test.jsonl"
    assert path.exists(), f"no frozen test set {path}"
    return {
        json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    }


def _check_trained_on(pipeline: Pipeline, burst: Burst) -> None:
    """The run's report and audit line say "+N new"; its training snapshot holds the burst's texts that were
    not routed into the test set, and the test set holds the rest."""
    n = len(burst.utterances)
    audit, report = burst.audit, pipeline.report(burst.run["id"])
    assert audit["new_examples"] == n, f"{burst.name}: audit says {audit['new_examples']} new, expected {n}"
    assert f"+{n} new" in report, f"{burst.name}: the report does not say '+{n} new':\n{report}"
    train, test = _snapshot_texts(pipeline, audit["dataset_sha256"]), _test_set_texts(pipeline)
    assert not train & test, f"texts both trained on and tested: {sorted(train & test)}"
    missing = burst.texts - train - test
    assert not missing, (
        f"{burst.name}: annotated texts the run neither trained nor tested on: {sorted(missing)}"
    )
    routed = int(audit.get("routed_to_test", 0))
    assert len(burst.texts & train) == n - routed, (
        f"{burst.name}: {len(burst.texts & train)} of {n} new texts in the training snapshot, "
        f"{routed} routed to the test set"
    )


def _run_without_new_annotations(pipeline: Pipeline, before: int, progress: Reporter) -> Burst:
    """A manual run of the deployment with the parameters a trigger gives it (what a scheduled run or a
    user does when a webhook was lost): it pulls the export again, unchanged since the last run."""
    params = json.dumps({"params": {"project": NLU_PROJECT, "data": [SOURCE_REF]}})
    result = pipeline.stack.cli(
        "deployment", "run", f"{FLOW_NAME}/{DEPLOYMENT_ON_ANNOTATION}", "--params", params
    )
    assert result.returncode == 0, f"prefect deployment run failed:\n{result.stdout}\n{result.stderr}"
    rerun = Burst(f"run {before + 1} (nothing new annotated)", [])
    rerun.run = _one_more_run(pipeline, before, rerun, progress)
    rerun.audit = pipeline.audit_line(rerun.run["id"])
    return rerun


def _check_cache_hit(pipeline: Pipeline, rerun: Burst, previous: Burst, new_examples: int) -> None:
    """Same export → same training data, test set and model as ``previous`` (nothing routed again), training
    served from the cache; ``new_examples`` counts what the *active* model has not trained on."""
    assert rerun.audit["dataset_sha256"] == previous.audit["dataset_sha256"]
    assert rerun.audit["model_id"] == previous.audit["model_id"]
    assert rerun.audit["test_sha256"] == previous.audit["test_sha256"]
    assert rerun.audit["new_examples"] == new_examples, rerun.audit
    states = pipeline.task_states(rerun.run["id"])
    assert states.get("submit-training") == "Cached", states
    assert states.get("wait-for-training") == "Cached", states


def test_annotations_retrain_through_the_relay(pipeline: Pipeline, progress: Reporter) -> None:
    pool = UtterancePool()
    first = Burst("burst 1", pool.burst(per_intent=FIRST_PER_INTENT, cities=slice(0, 12)))
    second = Burst(
        "burst 2", pool.burst(per_intent=SECOND_PER_INTENT, cities=slice(20, 30), new_phrasing=True)
    )
    assert not first.texts & second.texts

    # Burst 1: N new annotations → exactly one run, which trains on them; the first model is promoted.
    _annotate_burst(pipeline, first, progress)
    first.run = _one_more_run(pipeline, 0, first, progress)
    first.audit = pipeline.audit_line(first.run["id"])
    assert _check_outcome(first.run, first.audit, {"promoted"})
    _check_trained_on(pipeline, first)
    counts = pipeline.relay_counts()
    assert counts.get("emitted") == len(first.utterances), counts

    # Nothing new annotated: the export is unchanged → 'unchanged' (the candidate is the active model),
    # training served from the cache.
    same = _run_without_new_annotations(pipeline, 1, progress)
    _check_outcome(same.run, same.audit, {"unchanged"})
    assert "nothing new to train" in (same.run["state"]["message"] or ""), same.run["state"]
    _check_cache_hit(pipeline, same, first, new_examples=0)

    # Burst 2: new annotations with new vocabulary → exactly one more run, which trains again.
    _annotate_burst(pipeline, second, progress)
    second.run = _one_more_run(pipeline, 2, second, progress)
    second.audit = pipeline.audit_line(second.run["id"])
    promoted = _check_outcome(second.run, second.audit, {"promoted", "rejected"}) == "promoted"
    assert second.audit["dataset_sha256"] != first.audit["dataset_sha256"]
    assert second.audit["model_id"] != first.audit["model_id"]
    _check_trained_on(pipeline, second)
    trained = pipeline.task_states(second.run["id"])
    assert trained.get("submit-training") not in {None, "Cached"}, trained

    # And again nothing new: a cache hit on burst 2's model. 'unchanged' (nothing new) when that model was
    # promoted; a rejected candidate is the same candidate again, judged again against the same active
    # model, which still has not trained on burst 2 ("+N new" again).
    again = _run_without_new_annotations(pipeline, 3, progress)
    _check_outcome(again.run, again.audit, {"unchanged" if promoted else "rejected"})
    _check_cache_hit(pipeline, again, second, new_examples=0 if promoted else len(second.utterances))

    install = pipeline.label_studio.install
    progress(
        "Label Studio → retrain timings: LS install "
        + ("cached" if install.reused else f"{install.seconds:.0f} s (cold)")
        + f", LS start {pipeline.label_studio.timings['start']:.1f} s, Prefect server "
        f"{pipeline.timings.get('server_start', 0):.1f} s, worker "
        f"{pipeline.timings.get('worker_start', 0):.1f} s, deploy {pipeline.timings.get('deploy', 0):.1f} s; "
        f"after the last annotation of a burst (incl. the {DEBOUNCE_SECONDS:.0f} s debounce): run 1 "
        f"(+{len(first.utterances)} new) {first.seconds:.1f} s, run 3 (+{len(second.utterances)} new) "
        f"{second.seconds:.1f} s; manual runs with nothing new: {same.seconds:.1f} s, {again.seconds:.1f} s"
    )
