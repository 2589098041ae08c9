"""The Label Studio source against the emulator: both auths, token refresh, errors, provenance, no secrets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nluflow.backends.http import HttpOptions
from nluflow.data.loaders import load_paths
from nluflow.errors import DataError, SourceError, TransientSourceError
from nluflow.sources.base import with_source_origins
from nluflow.sources.labelstudio import LabelStudioClient, LabelStudioExportSource, TokenKind
from nluflow.testing.emulators import Fault, LabelStudioEmulator
from nluflow.testing.emulators._serving import ServedApp

EXPORT = Path(__file__).resolve().parents[1] / "fixtures" / "label-studio" / "export.json"


class Clock:
    """A clock the test moves by hand (shared by the emulator and the client)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def emulator(clock: Clock) -> LabelStudioEmulator:
    emu = LabelStudioEmulator(clock=clock)
    emu.load_export(json.loads(EXPORT.read_text(encoding="utf-8")))
    return emu


@pytest.fixture
def served(emulator: LabelStudioEmulator) -> Iterator[ServedApp]:
    with emulator.serve() as app:
        yield app


def client(
    served: ServedApp, token: str, kind: TokenKind, clock: Clock | None = None, **kw: Any
) -> LabelStudioClient:
    options: dict[str, Any] = {"sleep": lambda s: None, **kw}
    if clock is not None:
        options.update(clock=clock, wall_clock=clock)
    return LabelStudioClient(served.url, token, kind, http=HttpOptions(**options))


def test_legacy_token_exports_the_project(served: ServedApp, emulator: LabelStudioEmulator) -> None:
    with client(served, emulator.legacy_token, TokenKind.LEGACY) as ls:
        raw = ls.export(1)

    tasks = json.loads(raw)
    assert [t["data"]["text"] for t in tasks][:1] == ["book a flight to Paris tomorrow"]
    assert tasks == json.loads(EXPORT.read_text(encoding="utf-8"))
    request = emulator.recorded("export")[0]
    assert request.headers["authorization"] == f"Token {emulator.legacy_token}"
    assert request.query == "exportType=JSON&download_all_tasks=true"


def test_personal_access_token_is_exchanged_once_and_refreshed_before_expiry(
    served: ServedApp, emulator: LabelStudioEmulator, clock: Clock
) -> None:
    ls = client(served, emulator.personal_access_token, TokenKind.PAT, clock)

    ls.export(1)
    ls.export(1)
    assert emulator.refreshes == 1  # one access token serves both requests
    refresh = emulator.recorded("refresh")[0]
    assert refresh.json() == {"refresh": emulator.personal_access_token}
    bearer = emulator.recorded("export")[0].headers["authorization"]
    assert bearer.startswith("Bearer ") and emulator.personal_access_token not in bearer

    clock.now += 290  # the 5-minute access token is about to expire: refreshed before use
    ls.export(1)
    ls.close()
    assert emulator.refreshes == 2
    assert [r.endpoint for r in emulator.requests] == ["refresh", "export", "export", "refresh", "export"]


def test_a_401_on_an_access_token_refreshes_once_and_retries(
    served: ServedApp, emulator: LabelStudioEmulator
) -> None:
    ls = client(served, emulator.personal_access_token, TokenKind.PAT)
    ls.export(1)
    emulator.faults.inject("export", Fault.TOKEN_EXPIRED)  # the server revokes every access token

    ls.export(1)

    assert emulator.refreshes == 2
    assert [r.endpoint for r in emulator.requests] == ["refresh", "export", "export", "refresh", "export"]


def test_the_pat_is_not_a_bearer_token(served: ServedApp, emulator: LabelStudioEmulator) -> None:
    # A user who pastes the PAT with token_kind 'legacy' gets the refusal, not a crash or a leak.
    with pytest.raises(SourceError) as info:
        client(served, emulator.personal_access_token, TokenKind.LEGACY).export(1)

    message = str(info.value)
    assert "Label Studio project 1 at http://127.0.0.1:" in message
    assert "HTTP 401" in message and "Invalid token" in message
    assert "nothing was pulled and nothing was trained" in message
    assert emulator.personal_access_token not in message


def test_disabled_legacy_tokens_say_how_to_fix_it(served: ServedApp, emulator: LabelStudioEmulator) -> None:
    emulator.legacy_enabled = False

    with pytest.raises(SourceError) as info:
        client(served, emulator.legacy_token, TokenKind.LEGACY).export(1)

    message = str(info.value)
    assert "legacy token authentication has been disabled for this organization" in message
    assert "personal access token" in message and "token_kind 'pat'" in message
    assert emulator.legacy_token not in message


def test_a_revoked_pat_is_refused_at_the_refresh_endpoint(
    served: ServedApp, emulator: LabelStudioEmulator
) -> None:
    wrong = emulator.personal_access_token[:-6] + "AAAAAA"

    with pytest.raises(SourceError) as info:
        client(served, wrong, TokenKind.PAT).export(1)

    message = str(info.value)
    assert (
        "the personal access token was refused at POST /api/token/refresh/" in message
        and "Token is invalid or expired" in message
    )
    assert wrong not in message and emulator.recorded("export") == []


def test_unknown_project_is_a_404_naming_the_project(
    served: ServedApp, emulator: LabelStudioEmulator
) -> None:
    with pytest.raises(SourceError) as info:
        client(served, emulator.legacy_token, TokenKind.LEGACY).export(42)

    assert "Label Studio project 42" in str(info.value)
    assert "HTTP 404" in str(info.value) and "check project_id in the source block" in str(info.value)
    assert not isinstance(info.value, TransientSourceError)


def test_server_errors_are_retried_then_transient(served: ServedApp, emulator: LabelStudioEmulator) -> None:
    emulator.faults.inject("export", Fault.SERVER_ERROR, times=2)
    assert json.loads(client(served, emulator.legacy_token, TokenKind.LEGACY).export(1))

    emulator.faults.inject("export", Fault.SERVER_ERROR, times=10)
    with pytest.raises(TransientSourceError) as info:
        client(served, emulator.legacy_token, TokenKind.LEGACY, max_retries=2).export(1)

    message = str(info.value)
    assert "answered 500 on 3 attempts" in message
    assert "the step is retried" in message and "the next scheduled run pulls again" in message
    assert emulator.legacy_token not in message


def test_unreachable_server_is_transient(emulator: LabelStudioEmulator) -> None:
    with emulator.serve() as app:
        url = app.url
    with pytest.raises(TransientSourceError) as info:
        http = HttpOptions(sleep=lambda s: None, max_retries=1)
        LabelStudioClient(url, "tok-12345678", http=http).export(1)
    assert f"Label Studio project 1 at {url}" in str(info.value)


def test_pull_writes_a_content_addressed_export_with_provenance(
    served: ServedApp, emulator: LabelStudioEmulator, tmp_path: Path
) -> None:
    def pull() -> Any:
        ls = client(served, emulator.legacy_token, TokenKind.LEGACY)
        return LabelStudioExportSource(ls, 1, reference="nluflow-label-studio-source/bookings").pull(tmp_path)

    first = pull()
    again = pull()
    assert first.paths == again.paths  # unchanged export → the same file
    task = emulator.add_task("fly me to Rome")
    emulator.annotate(task, "book_flight", [(10, 14, "city")])
    skipped = emulator.add_task("asdf qwerty")
    emulator.annotate(skipped, None, cancelled=True)
    emulator.add_task("not annotated yet")
    changed = pull()

    assert changed.paths != first.paths
    lines = Path(changed.paths[0]).read_text(encoding="utf-8").splitlines()
    assert lines[1] == " {" and len(lines) > 100  # one task after another, not Label Studio's single line
    rome = next(i for i, line in enumerate(lines) if '"text": "fly me to Rome"' in line)
    task_start = max(i for i in range(rome) if lines[i] == " {") + 1  # 1-based line of Rome's task
    example = load_paths(changed.paths).examples[-1]
    assert example.text == "fly me to Rome" and example.where() == f"{changed.paths[0]}:{task_start}"
    # In a run, messages name the task's page in Label Studio instead (where it can be fixed).
    example = with_source_origins(load_paths(changed.paths)).examples[-1]
    assert example.where() == f"{served.url}/projects/1/data?task={task}"
    p = changed.provenance
    assert (p.kind, p.reference) == ("label-studio", "nluflow-label-studio-source/bookings")
    assert p.description == f"Label Studio project 1 at {served.url}"
    assert (p.tasks, p.annotations, p.used_annotations) == (8, 7, 6)
    assert (p.cancelled, p.skipped_tasks, p.unannotated_tasks, p.disagreements) == (1, 1, 1, 0)
    assert "8 tasks, 7 annotations (6 used, 1 cancelled" in p.summary()
    assert emulator.legacy_token not in p.model_dump_json()


def test_a_project_without_usable_annotations_is_a_data_error(
    served: ServedApp, emulator: LabelStudioEmulator, tmp_path: Path
) -> None:
    emulator.projects[2] = []
    emulator.annotate(emulator.add_task("skipped one", project=2), None, cancelled=True)
    ls = client(served, emulator.legacy_token, TokenKind.LEGACY)

    with pytest.raises(DataError) as info:
        LabelStudioExportSource(ls, 2).pull(tmp_path)

    assert str(info.value).startswith(
        f"Label Studio project 2 at {served.url}: no usable annotation: 1 tasks"
    )
    assert "annotate tasks in Label Studio and rerun" in str(info.value)


def test_annotations_without_an_intent_name_their_tasks(
    served: ServedApp, emulator: LabelStudioEmulator, tmp_path: Path
) -> None:
    task = emulator.add_task("Paris please")
    annotation = emulator.annotate(task, None, [(0, 5, "city")])  # spans only, the intent forgotten
    ls = client(served, emulator.legacy_token, TokenKind.LEGACY)

    with pytest.raises(DataError) as info:
        LabelStudioExportSource(ls, 1).pull(tmp_path)

    message = str(info.value)
    assert message.startswith(f"Label Studio project 1 at {served.url}: 1 annotated task cannot become")
    assert f"task {task} (annotation {annotation}) has no intent choice" in message
    assert "fix or skip these tasks in Label Studio and rerun" in message


def test_no_token_in_logs_reprs_or_pickled_errors(
    served: ServedApp, emulator: LabelStudioEmulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import pickle

    caplog.set_level(logging.DEBUG)
    emulator.faults.inject("export", Fault.SERVER_ERROR)
    ls = client(served, emulator.personal_access_token, TokenKind.PAT)
    ls.export(1)
    seen = set(emulator.access_tokens)  # the first access token, revoked by the next fault
    emulator.faults.inject("export", Fault.TOKEN_EXPIRED)
    ls.export(1)
    seen |= set(emulator.access_tokens)
    with pytest.raises(SourceError) as info:
        ls.export(99)
    texts = [
        caplog.text,
        repr(ls),
        repr(ls.session),
        str(info.value),
        repr(pickle.loads(pickle.dumps(info.value))),
    ]

    secrets = [emulator.personal_access_token, *seen]
    assert len(secrets) == 3 and emulator.refreshes == 2
    for secret in secrets:
        assert all(secret not in text for text in texts)
    assert "retry 1/" in caplog.text  # the 500 was logged, without credentials


def test_validation_findings_point_at_the_task_in_label_studio(
    served: ServedApp, emulator: LabelStudioEmulator, tmp_path: Path
) -> None:
    from nluflow.data.validation import validate

    task = emulator.add_task("weather in Rome please")
    emulator.annotate(task, "weather", [(11, 15, "city")])
    emulator.projects[1][-1]["annotations"][0]["result"][1]["value"]["text"] = "Roma"  # offsets ≠ text
    pulled = LabelStudioExportSource(client(served, emulator.legacy_token, TokenKind.LEGACY), 1).pull(
        tmp_path
    )

    report = validate(with_source_origins(load_paths(pulled.paths)))

    [finding] = [f for f in report.findings if f.rule == "span"]
    assert finding.locations == [f"{served.url}/projects/1/data?task={task}"]
