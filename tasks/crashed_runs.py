"""What Prefect knows about a project's earlier retrain runs, as plain records for :mod:`nluflow.recovery`.

A retrain killed (SIGKILL, OOM, lost node) before its own audit line cannot write one: hooks do not run in a
killed process. Its flow run stays on the Prefect server, though: Crashed once the zombie automation saw its
heartbeats stop (``automations/detect-zombie-flows.yaml``), or still RUNNING with an old last heartbeat where
the automation is not installed; and a run whose failure hook could not write its ``failed`` line stays
Failed. :func:`earlier_retrain_runs` lists those runs of one project and one store (by the ``params``
parameter), with their last heartbeats; the core (:func:`nluflow.recovery.crashed_run_lines`) decides which
get a line.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterName,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter
from prefect.settings import PREFECT_API_URL, temporary_settings

from nluflow.recovery import EarlierRun
from tasks.common import StoreSpec

RETRAIN_FLOW = "nluflow-retrain"
HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
# The newest runs of the project looked at: a crash is found by the next run of its project, so older ones
# were seen before.
LOOKBACK_RUNS = 200
CLOCK_MARGIN = timedelta(days=1)
_LOOKED_FOR = [StateType.CRASHED, StateType.FAILED, StateType.RUNNING, StateType.PENDING]


def _same_store(params: dict[str, Any], store: StoreSpec) -> bool:
    """Was the run's store this one? Block by name; a folder by its resolved path; no store at all means
    ``$NLUFLOW_HOME/store`` as this process sees it."""
    if params.get("store_block") or store.block:
        return bool(params.get("store_block") == store.block)
    folder = params.get("store")
    if folder is None:
        folder = Path(os.environ.get("NLUFLOW_HOME", ".nluflow")) / "store"
    return store.path is not None and Path(folder).resolve() == Path(store.path).resolve()


def _of_project(run: FlowRun, project: str, store: StoreSpec) -> bool:
    params = run.parameters.get("params")
    if not isinstance(params, dict):
        return False
    return params.get("project", "default") == project and _same_store(params, store)


def _last_heartbeats(client: Any, run: FlowRun) -> tuple[datetime | None, float | None]:
    """The time of the run's newest heartbeat (None when it sent none) and the gap to the one before it
    (None when it sent one)."""
    # A day before the run was created: heartbeats carry the sender's clock, which may be behind the
    # server's; the resource id alone picks the run's events.
    created = run.created or run.start_time
    occurred = EventOccurredFilter(since=created - CLOCK_MARGIN) if created else EventOccurredFilter()
    page = client.read_events(
        EventFilter(
            occurred=occurred,
            event=EventNameFilter(name=[HEARTBEAT_EVENT]),
            resource=EventResourceFilter(id=[f"prefect.flow-run.{run.id}"]),
        ),
        limit=2,
    )
    times = sorted((event.occurred for event in page.events), reverse=True)
    if not times:
        return None, None
    return times[0], (times[0] - times[1]).total_seconds() if len(times) > 1 else None


def earlier_retrain_runs(store: StoreSpec, project: str, current_run_id: str | None) -> list[EarlierRun]:
    """The project's earlier retrain runs (this store) that ended Crashed or Failed or still say
    RUNNING/PENDING, newest first, with their last heartbeats; the current run is left out."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[RETRAIN_FLOW])),
            flow_run_filter=FlowRunFilter(
                # Runs are named retrain-<project> (then retrain-<project>-<outcome>-<model>): other projects'
                # failures never crowd this project's runs out of the window. `params` decides, below.
                name=FlowRunFilterName(like_=f"retrain-{project}"),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=_LOOKED_FOR)),
            ),
            sort=FlowRunSort.START_TIME_DESC,
            limit=LOOKBACK_RUNS,
        )
        out: list[EarlierRun] = []
        for run in runs:
            if str(run.id) == current_run_id or not _of_project(run, project, store) or run.state is None:
                continue
            alive_state = run.state.type in (StateType.RUNNING, StateType.PENDING)
            last, every = _last_heartbeats(client, run) if alive_state else (None, None)
            out.append(
                EarlierRun(
                    flow_run_id=str(run.id),
                    state=run.state.type.value,
                    state_message=run.state.message,
                    state_at=run.state.timestamp,
                    started_at=run.start_time,
                    last_heartbeat=last,
                    heartbeat_seconds=every,
                )
            )
        return out


def earlier_runs_for_cli(store_root: str | Path, project: str) -> tuple[list[EarlierRun], str | None]:
    """:func:`earlier_retrain_runs` for the CLI's recovery points (a local store folder), only when a Prefect
    server is configured (``PREFECT_API_URL``, or the ``make server`` the CLI found): a pointer change never
    starts an ephemeral server for this. ``(runs, None)``, or ``([], note)`` when the API did not answer (the
    CLI prints the note; the next retrain writes the lines). Nothing is logged: the CLI says it."""
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return [], None
    try:
        # That URL, even if Prefect's settings were read before it was set: never an ephemeral server.
        with temporary_settings(updates={PREFECT_API_URL: url}):
            runs = earlier_retrain_runs(StoreSpec(path=str(store_root)), project, current_run_id=None)
    except Exception as exc:
        return [], (
            f"could not ask the Prefect API at {url} for {project}'s crashed runs ({type(exc).__name__}); "
            "the next retrain of the project will"
        )
    return runs, None
