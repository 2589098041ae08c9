"""Run one emulator by hand: ``python -m nluflow.testing.emulators rasa --port 5005``.

It prints its URL and the credentials a client needs, then serves until interrupted. Faults are injected from
Python (``emulator.faults.inject``), so this mode serves the happy path.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path

from nluflow.testing.emulators._base import Emulator
from nluflow.testing.emulators._serving import ServedApp
from nluflow.testing.emulators.cognigy import CognigyEmulator
from nluflow.testing.emulators.labelstudio import LabelStudioEmulator
from nluflow.testing.emulators.neuralspace import PREFIX, NeuralSpaceEmulator
from nluflow.testing.emulators.rasa import RasaEmulator
from nluflow.testing.emulators.service import TrainingServiceEmulator


def _describe(emulator: Emulator, url: str) -> str:
    if isinstance(emulator, RasaEmulator):
        return f"Rasa API at {url} (token {emulator.token!r})"
    if isinstance(emulator, CognigyEmulator):
        return (
            f"Cognigy.AI API at {url} (X-API-Key {emulator.api_key!r}); project_id={emulator.project_id} "
            f"flow_id={emulator.flow_id} endpoint_id={emulator.endpoint_id}"
        )
    if isinstance(emulator, LabelStudioEmulator):
        return (
            f"Label Studio API at {url} (legacy token {emulator.legacy_token!r}, personal access token "
            f"{emulator.personal_access_token!r}); project 1 holds {len(emulator.projects[1])} tasks"
        )
    if isinstance(emulator, NeuralSpaceEmulator):
        return f"NeuralSpace NLU API at {url}{PREFIX} (Authorization {emulator.token!r})"
    assert isinstance(emulator, TrainingServiceEmulator)
    return f"training service at {url} (client {emulator.client_id!r} / {emulator.client_secret!r})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nluflow.testing.emulators", description=__doc__)
    parser.add_argument("platform", choices=["rasa", "cognigy", "neuralspace", "service", "label-studio"])
    parser.add_argument("--host", default="127.0.0.1", help="Interface to listen on (default 127.0.0.1).")
    parser.add_argument("--port", type=int, default=0, help="Port (default: a free one).")
    parser.add_argument(
        "--export",
        default=None,
        help="label-studio only: a JSON export to start project 1 with (tests/fixtures/label-studio/).",
    )
    args = parser.parse_args(argv)
    emulator: Emulator
    if args.platform == "rasa":
        emulator = RasaEmulator(token="rasa-token")
    elif args.platform == "cognigy":
        emulator = CognigyEmulator()
    elif args.platform == "label-studio":
        emulator = LabelStudioEmulator()
        if args.export:
            emulator.load_export(json.loads(Path(args.export).read_text(encoding="utf-8")))
    elif args.platform == "neuralspace":
        emulator = NeuralSpaceEmulator()
    else:
        emulator = TrainingServiceEmulator()
    served = ServedApp(emulator.app, args.host, args.port, on_stop=emulator.release_jobs).start()
    print(_describe(emulator, served.url), flush=True)  # a command-line entry point: print is its output
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    served.stop()


if __name__ == "__main__":
    main()
