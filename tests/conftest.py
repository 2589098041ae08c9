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
DEMO_DATA = REPO / "examples" / "snips-demo"


@pytest.fixture(scope="session")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The benchmark datasets that travel with the repository (``data/``, see its README), unpacked once per
    session: ``datasets / "banking77" / "train.jsonl"``, ``datasets / "rasa_financial_demo" / "raw" / ...``.
    A missing archive fails the test that asks (``DatasetsMissing`` names the folder); nothing skips."""
    from bench.common import unpack_datasets

    return unpack_datasets(tmp_path_factory.mktemp("datasets"))


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


# ------------------------------------------------------------------------------------------- the fast tier

# `make unit` runs `pytest -m "not slow"`. Besides the tests marked `slow` by hand (the measured top of the
# fast tier: subprocesses, the real embedding model, benchmark-sized data), some kinds are slow by what they
# need, and are marked here so that no new test of those kinds has to remember it: everything in tests/e2e
# (real servers, a worker, a browser) and tests/fuzz (hypothesis at full size, large files, slow clients),
# every test that asks for the session's Prefect API (a cold Prefect server costs 8-35 s on 2 cores, and each
# flow run a few seconds), and every test on moto's S3 server (the same tests run on the local store).
# The store suites ask for moto by request.getfixturevalue in a fixture parametrized local/s3, so their S3
# variant is known by its parameter.
SLOW_FIXTURES = frozenset({"prefect_api", "moto_s3"})
SLOW_PARAMS = frozenset({"s3"})
SLOW_FOLDERS = frozenset({"e2e", "fuzz"})


def _is_slow(item: pytest.Item, tests: Path) -> bool:
    path = Path(str(item.path)).resolve()
    folder = path.relative_to(tests).parts[0] if path.is_relative_to(tests) else ""
    callspec = getattr(item, "callspec", None)
    params = {v for v in callspec.params.values() if isinstance(v, str)} if callspec else set()
    return bool(
        folder in SLOW_FOLDERS
        or SLOW_FIXTURES & set(getattr(item, "fixturenames", ()))
        or SLOW_PARAMS & params
    )


# The longest files first, longest first (measured: a whole-suite profile with --durations, in seconds of one
# file on one worker). `make test` hands whole files to its two workers (--dist loadfile) in collection order;
# a 7-minute file drawn last by the random order leaves one worker idle while the other finishes it. Started
# first, they run beside the many short files instead. Within them and among the rest the random order stays.
LONGEST_FIRST = (
    "contract/test_retrain_flow_backends.py",
    "e2e/test_label_studio.py",
    "e2e/test_work_pool.py",
    "flows/test_concurrent_retrains.py",
    "flows/test_crash_points.py",
    "flows/test_testset_flow.py",
    "flows/test_promotion_slot.py",
    "flows/test_crashed_runs.py",
    "flows/test_retrain_flow.py",
)


def _schedule_rank(item: pytest.Item, tests: Path) -> int:
    path = Path(str(item.path)).resolve()
    rel = path.relative_to(tests).as_posix() if path.is_relative_to(tests) else ""
    return LONGEST_FIRST.index(rel) if rel in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests = Path(__file__).resolve().parent
    for item in items:
        if _is_slow(item, tests):
            item.add_marker(pytest.mark.slow)
    # After pytest-randomly's shuffle (it reorders in a wrapper before this hook); a stable sort keeps it.
    items.sort(key=lambda item: _schedule_rank(item, tests))
