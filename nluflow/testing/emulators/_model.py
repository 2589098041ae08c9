"""The model behind every emulator: the local NLU model, so an emulator's predictions are real ones."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from nluflow.backends.base import LocalModelOptions, Parse
from nluflow.data.schema import Dataset


class Predictor(Protocol):
    def parse(self, texts: Sequence[str]) -> list[Parse]: ...

    def save(self, directory: Path) -> Any: ...


Trainer = Callable[[Dataset, int], Predictor]
Loader = Callable[[Path], Predictor]


def train_local(dataset: Dataset, seed: int) -> Predictor:
    """Fit ``nluflow.models.nlu.NLUModel`` with its default options (imported late: it is heavy)."""
    from nluflow.models.nlu import NLUModel

    model: Predictor = NLUModel(LocalModelOptions(), random_state=seed).fit(dataset)
    return model


def load_local(directory: Path) -> Predictor:
    from nluflow.models.nlu import NLUModel

    model: Predictor = NLUModel.load(directory)
    return model


def pack_dir(directory: Path) -> bytes:
    """A folder as gzipped tar bytes, members relative to the folder (stable order)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(directory.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(directory)), recursive=False)
    return buffer.getvalue()


def unpack_to(data: bytes, directory: Path) -> None:
    """Extract gzipped tar bytes into ``directory``, refusing members that would leave it."""
    directory.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(directory, filter="data")
