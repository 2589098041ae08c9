"""The training job on a Rasa server: ``POST /model/train`` sent at most once per training, and what a lost
answer means (see the package docstring): a marker in ``workdir`` per archive tag until the outcome is known,
the archive looked for in the server's models folder, the server's running trainings waited for."""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import tarfile
import zlib
from pathlib import Path
from typing import Any

import httpx

from nluflow.backends.base import JobRef, JobState, JobStatus, ModelRef, TrainingConfig
from nluflow.backends.errors import (
    ContractError,
    HTTPStatusError,
    MalformedResponseError,
    TrainingOutcomeUnknownError,
    TransientHTTPError,
)
from nluflow.backends.rasa.documents import (
    YAML_CONTENT_TYPE,
    archive_metadata,
    archive_tag,
    training_document,
)
from nluflow.backends.rasa.server import RasaServer
from nluflow.data.schema import Dataset
from nluflow.errors import BackendError, ConfigError, TrainingFailedError
from nluflow.hashing import sha256_text

logger = logging.getLogger("nluflow.backends.rasa")

# Archives older than the lost request by more than this are not opened when looking for its archive
# (the server's clock and this machine's may differ a little; the tag, not the time, decides).
ARCHIVE_CLOCK_SLACK = 600.0
# A lost train request is never taken as over sooner than this when the server cannot count trainings.
MIN_STALE_SECONDS = 3600.0


def lost_answer(exc: TransientHTTPError | MalformedResponseError, train_timeout: float) -> str:
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


class RasaTraining(RasaServer):
    """The training part of the Rasa backend: ``submit``, ``status``, ``fetch``."""

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
                body_excerpt=message,
            )
        return None

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
        now = self._http.wall_clock()
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
        earlier = self._earlier_attempt(tag, key)
        if earlier is not None:
            return earlier
        running = self._wait_until_idle(self.idle_wait)
        if running:
            raise TransientHTTPError(
                f"the Rasa server still runs {running} training(s) after waiting {self.idle_wait:g} s; "
                "nothing was sent (a training started now would run beside it); the step can be retried later"
            )
        self._check_served_owner("train a model")
        if self.on_progress is not None:
            self.on_progress(0.0, "training on the Rasa server")
        response = self._train_once(document, tag, key)
        if isinstance(response, JobRef):
            return response
        return self._keep_archive(response, key, tag)

    def _earlier_attempt(self, tag: str, key: str) -> JobRef | None:
        """The job of an earlier attempt that sent this training and lost its answer, when its archive is
        found; None when there was none (or it is over without a model): train now."""
        sent_at = self._sent_at(tag)
        if sent_at is not None and self.server_models_folder is None:
            # That attempt failed for good ("cannot find the model ... run again"): this is the rerun.
            logger.warning("training %s again: an earlier attempt's answer was lost and cannot be found", tag)
            return None
        if sent_at is None:
            return None
        # An earlier attempt sent this training and lost its answer: it may have trained, or still train.
        lost = f"an earlier attempt sent POST /model/train for assistant_id {tag!r} and lost its answer"
        # With no model loaded the server cannot count its trainings: after this long, train again.
        stale = self._http.wall_clock() - sent_at > self._stale_after()
        job = self._pick_up(tag, key, sent_at, lost, stale=stale)
        if job is None:
            self._clear_sent(tag)
        return job

    def _train_once(self, document: str, tag: str, key: str) -> httpx.Response | JobRef:
        """Send ``POST /model/train`` once: its answer, or the job of the archive found after it was lost."""
        since = self._mark_sent(tag)
        try:
            response = self._session.request(
                "POST",
                "/model/train",
                content=document.encode("utf-8"),
                headers={"Content-Type": YAML_CONTENT_TYPE},
                params={"save_to_default_model_directory": "true", "force_training": "false"},
                timeout=self._http.timeout_with_read(self.train_timeout),
                retry_safe=False,
                classify=self._classify_train,
            )
            _check_archive(response)
        except (TransientHTTPError, MalformedResponseError) as exc:
            lost = lost_answer(exc, self.train_timeout)
            job = self._pick_up(tag, key, since, lost)
            if job is not None:
                return job
            self._clear_sent(tag)
            raise exc.restated_as(
                TransientHTTPError,
                f"{lost}. The server runs no training now and {self.server_models_folder} holds no archive "
                f"with assistant_id {tag!r}: the training failed on the server or never started (a server "
                "failure, not a problem with the data; see the Rasa server's log); POST /model/train was not "
                "resent; the next retry trains once more",
            ) from None
        except BaseException:
            self._clear_sent(tag)  # a definite answer (a refusal, a failed training): nothing runs for it
            raise
        self._clear_sent(tag)
        return response

    def _keep_archive(self, response: httpx.Response, key: str, tag: str) -> JobRef:
        """Keep the trained archive the answer carries in ``workdir``; its job."""
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
