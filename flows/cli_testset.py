"""``nluflow testset``: show a project's frozen test set, or reset it so the next run freezes a new one.

``flows/cli.py`` mounts ``testset_app`` as ``nluflow testset``. Exit codes as for every nluflow command:
0 done, 2 bad input (an unsafe project id, a missing store), 1 other failures (a damaged test set record).
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from flows.cli_env import error_text_and_exit_code
from nluflow.errors import NluflowError

testset_app = typer.Typer(
    help="Show or reset a project's frozen test set (the one both models are scored on).",
    no_args_is_help=True,
    add_completion=False,
)

console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

ProjectOpt = Annotated[str, typer.Option("--project", "-p", help="Project (bot) name.")]
StoreOpt = Annotated[
    Path | None, typer.Option("--store", help="Model store folder [default: $NLUFLOW_HOME/store].")
]


def _fail(exc: NluflowError) -> typer.Exit:
    """A known error becomes one clear paragraph and its exit code, never a traceback."""
    text, code = error_text_and_exit_code(exc)  # a full or read-only store: exit 1 and what to do
    err_console.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _store_path(store: Path | None) -> Path:
    return (store or Path(os.environ.get("NLUFLOW_HOME", ".nluflow")) / "store").resolve()


@testset_app.command("show")
def show(project: ProjectOpt = "default", store: StoreOpt = None) -> None:
    """Version, sha256, size, per-intent counts and history of the project's frozen test set."""
    from nluflow.store import ModelStore
    from nluflow.store.testsets import TestSetStore
    from nluflow.testset import intent_table

    try:
        testsets = TestSetStore(ModelStore.local(_store_path(store)).fs, project)
        current = testsets.current()  # reads the data too: its sha256 is checked
    except NluflowError as exc:
        raise _fail(exc) from None
    if current is None:
        console.print(
            f"no frozen test set for {project!r} in {testsets.where()}; the next run without --test splits "
            "one off its data and freezes it",
            highlight=False,
        )
        return
    record, data = current
    summary = Table(title=f"Frozen test set of {project} (sha256 verified)", show_header=False)
    summary.add_column("field")
    summary.add_column("value", overflow="fold")
    summary.add_row("version", str(record.version))
    summary.add_row("sha256", record.sha256)
    summary.add_row("utterances", str(len(data)))
    summary.add_row("intents", str(len(record.intent_counts or data.intent_counts())))
    summary.add_row("created", record.created_at)
    summary.add_row("first frozen from", record.source)
    summary.add_row("where", testsets.where())
    console.print(summary)
    per_intent = Table(title="Per intent")
    per_intent.add_column("intent")
    per_intent.add_column("utterances", justify="right")
    for intent, n in intent_table(data.intent_counts()):
        per_intent.add_row(intent, str(n))
    console.print(per_intent)
    history = Table(title="History (oldest first)")
    for col in ("version", "created", "utterances", "added", "sha256", "reason"):
        history.add_column(col, no_wrap=col == "sha256")
    for v in record.versions():
        history.add_row(
            str(v.version), v.created_at[:19], str(v.n_examples), f"+{v.added}", v.sha256[:16], v.reason
        )
    console.print(history)


@testset_app.command("reset")
def reset(
    project: ProjectOpt = "default",
    store: StoreOpt = None,
    reason: Annotated[str, typer.Option("--reason", help="Why, for the audit line.")] = "reset from CLI",
) -> None:
    """Remove the project's frozen test set so the next run without --test freezes a new one (audited).

    Earlier versions' data stays in the store under testset/versions/ for the audit trail."""
    from nluflow.audit import audit_record
    from nluflow.recovery import EarlierRun, recover_and_describe
    from nluflow.store import ModelStore, check_id
    from nluflow.store.audit_log import AuditLog
    from nluflow.store.testsets import TestSetStore

    root = _store_path(store)
    try:
        model_store = ModelStore.local(root)
        log = AuditLog(root / check_id(project, "project") / "audit.jsonl")
        # A promotion a killed run left half-way, and a run killed before its own line, are closed (and
        # said) before the reset is recorded.
        earlier: list[EarlierRun] = []
        if os.environ.get("PREFECT_API_URL"):  # a configured server only; the client import costs seconds
            from tasks.crashed_runs import earlier_runs_for_cli

            earlier, note = earlier_runs_for_cli(root, project)
            if note:
                err_console.print(f"[yellow]{escape(note)}[/]", highlight=False)
        for note in recover_and_describe(log, model_store, project, actor="cli", earlier_runs=earlier):
            err_console.print(f"[yellow]{escape(note)}[/]", highlight=False)
        testsets = TestSetStore(model_store.fs, project)
        pointer = model_store.active(project)
        removed = testsets.reset()
        if removed is None:
            console.print(f"no frozen test set for {project!r} in {testsets.where()}; nothing was changed")
            return
        line = log.append(
            audit_record(
                run_id=f"cli-{uuid.uuid4().hex[:12]}",
                flow_run_id=None,
                project=project,
                dataset_sha256=None,
                test_sha256=removed.sha256,
                backend="none",
                job_id=None,
                model_id=pointer.model_id if pointer else None,
                config={},
                duration_seconds=0.0,
                metrics={},
                decision="testset-reset",
                promoted=False,
                reasons=[
                    f"{reason}: test set version {removed.version} (sha256 {removed.sha256[:16]}…, "
                    f"{removed.n_examples} utterances) removed; the next run without --test freezes a new one"
                ],
                previous_model_id=pointer.model_id if pointer else None,
                manifest_sha256=None,
                test_set_version=removed.version,
                actor="cli",
            )
        )
    except NluflowError as exc:
        raise _fail(exc) from None
    console.print(
        f"removed version {removed.version} of {project}'s frozen test set ({removed.n_examples} utterances, "
        f"sha256 {removed.sha256[:16]}…); the next run without --test freezes a new one. "
        f"audit: line {line['seq']}",
        highlight=False,
    )
