"""Promotions that stopped half-way: find them on the audit log and say on the log how they ended.

A retrain promotes in this order (see :mod:`nluflow.audit`)::

    store candidate → activate on backend → promote-intent line → switch active pointer → promote line

A run killed or failed after its ``promote-intent`` line and before its ``promote`` line leaves an intent
without a completion line. :func:`recover_promotions` resolves each such intent from the active pointer, the
one place that says what happened: a pointer entry of the intent's run naming the intent's model means the
switch happened (a ``promote`` line with ``recovered: true``); otherwise it did not
(``promotion-abandoned``). Both name the intent by ``intent_seq``.

A run killed *before* its own line (while loading, training, scoring, or after it stored or activated its
candidate) leaves no line at all, and hooks cannot run in a killed process. The orchestrator still knows the
run: :func:`crashed_run_lines` decides, from plain records of the project's earlier runs (:class:`EarlierRun`,
gathered from Prefect by ``tasks/``), which of them are gone without a line, and writes one ``crashed`` line
for each (its ``flow_run_id`` is the killed run's, so it is that run's line and is never written twice), with
what the run left behind: candidates stored under its run id that are not active, and its abandoned intent.
A run is gone when it ended Crashed (the zombie automation sets that once heartbeats stop) or when it still
says RUNNING/PENDING but its last heartbeat is older than :func:`silence_allowed`. A run that never sent
a heartbeat cannot be told from a live one and gets no line. A run that ended Failed more than
:data:`FAILED_HOOK_GRACE_SECONDS` ago without a line (its failure hook could not write one, or it was killed
while the hook ran) gets a ``failed`` line with ``recovered: true`` the same way.

A live promotion holds an exclusive ``flock`` on ``audit.jsonl.promoting`` (next to the log) from its intent
line to its completion line (:func:`hold_promotion_lock` / :func:`release_promotion_lock`); recovery takes the
same lock without waiting and skips when it cannot, so a running promotion is never "recovered" by another
process. A killed process loses its lock with its file descriptors, so its intent is recoverable at once.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nluflow.audit import ABANDONED, CRASHED, INTENT, RUN_DECISIONS, redacted_line
from nluflow.errors import AuditError
from nluflow.store import ModelStore
from nluflow.store.audit_log import AuditLog, ChainLog
from nluflow.store.layout import PROMOTION_LOCK_SUFFIX

logger = logging.getLogger(__name__)

# automations/detect-zombie-flows.yaml's `within`: 3 missed heartbeats at 30 s. A RUNNING run silent for
# longer is gone even where the automation is not installed, if it beat every 30 s: the threshold is 3 of the
# run's own heartbeat intervals (the gap between its last two), and Prefect's default interval (180 s) when it
# sent only one, since a run started outside nluflow's CLI and work pool beats every 180 s.
ZOMBIE_AFTER_SECONDS = 90.0
MISSED_HEARTBEATS = 3
PREFECT_DEFAULT_HEARTBEAT_SECONDS = 180.0
# A Failed run writes its own `failed` line in its on_failure hook, just after the state is set: a younger
# Failed run without a line may be writing it now.
FAILED_HOOK_GRACE_SECONDS = 600.0
LOCK_WAIT_SECONDS = 120.0  # a recovery holds the lock for milliseconds; a promotion holds it for seconds
_LOCK_POLL_SECONDS = 0.1

# The lock files this process holds for its promotions in progress: path → (open descriptor, holder). Module
# state, because the lock spans several Prefect tasks of one flow run: the intent task takes it, the audit
# task (or the run's hooks) lets it go. Keyed by holder too: two flow runs in one process (threads) are two
# promotions, and flock alone cannot tell them apart.
_held: dict[str, tuple[int, str]] = {}
_held_guard = threading.Lock()


def promotion_lock_path(audit_path: str | Path) -> Path:
    path = Path(audit_path)
    return path.with_name(path.name + PROMOTION_LOCK_SUFFIX)


def _open_lock(audit_path: str | Path) -> int:
    lock = promotion_lock_path(audit_path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        return os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise AuditError(f"{lock}: cannot open the promotion lock: {exc}") from exc


def hold_promotion_lock(audit_path: str | Path, holder: str, wait_seconds: float = LOCK_WAIT_SECONDS) -> None:
    """Take the project's promotion lock for ``holder`` (e.g. ``"run <id>"``) until
    :func:`release_promotion_lock`; taking it again for the same holder is a no-op.

    Promotions are serialised before this (the project's concurrency slot), so a short wait means a recovery
    is writing its lines; a holder that keeps it past ``wait_seconds`` is a promotion that should not be
    running: AuditError naming it (the lock file says which process and run took it)."""
    key = str(Path(audit_path))
    lock = promotion_lock_path(audit_path)
    deadline = time.monotonic() + wait_seconds
    fd: int | None = None
    try:
        while True:
            with _held_guard:
                mine = _held.get(key)
                if mine is not None and mine[1] == holder:
                    break
                if mine is None:
                    fd = _open_lock(audit_path) if fd is None else fd
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        pass
                    else:
                        os.ftruncate(fd, 0)
                        os.pwrite(fd, f"pid {os.getpid()} {holder}".encode(), 0)
                        _held[key], fd = (fd, holder), None
                        break
            if time.monotonic() >= deadline:
                raise AuditError(
                    f"{lock} is held by another promotion ({_holder(lock, mine)}) after "
                    f"{wait_seconds:.0f} s; nothing was written. If that process is gone, its lock went with "
                    "it: retry"
                )
            time.sleep(_LOCK_POLL_SECONDS)
    except OSError as exc:
        raise AuditError(f"{lock}: cannot take the promotion lock: {exc}") from exc
    finally:
        if fd is not None:
            os.close(fd)


def _holder(lock: Path, mine: tuple[int, str] | None) -> str:
    if mine is not None:
        return f"pid {os.getpid()} {mine[1]}"
    try:
        return lock.read_text("utf-8", errors="replace")[:200] or "unknown holder"
    except OSError:
        return "unknown holder"


def release_promotion_lock(audit_path: str | Path, holder: str) -> bool:
    """Let go of the promotion lock ``holder`` holds for ``audit_path``; False when it held none."""
    key = str(Path(audit_path))
    with _held_guard:
        mine = _held.get(key)
        if mine is None or mine[1] != holder:
            return False
        del _held[key]
    try:
        fcntl.flock(mine[0], fcntl.LOCK_UN)
    finally:
        os.close(mine[0])
    return True


@contextmanager
def _try_lock(log: ChainLog) -> Iterator[bool]:
    """Hold the promotion lock for the block if it is free now (True), else yield False at once.

    A log on an object store (S3) has no lock file: there the project's promotion slot (Prefect) is what
    keeps a recovery from meeting a live promotion, so the lock is always free."""
    if not isinstance(log, AuditLog):
        yield True
        return
    fd = _open_lock(log.path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def pending_intents(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``promote-intent`` lines that no later line completes (by ``intent_seq``), oldest first."""
    done = {rec.get("intent_seq") for rec in records if rec.get("intent_seq") is not None}
    return [rec for rec in records if rec.get("decision") == INTENT and rec.get("seq") not in done]


def intent_record(
    *, project: str, model_id: str, previous_model_id: str | None, run_id: str
) -> dict[str, Any]:
    """The line written before a retrain switches the active pointer (``flow_run_id`` empty: it is not the
    run's own line, which is the ``promote`` line after the switch, or ``failed``)."""
    return {
        "timestamp": datetime.now(UTC).isoformat(timespec="microseconds"),
        "decision": INTENT,
        "project": project,
        "run_id": run_id,
        "flow_run_id": None,  # not the run's own line: that is the completion line (or ``failed``)
        "model_id": model_id,
        "previous_model_id": previous_model_id,
        "promoted": False,
        "reasons": [f"run {run_id} is about to make {model_id} the active model (was {previous_model_id})"],
    }


def _switched(store: ModelStore, project: str, intent: dict[str, Any]) -> tuple[bool, str | None, str | None]:
    """Did the intent's run move the pointer to its model? ``(switched, active model id, manifest sha)``."""
    pointer = store.active(project)
    if pointer is None:
        return False, None, None
    model_id, run_id = intent.get("model_id"), intent.get("run_id")
    entries = [pointer.entry(), *pointer.history]
    switched = any(e.model_id == model_id and e.run_id == run_id for e in entries)
    sha = next((e.manifest_sha256 for e in entries if e.model_id == model_id), None)
    return switched, pointer.model_id, sha


def resolve_intent(store: ModelStore, project: str, intent: dict[str, Any], actor: str) -> dict[str, Any]:
    """The completion line of one pending intent, decided from the active pointer."""
    switched, active, sha = _switched(store, project, intent)
    model_id, run_id, seq = intent.get("model_id"), intent.get("run_id"), intent.get("seq")
    base = {
        "timestamp": datetime.now(UTC).isoformat(timespec="microseconds"),
        "project": project,
        "run_id": run_id,
        "model_id": model_id,
        "previous_model_id": intent.get("previous_model_id"),
        "intent_seq": seq,
        "actor": actor,
    }
    if switched:
        return {
            **base,
            "flow_run_id": run_id,  # the run's own line: it did promote
            "decision": "promote",
            "promoted": True,
            "recovered": True,
            "manifest_sha256": sha,
            "reasons": [
                f"recovered by {actor}: run {run_id} switched the active pointer to {model_id} and stopped "
                f"before its audit line (intent line {seq}); the pointer names its model"
            ],
        }
    return {
        **base,
        "flow_run_id": None,
        "decision": ABANDONED,
        "promoted": False,
        "active_model_id": active,
        "reasons": [
            f"found by {actor}: run {run_id} stopped after its intent line {seq} and before it switched the "
            f"active pointer; the active model is still {active}. Its stored files, if any, stay (`nluflow "
            "models promote` can still activate them); a remote platform may serve it: `nluflow models "
            f"activate {active}` makes it serve the active model again"
            if active
            else f"found by {actor}: run {run_id} stopped after its intent line {seq} and before it switched "
            "the active pointer; the project has no active model"
        ],
    }


@dataclass(frozen=True)
class EarlierRun:
    """An earlier retrain flow run of the project as the orchestrator knows it (plain data: ``tasks/`` asks
    Prefect). ``state`` is the state type (``CRASHED``, ``RUNNING``, ``PENDING``, ...)."""

    flow_run_id: str
    state: str
    state_message: str | None = None
    state_at: datetime | None = None  # when it entered ``state``
    started_at: datetime | None = None
    last_heartbeat: datetime | None = None
    heartbeat_seconds: float | None = None  # the gap between its last two heartbeats (None: it sent one)


@dataclass(frozen=True)
class StoredModel:
    """A model in the store and the run that stored it (its manifest's ``run_id``)."""

    model_id: str
    run_id: str | None


def _stamp(when: datetime | None) -> str | None:
    return when.astimezone(UTC).isoformat(timespec="seconds") if when is not None else None


def silence_allowed(run: EarlierRun, zombie_after: float = ZOMBIE_AFTER_SECONDS) -> float:
    """How long ``run`` may go without a heartbeat and still be alive: ``MISSED_HEARTBEATS`` of its own
    intervals (Prefect's default interval when it sent only one), never less than ``zombie_after``."""
    every = run.heartbeat_seconds or PREFECT_DEFAULT_HEARTBEAT_SECONDS
    return max(zombie_after, MISSED_HEARTBEATS * every)


def why_gone(run: EarlierRun, now: datetime, zombie_after: float = ZOMBIE_AFTER_SECONDS) -> str | None:
    """Why ``run`` is gone without a word (None: it ended otherwise, or it may be alive).

    Crashed: the zombie automation (or Prefect itself) said so. RUNNING/PENDING: only a run that sent
    heartbeats and then stopped for longer than :func:`silence_allowed`; one that never sent any may be
    alive. Failed: only :data:`FAILED_HOOK_GRACE_SECONDS` after it failed (its hook writes its line)."""
    state = run.state.upper()
    at = f" at {_stamp(run.state_at)}" if run.state_at else ""
    message = redacted_line(run.state_message or "") or "no message"
    if state == "CRASHED":
        return f"it ended Crashed{at} ({message})"
    hook_done = run.state_at is not None and (now - run.state_at).total_seconds() > FAILED_HOOK_GRACE_SECONDS
    if state == "FAILED" and hook_done:
        return f"it ended Failed{at} ({message}) and its failure hook wrote no line"
    if state in ("RUNNING", "PENDING") and run.last_heartbeat is not None:
        silent = (now - run.last_heartbeat).total_seconds()
        allowed = silence_allowed(run, zombie_after)
        if silent > allowed:
            return (
                f"it still says {state} but sent no heartbeat since {_stamp(run.last_heartbeat)} "
                f"({silent:.0f} s, over the {allowed:.0f} s zombie threshold)"
            )
    return None


def gone_without_line(
    records: Sequence[dict[str, Any]],
    runs: Sequence[EarlierRun],
    now: datetime,
    zombie_after: float = ZOMBIE_AFTER_SECONDS,
) -> list[tuple[EarlierRun, str]]:
    """The runs that are gone (:func:`why_gone`) and have no line of their own on the log (by
    ``flow_run_id``), oldest first, each with why it is gone."""
    have = {rec.get("flow_run_id") for rec in records if rec.get("decision") in RUN_DECISIONS}
    seen: set[str] = set()
    out: list[tuple[EarlierRun, str]] = []
    oldest_first = sorted(runs, key=lambda r: (r.started_at or r.state_at or now, r.flow_run_id))
    for run in oldest_first:
        if run.flow_run_id in have or run.flow_run_id in seen:
            continue
        why = why_gone(run, now, zombie_after)
        if why is not None:
            seen.add(run.flow_run_id)
            out.append((run, why))
    return out


def crashed_record(
    *,
    project: str,
    run: EarlierRun,
    why: str,
    records: Sequence[dict[str, Any]],
    models: Sequence[StoredModel],
    active_model_id: str | None,
    actor: str,
) -> dict[str, Any]:
    """The ``crashed`` line of a run that was killed before it could write its own line: its run id, state
    and when, and what it left behind (stored candidates by their manifest's run id, an abandoned intent)."""
    run_id = run.flow_run_id
    left = [m.model_id for m in models if m.run_id == run_id]
    abandoned = [
        rec.get("seq") for rec in records if rec.get("decision") == ABANDONED and rec.get("run_id") == run_id
    ]
    failed = run.state.upper() == "FAILED"
    lead = (
        "failed and never wrote its own line" if failed else "was killed before it could write its own line"
    )
    parts = [f"run {run_id} {lead}: {why}; found by {actor}"]
    for model_id in left:
        if model_id == active_model_id:
            parts.append(f"its candidate {model_id} is stored and is the active model")
        else:
            parts.append(
                f"it left candidate {model_id} stored, not active (`nluflow models promote {model_id} "
                "--reason TEXT` can still activate it)"
            )
    if abandoned:
        parts.append(f"its promotion was closed as abandoned by line {', '.join(map(str, abandoned))}")
    if not left and not abandoned:
        parts.append("it left nothing in the store")
    return {
        "timestamp": datetime.now(UTC).isoformat(timespec="microseconds"),
        "decision": "failed" if failed else CRASHED,
        "project": project,
        "run_id": run_id,
        "flow_run_id": run_id,  # the killed run's own line: written once
        "model_id": left[0] if left else None,
        "previous_model_id": None,
        "promoted": False,
        "state": run.state.upper(),
        "state_at": _stamp(run.state_at),
        "started_at": _stamp(run.started_at),
        "last_heartbeat": _stamp(run.last_heartbeat),
        "left_behind": left,
        "active_model_id": active_model_id,
        "actor": actor,
        "recovered": True,  # written for the run by another process
        "reasons": ["; ".join(parts)],
        **({"error": redacted_line(run.state_message or "") or "failed"} if failed else {}),
    }


def crashed_run_lines(
    *,
    project: str,
    records: Sequence[dict[str, Any]],
    runs: Sequence[EarlierRun],
    models: Sequence[StoredModel],
    active_model_id: str | None,
    now: datetime,
    actor: str,
    zombie_after: float = ZOMBIE_AFTER_SECONDS,
) -> list[dict[str, Any]]:
    """One ``crashed`` record per run that is gone without a line of its own (pure: records in, records
    out)."""
    return [
        crashed_record(
            project=project,
            run=run,
            why=why,
            records=records,
            models=models,
            active_model_id=active_model_id,
            actor=actor,
        )
        for run, why in gone_without_line(records, runs, now, zombie_after)
    ]


def _write_crashed_lines(
    log: ChainLog,
    store: ModelStore,
    project: str,
    runs: Sequence[EarlierRun],
    actor: str,
    now: datetime,
) -> list[dict[str, Any]]:
    records = log.records()
    if not gone_without_line(records, runs, now):
        return []  # the common case: no store scan
    pointer = store.active(project)
    manifests, _ = store.scan_models(project)
    written = []
    for record in crashed_run_lines(
        project=project,
        records=records,
        runs=runs,
        models=[StoredModel(m.model_id, m.run_id) for m in manifests],
        active_model_id=pointer.model_id if pointer else None,
        now=now,
        actor=actor,
    ):
        line = log.append(record)
        logger.info("%s: %s", log.path, line["reasons"][0])
        written.append(line)
    return written


def recover_promotions(
    log: ChainLog,
    store: ModelStore,
    project: str,
    actor: str,
    earlier_runs: Sequence[EarlierRun] = (),
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """Repair a torn tail, close every promotion that stopped half-way, then write a ``crashed`` line for
    each of ``earlier_runs`` that is gone without a line of its own; return the lines written.

    Skips (returns ``[]``) while another process holds the promotion lock: its promotion is live (and two
    recoveries never write the same line twice). Raises AuditError when the chain is broken (with the
    command that seals it)."""
    log.repair()
    with _try_lock(log) as free:
        if not free:
            logger.info("%s: a promotion is in progress (lock held); nothing to recover now", log.path)
            return []
        written = []
        for intent in pending_intents(log.records()):
            line = log.append(resolve_intent(store, project, intent, actor))
            logger.info("%s: %s", log.path, line["reasons"][0])
            written.append(line)
        if earlier_runs:
            written += _write_crashed_lines(
                log, store, project, earlier_runs, actor, now or datetime.now(UTC)
            )
        return written


def recover_and_describe(
    log: ChainLog,
    store: ModelStore,
    project: str,
    actor: str,
    earlier_runs: Sequence[EarlierRun] = (),
) -> list[str]:
    """:func:`recover_promotions` for a person: one sentence per repair and per line written (a missing log
    has nothing to recover)."""
    if not log.exists():
        return []
    lines = recover_promotions(log, store, project, actor=actor, earlier_runs=earlier_runs)
    notes = [f"audit log repaired: {repair}" for repair in log.repairs]
    notes += [f"audit line {line['seq']} ({line['decision']}): {line['reasons'][0]}" for line in lines]
    return notes


def is_run_line(record: dict[str, Any], run_id: str) -> bool:
    """True for the line that records run ``run_id``'s outcome (not its intent or an abandoned intent)."""
    return record.get("flow_run_id") == run_id and record.get("decision") in RUN_DECISIONS
