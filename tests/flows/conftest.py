"""Every flow test runs against the session's one Prefect test harness (`prefect_api`, tests/conftest.py).

Tests that kill a retrain (crash points, killed runs) share two fixtures: ``run_killed_at`` runs a retrain in
a subprocess that SIGKILLs itself after a step (the test-only hook ``NLUFLOW_TEST_KILL_AT`` in
``tasks/common.py``), and ``free_promotion_slot`` hands back the slot such a run held.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

from flows.retrain import RetrainParams
from tasks.common import KILL_AT_ENV
from tasks.slot import promotion_limit_name

RUN_IN_SUBPROCESS = (
    "import sys\n"
    "from flows.retrain import RetrainParams, retrain\n"
    "retrain(RetrainParams.model_validate_json(sys.argv[1]))\n"
)


@pytest.fixture(scope="session", autouse=True)
def prefect_harness(prefect_api: str) -> str:
    return prefect_api


@pytest.fixture
def run_killed_at(prefect_api: str) -> Callable[[str, RetrainParams], subprocess.CompletedProcess[str]]:
    """Run a retrain of ``params`` in a subprocess that kills itself (SIGKILL) right after ``step``; it must
    die by that signal."""

    def run(step: str, params: RetrainParams) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-c", RUN_IN_SUBPROCESS, params.model_dump_json()],
            env={**os.environ, "PREFECT_API_URL": prefect_api, KILL_AT_ENV: step},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:])
        return proc

    return run


@pytest.fixture
def free_promotion_slot() -> Callable[[str], None]:
    """The killed run held the project's promotion slot; its lease would keep it for a minute or more. Prefect
    cannot know the process is gone, so the test hands the slot back by resetting the limit's active slots
    (test_promotion_slot.py shows the lease running out on its own)."""

    def free(project: str) -> None:
        with get_client(sync_client=True) as client:
            client.update_global_concurrency_limit(
                promotion_limit_name(project), GlobalConcurrencyLimitUpdate(active_slots=0)
            )

    return free
