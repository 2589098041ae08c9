"""Fixtures of the contract suite (helpers live in ``contract_kit``)."""

from __future__ import annotations

import os
from typing import Any

import pytest

# Client log records outside a flow run are fine here; Prefect's API log handler need not warn about them.
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")


@pytest.fixture(scope="session")
def model_kw() -> dict[str, Any]:
    """Trainer/loader overrides for the emulators; empty: they train the real local model
    (``nluflow.models.nlu.NLUModel``), so every prediction in this suite is a real one."""
    return {}
