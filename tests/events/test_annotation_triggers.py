"""Event → run, for real: deployment triggers in a Prefect test harness, fed by the relay and the CLI helpers.

Must show (issue 6, item 3): one annotation burst of N events produces exactly one retrain run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from flows.events import (
    annotation_deployment,
    annotation_deployment_spec,
    annotation_deployment_yaml,
    annotation_trigger,
    annotation_trigger_spec,
    emit_annotated,
    notify_annotated,
)
from nluflow.apps.relay import (
    LabelStudioRoute,
    PrefectApiEmitter,
    RelayConfig,
    annotated_event,
    create_app,
    signed_headers,
)
from nluflow.errors import BackendError, ConfigError

from .conftest import free_port, serve

REPO = Path(__file__).resolve().parents[2]
SECRET = "relay-secret-4f1c9a7e2b6d8035"  # a test value, not a credential
BASE_PARAMS = {"backend": "local", "test_fraction": 0.25}
# How long to wait for the trigger's run to appear: the server's event pipeline and triggers service run on
# a shared, busy 2-core box in CI; a deadline for waiting, not a speed requirement.
WAIT_SECONDS = 120.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------------------------------ the definition


def test_trigger_debounces_per_project_and_templates_params() -> None:
    trigger = annotation_trigger(base_params=BASE_PARAMS)

    assert trigger.expect == {"nlu.dataset.annotated"}
    assert trigger.match.model_dump() == {"prefect.resource.id": "nluflow.dataset.*"}
    assert trigger.for_each == {"prefect.resource.id"}
    assert (trigger.posture, trigger.threshold) == ("Reactive", 1)
    assert trigger.within == timedelta(seconds=60)
    assert trigger.schedule_after == timedelta(seconds=60)  # the run reads the data after the window
    assert trigger.parameters == {
        "params": {
            "backend": "local",
            "test_fraction": 0.25,
            "project": "{{ event.payload.project }}",
            "data": "{{ [event.payload.data] }}",
        }
    }


def test_trigger_for_one_project() -> None:
    trigger = annotation_trigger("bookings", within_seconds=5, schedule_after_seconds=0)

    assert trigger.match.model_dump() == {"prefect.resource.id": "nluflow.dataset.bookings"}
    assert (trigger.within, trigger.schedule_after) == (timedelta(seconds=5), timedelta(0))


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"project": "../x"}, "project '../x'"),
        ({"within_seconds": 0}, "within_seconds=0"),
        ({"schedule_after_seconds": -1}, "schedule_after_seconds=-1"),
        ({"base_params": {"project": "x"}}, "come from the event payload"),
    ],
)
def test_trigger_refuses_bad_settings(kwargs: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(".", r"\.")):
        annotation_trigger_spec(**kwargs)


def test_deployment_refuses_base_params_that_do_not_fit_retrain_params() -> None:
    with pytest.raises(ConfigError, match="base_params do not fit RetrainParams"):
        annotation_deployment(base_params={"test_fraction": 3.0})


def test_yaml_snippet_survives_prefect_deploy_templating() -> None:
    """``prefect deploy`` renders ``{{ }}`` with the environment first; our templates must come through."""
    from prefect.utilities.templating import apply_values

    spec = annotation_deployment_spec(base_params=BASE_PARAMS)
    loaded = yaml.safe_load(annotation_deployment_yaml(base_params=BASE_PARAMS))

    assert loaded == [spec]
    assert apply_values(spec, dict(os.environ), remove_notset=False) == spec
    assert spec["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}


# ------------------------------------------------------------------------------------------ harness helpers


def read_runs(deployment_id: uuid.UUID) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC,
            limit=200,
        )


def runs_for(deployment_id: uuid.UUID, project: str) -> list[Any]:
    return [r for r in read_runs(deployment_id) if r.parameters["params"]["project"] == project]


def wait_for_runs(deployment_id: uuid.UUID, project: str, count: int) -> list[Any]:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        runs = runs_for(deployment_id, project)
        if len(runs) >= count:
            return runs
        time.sleep(0.2)
    raise AssertionError(f"{count} run(s) for {project} expected within {WAIT_SECONDS} s, got {len(runs)}")


@pytest.fixture
def deploy(prefect_api: str) -> Iterator[Callable[..., uuid.UUID]]:
    """Apply annotation deployments (no worker: runs stay Scheduled); remove them and their triggers after."""
    from prefect.client.orchestration import get_client

    created: list[uuid.UUID] = []

    def apply(**kwargs: Any) -> uuid.UUID:
        deployment_id = annotation_deployment(name=unique("on-annotation"), **kwargs).apply()
        created.append(deployment_id)
        return deployment_id

    yield apply
    with get_client(sync_client=True) as client:
        for deployment_id in created:
            client.delete_resource_owned_automations(f"prefect.deployment.{deployment_id}")
            client.delete_deployment(deployment_id)


def ls_body(label_studio: Path, action: str, n: int | None = None) -> bytes:
    """A captured webhook body; with ``n``, as the n-th distinct delivery (its annotation/deleted ids made
    unique: the relay takes identical copies for replays)."""
    body = (label_studio / f"webhook-{action}.json").read_bytes()
    if n is None:
        return body
    document = json.loads(body)
    for key in ("annotation", "annotations", "tasks"):
        items = document.get(key)
        for item in items if isinstance(items, list) else [items] if isinstance(items, dict) else []:
            item["id"] = 1000 + n
    return json.dumps(document).encode()


# ------------------------------------------------------------------------------------------ event → run


def test_emit_annotated_schedules_a_retrain_with_templated_params(deploy: Callable[..., uuid.UUID]) -> None:
    from flows.retrain import RetrainParams

    project = unique("emit")
    deployment_id = deploy(project=project, base_params=BASE_PARAMS)
    before = datetime.now(UTC)

    event = emit_annotated(project, "/srv/exports/emit.json", 3)

    assert event is not None and event.payload["new_examples"] == 3
    [run] = wait_for_runs(deployment_id, project, 1)
    assert run.parameters == {
        "params": {
            "backend": "local",
            "test_fraction": 0.25,
            "project": project,
            "data": ["/srv/exports/emit.json"],
        }
    }
    assert run.state_name == "Scheduled"
    # Scheduled one window later, so the run loads the data after the burst.
    assert run.expected_start_time >= before + timedelta(seconds=55)
    assert RetrainParams.model_validate(run.parameters["params"]).data == ["/srv/exports/emit.json"]


def test_burst_of_label_studio_webhooks_starts_exactly_one_run(
    deploy: Callable[..., uuid.UUID], prefect_api: str, label_studio: Path
) -> None:
    """Six real webhooks through the relay over HTTP, within one window → one retrain run that pulls the
    project's LabelStudioSource block (the event carries the block reference as ``data``)."""
    project, sentinel = unique("burst"), unique("sentinel")
    data = "nluflow-label-studio-source/bookings"
    deployment_id = deploy(base_params=BASE_PARAMS)  # every project, one window per project
    config = RelayConfig(
        secret=SECRET, label_studio={"1": LabelStudioRoute(project=project, source="bookings")}
    )
    burst = [
        "ANNOTATION_CREATED",
        "ANNOTATION_CREATED",
        "ANNOTATIONS_CREATED",
        "ANNOTATION_UPDATED",
        "ANNOTATIONS_DELETED",
        "ANNOTATION_CREATED",
    ]

    with serve(create_app(config, PrefectApiEmitter(prefect_api))) as relay:
        started = time.monotonic()
        codes = [
            httpx.post(
                f"{relay}/hooks/label-studio",
                content=ls_body(label_studio, action, n),
                headers={"Content-Type": "application/json", "X-Relay-Secret": SECRET},
            ).status_code
            for n, action in enumerate(burst)
        ]
        # A later event for another project: once its run exists, the burst has been evaluated too.
        body = json.dumps({"project": sentinel, "data": "/srv/other.json", "new_examples": 1}).encode()
        sentinel_code = httpx.post(
            f"{relay}/hooks/generic",
            content=body,
            headers={"X-Relay-Secret": SECRET, **signed_headers(body, SECRET)},
        ).status_code
        stats = httpx.get(f"{relay}/healthz").json()["counts"]

    assert codes == [202] * 6 and sentinel_code == 202
    assert stats == {"emitted": 7}
    wait_for_runs(deployment_id, project, 1)
    print(f"\nburst of {len(burst)} webhooks → first run scheduled after {time.monotonic() - started:.2f} s")
    wait_for_runs(deployment_id, sentinel, 1)
    time.sleep(1.0)  # margin: nothing else may arrive

    runs = runs_for(deployment_id, project)
    assert len(runs) == 1, [r.parameters for r in runs]
    assert runs[0].parameters["params"]["data"] == [data]
    assert len(runs_for(deployment_id, sentinel)) == 1  # a burst in one project does not hold back another
    assert len(read_runs(deployment_id)) == 2


def test_an_event_after_the_window_starts_the_next_run(
    deploy: Callable[..., uuid.UUID], prefect_api: str
) -> None:
    project = unique("window")
    deployment_id = deploy(project=project, within_seconds=60)
    emitter = PrefectApiEmitter(prefect_api)
    now = datetime.now(UTC)

    # Event times are the sender's: a window is measured on them, so no test has to wait it out.
    emitter.emit([annotated_event(project, "/d/first.json", 1, occurred=now)])
    wait_for_runs(deployment_id, project, 1)
    emitter.emit([annotated_event(project, "/d/inside.json", 1, occurred=now + timedelta(seconds=30))])
    emitter.emit([annotated_event(project, "/d/after.json", 1, occurred=now + timedelta(seconds=61))])
    runs = wait_for_runs(deployment_id, project, 2)
    time.sleep(1.0)

    runs = runs_for(deployment_id, project)
    assert [r.parameters["params"]["data"] for r in runs] == [["/d/first.json"], ["/d/after.json"]]


def test_a_run_in_progress_is_not_duplicated_the_next_one_waits(
    deploy: Callable[..., uuid.UUID], prefect_api: str
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.responses import SetStateStatus
    from prefect.states import Completed, Pending, Running

    project = unique("inflight")
    # concurrency_limit=1 with ENQUEUE; runs due at once, so a worker may start them right away.
    deployment_id = deploy(project=project, within_seconds=60, schedule_after_seconds=0)
    emitter = PrefectApiEmitter(prefect_api)
    now = datetime.now(UTC)
    emitter.emit([annotated_event(project, "/d/a.json", 1, occurred=now)])
    wait_for_runs(deployment_id, project, 1)
    emitter.emit([annotated_event(project, "/d/b.json", 1, occurred=now + timedelta(seconds=61))])
    first, second = wait_for_runs(deployment_id, project, 2)

    with get_client(sync_client=True) as client:
        assert client.set_flow_run_state(first.id, Pending()).status == SetStateStatus.ACCEPT
        assert client.set_flow_run_state(first.id, Running()).status == SetStateStatus.ACCEPT
        # What a worker does with the second run while the first one trains:
        held = client.set_flow_run_state(second.id, Pending())
        assert held.status == SetStateStatus.REJECT
        assert held.state is not None and held.state.name == "AwaitingConcurrencySlot"
        # ... and once the first one is done, the queued run (with the later annotations) goes ahead.
        assert client.set_flow_run_state(first.id, Completed()).status == SetStateStatus.ACCEPT
        assert client.set_flow_run_state(second.id, Pending()).status == SetStateStatus.ACCEPT


# ------------------------------------------------------------------------------------------ CLI helpers


def test_notify_annotated_posts_the_event_and_a_run_follows(
    deploy: Callable[..., uuid.UUID], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = unique("cli")
    deployment_id = deploy(project=project, base_params=BASE_PARAMS)
    (tmp_path / "nlu.json").write_text("[]")
    monkeypatch.chdir(tmp_path)

    event = notify_annotated(project, "nlu.json", new_examples=4)

    [run] = wait_for_runs(deployment_id, project, 1)
    assert run.parameters["params"]["data"] == [str(tmp_path / "nlu.json")]  # made absolute for the worker
    assert event["payload"] == {"project": project, "data": str(tmp_path / "nlu.json"), "new_examples": 4}


def test_notify_annotated_keeps_a_path_that_only_exists_on_the_worker(
    prefect_api: str, caplog: pytest.LogCaptureFixture
) -> None:
    event = notify_annotated(unique("remote"), "/mnt/worker-only/nlu.json")

    assert event["payload"]["data"] == "/mnt/worker-only/nlu.json"
    assert "does not exist here" in caplog.text


def test_notify_annotated_sends_a_source_reference_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)  # even where a folder of that name could exist, a reference stays a reference
    sent: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(204)

    event = notify_annotated(
        "bookings",
        "nluflow-label-studio-source/bookings",
        api_url="http://prefect.test/api",
        transport=httpx.MockTransport(handler),
    )

    assert event["payload"]["data"] == "nluflow-label-studio-source/bookings"
    assert sent[0][0]["payload"]["data"] == "nluflow-label-studio-source/bookings"
    assert "does not exist here" not in caplog.text


def test_notify_annotated_fails_loudly_when_the_api_is_down(prefect_api: str) -> None:
    with pytest.raises(BackendError, match="Nothing was emitted"):
        notify_annotated("bookings", "/d.json", api_url=f"http://127.0.0.1:{free_port()}/api")


def test_notify_annotated_needs_an_api(prefect_api: str) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings(restore_defaults={PREFECT_API_URL}),
        pytest.raises(ConfigError, match="PREFECT_API_URL"),
    ):
        notify_annotated("bookings", "/d.json")


@pytest.mark.parametrize(("project", "new_examples"), [("../etc", 0), ("", 0), ("ok", -1)])
def test_notify_and_emit_refuse_bad_input(project: str, new_examples: int) -> None:
    with pytest.raises(ConfigError):
        notify_annotated(project, "/d.json", new_examples, api_url="http://127.0.0.1:9/api")
    with pytest.raises(ConfigError):
        emit_annotated(project, "/d.json", new_examples)


# ------------------------------------------------------------------------------------------ prefect deploy


def test_prefect_deploy_of_the_yaml_snippet_triggers_with_the_right_params(
    prefect_api: str, tmp_path: Path
) -> None:
    """The snippet for prefect.yaml, deployed by the real ``prefect deploy`` and fired by an event."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    project, name, pool = unique("yaml"), unique("on-annotation"), unique("pool")
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    spec = annotation_deployment_spec(name, work_pool=pool, project=project, base_params=BASE_PARAMS)
    prefect_file = tmp_path / "prefect.yaml"
    prefect_file.write_text(
        yaml.safe_dump(
            {
                "name": "nluflow",
                "prefect-version": "3.8.8",
                "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}],
                "deployments": [spec],
            },
            sort_keys=False,
        )
    )
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefect",
            "--no-prompt",
            "deploy",
            "--prefect-file",
            str(prefect_file),
            "--name",
            name,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = done.stdout + done.stderr
    assert f"Deployment 'nluflow-retrain/{name}' successfully created" in " ".join(output.split()), output
    assert done.returncode == 0, output  # on prefect 3.9.1 + fastapi < 0.151 no 422 is tolerated

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(f"nluflow-retrain/{name}")
        try:
            assert deployment.global_concurrency_limit is not None
            assert deployment.global_concurrency_limit.limit == 1
            assert deployment.concurrency_options is not None
            assert deployment.concurrency_options.collision_strategy == "ENQUEUE"
            emit_annotated(project, "/srv/exports/yaml.json", 2)
            [run] = wait_for_runs(deployment.id, project, 1)
            assert run.parameters["params"] == {
                **BASE_PARAMS,
                "project": project,
                "data": ["/srv/exports/yaml.json"],
            }
        finally:
            client.delete_resource_owned_automations(f"prefect.deployment.{deployment.id}")
            client.delete_deployment(deployment.id)
            client.delete_work_pool(pool)
