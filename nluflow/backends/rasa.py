"""Rasa Open Source over its HTTP API (``rasa run --enable-api``), Rasa 3.x shapes.

- train: ``POST /model/train`` with one YAML document (config + NLU data); the answer is the model archive,
  its name in the ``filename`` header. Training is synchronous, so the read timeout is long
  (``TRAIN_READ_TIMEOUT``) and ``submit`` returns a job that has already succeeded.
- Rasa has no idempotency key, and Rasa 3.x trains again on every request (no "Nothing changed" reply as
  in 2.x; the HTTP API takes no ``fixed_model_name``). So a train request is sent once and never resent
  after its answer may have been lost. Each training's config carries ``assistant_id`` =
  ``archive_tag(project, key)``, which Rasa writes into the archive's ``metadata.json``; after a lost answer
  the client waits for the server's training to end and takes that archive from the server's models folder
  (``server_models_folder``, a shared volume). A marker in ``workdir`` makes a retry of the step (a Prefect
  task retry, a fresh client) do the same before it trains. Without the models folder a lost answer is a
  ``TrainingOutcomeUnknownError`` (not retried: a retry would train a second time).
- one model served: Rasa serves one model, so a server whose served archive was trained for another project
  (its ``assistant_id``) is refused for training, evaluation, activation and rollback
  (``ServedModelMismatchError``): one server per project.
- predict: with ``evaluation_url`` (a second Rasa server used for evaluation) the model is loaded there and
  each text is parsed with ``POST /model/parse`` (intents, ranking and entities). Without it,
  ``POST /model/test/intents?model=<path>`` evaluates the model without replacing the served one: the frozen
  test set is sent with its true intents and entities (``predict_labelled``; Rasa 3.x evaluates intents only
  with ≥ 2 distinct intents and de-duplicates identical examples), predictions are matched back by text (the
  top intent and its confidence), and entity predictions are rebuilt from ``entity_evaluation``'s errors.
- activate: ``PUT /model {"model_file": path}`` (204), checked with ``GET /status``; rollback is the same
  call with the previous model's path. Rasa answers 400 when the archive is gone from its models folder and
  has no upload call: with ``server_models_folder`` (that folder as mounted here) the archive is copied back
  from nluflow's copy and loaded again; without it the error says which file to copy where.
- auth: ``?token=`` or ``Authorization: Bearer <jwt>``. Errors have Rasa's body
  ``{"status": "failure", "reason", "message", "code"}``.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import random
import re
import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import yaml

from nluflow.backends._http import (
    MAX_RETRIES,
    POLL_FACTOR,
    POLL_FIRST_DELAY,
    POLL_MAX_DELAY,
    Auth,
    HttpSession,
    QueryTokenAuth,
    bearer_auth,
    default_timeout,
    make_client,
    require,
)
from nluflow.backends.base import IntentScore, JobRef, JobState, JobStatus, ModelRef, Parse, TrainingConfig
from nluflow.backends.errors import (
    ContractError,
    HTTPStatusError,
    MalformedResponseError,
    ServedModelMismatchError,
    TrainingOutcomeUnknownError,
    TransientHTTPError,
)
from nluflow.backends.service import parse_from_json
from nluflow.data.schema import Dataset, Entity, Example
from nluflow.errors import BackendError, ConfigError, NluflowError, TrainingFailedError
from nluflow.hashing import sha256_text

logger = logging.getLogger("nluflow.backends.rasa")

# Training runs inside the request: allow hours before the read gives up.
TRAIN_READ_TIMEOUT = 3 * 3600.0
# How long to wait for a running training to end: before sending one, and after a train answer was lost
# (then the archive that training wrote is looked for in the server's models folder).
IDLE_WAIT = 3 * 3600.0
# Archives older than the lost request by more than this are not opened when looking for its archive
# (the server's clock and this machine's may differ a little; the tag, not the time, decides).
ARCHIVE_CLOCK_SLACK = 600.0
# assistant_id of nluflow's trainings: "nluflow.<project>.<key hash>"; Rasa 3.x writes it into the archive's
# metadata.json, which is how an archive is found again after its answer was lost.
TAG_PREFIX = "nluflow"
# A lost train request is never taken as over sooner than this when the server cannot count trainings.
MIN_STALE_SECONDS = 3600.0
YAML_CONTENT_TYPE = "application/x-yaml"
# Intent given to unlabelled texts sent to /model/test/intents (Rasa needs one; its value is ignored).
PLACEHOLDER_INTENT = "nluflow_unlabelled"
# Rasa 3.x evaluates intents only with ≥ 2 distinct intents: a one-intent set gets a copy of its first text
# under this intent (its prediction is the same text's; Rasa's own figures are never used).
PADDING_INTENT = "nluflow_padding"
FORMAT_VERSION = "3.1"


def default_pipeline(config: TrainingConfig) -> list[dict[str, Any]]:
    """A standard Rasa 3 NLU pipeline with the shared training options mapped onto DIET."""
    return [
        {"name": "WhitespaceTokenizer"},
        {"name": "RegexFeaturizer"},
        {"name": "LexicalSyntacticFeaturizer"},
        {"name": "CountVectorsFeaturizer"},
        {"name": "CountVectorsFeaturizer", "analyzer": "char_wb", "min_ngram": 1, "max_ngram": 4},
        {
            "name": "DIETClassifier",
            "epochs": config.epochs,
            "batch_size": [config.batch_size, config.batch_size],
            "learning_rate": config.learning_rate,
            "drop_rate": config.dropout,
            "random_seed": config.seed,
        },
        {"name": "EntitySynonymMapper"},
    ]


def _annotate(example: Example) -> str:
    """The example in Rasa's inline entity syntax: ``[Paris](city)`` or ``[NYC]{"entity": "city", ...}``."""
    text = example.text
    out: list[str] = []
    cursor = 0
    for ent in sorted(example.entities, key=lambda e: e.start):
        if ent.start < cursor or ent.end > len(text):
            continue  # overlapping or out-of-range spans cannot be written inline; the validator reports them
        span = text[ent.start : ent.end]
        out.append(text[cursor : ent.start])
        if ent.value == span:
            out.append(f"[{span}]({ent.entity})")
        else:
            out.append(
                f"[{span}]" + json.dumps({"entity": ent.entity, "value": ent.value}, ensure_ascii=False)
            )
        cursor = ent.end
    out.append(text[cursor:])
    return "".join(out).replace("\n", " ")


def nlu_yaml(examples: Sequence[Example]) -> str:
    """The ``nlu:`` section in Rasa 3 YAML: one block per intent, examples as a literal block string."""
    by_intent: dict[str, list[str]] = {}
    for example in examples:
        by_intent.setdefault(example.intent, []).append(_annotate(example))
    lines = ["nlu:"]
    for intent, items in by_intent.items():
        lines.append(f"- intent: {json.dumps(intent, ensure_ascii=False)}")
        lines.append("  examples: |")
        lines.extend(f"    - {item}" for item in items)
    return "\n".join(lines) + "\n"


def archive_tag(project: str | None, key: str) -> str:
    """The ``assistant_id`` of the training for ``key`` in ``project``: one per training, per project."""
    digest = sha256_text(key)[:16]
    return f"{TAG_PREFIX}.{project}.{digest}" if project else f"{TAG_PREFIX}.{digest}"


def tag_project(tag: object) -> str | None:
    """The project an ``archive_tag`` names, or None (another tool's archive, or no project bound)."""
    if not isinstance(tag, str):
        return None
    parts = tag.split(".")
    if len(parts) < 3 or parts[0] != TAG_PREFIX:
        return None
    return ".".join(parts[1:-1])


def archive_metadata(path: Path) -> dict[str, Any] | None:
    """The ``metadata.json`` of a Rasa 3.x model archive (at its top level), or None if unreadable.

    Rasa's tar lists ``metadata.json`` after the components, so reading it decompresses the whole archive:
    answers are kept per (path, size, mtime) for the life of the process."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return _archive_metadata(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _archive_metadata(path: str, size: int, mtime_ns: int) -> dict[str, Any] | None:
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for member in tar:
                if member.isfile() and member.name.lstrip("./") == "metadata.json":
                    handle = tar.extractfile(member)
                    if handle is None:
                        return None
                    value = json.loads(handle.read())
                    return value if isinstance(value, dict) else None
    except (tarfile.TarError, EOFError, OSError, zlib.error, ValueError):
        return None
    return None


def _lost_answer(exc: TransientHTTPError | MalformedResponseError, train_timeout: float) -> str:
    """What happened to a train request whose answer did not arrive, in words."""
    if isinstance(exc, MalformedResponseError):
        return f"POST /model/train answered {exc.status} with a model archive that cannot be read"
    if exc.status is not None:
        excerpt = f": {exc.body_excerpt[:120]}" if exc.body_excerpt else ""
        return f"POST /model/train answered {exc.status}{excerpt}"
    kind = re.search(r"failed with (\w+)", exc.message)
    name = kind.group(1) if kind else "a transport error"
    if name in ("ConnectError", "ConnectTimeout"):
        return f"POST /model/train could not reach the server ({name}, after the retries)"
    if "Timeout" in name:
        return f"POST /model/train got no answer within the train timeout of {train_timeout:g} s ({name})"
    return f"POST /model/train lost its connection before the answer arrived ({name})"


def training_document(
    train: Dataset,
    config: TrainingConfig,
    language: str,
    pipeline: list[dict[str, Any]] | None,
    assistant_id: str = TAG_PREFIX,
) -> str:
    """The one YAML document ``POST /model/train`` takes: config keys, then the NLU data."""
    head = {
        "version": FORMAT_VERSION,
        "recipe": "default.v1",
        "language": language,
        "assistant_id": assistant_id,
        "pipeline": pipeline if pipeline is not None else default_pipeline(config),
        "policies": [],
    }
    return yaml.safe_dump(head, sort_keys=False, allow_unicode=True) + nlu_yaml(train.examples)


def _rasa_error(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        return {}
    return body if isinstance(body, dict) else {}


_FILENAME = re.compile(r"^[\w.-]+\.tar\.gz$")
# What Rasa's TrainingError message says when the server itself failed (not the data or the pipeline).
_SERVER_FAULT = re.compile(
    r"MemoryError|out of memory|\bOOM\b|ResourceExhausted|Cannot allocate memory|No space left|Errno 28|"
    r"Errno 12|Disk quota|Read-only file system|Too many open files|finished without a trained model",
    re.IGNORECASE,
)


def _check_archive(response: httpx.Response) -> None:
    """A truncated or garbled archive is a lost answer, not a model: the caller looks for the archive."""
    try:
        with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
            for _ in tar:  # reading every member checks the gzip stream to its end
                pass
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise MalformedResponseError(
            f"POST /model/train answered {response.status_code} with a model archive that cannot be read "
            f"({type(exc).__name__}: {exc})",
            "POST",
            "/model/train",
            response.status_code,
        ) from None


def _same_model(served: object, path: str) -> bool:
    """``GET /status`` reports the loaded archive's file name; compare it with a path by file name."""
    return isinstance(served, str) and Path(served).name == Path(path).name


def _rasa_text(text: str) -> str:
    """The text as Rasa reads it back from our YAML: one line, stripped (its YAML reader strips examples)."""
    return text.replace("\n", " ").strip()


def _shifted(example: Example) -> tuple[Entity, ...]:
    """The example's entities with offsets into ``_rasa_text`` (leading whitespace stripped)."""
    text = example.text.replace("\n", " ")
    offset = len(text) - len(text.lstrip())
    if not offset:
        return example.entities
    return tuple(
        e.model_copy(update={"start": e.start - offset, "end": e.end - offset})
        for e in example.entities
        if e.start >= offset
    )


def _entity_from_rasa(item: Any) -> Entity | None:
    """One entity in Rasa's shape (``start``, ``end``, ``entity``, ``value``), or None if it is not one."""
    if not isinstance(item, dict):
        return None
    start, end, entity = item.get("start"), item.get("end"), item.get("entity")
    if not (isinstance(start, int) and isinstance(end, int) and isinstance(entity, str) and entity):
        return None
    if start < 0 or end < start:
        return None
    value = item.get("value")
    return Entity(start=start, end=end, entity=entity, value=value if isinstance(value, str) else str(value))


# Where a model has several entity extractors, Rasa evaluates each; nluflow scores one, this one first.
PREFERRED_EXTRACTOR = "DIETClassifier"


def _entity_predictions(
    section: Any, targets: dict[str, tuple[Entity, ...]], where: str
) -> dict[str, tuple[Entity, ...]]:
    """Per-utterance entity predictions from Rasa's ``entity_evaluation`` section.

    Null (no entity extractor in the model): the model extracts nothing, so every prediction is empty. Else
    the section maps extractor name to ``{"report", "precision", "f1_score", "accuracy", "errors"}``, where
    ``errors`` lists ``{"text", "entities", "predicted_entities"}`` for the utterances that extractor got
    wrong (``collect_incorrect_entity_predictions``); every other utterance was predicted as annotated.
    """
    if section is None:
        return {text: () for text in targets}
    if not isinstance(section, dict) or not section:
        raise ContractError(
            f"{where}: expected entity_evaluation to be null or an object keyed by extractor, found "
            f"{json.dumps(section)[:60]}; the platform's API may have changed"
        )
    extractor = PREFERRED_EXTRACTOR if PREFERRED_EXTRACTOR in section else sorted(section)[0]
    errors = require(section[extractor], "errors", list, f"{where}: entity_evaluation.{extractor}")
    out = dict(targets)
    for error in errors:
        if not isinstance(error, dict) or not isinstance(error.get("text"), str):
            continue
        text = error["text"].strip()
        if text not in out:
            continue
        predicted = error.get("predicted_entities") or []
        if not isinstance(predicted, list):
            raise ContractError(
                f"{where}: entity_evaluation.{extractor} errors: predicted_entities not a list"
            )
        entities = []
        for item in predicted:
            if isinstance(item, dict) and item.get("extractor", extractor) != extractor:
                continue  # the errors list every extractor's predictions; score the chosen one's
            entity = _entity_from_rasa(item)
            if entity is not None:
                entities.append(entity)
        out[text] = tuple(sorted(entities, key=lambda e: (e.start, e.end)))
    return out


class RasaBackend:
    """A Rasa Open Source server (``rasa run --enable-api``) as a training backend."""

    name = "rasa"

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        jwt: str | None = None,
        evaluation_url: str | None = None,
        models_dir: str = "models",
        server_models_folder: str | Path | None = None,
        project: str | None = None,
        language: str = "en",
        pipeline: list[dict[str, Any]] | None = None,
        workdir: str | Path | None = None,
        train_timeout: float = TRAIN_READ_TIMEOUT,
        idle_wait: float = IDLE_WAIT,
        timeout: httpx.Timeout | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        max_retries: int = MAX_RETRIES,
        on_progress: Callable[[float, str], None] | None = None,
    ) -> None:
        if token and jwt:
            raise ConfigError("give the Rasa server either a token or a JWT, not both")
        self.models_dir = models_dir.rstrip("/")
        # The server's models folder as mounted on this machine (shared volume), or None: lets activate put
        # back an archive the server lost (Rasa's API cannot upload one).
        self.server_models_folder = str(server_models_folder) if server_models_folder else None
        self.project = project
        self.language = language
        self.pipeline = pipeline
        self.train_timeout = train_timeout
        self.idle_wait = idle_wait
        self.on_progress = on_progress
        self.workdir = (
            Path(workdir) if workdir else Path(tempfile.gettempdir()) / "nluflow-rasa" / sha256_text(url)[:12]
        )
        self._timeout = timeout or default_timeout()
        auth: Auth | None = QueryTokenAuth(token) if token else bearer_auth(jwt) if jwt else None
        common: dict[str, Any] = {
            "sleep": sleep,
            "clock": clock,
            "wall_clock": wall_clock,
            "rng": rng or random.Random(),
            "max_retries": max_retries,
            "auth": auth,
        }
        self._session = HttpSession(make_client(url, transport=transport, timeout=self._timeout), **common)
        self._eval: HttpSession | None = None
        if evaluation_url:
            self._eval = HttpSession(
                make_client(evaluation_url, transport=transport, timeout=self._timeout), **common
            )
        self._sleep, self._clock, self._wall_clock = sleep, clock, wall_clock

    def __repr__(self) -> str:
        return f"RasaBackend({self._session!r}, evaluation={self._eval!r})"

    def close(self) -> None:
        self._session.close()
        if self._eval is not None:
            self._eval.close()

    # ------------------------------------------------------------------------------------------- training

    def _classify_train(self, response: httpx.Response) -> BaseException | None:
        """Rasa's 500 ``TrainingError`` is a failed training (not retried); a 400 is bad data or config."""
        redact = self._session.redactor
        body = _rasa_error(response)
        message = redact(str(body.get("message") or "no message"))[:300]
        if response.status_code == 500 and body.get("reason") == "TrainingError":
            if _SERVER_FAULT.search(message):
                return TrainingFailedError(
                    f"the Rasa server failed while training ({message}): a failure of the server (memory, "
                    "disk or process), not of the data or the pipeline; fix the server (see its log) and run "
                    "again; no model was produced"
                )
            # Rasa answers 500 TrainingError for any exception raised while training: a pipeline or data
            # problem and a server failure look alike, so neither is blamed alone.
            return TrainingFailedError(
                f"the Rasa server's training failed ({message}); Rasa reports every error during training "
                "this way, whether from the pipeline or data (a component named above) or from the server "
                "itself (out of memory or disk, a crash: see the server's log); no model was produced"
            )
        if response.status_code == 400:
            return HTTPStatusError(
                f"Rasa refused the training document ({body.get('reason')}: {message}); "
                "fix the data or the pipeline; nothing was trained",
                "POST",
                "/model/train",
                400,
                None,
                message,
            )
        return None

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
        deadline = self._clock() + max_wait
        delay = POLL_FIRST_DELAY
        while True:
            running = self._running()
            if not running:
                return running
            remaining = deadline - self._clock()
            if remaining <= 0:
                return running
            if self.on_progress is not None:
                self.on_progress(0.0, f"waiting for {running} training(s) on the Rasa server to end")
            self._sleep(min(delay, remaining))
            delay = min(delay * POLL_FACTOR, POLL_MAX_DELAY)

    # A lost train answer is recorded here (per archive tag) until the outcome of that request is known, so
    # a retry of the step (a Prefect task retry) looks for its archive instead of training again.
    def _sent_marker(self, tag: str) -> Path:
        return self.workdir / "sent" / f"{sha256_text(tag)[:16]}.json"

    def _sent_at(self, tag: str) -> float | None:
        try:
            record = json.loads(self._sent_marker(tag).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        sent_at = record.get("sent_at") if isinstance(record, dict) else None
        return float(sent_at) if isinstance(sent_at, int | float) else None

    def _mark_sent(self, tag: str) -> float:
        now = self._wall_clock()
        marker = self._sent_marker(tag)
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_name(marker.name + ".part")
        tmp.write_text(json.dumps({"assistant_id": tag, "sent_at": now}), encoding="utf-8")
        tmp.replace(marker)
        return now

    def _clear_sent(self, tag: str) -> None:
        self._sent_marker(tag).unlink(missing_ok=True)

    def _find_archive(self, tag: str, since: float) -> Path | None:
        """The archive in the server's models folder whose ``metadata.json`` has ``assistant_id == tag``
        (Rasa 3.x writes the config's ``assistant_id`` there), among those written since ``since``."""
        if self.server_models_folder is None:
            return None
        folder = Path(self.server_models_folder)
        try:
            candidates = [p for p in folder.glob("*.tar.gz") if not p.name.startswith(".")]
            dated = [(p.stat().st_mtime, p) for p in candidates]
        except OSError:
            return None
        for mtime, path in sorted(dated, reverse=True):
            if mtime < since - ARCHIVE_CLOCK_SLACK:
                break
            metadata = archive_metadata(path)
            if metadata is not None and metadata.get("assistant_id") == tag:
                return path
        return None

    def _adopt(self, found: Path, key: str, tag: str) -> JobRef:
        """The job of a training whose answer was lost, from its archive in the server's models folder."""
        archive = self._archive_path(key, found.name)
        archive.parent.mkdir(parents=True, exist_ok=True)
        tmp = archive.with_name(archive.name + ".part")
        shutil.copyfile(found, tmp)
        tmp.replace(archive)
        self._clear_sent(tag)
        logger.info("took the archive %s (assistant_id %s) from the server's models folder", found.name, tag)
        if self.on_progress is not None:
            self.on_progress(1.0, f"trained {found.name} (answer lost; archive taken from the models folder)")
        return self._job(key, found.name, archive, tag)

    def _job(self, key: str, filename: str, archive: Path, tag: str) -> JobRef:
        return JobRef(
            backend=self.name,
            job_id=filename,
            idempotency_key=key,
            data={
                "model_path": f"{self.models_dir}/{filename}",
                "archive": str(archive),
                "assistant_id": tag,
                **({"project": self.project} if self.project else {}),
            },
        )

    def _pick_up(self, tag: str, key: str, since: float, lost: str, stale: bool = False) -> JobRef | None:
        """After a train request whose answer was lost: wait for the server to end its training, then take
        the archive it wrote for ``tag``. None when the server is idle and wrote none (the training failed
        on the server or never started), or when it cannot count its trainings (no model loaded) and the
        request is ``stale``. Raises when the outcome cannot be known yet."""
        if self.server_models_folder is None:
            raise TrainingOutcomeUnknownError(
                f"{lost}. The server may still be training ({self._running_quietly()}) or may have "
                "finished; POST /model/train was not resent, because Rasa 3.x trains again on every "
                "request, and Rasa's HTTP API cannot list the archives it wrote, so nluflow cannot find the "
                "model this request trained without the server's models folder. Set the Rasa block's "
                "server_models_folder (that folder as mounted here): a retry then waits for the training "
                f"and takes the archive whose metadata.json has assistant_id {tag!r}; or raise "
                "train_timeout_seconds above the longest training. Then run again (it trains once more)"
            )
        folder = self.server_models_folder
        running = self._wait_until_idle(self.idle_wait)
        found = self._find_archive(tag, since)
        if found is not None:
            return self._adopt(found, key, tag)
        if running is None and not stale:
            raise TransientHTTPError(
                f"{lost}. The server has no model loaded, so GET /status cannot say whether that training "
                f"still runs, and {folder} holds no archive with assistant_id {tag!r} yet; POST /model/train "
                "was not resent; the next retry looks for that archive again (and trains again only once "
                f"the request is {self._stale_after():g} s old; loading any model on the server lets nluflow "
                "count its trainings)"
            )
        if running is not None and running > 0:
            raise TransientHTTPError(
                f"{lost}. The server is still training ({running} running after waiting {self.idle_wait:g} "
                f"s more); POST /model/train was not resent (Rasa 3.x would train again); the next retry "
                f"waits for that training and takes the archive with assistant_id {tag!r} from {folder}"
            )
        return None

    def _stale_after(self) -> float:
        """Seconds after which a lost train request that nothing can account for is taken as over (only
        used when the server cannot count its trainings: no model loaded)."""
        return max(self.train_timeout + self.idle_wait, MIN_STALE_SECONDS)

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
        if _same_model(served, path):
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

    def submit(self, train: Dataset, config: TrainingConfig, idempotency_key: str) -> JobRef:
        """Train synchronously; the archive is kept in ``workdir`` until ``fetch`` copies it.

        One call sends ``POST /model/train`` at most once, and only when no archive for this key exists and
        no answer of an earlier attempt is pending; what a lost answer means is settled by ``_pick_up``.
        """
        if len(train) == 0:
            raise ConfigError("the training set is empty; nothing was sent to Rasa")
        key = idempotency_key
        tag = archive_tag(self.project, key)
        document = training_document(train, config, self.language, self.pipeline, assistant_id=tag)
        sent_at = self._sent_at(tag)
        if sent_at is not None and self.server_models_folder is None:
            # That attempt failed for good ("cannot find the model ... run again"): this is the rerun.
            logger.warning("training %s again: an earlier attempt's answer was lost and cannot be found", tag)
            sent_at = None
        if sent_at is not None:
            # An earlier attempt sent this training and lost its answer: it may have trained, or still train.
            lost = f"an earlier attempt sent POST /model/train for assistant_id {tag!r} and lost its answer"
            # With no model loaded the server cannot count its trainings: after this long, train again.
            stale = self._wall_clock() - sent_at > self._stale_after()
            job = self._pick_up(tag, key, sent_at, lost, stale=stale)
            if job is not None:
                return job
            self._clear_sent(tag)
        running = self._wait_until_idle(self.idle_wait)
        if running:
            raise TransientHTTPError(
                f"the Rasa server still runs {running} training(s) after waiting {self.idle_wait:g} s; "
                "nothing was sent (a training started now would run beside it); the step can be retried later"
            )
        self._check_served_owner("train a model")
        if self.on_progress is not None:
            self.on_progress(0.0, "training on the Rasa server")
        since = self._mark_sent(tag)
        try:
            response = self._session.request(
                "POST",
                "/model/train",
                content=document.encode("utf-8"),
                headers={"Content-Type": YAML_CONTENT_TYPE},
                params={"save_to_default_model_directory": "true", "force_training": "false"},
                timeout=default_timeout(read=self.train_timeout),
                retry_safe=False,
                classify=self._classify_train,
            )
            _check_archive(response)
        except (TransientHTTPError, MalformedResponseError) as exc:
            lost = _lost_answer(exc, self.train_timeout)
            job = self._pick_up(tag, key, since, lost)
            if job is not None:
                return job
            self._clear_sent(tag)
            raise TransientHTTPError(
                f"{lost}. The server runs no training now and {self.server_models_folder} holds no archive "
                f"with assistant_id {tag!r}: the training failed on the server or never started (a server "
                "failure, not a problem with the data; see the Rasa server's log); POST /model/train was not "
                "resent; the next retry trains once more",
                exc.method,
                exc.url,
                exc.status,
                exc.request_id,
                exc.body_excerpt,
            ) from None
        except BaseException:
            self._clear_sent(tag)  # a definite answer (a refusal, a failed training): nothing runs for it
            raise
        self._clear_sent(tag)
        filename = response.headers.get("filename", "")
        if not _FILENAME.match(filename):
            raise ContractError(
                f"POST /model/train answered without a model file name (filename header {filename!r}); "
                "expected e.g. 'nlu-20240101-120000-brave-owl.tar.gz'"
            )
        archive = self._archive_path(key, filename)
        archive.parent.mkdir(parents=True, exist_ok=True)
        tmp = archive.with_name(archive.name + ".part")
        tmp.write_bytes(response.content)
        tmp.replace(archive)
        if self.on_progress is not None:
            self.on_progress(1.0, f"trained {filename}")
        return self._job(key, filename, archive, tag)

    def _archive_path(self, key: str, filename: str) -> Path:
        return self.workdir / sha256_text(key)[:16] / filename

    def status(self, job: JobRef) -> JobStatus:
        """Training is synchronous: a submitted job has already succeeded (a failed one raised in submit)."""
        return JobStatus(state=JobState.SUCCEEDED, progress=1.0, message=f"trained {job.job_id}")

    def fetch(self, job: JobRef, dest: Path) -> ModelRef:
        kept = Path(str(job.data.get("archive", "")))
        archive = kept
        if not archive.is_file() and self.server_models_folder is not None:
            archive = Path(self.server_models_folder) / job.job_id  # the server's own copy
        if not archive.is_file():
            raise BackendError(
                f"the archive of Rasa model {job.job_id} is neither in {kept} (where the job was submitted) "
                "nor in the server's models folder as mounted here; run the step again: it trains once "
                "more (Rasa 3.x does not answer unchanged data from a cache)"
            )
        dest.mkdir(parents=True, exist_ok=True)
        (dest / job.job_id).write_bytes(archive.read_bytes())
        model_path = str(job.data["model_path"])
        record: dict[str, Any] = {"rasa_model_file": model_path, "filename": job.job_id}
        for field in ("project", "assistant_id"):
            if job.data.get(field):
                record[field] = str(job.data[field])
        (dest / "rasa-model.json").write_text(json.dumps(record, indent=2, sort_keys=True), encoding="utf-8")
        return ModelRef(backend=self.name, model_id=job.job_id, path=str(dest), backend_model_id=model_path)

    # ----------------------------------------------------------------------------------------- predicting

    def _model_path(self, model: ModelRef) -> str:
        if model.backend_model_id:
            return model.backend_model_id
        return f"{self.models_dir}/{model.model_id}"

    def predict(self, model: ModelRef, texts: Sequence[str]) -> list[Parse]:
        """Predict unlabelled texts; without an evaluation server they go to ``/model/test/intents`` under
        ``PLACEHOLDER_INTENT`` (Rasa needs a label; the predictions do not depend on it)."""
        path = self._model_path(model)
        if not texts:
            return []
        self._check_served_owner("evaluate models", self._project_of(model))
        if self._eval is not None:
            return self._parse_on(self._eval, path, texts)
        return self._test_intents(path, [Example(text=t, intent=PLACEHOLDER_INTENT) for t in texts])

    def _parse_on(self, session: HttpSession, path: str, texts: Sequence[str]) -> list[Parse]:
        status = self._status(session)
        if status is None or not _same_model(status.get("model_file"), path):
            session.request("PUT", "/model", json_body={"model_file": path})
        out = []
        for text in texts:
            body = session.json("POST", "/model/parse", json_body={"text": text}, retry_safe=True)
            out.append(parse_from_json(body, text, f"Rasa model {path}"))
        return out

    def predict_labelled(self, model: ModelRef, examples: Sequence[Example]) -> list[Parse]:
        """Predict a labelled test set: without an evaluation server it is sent to ``/model/test/intents``
        with its true intents and entities, which Rasa 3.x needs to evaluate at all (see ``_test_intents``);
        the metrics are still nluflow's, computed from the per-utterance predictions returned."""
        path = self._model_path(model)
        if not examples:
            return []
        self._check_served_owner("evaluate models", self._project_of(model))
        if self._eval is not None:
            return self._parse_on(self._eval, path, [e.text for e in examples])
        return self._test_intents(path, examples)

    def _test_intents(self, path: str, examples: Sequence[Example]) -> list[Parse]:
        """``POST /model/test/intents?model=<path>``: Rasa 3.x's ``rasa.nlu.test.run_evaluation``.

        What Rasa answers (rasa/nlu/test.py, ``get_eval_data``, ``evaluate_intents``, ``evaluate_entities``,
        ``run_evaluation``): ``intent_evaluation`` is null unless the data has ≥ 2 distinct intents, so a
        single-intent set is padded with a copy of its first text under ``PADDING_INTENT`` (its prediction is
        the same text's); identical examples are de-duplicated (``TrainingData.sanitize_examples``), so
        predictions are matched back by text and duplicates share one; ``entity_evaluation`` is null without
        an entity extractor (the model then extracts nothing), else keyed by extractor with no per-utterance
        predictions but ``errors``: the utterances whose predicted entities differ from the targets. An
        utterance not among them was predicted as annotated, so its entities are its targets.
        """
        sent = [e.model_copy(update={"text": _rasa_text(e.text), "entities": _shifted(e)}) for e in examples]
        if len({e.intent for e in sent}) < 2:
            sent.append(sent[0].model_copy(update={"intent": PADDING_INTENT}))
        where = f"POST /model/test/intents?model={path}"
        body = self._session.json(
            "POST",
            "/model/test/intents",
            params={"model": path},
            content=("version: " + json.dumps(FORMAT_VERSION) + "\n" + nlu_yaml(sent)).encode("utf-8"),
            headers={"Content-Type": YAML_CONTENT_TYPE},
            retry_safe=True,
        )
        if not isinstance(body, dict):
            raise ContractError(f"{where}: expected a JSON object, found {type(body).__name__}")
        if body.get("intent_evaluation") is None:
            raise ContractError(
                f"{where} answered without an intent evaluation (intent_evaluation is null) although "
                f"{len({e.intent for e in sent})} distinct intents were sent; Rasa does this when the model "
                "has no intent classifier; add one (e.g. DIETClassifier) to the pipeline; nothing was scored"
            )
        evaluation = require(body, "intent_evaluation", dict, where)
        predictions = require(evaluation, "predictions", list, f"{where}: intent_evaluation")
        by_text: dict[str, dict[str, Any]] = {}
        for item in predictions:
            if isinstance(item, dict) and isinstance(item.get("text"), str):
                by_text.setdefault(item["text"].strip(), item)
        targets: dict[str, tuple[Entity, ...]] = {}
        for example in sent:
            targets.setdefault(example.text, example.entities)
        predicted_entities = _entity_predictions(body.get("entity_evaluation"), targets, where)
        out = []
        for original, example in zip(examples, sent, strict=False):
            item = by_text.get(example.text)
            if item is None:
                raise ContractError(
                    f"{where} returned no prediction for test utterance {original.text!r} "
                    f"({len(predictions)} predictions for {len(by_text)} distinct texts); nothing was scored"
                )
            name = item.get("predicted")
            confidence = item.get("confidence")
            score = IntentScore(
                name=str(name) if name is not None else "",
                confidence=float(confidence) if isinstance(confidence, int | float) else 0.0,
            )
            offset = len(original.text) - len(original.text.lstrip())
            entities = tuple(
                e.model_copy(update={"start": e.start + offset, "end": e.end + offset})
                for e in predicted_entities.get(example.text, ())
            )
            out.append(Parse(text=original.text, intent=score, intent_ranking=(score,), entities=entities))
        return out

    # ----------------------------------------------------------------------------------------- activating

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
        if not _same_model(served, path):
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

    def served_model(self) -> str | None:
        """The model file the Rasa server serves now, or None when it has none loaded."""
        status = self._status(self._session)
        value = status.get("model_file") if status else None
        return str(value) if value is not None else None
