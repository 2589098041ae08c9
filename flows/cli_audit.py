"""``nluflow audit``: check the hash chains of a store's audit logs (local or S3), and seal a broken one.

``flows/cli.py`` mounts ``audit_app``.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from flows.cli_common import StoreBlockOpt, StoreOpt, console, err_console, guard, open_store

if TYPE_CHECKING:
    from nluflow.store.audit_log import ChainLog

audit_app = typer.Typer(help="Check the tamper-evident audit log.", no_args_is_help=True)


@audit_app.command("verify")
def audit_verify(
    project: Annotated[
        str | None, typer.Option("--project", "-p", help="Project [default: every project in the store].")
    ] = None,
    store: StoreOpt = None,
    store_block: StoreBlockOpt = None,
) -> None:
    """Check the audit logs' hash chains (one project, or every project in the store) and list their lines:
    seq, time, decision, model. A broken chain names its first bad line and exits 1.

    Decisions: promote, reject, blocked, unchanged, failed (a retrain's own line); crashed (a retrain killed
    before its own line, written by the next run or a pointer change); promote-intent, promotion-abandoned;
    rollback, activate, forced-promote, testset-reset (the CLI); repaired, sealed (the log itself)."""
    from nluflow.retrain.manage import audit_logs

    broken = 0
    for log in guard(lambda: audit_logs(open_store(store, store_block), project)):
        if not guard(partial(_show, log)):
            broken += 1
    if broken:
        raise typer.Exit(1)


def _show(log: ChainLog) -> bool:
    """Print one log's check and its lines; False when its chain is broken."""
    from nluflow.audit import history_rows

    result = log.verify()
    if not result.ok:
        err_console.print(
            f"[bold red]broken:[/] {log.project}: {escape(str(result.reason))}", highlight=False
        )
        return False
    for sealed in result.sealed:
        console.print(f"[yellow]{log.project}: {escape(sealed)}[/]; the chain is intact after it")
    title = f"{log.project}: intact, {result.lines} lines in {log.path}"
    table = Table(title=title, title_justify="left")
    for col in ("seq", "time (UTC)", "decision", "model", "note"):
        table.add_column(col, overflow="fold", no_wrap=col in ("time (UTC)", "model"))
    for row in history_rows(log.records()):
        note = row["note"] if len(row["note"]) <= 90 else row["note"][:89] + "…"
        table.add_row(str(row["seq"]), row["time"], row["decision"], row["model"] or "—", escape(note))
    console.print(table)
    console.print(f"[green]intact:[/] {result.lines} lines in {log.path}")
    return True


@audit_app.command("seal")
def audit_seal(
    project: Annotated[str, typer.Option("--project", "-p", help="Project whose audit log is broken.")],
    reason: Annotated[
        str, typer.Option("--reason", help="Who found the break and why it is sealed (recorded in the log).")
    ],
    store: StoreOpt = None,
    store_block: StoreBlockOpt = None,
) -> None:
    """Seal a broken audit chain so retrains can append again: a `sealed` line chained to the last good
    line records where the chain broke and why you sealed it; `audit verify` then reports "sealed at line N"
    and checks the chain after it. Keep a copy of the broken log first. A torn last line is moved aside
    instead (a `repaired` line names the file)."""
    from nluflow.retrain.manage import audit_logs

    def run() -> dict[str, Any]:
        (log,) = audit_logs(open_store(store, store_block), project)
        return log.seal(reason)

    line = guard(run)
    if line.get("decision") == "sealed":
        console.print(
            f"sealed {project}'s audit log at line {line['seq']}: lines {line['sealed_from_line']}-"
            f"{line['seq'] - 1} were broken ({escape(str(line['break']))}); the chain continues after it",
            highlight=False,
        )
    else:
        console.print(f"repaired {project}'s audit log: {escape(line['reasons'][0])}", highlight=False)
