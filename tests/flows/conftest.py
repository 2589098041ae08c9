"""Every flow test runs against the session's one Prefect test harness (`prefect_api`, tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def prefect_harness(prefect_api: str) -> str:
    return prefect_api
