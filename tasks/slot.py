"""The promotion slot: one promotion per project at a time.

A Prefect global concurrency limit (``nluflow-promote-<project>``, one holder) taken with a short lease that
is renewed while its holder lives, so a killed run frees it about a lease later. The holder records itself in
a Prefect variable (who, where, until when), so a run that waits can say who holds the slot, and free the
slot of a holder whose lease ran out (:func:`promotion_slot`)."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.concurrency.context import ConcurrencyContext
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import MissingContextError, ObjectAlreadyExists
from prefect.logging import get_run_logger
from prefect.variables import Variable

from nluflow.errors import ConfigError, PromotionError

# The promotion slot's lease: renewed every 3/4 of it while the holder lives (Prefect's renewal thread), so a
# killed holder frees the slot about one lease later. The Prefect server refuses leases under 60 s
# (``/v2/concurrency_limits/increment-with-lease``: ``lease_duration`` ge=60), and its repossessor service
# frees expired leases every ``PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS`` (15 s).
LEASE_ENV = "NLUFLOW_PROMOTION_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 60.0
MIN_LEASE_SECONDS = 60.0
MAX_LEASE_SECONDS = 3600.0
# How often a run waiting for the slot says who holds it.
WAIT_LOG_SECONDS = 10.0
# A holder whose lease ran out this long ago is taken for dead: a waiter frees its slot itself (servers that
# run no repossessor, e.g. the ephemeral one, would otherwise keep it forever). Its renewals come every
# 3/4 lease, so a live holder's record is never this stale.
STALE_GRACE_SECONDS = 15.0


def promotion_limit_name(project: str) -> str:
    return f"nluflow-promote-{project}"


def promotion_lease_seconds() -> float:
    """The promotion slot's lease from ``$NLUFLOW_PROMOTION_LEASE_SECONDS`` (default 60)."""
    raw = os.environ.get(LEASE_ENV, "").strip()
    if not raw:
        return DEFAULT_LEASE_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not MIN_LEASE_SECONDS <= value <= MAX_LEASE_SECONDS:
        raise ConfigError(
            f"{LEASE_ENV}={raw!r} is not a lease: expected seconds from {MIN_LEASE_SECONDS:.0f} (the "
            f"shortest lease the Prefect server grants) to {MAX_LEASE_SECONDS:.0f}; nothing was promoted. "
            f"Unset it for the default of {DEFAULT_LEASE_SECONDS:.0f} s"
        )
    return value


def _holder_variable(project: str) -> str:
    # Variable names are lowercase; a project id may not be, so it is hashed (the value names the project).
    return f"nluflow_promotion_slot_{hashlib.sha256(project.encode()).hexdigest()[:20]}"


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class SlotHolder:
    """Who holds a project's promotion slot, as the holder records it (a Prefect variable) and renews it."""

    project: str
    flow_run_id: str
    host: str
    pid: int
    since: str
    lease_seconds: float
    lease_until: str
    lease_id: str | None

    @classmethod
    def from_value(cls, value: Any) -> SlotHolder | None:
        if not isinstance(value, dict):
            return None
        try:
            return cls(
                project=str(value["project"]),
                flow_run_id=str(value["flow_run_id"]),
                host=str(value["host"]),
                pid=int(value["pid"]),
                since=str(value["since"]),
                lease_seconds=float(value["lease_seconds"]),
                lease_until=str(value["lease_until"]),
                lease_id=str(value["lease_id"]) if value.get("lease_id") else None,
            )
        except (KeyError, TypeError, ValueError):
            return None

    def who(self) -> str:
        """``flow run <id>`` for a retrain; a CLI command records itself by name (``nluflow models ...``)."""
        try:
            UUID(self.flow_run_id)
        except ValueError:
            return self.flow_run_id
        return f"flow run {self.flow_run_id}"

    def until(self) -> datetime:
        return datetime.fromisoformat(self.lease_until)

    def describe(self, now: datetime) -> str:
        left = (self.until() - now).total_seconds()
        state = (
            f"its lease runs until {self.lease_until} ({left:.0f} s left; renewed every "
            f"{self.lease_seconds * 0.75:.0f} s while it lives)"
            if left >= 0
            else f"its lease ran out at {self.lease_until} ({-left:.0f} s ago): it looks dead"
        )
        return f"held by {self.who()} (host {self.host}, pid {self.pid}) since {self.since}; {state}"


def read_slot_holder(project: str) -> SlotHolder | None:
    """The recorded holder of the project's promotion slot, or None when nobody recorded one."""
    try:
        return SlotHolder.from_value(Variable.get(_holder_variable(project)))
    except Exception:  # the record is for messages only; it never stops a promotion
        return None


def _record_holder(
    project: str, run_id: str, lease_seconds: float, lease_id: UUID | None, since: str
) -> None:
    until = (_now() + timedelta(seconds=lease_seconds)).isoformat()
    value = {
        "project": project,
        "flow_run_id": run_id,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": since,
        "lease_seconds": lease_seconds,
        "lease_until": until,
        "lease_id": str(lease_id) if lease_id else None,
    }
    Variable.set(_holder_variable(project), value, overwrite=True)


def _keep_holder_record(
    project: str, run_id: str, lease_seconds: float, lease_id: UUID | None, since: str, stop: threading.Event
) -> None:
    # Same cadence as Prefect's lease renewal: the record's "until" follows the lease.
    while not stop.wait(lease_seconds * 0.75):
        with suppress(Exception):
            _record_holder(project, run_id, lease_seconds, lease_id, since)


def _free_dead_holder(project: str, limit: str, holder: SlotHolder, released: set[str]) -> str | None:
    """Free the slot of a holder whose lease ran out ``STALE_GRACE_SECONDS`` ago (it was killed, and the
    server runs no repossessor, or lost the lease); returns how, or None when the holder may be alive.

    First by its lease id (releasing a lease the server already revoked changes nothing). If a look later the
    same dead holder's record is still there and the slot is still taken, the server no longer knows the lease
    (an ephemeral server keeps leases in memory and restarted with the next run): the slot is released by
    the limit's name. A new holder records itself the moment it takes the slot, so an unchanged stale
    record means nobody else holds it."""
    if holder.lease_id is None:
        return None
    if (_now() - holder.until()).total_seconds() < STALE_GRACE_SECONDS:
        return None
    with get_client(sync_client=True) as client:
        if holder.lease_id not in released:
            released.add(holder.lease_id)
            client.release_concurrency_slots_with_lease(lease_id=UUID(holder.lease_id))
            return "released its lease"
        held = (_now() - datetime.fromisoformat(holder.since)).total_seconds()
        client.release_concurrency_slots(names=[limit], slots=1, occupancy_seconds=max(held, 1.0))
    with suppress(Exception):
        Variable.unset(_holder_variable(project))
    return "released its slot by name (the server no longer knew its lease: it restarted)"


def _watch_while_waiting(project: str, limit: str, logger: Any, done: threading.Event) -> None:
    """While a run waits for the slot: every ``WAIT_LOG_SECONDS`` say who holds it and until when, and free
    the slot of a holder that is dead. Errors are logged, never raised: this only informs and unsticks."""
    started = time.monotonic()
    released: set[str] = set()  # lease ids of dead holders this run released
    while not done.wait(WAIT_LOG_SECONDS):
        try:
            current = read_slot_holder(project)
            freed = _free_dead_holder(project, limit, current, released) if current else None
            if current is not None and freed is not None:
                logger.warning(
                    "promotion slot of %s: flow run %s looks dead (its lease ran out at %s): %s",
                    project,
                    current.flow_run_id,
                    current.lease_until,
                    freed,
                )
                continue
            who = current.describe(_now()) if current else "holder unknown (it recorded no holder)"
            logger.info(
                "waiting for the promotion slot of %s (%.0f s so far): %s",
                project,
                time.monotonic() - started,
                who,
            )
        except Exception as exc:
            logger.warning("could not read who holds the promotion slot of %s: %s", project, exc)


def _lease_ids() -> set[UUID]:
    ctx = ConcurrencyContext.get()
    return set(ctx.cleanup_lease_ids) if ctx is not None else set()


def _logger() -> Any:
    """The run's logger in a flow or task run; outside one (a CLI command) the module's logger."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("nluflow.promotion")


def _start_watcher(project: str, limit: str, logger: Any, done: threading.Event) -> threading.Thread:
    """While this run waits for the slot, a daemon thread says who holds it (and frees a dead holder's)."""
    watcher = threading.Thread(
        target=contextvars.copy_context().run,  # the run's Prefect settings and logger context
        args=(_watch_while_waiting, project, limit, logger, done),
        name=f"nluflow-slot-watch-{project}",
        daemon=True,
    )
    watcher.start()
    return watcher


def _take_slot(
    stack: ExitStack, project: str, limit: str, lease: float, timeout_seconds: float | None, run_id: str
) -> None:
    """Enter the concurrency limit on ``stack`` (held until the stack closes); PromotionError naming the
    holder when ``timeout_seconds`` ran out first."""
    try:
        holder: ConcurrencyLeaseHolder | None = ConcurrencyLeaseHolder(type="flow_run", id=UUID(run_id))
    except ValueError:
        holder = None  # not a flow run (a bare call in a test)
    try:
        stack.enter_context(
            concurrency(
                limit,
                occupy=1,
                timeout_seconds=timeout_seconds,
                strict=True,
                lease_duration=lease,
                holder=holder,
            )
        )
    except TimeoutError:
        now = read_slot_holder(project)
        who = now.describe(_now()) if now else "held, holder unknown (it recorded no holder)"
        raise PromotionError(
            f"the promotion slot of {project!r} is {who}; waited {timeout_seconds or 0:.0f} s for it and "
            "changed nothing. A promotion holds it for seconds to minutes: run the command again when "
            "it is done"
        ) from None


def _start_keeper(
    project: str, run_id: str, lease: float, lease_id: UUID | None, logger: Any
) -> threading.Event:
    """Record this run as the holder and keep the record's lease end current; set the event to stop."""
    since = _now().isoformat()
    try:
        _record_holder(project, run_id, lease, lease_id, since)
    except Exception as exc:  # messages only: the slot is held either way
        logger.warning("could not record the promotion slot's holder: %s", exc)
    stop = threading.Event()
    keeper = threading.Thread(
        target=contextvars.copy_context().run,
        args=(_keep_holder_record, project, run_id, lease, lease_id, since, stop),
        name=f"nluflow-slot-record-{project}",
        daemon=True,
    )
    keeper.start()
    return stop


@contextmanager
def promotion_slot(
    project: str,
    run_id: str,
    *,
    lease_seconds: float | None = None,
    timeout_seconds: float | None = None,
) -> Iterator[None]:
    """Hold the project's promotion slot (one promotion per project at a time) for the ``with`` body.

    The slot is a Prefect global concurrency limit taken with a lease of ``lease_seconds`` (default
    ``$NLUFLOW_PROMOTION_LEASE_SECONDS``, 60) that Prefect renews while this process lives, so a killed run
    frees it about a lease later instead of after Prefect's default 300 s. The holder is the flow run
    (``run_id``), or a CLI command that names itself there. While it waits, it logs who holds the slot and
    until when, every ``WAIT_LOG_SECONDS``. With ``timeout_seconds`` it waits at most that long, then raises
    :class:`PromotionError` saying who holds the slot (nothing was done)."""
    logger = _logger()
    lease = lease_seconds if lease_seconds is not None else promotion_lease_seconds()
    in_run = FlowRunContext.get() is not None or TaskRunContext.get() is not None
    limit = ensure_promotion_limit(project) if in_run else ensure_promotion_limit.fn(project)
    current = read_slot_holder(project)
    if current is not None:
        logger.info("promotion slot of %s is %s; waiting for it", project, current.describe(_now()))
    with ExitStack() as stack:
        if ConcurrencyContext.get() is None:  # outside a run (a CLI command): record the lease id too, so a
            stack.enter_context(ConcurrencyContext())  # waiter can free the slot of a killed holder
        before = _lease_ids()
        waiting = threading.Event()
        watcher = _start_watcher(project, limit, logger, waiting)
        try:
            _take_slot(stack, project, limit, lease, timeout_seconds, run_id)
        finally:
            waiting.set()
            watcher.join()
        new = sorted(_lease_ids() - before, key=str)
        stop = _start_keeper(project, run_id, lease, new[0] if len(new) == 1 else None, logger)
        logger.info(
            "holding the promotion slot of %s (lease %.0f s, renewed while this run lives)", project, lease
        )
        try:
            yield
        finally:
            stop.set()
            with suppress(Exception):
                Variable.unset(_holder_variable(project))


@task(name="ensure-promotion-limit", cache_policy=NO_CACHE)
def ensure_promotion_limit(project: str) -> str:
    """Create the per-project concurrency limit (one promotion at a time) if it does not exist yet.

    Prefect's upsert reads, then creates: two first runs of a project that reach promotion together both
    find no limit, and the second create answers 409. That run lost a race it has no stake in: the limit
    exists, which is all it needs (seen as a failed run in the 4-process concurrency test on a loaded box)."""
    name = promotion_limit_name(project)
    # A 409: another run made it between the read and the create.
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.upsert_global_concurrency_limit_by_name(name, limit=1)
    return name
