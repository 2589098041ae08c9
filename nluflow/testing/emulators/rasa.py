"""Emulator of the Rasa Open Source HTTP API (3.x server code shapes; see the specs' rasa/README.md).

Implemented: ``GET /``, ``GET /version``, ``GET /status`` (409 with no model loaded; ``model_id`` is
the loaded archive's ``metadata.json`` ``model_id``), ``POST /model/train`` (YAML body, the archive in the
body and its name in the ``filename`` header, 400 ``BadRequest`` on bad YAML, 500 ``TrainingError``),
``PUT /model`` (204, 400 when the file cannot be loaded), ``POST /model/parse`` and
``POST /model/test/intents`` (YAML only when the Content-Type is exactly ``application/x-yaml``). Auth:
``?token=`` or an HS256 JWT with role ``admin``. Every error has Rasa's ``ErrorResponse`` body.

Training is Rasa 3.x's (``rasa/server.py`` ``train``, ``rasa/model_training.py`` ``train``): every request
trains and writes a new archive ``nlu-<YYYYmmdd-HHMMSS>-<random name>.tar.gz`` into the models folder, also
for unchanged data (3.x has no "Nothing changed" reply: ``force_training`` only decides whether cached
component results may be reused); the HTTP API has no ``fixed_model_name``. Each archive holds
``metadata.json`` (``model_id``, ``assistant_id`` from the config, ``trained_at``, ...), as
``LocalModelStorage`` writes it. ``trainings`` lists the ``assistant_id`` of every training started, so
tests can count them per run.

``/model/test/intents`` answers as Rasa 3.x's ``rasa.nlu.test.run_evaluation`` does: the test data is loaded
as ``TrainingData``, whose ``sanitize_examples`` drops identical examples (``OrderedDict.fromkeys``), so there
is one prediction per distinct example, not per one sent; ``intent_evaluation`` is null unless the data has
at least 2 distinct intents (``get_eval_data``: ``len(set(intent_labels)) >= 2``); ``entity_evaluation`` is
keyed by extractor (``DIETClassifier`` here) and carries no per-utterance predictions, only ``errors``: the
examples whose predicted entities differ from the targets, as ``{"text", "entities", "predicted_entities"}``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import itertools
import json
import shutil
import tarfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from fastapi import Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from nluflow.data.loaders import load_rasa_yaml
from nluflow.data.schema import Dataset
from nluflow.errors import DataError
from nluflow.testing.emulators._base import Emulator, JobPhase, TrainingJob
from nluflow.testing.emulators._middleware import Endpoint
from nluflow.testing.emulators._model import Predictor
from nluflow.testing.emulators._rasa_eval import (
    entity_evaluation,
    from_rasa_json,
    intent_evaluation,
    sanitize,
)

RASA_VERSION = "3.6.20"
# What a Rasa server answers when it fails while training (JobOutcome.ERROR): the exception it caught.
SERVER_FAILURE = "[Errno 28] No space left on device: '/app/.rasa/cache/tmp'"
_ADJECTIVES = ["brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "kind", "lucky", "proud"]
_NOUNS = ["owl", "fox", "yak", "emu", "elk", "cod", "ant", "bee", "cat", "dog"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(secret: str, payload: dict[str, Any]) -> str:
    """An HS256 JWT, as Rasa's ``--jwt-secret`` expects (tests sign their own)."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(payload).encode())
    signature = hmac.new(secret.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(signature)}"


def _verify_jwt(token: str, secret: str) -> dict[str, Any] | None:
    try:
        header, body, signature = token.split(".")
        expected = hmac.new(secret.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(_b64(expected), signature):
            return None
        payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (ValueError, TypeError):
        return None
    if not isinstance(payload, dict):
        return None
    if isinstance(payload.get("exp"), int | float) and payload["exp"] < time.time():
        return None
    return payload


def rasa_error(status: int, reason: str, message: str) -> JSONResponse:
    return JSONResponse(
        {
            "version": RASA_VERSION,
            "status": "failure",
            "message": message,
            "reason": reason,
            "details": {},
            "help": None,
            "code": status,
        },
        status_code=status,
    )


class RasaEmulator(Emulator):
    """``rasa run --enable-api`` with the local model behind it."""

    name = "rasa"
    title = "rasa emulator"

    def __init__(self, token: str | None = None, jwt_secret: str | None = None, **kw: Any) -> None:
        self.token = token
        self.jwt_secret = jwt_secret
        self.latest: str | None = None
        self.loaded: tuple[str, Predictor] | None = None
        self.loaded_model_id: str | None = None
        self.active_trainings = 0
        self.trainings: list[str | None] = []  # assistant_id of each training started, in order
        self._names = itertools.count()
        super().__init__(**kw)
        (self.workdir / "models").mkdir(parents=True, exist_ok=True)

    def error_body(self, status: int, title: str, detail: str) -> tuple[bytes, str]:
        response = rasa_error(status, title.replace(" ", ""), detail)
        return bytes(response.body), "application/json"

    # ------------------------------------------------------------------------------------------- helpers

    def authenticate(self, request: Request, body: bytes) -> Response | None:
        if self.token is None and self.jwt_secret is None:
            return None
        if self.token is not None and request.query_params.get("token") == self.token:
            return None
        header = request.headers.get("authorization", "")
        if self.jwt_secret is not None and header.startswith("Bearer "):
            payload = _verify_jwt(header.removeprefix("Bearer "), self.jwt_secret)
            if payload is not None:
                user = payload.get("user")
                if isinstance(user, dict) and user.get("role") == "admin":
                    return None
                return rasa_error(403, "NotAuthorized", "User has insufficient permissions.")
        return rasa_error(401, "NotAuthenticated", "User is not authenticated.")

    def _new_filename(self) -> str:
        n = next(self._names)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return f"nlu-{stamp}-{_ADJECTIVES[n % 10]}-{_NOUNS[(n // 10) % 10]}{n // 100 or ''}.tar.gz"

    def _write_archive(self, model_dir: Path, assistant_id: str | None, language: str | None = None) -> str:
        filename = self._new_filename()
        buffer = io.BytesIO()
        metadata = {
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "model_id": uuid.uuid4().hex,
            "assistant_id": assistant_id,
            "rasa_open_source_version": RASA_VERSION,
            "training_type": "nlu",
            "language": language,
        }
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for path in sorted(model_dir.rglob("*")):
                tar.add(path, arcname=f"nlu/{path.relative_to(model_dir)}", recursive=False)
            data = json.dumps(metadata).encode()
            info = tarfile.TarInfo("metadata.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        # Written under a temporary name and renamed, as the archive appears only when training has ended.
        target = self.workdir / "models" / filename
        tmp = target.with_name(f".{filename}.tmp")
        tmp.write_bytes(buffer.getvalue())
        tmp.replace(target)
        self.latest = filename
        return filename

    def _load(self, model_file: str) -> tuple[str, Predictor] | None:
        path = (self.workdir / model_file).resolve()
        if self.workdir.resolve() not in path.parents or not path.is_file():
            return None
        target = self.workdir / "loaded" / path.name
        if not target.exists():
            tmp = target.with_name(target.name + f".{uuid.uuid4().hex}")
            with tarfile.open(path, mode="r:gz") as tar:
                tar.extractall(tmp, filter="data")
            try:
                tmp.rename(target)
            except OSError:  # a concurrent load won
                shutil.rmtree(tmp, ignore_errors=True)
        return path.name, self.loader(target / "nlu")

    def _model_id(self, name: str) -> str | None:
        metadata = self.workdir / "loaded" / name / "metadata.json"
        try:
            value = json.loads(metadata.read_text(encoding="utf-8")).get("model_id")
        except (OSError, ValueError):
            return None
        return value if isinstance(value, str) else None

    def preload(self, dataset: Dataset, seed: int = 0) -> str:
        """Train and load a model at start-up (like a server that already serves a bot); not a counted job."""
        model = self.trainer(dataset, seed)
        model_dir = self.workdir / "preload"
        model_dir.mkdir(parents=True, exist_ok=True)
        model.save(model_dir)
        filename = self._write_archive(model_dir, "preloaded")
        self._serve(self._load(f"models/{filename}"))
        return f"models/{filename}"

    def lose_archive(self, filename: str) -> None:
        """Delete a trained archive from the models folder (and its unpacked copy), as an operator cleaning
        old models or a fresh container would: ``PUT /model`` for it then answers 400, like Rasa's."""
        (self.workdir / "models" / filename).unlink()
        shutil.rmtree(self.workdir / "loaded" / filename, ignore_errors=True)

    def _serve(self, loaded: tuple[str, Predictor] | None) -> None:
        self.loaded = loaded
        self.loaded_model_id = self._model_id(loaded[0]) if loaded else None

    def assistant_id_of(self, filename: str) -> str | None:
        """The ``assistant_id`` in an archive's ``metadata.json`` (what the config of its training said)."""
        with tarfile.open(self.workdir / "models" / filename, mode="r:gz") as tar:
            member = tar.extractfile("metadata.json")
            assert member is not None
            value = json.loads(member.read()).get("assistant_id")
        return value if isinstance(value, str) else None

    @property
    def models_folder(self) -> Path:
        """The server's models folder on disk (what a shared volume would expose to nluflow)."""
        return self.workdir / "models"

    def _dataset(self, text: str) -> Dataset:
        path = self.workdir / "requests" / f"{uuid.uuid4().hex}.yml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        try:
            return load_rasa_yaml(path)
        finally:
            path.unlink(missing_ok=True)

    @staticmethod
    def _parse_dict(parse: Any) -> dict[str, Any]:
        data: dict[str, Any] = parse.model_dump(mode="json")
        data["entities"] = [
            {**e, "confidence_entity": 0.99, "extractor": "DIETClassifier"} for e in data.get("entities", [])
        ]
        data["text_tokens"] = []
        data["intent_ranking"] = list(data.get("intent_ranking") or [])
        return data

    # -------------------------------------------------------------------------------------------- routes

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("GET", "/", self.health, public=True),
            Endpoint("GET", "/version", self.version, public=True),
            Endpoint("GET", "/status", self.status, "status"),
            Endpoint("POST", "/model/train", self.train, "train"),
            Endpoint("PUT", "/model", self.replace, "activate"),
            Endpoint("POST", "/model/parse", self.parse, "parse"),
            Endpoint("POST", "/model/test/intents", self.test_intents, "predict"),
        ]

    async def health(self, request: Request) -> Response:
        return PlainTextResponse(f"Hello from Rasa: {RASA_VERSION}")

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": RASA_VERSION, "minimum_compatible_version": "3.5.0"})

    async def status(self, request: Request) -> Response:
        if self.loaded is None:
            return rasa_error(
                409,
                "Conflict",
                "No agent loaded. To continue processing, a model of a trained agent needs to be loaded.",
            )
        return JSONResponse(
            {
                "model_file": self.loaded[0],
                "model_id": self.loaded_model_id,
                "num_active_training_jobs": self.active_trainings,
            }
        )

    async def train(self, request: Request) -> Response:
        raw = await request.body()
        try:
            text = raw.decode("utf-8")
            document = yaml.safe_load(text)
        except (UnicodeDecodeError, yaml.YAMLError) as exc:
            return rasa_error(
                400, "BadRequest", f"The request body does not contain valid YAML. Error: {exc}"
            )
        if not isinstance(document, dict) or "nlu" not in document:
            return rasa_error(400, "BadRequest", "The training data does not contain NLU data.")
        try:
            dataset = self._dataset(text)
        except DataError as exc:
            return rasa_error(400, "BadRequest", f"Invalid training data: {exc}")
        # Rasa 3.x trains on every request (force_training only turns off reusing cached components).
        assistant_id = document.get("assistant_id")
        assistant_id = assistant_id if isinstance(assistant_id, str) else None
        job = await self._train(dataset, _seed_of(document), assistant_id)
        if job.phase is not JobPhase.SUCCEEDED or job.model_dir is None:
            # A job "error" is the server's own failure; Rasa shows the exception it caught.
            error = SERVER_FAILURE if job.phase is JobPhase.ERROR else job.error
            return rasa_error(
                500, "TrainingError", f"An unexpected error occurred during training. Error: {error}"
            )
        language = document.get("language")
        filename = self._write_archive(
            job.model_dir, assistant_id, language if isinstance(language, str) else None
        )
        return self._file(filename)

    async def _train(self, dataset: Dataset, seed: int, assistant_id: str | None) -> TrainingJob:
        """Run one training job to its end, counted in ``num_active_training_jobs`` meanwhile."""
        with self.lock:
            self.active_trainings += 1
            self.trainings.append(assistant_id)
        job = self.start_job(dataset, seed)
        try:
            while not job.done.is_set():
                await asyncio.sleep(0.01)
        finally:
            if job.done.is_set():
                with self.lock:
                    self.active_trainings -= 1
        return job

    async def replace(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
            model_file = body["model_file"]
            assert isinstance(model_file, str)
        except (ValueError, KeyError, TypeError, AssertionError):
            return rasa_error(400, "BadRequest", "No path to model file defined in request_body.")
        loaded = await asyncio.to_thread(self._load, model_file)
        if loaded is None:
            return rasa_error(400, "BadRequest", f"Agent with name '{model_file}' could not be loaded.")
        self._serve(loaded)
        return Response(status_code=204)

    async def parse(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
            text = body["text"]
            assert isinstance(text, str)
        except (ValueError, KeyError, TypeError, AssertionError):
            return rasa_error(
                400,
                "BadRequest",
                "No text message defined in request_body. Add text message to request body in order to "
                "obtain the intent and extracted entities.",
            )
        if self.loaded is None:
            return rasa_error(409, "Conflict", "No agent loaded.")
        result = self.loaded[1].parse([text])[0]
        return JSONResponse(self._parse_dict(result))

    async def test_intents(self, request: Request) -> Response:
        raw = (await request.body()).decode("utf-8", errors="replace")
        try:
            if request.headers.get("content-type") == "application/x-yaml":
                data = self._dataset(raw)
            else:
                data = from_rasa_json(json.loads(raw))
        except (DataError, ValueError, KeyError, TypeError) as exc:
            return rasa_error(400, "BadRequest", f"Invalid test data: {exc}")
        model_param = request.query_params.get("model")
        if model_param:
            agent = await asyncio.to_thread(self._load, model_param)
            if agent is None:
                return rasa_error(400, "BadRequest", f"Agent with name '{model_param}' could not be loaded.")
        elif self.loaded is not None:
            agent = self.loaded
        else:
            return rasa_error(409, "Conflict", "Loaded model file not found.")
        data = sanitize(data)
        parses = agent[1].parse(data.texts)
        intents = intent_evaluation(data, parses) if len(set(data.intents)) >= 2 else None
        return JSONResponse(
            {
                "intent_evaluation": intents,
                "entity_evaluation": entity_evaluation(data, parses) if len(data) else None,
                "response_selection_evaluation": None,
            }
        )

    def _file(self, filename: str) -> Response:
        data = (self.workdir / "models" / filename).read_bytes()
        return Response(data, media_type="application/octet-stream", headers={"filename": filename})


def _seed_of(document: dict[str, Any]) -> int:
    """The last ``random_seed`` of the config's pipeline components (0 without one)."""
    seed = 0
    for component in document.get("pipeline") or []:
        if isinstance(component, dict) and isinstance(component.get("random_seed"), int):
            seed = component["random_seed"]
    return seed
