"""Real components for the end-to-end tests: a Prefect server, a process work pool with a worker, a
deployment from ``prefect.yaml``, one triggered run, and headless Chromium to look at its artifacts.

Everything listens on 127.0.0.1 only. The server, the worker and the browser run in their own process
groups, so teardown ends them (and the flow-run processes the worker started) by group id, even when a
test fails. Their logs are copied to ``tests/e2e/output/`` next to the screenshots.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
OUTPUT = Path(__file__).resolve().parent / "output"
BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect")

PROJECT = "snips-demo"
POOL = "nluflow-local"
FLOW_NAME = "nluflow-retrain"
DEPLOYMENT = "retrain-local"

# Time limits (seconds). A cold server starts in ~5-10 s on 2 cores; the demo run takes ~20 s.
SERVER_START_TIMEOUT = 120.0
WORKER_START_TIMEOUT = 90.0
RUN_TIMEOUT = 360.0
PAGE_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-proxy-server",  # everything it opens is on 127.0.0.1
)

TERMINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
# The deployments `prefect deploy --all` creates from prefect.yaml.
DEPLOYMENTS = ("retrain-local", "retrain-nightly", "retrain-on-annotation")
# A test-only deployment with a short interval schedule (prefect.yaml's nightly cron would not fire in a
# test): the server's scheduler must create its runs and the worker complete them.
SCHEDULE_FILE = Path(__file__).resolve().parent / "schedule.prefect.yaml"
SCHEDULE_DEPLOYMENT = "e2e-every-15s"
SCHEDULE_INTERVAL = 15.0
SCHEDULE_TIMEOUT = 120.0
# The server's scheduler looks for deployments to schedule every 60 s by default; the test waits less.
SCHEDULER_LOOP_SECONDS = "5"
# What a broken scheduler or API writes to the server log (prefect 3.8.8 + SQLAlchemy 2.1 logged the first
# every minute and scheduled nothing).
SERVER_LOG_ERRORS = ("Traceback", "InvalidRequestError", "Unprocessable Entity", "| ERROR")


# --------------------------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk; AssertionError when ``data`` is not a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"not a PNG (starts with {data[:8]!r})"
    assert data[12:16] == b"IHDR", "PNG without an IHDR chunk first"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def data_uri_png(uri: str) -> bytes:
    """The bytes of a ``data:image/png;base64,...`` URI."""
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix), f"expected a PNG data URI, found {uri[:60]!r}"
    return base64.b64decode(uri[len(prefix) :], validate=True)


def tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Reporter:
    """Progress lines that CI shows even when pytest captures output (written to its terminal)."""

    write: Callable[[str], None]
    started: float = field(default_factory=time.monotonic)

    def __call__(self, message: str) -> None:
        self.write(f"[e2e {time.monotonic() - self.started:6.1f}s] {message}")


@pytest.fixture(scope="session")
def progress(pytestconfig: pytest.Config) -> Reporter:
    terminal = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    if terminal is None or capture is None:
        return Reporter(lambda line: print(line, file=sys.stderr, flush=True))

    def write(line: str) -> None:
        print(line)  # also in the captured output of a failing test
        with capture.global_and_fixture_disabled():  # past pytest's capture, so a passing run shows it too
            terminal.ensure_newline()
            terminal.write_line(line)

    return Reporter(write)


@dataclass
class Service:
    """A child process in its own process group, with its output in a log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    @classmethod
    def start(cls, name: str, args: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> Service:
        log_file = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        proc = subprocess.Popen(
            args,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: stop() reaches its children too
        )
        return cls(name, proc, log_path, log_file)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, first_signal: int = signal.SIGINT) -> str:
        """First ``first_signal`` (graceful), then SIGTERM, then SIGKILL to the whole group."""
        how = "already exited"
        if self.alive():
            how = "killed"
            for sig in (first_signal, signal.SIGTERM):
                self._signal_group(sig)
                try:
                    self.proc.wait(timeout=STOP_TIMEOUT)
                    how = f"stopped by {signal.Signals(sig).name}"
                    break
                except subprocess.TimeoutExpired:
                    continue
        # Leftovers of the group (a flow-run process of the worker, a uvicorn child) go too.
        self._signal_group(signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(timeout=STOP_TIMEOUT)
        self.log_file.close()
        return how

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)


# --------------------------------------------------------------------------------------------- the stack


@dataclass
class FlowRunDone:
    """What the stack did: the README's steps, the deployment runs and the scheduled run."""

    api_url: str
    ui_url: str
    flow_run_id: str  # the first `prefect deployment run` of retrain-local: promotes the first model
    state: str
    deployment_id: str
    nluflow_home: Path
    run_seconds: float
    timings: dict[str, float]
    rerun_id: str  # the same deployment run again: the candidate is the active model (unchanged)
    scheduled_run_id: str  # created by the server's scheduler for the test's interval deployment
    deploy_output: str
    deployment_ls: str
    server_log: Path


@dataclass
class Stack:
    port: int
    api_url: str
    ui_url: str
    env: dict[str, str]
    home: Path
    services: list[Service]
    progress: Reporter
    timings: dict[str, float] = field(default_factory=dict)
    deploy_output: str = ""
    deployment_ls: str = ""

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.api_url, timeout=30.0, trust_env=False)

    def cli(
        self, *args: str, cwd: Path | None = None, timeout: float = 120.0, program: str = PREFECT
    ) -> subprocess.CompletedProcess[str]:
        """Run a CLI command (``prefect --no-prompt ...`` by default) as a user would in ``cwd``."""
        where = cwd or self.home
        prefix = [program, "--no-prompt"] if program == PREFECT else [program]
        return subprocess.run(
            [*prefix, *args],
            # PWD as a shell sets it: prefect.yaml's pull step is "{{ $PWD }}", resolved at deploy time.
            env={**self.env, "PWD": str(where)},
            cwd=where,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def diagnostics(self) -> str:
        return "\n".join(
            f"--- {s.name} log ({s.log_path}), last lines:\n{tail(s.log_path)}" for s in self.services
        )


def _child_env(home: Path, api_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "NLUFLOW_"))}
    env.update(
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_API_URL=api_url,
        PREFECT_UI_API_URL=api_url,  # the UI in the browser calls this, not the default port 4200
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(home / "results"),
        PREFECT_LOGGING_EXTRA_LOGGERS="nluflow",
        PREFECT_WORKER_QUERY_SECONDS="2",  # pick the run up quickly (default 10 s)
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS=SCHEDULER_LOOP_SECONDS,
        # At most 3 runs ahead per deployment (default 100): the 15-s test schedule would otherwise insert,
        # and its pause delete, 100 runs at once, a burst of SQLite writes ("database is locked" under load).
        PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS="3",
        NLUFLOW_HOME=str(home / "nluflow"),
        COLUMNS="240",  # Rich wraps CLI output at 80 columns without a terminal; keep messages on one line
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    return env


def _wait(what: str, check: Callable[[], bool], timeout: float, stack: Stack, poll: float = 0.5) -> float:
    started = time.monotonic()
    while True:
        for service in stack.services:
            if not service.alive():
                pytest.fail(
                    f"{service.name} exited with code {service.proc.returncode} while waiting for {what}\n"
                    + stack.diagnostics()
                )
        if check():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n" + stack.diagnostics())
        time.sleep(poll)


def _server_healthy(client: httpx.Client) -> bool:
    try:
        return client.get("/health").status_code == 200
    except httpx.TransportError:
        return False


def _online_workers(client: httpx.Client) -> list[dict[str, Any]]:
    response = client.post(f"/work_pools/{POOL}/workers/filter", json={})
    response.raise_for_status()
    return [w for w in response.json() if w.get("status") == "ONLINE"]


def _new_stack(home: Path, progress: Reporter) -> Stack:
    port = free_port()
    ui_url = f"http://127.0.0.1:{port}"
    api_url = f"{ui_url}/api"
    env = _child_env(home, api_url)
    return Stack(
        port=port, api_url=api_url, ui_url=ui_url, env=env, home=home, services=[], progress=progress
    )


def _start_server(stack: Stack) -> None:
    """``make server``: a real ``prefect server start`` (its scheduler loop shortened, see _child_env)."""
    started = time.monotonic()
    stack.services.append(
        Service.start(
            "server",
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(stack.port)],
            stack.env,
            stack.home,
            stack.home / "server.log",
        )
    )
    with stack.client() as client:
        _wait("the server's /api/health", lambda: _server_healthy(client), SERVER_START_TIMEOUT, stack)
    stack.timings["server_start"] = time.monotonic() - started
    versions = stack.cli("version")
    stack.progress(
        f"server up: {stack.api_url} (healthy after {stack.timings['server_start']:.1f} s); "
        + "; ".join(" ".join(line.split()) for line in versions.stdout.splitlines()[:2])
    )


def _create_pool_and_blocks(stack: Stack) -> None:
    """``prefect work-pool create nluflow-local --type process`` and ``make blocks``."""
    created = stack.cli("work-pool", "create", POOL, "--type", "process")
    assert created.returncode == 0, f"work-pool create failed:\n{created.stdout}\n{created.stderr}"
    with stack.client() as client:
        pool = client.get(f"/work_pools/{POOL}")
    assert pool.status_code == 200 and pool.json()["type"] == "process", pool.text
    stack.progress(f"prefect work-pool create {POOL} --type process: rc 0")
    # `make blocks` = `prefect block register -m blocks` + `nluflow blocks create`, from the repo root.
    registered = stack.cli("block", "register", "-m", "blocks", cwd=REPO)
    assert registered.returncode == 0, f"block register failed:\n{registered.stdout}\n{registered.stderr}"
    made = stack.cli("blocks", "create", cwd=REPO, program=str(BIN / "nluflow"))
    assert made.returncode == 0, f"nluflow blocks create failed:\n{made.stdout}\n{made.stderr}"
    stack.progress(f"make blocks: rc 0 ({' '.join(made.stdout.split()[-6:])})")


def _start_worker(stack: Stack) -> None:
    """``prefect worker start --pool nluflow-local``, until the server lists it ONLINE."""
    started = time.monotonic()
    # The worker runs outside the repo: the deployment's pull step must put the run in the repo root.
    stack.services.append(
        Service.start(
            "worker",
            [PREFECT, "worker", "start", "--pool", POOL],
            stack.env,
            stack.home,
            stack.home / "worker.log",
        )
    )
    workers: list[dict[str, Any]] = []
    with stack.client() as client:

        def worker_online() -> bool:
            workers[:] = _online_workers(client)
            return bool(workers)

        _wait(f"a worker online in pool {POOL!r}", worker_online, WORKER_START_TIMEOUT, stack)
    stack.timings["worker_start"] = time.monotonic() - started
    stack.progress(
        f"worker up: {workers[0]['name']!r} ONLINE in pool {POOL!r} "
        f"(after {stack.timings['worker_start']:.1f} s)"
    )


def _deploy_all(stack: Stack) -> dict[str, str]:
    """The README's step, verbatim: ``prefect deploy --all`` from the repo root, then ``prefect deployment
    ls``; both must exit 0 and every deployment of prefect.yaml must exist. Returns name -> deployment id."""
    started = time.monotonic()
    result = stack.cli("deploy", "--all", cwd=REPO, timeout=240.0)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        pytest.fail(f"prefect deploy --all exited {result.returncode}:\n{output}\n" + stack.diagnostics())
    listed = stack.cli("deployment", "ls")
    if listed.returncode != 0:
        pytest.fail(
            f"prefect deployment ls exited {listed.returncode}:\n{listed.stdout}\n{listed.stderr}\n"
            + stack.diagnostics()
        )
    ids: dict[str, str] = {}
    with stack.client() as client:
        for name in DEPLOYMENTS:
            response = client.get(f"/deployments/name/{FLOW_NAME}/{name}")
            assert response.status_code == 200, f"{name} was not deployed: {response.text}\n{output}"
            deployment = response.json()
            assert deployment["work_pool_name"] == POOL, deployment
            assert deployment["entrypoint"] == "flows/retrain.py:retrain", deployment
            assert deployment["pull_steps"] == [
                {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
            ], deployment["pull_steps"]
            assert f"{FLOW_NAME}/{name}" in listed.stdout, (
                f"deployment ls does not list {name}:\n{listed.stdout}"
            )
            ids[name] = str(deployment["id"])
    stack.timings["deploy"] = time.monotonic() - started
    stack.deploy_output = output
    stack.deployment_ls = listed.stdout
    stack.progress(
        f"prefect deploy --all: rc 0, {len(ids)} deployments ({', '.join(DEPLOYMENTS)}); "
        f"prefect deployment ls: rc 0 ({stack.timings['deploy']:.1f} s)"
    )
    return ids


def _flow_run_logs(client: httpx.Client, run_id: str) -> list[str]:
    logs = client.post(
        "/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC"}
    )
    return [f"{r['level']} {r['message']}" for r in logs.json()] if logs.status_code == 200 else []


def _wait_for_run(stack: Stack, run_id: str, deployment_id: str) -> tuple[str, float]:
    """Poll a flow run until it is terminal; fail with its logs unless it Completed."""
    started = time.monotonic()
    state: dict[str, Any] = {}
    seen: list[str] = []
    with stack.client() as client:

        def finished() -> bool:
            response = client.get(f"/flow_runs/{run_id}")
            response.raise_for_status()
            run = response.json()
            state.update(type=run["state_type"], name=run["state_name"], message=run["state"]["message"])
            assert run["deployment_id"] == deployment_id, run
            if not seen or seen[-1] != run["state_name"]:
                seen.append(run["state_name"])
                stack.progress(f"flow run {run_id}: {run['state_name']}")
            return state["type"] in TERMINAL_STATES

        _wait(f"flow run {run_id} to finish", finished, RUN_TIMEOUT, stack, poll=1.0)
        if state["type"] != "COMPLETED":
            pytest.fail(
                f"flow run {run_id} ended {state['name']}: {state['message']}\n"
                + "\n".join(_flow_run_logs(client, run_id)[-80:])
                + "\n"
                + stack.diagnostics()
            )
    stack.progress(
        f"flow run {run_id} Completed in {time.monotonic() - started:.1f} s ({' -> '.join(seen)}): "
        f"{state['message']}"
    )
    return str(state["name"]), time.monotonic() - started


def _run_deployment(stack: Stack, deployment_id: str) -> tuple[str, str, float]:
    """``prefect deployment run 'nluflow-retrain/retrain-local'`` and wait for that run to complete."""
    started = time.monotonic()
    result = stack.cli("deployment", "run", f"{FLOW_NAME}/{DEPLOYMENT}")
    assert result.returncode == 0, f"prefect deployment run failed:\n{result.stdout}\n{result.stderr}"
    found = re.search(r"UUID: ([0-9a-f-]{36})", result.stdout)
    assert found, f"no flow run id in the output of prefect deployment run:\n{result.stdout}"
    run_id = found.group(1)
    stack.progress(f"prefect deployment run {FLOW_NAME}/{DEPLOYMENT}: rc 0, flow run {run_id}")
    state, _ = _wait_for_run(stack, run_id, deployment_id)
    return run_id, state, time.monotonic() - started


def _scheduled_run(stack: Stack) -> str:
    """Deploy the test-only interval deployment, let the server's scheduler create a run and the worker
    complete it; then pause the schedule (the server drops the runs it scheduled ahead). Returns its id."""
    started = time.monotonic()
    deployed = stack.cli("deploy", "--all", "--prefect-file", str(SCHEDULE_FILE), cwd=REPO, timeout=240.0)
    assert deployed.returncode == 0, (
        f"prefect deploy --prefect-file {SCHEDULE_FILE.name} exited {deployed.returncode}:\n"
        f"{deployed.stdout}\n{deployed.stderr}"
    )
    with stack.client() as client:
        deployment = client.get(f"/deployments/name/{FLOW_NAME}/{SCHEDULE_DEPLOYMENT}").json()
        [schedule] = deployment["schedules"]
        assert schedule["active"] and schedule["schedule"]["interval"] == SCHEDULE_INTERVAL, schedule
        stack.progress(
            f"{FLOW_NAME}/{SCHEDULE_DEPLOYMENT} deployed: every {SCHEDULE_INTERVAL:.0f} s; waiting for the "
            f"scheduler (loop {SCHEDULER_LOOP_SECONDS} s) to create a run"
        )
        runs: list[dict[str, Any]] = []

        def scheduled() -> bool:
            response = client.post(
                "/flow_runs/filter",
                json={"deployments": {"id": {"any_": [deployment["id"]]}}, "sort": "EXPECTED_START_TIME_ASC"},
            )
            response.raise_for_status()
            runs[:] = [r for r in response.json() if r["auto_scheduled"]]
            return bool(runs)

        _wait("the scheduler to create a run", scheduled, SCHEDULE_TIMEOUT, stack)
        run_id = str(runs[0]["id"])
        stack.progress(
            f"the scheduler created {len(runs)} run(s) ahead; "
            f"first {run_id} due {runs[0]['expected_start_time']}"
        )

        def picked_up() -> bool:
            response = client.get(f"/flow_runs/{run_id}")
            response.raise_for_status()
            return bool(response.json()["state_type"] != "SCHEDULED")

        _wait(f"the worker to pick up {run_id}", picked_up, SCHEDULE_TIMEOUT, stack)
        # One run is enough: pause the schedule (the server deletes the runs it scheduled ahead), so that
        # nothing new starts while the other tests run or the stack shuts down.
        paused = stack.cli(
            "deployment", "schedule", "pause", f"{FLOW_NAME}/{SCHEDULE_DEPLOYMENT}", schedule["id"]
        )
        assert paused.returncode == 0, f"schedule pause failed:\n{paused.stdout}\n{paused.stderr}"
        _wait_for_run(stack, run_id, str(deployment["id"]))

        def settled() -> bool:
            response = client.post(
                "/flow_runs/filter", json={"deployments": {"id": {"any_": [deployment["id"]]}}}
            )
            response.raise_for_status()
            return all(
                r["state_type"] in TERMINAL_STATES or r["state_type"] == "SCHEDULED" for r in response.json()
            )

        _wait("the scheduled deployment's runs to settle", settled, RUN_TIMEOUT, stack, poll=1.0)
    stack.timings["scheduled_run"] = time.monotonic() - started
    return run_id


def _save_logs(services: list[Service]) -> None:
    OUTPUT.mkdir(exist_ok=True)
    for service in services:
        with contextlib.suppress(OSError):
            shutil.copyfile(service.log_path, OUTPUT / f"{service.name}.log")


@pytest.fixture(scope="module")
def work_pool_run(tmp_path_factory: pytest.TempPathFactory, progress: Reporter) -> Iterator[FlowRunDone]:
    """The README's "Run it on a work pool" steps, in its order, against a real server and worker:
    server, work pool, blocks, ``prefect deploy --all`` + ``deployment ls`` (rc 0), worker,
    ``prefect deployment run`` twice (promoted, then unchanged), and a scheduled run of a test-only
    interval deployment. One stack for every test of the module."""
    if not Path(PREFECT).exists():
        pytest.fail(f"the prefect CLI is not at {PREFECT}; run the tests with the project's .venv")
    home = tmp_path_factory.mktemp("e2e-work-pool")
    started = time.monotonic()
    stack = _new_stack(home, progress)
    try:
        _start_server(stack)
        _create_pool_and_blocks(stack)
        deployments = _deploy_all(stack)
        _start_worker(stack)
        deployment_id = deployments[DEPLOYMENT]
        run_id, state, seconds = _run_deployment(stack, deployment_id)
        stack.timings["run"] = seconds
        rerun_id, _, stack.timings["rerun"] = _run_deployment(stack, deployment_id)
        scheduled_id = _scheduled_run(stack)
        yield FlowRunDone(
            api_url=stack.api_url,
            ui_url=stack.ui_url,
            flow_run_id=run_id,
            state=state,
            deployment_id=deployment_id,
            nluflow_home=Path(stack.env["NLUFLOW_HOME"]),
            run_seconds=seconds,
            timings=stack.timings,
            rerun_id=rerun_id,
            scheduled_run_id=scheduled_id,
            deploy_output=stack.deploy_output,
            deployment_ls=stack.deployment_ls,
            server_log=home / "server.log",
        )
    finally:
        # Worker first, so it does not log a lost server; then the server.
        for service in reversed(stack.services):
            how = service.stop()
            progress(f"{service.name} {how} (exit code {service.proc.returncode})")
        _save_logs(stack.services)
        progress(f"work-pool stack shut down; {time.monotonic() - started:.1f} s in all")


# --------------------------------------------------------------------------------------------- Chromium


def _chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def chromium(progress: Reporter) -> str:
    """Debian's chromium, which ``make test`` installs (``make browser``: apt-get when it is missing).

    No emoji font is installed on purpose: the report's marks are plain words (PASS/FAIL), and the
    screenshots show what a browser without emoji fonts shows.
    """
    binary = _chromium_binary()
    if binary is None:
        pytest.fail(
            "headless Chromium is not installed (looked for chromium and chromium-browser on PATH); the "
            "Label Studio UI check needs Debian's chromium: run `make browser` (apt-get install chromium, as "
            "root) and run the test again"
        )
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60, check=False)
    progress(f"browser: {version.stdout.strip() or binary}")
    return binary


class DevToolsError(RuntimeError):
    """A DevTools protocol command failed."""


class Page:
    """One browser tab driven over the DevTools protocol (flat sessions on the browser's websocket)."""

    def __init__(self, browser: Browser, target_id: str, session_id: str) -> None:
        self.browser = browser
        self.target_id = target_id
        self.session_id = session_id

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        return self.browser.send(method, session_id=self.session_id, **params)

    def evaluate(self, expression: str) -> Any:
        reply = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in reply:
            raise DevToolsError(f"script failed: {json.dumps(reply['exceptionDetails'])[:1000]}")
        return reply["result"].get("value")

    def wait_for(self, what: str, expression: str, timeout: float = PAGE_TIMEOUT) -> Any:
        """Evaluate ``expression`` until it is truthy; on timeout fail naming ``what``, with the page text."""
        deadline = time.monotonic() + timeout
        error: DevToolsError | None = None
        while True:
            try:
                value = self.evaluate(expression)
                if value:
                    return value
            except DevToolsError as exc:  # the page is still loading (no body yet, context replaced)
                error = exc
            if time.monotonic() > deadline:
                text = self.evaluate("document.body ? document.body.innerText.slice(0, 3000) : ''")
                pytest.fail(
                    f"the page did not show {what} within {timeout:.0f} s (last script error: {error}); "
                    f"page text:\n{text}"
                )
            time.sleep(0.25)

    def resize(self, width: int, height: int) -> None:
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    def screenshot(self, path: Path, clip: dict[str, float] | None = None) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if clip is not None:
            params["clip"] = {**clip, "scale": 1}
        reply = self.send("Page.captureScreenshot", **params)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(reply["data"]))
        return path

    def close(self) -> None:
        self.browser.send("Target.closeTarget", targetId=self.target_id)


class Browser:
    """Headless Chromium with a fresh profile, driven over its DevTools websocket."""

    def __init__(self, binary: str, profile: Path, log_path: Path) -> None:
        from websockets.sync.client import connect

        self.profile = profile
        self._ids = iter(range(1, 1 << 30))
        self.service = Service.start(
            "chromium",
            [
                binary,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            dict(os.environ),
            profile.parent,
            log_path,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if not self.service.alive() or time.monotonic() > deadline:
                self.service.stop()
                pytest.fail(f"chromium did not open its DevTools port; its log:\n{tail(log_path)}")
            time.sleep(0.1)
        port, ws_path = port_file.read_text().splitlines()[:2]
        try:
            self.ws = connect(
                f"ws://127.0.0.1:{port}{ws_path}",
                max_size=None,  # full-page screenshots are megabytes of base64
                proxy=None,
                open_timeout=30,
                ping_interval=None,
            )
        except Exception:
            self.service.stop(first_signal=signal.SIGTERM)
            raise

    def send(self, method: str, session_id: str | None = None, **params: Any) -> dict[str, Any]:
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params}
        if session_id:
            message["sessionId"] = session_id
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + PAGE_TIMEOUT
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") != message_id:
                continue  # an event or another session's message
            if "error" in reply:
                raise DevToolsError(f"{method}: {reply['error']}")
            result: dict[str, Any] = reply.get("result", {})
            return result

    def open(self, url: str, width: int = 1400, height: int = 1000) -> Page:
        target_id = self.send("Target.createTarget", url="about:blank")["targetId"]
        session_id = self.send("Target.attachToTarget", targetId=target_id, flatten=True)["sessionId"]
        page = Page(self, target_id, session_id)
        page.resize(width, height)
        navigated = page.send("Page.navigate", url=url)
        if navigated.get("errorText"):
            raise DevToolsError(f"navigating to {url}: {navigated['errorText']}")
        page.wait_for(
            f"{url} loaded",
            "document.readyState === 'complete' && location.href !== 'about:blank' && !!document.body",
        )
        return page

    def close(self) -> str:
        # The browser may already be gone (or drop the socket while closing); stop() ends it anyway.
        with contextlib.suppress(Exception):
            self.send("Browser.close")
        with contextlib.suppress(Exception):
            self.ws.close()
        return self.service.stop(first_signal=signal.SIGTERM)


@pytest.fixture(scope="module")
def browser(chromium: str, tmp_path_factory: pytest.TempPathFactory, progress: Reporter) -> Iterator[Browser]:
    profile = tmp_path_factory.mktemp("chromium-profile")  # fresh --user-data-dir
    instance = Browser(chromium, profile, profile.parent / f"{profile.name}.log")
    progress("chromium up (headless, fresh profile, DevTools over websocket)")
    try:
        yield instance
    finally:
        how = instance.close()
        _save_logs([instance.service])
        progress(f"chromium {how}")
