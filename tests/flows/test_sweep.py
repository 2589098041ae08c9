"""Configuration sweeps: the plain logic (grids, sweep files, folds, the tie-break), then the sweep flow under
the session harness: on a Dask LocalCluster of 2 workers it promotes the configuration that cross-validation
on the training data chose; a rerun on the default runner is served from the cache; a spy shows that what
was scored is exactly the retrain's training set, which holds none of the test set.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    TaskRunFilter,
)
from prefect.client.schemas.sorting import ArtifactSort, TaskRunSort
from pydantic import ValidationError

from flows.sweep import SweepParams, SweepResult, sweep, task_runner_for
from nluflow.backends.base import LocalModelOptions, TrainingConfig
from nluflow.data.loaders import load_jsonl, load_paths
from nluflow.data.schema import Dataset
from nluflow.data.validation import normalize_text
from nluflow.errors import ConfigError, DataError
from nluflow.store import ModelStore
from nluflow.store.audit_log import AuditLog
from nluflow.sweep import (
    CVScore,
    FoldScore,
    choose_best,
    comparison_rows,
    cross_validate_config,
    fold_indices,
    rank,
)
from nluflow.sweep_configs import config_labels, expand_grid, load_sweep_file, resolve_configs

PROJECT = "sweeptest"

# -- plain logic --------------------------------------------------------------------------------------------


def test_grid_expands_every_combination_over_the_base() -> None:
    base = TrainingConfig(seed=7, local=LocalModelOptions(calibration_folds=0))
    configs = expand_grid({"local.C": [0.5, 2.0], "local.word_ngram_max": [1, 2, 3]}, base)
    assert [(c.local.C, c.local.word_ngram_max) for c in configs] == [
        (0.5, 1), (0.5, 2), (0.5, 3), (2.0, 1), (2.0, 2), (2.0, 3),
    ]  # fmt: skip
    assert all(c.seed == 7 and c.local.calibration_folds == 0 for c in configs)
    assert config_labels(configs)[:2] == ["C=0.5, word_ngram_max=1", "C=0.5, word_ngram_max=2"]


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"local.Cx": [1.0]}, "not a local model option"),
        ({"learning": [1.0]}, "not a training option"),
        ({"local.C": []}, "non-empty list"),
        ({"local.C": [0.5, -1.0]}, "grid combination local.C=-1.0"),
        ({"local.char_ngram_min": [6], "local.char_ngram_max": [5]}, "char_ngram_min must not exceed"),
        ({f"extra.k{i}": [1, 2] for i in range(8)}, "256 configurations"),
    ],
)
def test_bad_grids_are_refused_before_anything_is_trained(grid: dict[str, list[Any]], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        expand_grid(grid)


def test_listed_mappings_are_laid_over_the_base_and_duplicates_dropped() -> None:
    complete = TrainingConfig(local=LocalModelOptions(C=2.0))
    configs = resolve_configs(
        configs=[{"local": {"C": 0.5}}, complete, {"local": {"C": 0.5}}, complete.model_copy()],
        base={"seed": 3, "local": {"word_ngram_max": 1}},
    )
    # A TrainingConfig is complete: the base is not laid under it (object or JSON, same meaning).
    assert [(c.local.C, c.local.word_ngram_max, c.seed) for c in configs] == [(0.5, 1, 3), (2.0, 2, 42)]
    with pytest.raises(ConfigError, match="exactly one"):
        resolve_configs(configs=[{}], grid={"local.C": [1.0]})
    with pytest.raises(ConfigError, match="configuration 2"):
        resolve_configs(configs=[{}, {"local": {"C": 0}}])


def test_sweep_file_grid_and_its_errors_with_lines(tmp_path: Path) -> None:
    good = tmp_path / "grid.yml"
    good.write_text("base:\n  seed: 5\ngrid:\n  local.C: [0.5, 1.0]\n  local.word_ngram_max: [1, 2]\n")
    configs = load_sweep_file(good)
    assert len(configs) == 4 and {c.seed for c in configs} == {5}
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps({"configs": [{"local": {"C": 0.5}}, {"local": {"C": 3.0}}]}))
    assert [c.local.C for c in load_sweep_file(listed)] == [0.5, 3.0]

    bad_key = tmp_path / "bad-key.yml"
    bad_key.write_text("grid:\n  local.C: [1.0]\n  local.ngram: [1, 2]\n")
    with pytest.raises(DataError, match="not a local model option") as err:
        load_sweep_file(bad_key)
    assert (err.value.path, err.value.line) == (str(bad_key), 3)
    bad_value = tmp_path / "bad-value.yml"
    bad_value.write_text("configs:\n  - local: {C: 1.0}\n  - local: {C: -2}\n")
    with pytest.raises(DataError, match="configuration 2") as err:
        load_sweep_file(bad_value)
    assert str(err.value).startswith(f"{bad_value}:3:")
    both = tmp_path / "both.yml"
    both.write_text("grid: {seed: [1]}\nconfigs: [{}]\n")
    with pytest.raises(DataError, match="exactly one"):
        load_sweep_file(both)


def _score(
    acc: float, f1: float, entity: float | None = None, spread: float = 0.0, c: float = 1.0
) -> CVScore:
    """A CVScore of two folds whose F1 values are ``f1 ± spread``."""
    folds = tuple(
        FoldScore(
            fold=k,
            n_train=10,
            n_test=5,
            accuracy=acc,
            macro_f1=f1 + sign * spread,
            entity_f1=entity,
            fit_seconds=0.1,
        )
        for k, sign in enumerate((-1, 1))
    )
    config = TrainingConfig(local=LocalModelOptions(C=c))
    return CVScore(
        config=config,
        config_sha256=config.sha256(),
        dataset_sha256="d" * 64,
        n_examples=15,
        n_intents=2,
        has_entities=entity is not None,
        folds=2,
        seed=0,
        accuracy=acc,
        accuracy_std=0.0,
        macro_f1=f1,
        macro_f1_std=spread,
        entity_f1=entity,
        entity_f1_std=0.0 if entity is not None else None,
        fit_seconds=0.2,
        fold_scores=folds,
    )


def test_best_is_the_highest_objective_and_ties_follow_the_documented_order() -> None:
    # Highest objective wins wherever it is listed.
    assert choose_best([_score(0.9, 0.80), _score(0.8, 0.85), _score(0.9, 0.81)]) == 1
    # Equal objective: higher accuracy; then lower spread over folds; then the earlier position.
    assert choose_best([_score(0.90, 0.85), _score(0.91, 0.85)]) == 1
    assert choose_best([_score(0.9, 0.85, spread=0.05), _score(0.9, 0.85, spread=0.01)]) == 1
    assert choose_best([_score(0.9, 0.85), _score(0.9, 0.85, c=2.0)]) == 0
    # Differences below the 9th decimal are ties, not wins.
    assert choose_best([_score(0.9, 0.85), _score(0.9, 0.85 + 1e-12, c=2.0)]) == 0
    # mean_f1 weighs entities when there are any; macro_f1 ignores them.
    scores = [_score(0.9, 0.90, entity=0.60), _score(0.9, 0.88, entity=0.80, c=2.0)]
    assert choose_best(scores, "mean_f1") == 1 and choose_best(scores, "macro_f1") == 0
    with pytest.raises(ConfigError, match="entity_f1"):
        choose_best([_score(0.9, 0.9)], "entity_f1")
    rows = comparison_rows(scores, "mean_f1")
    assert [r["rank"] for r in rows] == [1, 2] and rows[0]["chosen"] == "yes" and rows[0]["position"] == 2
    assert rows[0]["cv_mean_f1"] == pytest.approx(0.84) and rows[0]["config"] == "C=2.0"
    assert rank(scores, "macro_f1") == [0, 1]


def test_folds_are_stratified_disjoint_and_seeded(demo_data: Path) -> None:
    data = load_jsonl(demo_data / "batch-1.jsonl")
    splits = fold_indices(data, 4, seed=1)
    held_out = [i for _, test in splits for i in test]
    assert sorted(held_out) == list(range(len(data)))  # every example held out exactly once
    for train, test in splits:
        assert not set(train) & set(test)
        intents = {data.examples[i].intent for i in test}
        assert intents == set(data.intent_counts())  # stratified: 20 per intent, 5 per fold
    assert fold_indices(data, 4, seed=1) == splits and fold_indices(data, 4, seed=2) != splits
    weather = [e for e in data.examples if e.intent == "GetWeather"]
    books = [e for e in data.examples if e.intent == "RateBook"]
    tiny = Dataset.of(weather[:3] + books[:2])
    with pytest.raises(DataError, match="fewer than the 4 cross-validation folds"):
        fold_indices(tiny, 4, seed=1)


def test_cross_validation_scores_the_given_data_and_calibration_does_not_change_it(demo_data: Path) -> None:
    data = load_jsonl(demo_data / "batch-1.jsonl")
    plain = TrainingConfig(local=LocalModelOptions(calibration_folds=0))
    score = cross_validate_config(data, plain, folds=2, seed=0)
    assert score.dataset_sha256 == data.sha256() and score.n_examples == len(data)
    assert [f.n_test for f in score.fold_scores] == [70, 70]
    assert 0.5 < score.accuracy <= 1.0 and score.entity_f1 is not None and 0.0 < score.entity_f1 <= 1.0
    calibrated = cross_validate_config(data, TrainingConfig(), folds=2, seed=0)
    assert (calibrated.accuracy, calibrated.macro_f1, calibrated.entity_f1) == (
        score.accuracy,
        score.macro_f1,
        score.entity_f1,
    )
    assert calibrated.config_sha256 != score.config_sha256


def test_sweep_params_refuse_contradictions() -> None:
    with pytest.raises(ValidationError, match="task_runner"):
        SweepParams(data=["x"], grid={"local.C": [1.0]}, dask_address="tcp://127.0.0.1:8786")
    with pytest.raises(ValidationError, match="not a local model option"):
        SweepParams(data=["x"], grid={"local.nope": [1]})
    with pytest.raises(ValidationError, match="exactly one"):
        SweepParams(data=["x"])
    with pytest.raises(ValidationError, match="grid only"):
        SweepParams(data=["x"], configs=[TrainingConfig()], base=TrainingConfig(seed=1))
    runner = task_runner_for(
        SweepParams(data=["x"], grid={"local.C": [1.0]}, task_runner="dask", dask_address="tcp://127.0.0.1:1")
    )
    assert runner is not None and getattr(runner, "address", None) == "tcp://127.0.0.1:1"
    assert task_runner_for(SweepParams(data=["x"], grid={"local.C": [1.0]})) is None


# -- the flow -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sweep-home")


CONFIGS = [
    TrainingConfig(local=LocalModelOptions(C=0.01)),
    TrainingConfig(local=LocalModelOptions(C=1.0)),
    TrainingConfig(local=LocalModelOptions(C=1.0, word_ngram_max=1)),
]


def params(home: Path, demo_data: Path, files: list[str], project: str = PROJECT, **kw: Any) -> SweepParams:
    return SweepParams(
        project=project,
        data=[str(demo_data / f) for f in files],
        test=[str(demo_data / "test.jsonl")],
        store=str(home / "store"),
        workspace=str(home / "work"),
        **kw,
    )


async def _artifacts(flow_run_id: str) -> list[Any]:
    async with get_client() as client:
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(flow_run_id)])),
            flow_run_filter=FlowRunFilter(),
            task_run_filter=TaskRunFilter(),
            sort=ArtifactSort.CREATED_DESC,
            limit=50,
        )


async def _task_runs(flow_run_id: str) -> list[Any]:
    async with get_client() as client:
        return await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=200,
        )


def cv_states(result: SweepResult) -> list[str]:
    """States of the scoring subflow's cv-score-config task runs."""
    assert result.scoring_flow_run_id is not None
    runs = asyncio.run(_task_runs(result.scoring_flow_run_id))
    return sorted(r.state.name for r in runs if r.name.startswith("cv-score-"))


@dataclass
class DaskSweep:
    """The sweep on a 2-worker Dask cluster, and what it left: submissions, the workers' notes, the store."""

    result: SweepResult
    submitted: list[tuple[str, int]]
    notes: list[dict[str, Any]]
    active: Any  # the pointer right after the sweep
    audit: list[dict[str, Any]]  # the audit log right after the sweep


@pytest.fixture(scope="module")
def dask_sweep(home: Path, demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> DaskSweep:
    """The project's first sweep, on Dask, made once per module; the cached rerun's test builds on it."""
    from prefect_dask.task_runners import DaskTaskRunner

    submitted: list[tuple[str, int]] = []
    original_submit = DaskTaskRunner.submit

    def spy_submit(self: DaskTaskRunner, task: Any, *args: Any, **kwargs: Any) -> Any:
        submitted.append((task.name, len(self.client.scheduler_info()["workers"])))
        return original_submit(self, task, *args, **kwargs)

    # The task's function travels to the workers by value, this spy with it: it notes, in the worker
    # process, what it was asked to score.
    spy_log = tmp_path_factory.mktemp("sweep-spy") / "scored.jsonl"
    real = cross_validate_config

    def spy(dataset: Dataset, *args: Any, **kwargs: Any) -> CVScore:
        with open(spy_log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"pid": os.getpid(), "sha": dataset.sha256(), "texts": dataset.texts}) + "\n")
        return real(dataset, *args, **kwargs)

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(DaskTaskRunner, "submit", spy_submit)
        monkeypatch.setattr("flows.sweep.cross_validate_config", spy)
        result = sweep(
            params(
                home,
                demo_data,
                ["batch-1.jsonl", "batch-2.jsonl"],
                configs=CONFIGS,
                cv_folds=3,
                task_runner="dask",
                n_workers=2,
            )
        )
    notes = [json.loads(x) for x in spy_log.read_text(encoding="utf-8").splitlines()]
    active = ModelStore.local(home / "store").active(PROJECT)
    audit = AuditLog(home / "store" / PROJECT / "audit.jsonl").records()
    return DaskSweep(result, submitted, notes, active, audit)


@pytest.mark.slow
def test_sweep_on_a_dask_local_cluster_promotes_the_configuration_cv_chose(
    home: Path, demo_data: Path, dask_sweep: DaskSweep
) -> None:
    result, submitted, notes = dask_sweep.result, dask_sweep.submitted, dask_sweep.notes
    assert isinstance(result, SweepResult)
    # Every configuration was submitted to the 2-worker cluster and scored in a worker process.
    assert submitted == [("cv-score-config", 2)] * len(CONFIGS)
    assert len(notes) == len(CONFIGS)
    assert os.getpid() not in {n["pid"] for n in notes} and len({n["pid"] for n in notes}) <= 2
    # The best is the one the documented rule picks from the CV scores, and the table says so.
    assert result.best_position == choose_best(result.scores, "mean_f1")
    assert result.best_config == CONFIGS[result.best_position]
    assert result.best_config.local.C == 1.0  # C=0.01 underfits: CV must not pick it
    assert result.table[0]["chosen"] == "yes"
    assert result.table[0]["config_sha256"] == result.best_config.sha256()[:12]
    objective = [row["cv_mean_f1"] for row in result.table]
    assert objective == sorted(objective, reverse=True)
    # The normal retrain path promoted the best configuration: manifest, pointer and audit agree.
    retrained = result.retrain
    assert retrained.promoted and retrained.decision.first_model
    store = ModelStore.local(home / "store")
    pointer = dask_sweep.active
    assert pointer is not None and pointer.model_id == retrained.candidate_id
    manifest = store.verify(PROJECT, retrained.candidate_id)
    assert TrainingConfig.model_validate(manifest.config) == result.best_config
    intent, line = dask_sweep.audit
    assert intent["decision"] == "promote-intent" and line["intent_seq"] == intent["seq"]
    assert line["config"] == result.best_config.model_dump(mode="json")
    # Training data only: what the workers hashed is the retrain's training set, which lacks the test set.
    assert {s.dataset_sha256 for s in result.scores} == {line["dataset_sha256"]}
    assert {s.n_examples for s in result.scores} == {retrained.data_info["train_examples"]}
    assert {n["sha"] for n in notes} == {line["dataset_sha256"]}
    test_texts = {normalize_text(t) for t in load_jsonl(demo_data / "test.jsonl").texts}
    for note in notes:
        assert not {normalize_text(t) for t in note["texts"]} & test_texts
    # The comparison table is an artifact with a stable key, one row per configuration.
    artifacts = {a.key: a for a in asyncio.run(_artifacts(str(result.flow_run_id))) if a.key}
    table = artifacts[f"{PROJECT}-sweep"]
    assert table.type == "table"
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [r["config_sha256"] for r in rows] == [r["config_sha256"] for r in result.table]
    assert cv_states(result) == ["Completed"] * len(CONFIGS)


@pytest.mark.slow  # it reruns the Dask sweep (dask_sweep), which it makes first when no test has
def test_unchanged_sweep_on_the_default_runner_is_served_from_the_cache(
    home: Path, demo_data: Path, monkeypatch: pytest.MonkeyPatch, dask_sweep: DaskSweep
) -> None:
    calls: list[str] = []
    monkeypatch.setattr("flows.sweep.cross_validate_config", lambda *a, **k: calls.append("scored"))
    active = ModelStore.local(home / "store").active(PROJECT)
    assert active is not None and active.model_id == dask_sweep.result.retrain.candidate_id
    result = sweep(params(home, demo_data, ["batch-1.jsonl", "batch-2.jsonl"], configs=CONFIGS, cv_folds=3))
    assert calls == []  # every configuration's score came from the cache (same data, config, folds, code)
    assert cv_states(result) == ["Cached"] * len(CONFIGS)
    assert not result.retrain.promoted  # the same model is already active
    assert ModelStore.local(home / "store").active(PROJECT) == active


def test_what_is_scored_is_the_training_set_and_never_the_test_set(
    home: Path, demo_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scored: list[Dataset] = []
    real = cross_validate_config

    def spy(dataset: Dataset, *args: Any, **kwargs: Any) -> CVScore:
        scored.append(dataset)
        return real(dataset, *args, **kwargs)

    monkeypatch.setattr("flows.sweep.cross_validate_config", spy)
    project = "sweeptest-spy"
    # No explicit test set: the sweep freezes one in the store, and the retrain must reuse exactly that one.
    p = params(home, demo_data, ["batch-1.jsonl"], project=project, grid={"local.C": [0.5, 2.0]}, cv_folds=2)
    p = p.model_copy(update={"test": None})
    result = sweep(p)
    assert len(scored) == 2
    frozen = load_jsonl(home / "store" / project / "testset" / "test.jsonl")
    test_texts = {normalize_text(t) for t in frozen.texts}
    everything = {normalize_text(t) for t in load_paths([demo_data / "batch-1.jsonl"]).texts}
    line = AuditLog(home / "store" / project / "audit.jsonl").records()[-1]
    for dataset in scored:
        texts = {normalize_text(t) for t in dataset.texts}
        assert not texts & test_texts
        assert texts == everything - test_texts
        assert dataset.sha256() == line["dataset_sha256"] and line["test_sha256"] == frozen.sha256()
    assert result.retrain.promoted


def test_sweep_command_prints_the_comparison_and_the_decision(
    home: Path, demo_data: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text("base:\n  seed: 3\ngrid:\n  local.C: [0.01, 1.0]\n", encoding="utf-8")
    store = home / "store-cli"
    args = [
        "sweep",
        *("--project", "sweepcli", "--store", str(store), "--configs", str(sweep_file), "--cv-folds", "3"),
        *("--data", str(demo_data / "batch-1.jsonl"), "--test", str(demo_data / "test.jsonl")),
    ]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    assert "2 configurations, mean_f1 by cross-validation, best first" in out.output
    rows = [line for line in out.output.splitlines() if "C=" in line]
    assert len(rows) == 2 and "C=1.0" in rows[0] and "C=0.01" in rows[1], out.output  # best first
    assert "chosen: configuration 2 of the sweep file" in out.output
    assert "PROMOTED" in out.output
    pointer = ModelStore.local(store).active("sweepcli")
    assert pointer is not None
    manifest = ModelStore.local(store).manifest("sweepcli", pointer.model_id)
    assert manifest.config["local"]["C"] == 1.0


def test_sweep_command_refuses_a_bad_sweep_file_with_its_line_before_anything_runs(
    home: Path, demo_data: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text("grid:\n  local.C: [1.0]\n  local.ngram: [1, 2]\n", encoding="utf-8")
    store = home / "store-cli-bad"
    args = [
        *("sweep", "--project", "sweepbad", "--store", str(store), "--configs", str(sweep_file)),
        *("--data", str(demo_data / "batch-1.jsonl")),
    ]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 2, out.output
    assert f"{sweep_file}:3" in out.output and "not a local model option" in out.output
    assert not store.exists(), "nothing was written"
