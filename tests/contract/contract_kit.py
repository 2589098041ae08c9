"""The contract suite's kit: a tiny dataset, and one rig per backend (its emulator served on 127.0.0.1, a
client with short timeouts, and the full cycle)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nluflow.backends.base import ModelRef, Parse, TrainingBackend, TrainingConfig
from nluflow.backends.cognigy import CognigyBackend, CognigySettings
from nluflow.backends.http import HttpOptions, default_timeout, wait_for_job
from nluflow.backends.neuralspace import NeuralSpaceBackend
from nluflow.backends.rasa import RasaBackend, RasaSettings
from nluflow.backends.service import TrainingServiceBackend
from nluflow.data.schema import Dataset, Entity, Example
from nluflow.testing.emulators import EmulatorSettings, ServedApp
from nluflow.testing.emulators._base import Emulator
from nluflow.testing.emulators.cognigy import CognigyEmulator
from nluflow.testing.emulators.neuralspace import PREFIX, NeuralSpaceEmulator
from nluflow.testing.emulators.rasa import RasaEmulator
from nluflow.testing.emulators.service import TrainingServiceEmulator

CITIES = [
    "Paris",
    "Berlin",
    "Madrid",
    "Rome",
    "Oslo",
    "Vienna",
    "Lisbon",
    "Prague",
    "Dublin",
    "Athens",
    "Tokyo",
]
GREET = [
    "hi",
    "hello",
    "hey there",
    "good morning",
    "hello friend",
    "hi bot",
    "hey",
    "greetings",
    "good evening",
    "hiya",
    "howdy",
]
BYE = [
    "bye",
    "goodbye",
    "see you",
    "see you later",
    "bye bye",
    "farewell",
    "catch you later",
    "good night",
    "talk to you later",
    "later",
    "so long",
]


def tiny_dataset() -> Dataset:
    examples = [Example(text=t, intent="greet") for t in GREET]
    examples += [Example(text=t, intent="goodbye") for t in BYE]
    for city in CITIES:
        text = f"book a flight to {city}"
        start = text.index(city)
        examples.append(
            Example(
                text=text,
                intent="book_flight",
                entities=(Entity(start=start, end=start + len(city), entity="city", value=city),),
            )
        )
    return Dataset.of(examples, source="tiny")


TEST_TEXTS = ["hello there", "goodbye friend", "book a flight to Paris", "fly me to Oslo please"]


BACKENDS = ("service", "rasa", "cognigy", "cognigy-oauth2", "neuralspace")

# Secrets of the rigs: distinctive strings, so a leak test can search for them anywhere.
SECRETS = {
    "service": "svc-S3CRET-7f3a9c",
    "rasa": "rasa-T0KEN-2b8e1d",
    "cognigy": "cog-APIKEY-9d4c2a",
    "cognigy-oauth2": "cog-CLIENT-SECRET-5e7f1b",
    "neuralspace": "ns-RAWTOKEN-3c6a8e",
}

READ_TIMEOUT = 0.5  # every fault "slow" answer takes longer than this
RASA_TRAIN_TIMEOUT = 3.0  # the synchronous Rasa training must fit in it; its slow fault does not
MAX_WAIT = 3.0  # how long a test waits for a job (the "never finishes" fault hits it)


def fast_sleep(seconds: float) -> None:
    """Real but short waits: the emulators' jobs need wall time to progress; backoff need not be long."""
    time.sleep(min(seconds, 0.02))


@dataclass
class Rig:
    kind: str
    emulator: Emulator
    served: ServedApp
    backend: TrainingBackend
    secret: str
    slept: list[float] = field(default_factory=list)
    max_wait: float = MAX_WAIT

    @property
    def jobs_started(self) -> int:
        return self.emulator.jobs_started

    def train(self, data: Dataset, key: str, dest: Path) -> ModelRef:
        job = self.backend.submit(data, TrainingConfig(epochs=10), idempotency_key=key)
        wait_for_job(
            lambda: self.backend.status(job),
            max_wait=self.max_wait,
            what=f"job {job.job_id}",
            sleep=self.sleep,
        )
        return self.backend.fetch(job, dest)

    def cycle(self, data: Dataset, key: str, dest: Path, texts: list[str]) -> tuple[ModelRef, list[Parse]]:
        """Train, poll, fetch, predict and activate: what the retrain flow does with a backend."""
        model = self.train(data, key, dest)
        parses = self.backend.predict(model, texts)
        self.backend.activate(model)
        return model, parses

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        fast_sleep(seconds)

    def served_model(self) -> str | None:
        """What the platform serves now, in the terms of each platform."""
        em = self.emulator
        if isinstance(em, RasaEmulator):
            return em.loaded[0] if em.loaded else None
        if isinstance(em, CognigyEmulator):
            return em.served_snapshot_name()
        if isinstance(em, NeuralSpaceEmulator):
            return em.last_deployed()
        assert isinstance(em, TrainingServiceEmulator)
        return em.deployed()


def make_emulator(kind: str, settings: EmulatorSettings, model_kw: dict[str, Any], workdir: Path) -> Emulator:
    common: dict[str, Any] = {"settings": settings, "workdir": workdir, **model_kw}
    if kind == "service":
        return TrainingServiceEmulator(client_secret=SECRETS[kind], **common)
    if kind == "rasa":
        return RasaEmulator(token=SECRETS[kind], **common)
    if kind == "cognigy":
        return CognigyEmulator(api_key=SECRETS[kind], **common)
    if kind == "cognigy-oauth2":
        return CognigyEmulator(api_key=None, client_id="nluflow", client_secret=SECRETS[kind], **common)
    if kind == "neuralspace":
        return NeuralSpaceEmulator(token=SECRETS[kind], **common)
    raise ValueError(kind)


# Keyword arguments of make_backend that go into the HTTP options, not the backend's settings.
HTTP_KW = ("timeout", "transport", "sleep", "clock", "wall_clock", "rng", "max_retries")


def make_backend(
    kind: str, em: Emulator, url: str, rig_sleep: Any, workdir: Path, **kw: Any
) -> TrainingBackend:
    """A client of ``em`` with short timeouts; ``kw`` may set HTTP options (``HTTP_KW``) or settings of the
    backend (Rasa: train_timeout, idle_wait, server_models_folder; Cognigy: train_wait)."""
    http_kw = {"timeout": default_timeout(read=READ_TIMEOUT), "sleep": rig_sleep}
    http_kw.update({k: kw.pop(k) for k in HTTP_KW if k in kw})
    http = HttpOptions(**http_kw)
    if kind == "service":
        return TrainingServiceBackend(url, "nluflow", SECRETS[kind], http=http, **kw)
    if kind == "rasa":
        # The server's models folder as mounted here (a shared volume): where a lost train answer's archive
        # is found. Tests of the client without it pass server_models_folder=None.
        folder = str(em.models_folder) if isinstance(em, RasaEmulator) else None
        settings = RasaSettings(
            **{
                "train_timeout": RASA_TRAIN_TIMEOUT,
                "idle_wait": MAX_WAIT,
                "server_models_folder": folder,
                **kw,
            }
        )
        return RasaBackend(url, token=SECRETS[kind], settings=settings, workdir=workdir, http=http)
    if kind in ("cognigy", "cognigy-oauth2"):
        assert isinstance(em, CognigyEmulator)
        auth: dict[str, Any] = (
            {"api_key": SECRETS[kind]}
            if kind == "cognigy"
            else {"client_id": "nluflow", "client_secret": SECRETS[kind]}
        )
        settings_c = CognigySettings(
            project_id=em.project_id,
            flow_id=em.flow_id,
            endpoint_id=em.endpoint_id,
            **{"train_wait": MAX_WAIT, **kw},
        )
        return CognigyBackend(url, settings_c, http=http, **auth)
    if kind == "neuralspace":
        return NeuralSpaceBackend(SECRETS[kind], "project-1", url=url + PREFIX, http=http, **kw)
    raise ValueError(kind)


@contextmanager
def rig(
    kind: str,
    tmp_path: Path,
    model_kw: dict[str, Any],
    settings: EmulatorSettings | None = None,
    preload: Dataset | None = None,
    **client_kw: Any,
) -> Iterator[Rig]:
    """A served emulator and a client of it; the server stops when the block ends."""
    settings = settings or EmulatorSettings(retry_after_seconds=1, slow_seconds=1.0, job_min_seconds=0.05)
    if kind == "rasa":
        # The slow fault must outlast the long read timeout of a synchronous training too.
        settings.slow_seconds = max(settings.slow_seconds, RASA_TRAIN_TIMEOUT + 0.5)
    em = make_emulator(kind, settings, model_kw, tmp_path / f"{kind}-server")
    if isinstance(em, RasaEmulator) and preload is not None:
        em.preload(preload)  # a server that already serves a bot, as in production
    served = em.serve().start()
    try:
        holder: list[Rig] = []
        backend = make_backend(
            kind, em, served.url, lambda s: holder[0].sleep(s), tmp_path / f"{kind}-client", **client_kw
        )
        holder.append(Rig(kind, em, served, backend, SECRETS[kind]))
        yield holder[0]
    finally:
        served.stop()
