"""What every ``nluflow`` command shares: the consoles, the common options, the error guard, and
:func:`open_store`, the one way a command opens a store (a local folder, or a store block such as S3).

Exit codes: 0 the command did its job, 2 bad input, 1 other failures, including the environment's (a full
disk, a read-only or unwritable store), whatever error carried them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from flows.cli_env import environment_problem, error_text_and_exit_code
from nluflow.errors import ConfigError, NluflowError

if TYPE_CHECKING:
    from nluflow.recovery import EarlierRun
    from nluflow.store import ModelStore

# Piped output keeps full lines (ids, paths) instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
T = TypeVar("T")

ProjectOpt = Annotated[str, typer.Option("--project", "-p", help="Project (bot) name.")]
StoreOpt = Annotated[
    Path | None, typer.Option("--store", help="Model store folder [default: $NLUFLOW_HOME/store].")
]
StoreBlockOpt = Annotated[
    str | None,
    typer.Option(
        "--store-block", help="Store block '<block-type-slug>/<name>' (e.g. S3), instead of --store."
    ),
]


def home() -> Path:
    return Path(os.environ.get("NLUFLOW_HOME", ".nluflow")).resolve()


def store_path(store: Path | None) -> Path:
    return (store or home() / "store").resolve()


def open_store(store: Path | None, store_block: str | None, create: bool = False) -> ModelStore:
    """The store a command works on: ``--store`` (a local folder, default ``$NLUFLOW_HOME/store``) or
    ``--store-block`` (a store block, local or S3; loaded from Prefect). ConfigError when both are given."""
    if store is not None and store_block is not None:
        raise ConfigError(
            f"both --store {store} and --store-block {store_block} were given; expected one of them. Nothing "
            "was read or written"
        )
    if store_block is not None:
        from tasks.common import StoreSpec

        return StoreSpec(block=store_block).build(create=create)
    from nluflow.store import ModelStore

    return ModelStore.local(store_path(store), create=create)


def earlier_runs(model_store: ModelStore, project: str) -> list[EarlierRun]:
    """Runs of the project that a configured Prefect server knows were killed before their own audit line
    (local store folders; the import of the Prefect client costs seconds, so only with PREFECT_API_URL)."""
    from nluflow.store import LocalFileSystem

    if not os.environ.get("PREFECT_API_URL") or not isinstance(model_store.fs, LocalFileSystem):
        return []
    from tasks.crashed_runs import earlier_runs_for_cli

    runs, note = earlier_runs_for_cli(model_store.fs.root, project)
    if note:
        err_console.print(f"[yellow]{escape(note)}[/]", highlight=False)
    return runs


def print_notes(notes: list[str]) -> None:
    for note in notes:
        err_console.print(f"[yellow]{escape(note)}[/]", highlight=False)


def guard(fn: Callable[[], T]) -> T:
    """Run ``fn``; a known error becomes one clear paragraph and its exit code, never a traceback.

    A full disk or a read-only / unwritable store is the environment's failure, not bad input: exit 1 with
    what to do, whichever error carried it (a StoreError, an AuditError or a bare OSError)."""
    try:
        return fn()
    except (NluflowError, OSError) as exc:
        if environment_problem(exc) is None and not isinstance(exc, NluflowError):
            raise
        text, code = error_text_and_exit_code(exc)
        err_console.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)
        raise typer.Exit(code) from None


def fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.4f}" if signed else f"{value:.4f}"
