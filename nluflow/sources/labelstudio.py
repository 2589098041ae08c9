"""Label Studio as a data source: export a project at run time, with either of Label Studio 1.23's auths.

Shapes and behaviour follow a real Label Studio 1.23.2 (captured in ``tests/fixtures/label-studio/``):

- **Export**: ``GET /api/projects/{id}/export?exportType=JSON&download_all_tasks=true`` answers the whole
  project as one JSON list of tasks (``id, data, annotations[...], ...``), synchronously. Without
  ``download_all_tasks=true`` a real 1.23.2 leaves out every task with no annotation at all (skipped ones
  stay), so tasks without annotations could not be counted.
- **Legacy token**: ``Authorization: Token <key>``. New organisations in 1.23 have legacy tokens disabled
  (401 "legacy token authentication has been disabled for this organization").
- **Personal access token (PAT)**: a JWT *refresh* token. ``POST /api/token/refresh/ {"refresh": PAT}``
  answers ``{"access": ...}``, valid 5 minutes, sent as ``Authorization: Bearer <access>``; the PAT itself is
  not accepted as a bearer. :class:`PersonalAccessTokenAuth` exchanges it on first use, again shortly before
  the access token's ``exp``, and once more after a 401.

Requests go through nluflow's one HTTP layer (:mod:`nluflow.backends.http`): explicit timeouts, retries on
408/429/5xx and transport errors only, secrets redacted from every message. Its errors are turned into
:class:`~nluflow.errors.SourceError` (or :class:`~nluflow.errors.TransientSourceError`, worth retrying) that
name the project and server and say what happens next; never the token.
"""

from __future__ import annotations

import base64
import json
import logging
from collections import Counter
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx

from nluflow.backends.base import ClosingClient
from nluflow.backends.errors import (
    AuthenticationError,
    HTTPStatusError,
    MalformedResponseError,
    TransientHTTPError,
)
from nluflow.backends.http import HeaderAuth, HttpOptions, HttpSession, Redactor
from nluflow.backends.http.auth import RefreshingTokenAuth, Token
from nluflow.data.formats.label_studio import annotation_label, choose_annotation
from nluflow.errors import BackendError, DataError, SourceError, TransientSourceError
from nluflow.sources.base import (
    PulledData,
    SourceProvenance,
    sha256_bytes,
    write_content_addressed,
    write_origins,
)

logger = logging.getLogger(__name__)

EXPORT_PATH = "/api/projects/{project_id}/export"
# Every task, annotated or not (the default leaves out tasks without annotations; measured on 1.23.2).
EXPORT_PARAMS = {"exportType": "JSON", "download_all_tasks": "true"}
TOKEN_REFRESH_PATH = "/api/token/refresh/"
# Label Studio 1.23 issues access tokens for 5 minutes; used when a token carries no readable ``exp``.
ACCESS_TOKEN_TTL = 300.0
# Refresh this long before the access token expires (a request must not race the expiry).
ACCESS_REFRESH_MARGIN = 30.0
# A synchronous export of a large project can take minutes: the read timeout is generous.
EXPORT_READ_TIMEOUT = 300.0

_NEXT = "nothing was pulled and nothing was trained"


class TokenKind(StrEnum):
    """How the token authenticates: Label Studio's legacy API token, or a personal access token (JWT)."""

    LEGACY = "legacy"
    PAT = "pat"


def _jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim (epoch seconds) of a JWT, read without verifying it (only to plan the refresh)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, UnicodeDecodeError):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


class PersonalAccessTokenAuth(RefreshingTokenAuth):
    """A Label Studio personal access token: exchanged for short-lived bearer access tokens as needed."""

    def __init__(self, session: HttpSession, refresh_token: str, path: str = TOKEN_REFRESH_PATH) -> None:
        super().__init__(session, refresh_token)
        self.path = path

    def __repr__(self) -> str:
        return f"PersonalAccessTokenAuth(path={self.path!r})"

    def _fetch(self) -> Token:
        _, access = self._request_token(
            self.path,
            "access",
            lambda exc: (
                f"Label Studio refused the personal access token at {exc.url} (HTTP {exc.status}: "
                f"{exc.body_excerpt or 'no body'}); create a new one under Account & Settings → Personal "
                "Access Token and store it in the source block"
            ),
            json_body={"refresh": self._credential},
        )
        exp = _jwt_expiry(access)
        lifetime = exp - self._session.wall_clock() if exp is not None else ACCESS_TOKEN_TTL
        margin = min(ACCESS_REFRESH_MARGIN, max(lifetime, 0.0) / 2.0)
        logger.debug("exchanged the personal access token for an access token (%.0f s)", lifetime)
        return Token(f"Bearer {access}", access, self._session.clock() + lifetime - margin)


class LabelStudioClient(ClosingClient):
    """A small Label Studio API client: what nluflow needs, the project export. Knows nothing of Prefect.

    ``http`` carries the transport, sleep and clocks (tests run it against the emulator, fault injection
    included); the export's read timeout is ``export_timeout``. A fresh client per pull; close it (or use it
    as a context manager) when done.
    """

    def __init__(
        self,
        url: str,
        token: str,
        token_kind: TokenKind | str = TokenKind.LEGACY,
        *,
        export_timeout: float = EXPORT_READ_TIMEOUT,
        http: HttpOptions | None = None,
    ) -> None:
        if not token:
            raise SourceError(f"Label Studio at {url}: no token given; expected an API token; {_NEXT}")
        self.token_kind = TokenKind(token_kind)
        redactor = Redactor([token])
        self.url = redactor.url(url.rstrip("/"))
        options = (http or HttpOptions()).with_read_timeout(export_timeout)
        self.session = HttpSession.open(url, options, redactor=redactor)
        if self.token_kind is TokenKind.PAT:
            self.session.auth = PersonalAccessTokenAuth(self.session, token)
        else:
            self.session.auth = HeaderAuth("Authorization", token, prefix="Token ")

    def __repr__(self) -> str:
        return f"LabelStudioClient({self.url!r}, token_kind={self.token_kind.value!r})"

    def close(self) -> None:
        self.session.close()

    def where(self, project_id: int) -> str:
        return f"Label Studio project {project_id} at {self.url}"

    def export(self, project_id: int) -> bytes:
        """The project's JSON export (raw bytes, checked to be a JSON list of tasks)."""
        where = self.where(project_id)
        try:
            response = self.session.request(
                "GET",
                EXPORT_PATH.format(project_id=project_id),
                params=EXPORT_PARAMS,
                expect_json=True,
            )
        except AuthenticationError as exc:
            refresh = TOKEN_REFRESH_PATH in exc.url
            stage = (
                f"the personal access token was refused at POST {TOKEN_REFRESH_PATH}"
                if refresh
                else "the export was refused"
            )
            hint = (
                "check the personal access token in the source block (a new one is made under Account & "
                "Settings → Personal Access Token)"
                if self.token_kind is TokenKind.PAT
                else "check the token in the source block; Label Studio 1.23 disables legacy tokens in new "
                "organisations (use a personal access token with token_kind 'pat', or start Label Studio "
                "with --enable-legacy-api-token)"
            )
            raise SourceError(
                f"{where}: {stage} (HTTP {exc.status}: {exc.body_excerpt or 'no body'}); {hint}; {_NEXT}"
            ) from None
        except HTTPStatusError as exc:
            what = (
                "no such project; check project_id in the source block"
                if exc.status == 404
                else "a client error, not retried"
            )
            raise SourceError(
                f"{where}: the export answered HTTP {exc.status} ({exc.body_excerpt or 'no body'}): {what}; "
                f"{_NEXT}"
            ) from None
        except (TransientHTTPError, MalformedResponseError) as exc:
            raise TransientSourceError(
                f"{where}: the export failed ({exc.message}); the step is retried, and if it keeps failing "
                f"this run ends with {_NEXT}; the next scheduled run pulls again"
            ) from None
        except BackendError as exc:  # a transport problem that retrying cannot fix (bad URL scheme, ...)
            raise SourceError(f"{where}: {exc}; check the URL in the source block; {_NEXT}") from None
        raw = response.content
        if not isinstance(response.json(), list):
            raise SourceError(
                f"{where}: the export is a JSON {type(response.json()).__name__}; expected a JSON list of "
                f"tasks (exportType=JSON); {_NEXT}"
            )
        return raw


def export_counts(tasks: list[Any]) -> Counter[str]:
    """Task and annotation counts of a JSON export, decided exactly as the loader decides them."""
    counts: Counter[str] = Counter()
    for task in tasks:
        if not isinstance(task, dict):
            continue
        counts["tasks"] += 1
        annotations = task.get("annotations")
        counts["annotations"] += len(annotations) if isinstance(annotations, list) else 0
        chosen, task_counts, disagree = choose_annotation(annotations)
        counts.update(task_counts)
        counts["used_annotations"] += chosen is not None
        counts["disagreements"] += disagree
    return counts


def export_problems(tasks: list[Any]) -> list[str]:
    """Tasks whose chosen annotation cannot become an example (no text, no intent choice), by task id."""
    problems: list[str] = []
    for task in tasks:
        if not isinstance(task, dict):
            continue
        chosen, _, _ = choose_annotation(task.get("annotations"))
        if chosen is None:
            continue
        data = task.get("data")
        text = data.get("text") if isinstance(data, dict) else None
        intent, _ = annotation_label(chosen)
        if not isinstance(text, str) or not text.strip():
            problems.append(f"task {task.get('id')} has no data.text")
        elif not isinstance(intent, str) or not intent.strip():
            problems.append(f"task {task.get('id')} (annotation {chosen.get('id')}) has no intent choice")
    return problems


class LabelStudioExportSource:
    """One Label Studio project as a :class:`~nluflow.sources.base.DataSource`: export → file → provenance."""

    def __init__(self, client: LabelStudioClient, project_id: int, reference: str | None = None) -> None:
        self.client = client
        self.project_id = project_id
        self.reference = reference

    def describe(self) -> str:
        return self.client.where(self.project_id)

    def pull(self, dest: Path) -> PulledData:
        """Export now; write the export content-addressed below ``dest``; count what it holds."""
        exported_at = datetime.now(UTC).isoformat(timespec="seconds")
        with self.client:
            raw = self.client.export(self.project_id)
        tasks = json.loads(raw)
        counts = export_counts(tasks)
        where = self.describe()
        if not counts["used_annotations"]:
            raise DataError(
                f"no usable annotation: {counts['tasks']} tasks, {counts['annotations']} annotations "
                f"({counts['cancelled_annotations']} cancelled); expected at least one task annotated and "
                "not skipped; nothing was trained; annotate tasks in Label Studio and rerun",
                where,
            )
        problems = export_problems(tasks)
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise DataError(
                f"{len(problems)} annotated task{'s' if len(problems) != 1 else ''} cannot become examples: "
                f"{shown}; expected a text and one intent choice per annotation; nothing was trained; fix "
                "or skip these tasks in Label Studio and rerun",
                where,
            )
        host = httpx.URL(self.client.url).netloc.decode().replace(":", "-") or "label-studio"
        folder = dest / "label-studio" / f"{host}-project-{self.project_id}"
        # Label Studio sends one compact line; one task per line block gives messages a useful file:line.
        readable = json.dumps(tasks, indent=1, ensure_ascii=False).encode("utf-8") + b"\n"
        path = write_content_addressed(folder, "export", ".json", readable)
        # Messages about an example name its task's page in Label Studio, where it can be fixed.
        starts = [n for n, line in enumerate(readable.decode("utf-8").split("\n"), 1) if line == " {"]
        pages = [f"{self.client.url}/projects/{self.project_id}/data?task={task.get('id')}" for task in tasks]
        write_origins(path, dict(zip(starts, pages, strict=True)))
        provenance = SourceProvenance(
            kind="label-studio",
            reference=self.reference,
            description=where,
            exported_at=exported_at,
            sha256=sha256_bytes(raw),
            files=1,
            tasks=counts["tasks"],
            annotations=counts["annotations"],
            used_annotations=counts["used_annotations"],
            cancelled=counts["cancelled_annotations"],
            skipped_tasks=counts["cancelled_only_tasks"],
            unannotated_tasks=counts["unannotated_tasks"],
            disagreements=counts["disagreements"],
        )
        logger.info("pulled %s", provenance.summary())
        return PulledData(paths=[str(path)], provenance=provenance)
