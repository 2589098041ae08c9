"""A real Label Studio 1.23.2 for the end-to-end tests: a cached venv, a server on 127.0.0.1, a REST helper.

Label Studio is a Django application with ~150 dependencies (Django 5, its own pydantic/requests pins) that
must not share nluflow's venv. The test creates one venv for it outside the repo, keyed by version::

    ~/.cache/nluflow-tests/label-studio-1.23.2/venv/     (NLUFLOW_TEST_CACHE overrides ~/.cache/nluflow-tests)
    ~/.cache/nluflow-tests/label-studio-1.23.2/installed.json  written last: the venv is complete
    ~/.cache/nluflow-tests/label-studio-1.23.2/template/label_studio.sqlite3   an empty migrated database

A fresh machine installs it (a few minutes, once; a progress line says how long); later sessions reuse it
when ``installed.json`` is there and the venv still imports ``label_studio`` at the pinned version.
An install that fails is a test failure with pip's output, never a skip: the end-to-end test is the only
proof that nluflow works with the real thing.

The server gets a fresh data directory (with a copy of the migrated template database, so a start takes
~5 s instead of ~1-2 min of Django migrations on 2 cores) and ``HOME`` per session, a known admin user
and a legacy API token (``--enable-legacy-api-token``: new 1.23 organisations refuse
``Authorization: Token`` otherwise), and ``SSRF_PROTECTION_ENABLED=false`` so a webhook may point at the
relay on 127.0.0.1 (the default guard refuses reserved addresses with HTTP 403). Sentry and the version
check are off: no traffic leaves the host. Shapes of every call below were captured from a live 1.23.2:
``tests/fixtures/label-studio/``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import Reporter, Service, free_port, tail

LS_VERSION = "1.23.2"
CACHE_ROOT = Path(os.environ.get("NLUFLOW_TEST_CACHE", Path.home() / ".cache" / "nluflow-tests"))
LABELING_CONFIG = Path(__file__).resolve().parents[1] / "fixtures" / "label-studio" / "labeling-config.xml"

INSTALL_TIMEOUT = 1800.0  # cold pip install of ~150 wheels on 2 cores: ~3-6 min; a slow mirror more
START_TIMEOUT = 240.0  # first start runs ~200 Django migrations into a fresh SQLite file
STOP_TIMEOUT = 20.0
HTTP_TIMEOUT = 60.0  # an import or an export is synchronous in the request handler

ADMIN_USER = "admin@example.com"
DB_NAME = "label_studio.sqlite3"  # in LABEL_STUDIO_BASE_DATA_DIR


# --------------------------------------------------------------------------------------------- the venv


@dataclass(frozen=True)
class LabelStudioInstall:
    """A complete venv with ``label-studio`` at :data:`LS_VERSION`."""

    root: Path
    seconds: float  # time spent installing now (0 when the cached venv was reused)
    reused: bool

    @property
    def venv(self) -> Path:
        return self.root / "venv"

    @property
    def executable(self) -> Path:
        return self.venv / "bin" / "label-studio"

    @property
    def template_db(self) -> Path:
        """An empty, fully migrated database: a copy lets a fresh server skip ~200 migrations (~1 min)."""
        return self.root / "template" / DB_NAME


def _installed_version(venv: Path) -> str | None:
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    probe = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m, label_studio; print(m.version('label-studio'))"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def _healthy(root: Path) -> bool:
    return (root / "installed.json").exists() and _installed_version(root / "venv") == LS_VERSION


def _pip_install(root: Path, progress: Reporter) -> None:
    """A new venv at ``root/venv`` with label-studio; ``pytest.fail`` with pip's output when it fails."""
    shutil.rmtree(root, ignore_errors=True)  # a half-made venv from an interrupted install
    root.mkdir(parents=True)
    log = root / "install.log"
    venv = root / "venv"
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", f"label-studio=={LS_VERSION}"],
    ]
    with open(log, "wb") as out:
        for args in steps:
            try:
                result = subprocess.run(
                    args, stdout=out, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT, check=False
                )
            except subprocess.TimeoutExpired:
                pytest.fail(
                    f"installing Label Studio {LS_VERSION} took more than {INSTALL_TIMEOUT:.0f} s "
                    f"({' '.join(args)}); its log {log}:\n{tail(log)}"
                )
            if result.returncode != 0:
                pytest.fail(
                    f"cannot install Label Studio {LS_VERSION} into {venv} (exit {result.returncode} from "
                    f"{' '.join(args[-3:])}); the end-to-end test needs it. pip's log {log}:\n{tail(log)}"
                )
    version = _installed_version(venv)
    if version != LS_VERSION:
        pytest.fail(f"after pip install, {venv} has label-studio {version!r}, expected {LS_VERSION}")


def _migrate_template(install: LabelStudioInstall, progress: Reporter) -> None:
    """Migrate an empty database once (``manage.py migrate``) and keep it next to the venv."""
    started = time.monotonic()
    work = install.root / "template.tmp"
    shutil.rmtree(work, ignore_errors=True)
    env = _server_env(work)
    manage = next(install.venv.glob("lib/python*/site-packages/label_studio/manage.py"), None)
    assert manage is not None, f"no label_studio/manage.py in {install.venv}"
    try:
        result = subprocess.run(
            [str(install.venv / "bin" / "python"), str(manage), "migrate", "--no-color", "-v", "0"],
            env=env,
            cwd=work,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"migrating Label Studio's template database took more than {START_TIMEOUT:.0f} s")
    if result.returncode != 0 or not (work / "data" / DB_NAME).exists():
        pytest.fail(
            f"cannot migrate Label Studio's template database (exit {result.returncode}):\n"
            f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        )
    install.template_db.parent.mkdir(parents=True, exist_ok=True)
    (work / "data" / DB_NAME).replace(install.template_db)  # only the database: data/.env holds a key
    shutil.rmtree(work, ignore_errors=True)
    progress(f"Label Studio: template database migrated in {time.monotonic() - started:.0f} s (once)")


def ensure_label_studio(progress: Reporter, cache_root: Path = CACHE_ROOT) -> LabelStudioInstall:
    """The cached Label Studio venv, installed first when missing or broken, with a migrated template
    database.

    A lock file serialises concurrent sessions on one machine: the second waits for the first install
    instead of racing it into the same directory.
    """
    root = cache_root / f"label-studio-{LS_VERSION}"
    cache_root.mkdir(parents=True, exist_ok=True)
    with open(cache_root / f"label-studio-{LS_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _healthy(root):
            progress(f"Label Studio {LS_VERSION}: reusing the cached venv {root / 'venv'}")
            install = LabelStudioInstall(root, 0.0, reused=True)
            if not install.template_db.exists():
                _migrate_template(install, progress)
            return install
        progress(
            f"Label Studio {LS_VERSION}: no healthy cached venv at {root}; installing it with pip "
            "(a few minutes, once per machine)"
        )
        started = time.monotonic()
        _pip_install(root, progress)
        seconds = time.monotonic() - started
        (root / "installed.json").write_text(
            json.dumps({"label-studio": LS_VERSION, "python": sys.version.split()[0], "seconds": seconds})
        )
        progress(f"Label Studio {LS_VERSION} installed into {root / 'venv'} in {seconds:.0f} s")
        install = LabelStudioInstall(root, seconds, reused=False)
        _migrate_template(install, progress)
        return install


# --------------------------------------------------------------------------------------------- REST


class LabelStudioError(AssertionError):
    """A Label Studio API call answered something else than expected (the message carries the body)."""


@dataclass(frozen=True)
class Span:
    """An entity annotation: ``text[start:end]`` (code points, end exclusive) labelled ``label``."""

    start: int
    end: int
    label: str


def find_span(text: str, value: str, label: str) -> Span:
    """The span of the first occurrence of ``value`` in ``text``."""
    start = text.index(value)
    return Span(start, start + len(value), label)


def annotation_result(text: str, intent: str, spans: Sequence[Span] = ()) -> list[dict[str, Any]]:
    """An annotation ``result`` for the labeling config: one ``intent`` choice and ``entities`` labels,
    in the shape the Label Studio frontend sends (see the fixtures' ``export.json``)."""
    result: list[dict[str, Any]] = [
        {
            "id": secrets.token_hex(5),
            "from_name": "intent",
            "to_name": "text",
            "type": "choices",
            "value": {"choices": [intent]},
        }
    ]
    for span in spans:
        result.append(
            {
                "id": secrets.token_hex(5),
                "from_name": "entities",
                "to_name": "text",
                "type": "labels",
                "value": {
                    "start": span.start,
                    "end": span.end,
                    "text": text[span.start : span.end],
                    "labels": [span.label],
                },
            }
        )
    return result


class LabelStudioAPI:
    """The few REST calls the tests make, with ``Authorization: Token``; every non-2xx fails loudly."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self._client = httpx.Client(
            base_url=url,
            headers={"Authorization": f"Token {token}"},
            timeout=HTTP_TIMEOUT,
            trust_env=False,  # 127.0.0.1 only, never through a proxy
        )

    def close(self) -> None:
        self._client.close()

    def _call(self, method: str, path: str, expect: int, **kwargs: Any) -> Any:
        response = self._client.request(method, path, **kwargs)
        if response.status_code != expect:
            raise LabelStudioError(
                f"{method} {path} answered HTTP {response.status_code}, expected {expect}: "
                f"{' '.join(response.text.split())[:600]}"
            )
        return response.json() if response.content else None

    def whoami(self) -> dict[str, Any]:
        return dict(self._call("GET", "/api/current-user/whoami", 200))

    def create_project(self, title: str, label_config: str) -> int:
        project = self._call(
            "POST", "/api/projects/", 201, json={"title": title, "label_config": label_config}
        )
        return int(project["id"])

    def import_tasks(self, project: int, texts: Sequence[str]) -> list[int]:
        """Import one task per text (``data.text``); the ids of the new tasks, in order."""
        payload = [{"data": {"text": text, "source": "e2e"}} for text in texts]
        answer = self._call(
            "POST", f"/api/projects/{project}/import", 201, params={"return_task_ids": "true"}, json=payload
        )
        assert answer["task_count"] == len(texts) and len(answer["task_ids"]) == len(texts), answer
        return [int(task_id) for task_id in answer["task_ids"]]

    def tasks(self, project: int) -> list[dict[str, Any]]:
        """Every task of ``project`` (the data manager's paginated ``GET /api/tasks``)."""
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            answer = self._call(
                "GET", "/api/tasks", 200, params={"project": project, "page": page, "page_size": 100}
            )
            found.extend(answer["tasks"])
            if len(found) >= answer["total"] or not answer["tasks"]:
                return found
            page += 1

    def annotate(
        self, task: int, text: str, intent: str, spans: Sequence[Span] = (), *, cancelled: bool = False
    ) -> int:
        """``POST /api/tasks/{id}/annotations/`` (a skipped task is an annotation with ``was_cancelled``)."""
        body: dict[str, Any] = {"result": [] if cancelled else annotation_result(text, intent, spans)}
        body["lead_time"] = 3.5
        if cancelled:
            body["was_cancelled"] = True
        annotation = self._call("POST", f"/api/tasks/{task}/annotations/", 201, json=body)
        assert bool(annotation["was_cancelled"]) == cancelled, annotation
        return int(annotation["id"])

    def add_webhook(self, project: int, url: str, headers: dict[str, str]) -> int:
        """A webhook for every action of ``project``, full payload, ``headers`` sent with every request."""
        hook = self._call(
            "POST",
            "/api/webhooks/",
            201,
            json={
                "project": project,
                "url": url,
                "send_payload": True,
                "send_for_all_actions": True,
                "headers": headers,
                "is_active": True,
            },
        )
        return int(hook["id"])

    def export(self, project: int) -> list[dict[str, Any]]:
        """``GET /api/projects/{id}/export?exportType=JSON`` (synchronous; what nluflow's source reads)."""
        return list(self._call("GET", f"/api/projects/{project}/export", 200, params={"exportType": "JSON"}))


# --------------------------------------------------------------------------------------------- the server


@dataclass
class LabelStudioServer:
    """A running Label Studio: its URL, the admin's legacy API token, and how long things took."""

    url: str
    token: str
    install: LabelStudioInstall
    service: Service
    data_dir: Path
    timings: dict[str, float] = field(default_factory=dict)

    def api(self) -> LabelStudioAPI:
        return LabelStudioAPI(self.url, self.token)

    def diagnostics(self) -> str:
        return f"--- label-studio log ({self.service.log_path}), last lines:\n{tail(self.service.log_path)}"


def _server_env(state: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "NLUFLOW_", "LABEL_STUDIO_", "DJANGO_", "VIRTUAL_ENV"))
    }
    env.update(
        HOME=str(state / "home"),  # Label Studio writes ~/.local/share/label-studio otherwise
        LABEL_STUDIO_BASE_DATA_DIR=str(state / "data"),
        SSRF_PROTECTION_ENABLED="false",  # the webhook goes to the relay on 127.0.0.1
        LATEST_VERSION_CHECK="false",
        COLLECT_ANALYTICS="false",
        SENTRY_DSN="",
        FRONTEND_SENTRY_DSN="",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    (state / "home").mkdir(parents=True, exist_ok=True)
    (state / "data").mkdir(parents=True, exist_ok=True)
    return env


def _wait(what: str, check: Callable[[], bool], timeout: float, service: Service) -> float:
    started = time.monotonic()
    while not check():
        if not service.alive():
            pytest.fail(
                f"Label Studio exited with code {service.proc.returncode} while waiting for {what}; "
                "its log:\n" + tail(service.log_path, 80)
            )
        if time.monotonic() - started > timeout:
            pytest.fail(
                f"timed out after {timeout:.0f} s waiting for {what}; its log:\n" + tail(service.log_path)
            )
        time.sleep(0.5)
    return time.monotonic() - started


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=5.0, trust_env=False).status_code == 200
    except httpx.TransportError:
        return False


@contextlib.contextmanager
def running_label_studio(
    install: LabelStudioInstall, state: Path, progress: Reporter
) -> Iterator[LabelStudioServer]:
    """Label Studio on a free 127.0.0.1 port with its data in ``state``; stopped (whole group) on exit."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    token = secrets.token_hex(20)  # Label Studio's own legacy tokens are 40 hex characters
    args = [
        str(install.executable),
        "start",
        "--no-browser",
        "--internal-host",
        "127.0.0.1",
        "--host",
        url,
        "--port",
        str(port),
        f"--username={ADMIN_USER}",
        f"--password={secrets.token_hex(16)}",  # hex: a value starting with '-' would read as an option
        f"--user-token={token}",
        "--enable-legacy-api-token",
    ]
    started = time.monotonic()
    env = _server_env(state)
    shutil.copyfile(install.template_db, state / "data" / DB_NAME)  # migrated: the server skips migrations
    service = Service.start("label-studio", args, env, state, state / "label-studio.log")
    server = LabelStudioServer(url, token, install, service, state / "data")
    try:
        _wait(f"Label Studio's {url}/health", lambda: _answers(url), START_TIMEOUT, service)
        api = server.api()
        try:
            user = api.whoami()  # the token works (legacy auth enabled for this organisation)
        finally:
            api.close()
        assert user["email"] == ADMIN_USER, user
        server.timings["start"] = time.monotonic() - started
        progress(
            f"Label Studio {LS_VERSION} up at {url} (healthy, token accepted after "
            f"{server.timings['start']:.1f} s; data in {state})"
        )
        yield server
    finally:
        how = service.stop()
        progress(f"Label Studio {how} (exit code {service.proc.returncode})")


def labeling_config() -> str:
    """The project's labeling config (intent choices greet/book_flight/weather, entities city/date)."""
    return LABELING_CONFIG.read_text(encoding="utf-8")
