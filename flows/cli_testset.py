"""``nluflow testset``: show a project's frozen test set, or reset it so the next run freezes a new one.

``flows/cli.py`` mounts ``testset_app`` as ``nluflow testset``. Exit codes as for every nluflow command:
0 done, 2 bad input (an unsafe project id, a missing store), 1 other failures (a damaged test set record).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from flows.cli_common import (
    ProjectOpt,
    StoreBlockOpt,
    StoreOpt,
    console,
    earlier_runs,
    guard,
    open_store,
    print_notes,
)

testset_app = typer.Typer(
    help="Show or reset a project's frozen test set (the one both models are scored on).",
    no_args_is_help=True,
    add_completion=False,
)


@testset_app.command("show")
def show(project: ProjectOpt = "default", store: StoreOpt = None, store_block: StoreBlockOpt = None) -> None:
    """Version, sha256, size, per-intent counts and history of the project's frozen test set."""
    from nluflow.store.testsets import TestSetStore
    from nluflow.testset import intent_table

    testsets = guard(lambda: TestSetStore(open_store(store, store_block).fs, project))
    current = guard(testsets.current)  # reads the data too: its sha256 is checked
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
    store_block: StoreBlockOpt = None,
    reason: Annotated[str, typer.Option("--reason", help="Why, for the audit line.")] = "reset from CLI",
) -> None:
    """Remove the project's frozen test set so the next run without --test freezes a new one (audited).

    Earlier versions' data stays in the store under testset/versions/ for the audit trail."""
    from nluflow.retrain.manage import prepare_change, reset_testset
    from nluflow.store.testsets import TestSetRecord, TestSetStore

    def run() -> tuple[TestSetRecord, dict[str, Any]] | str:
        model_store = open_store(store, store_block)
        # A promotion a killed run left half-way, and a run killed before its own line, are closed (and
        # said) before the reset is recorded; a log that could not record it refuses it.
        log, notes = prepare_change(model_store, project, earlier_runs(model_store, project))
        print_notes(notes)
        done = reset_testset(model_store, log, project, reason)
        return done if done is not None else TestSetStore(model_store.fs, project).where()

    done = guard(run)
    if isinstance(done, str):
        console.print(f"no frozen test set for {project!r} in {done}; nothing was changed")
        return
    removed, line = done
    console.print(
        f"removed version {removed.version} of {project}'s frozen test set ({removed.n_examples} utterances, "
        f"sha256 {removed.sha256[:16]}…); the next run without --test freezes a new one. "
        f"audit: line {line['seq']}",
        highlight=False,
    )
