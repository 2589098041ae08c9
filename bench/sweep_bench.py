"""Sweep speed-up: the cross-validation stage of a sweep on a Dask LocalCluster of 1 worker against 2 workers.

    python -m bench.sweep_bench [--dataset banking77] [--examples 2500] [--configs 4] [--folds 4] [--runs 3]

What is timed, per run: k-fold CV of every configuration of the local model on a stratified subsample of a
shared training set (``nluflow.sweep.cross_validate_config``), done four ways:

* **Dask, warm**: the ``nluflow-sweep-score`` flow of ``flows/sweep.py`` (one mapped ``cv-score-config``
  task per configuration) through ``prefect_dask.DaskTaskRunner`` on a LocalCluster that is already running
  (1 worker, or 2; one thread each), whose workers imported the model code in a warm-up run. The speed-up,
  median(1 worker) / median(2 workers), is the figure with the goal: >= 1.7x for >= 4 configurations on
  2 cores.
* **plain processes**: the same calls spread over a ``ProcessPoolExecutor`` of 1 or 2 warm processes, no
  Prefect, no Dask: the speed-up the machine itself offers at that moment (other processes on the box take
  cores from the 2-worker runs first). Dask's efficiency is its speed-up over this one.
* **Dask, cold**: what ``sweep(task_runner="dask", n_workers=n)`` does: the flow starts its own LocalCluster,
  the workers import Prefect and scikit-learn, the configurations are scored, the cluster is closed.

Runs of the four warm setups alternate within each round (and the order flips every round), so a busy
machine slows them alike; the load average before each run is recorded. Prefect's cache is off for the whole
bench (``PREFECT_TASKS_REFRESH_CACHE``), so every run scores for real; the Prefect API is the embedded server,
started by the warm-up (never timed). Results: tables on stdout and ``bench/results/sweep.json``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

_HOME = Path(tempfile.mkdtemp(prefix="nluflow-sweep-bench-"))
# Before Prefect is imported (here and in the Dask workers, which inherit the environment).
if not os.environ.get("PREFECT_API_URL"):  # the embedded server keeps its database in a scratch folder
    os.environ["PREFECT_HOME"] = str(_HOME / "prefect")
os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(_HOME / "results")
os.environ["PREFECT_TASKS_REFRESH_CACHE"] = "true"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")

from bench.common import (  # noqa: E402
    DatasetsMissing,
    datasets_dir,
    format_table,
    num,
    pct,
    say,
    spread,
    write_results,
)
from nluflow.backends.base import LocalModelOptions, TrainingConfig  # noqa: E402
from nluflow.data.loaders import load_jsonl  # noqa: E402
from nluflow.data.schema import Dataset  # noqa: E402

GOAL = 1.7
DEFAULT_DATASET = "banking77"
DEFAULT_EXAMPLES = 2500
DEFAULT_CONFIGS = 4
DEFAULT_FOLDS = 4
DEFAULT_RUNS = 3
SEED = 0
# Configurations in the order they are taken; the first four are a 2 x 2 grid of C and word n-grams.
CANDIDATES: tuple[dict[str, Any], ...] = (
    {"C": 0.5, "word_ngram_max": 1},
    {"C": 0.5, "word_ngram_max": 2},
    {"C": 2.0, "word_ngram_max": 1},
    {"C": 2.0, "word_ngram_max": 2},
    {"C": 1.0, "word_ngram_max": 2, "char_ngram_max": 4},
    {"C": 1.0, "word_ngram_max": 2, "word_pair_window": 0},
    {"C": 1.0, "word_ngram_max": 3},
    {"C": 4.0, "word_ngram_max": 2},
)
SETUPS: tuple[tuple[str, str, int], ...] = (
    ("plain-1", "plain processes (no Prefect, no Dask)", 1),
    ("plain-2", "plain processes (no Prefect, no Dask)", 2),
    ("warm-1", "Dask, running LocalCluster", 1),
    ("warm-2", "Dask, running LocalCluster", 2),
    ("cold-1", "Dask, the flow starts its LocalCluster", 1),
    ("cold-2", "Dask, the flow starts its LocalCluster", 2),
)


def subsample(data: Dataset, n: int, seed: int) -> Dataset:
    """About ``n`` examples with every intent kept in proportion (seeded, so every run scores the same)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    by_intent: dict[str, list[int]] = {}
    for i, e in enumerate(data.examples):
        by_intent.setdefault(e.intent, []).append(i)
    share = min(1.0, n / len(data))
    keep: list[int] = []
    for intent in sorted(by_intent):
        idx = by_intent[intent]
        take = max(2, round(share * len(idx)))
        keep += sorted(rng.permutation(idx)[:take].tolist())
    return Dataset(
        examples=tuple(data.examples[i] for i in sorted(keep)), source=f"{data.source} (subsample)"
    )


def _plain_job(path: str, config_json: str, folds: int) -> float:
    """One configuration's CV in a pool process (module level, so the pool can import it)."""
    from nluflow.sweep import cross_validate_config

    started = time.perf_counter()
    cross_validate_config(load_jsonl(path), TrainingConfig.model_validate_json(config_json), folds, SEED)
    return time.perf_counter() - started


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--dataset", default=DEFAULT_DATASET, help="Shared dataset folder (train.jsonl).")
    parser.add_argument("--examples", type=int, default=DEFAULT_EXAMPLES, help="Subsample size.")
    parser.add_argument("--configs", type=int, default=DEFAULT_CONFIGS, help=f"2..{len(CANDIDATES)}.")
    parser.add_argument("--folds", type=int, default=DEFAULT_FOLDS, help="Cross-validation folds.")
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS, help="Timed rounds of the warm setups.")
    parser.add_argument("--cold-runs", type=int, default=1, help="Timed cold runs per worker count.")
    args = parser.parse_args(argv)
    if not 2 <= args.configs <= len(CANDIDATES):
        parser.error(f"--configs must be 2..{len(CANDIDATES)}")

    try:
        root = datasets_dir()
    except DatasetsMissing as exc:
        say(str(exc))
        return 2
    train_file = root / args.dataset / "train.jsonl"
    if not train_file.is_file():
        say(f"{train_file}: not found; expected a dataset with a train.jsonl; no benchmark was run")
        return 2

    import distributed
    from prefect_dask.task_runners import DaskTaskRunner

    from flows.sweep import SweepParams, score_configurations, task_runner_for
    from nluflow.pipeline import Workspace, snapshot
    from nluflow.sweep import CVScore, comparison_rows
    from nluflow.sweep_configs import config_labels

    data = subsample(load_jsonl(train_file), args.examples, SEED)
    snap = snapshot(data, Workspace(_HOME / "work"))
    tiny = snapshot(subsample(data, 800, SEED), Workspace(_HOME / "work"))
    configs = [TrainingConfig(seed=SEED, local=LocalModelOptions(**kw)) for kw in CANDIDATES[: args.configs]]
    labels = config_labels(configs)
    say(
        f"sweep bench: {args.dataset}, {len(data)} examples, {len(data.intent_counts())} intents, "
        f"{len(configs)} configurations x {args.folds} folds; scratch {_HOME}"
    )

    samples: dict[str, list[float]] = {}
    loads: dict[str, list[list[float]]] = {}
    scores: list[CVScore] = []

    def timed(key: str, run: Callable[[], Any]) -> Any:
        loads.setdefault(key, []).append(_load())
        started = time.perf_counter()
        out = run()
        seconds = time.perf_counter() - started
        samples.setdefault(key, []).append(seconds)
        say(f"  {key}: {seconds:.1f} s (load {loads[key][-1][:1]})")
        return out

    def dask_run(runner: Any, what: Any = snap) -> list[CVScore]:
        result: list[CVScore] = score_configurations.with_options(task_runner=runner)(
            "sweepbench", what, configs, args.folds, SEED
        )
        return result

    def plain_run(pool: ProcessPoolExecutor, path: str = snap.path) -> list[float]:
        jobs = [pool.submit(_plain_job, path, c.model_dump_json(), args.folds) for c in configs]
        return [j.result() for j in jobs]

    spawn = multiprocessing.get_context("spawn")
    pools = {n: ProcessPoolExecutor(n, mp_context=spawn) for n in (1, 2)}
    clusters: dict[int, distributed.LocalCluster] = {}
    cluster_start: dict[int, float] = {}
    try:
        for n in (1, 2):
            started = time.perf_counter()
            clusters[n] = distributed.LocalCluster(  # type: ignore[no-untyped-call]
                n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
            )
            cluster_start[n] = time.perf_counter() - started
        say("warm-up (not timed): starts the Prefect API and imports the model code in every process")
        for n in (1, 2):
            dask_run(DaskTaskRunner(address=clusters[n].scheduler_address), tiny)
            plain_run(pools[n], tiny.path)
        for r in range(args.runs):
            order = ["plain-1", "plain-2", "warm-1", "warm-2"]
            for key in order if r % 2 == 0 else order[::-1]:
                n = int(key[-1])
                if key.startswith("plain"):
                    timed(key, partial(plain_run, pools[n]))
                else:
                    address = clusters[n].scheduler_address
                    scores = timed(key, partial(dask_run, DaskTaskRunner(address=address)))
    finally:
        for cluster in clusters.values():
            cluster.close()
        for pool in pools.values():
            pool.shutdown()

    for r in range(args.cold_runs):
        for n in (1, 2) if r % 2 == 0 else (2, 1):
            params = SweepParams(data=["-"], configs=configs, task_runner="dask", n_workers=n)
            timed(f"cold-{n}", partial(dask_run, task_runner_for(params)))

    stats = {k: spread(v) for k, v in samples.items()}

    def ratio(a: str, b: str) -> float | None:
        x = stats[a]["median"] if a in stats else None
        y = stats[b]["median"] if b in stats else None
        return x / y if x and y else None

    speedup = {kind: ratio(f"{kind}-1", f"{kind}-2") for kind in ("plain", "warm", "cold")}
    efficiency = speedup["warm"] / speedup["plain"] if speedup["warm"] and speedup["plain"] else None
    overhead = ratio("warm-1", "plain-1")
    rows = []
    for key, what, workers in SETUPS:
        if key not in stats:
            continue
        s = stats[key]
        gain = speedup[key.split("-")[0]] if workers == 2 else None
        rows.append(
            [
                what,
                workers,
                s["n"],
                num(s["median"], 1),
                f"{num(s['min'], 1)}..{num(s['max'], 1)}",
                num(gain, 2, "x") if gain else "",
            ]
        )
    print()
    print(
        f"Sweep CV stage: {len(configs)} configurations x {args.folds} folds on {len(data)} {args.dataset} "
        f"examples, {os.cpu_count()} CPUs (goal: 2 Dask workers >= {GOAL}x faster than 1)"
    )
    print(
        format_table(
            ["setup", "workers", "runs", "median s", "min..max s", "speed-up"],
            rows,
            right=[False, True, True, True, True, True],
        )
    )
    print(
        f"Dask speed-up {num(speedup['warm'], 2, 'x')} where plain processes got "
        f"{num(speedup['plain'], 2, 'x')} (Dask efficiency {pct(efficiency, 0)}); "
        "Prefect + Dask overhead, 1 worker: "
        f"{pct(overhead - 1 if overhead else None, 1)}; LocalCluster start (not in warm runs): "
        f"{cluster_start[1]:.1f} s (1 worker), {cluster_start[2]:.1f} s (2 workers)"
    )
    table = comparison_rows(scores, "mean_f1", labels) if scores else []
    if table:
        print()
        print(
            format_table(
                ["rank", "config", "cv accuracy", "cv macro F1", "fit s / fold"],
                [
                    [
                        r["rank"],
                        r["config"],
                        pct(r["cv_accuracy"]),
                        pct(r["cv_macro_f1"]),
                        num(r["fit_seconds_per_fold"], 2),
                    ]
                    for r in table
                ],
                right=[True, False, True, True, True],
            )
        )
    path = write_results(
        "sweep",
        {
            "dataset": args.dataset,
            "examples": len(data),
            "intents": len(data.intent_counts()),
            "configs": [c.local.model_dump(mode="json") for c in configs],
            "folds": args.folds,
            "goal_speedup": GOAL,
            "speedup": speedup,
            "dask_efficiency_vs_plain": efficiency,
            "overhead_warm1_vs_plain1": overhead,
            "timings_seconds": stats,
            "load_average_before_runs": loads,
            "cluster_start_seconds": cluster_start,
            "cv_table": table,
        },
    )
    say(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
