"""``nluflow models``: list, show, promote, activate and roll back the models of a store (local or S3).

``flows/cli.py`` mounts ``models_app``; the changes themselves are :mod:`nluflow.retrain.manage`
(Prefect-free); here each command opens the store (:func:`~flows.cli_common.open_store`), takes the
project's promotion slot (a Prefect global concurrency limit, the one a retrain's promotion holds) and
prints the result.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from flows.cli_common import (
    ProjectOpt,
    StoreBlockOpt,
    StoreOpt,
    console,
    earlier_runs,
    err_console,
    fmt,
    guard,
    home,
    open_store,
    print_notes,
)
from nluflow.errors import ConfigError

if TYPE_CHECKING:
    from nluflow.retrain.manage import PointerChange, ServeRemote
    from nluflow.store import Manifest, ModelStore
    from nluflow.store.audit_log import ChainLog

models_app = typer.Typer(help="List, inspect, promote and roll back stored models.", no_args_is_help=True)

BackendOpt = Annotated[
    str | None,
    typer.Option(
        "--backend",
        help="Backend block '<block-type-slug>/<name>' of a remote model [default: the one in its manifest].",
    ),
]
WaitOpt = Annotated[
    float,
    typer.Option(
        "--wait",
        min=0,
        help="Seconds to wait for the project's promotion slot while a retrain promotes; then refuse.",
    ),
]
ReasonOpt = Annotated[
    str | None,
    typer.Option(
        "--reason", help="Why (recorded in the audit log); required for a candidate the gates rejected."
    ),
]
DEFAULT_SLOT_WAIT_SECONDS = 120.0


@models_app.command("list")
def models_list(
    project: ProjectOpt = "default", store: StoreOpt = None, store_block: StoreBlockOpt = None
) -> None:
    """List the stored models of a project, newest first; the active one is marked."""

    def run() -> None:
        ms = open_store(store, store_block)
        pointer = ms.active(project)
        table = Table(title=f"Models of {project} in {ms.describe()}")
        table.add_column("")
        table.add_column("model", no_wrap=True, min_width=14)
        for col in ("created", "backend", "accuracy", "macro F1", "entity F1"):
            table.add_column(col, overflow="fold")
        models, problems = ms.scan_models(project)
        for m in models:
            table.add_row(
                "*" if pointer and pointer.model_id == m.model_id else "",
                m.model_id,
                m.created_at[:19],
                m.backend,
                fmt(m.metrics.get("intent_accuracy")),
                fmt(m.metrics.get("macro_f1")),
                fmt(m.metrics.get("entity_f1")),
            )
        console.print(table)
        for model_id, reason in problems:
            err_console.print(
                f"[bold yellow]refused:[/] {escape(model_id)}: {escape(reason)}", highlight=False
            )

    guard(run)


@models_app.command("show")
def models_show(
    model_id: Annotated[str | None, typer.Argument(help="Model id [default: the active model].")] = None,
    project: ProjectOpt = "default",
    store: StoreOpt = None,
    store_block: StoreBlockOpt = None,
) -> None:
    """Show a model's manifest (metrics, data hashes, config) after verifying its files."""
    from nluflow.errors import ModelNotFoundError

    def run() -> None:
        ms = open_store(store, store_block)
        target = model_id
        if target is None:
            pointer = ms.active(project)
            if pointer is None:
                raise ModelNotFoundError(f"project {project!r} has no active model in {ms.describe()}")
            target = pointer.model_id
        manifest = ms.verify(project, target)
        table = Table(title=f"{project}/{target} (files verified)", show_header=False)
        table.add_column("field")
        table.add_column("value")
        for name, value in manifest.metrics.items():
            table.add_row(name, fmt(value))
        for name in ("created_at", "backend", "dataset_sha256", "test_sha256", "run_id"):
            table.add_row(name, str(getattr(manifest, name)))
        table.add_row("files", ", ".join(sorted(manifest.files)))
        table.add_row("manifest sha256", manifest.sha256())
        console.print(table)

    guard(run)


@models_app.command("rollback")
def models_rollback(
    project: ProjectOpt = "default",
    store: StoreOpt = None,
    store_block: StoreBlockOpt = None,
    to: Annotated[str | None, typer.Option("--to", help="Model id [default: the previous active].")] = None,
    backend: BackendOpt = None,
    wait: WaitOpt = DEFAULT_SLOT_WAIT_SECONDS,
) -> None:
    """Point the project back at the previous active model (or at --to), after verifying it.

    A model trained on a remote platform is made the served one there too; if the platform refuses, the
    store's pointer is put back."""
    from nluflow.retrain import manage

    def run() -> PointerChange:
        ms = open_store(store, store_block)
        if to is not None:
            manage.refuse_rejected_without_reason(ms, project, to, "models rollback --to")
        with _pointer_change(project, wait):
            log = _prepared_log(ms, project)
            return manage.rollback(ms, log, project, to=to, serve_remote=_serve_remote(ms, project, backend))

    change = guard(run)
    console.print(f"active model of {project} is now [bold]{change.pointer.model_id}[/]")


@models_app.command("activate")
def models_activate(
    model_id: Annotated[str, typer.Argument(help="Stored model to make active.")],
    project: ProjectOpt = "default",
    store: StoreOpt = None,
    store_block: StoreBlockOpt = None,
    backend: BackendOpt = None,
    reason: ReasonOpt = None,
    wait: WaitOpt = DEFAULT_SLOT_WAIT_SECONDS,
) -> None:
    """Make a stored model the active one (verified first), e.g. after a bad rollback.

    A candidate the gates rejected needs --reason (it is then a forced promotion, as `models promote`).
    A model trained on a remote platform is made the served one there too; if the platform refuses, the
    store's pointer is put back."""
    from nluflow.retrain import manage

    def run() -> PointerChange:
        ms = open_store(store, store_block)
        if not " ".join((reason or "").split()):
            manage.refuse_rejected_without_reason(ms, project, model_id, "models activate")
        with _pointer_change(project, wait):
            log = _prepared_log(ms, project)
            serve = _serve_remote(ms, project, backend)
            return manage.activate(ms, log, project, model_id, reason or "", serve_remote=serve)

    change = guard(run)
    console.print(f"active model of {project} is now [bold]{change.pointer.model_id}[/]")


@models_app.command("promote")
def models_promote(
    model_id: Annotated[str, typer.Argument(help="Stored model to promote, e.g. a rejected candidate.")],
    reason: Annotated[
        str, typer.Option("--reason", help="Why the gates are overridden (recorded in the audit log).")
    ],
    project: ProjectOpt = "default",
    store: StoreOpt = None,
    store_block: StoreBlockOpt = None,
    backend: BackendOpt = None,
    wait: WaitOpt = DEFAULT_SLOT_WAIT_SECONDS,
) -> None:
    """Force a stored model to be the active one, overriding the gates; the reason goes on the audit log.

    Rejected candidates are kept in the store (the newest RetrainParams.keep_rejected per project) for this.
    A model trained on a remote platform is made the served one there too."""
    from nluflow.retrain import manage

    def run() -> PointerChange:
        if not " ".join(reason.split()):
            raise ConfigError(
                "--reason is empty; expected a sentence saying why the gates are overridden (it is recorded "
                "in the audit log); nothing was changed"
            )
        ms = open_store(store, store_block)
        with _pointer_change(project, wait):
            log = _prepared_log(ms, project)
            serve = _serve_remote(ms, project, backend)
            return manage.force_promote(ms, log, project, model_id, reason, serve_remote=serve)

    change = guard(run)
    console.print(
        f"active model of {project} is now [bold]{change.pointer.model_id}[/] "
        "(forced promote, gates overridden)"
    )


def _prepared_log(ms: ModelStore, project: str) -> ChainLog:
    """The project's audit log, with half-way promotions and crashed runs closed (and said) first."""
    from nluflow.retrain import manage

    log, notes = manage.prepare_change(ms, project, earlier_runs(ms, project))
    print_notes(notes)
    return log


def _serve_remote(ms: ModelStore, project: str, block: str | None) -> ServeRemote:
    """Make the platform of a remote model serve it: ``--backend``, or the block its manifest names."""

    def serve(manifest: Manifest) -> None:
        from nluflow.backends.base import ModelRef
        from tasks.common import BackendSpec

        chosen = block or manifest.backend_block
        if not chosen:
            raise ConfigError(
                f"model {manifest.model_id} was trained on the {manifest.backend!r} backend, but its "
                "manifest does not name the backend block (it was stored by an older nluflow); expected "
                "--backend '<block-type-slug>/<block-name>' to tell which platform should serve it"
            )
        ref = ModelRef.stored(manifest, ms.materialize(project, manifest.model_id))
        BackendSpec(name=chosen, workspace=str(home() / "work")).build().activate(ref)

    return serve


@contextmanager
def _pointer_change(project: str, wait: float) -> Iterator[None]:
    """Hold the project's promotion slot (the one a retrain's promotion holds) for a pointer change from the
    CLI, so a person's promote / activate / rollback never races a running retrain's promotion. It needs a
    Prefect API: the server ``make server`` runs (found by main()), PREFECT_API_URL, or an ephemeral one.
    Waits up to ``wait`` seconds, then refuses, saying who holds the slot."""
    from nluflow.store import check_id
    from tasks.slot import promotion_slot

    check_id(project, "project")
    who = f"nluflow models (cli, user {getpass.getuser()} on {socket.gethostname()}, pid {os.getpid()})"
    with promotion_slot(project, who, timeout_seconds=wait):
        yield
