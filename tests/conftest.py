"""Test-wide settings: Prefect state lives in a per-session temp dir, never in the user's ~/.prefect."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="nluflow-tests-"))
# Set before anything imports prefect: cached results and the harness database must not outlive the session.
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(_SESSION_HOME / "results")
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"] = "nluflow"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"  # tests touch no network beyond 127.0.0.1
os.environ.pop("PREFECT_API_URL", None)
os.environ["NLUFLOW_HOME"] = str(_SESSION_HOME / "nluflow")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
DEMO_DATA = REPO / "examples" / "snips-demo"


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not SHARED_DATASETS.is_dir():
        pytest.skip(
            f"shared datasets not found at {SHARED_DATASETS} (CI clones the repo with shared/ beside it)"
        )
    return SHARED_DATASETS


@pytest.fixture(scope="session")
def demo_data() -> Path:
    return DEMO_DATA


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """The one Prefect test harness of the whole session (a cold server start costs 8-35 s on 2 cores); yields
    its API URL. Every suite that needs a Prefect API asks for this fixture: two harnesses open at once leave
    the events client and the trigger services talking to different servers (a trigger then never fires)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        url = PREFECT_API_URL.value()
        assert url
        yield str(url)
