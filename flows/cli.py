"""The ``nluflow`` command line: validate data, run retrains, manage models, verify the audit log.

Exit codes: 0 the command did its job (a retrain that the gates rejected included), 2 bad input,
1 other failures, including the environment's (a full disk, a read-only or unwritable store), whatever error
carried them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from flows.cli_automations import automations_app
from flows.cli_blocks import blocks_app
from flows.cli_env import environment_problem, error_text_and_exit_code
from flows.cli_testset import testset_app
from nluflow.errors import ConfigError, NluflowError

app = typer.Typer(help="Safe, audited retrains of NLU models.", no_args_is_help=True, add_completion=False)
models_app = typer.Typer(help="List, inspect and roll back stored models.", no_args_is_help=True)
audit_app = typer.Typer(help="Check the tamper-evident audit log.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(audit_app, name="audit")
app.add_typer(blocks_app, name="blocks")
app.add_typer(testset_app, name="testset")
app.add_typer(automations_app, name="automations")

# Runs started here send a heartbeat every 30 s (Prefect's shortest; its default is 180), so the zombie
# automation (`nluflow automations apply`) marks a killed run Crashed after 90 s instead of leaving it
# RUNNING. Set before prefect is imported, which reads its settings then; an explicit setting wins.
HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
os.environ.setdefault(HEARTBEAT_ENV, "30")

# Piped output keeps full lines (ids, paths) instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
T = TypeVar("T")

ProjectOpt = Annotated[str, typer.Option("--project", "-p", help="Project (bot) name.")]
StoreOpt = Annotated[
    Path | None, typer.Option("--store", help="Model store folder [default: $NLUFLOW_HOME/store].")
]
StoreBlockOpt = Annotated[
    str | None, typer.Option("--store-block", help="Store block '<block-type-slug>/<name>' (e.g. S3).")
]
NotifyOpt = Annotated[
    list[str] | None, typer.Option("--notify", help="WebhookNotification block name (repeatable).")
]
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
DEFAULT_SLOT_WAIT_SECONDS = 120.0


def _home() -> Path:
    return Path(os.environ.get("NLUFLOW_HOME", ".nluflow")).resolve()


def _store_path(store: Path | None) -> Path:
    return (store or _home() / "store").resolve()


class _HideKnownErrors(logging.Filter):
    """Keeps records that carry a known nluflow error (a user mistake, a refused model) off the terminal:
    the CLI prints that error as one paragraph, and Prefect's API log handler, which sees the record before
    the terminal does, keeps the full traceback in the run's logs in the UI."""

    # Prefect's "Finished in state Failed('... encountered an exception DataError: ...')" lines repeat the
    # paragraph without the exception object; they are matched by the error's class name.
    _STATE_LINE = re.compile(r"encountered an exception:? (\w+):")

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, NluflowError):
            return False
        found = self._STATE_LINE.search(record.getMessage()) if record.exc_info is None else None
        return found is None or found.group(1) not in _known_error_names()


def _known_error_names() -> set[str]:
    names: set[str] = set()
    todo: list[type[BaseException]] = [NluflowError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return names


_TERMINAL_FILTER = _HideKnownErrors()
_quiet_terminal = False  # set by main(): only the console script changes the terminal's logging


def _flow_logging() -> None:
    """Before a flow runs from the console script: install the filter on Prefect's console handler (on the
    root logger; Prefect's logging is configured when prefect is first imported, which has happened here)."""
    if not _quiet_terminal:
        return
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and _TERMINAL_FILTER not in handler.filters:
            handler.addFilter(_TERMINAL_FILTER)


LOCAL_SERVER_PORT = 4200  # `make server`'s port; $PREFECT_PORT overrides it, as in the Makefile
_HEALTH_TIMEOUT_SECONDS = 2.0


def _use_running_server() -> str | None:
    """Use a Prefect server already running on 127.0.0.1 (``make server``) when PREFECT_API_URL is unset,
    the way the Makefile does; return its API URL, or None (then Prefect starts an ephemeral server).

    Two servers on one SQLite database fail with "database is locked": an ephemeral server next to a running
    one would share ``~/.prefect/prefect.db``. Runs before prefect is imported (it reads the setting then).
    """
    if os.environ.get("PREFECT_API_URL"):
        return None
    import httpx

    port = os.environ.get("PREFECT_PORT") or str(LOCAL_SERVER_PORT)
    url = f"http://127.0.0.1:{port}/api"
    try:
        answer = httpx.get(f"{url}/health", timeout=_HEALTH_TIMEOUT_SECONDS)
    except httpx.HTTPError:
        return None
    if answer.status_code != 200 or answer.text.strip() != "true":
        return None
    os.environ["PREFECT_API_URL"] = url
    return url


def _guard(fn: Callable[[], T]) -> T:
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


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


@app.command()
def validate(
    paths: Annotated[list[Path], typer.Argument(help="Data files or folders (JSONL, CSV, Rasa YAML).")],
    test: Annotated[
        list[Path] | None, typer.Option("--test", help="Test set, for the leakage check.")
    ] = None,
) -> None:
    """Check training data against the validation rules and print the report."""
    from nluflow.data.loaders import load_paths
    from nluflow.data.validation import validate as run_validation

    def run() -> bool:
        train = load_paths(paths)
        test_set = load_paths(test) if test else None
        report = run_validation(train, test_set)
        table = Table(title=f"Validation of {len(train)} examples, {len(report.intent_counts)} intents")
        for col in ("severity", "rule", "count", "message"):
            table.add_column(col)
        for f in report.findings:
            colour = "red" if f.severity == "block" else "yellow"
            table.add_row(f"[{colour}]{f.severity}[/]", f.rule, str(f.count), f.message)
        console.print(table if report.findings else "[green]no findings[/]")
        return report.ok

    if not _guard(run):
        err_console.print("[bold red]blocking findings:[/] a retrain would stop before training.")
        raise typer.Exit(2)
    console.print("[green]ok:[/] the data can be used for a retrain.")


@app.command()
def retrain(
    data: Annotated[
        list[Path],
        typer.Option(
            "--data",
            help="Training data file or folder, or a source block such as nluflow-label-studio-source/NAME "
            "(repeatable).",
        ),
    ],
    test: Annotated[list[Path] | None, typer.Option("--test", help="Frozen test set (repeatable).")] = None,
    project: ProjectOpt = "default",
    store: StoreOpt = None,
    must_pass: Annotated[Path | None, typer.Option("--must-pass", help="Utterances that must pass.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="Training config (JSON or YAML).")] = None,
    backend: Annotated[
        str, typer.Option("--backend", help="'local' or a backend block '<block-type-slug>/<name>'.")
    ] = "local",
    store_block: StoreBlockOpt = None,
    notify: NotifyOpt = None,
    min_macro_f1: Annotated[float | None, typer.Option(help="Gate: minimum macro F1.")] = None,
    min_precision: Annotated[float | None, typer.Option(help="Gate: minimum macro precision.")] = None,
    min_delta: Annotated[float | None, typer.Option(help="Gate: margin over the active model.")] = None,
    tolerance: Annotated[float | None, typer.Option(help="Gate: allowed drop of other metrics.")] = None,
    require_significance: Annotated[
        bool | None,
        typer.Option("--require-significance/--no-require-significance", help="Gate: bootstrap CI."),
    ] = None,
) -> None:
    """Run the retrain flow: validate, train, evaluate against the active model, gate, promote, audit."""
    gate_overrides = {
        k: v
        for k, v in dict(
            min_macro_f1=min_macro_f1,
            min_precision=min_precision,
            min_delta=min_delta,
            tolerance=tolerance,
            require_significance=require_significance,
        ).items()
        if v is not None
    }

    def run() -> Any:
        from flows.retrain import RetrainParams
        from flows.retrain import retrain as retrain_flow

        extra = {"backend": backend, "store_block": store_block, "notify": notify or []}
        params = _params(RetrainParams, data, test, project, store, must_pass, config, gate_overrides, extra)
        _preflight(data, test, must_pass)
        _flow_logging()
        return retrain_flow(params)

    result = _guard(run)
    print_summary(result)


@app.command()
def sweep(
    data: Annotated[list[Path], typer.Option("--data", help="Training data file or folder (repeatable).")],
    configs: Annotated[
        Path, typer.Option("--configs", help="Sweep file (YAML/JSON): 'grid' or 'configs', optional 'base'.")
    ],
    test: Annotated[list[Path] | None, typer.Option("--test", help="Frozen test set (repeatable).")] = None,
    project: ProjectOpt = "default",
    store: StoreOpt = None,
    must_pass: Annotated[Path | None, typer.Option("--must-pass", help="Utterances that must pass.")] = None,
    cv_folds: Annotated[int, typer.Option("--cv-folds", min=2, max=10, help="Cross-validation folds.")] = 5,
    metric: Annotated[
        str, typer.Option("--metric", help="What the best maximises: mean_f1, macro_f1, accuracy, entity_f1.")
    ] = "mean_f1",
    dask: Annotated[
        bool, typer.Option("--dask", help="Score on Dask (a LocalCluster unless --dask-address).")
    ] = False,
    dask_address: Annotated[
        str | None, typer.Option("--dask-address", help="Scheduler address of an existing Dask cluster.")
    ] = None,
    n_workers: Annotated[int, typer.Option("--n-workers", min=1, help="Workers of the LocalCluster.")] = 2,
    store_block: StoreBlockOpt = None,
    notify: NotifyOpt = None,
) -> None:
    """Compare configurations by k-fold cross-validation on the training data; retrain the best one through
    the normal evaluate → gates → promote path."""

    def run() -> Any:
        from flows.sweep import SweepParams
        from flows.sweep import sweep as sweep_flow
        from nluflow.sweep import load_sweep_file

        listed = load_sweep_file(configs)  # problems name the file and line before Prefect starts
        extra = {
            "configs": [c.model_dump(mode="json") for c in listed],
            "cv_folds": cv_folds,
            "metric": metric,
            "task_runner": "dask" if dask or dask_address else "default",
            "dask_address": dask_address,
            "n_workers": n_workers,
            "store_block": store_block,
            "notify": notify or [],
        }
        params = _params(SweepParams, data, test, project, store, must_pass, None, {}, extra)
        _preflight(data, test, must_pass)
        _flow_logging()
        return sweep_flow(params)

    result = _guard(run)
    metric_col = f"cv_{result.metric}"
    wanted = ["rank", "config", metric_col, f"{metric_col}_std", "cv_accuracy", "cv_macro_f1", "cv_entity_f1"]
    shown = [*dict.fromkeys(wanted), "fit_seconds_per_fold"]
    table = Table(
        title=f"{len(result.configs)} configurations, {result.metric} by cross-validation, best first"
    )
    for col in shown:
        table.add_column(col, justify="left" if col == "config" else "right")
    for row in result.table:
        table.add_row(*(_cell(row.get(col)) for col in shown))
    console.print(table)
    console.print(
        f"chosen: configuration {result.best_position + 1} of the sweep file; "
        f"table artifact {result.table_key}"
    )
    print_summary(result.retrain)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "—" if value is None else str(value)


def _params(
    model: Any,
    data: list[Path],
    test: list[Path] | None,
    project: str,
    store: Path | None,
    must_pass: Path | None,
    config: Path | None,
    gates: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Any:
    from pydantic import ValidationError

    from nluflow.backends.base import TrainingConfig
    from nluflow.evaluation.gates import GatePolicy
    from nluflow.sources import is_source_ref

    raw: dict[str, Any] = {
        "project": project,
        "data": [str(p) if is_source_ref(str(p)) else str(p.resolve()) for p in data],  # refs stay as given
        "test": [str(p.resolve()) for p in test] if test else None,
        "store": str(_store_path(store)),
        "must_pass": str(must_pass.resolve()) if must_pass else None,
        **(extra or {}),
    }
    if config is not None:
        raw["config"] = TrainingConfig.parse(_read_mapping(config))
    if gates:
        try:
            raw["gates"] = GatePolicy(**gates)
        except ValidationError as exc:
            raise ConfigError(f"gate options refused: {_pydantic_problems(exc)}") from None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"retrain parameters refused: {_pydantic_problems(exc)}") from None


def _preflight(data: list[Path], test: list[Path] | None, must_pass: Path | None) -> None:
    """Read the input files before starting Prefect, so a malformed file fails in a second, not after
    a server start, and with nothing written anywhere."""
    from nluflow.data.loaders import load_must_pass, load_paths
    from nluflow.sources import is_source_ref

    paths = [p for p in data if not is_source_ref(str(p))]  # sources are pulled by the run itself
    if paths:
        load_paths(paths)
    if test:
        load_paths(test)
    if must_pass:
        load_must_pass(must_pass)


def _pydantic_problems(exc: Any) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors())


def _read_mapping(path: Path) -> dict[str, Any]:
    import yaml

    from nluflow.errors import DataError

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read config: {exc.strerror}", path=path) from None
    try:
        value = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        line = getattr(exc, "lineno", None) or getattr(getattr(exc, "problem_mark", None), "line", -1) + 1
        raise DataError(
            f"config is not valid {path.suffix[1:].upper() or 'YAML'}: {exc}", path, line
        ) from None
    if not isinstance(value, dict):
        raise DataError("config must be a mapping of option names to values", path=path, line=1)
    return value


_GATE_MARKS = {"pass": "[green]pass[/]", "fail": "[red]fail[/]", "skipped": "[dim]skipped[/]"}


def print_summary(result: Any) -> None:
    """The end-of-run summary: metrics with deltas, gates with reasons, the decision, where things are."""
    decision = result.decision
    metrics = Table(title=f"Candidate {result.candidate_id} vs active {result.previous_active or '(none)'}")
    for col in ("metric", "candidate", "active", "delta"):
        metrics.add_column(col, justify="right" if col != "metric" else "left")
    active = result.active_metrics or {}
    for name, value in result.candidate_metrics.items():
        metrics.add_row(name, _fmt(value), _fmt(active.get(name)), _fmt(result.deltas.get(name), signed=True))
    console.print(metrics)
    gates = Table(title="Gates")
    for col in ("gate", "result", "value", "threshold", "reason"):
        gates.add_column(col)
    for g in decision.gates:
        gates.add_row(
            g.name,
            _GATE_MARKS[g.status],
            _fmt(g.value),
            _fmt(g.threshold),
            g.reason,
        )
    console.print(gates)
    for warning in decision.warnings:
        console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False)
    colour = {"promoted": "green", "rejected": "yellow", "superseded": "yellow", "unchanged": "cyan"}.get(
        result.outcome, "red"
    )
    rest = result.message.removeprefix(result.outcome)  # the message starts with the outcome word
    console.print(f"[bold {colour}]{result.outcome.upper()}[/]{escape(rest)}", highlight=False)
    info = result.data_info
    if info.get("new_since_active"):  # "+N new (k to training, j to the test set), M removed"
        where = f" from {info['data_source']}" if info.get("data_source") else ""
        console.print(f"data{where}: {escape(str(info['new_since_active']))}", highlight=False)
    if info.get("test_set_version"):
        size = info.get("test_examples", "?")
        console.print(f"test set: version {info['test_set_version']}, {size} utterances")
    console.print(f"active model: {result.active or '(none)'}  ·  store: {result.store}")
    console.print(f"report: {result.report_path}")
    console.print(f"audit: {result.audit_path} (line {result.audit_seq})  ·  {result.duration_seconds:.1f} s")


@models_app.command("list")
def models_list(project: ProjectOpt = "default", store: StoreOpt = None) -> None:
    """List the stored models of a project, newest first; the active one is marked."""
    from nluflow.registry import ModelStore

    def run() -> None:
        ms = ModelStore.local(_store_path(store))
        pointer = ms.active(project)
        table = Table(title=f"Models of {project} in {ms.describe()}")
        table.add_column("")
        table.add_column("model", no_wrap=True, min_width=14)
        for col in ("created", "backend", "accuracy", "macro F1", "entity F1"):
            table.add_column(col, overflow="fold")
        models, problems = ms.scan_models(project)
        for m in models:
            mark = "*" if pointer and pointer.model_id == m.model_id else ""
            table.add_row(
                mark,
                m.model_id,
                m.created_at[:19],
                m.backend,
                _fmt(m.metrics.get("intent_accuracy")),
                _fmt(m.metrics.get("macro_f1")),
                _fmt(m.metrics.get("entity_f1")),
            )
        console.print(table)
        for model_id, reason in problems:
            err_console.print(
                f"[bold yellow]refused:[/] {escape(model_id)}: {escape(reason)}", highlight=False
            )

    _guard(run)


@models_app.command("show")
def models_show(
    model_id: Annotated[str | None, typer.Argument(help="Model id [default: the active model].")] = None,
    project: ProjectOpt = "default",
    store: StoreOpt = None,
) -> None:
    """Show a model's manifest (metrics, data hashes, config) after verifying its files."""
    from nluflow.errors import ModelNotFoundError
    from nluflow.registry import ModelStore

    def run() -> None:
        ms = ModelStore.local(_store_path(store))
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
            table.add_row(name, _fmt(value))
        for name in ("created_at", "backend", "dataset_sha256", "test_sha256", "run_id"):
            table.add_row(name, str(getattr(manifest, name)))
        table.add_row("files", ", ".join(sorted(manifest.files)))
        table.add_row("manifest sha256", manifest.sha256())
        console.print(table)

    _guard(run)


@models_app.command("rollback")
def models_rollback(
    project: ProjectOpt = "default",
    store: StoreOpt = None,
    to: Annotated[str | None, typer.Option("--to", help="Model id [default: the previous active].")] = None,
    backend: BackendOpt = None,
    wait: WaitOpt = DEFAULT_SLOT_WAIT_SECONDS,
) -> None:
    """Point the project back at the previous active model (or at --to), after verifying it.

    A model trained on a remote platform is made the served one there too; if the platform refuses, the
    store's pointer is put back."""
    from nluflow.registry import ModelStore

    def run() -> None:
        ms = ModelStore.local(_store_path(store))
        if to is not None:
            _refuse_rejected_without_reason(ms, project, to, "models rollback --to")
        with _pointer_change(project, wait):
            log = _audit_log_for_change(store, project)
            before = ms.active(project)
            pointer = ms.rollback(project, to=to)
            manifest = ms.manifest(project, pointer.model_id)
            if manifest.backend != "local":
                _activate_remote(ms, project, manifest, before.model_id if before else None, backend)
            _audit_change(log, "rollback", project, before, pointer, pointer.reason)
        console.print(f"active model of {project} is now [bold]{pointer.model_id}[/]")

    _guard(run)


def _audit_log_for_change(store: Path | None, project: str) -> Any:
    """The project's audit log, checked before the pointer changes: a change the log cannot record is
    refused, so the history never misses one."""
    from nluflow.audit import AuditLog
    from nluflow.errors import AuditError
    from nluflow.registry import check_id

    root = _store_path(store)
    log = AuditLog(root / check_id(project, "project") / "audit.jsonl")
    from nluflow.recovery import EarlierRun, recover_and_describe
    from nluflow.registry import ModelStore

    # A promotion a killed run left half-way, and a run killed before its own line, are closed (and said)
    # before a person moves the pointer. Crashed runs are asked of a configured Prefect server only (the
    # import of the Prefect client costs seconds).
    earlier: list[EarlierRun] = []
    if os.environ.get("PREFECT_API_URL"):
        from tasks.crashed_runs import earlier_runs_for_cli

        earlier, note = earlier_runs_for_cli(root, project)
        if note:
            err_console.print(f"[yellow]{escape(note)}[/]", highlight=False)
    for note in recover_and_describe(log, ModelStore.local(root), project, actor="cli", earlier_runs=earlier):
        err_console.print(f"[yellow]{escape(note)}[/]", highlight=False)
    result = log.verify()
    if not result.ok:
        raise AuditError(
            f"the audit log is broken ({result.reason}), so this change could not be recorded; nothing was "
            "changed. Restore the log from a backup, then run the command again"
        )
    return log


def _audit_change(log: Any, decision: str, project: str, before: Any, pointer: Any, reason: str) -> None:
    """One audit line for a change of the active pointer made from the CLI (none when nothing changed)."""
    from nluflow.audit import pointer_change_record

    if before is not None and before.model_id == pointer.model_id:
        return
    log.append(
        pointer_change_record(
            project=project,
            decision=decision,
            model_id=pointer.model_id,
            previous_model_id=before.model_id if before else None,
            manifest_sha256=pointer.manifest_sha256,
            reason=reason,
        )
    )


def _activate_remote(ms: Any, project: str, manifest: Any, restore: str | None, block: str | None) -> None:
    """Make the platform serve ``manifest``'s model; on failure put the store's pointer back."""
    from nluflow.backends.base import ModelRef
    from tasks.common import BackendSpec

    try:
        block = block or manifest.backend_block
        if not block:
            raise ConfigError(
                f"model {manifest.model_id} was trained on the {manifest.backend!r} backend, but its "
                "manifest does not name the backend block (it was stored by an older nluflow); expected "
                "--backend '<block-type-slug>/<block-name>' to tell which platform should serve it"
            )
        ref = ModelRef.stored(manifest, ms.materialize(project, manifest.model_id))
        BackendSpec(name=block, workspace=str(_home() / "work")).build().activate(ref)
    except Exception:
        if restore is not None:
            ms.activate(project, restore, reason="restored: the platform refused the activation")
        raise


@contextmanager
def _pointer_change(project: str, wait: float) -> Iterator[None]:
    """Hold the project's promotion slot (the one a retrain's promotion holds) for a pointer change from the
    CLI, so a person's promote / activate / rollback never races a running retrain's promotion. It needs a
    Prefect API: the server ``make server`` runs (found by main()), PREFECT_API_URL, or an ephemeral one.
    Waits up to ``wait`` seconds, then refuses, saying who holds the slot."""
    import getpass
    import socket

    from nluflow.registry import check_id
    from tasks.slot import promotion_slot

    check_id(project, "project")
    who = f"nluflow models (cli, user {getpass.getuser()} on {socket.gethostname()}, pid {os.getpid()})"
    with promotion_slot(project, who, timeout_seconds=wait):
        yield


def _refuse_rejected_without_reason(ms: Any, project: str, model_id: str, command: str) -> None:
    """A kept rejected candidate goes active only with a reason on the audit log: making it active overrides
    the gates, which is what ``models promote --reason`` is for."""
    if model_id not in {e.model_id for e in ms.rejected(project)}:
        return
    raise ConfigError(
        f"{model_id} is a candidate the gates rejected (kept in the store for a forced promotion); making it "
        f"active overrides the gates, so `{command}` refuses it without a reason; nothing was changed. Run "
        f"`nluflow models promote {model_id} --project {project} --reason '<why the gates are wrong here>'`"
    )


@models_app.command("activate")
def models_activate(
    model_id: Annotated[str, typer.Argument(help="Stored model to make active.")],
    project: ProjectOpt = "default",
    store: StoreOpt = None,
    backend: BackendOpt = None,
    reason: Annotated[
        str | None,
        typer.Option(
            "--reason",
            help="Why (recorded in the audit log); required for a candidate the gates rejected.",
        ),
    ] = None,
    wait: WaitOpt = DEFAULT_SLOT_WAIT_SECONDS,
) -> None:
    """Make a stored model the active one (verified first), e.g. after a bad rollback.

    A candidate the gates rejected needs --reason (it is then a forced promotion, as `models promote`).
    A model trained on a remote platform is made the served one there too; if the platform refuses, the
    store's pointer is put back."""
    from nluflow.registry import ModelStore

    def run() -> None:
        why = " ".join((reason or "").split())
        ms = ModelStore.local(_store_path(store))
        if not why:
            _refuse_rejected_without_reason(ms, project, model_id, "models activate")
        with _pointer_change(project, wait):
            forced = model_id in {e.model_id for e in ms.rejected(project)}
            log = _audit_log_for_change(store, project)
            before = ms.active(project)
            text = f"forced promote: {why}" if forced else (why or "activated from CLI")
            pointer = ms.activate(project, model_id, reason=text)
            manifest = ms.manifest(project, pointer.model_id)
            if manifest.backend != "local":
                _activate_remote(ms, project, manifest, before.model_id if before else None, backend)
            if forced:
                ms.forget_rejected(project, model_id)
            decision = "forced-promote" if forced else "activate"
            _audit_change(log, decision, project, before, pointer, why or text)
        console.print(f"active model of {project} is now [bold]{pointer.model_id}[/]")

    _guard(run)


@models_app.command("promote")
def models_promote(
    model_id: Annotated[str, typer.Argument(help="Stored model to promote, e.g. a rejected candidate.")],
    reason: Annotated[
        str, typer.Option("--reason", help="Why the gates are overridden (recorded in the audit log).")
    ],
    project: ProjectOpt = "default",
    store: StoreOpt = None,
    backend: BackendOpt = None,
    wait: WaitOpt = DEFAULT_SLOT_WAIT_SECONDS,
) -> None:
    """Force a stored model to be the active one, overriding the gates; the reason goes on the audit log.

    Rejected candidates are kept in the store (the newest RetrainParams.keep_rejected per project) for this.
    A model trained on a remote platform is made the served one there too."""
    from nluflow.registry import ModelStore

    def run() -> None:
        why = " ".join(reason.split())
        if not why:
            raise ConfigError(
                "--reason is empty; expected a sentence saying why the gates are overridden (it is recorded "
                "in the audit log); nothing was changed"
            )
        ms = ModelStore.local(_store_path(store))
        with _pointer_change(project, wait):
            log = _audit_log_for_change(store, project)
            before = ms.active(project)
            if before is not None and before.model_id == model_id:
                raise ConfigError(f"{model_id} is already the active model of {project}; nothing was changed")
            pointer = ms.activate(project, model_id, reason=f"forced promote: {why}")
            manifest = ms.manifest(project, pointer.model_id)
            if manifest.backend != "local":
                _activate_remote(ms, project, manifest, before.model_id if before else None, backend)
            ms.forget_rejected(project, model_id)
            _audit_change(log, "forced-promote", project, before, pointer, why)
        console.print(
            f"active model of {project} is now [bold]{pointer.model_id}[/] (forced promote, gates overridden)"
        )

    _guard(run)


@audit_app.command("verify")
def audit_verify(
    project: Annotated[
        str | None, typer.Option("--project", "-p", help="Project [default: every project in the store].")
    ] = None,
    store: StoreOpt = None,
) -> None:
    """Check the audit logs' hash chains (one project, or every project in the store) and list their lines:
    seq, time, decision, model. A broken chain names its first bad line and exits 1.

    Decisions: promote, reject, blocked, unchanged, failed (a retrain's own line); crashed (a retrain killed
    before its own line, written by the next run or a pointer change); promote-intent, promotion-abandoned;
    rollback, activate, forced-promote, testset-reset (the CLI); repaired, sealed (the log itself)."""
    from nluflow.audit import AuditLog, history_rows
    from nluflow.errors import StoreError

    def run() -> list[Path]:
        from nluflow.registry import check_id

        root = _store_path(store)
        if project is not None:
            path = root / check_id(project, "project") / "audit.jsonl"
            if not path.exists():
                raise StoreError(
                    f"no audit log at {path}; has project {project!r} run a retrain in this store?"
                )
            return [path]
        if not root.is_dir():
            raise StoreError(f"no model store at {root}; expected the folder a retrain wrote (--store)")
        # Symbolic links too (glob skips dangling ones): verify refuses them, never skips them.
        logs = (d / "audit.jsonl" for d in root.iterdir() if d.is_dir())
        paths = sorted(p for p in logs if p.is_file() or p.is_symlink())
        if not paths:
            raise StoreError(f"no audit logs in {root}; no project has run a retrain in this store")
        return paths

    broken = 0
    for path in _guard(run):
        result = AuditLog(path).verify()
        if not result.ok:
            broken += 1
            err_console.print(
                f"[bold red]broken:[/] {path.parent.name}: {escape(str(result.reason))}", highlight=False
            )
            continue
        for sealed in result.sealed:
            console.print(f"[yellow]{path.parent.name}: {escape(sealed)}[/]; the chain is intact after it")
        title = f"{path.parent.name}: intact, {result.lines} lines in {path}"
        table = Table(title=title, title_justify="left")
        for col in ("seq", "time (UTC)", "decision", "model", "note"):
            table.add_column(col, overflow="fold", no_wrap=col in ("time (UTC)", "model"))
        for row in history_rows(AuditLog(path).records()):
            note = row["note"] if len(row["note"]) <= 90 else row["note"][:89] + "…"
            table.add_row(str(row["seq"]), row["time"], row["decision"], row["model"] or "—", escape(note))
        console.print(table)
        console.print(f"[green]intact:[/] {result.lines} lines in {path}")
    if broken:
        raise typer.Exit(1)


@audit_app.command("seal")
def audit_seal(
    project: Annotated[str, typer.Option("--project", "-p", help="Project whose audit log is broken.")],
    reason: Annotated[
        str, typer.Option("--reason", help="Who found the break and why it is sealed (recorded in the log).")
    ],
    store: StoreOpt = None,
) -> None:
    """Seal a broken audit chain so retrains can append again: a `sealed` line chained to the last good
    line records where the chain broke and why you sealed it; `audit verify` then reports "sealed at line N"
    and checks the chain after it. Keep a copy of the broken log first. A torn last line is moved aside
    instead (a `repaired` line names the file)."""
    from nluflow.audit import AuditLog
    from nluflow.errors import StoreError
    from nluflow.registry import check_id

    def run() -> dict[str, Any]:
        path = _store_path(store) / check_id(project, "project") / "audit.jsonl"
        if not path.exists() and not path.is_symlink():
            raise StoreError(f"no audit log at {path}; has project {project!r} run a retrain in this store?")
        return AuditLog(path).seal(reason)

    line = _guard(run)
    if line.get("decision") == "sealed":
        console.print(
            f"sealed {project}'s audit log at line {line['seq']}: lines {line['sealed_from_line']}-"
            f"{line['seq'] - 1} were broken ({escape(str(line['break']))}); the chain continues after it",
            highlight=False,
        )
    else:
        console.print(f"repaired {project}'s audit log: {escape(line['reasons'][0])}", highlight=False)


@app.command("notify-annotated")
def notify_annotated_cmd(
    data: Annotated[str, typer.Option("--data", help="Annotated data, as the retrain will read it.")],
    project: ProjectOpt = "default",
    new_examples: Annotated[int, typer.Option("--new-examples", min=0, help="How many new examples.")] = 0,
) -> None:
    """Emit nlu.dataset.annotated so the 'retrain on annotation' deployment trigger starts a retrain."""
    from flows.events import notify_annotated

    event = _guard(lambda: notify_annotated(project, data, new_examples))
    console.print(f"emitted {event['event']} {event['id']} for {project} (data {event['payload']['data']})")


@app.command("relay")
def relay_cmd(
    config: Annotated[
        Path, typer.Option("--config", help="Relay config (YAML/JSON); the secret in $NLUFLOW_RELAY_SECRET.")
    ],
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8787,
) -> None:
    """Serve the webhook relay: annotation-tool webhooks in, Prefect events out."""
    from flows.events import serve_relay

    _guard(lambda: serve_relay(host, port, config))


@app.command()
def serve(
    project: ProjectOpt = "default",
    store: StoreOpt = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 5005,
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="NLUFLOW_SERVE_TOKEN", help="Require ?token= or a bearer token."),
    ] = None,
) -> None:
    """Serve the project's active model with Rasa's /model/parse API; swaps to newly promoted models."""
    from nluflow.serve import run as run_server

    _guard(lambda: run_server(host, port, project, _store_path(store), token))


@app.command()
def demo(
    home: Annotated[Path | None, typer.Option("--home", help="Folder for store and runs.")] = None,
) -> None:
    """The demo of `make run`: three retrains of a SNIPS-based bot as new annotations arrive."""
    from flows.demo import run_demo

    _flow_logging()
    _guard(lambda: run_demo(home or _home(), print_summary=print_summary, console=console))


def main() -> None:
    global _quiet_terminal
    _quiet_terminal = True
    _use_running_server()
    app()


if __name__ == "__main__":
    main()
