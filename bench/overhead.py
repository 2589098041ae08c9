"""Orchestration overhead: the retrain flow against the same work done by bare ``nluflow`` calls, and an
unchanged rerun against the first run.

    python -m bench.overhead [--datasets rasa_financial_demo,banking77] [--reps 3] [--api-url URL]

The bench starts ``prefect server start`` on 127.0.0.1 with a temporary PREFECT_HOME (or uses ``--api-url``)
and waits for it to be healthy, so server start-up is never timed. One worker process then runs, per dataset:
a warm-up (flow, rerun and bare path on a small subset; not timed), and per repetition

1. seeds an active model (trained on a 30 % subset, its own seed) into a fresh bare store and a fresh flow
   store, so both paths evaluate a candidate *and* an active model, as a real retrain does;
2. times the bare path: load, validate, train (local backend), evaluate candidate and active model, decide,
   render the figures and the report, store + verify + activate, audit line;
3. times ``retrain(RetrainParams(...))`` on the same files, seed and gates (first run: nothing cached);
4. times the same call again (unchanged rerun: training, evaluation and figures come from the cache).

Bare and flow runs alternate which goes first. Each repetition uses new seeds and folders, so no timed first
run finds anything in Prefect's cache (the JSON counts the cached task runs of every flow run to show it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    PROGRESS_ENV,
    REPO,
    DatasetsMissing,
    ProgressRelay,
    child_env,
    dataset_spec,
    datasets_dir,
    format_table,
    num,
    pct,
    run_child,
    say,
    spread,
    write_results,
)

DEFAULT_DATASETS = ("rasa_financial_demo", "banking77")
DEFAULT_REPS = 3
FLOW_GOAL = 1.15  # flow / bare
RERUN_GOAL = 0.10  # unchanged rerun / first run
ACTIVE_FRACTION = 0.3  # share of the training data the seeded active model is trained on
WARMUP_FRACTION = 0.1
WARMUP_MIN_PER_INTENT = 15
SERVER_START_TIMEOUT = 180.0
WORKER_TIMEOUT = 4 * 3600.0
_CANDIDATE_SEED = 100
_ACTIVE_SEED = 500
SERVER_PGID_ENV = "NLUFLOW_BENCH_SERVER_PGID"  # the worker adds the server's CPU seconds to the flow's


# ---------------------------------------------------------------------------------------------- bare path


class StageTimer:
    """Seconds per named stage, in order."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


def bare_retrain(
    project: str,
    train_path: Path,
    test_path: Path,
    store_root: Path,
    work: Path,
    seed: int,
    target_precision: float = 0.95,
) -> dict[str, Any]:
    """What the retrain flow does for a local model, as plain ``nluflow`` calls in this process."""
    from nluflow.audit import audit_record
    from nluflow.backends.base import JobState, ModelRef, TrainingConfig
    from nluflow.backends.local import LocalBackend
    from nluflow.data.loaders import load_paths
    from nluflow.data.validation import ValidationPolicy, validate
    from nluflow.errors import TrainingFailedError
    from nluflow.evaluation.gates import GatePolicy, decide
    from nluflow.evaluation.metrics import evaluate
    from nluflow.evaluation.plots import render_figures
    from nluflow.pipeline import Workspace, model_id_for, remove_test_overlap, training_key
    from nluflow.report import ReportInputs, render_run_report
    from nluflow.store import ModelStore
    from nluflow.store.audit_log import AuditLog

    started, cpu = time.perf_counter(), time.process_time()
    timer = StageTimer()
    config = TrainingConfig(seed=seed)
    ws = Workspace(work)
    with timer("load"):
        data = load_paths([train_path])
        test = load_paths([test_path])
    with timer("validate"):
        train, removed = remove_test_overlap(data, test)
        report = validate(train, test, ValidationPolicy())
        report.raise_for_blocking()
        if report.dropped:
            train = report.usable(train)
    with timer("train"):
        backend = LocalBackend(work / "backends" / "local")
        key = training_key(train.sha256(), config, backend.name)
        model_id = model_id_for(key)
        job = backend.submit(train, config, key)
        status = backend.status(job)
        if status.state is not JobState.SUCCEEDED:
            raise TrainingFailedError(f"bare path: training ended {status.state.value}: {status.message}")
        cand_dir = ws.candidate(project, model_id)
        candidate = backend.fetch(job, cand_dir).model_copy(
            update={"model_id": model_id, "path": str(cand_dir)}
        )
    with timer("evaluate_candidate"):
        cand_eval = evaluate(test, backend.predict(candidate, test.texts), target_precision)
    with timer("evaluate_active"):
        store = ModelStore.local(store_root, create=True)
        pointer = store.active(project)
        active_ref: ModelRef | None = None
        active_eval = None
        if pointer is not None:
            path = store.materialize(project, pointer.model_id, ws.champion(project, pointer.model_id))
            manifest = store.manifest(project, pointer.model_id)
            active_ref = ModelRef(backend=manifest.backend, model_id=manifest.model_id, path=str(path))
            active_eval = evaluate(test, backend.predict(active_ref, test.texts), target_precision)
    with timer("decide"):
        decision = decide(cand_eval, active_eval, GatePolicy())
    with timer("report"):
        outdir = ws.run_dir(project, "bare")
        figures = render_figures(cand_eval, outdir)
        (outdir / "report.md").write_text(
            render_run_report(
                ReportInputs(
                    project=project,
                    candidate_id=model_id,
                    active_id=active_ref.model_id if active_ref else None,
                    decision=decision,
                    candidate=cand_eval,
                    active=active_eval,
                    validation=report,
                    data_info={"removed_from_train": removed, "test_source": "given"},
                    figures={name: str(path) for name, path in figures.items()},
                ),
                embed_figures=False,
            ),
            encoding="utf-8",
        )
    promoted = False
    with timer("store"):
        if decision.promote and (active_ref is None or active_ref.model_id != model_id):
            store.add_model(
                project,
                model_id,
                cand_dir,
                backend=backend.name,
                dataset_sha256=train.sha256(),
                test_sha256=test.sha256(),
                config=config.model_dump(mode="json"),
                metrics=cand_eval.headline(),
                training_metrics=dict(candidate.metrics),
            )
            store.verify(project, model_id)
            store.activate(project, model_id, reason=decision.summary())
            promoted = True
    with timer("audit"):
        AuditLog(store_root / project / "audit.jsonl").append(
            audit_record(
                run_id="bare",
                flow_run_id=None,
                project=project,
                dataset_sha256=train.sha256(),
                test_sha256=test.sha256(),
                backend=backend.name,
                job_id=job.job_id,
                model_id=model_id,
                config=config.model_dump(mode="json"),
                duration_seconds=round(time.perf_counter() - started, 3),
                metrics=cand_eval.headline(),
                decision="promote" if decision.promote else "reject",
                promoted=promoted,
                reasons=decision.reasons,
                previous_model_id=active_ref.model_id if active_ref else None,
                manifest_sha256=store.manifest(project, model_id).sha256() if promoted else None,
            )
        )
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
        "stages": timer.seconds,
        "model_id": model_id,
        "promoted": promoted,
        "intent_accuracy": cand_eval.accuracy,
        "active_accuracy": active_eval.accuracy if active_eval else None,
    }


def seed_active_model(train_path: Path, stores: Sequence[tuple[Path, str]], seed: int, scratch: Path) -> str:
    """Train a weaker model (on a stratified share of the data); make it active in each (store, project)."""
    from nluflow.backends.base import TrainingConfig
    from nluflow.data.loaders import load_paths
    from nluflow.data.splits import stratified_split
    from nluflow.models.nlu import NLUModel
    from nluflow.pipeline import model_id_for, training_key
    from nluflow.store import ModelStore

    config = TrainingConfig(seed=seed)
    _, share = stratified_split(load_paths([train_path]), test_fraction=ACTIVE_FRACTION, seed=seed)
    model_id = model_id_for(training_key(share.sha256(), config, "local"))
    folder = scratch / model_id
    NLUModel(config.local, random_state=seed).fit(share).save(folder)
    for root, project in stores:
        store = ModelStore.local(root, create=True)
        store.add_model(
            project,
            model_id,
            folder,
            backend="local",
            dataset_sha256=share.sha256(),
            test_sha256=None,
            config=config.model_dump(mode="json"),
            metrics={},
        )
        store.activate(project, model_id, reason="seeded by bench.overhead")
    shutil.rmtree(folder, ignore_errors=True)
    return model_id


# ---------------------------------------------------------------------------------------------- worker


def group_cpu_seconds(pgid: int) -> float | None:
    """User + system CPU seconds of the live processes in process group ``pgid`` (/proc; Linux only)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    ticks = 0
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, ..., utime, stime
        if int(fields[2]) == pgid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _with_server_cpu(call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``call()``'s result with the CPU seconds the Prefect server spent meanwhile (None when unknown)."""
    pgid = int(os.environ.get(SERVER_PGID_ENV) or 0)
    before = group_cpu_seconds(pgid) if pgid else None
    result = call()
    after = group_cpu_seconds(pgid) if pgid else None
    result["server_cpu_seconds"] = after - before if before is not None and after is not None else None
    return result


def _flow_run(project: str, train: Path, test: Path, store: Path, work: Path, seed: int) -> dict[str, Any]:
    from flows.retrain import RetrainParams, retrain
    from nluflow.backends.base import TrainingConfig

    params = RetrainParams(
        project=project,
        data=[str(train)],
        test=[str(test)],
        store=str(store),
        workspace=str(work),
        config=TrainingConfig(seed=seed),
    )
    started, cpu = time.perf_counter(), time.process_time()
    result = retrain(params)
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
        "flow_body_seconds": result.duration_seconds,
        "flow_run_id": result.flow_run_id,
        "model_id": result.candidate_id,
        "promoted": result.promoted,
        "intent_accuracy": result.candidate_metrics["intent_accuracy"],
    }


def _task_runs(flow_run_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per flow run: the state names of its task runs (``Cached`` = taken from the cache) and the run time
    the API recorded per task."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    out: dict[str, dict[str, Any]] = {}
    with get_client(sync_client=True) as client:
        for run_id in flow_run_ids:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(run_id)])),
                sort=TaskRunSort.EXPECTED_START_TIME_ASC,  # 3.8.8's client sends a null sort otherwise: 422
                limit=200,
            )
            seconds: dict[str, float] = {}
            for r in runs:
                name = r.name.rsplit("-", 1)[0]  # task run names are "<task name>-<short id>"
                seconds[name] = seconds.get(name, 0.0) + r.total_run_time.total_seconds()
            out[run_id] = {
                "states": dict(Counter(str(r.state.name) for r in runs if r.state is not None)),
                "task_seconds": {k: round(v, 3) for k, v in seconds.items()},
            }
    return out


def _warm_up(train: Path, test: Path, base: Path, log: list[str]) -> None:
    from nluflow.data.loaders import load_paths
    from nluflow.data.splits import stratified_split

    data = load_paths([train])
    small_path = train
    # A share of a large dataset; small ones whole (validation wants 10 examples per intent).
    if len(data) * WARMUP_FRACTION >= WARMUP_MIN_PER_INTENT * len(data.intent_counts()):
        _, small = stratified_split(data, test_fraction=WARMUP_FRACTION, seed=1)
        small_path = small.write_jsonl(base / "warmup-train.jsonl")
    t0 = time.perf_counter()
    _flow_run("warmup", small_path, test, base / "flow" / "store", base / "flow" / "work", seed=1)
    _flow_run("warmup", small_path, test, base / "flow" / "store", base / "flow" / "work", seed=1)
    bare_retrain("warmup", small_path, test, base / "bare" / "store", base / "bare" / "work", seed=1)
    log.append(f"warm-up took {time.perf_counter() - t0:.1f} s")


def measure_dataset(name: str, train: Path, test: Path, reps: int, base: Path) -> dict[str, Any]:
    """The warm-up and ``reps`` timed repetitions on one dataset (needs a Prefect API)."""
    log: list[str] = []
    _warm_up(train, test, base / "warmup", log)
    say(f"overhead: {name}: {log[-1]}")
    samples: list[dict[str, Any]] = []
    for i in range(reps):
        rep = base / f"rep-{i}"
        project = f"bench-{name.replace('_', '-')}-{i}"
        bare_store, flow_store = rep / "bare" / "store", rep / "flow" / "store"
        active_id = seed_active_model(
            train, [(bare_store, project), (flow_store, project)], _ACTIVE_SEED + i, rep / "scratch"
        )
        seed = _CANDIDATE_SEED + i

        def bare(rep: Path = rep, project: str = project, seed: int = seed) -> dict[str, Any]:
            return bare_retrain(project, train, test, rep / "bare" / "store", rep / "bare" / "work", seed)

        def flow(rep: Path = rep, project: str = project, seed: int = seed) -> dict[str, Any]:
            return _flow_run(project, train, test, rep / "flow" / "store", rep / "flow" / "work", seed)

        if i % 2 == 0:
            bare_result, flow_result = _with_server_cpu(bare), _with_server_cpu(flow)
        else:
            flow_result = _with_server_cpu(flow)
            bare_result = _with_server_cpu(bare)
        rerun_result = _with_server_cpu(flow)
        sample = {
            "rep": i,
            "order": "bare first" if i % 2 == 0 else "flow first",
            "active_model": active_id,
            "bare_seconds": bare_result["seconds"],
            "flow_seconds": flow_result["seconds"],
            "rerun_seconds": rerun_result["seconds"],
            "bare": bare_result,
            "flow": flow_result,
            "rerun": rerun_result,
            "same_candidate": bare_result["model_id"] == flow_result["model_id"],
            "same_accuracy": abs(bare_result["intent_accuracy"] - flow_result["intent_accuracy"]) < 1e-12,
        }
        samples.append(sample)
        say(
            f"overhead: {name} rep {i + 1}/{reps}: bare {sample['bare_seconds']:.2f} s, flow "
            f"{sample['flow_seconds']:.2f} s, rerun {sample['rerun_seconds']:.2f} s"
        )
        shutil.rmtree(rep, ignore_errors=True)  # keep the temp folder small; results are in the samples
    ids = [s[k]["flow_run_id"] for s in samples for k in ("flow", "rerun") if s[k]["flow_run_id"]]
    time.sleep(2.0)  # task run states reach the API as events; give the last ones a moment
    try:
        task_runs = _task_runs(ids)
    except Exception as exc:  # evidence, not the measurement: keep the timings regardless
        log.append(f"task runs not read: {type(exc).__name__}: {exc}")
        task_runs = {}
    for s in samples:
        for k in ("flow", "rerun"):
            s[k].update(task_runs.get(s[k]["flow_run_id"], {}))
    return {"dataset": name, "reps": reps, "samples": samples, "log": log}


def _worker_main(args: argparse.Namespace) -> int:
    root = datasets_dir()
    results = []
    for name in args.datasets.split(","):
        spec = dataset_spec(name)
        train, test = spec.train_path(root), spec.test_paths(root)["test"]
        base = Path(args.workdir) / name
        results.append(measure_dataset(name, train, test, args.reps, base))
    Path(args.out).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


# ---------------------------------------------------------------------------------------------- summary


def summarize(dataset: str, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Medians of the timed runs and of the paired per-repetition ratios, against the goals."""
    bare = [float(s["bare_seconds"]) for s in samples]
    flow = [float(s["flow_seconds"]) for s in samples]
    rerun = [float(s["rerun_seconds"]) for s in samples]
    ratio = [f / b for f, b in zip(flow, bare, strict=True) if b > 0]
    rerun_ratio = [r / f for r, f in zip(rerun, flow, strict=True) if f > 0]
    # CPU seconds of the worker process (all its threads) plus the server's: far less disturbed by other
    # jobs on the box than wall time.
    cpu = [(_cpu(s["flow"]), _cpu(s["bare"])) for s in samples if "cpu_seconds" in s.get("bare", {})]
    ratio_s, rerun_s = spread(ratio), spread(rerun_ratio)
    return {
        "dataset": dataset,
        "flow_over_bare_cpu": spread([f / b for f, b in cpu if b > 0]),
        "bare_seconds": spread(bare),
        "flow_seconds": spread(flow),
        "rerun_seconds": spread(rerun),
        "overhead_seconds": spread([f - b for f, b in zip(flow, bare, strict=True)]),
        "flow_over_bare": ratio_s,
        "rerun_over_first": rerun_s,
        "flow_goal": FLOW_GOAL,
        "rerun_goal": RERUN_GOAL,
        "flow_goal_met": None if ratio_s["median"] is None else ratio_s["median"] <= FLOW_GOAL,
        "rerun_goal_met": None if rerun_s["median"] is None else rerun_s["median"] <= RERUN_GOAL,
    }


def _cpu(run: Mapping[str, Any]) -> float:
    return float(run["cpu_seconds"]) + float(run.get("server_cpu_seconds") or 0.0)


def _range(s: Mapping[str, Any], digits: int = 2, unit: str = "") -> str:
    if s["median"] is None:
        return "—"
    return f"{num(s['median'], digits, unit)} ({num(s['min'], digits)}–{num(s['max'], digits)})"


def overhead_table(summaries: Sequence[Mapping[str, Any]]) -> str:
    body = []
    for s in summaries:
        body.append(
            [
                s["dataset"],
                s["bare_seconds"]["n"],
                _range(s["bare_seconds"], 2, " s"),
                _range(s["flow_seconds"], 2, " s"),
                _range(s["overhead_seconds"], 2, " s"),
                _range(s["flow_over_bare"], 3, "×"),
                f"≤ {s['flow_goal']:.2f}× " + _verdict(s["flow_goal_met"]),
                num(s["flow_over_bare_cpu"]["median"], 3, "×"),
                _range(s["rerun_seconds"], 2, " s"),
                f"{pct(s['rerun_over_first']['median'], 1)}",
                f"≤ {pct(s['rerun_goal'], 0)} " + _verdict(s["rerun_goal_met"]),
            ]
        )
    return format_table(
        [
            "dataset",
            "reps",
            "bare s",
            "flow s (first run)",
            "flow − bare",
            "flow / bare",
            "goal",
            "CPU flow / bare (worker + server)",
            "unchanged rerun s",
            "rerun / first",
            "goal",
        ],
        body,
        right=[False, True, True, True, True, True, False, True, True, True, False],
    )


def _verdict(met: bool | None) -> str:
    return "not measured" if met is None else ("met" if met else "missed")


def render(summaries: Sequence[Mapping[str, Any]]) -> str:
    return "\n\n".join(
        [
            "## Orchestration overhead (medians, min–max in brackets; server start excluded)",
            overhead_table(summaries),
        ]
    )


# ---------------------------------------------------------------------------------------------- server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prefect_env(home: Path, api_url: str) -> dict[str, str]:
    """A clean Prefect environment in ``home``: no setting of the caller's leaks into the measurement."""
    env = {k: v for k, v in child_env().items() if not k.startswith(("PREFECT_", "NLUFLOW_"))}
    env.update(
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(home / "results"),
        PREFECT_LOGGING_EXTRA_LOGGERS="nluflow",
        NLUFLOW_HOME=str(home / "nluflow"),
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    return env


@dataclass(frozen=True)
class Server:
    api_url: str
    pgid: int  # the server's own process group (it was started in a new session)


@contextlib.contextmanager
def prefect_server(home: Path) -> Iterator[Server]:
    """``prefect server start`` on a free 127.0.0.1 port with PREFECT_HOME in ``home``; yields it once
    ``/api/health`` answers, and stops the server (its own process group) afterwards."""
    import httpx

    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    prefect = Path(sys.executable).with_name("prefect")
    cmd = [str(prefect)] if prefect.exists() else [sys.executable, "-m", "prefect"]
    log_path = home / "server.log"
    started = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*cmd, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=prefect_env(home, api_url),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so stopping it stops its children too
        )
    try:
        with httpx.Client(timeout=5.0, trust_env=False) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"prefect server exited with code {proc.returncode} before it was healthy; "
                        f"see {log_path}:\n{log_path.read_text(errors='replace')[-2000:]}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    if client.get(f"{api_url}/health").status_code == 200:
                        break
                if time.monotonic() - started > SERVER_START_TIMEOUT:
                    raise RuntimeError(
                        f"prefect server not healthy after {SERVER_START_TIMEOUT:.0f} s; see {log_path}"
                    )
                time.sleep(0.5)
        waited = time.monotonic() - started
        say(f"overhead: prefect server healthy at {api_url} after {waited:.1f} s (not timed)")
        yield Server(api_url=api_url, pgid=proc.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


# ---------------------------------------------------------------------------------------------- CLI


def run(
    datasets: Sequence[str] = DEFAULT_DATASETS,
    reps: int = DEFAULT_REPS,
    *,
    api_url: str | None = None,
    results_dir: Path | None = None,
) -> dict[str, Any]:
    """Start a server (unless given one), run the worker, print the table, write ``overhead.json``."""
    root = datasets_dir()
    for name in datasets:
        missing = dataset_spec(name).missing(root)
        if missing:
            raise DatasetsMissing(f"{missing[0]} not found; the overhead bench needs it")
    with tempfile.TemporaryDirectory(prefix="nluflow-overhead-") as tmp:
        home = Path(tmp)
        out = home / "samples.json"
        args = [
            "-m",
            "bench.overhead",
            "--worker",
            "--datasets",
            ",".join(datasets),
            "--reps",
            str(reps),
            "--workdir",
            str(home / "work"),
            "--out",
            str(out),
        ]
        with contextlib.ExitStack() as stack:
            server = None if api_url else stack.enter_context(prefect_server(home))
            url = server.api_url if server is not None else api_url
            assert url is not None
            say(f"overhead: worker running {', '.join(datasets)} × {reps} repetitions ...")
            progress = home / "progress.log"
            env = {**prefect_env(home, url), PROGRESS_ENV: str(progress)}
            if server is not None:
                env[SERVER_PGID_ENV] = str(server.pgid)
            relay = ProgressRelay(progress)
            child = run_child(args, env=env, timeout=WORKER_TIMEOUT, cwd=REPO, on_poll=relay)
            relay()
        if not child.ok or not out.is_file():
            raise RuntimeError(f"overhead worker failed (exit {child.returncode}):\n{child.tail()}")
        raw = json.loads(out.read_text(encoding="utf-8"))
    summaries = [summarize(d["dataset"], d["samples"]) for d in raw]
    payload = {
        "goals": {"flow_over_bare": FLOW_GOAL, "rerun_over_first": RERUN_GOAL},
        "server": api_url or "prefect server start on 127.0.0.1 (started by the bench, not timed)",
        "method": __doc__,
        "summaries": summaries,
        "datasets": raw,
    }
    path = write_results("overhead", payload, results_dir)
    print(render(summaries), flush=True)
    say(f"overhead: results written to {path}")
    return payload


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DEFAULT_DATASETS))
    parser.add_argument("--reps", type=int, default=DEFAULT_REPS)
    parser.add_argument(
        "--api-url", default=None, help="use this running Prefect API instead of starting one"
    )
    parser.add_argument("--results-dir", type=Path, default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker_main(args)
    try:
        run(
            [d.strip() for d in args.datasets.split(",") if d.strip()],
            args.reps,
            api_url=args.api_url,
            results_dir=args.results_dir,
        )
    except DatasetsMissing as exc:
        say(f"overhead: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
