"""The sweep flow: several training configurations scored by k-fold cross-validation on the training data, the
best one then retrained through the normal retrain flow (evaluate → gates → promote are the same code).

Deployment entrypoint: ``flows/sweep.py:sweep``.

```
sweep(params: SweepParams)
  data, test, validation         the retrain's own tasks: the same frozen test set, removed from training
  score_configurations           subflow on the default task runner or a DaskTaskRunner:
    cv-score-config  (mapped)    one task per configuration; cached on data + config + folds + code
  publish-sweep-table            table artifact `<project>-sweep`, best first
  retrain(config=best)           subflow: train, evaluate, gate, promote, publish, audit
```

On Dask (``task_runner="dask"``, extra ``nluflow[dask]``): a ``distributed.LocalCluster`` of ``n_workers``
processes with one thread each, started for the scoring and closed after it; or, with ``dask_address``, an
existing cluster. Workers read the training snapshot from the workspace, so a cluster on other machines needs
the workspace on a filesystem they all see (a worker that cannot read it fails with a message saying so).
"""

from __future__ import annotations

import socket
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Literal, Self

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext, get_run_context
from prefect.futures import wait
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import TaskRunner
from pydantic import BaseModel, Field, model_validator

from flows.retrain import RetrainParams, RunSettings, nluflow_home, retrain
from nluflow.backends.base import TrainingConfig
from nluflow.errors import ConfigError, DataError
from nluflow.pipeline import DatasetSnapshot
from nluflow.retrain import RetrainResult
from nluflow.sweep import (
    CV_VERSION,
    CVScore,
    SweepMetric,
    check_metric,
    choose_best,
    comparison_rows,
    cross_validate_config,
)
from nluflow.sweep_configs import config_labels, resolve_configs
from tasks.common import StoreSpec, artifact_key, cache_key, cache_policy
from tasks.data import prepare_data


class SweepParams(RunSettings):
    """Which configurations to compare, how to score them, where to run them, and the retrain's settings."""

    configs: list[TrainingConfig] | None = Field(
        default=None, description="Configurations to compare, each complete; or give a grid."
    )
    grid: dict[str, list[Any]] | None = Field(
        default=None,
        description="Option values to combine, e.g. {'local.C': [0.5, 1, 2]}; every combination is tried.",
    )
    base: TrainingConfig | None = Field(
        default=None, description="Options every grid combination starts from (grid only)."
    )
    cv_folds: int = Field(default=5, ge=2, le=10, description="Cross-validation folds on the training data.")
    seed: int = Field(default=42, ge=0, description="Seed of the folds (and of a first test split).")
    metric: SweepMetric = Field(
        default="mean_f1",
        description="What the best maximises: mean_f1 (intent macro F1 and entity F1), macro_f1, accuracy, "
        "entity_f1.",
    )
    task_runner: Literal["default", "dask"] = Field(
        default="default", description="Where configurations are scored: threads, or a Dask cluster."
    )
    dask_address: str | None = Field(
        default=None, description="Scheduler address of an existing Dask cluster (else a LocalCluster)."
    )
    n_workers: int = Field(
        default=2, ge=1, le=64, description="Worker processes (1 thread each) of the Dask LocalCluster."
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.dask_address and self.task_runner != "dask":
            raise ValueError("dask_address is given but task_runner is 'default'; set task_runner to 'dask'")
        if self.base is not None and self.configs is not None:
            raise ValueError("base applies to a grid only; a configuration in configs is complete")
        try:
            self.resolved_configs()
        except ConfigError as exc:  # pydantic reports ValueError as a parameter error (Prefect's form too)
            raise ValueError(str(exc)) from None
        return self

    def resolved_configs(self) -> list[TrainingConfig]:
        """The configurations to compare, in order, duplicates dropped."""
        return resolve_configs(self.configs, self.grid, self.base)

    def retrain_params(self, config: TrainingConfig) -> RetrainParams:
        """The retrain of ``config`` with this sweep's data, store, gates and notifications."""
        shared = {name: getattr(self, name) for name in RunSettings.model_fields}
        return RetrainParams(**shared, config=config)  # the backend is the local one: CV used the local model


class SweepResult(BaseModel):
    """What a sweep did: every configuration's CV scores, the one chosen, and the retrain it went through."""

    project: str
    flow_run_id: str | None
    metric: str
    best_position: int = Field(description="Position (0-based) of the chosen configuration.")
    best_config: TrainingConfig
    configs: list[TrainingConfig]
    scores: list[CVScore]
    table: list[dict[str, Any]]
    table_key: str
    scoring_flow_run_id: str | None = Field(description="The scoring subflow run (its mapped tasks).")
    retrain: RetrainResult
    duration_seconds: float


# -- tasks -------------------------------------------------------------------------------------------------


def _cv_key(ctx: TaskRunContext, inputs: dict[str, Any]) -> str:
    config: TrainingConfig = inputs["config"]
    return cache_key(
        ctx.task.name, inputs["train"].sha256, config.sha256(), inputs["folds"], inputs["seed"], CV_VERSION
    )


@task(
    name="cv-score-config",
    task_run_name="cv-score-{label}",
    cache_policy=cache_policy(_cv_key),
    persist_result=True,
)
def cv_score_config(
    train: DatasetSnapshot, config: TrainingConfig, label: str, folds: int, seed: int
) -> CVScore:
    """k-fold cross-validation of one configuration on the training snapshot (no retries: it is pure
    computation, so a failure is a bug or bad data)."""
    logger = get_run_logger()
    if not Path(train.path).is_file():
        raise DataError(
            f"the training snapshot is not readable on worker {socket.gethostname()}; expected the workspace "
            "on a filesystem every Dask worker sees; nothing was scored",
            train.path,
        )
    data = train.load()
    if data.sha256() != train.sha256:
        raise DataError(
            f"the training snapshot's content hash is {data.sha256()[:12]}, expected {train.sha256[:12]}; "
            "the file changed after it was written; nothing was scored",
            train.path,
        )
    score = cross_validate_config(
        data, config, folds, seed, on_progress=lambda f, m: logger.debug("%s: %s", label, m)
    )
    entity = f", entity F1 {score.entity_f1:.4f}" if score.entity_f1 is not None else ""
    logger.info(
        "%s: CV accuracy %.4f, macro F1 %.4f%s (%d folds, %.1f s of fitting)",
        label,
        score.accuracy,
        score.macro_f1,
        entity,
        folds,
        score.fit_seconds,
    )
    return score


@task(name="publish-sweep-table", cache_policy=NO_CACHE)
def publish_sweep_table(project: str, rows: list[dict[str, Any]], description: str) -> str:
    key = artifact_key(project, "sweep")
    create_table_artifact(table=rows, key=key, description=description)
    return key


# -- flows -------------------------------------------------------------------------------------------------


def task_runner_for(params: SweepParams) -> TaskRunner[Any] | None:
    """``None`` for the default runner; else a ``DaskTaskRunner`` on ``dask_address`` or on a LocalCluster
    of ``n_workers`` single-threaded processes listening on 127.0.0.1 only."""
    if params.task_runner == "default":
        return None
    try:
        from prefect_dask.task_runners import DaskTaskRunner
    except ImportError:
        raise ConfigError(
            "task_runner 'dask' needs prefect-dask and dask.distributed, which are not installed; expected "
            "`pip install 'nluflow[dask]'`; nothing was scored"
        ) from None
    if params.dask_address:
        return DaskTaskRunner(address=params.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": params.n_workers,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": ":0",
        }
    )


def _api_for_workers() -> AbstractContextManager[Any]:
    """Point worker processes at this run's Prefect API. Without ``PREFECT_API_URL`` (the embedded
    default) each Dask worker would start a server of its own; the settings travel with every submitted
    task (threads of the default runner reach the same server either way)."""
    if PREFECT_API_URL.value():
        return nullcontext()
    return temporary_settings(updates={PREFECT_API_URL: str(get_run_context().client.api_url)})


@flow(name="nluflow-sweep-score", flow_run_name="sweep-score-{project}", log_prints=False)
def score_configurations(
    project: str, train: DatasetSnapshot, configs: list[TrainingConfig], folds: int, seed: int
) -> list[CVScore]:
    """Cross-validate every configuration as one mapped task each, on this flow's task runner."""
    labels = config_labels(configs)
    with _api_for_workers():
        futures = cv_score_config.map(unmapped(train), configs, labels, unmapped(folds), unmapped(seed))
    wait(futures)
    return [f.result() for f in futures]  # the first failed configuration raises here


def _store_and_work(params: SweepParams) -> tuple[StoreSpec, str]:
    """The same store and workspace the retrain resolves for these parameters."""
    home = nluflow_home()
    work = Path(params.workspace or home / "work").resolve()
    store = StoreSpec(
        path=str(Path(params.store or home / "store").resolve()),
        block=params.store_block,
        workspace=str(work),
    )
    return store, str(work)


@flow(name="nluflow-sweep", flow_run_name="sweep-{params.project}", log_prints=False)
def sweep(params: SweepParams) -> SweepResult:
    """Score several configurations by cross-validation on the training data; retrain the best one."""
    started = time.monotonic()
    logger = get_run_logger()
    configs = params.resolved_configs()
    store, work = _store_and_work(params)
    project = params.project

    # 1. The retrain's data stages (cached, so the retrain below reuses them): the same frozen test set is
    #    removed from the training data before anything is scored.
    data = prepare_data(params, store, work, params.seed)
    train, report = data.train, data.report
    if not report.ok:  # the retrain publishes the findings, writes the 'blocked' audit line and raises
        retrain(params.retrain_params(configs[0]))
        report.raise_for_blocking()

    # 2. Cross-validate every configuration on the training snapshot, on the chosen task runner.
    check_metric(params.metric, has_entities=train.load().entity_types() != [])
    logger.info(
        "sweep: %d configurations, %d-fold CV on %d training examples, %s task runner",
        len(configs),
        params.cv_folds,
        train.n_examples,
        params.task_runner if not params.dask_address else f"dask at {params.dask_address}",
    )
    runner = task_runner_for(params)
    scorer = score_configurations.with_options(task_runner=runner) if runner else score_configurations
    scored = scorer(project, train, configs, params.cv_folds, params.seed, return_state=True)
    scores: list[CVScore] = scored.result()  # raises the first failed configuration's error

    # 3. Choose, and publish the comparison table (best first).
    best = choose_best(scores, params.metric)
    labels = config_labels(configs)
    rows = comparison_rows(scores, params.metric, labels)
    table_key = publish_sweep_table(
        project,
        rows,
        f"{project}: {len(configs)} configurations, {params.cv_folds}-fold CV ({params.metric}) on "
        f"{train.n_examples} training examples; chosen: {labels[best]}",
    )
    logger.info("sweep: chose %s (%s)", labels[best], configs[best].sha256()[:12])

    # 4. The normal retrain path for the chosen configuration: train, evaluate, gates, promote, audit.
    result = retrain(params.retrain_params(configs[best]))
    return SweepResult(
        project=project,
        flow_run_id=str(flow_run.get_id() or "local"),
        metric=params.metric,
        best_position=best,
        best_config=configs[best],
        configs=configs,
        scores=scores,
        table=rows,
        table_key=table_key,
        scoring_flow_run_id=str(scored.state_details.flow_run_id)
        if scored.state_details.flow_run_id
        else None,
        retrain=result,
        duration_seconds=round(time.monotonic() - started, 3),
    )
