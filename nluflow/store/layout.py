"""Where everything of a project lives in a store: one object names every key.

Keys are '/'-separated and relative to the store root; the same keys name files in a local folder and
objects below an S3 prefix. A project's layout::

    <project>/models/<model_id>/...                  the model files, as the backend wrote them
    <project>/models/<model_id>/manifest.json        written last: its presence means the model is complete
    <project>/active.json                            the active pointer, with the previous actives
    <project>/rejected.json                          rejected candidates kept for a forced promotion
    <project>/testset/testset.json                   the frozen test set's pointer and history
    <project>/testset/test.jsonl                     the current test set's data
    <project>/testset/versions/<sha256>.jsonl        each version's data, written once
    <project>/datasets/<sha256>.jsonl                the training data of a stored model, written once
    <project>/datasets/<sha256>.offered.jsonl        what that run was offered, before validation
    <project>/runs/<run_id>/...                      a run's report, figures and metrics
    <project>/audit.jsonl                            the hash-chained audit log
    <project>/audit.jsonl.promoting                  the live promotion's lock (local stores)

Every id is checked with :func:`check_id` before it becomes part of a key, so an id such as ``../x`` can never
name a key outside its project.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nluflow.errors import UnsafePathError

MANIFEST_NAME = "manifest.json"
POINTER_NAME = "active.json"
REJECTED_NAME = "rejected.json"
MODELS_DIR = "models"
TESTSET_DIR = "testset"
DATASETS_DIR = "datasets"
RUNS_DIR = "runs"
AUDIT_NAME = "audit.jsonl"
PROMOTION_LOCK_SUFFIX = ".promoting"

# For pydantic ``Field(pattern=...)``; check_id also refuses "..", which this pattern alone allows.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_ID_RE = re.compile(ID_PATTERN.strip("^$"))
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_DIGEST_RE = re.compile(r"[0-9A-Za-z]{1,128}")


def check_id(value: str, what: str) -> str:
    """Return ``value`` if it is a safe project or model id, else raise :class:`UnsafePathError`.

    A safe id is 1-128 characters of letters, digits, ``.``, ``_`` and ``-``, starts with a letter or digit
    and contains no ``..``; so it is one path segment that cannot climb out of the store.
    """
    if not isinstance(value, str) or _ID_RE.fullmatch(value) is None or ".." in value:
        raise UnsafePathError(
            f"{what} {value!r} would leave the store or is not a valid name: expected 1-128 letters, digits, "
            "'.', '_' or '-', starting with a letter or digit and without '..'; nothing was read or written"
        )
    return value


def _check_digest(value: str) -> str:
    """A content hash used as a key segment: one segment that cannot climb out of its folder."""
    if not isinstance(value, str) or _DIGEST_RE.fullmatch(value) is None:
        raise UnsafePathError(f"{value!r} is not a content hash (hex digits); nothing was read or written")
    return value


@dataclass(frozen=True)
class ProjectLayout:
    """The keys of one project in a store (see the module docstring)."""

    project: str

    def __post_init__(self) -> None:
        check_id(self.project, "project")

    @property
    def root(self) -> str:
        return self.project

    # -- models ----------------------------------------------------------------------------------------

    @property
    def models(self) -> str:
        return f"{self.project}/{MODELS_DIR}"

    def model(self, model_id: str) -> str:
        return f"{self.models}/{check_id(model_id, 'model id')}"

    def model_file(self, model_id: str, rel: str) -> str:
        return f"{self.model(model_id)}/{rel}"

    def manifest(self, model_id: str) -> str:
        return self.model_file(model_id, MANIFEST_NAME)

    @property
    def pointer(self) -> str:
        return f"{self.project}/{POINTER_NAME}"

    @property
    def rejected(self) -> str:
        return f"{self.project}/{REJECTED_NAME}"

    # -- test set and kept data ------------------------------------------------------------------------

    @property
    def testset(self) -> str:
        return f"{self.project}/{TESTSET_DIR}"

    @property
    def testset_data(self) -> str:
        return f"{self.testset}/test.jsonl"

    @property
    def testset_meta(self) -> str:
        return f"{self.testset}/testset.json"

    def testset_version(self, sha256: str) -> str:
        return f"{self.testset}/versions/{_check_digest(sha256)}.jsonl"

    @property
    def datasets(self) -> str:
        return f"{self.project}/{DATASETS_DIR}"

    def training_data(self, sha256: str) -> str:
        return f"{self.datasets}/{_check_digest(sha256)}.jsonl"

    def offered_data(self, sha256: str) -> str:
        return f"{self.datasets}/{_check_digest(sha256)}.offered.jsonl"

    # -- runs and the audit log ------------------------------------------------------------------------

    @property
    def runs(self) -> str:
        return f"{self.project}/{RUNS_DIR}"

    def run(self, run_id: str) -> str:
        return f"{self.runs}/{check_id(run_id, 'run id')}"

    @property
    def audit(self) -> str:
        return f"{self.project}/{AUDIT_NAME}"

    @property
    def promotion_lock(self) -> str:
        return f"{self.audit}{PROMOTION_LOCK_SUFFIX}"


def layout(project: str) -> ProjectLayout:
    """The layout of ``project`` (checked with :func:`check_id`)."""
    return ProjectLayout(project)
