"""``ensure_promotion_limit`` when another run creates the limit between Prefect's read and its create
(a 409): the limit exists, which is all the run needs. Seen once as a failed run in
the 4-process concurrency test."""

from __future__ import annotations

from typing import Any

import pytest
from prefect.exceptions import ObjectAlreadyExists

import tasks.slot as slot


class _LosesTheRace:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __enter__(self) -> _LosesTheRace:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def upsert_global_concurrency_limit_by_name(self, name: str, limit: int) -> None:
        self.calls.append(name)
        raise ObjectAlreadyExists(http_exc=RuntimeError("409 Conflict"))


class _Refuses(_LosesTheRace):
    def upsert_global_concurrency_limit_by_name(self, name: str, limit: int) -> None:
        raise RuntimeError("503 Service Unavailable")


def test_a_limit_created_by_another_run_meanwhile_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    client = _LosesTheRace()
    monkeypatch.setattr(slot, "get_client", lambda **_: client)
    name = slot.ensure_promotion_limit.fn("bot")
    assert name == slot.promotion_limit_name("bot") and client.calls == [name]


def test_other_server_errors_still_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    def build(**_: Any) -> _Refuses:
        return _Refuses()

    monkeypatch.setattr(slot, "get_client", build)
    with pytest.raises(RuntimeError, match="503"):
        slot.ensure_promotion_limit.fn("bot")
