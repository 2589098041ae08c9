"""The Rasa backend: training (``training.py``), evaluation without replacing the served model, activation."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from nluflow.backends.base import ModelRef, Parse
from nluflow.backends.errors import HTTPStatusError
from nluflow.backends.http import HttpSession
from nluflow.backends.rasa.documents import same_model
from nluflow.backends.rasa.evaluation import PLACEHOLDER_INTENT, evaluate_intents
from nluflow.backends.rasa.training import RasaTraining
from nluflow.backends.service import parse_from_json
from nluflow.data.schema import Example
from nluflow.errors import BackendError


class RasaBackend(RasaTraining):
    """A Rasa Open Source server (``rasa run --enable-api``) as a training backend; a context manager."""

    def predict(self, model: ModelRef, texts: Sequence[str]) -> list[Parse]:
        """Predict unlabelled texts; without an evaluation server they go to ``/model/test/intents`` under
        ``PLACEHOLDER_INTENT`` (Rasa needs a label; the predictions do not depend on it)."""
        path = self._model_path(model)
        if not texts:
            return []
        self._check_served_owner("evaluate models", self._project_of(model))
        if self._eval is not None:
            return self._parse_on(self._eval, path, texts)
        return evaluate_intents(
            self._session, path, [Example(text=t, intent=PLACEHOLDER_INTENT) for t in texts]
        )

    def _parse_on(self, session: HttpSession, path: str, texts: Sequence[str]) -> list[Parse]:
        status = self._status(session)
        if status is None or not same_model(status.get("model_file"), path):
            session.request("PUT", "/model", json_body={"model_file": path})
        out = []
        for text in texts:
            body = session.json("POST", "/model/parse", json_body={"text": text}, retry_safe=True)
            out.append(parse_from_json(body, text, f"Rasa model {path}"))
        return out

    def predict_labelled(self, model: ModelRef, examples: Sequence[Example]) -> list[Parse]:
        """Predict a labelled test set: without an evaluation server it is sent to ``/model/test/intents``
        with its true intents and entities, which Rasa 3.x needs to evaluate at all (see
        ``evaluate_intents``); the metrics are still nluflow's, computed from the per-utterance predictions
        returned."""
        path = self._model_path(model)
        if not examples:
            return []
        self._check_served_owner("evaluate models", self._project_of(model))
        if self._eval is not None:
            return self._parse_on(self._eval, path, [e.text for e in examples])
        return evaluate_intents(self._session, path, examples)

    def activate(self, model: ModelRef) -> None:
        """``PUT /model`` with the model's path on the server; when the server no longer has the archive
        (a 400: it was cleaned from its models folder), put nluflow's copy back there and load it again."""
        path = self._model_path(model)
        self._check_served_owner(f"activate or roll back to {path}", self._project_of(model))
        try:
            self._session.request("PUT", "/model", json_body={"model_file": path})
        except HTTPStatusError as exc:
            if exc.status != 400:
                raise
            self._restore_archive(model, path, exc)
            self._session.request("PUT", "/model", json_body={"model_file": path})
        status = self._status(self._session)
        served = status.get("model_file") if status else None
        if not same_model(served, path):
            raise BackendError(
                f"Rasa accepted PUT /model for {path} but GET /status reports {served!r}; the served model "
                "did not change as expected"
            )

    def _restore_archive(self, model: ModelRef, path: str, refused: HTTPStatusError) -> None:
        """Copy the model's archive from nluflow's copy (the store's model folder) into the server's models
        folder. Rasa's HTTP API has no upload call, so this needs ``server_models_folder``: the server's
        models folder as this machine sees it (a shared volume). The copy is written under a temporary name
        and renamed, so the server never sees half an archive."""
        filename = PurePosixPath(path).name
        archive = Path(model.path) / filename if model.path else None
        has_copy = archive is not None and archive.is_file()
        no_copy = f"nluflow has no copy of it either (expected {archive or 'a model folder in the store'})"
        if self.server_models_folder is None:
            where = (
                f"nluflow holds it at {archive}: copy that file to the server as {path}"
                if has_copy
                else no_copy
            )
            raise BackendError(
                f"the Rasa server cannot load {path} ({refused}). If its archive is no longer in the "
                f"server's models folder, {where} and activate again, or set the Rasa block's "
                "server_models_folder to where the server's models folder is mounted on this machine, so "
                "nluflow puts it back itself; the served model did not change"
            ) from refused
        folder = Path(self.server_models_folder)
        if not folder.is_dir():
            raise BackendError(
                f"the Rasa server cannot load {path} ({refused}) and the block's server_models_folder "
                f"{folder} is not a folder on this machine; mount the server's models folder there (or fix "
                "the block) and activate again; the served model did not change"
            ) from refused
        if (folder / filename).is_file():
            raise refused  # the server has the archive: it refused the model for another reason
        if not has_copy or archive is None:
            raise BackendError(
                f"the Rasa server cannot load {path}: its archive is gone from {folder} and {no_copy}; "
                "activate another model or retrain; the served model did not change"
            ) from refused
        target = folder / filename
        tmp = target.with_name(f".{filename}.nluflow.part")
        try:
            shutil.copyfile(archive, tmp)
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise BackendError(
                f"could not copy {archive} into the Rasa server's models folder {folder} ({exc.strerror}); "
                "the served model did not change"
            ) from exc
