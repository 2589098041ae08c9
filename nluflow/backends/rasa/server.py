"""A Rasa server as nluflow sees it: settings, sessions, ``GET /status``, and the one-model-per-project rule.

The training job (``training.py``) and evaluation and activation (``backend.py``) build on this class.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nluflow.backends.base import ClosingClient, ModelRef
from nluflow.backends.errors import ContractError, HTTPStatusError, ServedModelMismatchError
from nluflow.backends.http import Auth, HttpOptions, HttpSession, QueryTokenAuth, bearer_auth
from nluflow.backends.http.polling import PollSchedule
from nluflow.backends.rasa.documents import archive_metadata, same_model, tag_project
from nluflow.errors import ConfigError, NluflowError
from nluflow.hashing import sha256_text

logger = logging.getLogger("nluflow.backends.rasa")

# Training runs inside the request: allow hours before the read gives up.
TRAIN_READ_TIMEOUT = 3 * 3600.0
# How long to wait for a running training to end: before sending one, and after a train answer was lost
# (then the archive that training wrote is looked for in the server's models folder).
IDLE_WAIT = 3 * 3600.0


@dataclass(frozen=True)
class RasaSettings:
    """How nluflow uses a Rasa server, beyond its URL and credentials (the Rasa block's fields)."""

    # A second Rasa server sharing the models folder, used to parse test utterances with full predictions.
    evaluation_url: str | None = None
    # Where the server saves trained archives, relative to its working folder.
    models_dir: str = "models"
    # The server's models folder as mounted on this machine (shared volume), or None: lets a lost training
    # answer be picked up and lets activate put back an archive the server lost (Rasa cannot upload one).
    server_models_folder: str | Path | None = None
    language: str = "en"
    pipeline: list[dict[str, Any]] | None = None
    train_timeout: float = TRAIN_READ_TIMEOUT
    idle_wait: float = IDLE_WAIT


class RasaServer(ClosingClient):
    """A Rasa Open Source server (``rasa run --enable-api``): its sessions, its status, the project it serves.

    A context manager: ``close`` ends its HTTP clients.
    """

    name = "rasa"

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        jwt: str | None = None,
        settings: RasaSettings | None = None,
        project: str | None = None,
        workdir: str | Path | None = None,
        http: HttpOptions | None = None,
        on_progress: Callable[[float, str], None] | None = None,
    ) -> None:
        if token and jwt:
            raise ConfigError("give the Rasa server either a token or a JWT, not both")
        settings = settings or RasaSettings()
        self.settings = settings
        self.models_dir = settings.models_dir.rstrip("/")
        folder = settings.server_models_folder
        self.server_models_folder = str(folder) if folder else None
        self.project = project
        self.language = settings.language
        self.pipeline = settings.pipeline
        self.train_timeout = settings.train_timeout
        self.idle_wait = settings.idle_wait
        self.on_progress = on_progress
        self.workdir = (
            Path(workdir) if workdir else Path(tempfile.gettempdir()) / "nluflow-rasa" / sha256_text(url)[:12]
        )
        auth: Auth | None = QueryTokenAuth(token) if token else bearer_auth(jwt) if jwt else None
        self._session = HttpSession.open(url, http, auth=auth)
        self._eval: HttpSession | None = None
        if settings.evaluation_url:
            self._eval = HttpSession.open(settings.evaluation_url, http, auth=auth)
        self._http = self._session.options

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._session!r}, evaluation={self._eval!r})"

    def close(self) -> None:
        self._session.close()
        if self._eval is not None:
            self._eval.close()

    # ------------------------------------------------------------------------------------------- training

    def _status(self, session: HttpSession) -> dict[str, Any] | None:
        """``GET /status``, or None when the server has no model loaded (it answers 409 then)."""
        try:
            body = session.json("GET", "/status")
        except HTTPStatusError as exc:
            if exc.status == 409:
                return None
            raise
        if not isinstance(body, dict):
            raise ContractError(f"GET /status: expected a JSON object, found {type(body).__name__}")
        return body

    def _running(self) -> int | None:
        """How many trainings the server runs now (``GET /status``), or None when it cannot say (409: no
        model loaded)."""
        body = self._status(self._session)
        if body is None:
            return None
        active = body.get("num_active_training_jobs", 0)
        if not isinstance(active, int):
            raise ContractError(f"GET /status: num_active_training_jobs is {active!r}, expected an integer")
        return active

    def _wait_until_idle(self, max_wait: float) -> int | None:
        """Poll ``GET /status`` until no training runs or ``max_wait`` has passed; the number still running
        (0 when idle, None when the server cannot say)."""
        deadline = self._http.clock() + max_wait
        for delay in PollSchedule().delays():
            running = self._running()
            if not running:
                return running
            remaining = deadline - self._http.clock()
            if remaining <= 0:
                return running
            if self.on_progress is not None:
                self.on_progress(0.0, f"waiting for {running} training(s) on the Rasa server to end")
            self._http.sleep(min(delay, remaining))
        raise AssertionError("unreachable: the schedule never ends")  # pragma: no cover

    def _running_quietly(self) -> str:
        """``GET /status``'s count of running trainings, as words for an error message (never raises)."""
        try:
            running = self._running()
        except NluflowError:
            return "GET /status could not be read"
        if running is None:
            return "GET /status cannot count trainings: no model is loaded"
        return f"GET /status: {running} training(s) running"

    # ------------------------------------------------------------------------------------ one model served

    def _owner_of(self, filename: str) -> str | None:
        """The project an archive was trained for (its ``metadata.json`` ``assistant_id``), read from the
        server's models folder or from this client's own copy; None when unknown."""
        places = [Path(self.server_models_folder) / filename] if self.server_models_folder else []
        places += sorted(self.workdir.glob(f"*/{filename}"))
        for path in places:
            if path.is_file():
                metadata = archive_metadata(path)
                if metadata is not None:
                    return tag_project(metadata.get("assistant_id"))
        return None

    def _check_served_owner(self, action: str, project: str | None = None) -> None:
        """Refuse when the server serves a model trained for another project: Rasa serves one model, so two
        projects on one server replace each other's served model with every promotion or rollback."""
        project = project or self.project
        if not project:
            return
        status = self._status(self._session)
        served = status.get("model_file") if status else None
        if not isinstance(served, str):
            return
        owner = self._owner_of(Path(served).name)
        if owner is None or owner == project:
            return
        raise ServedModelMismatchError(
            f"the Rasa server serves {served}, a model trained for project {owner!r}, not for project "
            f"{project!r}: two projects share this server, and each promotion or rollback of one replaces "
            f"the other's served model. nluflow refuses to {action} for project {project!r} against it; "
            "nothing was changed. Give each project its own Rasa server (README, Rasa section); if project "
            f"{owner!r} no longer uses this server, load a model of {project!r} on it once by hand "
            "(PUT /model) and run again"
        )

    def check_active_served(self, active: ModelRef, project: str) -> None:
        """Refuse to work against a server that does not serve ``project``'s active model: ``GET /status``
        names the loaded archive, the store's pointer names ``active``. A server with no model loaded (a
        restart) is only logged: nothing of another project's is at stake."""
        if active.backend != self.name:
            return  # trained on another platform: this server never served it
        path = self._model_path(active)
        status = self._status(self._session)
        served = status.get("model_file") if status else None
        if not isinstance(served, str):
            logger.warning("the Rasa server has no model loaded; %s's active model is %s", project, path)
            return
        if same_model(served, path):
            return
        owner = self._owner_of(Path(served).name)
        whose = f"a model trained for project {owner!r}" if owner else "a model nluflow did not activate"
        raise ServedModelMismatchError(
            f"project {project!r}'s active model is {path} (the store's pointer), but the Rasa server serves "
            f"{served}, {whose}: another project shares this server, or the model was changed by hand. "
            f"nluflow refuses to evaluate or promote for {project!r} against it; nothing was changed. Give "
            f"each project its own Rasa server (README, Rasa section), or make pointer and server agree: "
            f"`nluflow models activate {active.model_id} --project {project}` serves the active model again"
        )

    @staticmethod
    def _project_of(model: ModelRef) -> str | None:
        """The project recorded with a fetched model (``rasa-model.json``), if any."""
        if not model.path:
            return None
        try:
            record = json.loads((Path(model.path) / "rasa-model.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        project = record.get("project") if isinstance(record, dict) else None
        return project if isinstance(project, str) and project else None

    def bind_project(self, project: str) -> None:
        """Name the project this client trains for: its archives carry it (``assistant_id``), and a
        server that serves another project's model is refused (one Rasa server serves one model)."""
        self.project = project

    def _model_path(self, model: ModelRef) -> str:
        if model.backend_model_id:
            return model.backend_model_id
        return f"{self.models_dir}/{model.model_id}"

    def served_model(self) -> str | None:
        """The model file the Rasa server serves now, or None when it has none loaded."""
        status = self._status(self._session)
        value = status.get("model_file") if status else None
        return str(value) if value is not None else None
