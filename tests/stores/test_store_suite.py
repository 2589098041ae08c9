"""One store test-suite, run over every store: the local folder and S3 (moto's server on 127.0.0.1).

Each test in the first part takes the ``env`` fixture, parametrised by store, and checks what the store
promises whatever the storage: manifests with sha256s, idempotent adds, verification on load, the atomic
active pointer with its history, rollback, refusals (active model, unsafe ids, corrupted files, a pointer to a
missing model) and the folder semantics the store relies on (``remove_tree("p/models/m")`` never touches
``p/models/m.bin``). The S3 store must pass exactly what the local one passes. The last part tests what
only S3 has: pagination, key prefixes, error messages, and the ``S3ModelStore`` block.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import boto3
import pytest
from botocore.config import Config

from nluflow.errors import IntegrityError, ModelNotFoundError, StoreError, UnsafePathError
from nluflow.hashing import sha256_bytes
from nluflow.store import ActivePointer, FileSystem, LocalFileSystem, Manifest, ModelStore
from nluflow.store.s3 import S3FileSystem, sync_folder
from tests.stores.store_kit import Clock, ModelSource, model_files, tree

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


class MotoS3(Protocol):
    """The ``moto_s3`` fixture of conftest.py: the session's moto server and its fake credentials."""

    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    region: str

    def client(self, **config: Any) -> S3Client: ...


S3_PREFIX = "root/store"
# Objects beside the S3 store: an id or key that escaped the prefix would have something to damage.
S3_NEIGHBOURS = ("root/victim/active.json", "root/store-2/p/active.json", "root/storex", "p/active.json")
_MUTATIONS = ("PutObject", "DeleteObject", "DeleteObjects", "CopyObject", "CompleteMultipartUpload")


# --------------------------------------------------------------------------------------------- the stores


@dataclass
class Env(ModelSource):
    kind: str
    store: ModelStore
    fs: FileSystem
    tmp: Path
    snapshot: Callable[[], dict[str, Any]]  # everything a call could have touched
    make_store: Callable[[FileSystem], ModelStore]


def _make_local(tmp: Path) -> Env:
    fs = LocalFileSystem(tmp / "store", create=True)
    victim = tmp / "victim"
    (victim / "models" / "m1").mkdir(parents=True)
    (victim / "models" / "m1" / "manifest.json").write_text("{}")
    (victim / "active.json").write_text("{}")
    return Env("local", ModelStore(fs, clock=Clock()), fs, tmp, lambda: {"files": tree(tmp)}, _store)


def _make_s3(tmp: Path, client: S3Client, bucket: str) -> Env:
    for key in S3_NEIGHBOURS:
        client.put_object(Bucket=bucket, Key=key, Body=b"{}")
    writes = {"count": 0}

    def count(**_: Any) -> None:
        writes["count"] += 1

    for operation in _MUTATIONS:  # a rewrite with identical bytes is a change too
        client.meta.events.register(f"before-call.s3.{operation}", count)

    def snapshot() -> dict[str, Any]:
        objects = {
            obj["Key"]: (obj["ETag"], obj["Size"])
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for obj in page.get("Contents", [])
        }
        return {"objects": objects, "writes": writes["count"], "files": tree(tmp)}

    fs = S3FileSystem(client, bucket, S3_PREFIX)
    return Env("s3", ModelStore(fs, clock=Clock()), fs, tmp, snapshot, _store)


def _store(fs: FileSystem) -> ModelStore:
    return ModelStore(fs, clock=Clock())


@pytest.fixture(params=["local", "s3"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Env:
    if request.param == "local":
        return _make_local(tmp_path)
    client: S3Client = request.getfixturevalue("s3_client")
    return _make_s3(tmp_path, client, request.getfixturevalue("s3_bucket"))


class RecordingFS:
    """Records the writes that reach the wrapped filesystem, in order."""

    def __init__(self, inner: FileSystem) -> None:
        self.inner = inner
        self.writes: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def write_bytes(self, key: str, data: bytes) -> None:
        self.writes.append(key)
        self.inner.write_bytes(key, data)

    def put_file(self, local: Path, key: str) -> None:
        self.writes.append(key)
        self.inner.put_file(local, key)

    def remove_tree(self, key: str) -> None:
        self.writes.append(f"rm {key}")
        self.inner.remove_tree(key)


class FailingFS(RecordingFS):
    """Fails the n-th write (a crash, a lost connection) after recording it."""

    def __init__(self, inner: FileSystem, fail_at: int) -> None:
        super().__init__(inner)
        self.fail_at = fail_at

    def _maybe_fail(self, key: str) -> None:
        if len(self.writes) == self.fail_at:
            raise StoreError(f"simulated failure writing {key!r}")

    def write_bytes(self, key: str, data: bytes) -> None:
        self._maybe_fail(key)
        super().write_bytes(key, data)

    def put_file(self, local: Path, key: str) -> None:
        self._maybe_fail(key)
        super().put_file(local, key)


# --------------------------------------------------------------------------------------------- models


def test_add_model_stores_the_files_and_a_manifest_of_their_sha256(env: Env) -> None:
    recording = RecordingFS(env.fs)
    manifest = env.make_store(recording).add_model(
        "p", "m1", env.src("m1"), backend="local", dataset_sha256="d" * 64, test_sha256=None,
        config={}, metrics={"intent_accuracy": 0.9}, run_id="run-1",
    )  # fmt: skip
    files = model_files("m1")
    assert manifest.files == {rel: sha256_bytes(data) for rel, data in files.items()}
    for rel, data in files.items():
        assert env.fs.read_bytes(f"p/models/m1/{rel}") == data
    stored = json.loads(env.fs.read_bytes("p/models/m1/manifest.json"))
    assert stored["files"] == manifest.files and stored["run_id"] == "run-1"
    assert Manifest.model_validate(stored).sha256() == manifest.sha256()
    # Every model file first, the manifest (the "model is complete" marker) last.
    assert sorted(recording.writes[:-1]) == sorted(f"p/models/m1/{rel}" for rel in files)
    assert recording.writes[-1] == "p/models/m1/manifest.json"
    assert env.store.has_model("p", "m1") and env.store.manifest("p", "m1") == manifest


def test_adding_the_same_model_again_changes_nothing(env: Env) -> None:
    first = env.add("m1")
    before = env.snapshot()
    assert env.add("m1", run_id="a-retry") == first
    assert env.snapshot() == before


def test_the_same_id_with_other_files_is_refused(env: Env) -> None:
    env.add("m1")
    other = env.src("other", {**model_files("m1"), "intent.pkl": b"different"})
    before = env.snapshot()
    with pytest.raises(StoreError, match=r"different files \(intent\.pkl"):
        env.store.add_model("p", "m1", other, backend="x", dataset_sha256="d", test_sha256=None,
                            config={}, metrics={})  # fmt: skip
    assert env.snapshot() == before


@pytest.mark.parametrize("fail_at", [0, 2, 3])  # the first file, the last file, the manifest
def test_a_failure_part_way_through_add_leaves_no_model(env: Env, fail_at: int) -> None:
    env.add("m0")
    src = env.src("m1")
    before = env.snapshot()["files" if env.kind == "local" else "objects"]
    failing = env.make_store(FailingFS(env.fs, fail_at))
    with pytest.raises(StoreError, match="simulated failure"):
        failing.add_model("p", "m1", src, backend="x", dataset_sha256="d", test_sha256=None,
                          config={}, metrics={})  # fmt: skip
    assert not env.store.has_model("p", "m1") and not env.fs.exists("p/models/m1")
    assert env.snapshot()["files" if env.kind == "local" else "objects"] == before
    assert [m.model_id for m in env.store.list_models("p")] == ["m0"]


def test_an_incomplete_folder_counts_as_absent_and_is_replaced(env: Env) -> None:
    env.add("m0")
    env.fs.write_bytes("p/models/m1/intent.pkl", b"half an upload")  # no manifest: a crashed add
    assert not env.store.has_model("p", "m1")
    assert [m.model_id for m in env.store.list_models("p")] == ["m0"]
    with pytest.raises(ModelNotFoundError, match="'m1'"):
        env.store.manifest("p", "m1")
    added = env.add("m1")
    assert env.store.verify("p", "m1") == added


def test_list_models_newest_first_and_list_projects(env: Env) -> None:
    for model_id in ("b", "a", "c"):
        env.add(model_id)
    env.add("x", project="other")
    env.fs.write_bytes("stray.txt", b"not a project")
    assert [m.model_id for m in env.store.list_models("p")] == ["c", "a", "b"]
    assert [m.model_id for m in env.store.list_models("other")] == ["x"]
    assert env.store.list_models("nothing-here") == []
    assert env.store.list_projects() == ["other", "p"]


def test_verify_and_materialize_give_the_verified_files(env: Env) -> None:
    manifest = env.add("m1")
    assert env.store.verify("p", "m1") == manifest
    folder = env.store.materialize("p", "m1", env.tmp / "dest")
    for rel, data in model_files("m1").items():
        assert (folder / rel).read_bytes() == data
    assert Manifest.model_validate_json((folder / "manifest.json").read_bytes()) == manifest
    if env.kind == "s3":
        assert folder == env.tmp / "dest"  # downloaded; a local store hands out its own folder
        assert not list(folder.rglob(".nluflow-tmp-*"))


# --------------------------------------------------------------------------------------------- integrity


def test_a_corrupted_object_is_refused_everywhere_and_nothing_changes(env: Env) -> None:
    m2 = env.add("m2")
    env.add("m1")
    env.store.activate("p", "m1")
    env.corrupt("p/models/m2/entities/crf.bin")
    actual = sha256_bytes(env.fs.read_bytes("p/models/m2/entities/crf.bin"))
    before = env.snapshot()
    with pytest.raises(IntegrityError) as info:
        env.store.verify("p", "m2")
    assert "entities/crf.bin" in str(info.value)
    assert m2.files["entities/crf.bin"] in str(info.value) and actual in str(info.value)
    with pytest.raises(IntegrityError, match=r"crf\.bin"):
        env.store.activate("p", "m2")
    with pytest.raises(IntegrityError, match=r"crf\.bin"):
        env.store.materialize("p", "m2", env.tmp / "dest")
    assert not (env.tmp / "dest").exists()  # the downloaded files were removed again
    assert env.snapshot() == before
    active = env.store.active("p")
    assert active is not None and active.model_id == "m1"


def test_a_missing_model_file_is_named(env: Env) -> None:
    env.add("m1")
    env.fs.remove_tree("p/models/m1/meta.json")
    with pytest.raises(IntegrityError, match=r"meta\.json: missing"):
        env.store.verify("p", "m1")


def test_an_edited_manifest_of_the_active_model_is_refused(env: Env) -> None:
    env.add("m1")
    env.store.activate("p", "m1")
    raw = json.loads(env.fs.read_bytes("p/models/m1/manifest.json"))
    raw["metrics"]["intent_accuracy"] = 0.99  # files unchanged, the claims changed
    env.fs.write_bytes("p/models/m1/manifest.json", json.dumps(raw).encode())
    with pytest.raises(IntegrityError, match="changed since it was activated"):
        env.store.verify("p", "m1")


# --------------------------------------------------------------------------------------------- the pointer


def test_activate_writes_only_the_pointer_and_keeps_the_history(env: Env) -> None:
    m1, m2 = env.add("m1"), env.add("m2")
    recording = RecordingFS(env.fs)
    store = env.make_store(recording)
    assert store.active("p") is None
    first = store.activate("p", "m1", run_id="r1", reason="first model")
    second = store.activate("p", "m2", run_id="r2", reason="beats m1")
    assert recording.writes == ["p/active.json", "p/active.json"]  # one object, written once per switch
    assert (first.model_id, first.manifest_sha256, first.history) == ("m1", m1.sha256(), [])
    assert (second.model_id, second.manifest_sha256) == ("m2", m2.sha256())
    assert [(e.model_id, e.run_id, e.reason) for e in second.history] == [("m1", "r1", "first model")]
    assert ActivePointer.model_validate_json(env.fs.read_bytes("p/active.json")) == second
    assert env.store.active("p") == second
    before = env.snapshot()
    assert env.store.activate("p", "m2", run_id="r3") == second  # already active: a no-op
    assert env.snapshot() == before


def test_a_failed_pointer_write_keeps_the_previous_pointer(env: Env) -> None:
    env.add("m1")
    env.add("m2")
    old = env.store.activate("p", "m1")
    failing = env.make_store(FailingFS(env.fs, 0))
    with pytest.raises(StoreError, match="simulated failure"):
        failing.activate("p", "m2")
    assert env.store.active("p") == old


def test_readers_never_see_a_torn_pointer(env: Env) -> None:
    env.add("m1")
    env.add("m2")
    env.store.activate("p", "m1")
    seen: list[str] = []
    problems: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                pointer = ActivePointer.model_validate_json(env.fs.read_bytes("p/active.json"))
                seen.append(pointer.model_id)
            except BaseException as exc:  # a torn or missing pointer
                problems.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(8):
            env.store.activate("p", "m2" if i % 2 == 0 else "m1")
    finally:
        done.set()
        reader.join()
    assert problems == []
    assert seen and set(seen) <= {"m1", "m2"}
    active = env.store.active("p")
    assert active is not None and active.model_id == "m1" and len(active.history) == 8


def test_rollback_steps_back_and_to_a_named_model(env: Env) -> None:
    for model_id in ("m1", "m2", "m3"):
        env.add(model_id)
        env.store.activate("p", model_id)
    back = env.store.rollback("p", run_id="r-rb")
    assert back.model_id == "m2" and back.run_id == "r-rb" and "m3" in back.reason
    assert [e.model_id for e in back.history] == ["m1"]
    assert env.store.rollback("p").model_id == "m1"  # steps back again, no toggling to m3
    with pytest.raises(StoreError, match="no previous model"):
        env.store.rollback("p")
    active = env.store.active("p")
    assert active is not None and active.model_id == "m1"
    again = env.store.rollback("p", to="m3")
    assert again.model_id == "m3" and [e.model_id for e in again.history] == ["m1"]
    assert env.store.active("p") == again


def test_rollback_refuses_a_corrupted_target_and_changes_nothing(env: Env) -> None:
    env.add("m1")
    env.add("m2")
    with pytest.raises(StoreError, match="no active model"):
        env.store.rollback("p")
    env.store.activate("p", "m1")
    env.store.activate("p", "m2")
    env.corrupt("p/models/m1/meta.json")
    before = env.snapshot()
    with pytest.raises(IntegrityError):
        env.store.rollback("p")
    assert env.snapshot() == before


def test_rollback_to_a_named_model(env: Env) -> None:
    for model_id in ("m1", "m2", "m3"):
        env.add(model_id)
        env.store.activate("p", model_id)
    env.add("m4")  # stored, never active
    back = env.store.rollback("p", to="m1")
    assert back.model_id == "m1" and back.history == []
    again = env.store.rollback("p", to="m4")
    assert again.model_id == "m4" and [e.model_id for e in again.history] == ["m1"]
    assert env.store.rollback("p", to="m4") == again


def test_rollback_refuses_a_target_whose_manifest_changed_since_it_was_active(env: Env) -> None:
    env.add("m1")
    env.add("m2")
    env.store.activate("p", "m1")
    env.store.activate("p", "m2")
    raw = json.loads(env.fs.read_bytes("p/models/m1/manifest.json"))
    raw["metrics"]["macro_f1"] = 0.99
    env.fs.write_bytes("p/models/m1/manifest.json", json.dumps(raw).encode())
    with pytest.raises(IntegrityError, match="changed since the model was active"):
        env.store.rollback("p")


def test_a_pointer_to_a_missing_model_says_what_to_do(env: Env) -> None:
    env.add("m1")
    env.store.activate("p", "m1")
    env.fs.remove_tree("p/models/m1")  # removed behind the store's back
    for call in (
        lambda: env.store.verify("p", "m1"),
        lambda: env.store.materialize("p", "m1", env.tmp / "d"),
    ):
        with pytest.raises(ModelNotFoundError) as info:
            call()
        message = str(info.value)
        assert "'p'" in message and "'m1'" in message and "nluflow models rollback" in message


def test_a_broken_pointer_is_an_integrity_error(env: Env) -> None:
    env.fs.write_bytes("p/active.json", b'{"project": "p", "model_id": ')
    with pytest.raises(IntegrityError, match="not a valid active pointer"):
        env.store.active("p")


def test_the_active_model_cannot_be_removed(env: Env) -> None:
    env.add("m1")
    env.add("m2")
    env.store.activate("p", "m1")
    before = env.snapshot()
    with pytest.raises(StoreError, match="is the active model"):
        env.store.remove_model("p", "m1")
    assert env.snapshot() == before
    env.store.remove_model("p", "m2")
    assert not env.store.has_model("p", "m2") and not env.fs.exists("p/models/m2")
    assert env.store.verify("p", "m1").model_id == "m1"
    with pytest.raises(ModelNotFoundError):
        env.store.remove_model("p", "m2")


# --------------------------------------------------------------------------------------------- unsafe ids

BAD_IDS = ["../x", "../victim", "/abs", "a/b", "a\\b", "", ".", "..", "a..b", "../store-2"]


def _calls(store: ModelStore, src: Path, dest: Path, bad: str) -> list[Callable[[], object]]:
    kw: dict[str, Any] = {
        "backend": "x",
        "dataset_sha256": "d",
        "test_sha256": None,
        "config": {},
        "metrics": {},
    }
    return [
        lambda: store.add_model(bad, "m9", src, **kw),
        lambda: store.add_model("p", bad, src, **kw),
        lambda: store.has_model(bad, "m1"),
        lambda: store.has_model("p", bad),
        lambda: store.manifest(bad, "m1"),
        lambda: store.manifest("p", bad),
        lambda: store.verify(bad, "m1"),
        lambda: store.verify("p", bad),
        lambda: store.materialize(bad, "m1", dest),
        lambda: store.materialize("p", bad, dest),
        lambda: store.active(bad),
        lambda: store.activate(bad, "m1"),
        lambda: store.activate("p", bad),
        lambda: store.rollback(bad),
        lambda: store.rollback("p", to=bad),
        lambda: store.remove_model(bad, "m1"),
        lambda: store.remove_model("p", bad),
        lambda: store.list_models(bad),
    ]


def test_unsafe_ids_are_refused_by_every_method_and_nothing_changes(env: Env) -> None:
    env.add("m1")
    env.add("m2")
    env.store.activate("p", "m1")
    src = env.src("m9")
    before = env.snapshot()
    for bad in BAD_IDS:
        for i, call in enumerate(_calls(env.store, src, env.tmp / "dest", bad)):
            with pytest.raises(UnsafePathError):
                call()
            assert env.snapshot() == before, f"call #{i} with {bad!r} changed the store"


@pytest.mark.parametrize("key", ["../victim/active.json", "/etc/passwd", "a\\b", "a//b", "./a", "a/.."])
def test_unsafe_keys_are_refused_by_the_filesystem(env: Env, key: str) -> None:
    before = env.snapshot()
    calls: list[Callable[[], None]] = [
        lambda: env.fs.write_bytes(key, b"x"),
        lambda: env.fs.remove_tree(key),
        lambda: env.fs.put_file(Path(__file__), key),
    ]
    for call in calls:
        with pytest.raises(UnsafePathError):
            call()
    with pytest.raises(UnsafePathError):
        env.fs.remove_tree("")  # the store root itself
    assert env.snapshot() == before


# --------------------------------------------------------------------------------------------- folders


def test_remove_tree_removes_the_folder_and_never_a_sibling_with_the_same_start(env: Env) -> None:
    fs = env.fs
    for key in (
        "p/models/m/a.bin",
        "p/models/m/sub/b.bin",
        "p/models/m.bin",
        "p/models/m-2/x",
        "p/models/mm",
    ):
        fs.write_bytes(key, key.encode())
    assert fs.list_dir("p/models") == ["m", "m-2", "m.bin", "mm"]
    assert fs.list_dir("p/models/m") == ["a.bin", "sub"]
    fs.remove_tree("p/models/m")
    assert not fs.exists("p/models/m") and not fs.exists("p/models/m/a.bin")
    assert fs.list_dir("p/models") == ["m-2", "m.bin", "mm"]
    for key in ("p/models/m.bin", "p/models/m-2/x", "p/models/mm"):
        assert fs.read_bytes(key) == key.encode()
    fs.remove_tree("p/models/m")  # gone already: nothing happens
    fs.remove_tree("p/models/m.bin")  # a single file
    assert fs.list_dir("p/models") == ["m-2", "mm"]


def test_a_folder_exists_only_through_its_own_children(env: Env) -> None:
    env.fs.write_bytes("p/models/m.bin", b"x")
    assert not env.fs.exists("p/models/m")
    assert env.fs.list_dir("p/models/m") == []
    assert env.fs.exists("p/models") and env.fs.exists("p/models/m.bin") and env.fs.exists("")


def test_filesystem_reads_writes_and_missing_keys(env: Env) -> None:
    fs = env.fs
    with pytest.raises(ModelNotFoundError, match="'a/none'"):
        fs.read_bytes("a/none")
    with pytest.raises(ModelNotFoundError):
        fs.get_file("a/none", env.tmp / "out" / "none")
    assert not (env.tmp / "out" / "none").exists()
    assert fs.list_dir("missing") == [] and not fs.exists("missing")
    fs.remove_tree("missing")
    fs.write_bytes("a/b/c.bin", b"old")
    fs.write_bytes("a/b/c.bin", b"new")  # a whole replacement
    assert fs.read_bytes("a/b/c.bin") == b"new"
    fs.get_file("a/b/c.bin", env.tmp / "out" / "deep" / "c.bin")  # creates the folders
    assert (env.tmp / "out" / "deep" / "c.bin").read_bytes() == b"new"
    fs.put_file(env.tmp / "out" / "deep" / "c.bin", "x/y.bin")
    assert fs.read_bytes("x/y.bin") == b"new"
    assert fs.list_dir("") == ["a", "x"]
    with pytest.raises(StoreError):
        fs.put_file(env.tmp / "no-such-file", "x/z.bin")
    assert not fs.exists("x/z.bin")


def test_sync_folder_uploads_a_run_folder_under_its_prefix(env: Env) -> None:
    run = env.tmp / "run"
    (run / "figures").mkdir(parents=True)
    (run / "report.md").write_text("# Decision\npromote")
    (run / "metrics.json").write_text('{"macro_f1": 0.9}')
    (run / "figures" / "confusion.png").write_bytes(b"\x89PNG...")
    keys = sync_folder(env.fs, run, "p/runs/run-1/")
    assert keys == [
        "p/runs/run-1/figures/confusion.png",
        "p/runs/run-1/metrics.json",
        "p/runs/run-1/report.md",
    ]
    assert env.fs.read_bytes("p/runs/run-1/figures/confusion.png") == b"\x89PNG..."
    assert env.fs.list_dir("p/runs/run-1") == ["figures", "metrics.json", "report.md"]
    assert sync_folder(env.fs, run, "p/runs/run-1") == keys  # a retry re-uploads the same keys
    assert env.store.list_projects() == []  # run folders are not models
    with pytest.raises(UnsafePathError):
        sync_folder(env.fs, run, "")
    with pytest.raises(UnsafePathError):
        sync_folder(env.fs, run, "../elsewhere")
    with pytest.raises(StoreError, match="not a folder"):
        sync_folder(env.fs, env.tmp / "missing", "p/runs/run-2")


# --------------------------------------------------------------------------------------------- S3 only


def _objects(client: S3Client, bucket: str) -> dict[str, bytes]:
    return {
        obj["Key"]: client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for obj in page.get("Contents", [])
    }


def test_s3_layout_is_the_local_layout_under_the_prefix(
    tmp_path: Path, s3_client: S3Client, s3_bucket: str
) -> None:
    env = _make_s3(tmp_path, s3_client, s3_bucket)
    local = _make_local(tmp_path / "local")
    for each in (env, local):
        each.add("m1")
        each.store.activate("p", "m1")
    objects = _objects(s3_client, s3_bucket)
    stored = {
        key.removeprefix(f"{S3_PREFIX}/"): data
        for key, data in objects.items()
        if key.startswith("root/store/")
    }
    assert stored == {
        rel: data for rel, data in tree(tmp_path / "local" / "store").items() if data != b"<dir>"
    }
    for neighbour in S3_NEIGHBOURS:
        assert objects[neighbour] == b"{}"


def test_s3_listing_and_removal_follow_every_page(
    tmp_path: Path, s3_client: S3Client, s3_bucket: str
) -> None:
    calls = {"ListObjectsV2": 0}

    def count(**_: Any) -> None:
        calls["ListObjectsV2"] += 1

    s3_client.meta.events.register("before-call.s3.ListObjectsV2", count)
    fs = S3FileSystem(s3_client, s3_bucket, "paged", page_size=2)
    names = [f"f{i}" for i in range(5)] + [f"d{i}" for i in range(4)]
    for name in names:
        fs.write_bytes(f"big/{name}" if name.startswith("f") else f"big/{name}/x", b"x")
    fs.write_bytes("big.bin", b"sibling")
    calls["ListObjectsV2"] = 0
    assert fs.list_dir("big") == sorted(names)
    assert calls["ListObjectsV2"] == 5  # 9 children, 2 per page
    fs.remove_tree("big")
    assert fs.list_dir("big") == [] and fs.list_dir("") == ["big.bin"]


def test_s3_stores_with_different_prefixes_do_not_see_each_other(s3_client: S3Client, s3_bucket: str) -> None:
    a = S3FileSystem(s3_client, s3_bucket, "/team/a/")
    ab = S3FileSystem(s3_client, s3_bucket, "team/ab")
    root = S3FileSystem(s3_client, s3_bucket)
    assert a.prefix == "team/a" and a.object_key("p/active.json") == "team/a/p/active.json"
    a.write_bytes("p/active.json", b"a")
    ab.write_bytes("q/active.json", b"ab")
    assert a.list_dir("") == ["p"] and ab.list_dir("") == ["q"]
    assert not a.exists("q") and not ab.exists("p")
    a.remove_tree("p")
    assert ab.read_bytes("q/active.json") == b"ab"
    assert root.list_dir("") == ["team"] and root.list_dir("team") == ["ab"]
    with pytest.raises(UnsafePathError):
        S3FileSystem(s3_client, s3_bucket, "team/../other")
    with pytest.raises(StoreError, match="bucket name"):
        S3FileSystem(s3_client, "a/b")


def test_s3_messages_name_bucket_prefix_key_and_endpoint(
    moto_s3: MotoS3, s3_client: S3Client, s3_bucket: str
) -> None:
    fs = S3FileSystem(s3_client, s3_bucket, "nlu")
    assert fs.describe() == f"S3 store s3://{s3_bucket}/nlu/ at {moto_s3.endpoint_url}"
    with pytest.raises(ModelNotFoundError) as info:
        fs.read_bytes("p/models/m1/manifest.json")
    assert f"s3://{s3_bucket}/nlu/p/models/m1/manifest.json" in str(info.value)
    with pytest.raises(ModelNotFoundError, match=r"'m1'.*nluflow models list"):
        ModelStore(fs).manifest("p", "m1")


def test_s3_missing_bucket_is_a_store_error_naming_bucket_and_key(s3_client: S3Client) -> None:
    store = ModelStore(S3FileSystem(s3_client, "no-such-bucket", "nlu"))
    with pytest.raises(StoreError) as info:
        store.list_projects()
    assert not isinstance(info.value, ModelNotFoundError)
    assert "'no-such-bucket' " in str(info.value) and "does not exist" in str(info.value)
    with pytest.raises(StoreError, match=r"s3://no-such-bucket/nlu/p/active\.json.*NoSuchBucket"):
        store.fs.write_bytes("p/active.json", b"{}")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_s3_unreachable_endpoint_is_a_store_error_without_credentials(
    moto_s3: MotoS3, tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{_closed_port()}"
    client = boto3.client(
        "s3",
        endpoint_url=dead,
        aws_access_key_id=moto_s3.access_key_id,
        aws_secret_access_key=moto_s3.secret_access_key,
        region_name=moto_s3.region,
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=1),
    )
    store = ModelStore(S3FileSystem(client, "models", "nlu"))
    (tmp_path / "m1").mkdir()
    (tmp_path / "m1" / "a.bin").write_bytes(b"a")
    calls: list[Callable[[], object]] = [
        lambda: store.active("p"),
        lambda: store.list_projects(),
        lambda: store.add_model("p", "m1", tmp_path / "m1", backend="x", dataset_sha256="d", test_sha256=None,
                                config={}, metrics={}),
    ]  # fmt: skip
    for call in calls:
        with pytest.raises(StoreError) as info:
            call()
        message = str(info.value)
        assert not isinstance(info.value, ModelNotFoundError)
        assert "s3://models/nlu/" in message, message
        assert "EndpointConnectionError" in message and dead in message
        assert moto_s3.secret_access_key not in message and moto_s3.access_key_id not in message


# --------------------------------------------------------------------------------------------- the block


@pytest.fixture
def dead_default_endpoint(monkeypatch: pytest.MonkeyPatch, moto_s3: MotoS3) -> None:
    """Point the session's default endpoint at a closed port: only the block's own endpoint reaches moto."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{_closed_port()}")


@pytest.mark.usefixtures("dead_default_endpoint")
@pytest.mark.parametrize("credentials", ["minio", "aws"])
def test_s3_model_store_block_builds_a_working_store(
    credentials: str, moto_s3: MotoS3, s3_client: S3Client, s3_bucket: str, tmp_path: Path
) -> None:
    from prefect_aws.client_parameters import AwsClientParameters
    from prefect_aws.credentials import AwsCredentials, MinIOCredentials
    from prefect_aws.s3 import S3Bucket

    from blocks.s3_store import S3ModelStore

    params = AwsClientParameters(endpoint_url=moto_s3.endpoint_url)
    creds: AwsCredentials | MinIOCredentials
    if credentials == "minio":
        creds = MinIOCredentials(
            minio_root_user=moto_s3.access_key_id, minio_root_password=moto_s3.secret_access_key,
            region_name=moto_s3.region, aws_client_parameters=params,
        )  # fmt: skip
    else:
        creds = AwsCredentials(
            aws_access_key_id=moto_s3.access_key_id, aws_secret_access_key=moto_s3.secret_access_key,
            region_name=moto_s3.region, aws_client_parameters=params,
        )  # fmt: skip
    block = S3ModelStore(
        s3_bucket=S3Bucket(bucket_name=s3_bucket, credentials=creds, bucket_folder="team/"), prefix="/nlu/"
    )
    assert block.prefix == "nlu" and block.key_prefix() == "team/nlu"
    store = block.get_store()
    assert isinstance(store.fs, S3FileSystem)
    src = tmp_path / "m1"
    src.mkdir()
    (src / "intent.pkl").write_bytes(b"weights")
    manifest = store.add_model("banking", "m1", src, backend="local", dataset_sha256="d" * 64,
                               test_sha256=None, config={}, metrics={"macro_f1": 0.9})  # fmt: skip
    store.activate("banking", "m1", reason="first")
    assert (store.materialize("banking", "m1", tmp_path / "dest") / "intent.pkl").read_bytes() == b"weights"
    keys = sorted(_objects(s3_client, s3_bucket))
    assert keys == [
        "team/nlu/banking/active.json",
        "team/nlu/banking/models/m1/intent.pkl",
        "team/nlu/banking/models/m1/manifest.json",
    ]
    # A second store from the same block sees the same models: nothing lives in the block or the client.
    again = block.get_store()
    assert again.fs is not store.fs and again.list_models("banking") == [manifest]
    for text in (store.describe(), repr(store), repr(block)):
        assert moto_s3.secret_access_key not in text
    assert store.describe() == f"S3 store s3://{s3_bucket}/team/nlu/ at {moto_s3.endpoint_url}"


def test_s3_model_store_block_refuses_a_prefix_that_climbs_out() -> None:
    from prefect_aws.s3 import S3Bucket
    from pydantic import ValidationError

    from blocks.s3_store import S3ModelStore

    with pytest.raises(ValidationError, match="key prefix"):
        S3ModelStore(s3_bucket=S3Bucket(bucket_name="models"), prefix="nlu/../../other")


# --------------------------------------------------------------------------------------------- rejected


def test_rejected_candidates_are_kept_and_pruned_the_same_way_on_every_store(env: Env) -> None:
    env.add("m1")
    env.store.activate("p", "m1")
    for model_id in ("r1", "r2", "r3"):
        env.add(model_id)
        env.store.record_rejected("p", model_id, run_id=f"run-{model_id}", reason="reject")
    env.store.activate("p", "r1")  # forced by hand, then replaced: a rollback target now
    env.store.activate("p", "m1")
    assert env.store.prune_rejected("p", 1) == ["r2"]
    assert [e.model_id for e in env.store.rejected("p")] == ["r1", "r3"]
    assert not env.store.has_model("p", "r2") and not env.fs.exists("p/models/r2")
    assert sorted(m.model_id for m in env.store.list_models("p")) == ["m1", "r1", "r3"]
    assert env.store.rollback("p").model_id == "r1"


def test_rejected_candidates_are_kept_listed_and_pruned_beyond_the_newest_n(env: Env) -> None:
    env.add("m-active")
    env.store.activate("p", "m-active")
    for i in range(4):
        env.add(f"r{i}")
        env.store.record_rejected("p", f"r{i}", run_id=f"run-{i}", reason="reject: does not beat")
    assert [e.model_id for e in env.store.rejected("p")] == ["r0", "r1", "r2", "r3"]
    assert env.store.rejected("p")[0].run_id == "run-0"
    assert env.store.prune_rejected("p", 2) == ["r0", "r1"]
    assert [e.model_id for e in env.store.rejected("p")] == ["r2", "r3"]
    assert not env.store.has_model("p", "r0") and not env.store.has_model("p", "r1")
    assert env.store.has_model("p", "r2") and env.store.has_model("p", "m-active")
    assert env.store.prune_rejected("p", 2) == []  # within the limit: nothing to do


def test_pruning_never_removes_the_active_model_or_a_rollback_target(env: Env) -> None:
    env.add("m1")
    env.store.activate("p", "m1")
    for model_id in ("r1", "r2", "r3"):
        env.add(model_id)
        env.store.record_rejected("p", model_id)
    env.store.activate("p", "r1")  # a rejected candidate promoted by hand, then replaced: in the history
    env.store.activate("p", "r2")  # active
    assert env.store.prune_rejected("p", 0) == ["r3"]
    assert [e.model_id for e in env.store.rejected("p")] == ["r1", "r2"]
    for model_id in ("m1", "r1", "r2"):
        env.store.verify("p", model_id)
    assert env.store.rollback("p").model_id == "r1"


def test_forget_rejected_and_record_rejected_refuse_or_ignore_unknown_models(env: Env) -> None:
    env.add("r1")
    env.store.record_rejected("p", "r1")
    env.store.record_rejected("p", "r1")  # recorded once
    assert [e.model_id for e in env.store.rejected("p")] == ["r1"]
    env.store.forget_rejected("p", "r1")
    env.store.forget_rejected("p", "never-rejected")
    assert env.store.rejected("p") == []
    with pytest.raises(ModelNotFoundError):
        env.store.record_rejected("p", "not-stored")
    with pytest.raises(StoreError, match="keep must be 0 or more"):
        env.store.prune_rejected("p", -1)
