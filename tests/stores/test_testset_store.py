"""The frozen test set and the kept training data on both store filesystems: a local folder and S3 (moto)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from nluflow.data.schema import Dataset, Example
from nluflow.errors import StoreError
from nluflow.store import FileSystem, LocalFileSystem
from nluflow.store.s3 import S3FileSystem
from nluflow.store.testsets import (
    TestSetStore,
    keep_offered_data,
    keep_training_data,
    stored_offered_data,
    stored_training_data,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@pytest.fixture(params=["local", "s3"])
def fs(request: pytest.FixtureRequest, tmp_path: Path) -> FileSystem:
    if request.param == "local":
        return LocalFileSystem(tmp_path / "store", create=True)
    client: S3Client = request.getfixturevalue("s3_client")
    return S3FileSystem(client, request.getfixturevalue("s3_bucket"), "root/store")


def ds(*texts: str) -> Dataset:
    return Dataset.of([Example(text=t, intent=t.split()[0]) for t in texts])


class CrashBeforePointer:
    """Writes go through until the test set pointer, which fails (a crash after the data was written)."""

    def __init__(self, inner: FileSystem) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def write_bytes(self, key: str, data: bytes) -> None:
        if key.endswith("testset/testset.json"):
            raise StoreError(f"simulated crash writing {key}")
        self.inner.write_bytes(key, data)


def test_versions_grow_reset_and_training_data_round_trip(fs: FileSystem) -> None:
    store = TestSetStore(fs, "bot")
    v1 = store.freeze(ds("book one", "book two", "greet hi"), "/data/nlu.jsonl", "split")
    record, data = store.current() or (None, None)
    assert record == v1 and data is not None
    v2 = store.grow(v1, data, ds("book three"), "+1")
    assert (v2.version, v2.n_examples) == (2, 4) and fs.exists(f"bot/testset/versions/{v1.sha256}.jsonl")
    assert store.reset() == v2 and store.current() is None
    train = ds("greet hello", "book a table")
    key = keep_training_data(fs, "bot", train)
    assert fs.exists(key)
    back = stored_training_data(fs, "bot", train.sha256())
    assert back is not None and back.sha256() == train.sha256()


def test_a_crash_before_the_pointer_keeps_the_previous_version(fs: FileSystem) -> None:
    v1 = TestSetStore(fs, "bot").freeze(ds("book one", "greet hi"), "/data/nlu.jsonl", "split")
    crashing = TestSetStore(CrashBeforePointer(fs), "bot")  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="simulated crash"):
        crashing.grow(v1, ds("book one", "greet hi"), ds("book two"), "+1")
    record, data = TestSetStore(fs, "bot").current() or (None, None)
    assert record == v1 and data is not None and data.sha256() == v1.sha256


def test_create_exclusive_creates_once_and_never_overwrites(fs: FileSystem) -> None:
    assert fs.create_exclusive("bot/testset/testset.json", b"first") is True
    assert fs.create_exclusive("bot/testset/testset.json", b"second") is False
    assert fs.read_bytes("bot/testset/testset.json") == b"first"
    assert [n for n in fs.list_dir("bot/testset") if n.startswith(".")] == []  # no temp file lingers


def test_concurrent_first_freezes_leave_exactly_one_test_set(fs: FileSystem) -> None:
    """Eight writers freeze different splits at the same moment: one wins, the others read its set."""
    import threading

    writers = 8
    barrier = threading.Barrier(writers)
    won: list[bool] = []
    seen: list[str] = []

    def freeze(i: int) -> None:
        store = TestSetStore(fs, "bot")
        split = ds(f"book case {i}", f"greet case {i}", "greet hi")
        barrier.wait()
        record = store.freeze_first(split, f"/data/run-{i}.jsonl", "split")
        won.append(record is not None)
        current = store.current()
        assert current is not None
        seen.append(current[0].sha256)

    threads = [threading.Thread(target=freeze, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert won.count(True) == 1 and len(won) == writers
    assert len(set(seen)) == 1
    record, data = TestSetStore(fs, "bot").current() or (None, None)
    assert record is not None and data is not None
    assert (record.version, len(record.versions())) == (1, 1) and data.sha256() == seen[0]
    # test.jsonl (for people) is the winner's data, too.
    assert fs.read_bytes("bot/testset/test.jsonl") == data.to_jsonl().encode("utf-8")


def test_freeze_first_after_a_freeze_changes_nothing(fs: FileSystem) -> None:
    store = TestSetStore(fs, "bot")
    v1 = store.freeze_first(ds("book one", "greet hi"), "/data/a.jsonl", "split")
    assert v1 is not None
    assert store.freeze_first(ds("book two", "greet yo"), "/data/b.jsonl", "split") is None
    assert store.record() == v1


def test_undo_takes_back_only_the_version_this_writer_made(fs: FileSystem) -> None:
    """A run undoes its own freeze or growth (blocked by validation), never a set another run wrote."""
    store = TestSetStore(fs, "bot")
    mine = store.freeze_first(ds("book one", "greet hi"), "mine", "split")
    assert mine is not None
    assert store.undo(mine.sha256) and store.record() is None  # its own first freeze: gone again

    winner = store.freeze_first(ds("book two", "greet hello"), "winner", "split")
    assert winner is not None
    assert store.freeze_first(ds("book one", "greet hi"), "loser", "split") is None  # lost the race
    assert not store.undo(None)  # the loser wrote nothing, so it undoes nothing
    assert store.record() == winner

    record, data = store.current() or (None, None)
    assert record is not None and data is not None
    grown = store.grow(record, data, ds("book three"), "+1")
    assert store.undo(grown.sha256) and store.record() == winner  # its own growth: back to the winner's
    grown = store.grow(record, data, ds("book three"), "+1")
    later = store.grow(grown, Dataset(examples=data.examples + ds("book three").examples), ds("book 4"), "+1")
    assert not store.undo(grown.sha256)  # another run grew it after this one: left alone
    assert store.record() == later
    current = store.current()
    assert current is not None and current[1].sha256() == later.sha256


def test_offered_data_is_kept_beside_its_training_data_and_merged(fs: FileSystem) -> None:
    train = ds("greet hello", "book a table")
    assert stored_offered_data(fs, "bot", train.sha256()) is None
    keep_offered_data(fs, "bot", train.sha256(), ds("greet hello", "book a table", "book broken span"))
    keep_offered_data(fs, "bot", train.sha256(), ds("greet hello", "book other broken"))  # same training data
    kept = stored_offered_data(fs, "bot", train.sha256())
    assert kept is not None
    assert list(kept.texts) == ["greet hello", "book a table", "book broken span", "book other broken"]
