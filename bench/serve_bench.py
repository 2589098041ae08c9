"""Serving benchmark: `nluflow serve` with the default TF-IDF model, latency and throughput on 127.0.0.1.

    .venv/bin/python bench/serve_bench.py [--seconds 8] [--rate 500] [--concurrency 1 4 16]

What it does, bounded in time and request count:

1. trains the default local model (TF-IDF + linear intents, CRF entities) on the in-repo SNIPS demo batches,
   stores and activates it in a temporary model store;
2. measures in-process ``NLUModel.parse`` predictions per second at several batch sizes;
3. starts ``nluflow.apps.serve.run`` in a *separate process* (the server and this load generator do not share
   a GIL) and drives ``POST /model/parse`` with the demo test utterances:
   - closed loop: N connections, each sending its next request when the previous answer arrives
     (concurrency 1 is the bare latency; more connections show the peak throughput);
   - open loop: requests scheduled at a fixed rate (the goal's 500/s); latency counts from the scheduled
     send time, so a server that falls behind cannot hide it (no coordinated omission).

The client is a minimal asyncio HTTP/1.1 keep-alive client (a few dozen microseconds per request), so the
figures describe the server, not an HTTP library. Goal (issue 7): p99 <= 10 ms and >= 500 requests/s on
2 cores. Prints a table and writes ``bench/results/serve.json``. Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "examples" / "snips-demo"
RESULTS = REPO / "bench" / "results" / "serve.json"
PROJECT = "bench"
GOAL_P99_MS = 10.0
GOAL_RPS = 500.0
READY_TIMEOUT_SECONDS = 120.0
REQUEST_TIMEOUT_SECONDS = 10.0
MAX_REQUESTS_PER_PHASE = 50_000
DEFAULT_MAX_BATCH = 64  # nluflow.apps.serve.DEFAULT_MAX_BATCH; not imported so --help stays instant


# ------------------------------------------------------------------------------------------------ setup


def build_store(root: Path) -> tuple[Path, list[str], dict[str, Any]]:
    """Train the default model on the demo batches, store and activate it; return store, texts, info."""
    from nluflow.backends.base import LocalModelOptions
    from nluflow.data.loaders import load_file, load_paths
    from nluflow.models.nlu import NLUModel
    from nluflow.store import ModelStore

    train = load_paths([DEMO / "batch-1.jsonl", DEMO / "batch-2.jsonl"])
    texts = load_file(DEMO / "test.jsonl").texts
    started = time.perf_counter()
    model = NLUModel(LocalModelOptions(), random_state=0).fit(train)
    fit_seconds = time.perf_counter() - started
    model_dir = root / "model"
    model.save(model_dir)
    store = ModelStore.local(root / "store", create=True)
    store.add_model(
        PROJECT,
        "tfidf-default",
        model_dir,
        backend="local",
        dataset_sha256=train.sha256(),
        test_sha256=None,
        config=LocalModelOptions().model_dump(mode="json"),
        metrics={},
    )
    store.activate(PROJECT, "tfidf-default", reason="serve benchmark")
    info = {
        "train_examples": len(train),
        "request_texts": len(texts),
        "fit_seconds": round(fit_seconds, 2),
        "model_bytes": sum(p.stat().st_size for p in model_dir.iterdir()),
    }
    return root / "store", texts, info


def in_process(model_dir: Path, texts: list[str], seconds: float) -> list[dict[str, Any]]:
    """``NLUModel.parse`` predictions per second at several batch sizes (no HTTP)."""
    from nluflow.models.nlu import NLUModel

    model = NLUModel.load(model_dir)
    model.parse(texts[:8])  # warm-up
    rows = []
    for size in (1, 8, 32, len(texts)):
        done = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            for i in range(0, len(texts), size):
                done += len(model.parse(texts[i : i + size]))
        elapsed = time.perf_counter() - started
        rows.append({"batch_size": size, "predictions_per_second": round(done / elapsed, 1)})
    return rows


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(store: Path, port: int, max_batch: int) -> subprocess.Popen[bytes]:
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "from nluflow.apps.serve import ServeOptions, run\n"
        f"options = ServeOptions(max_batch={max_batch}, log_level='warning')\n"
        f"run('127.0.0.1', {port}, {PROJECT!r}, sys.argv[1], options)\n"
    )
    return subprocess.Popen([sys.executable, "-c", code, str(store)], cwd=REPO)


# ------------------------------------------------------------------------------------------------ client


class Connection:
    """One HTTP/1.1 keep-alive connection that sends ``POST /model/parse`` and reads the answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
        self.reader, self.writer, self.port = reader, writer, port

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, port)

    async def parse(self, body: bytes) -> tuple[int, bytes]:
        head = (
            f"POST /model/parse HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


def _ok(status: int, payload: bytes) -> bool:
    if status != 200:
        return False
    try:
        parsed = json.loads(payload)
    except ValueError:
        return False
    return isinstance(parsed.get("intent", {}).get("name"), str)


def _summary(
    name: str, latencies: list[float], failures: int, elapsed: float, **extra: Any
) -> dict[str, Any]:
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000

    return {
        "phase": name,
        **extra,
        "requests": len(latencies),
        "failures": failures,
        "seconds": round(elapsed, 2),
        "throughput_rps": round(len(latencies) / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_ms": round(pct(0.50), 2),
        "p90_ms": round(pct(0.90), 2),
        "p99_ms": round(pct(0.99), 2),
        "max_ms": round(pct(1.0), 2),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 2) if ordered else float("nan"),
    }


async def closed_loop(port: int, bodies: list[bytes], connections: int, seconds: float) -> dict[str, Any]:
    conns = [await Connection.open(port) for _ in range(connections)]
    latencies: list[float] = []
    failures = 0
    deadline = time.perf_counter() + seconds
    counter = 0

    async def worker(conn: Connection) -> None:
        nonlocal failures, counter
        while time.perf_counter() < deadline and counter < MAX_REQUESTS_PER_PHASE:
            body = bodies[counter % len(bodies)]
            counter += 1
            sent = time.perf_counter()
            try:
                status, payload = await asyncio.wait_for(conn.parse(body), REQUEST_TIMEOUT_SECONDS)
            except (OSError, asyncio.IncompleteReadError, TimeoutError):
                failures += 1
                return
            latencies.append(time.perf_counter() - sent)
            if not _ok(status, payload):
                failures += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - started
    for c in conns:
        c.close()
    return _summary("closed loop", latencies, failures, elapsed, connections=connections)


async def open_loop(port: int, bodies: list[bytes], rate: float, seconds: float) -> dict[str, Any]:
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(64):
        pool.put_nowait(await Connection.open(port))
    latencies: list[float] = []
    failures = 0
    total = min(int(rate * seconds), MAX_REQUESTS_PER_PHASE)

    async def one(i: int, scheduled: float) -> None:
        nonlocal failures
        conn = await pool.get()
        try:
            status, payload = await asyncio.wait_for(
                conn.parse(bodies[i % len(bodies)]), REQUEST_TIMEOUT_SECONDS
            )
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            failures += 1
            return  # the connection is in an unknown state: drop it
        latencies.append(time.perf_counter() - scheduled)  # from the scheduled time: queueing counts
        pool.put_nowait(conn)
        if not _ok(status, payload):
            failures += 1

    tasks = []
    started = time.perf_counter()
    for i in range(total):
        scheduled = started + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    while not pool.empty():
        pool.get_nowait().close()
    return _summary("open loop", latencies, failures, elapsed, offered_rps=rate)


async def wait_ready(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.perf_counter() + READY_TIMEOUT_SECONDS
    while time.perf_counter() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with code {server.returncode} before it was ready")
        try:
            conn = await Connection.open(port)
        except OSError:
            await asyncio.sleep(0.2)
            continue
        conn.close()
        return
    raise SystemExit(f"the server was not ready after {READY_TIMEOUT_SECONDS:.0f} s")


async def drive(port: int, texts: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    bodies = [json.dumps({"text": t}).encode() for t in texts]
    await closed_loop(port, bodies, 4, min(2.0, args.seconds))  # warm-up, not reported
    phases = [await closed_loop(port, bodies, c, args.seconds) for c in args.concurrency]
    phases.append(await open_loop(port, bodies, args.rate, args.seconds))
    return phases


# ------------------------------------------------------------------------------------------------ main


def _fmt_row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="Length of each load phase.")
    parser.add_argument("--rate", type=float, default=GOAL_RPS, help="Offered load of the open-loop phase.")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 4, 16], help="Closed-loop connections."
    )
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="Server's batch cap.")
    parser.add_argument("--output", type=Path, default=RESULTS, help="Where to write the JSON results.")
    args = parser.parse_args()

    load_at_start = round(os.getloadavg()[0], 2)
    root = Path(tempfile.mkdtemp(prefix="nluflow-serve-bench-"))
    server: subprocess.Popen[bytes] | None = None
    try:
        print("training the default TF-IDF model on the SNIPS demo batches ...", flush=True)
        store, texts, info = build_store(root)
        print("in-process predictions per second ...", flush=True)
        batch_rows = in_process(root / "model", texts, min(3.0, args.seconds))
        port = free_port()
        server = start_server(store, port, args.max_batch)
        asyncio.run(wait_ready(port, server))
        print(f"serving on 127.0.0.1:{port}; driving load ...", flush=True)
        phases = asyncio.run(drive(port, texts, args))
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
        shutil.rmtree(root, ignore_errors=True)

    open_phase = phases[-1]
    peak = max(p["throughput_rps"] for p in phases)
    verdict = {
        "p99_ms_at_offered_rate": open_phase["p99_ms"],
        "achieved_rps_at_offered_rate": open_phase["throughput_rps"],
        "peak_rps": peak,
        "p99_goal_met": bool(open_phase["p99_ms"] <= GOAL_P99_MS),
        "throughput_goal_met": bool(peak >= GOAL_RPS),
        "kept_up_with_offered_rate": bool(open_phase["throughput_rps"] >= 0.98 * args.rate),
        "failures": sum(p["failures"] for p in phases),
    }
    result: dict[str, Any] = {
        "benchmark": "serve",
        "goal": {"p99_ms": GOAL_P99_MS, "requests_per_second": GOAL_RPS},
        "model": "default local model (TF-IDF + linear intents, CRF entities)",
        "data": info,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1m_at_start": load_at_start,
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "client": "asyncio HTTP/1.1 keep-alive, separate process from the server",
        "server": {"max_batch": args.max_batch},
        "in_process": batch_rows,
        "http": phases,
        "summary": verdict,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    print()
    print("in-process NLUModel.parse")
    widths = [10, 16]
    print(_fmt_row(["batch", "predictions/s"], widths))
    for row in batch_rows:
        print(_fmt_row([str(row["batch_size"]), f"{row['predictions_per_second']:.0f}"], widths))
    print()
    print("HTTP POST /model/parse on 127.0.0.1 (server and client in separate processes)")
    widths = [12, 12, 9, 9, 8, 8, 8, 8, 9]
    head = ["phase", "load", "requests", "failed", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms"]
    print(_fmt_row(head, widths))
    for p in phases:
        load = f"{p['connections']} conn" if "connections" in p else f"{p['offered_rps']:.0f}/s offered"
        cells = [
            p["phase"],
            load,
            str(p["requests"]),
            str(p["failures"]),
            f"{p['throughput_rps']:.0f}",
            f"{p['p50_ms']:.2f}",
            f"{p['p90_ms']:.2f}",
            f"{p['p99_ms']:.2f}",
            f"{p['max_ms']:.2f}",
        ]
        print(_fmt_row(cells, widths))
    print()
    print(
        f"goal p99 <= {GOAL_P99_MS:.0f} ms at {args.rate:.0f} req/s offered: "
        f"p99 {open_phase['p99_ms']:.2f} ms, {open_phase['throughput_rps']:.0f} req/s answered "
        f"({'met' if verdict['p99_goal_met'] else 'NOT met'})"
    )
    print(
        f"goal >= {GOAL_RPS:.0f} req/s: peak {peak:.0f} req/s "
        f"({'met' if verdict['throughput_goal_met'] else 'NOT met'}); failed requests: {verdict['failures']}"
    )
    machine = result["machine"]
    print(
        f"{machine['cpus']} CPUs; 1-minute load average {machine['load_average_1m_at_start']} before, "
        f"{machine['load_average_1m_at_end']} after (other work on the machine skews every figure)"
    )
    print(f"wrote {args.output.relative_to(REPO) if args.output.is_relative_to(REPO) else args.output}")


if __name__ == "__main__":
    main()
