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
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from flows.cli_audit import audit_app
from flows.cli_automations import automations_app
from flows.cli_blocks import blocks_app
from flows.cli_common import (
    ProjectOpt,
    StoreBlockOpt,
    StoreOpt,
    console,
    err_console,
    fmt,
    guard,
    open_store,
    store_path,
)
from flows.cli_common import home as nluflow_home
from flows.cli_models import models_app
from flows.cli_testset import testset_app
from nluflow.errors import ConfigError, NluflowError

app = typer.Typer(help="Safe, audited retrains of NLU models.", no_args_is_help=True, add_completion=False)
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

NotifyOpt = Annotated[
    list[str] | None, typer.Option("--notify", help="WebhookNotification block name (repeatable).")
]


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

    if not guard(run):
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
        inputs = RunInputs(data=data, test=test, project=project, store=store, must_pass=must_pass)
        params = _params(RetrainParams, inputs, config, gate_overrides, extra)
        _preflight(data, test, must_pass)
        _flow_logging()
        return retrain_flow(params)

    result = guard(run)
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
        from nluflow.sweep_configs import load_sweep_file

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
        inputs = RunInputs(data=data, test=test, project=project, store=store, must_pass=must_pass)
        params = _params(SweepParams, inputs, None, {}, extra)
        _preflight(data, test, must_pass)
        _flow_logging()
        return sweep_flow(params)

    result = guard(run)
    _print_sweep(result)


def _print_sweep(result: Any) -> None:
    """The sweep's table (best first), the chosen configuration, then the retrain's summary."""
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


@dataclass(frozen=True)
class RunInputs:
    """The inputs every run command takes: data, test set, project, store folder, must-pass utterances."""

    data: list[Path]
    test: list[Path] | None
    project: str
    store: Path | None
    must_pass: Path | None


def _params(
    model: Any,
    inputs: RunInputs,
    config: Path | None,
    gates: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Any:
    """The flow's parameter model from the command's options; ConfigError naming what was refused."""
    from pydantic import ValidationError

    from nluflow.backends.base import TrainingConfig
    from nluflow.evaluation.gates import GatePolicy
    from nluflow.sources import is_source_ref

    data, test, must_pass = inputs.data, inputs.test, inputs.must_pass
    raw: dict[str, Any] = {
        "project": inputs.project,
        "data": [str(p) if is_source_ref(str(p)) else str(p.resolve()) for p in data],  # refs stay as given
        "test": [str(p.resolve()) for p in test] if test else None,
        "store": str(store_path(inputs.store)),
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
        metrics.add_row(name, fmt(value), fmt(active.get(name)), fmt(result.deltas.get(name), signed=True))
    console.print(metrics)
    gates = Table(title="Gates")
    for col in ("gate", "result", "value", "threshold", "reason"):
        gates.add_column(col)
    for g in decision.gates:
        gates.add_row(
            g.name,
            _GATE_MARKS[g.status],
            fmt(g.value),
            fmt(g.threshold),
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


@app.command("notify-annotated")
def notify_annotated_cmd(
    data: Annotated[str, typer.Option("--data", help="Annotated data, as the retrain will read it.")],
    project: ProjectOpt = "default",
    new_examples: Annotated[int, typer.Option("--new-examples", min=0, help="How many new examples.")] = 0,
) -> None:
    """Emit nlu.dataset.annotated so the 'retrain on annotation' deployment trigger starts a retrain."""
    from flows.events import notify_annotated

    event = guard(lambda: notify_annotated(project, data, new_examples))
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

    guard(lambda: serve_relay(host, port, config))


@app.command()
def serve(
    project: ProjectOpt = "default",
    store: StoreOpt = None,
    store_block: StoreBlockOpt = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 5005,
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="NLUFLOW_SERVE_TOKEN", help="Require ?token= or a bearer token."),
    ] = None,
) -> None:
    """Serve the project's active model with Rasa's /model/parse API; swaps to newly promoted models."""
    from nluflow.apps import serve as server

    guard(
        lambda: server.run(
            host, port, project, open_store(store, store_block), server.ServeOptions(token=token)
        )
    )


@app.command()
def demo(
    home: Annotated[Path | None, typer.Option("--home", help="Folder for store and runs.")] = None,
) -> None:
    """The demo of `make run`: three retrains of a SNIPS-based bot as new annotations arrive."""
    from flows.demo import run_demo

    _flow_logging()
    guard(lambda: run_demo(home or nluflow_home(), print_summary=print_summary, console=console))


def main() -> None:
    global _quiet_terminal
    _quiet_terminal = True
    _use_running_server()
    app()


if __name__ == "__main__":
    main()
