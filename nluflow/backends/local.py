"""The local backend: trains the local NLU model in-process and keeps each job in a folder.

Layout under ``workdir``::

    jobs/<idempotency key>/job.json      a finished job: metrics, dataset and config hashes
    jobs/<idempotency key>/model/        the model files (meta.json, intent.pkl, entities.crfsuite)
    jobs/<idempotency key>/failed.json   a failed job: the error message (instead of job.json and model/)
    jobs/.tmp-<key>-<random>/            a job being written; renamed into place when complete

A job folder appears whole or not at all (temp folder + rename), so a crash never leaves a half-written job.
Submitting a key whose job succeeded returns the same job without training again; a key whose job failed is
trained again (a local failure record should not block a retry forever).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nluflow.backends.base import ClosingClient, JobRef, JobState, JobStatus, ModelRef, Parse, TrainingConfig
from nluflow.data.schema import Dataset
from nluflow.errors import BackendError, ConfigError, ModelNotFoundError, TrainingFailedError, UnsafePathError
from nluflow.models.nlu import META_FILE, NLUModel, cross_validate_intents

logger = logging.getLogger(__name__)

Progress = Callable[[float, str], None]

JOBS_DIR = "jobs"
MODEL_DIR = "model"
JOB_FILE = "job.json"
FAILED_FILE = "failed.json"
MODEL_CACHE_SIZE = 4  # loaded models kept in memory by predict
_SAFE_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

# Share of the progress bar each stage takes (cross-validation only when asked for).
_CV_SHARE = 0.4
_FIT_END = 0.9


def check_job_key(key: str) -> str:
    """``key`` if it is a safe folder name, else ``UnsafePathError``."""
    if not isinstance(key, str) or not _SAFE_KEY.fullmatch(key):
        raise UnsafePathError(
            f"idempotency key {key!r} is not a safe folder name: expected 1-128 characters from "
            "A-Z, a-z, 0-9, '.', '_', '-', starting with a letter or digit; nothing was submitted"
        )
    return key


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackendError(f"{path}: unreadable job record ({exc}); expected JSON written by submit") from exc
    return data


class LocalBackend(ClosingClient):
    """Trains in-process (implements ``TrainingBackend``); ``on_progress(fraction, message)`` sees stages."""

    name = "local"

    def __init__(self, workdir: str | Path, on_progress: Progress | None = None) -> None:
        self.workdir = Path(workdir)
        self.on_progress = on_progress
        self._lock = threading.Lock()
        self._running: dict[str, tuple[float, str]] = {}
        self._models: OrderedDict[tuple[str, int, int, int], NLUModel] = OrderedDict()

    @property
    def jobs_dir(self) -> Path:
        return self.workdir / JOBS_DIR

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / check_job_key(job_id)

    def _ref(self, key: str) -> JobRef:
        return JobRef(
            backend=self.name, job_id=key, idempotency_key=key, data={"path": str(self.job_dir(key))}
        )

    # -- training ------------------------------------------------------------------------------------------

    def submit(self, train: Dataset, config: TrainingConfig, idempotency_key: str) -> JobRef:
        """Train now, in this process; returns when the job has succeeded or failed (see ``status``)."""
        key = check_job_key(idempotency_key)
        job_dir = self.job_dir(key)
        data_sha, config_sha = train.sha256(), config.sha256()
        if (job_dir / JOB_FILE).is_file():
            record = _read_json(job_dir / JOB_FILE)
            if (record.get("dataset_sha256"), record.get("config_sha256")) != (data_sha, config_sha):
                raise ConfigError(
                    f"{job_dir / JOB_FILE}: idempotency key {key!r} was used for a job on other data or "
                    f"config (dataset {str(record.get('dataset_sha256'))[:12]}, config "
                    f"{str(record.get('config_sha256'))[:12]}; now {data_sha[:12]}, {config_sha[:12]}); "
                    "expected one key per data + config; nothing was trained, use a new key"
                )
            logger.info("local job %s already trained; reusing it", key)
            return self._ref(key)
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.jobs_dir / f".tmp-{key}-{uuid.uuid4().hex[:12]}"
        tmp.mkdir()
        self._progress(key, 0.0, f"queued: {len(train)} examples")
        try:
            record = self._train(key, train, config, tmp / MODEL_DIR)
            record.update(dataset_sha256=data_sha, config_sha256=config_sha, job_id=key)
            _write_json(tmp / JOB_FILE, record)
        except Exception as exc:  # any failure becomes the job's terminal state, reported by status()
            message = f"{type(exc).__name__}: {exc}"
            logger.warning("local job %s failed: %s", key, message)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            _write_json(
                tmp / FAILED_FILE,
                {"error": message, "type": type(exc).__name__, "job_id": key, "dataset_sha256": data_sha},
            )
        finally:
            with self._lock:
                self._running.pop(key, None)
        self._publish(tmp, job_dir)
        return self._ref(key)

    def _train(self, key: str, train: Dataset, config: TrainingConfig, model_dir: Path) -> dict[str, Any]:
        metrics: dict[str, float] = {"n_train": float(len(train))}
        fit_start = 0.0
        if config.cv_folds:
            started = time.perf_counter()
            metrics.update(
                cross_validate_intents(
                    train,
                    config.local,
                    config.cv_folds,
                    config.seed,
                    on_progress=lambda f, m: self._progress(key, _CV_SHARE * f, m),
                )
            )
            metrics["cv_seconds"] = time.perf_counter() - started
            fit_start = _CV_SHARE
        started = time.perf_counter()
        model = NLUModel(config.local, random_state=config.seed).fit(
            train, on_progress=lambda f, m: self._progress(key, fit_start + (_FIT_END - fit_start) * f, m)
        )
        metrics["train_seconds"] = time.perf_counter() - started
        metrics["n_intents"] = float(len(model.intents))
        metrics["n_entity_types"] = float(len(model.entity_types))
        self._progress(key, _FIT_END, "saving the model files")
        files = model.save(model_dir)
        self._progress(key, 1.0, "done")
        return {"metrics": metrics, "files": sorted(p.name for p in files)}

    def _publish(self, tmp: Path, job_dir: Path) -> None:
        """Rename the finished temp folder into place; a job folder that is already complete wins."""
        if job_dir.exists() and not (job_dir / JOB_FILE).is_file():
            shutil.rmtree(job_dir)  # an earlier failure record (or debris): replaced by this attempt
        try:
            os.rename(tmp, job_dir)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (job_dir / JOB_FILE).is_file():
                raise BackendError(
                    f"{job_dir}: could not move the finished job into place and no complete job is there; "
                    "submit again"
                ) from None
            logger.info("%s: another submit of the same key finished first; its job is kept", job_dir)

    def _progress(self, key: str, fraction: float, message: str) -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        with self._lock:
            self._running[key] = (fraction, message)
        if self.on_progress is not None:
            try:
                self.on_progress(fraction, message)
            except Exception:  # progress display must never break training
                logger.warning(
                    "progress callback failed at %.0f%% (%s)", 100 * fraction, message, exc_info=True
                )

    # -- job state -----------------------------------------------------------------------------------------

    def status(self, job: JobRef) -> JobStatus:
        key = check_job_key(job.job_id)
        job_dir = self.job_dir(key)
        if (job_dir / JOB_FILE).is_file():
            record = _read_json(job_dir / JOB_FILE)
            metrics = {k: float(v) for k, v in record.get("metrics", {}).items()}
            return JobStatus(
                state=JobState.SUCCEEDED,
                progress=1.0,
                message=f"trained on {int(metrics.get('n_train', 0))} examples "
                f"in {metrics.get('train_seconds', 0.0):.1f} s",
                metrics=metrics,
            )
        if (job_dir / FAILED_FILE).is_file():
            record = _read_json(job_dir / FAILED_FILE)
            return JobStatus(state=JobState.FAILED, message=str(record.get("error", "unknown error")))
        with self._lock:
            running = self._running.get(key)
        if running is not None:
            return JobStatus(state=JobState.RUNNING, progress=running[0], message=running[1])
        raise BackendError(
            f"local job {key!r} not found in {self.jobs_dir}: expected a job folder written by submit; "
            "submit the job (again) first"
        )

    def fetch(self, job: JobRef, dest: Path) -> ModelRef:
        """Copy the job's model files into ``dest`` (created if needed)."""
        status = self.status(job)
        if status.state is JobState.FAILED:
            raise TrainingFailedError(
                f"local job {job.job_id!r} failed: {status.message}; there is no model to fetch"
            )
        if status.state is not JobState.SUCCEEDED:
            raise BackendError(
                f"local job {job.job_id!r} is {status.state.value}; fetch it once it has succeeded"
            )
        source = self.job_dir(job.job_id) / MODEL_DIR
        if not source.is_dir():
            raise ModelNotFoundError(f"{source}: the model folder of local job {job.job_id!r} is missing")
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        for path in sorted(source.iterdir()):
            # copyfile, not copy2: a fresh mtime keeps predict's cache from mistaking this copy for another
            shutil.copyfile(path, dest / path.name)
        return ModelRef(backend=self.name, model_id=job.job_id, path=str(dest), metrics=status.metrics)

    # -- serving -------------------------------------------------------------------------------------------

    def predict(self, model: ModelRef, texts: Sequence[str]) -> list[Parse]:
        return self._load(model).parse(texts)

    def _load(self, model: ModelRef) -> NLUModel:
        if not model.path:
            raise ModelNotFoundError(
                f"model {model.model_id!r} has no local folder (path is empty); fetch it before predicting"
            )
        folder = Path(model.path).resolve()
        meta = folder / META_FILE
        try:
            st = meta.stat()
        except OSError:
            raise ModelNotFoundError(
                f"{folder}: model {model.model_id!r} not found (no {META_FILE}); expected a folder "
                "written by fetch or the model store; nothing was predicted"
            ) from None
        cache_key = (str(folder), st.st_mtime_ns, st.st_size, st.st_ino)
        with self._lock:
            cached = self._models.get(cache_key)
            if cached is not None:
                self._models.move_to_end(cache_key)
                return cached
        loaded = NLUModel.load(folder)
        with self._lock:
            self._models[cache_key] = loaded
            while len(self._models) > MODEL_CACHE_SIZE:
                self._models.popitem(last=False)
        return loaded

    def activate(self, model: ModelRef) -> None:
        """Nothing to do: the local backend serves no model."""
        logger.debug("local backend: activate(%s) is a no-op", model.model_id)
