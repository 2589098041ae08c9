"""Local emulators of the remote training platforms, with fault injection (see ``_base`` for the faults).

Each emulator is a small ASGI app that follows its platform's real API shape (paths, status codes, bodies)
and trains the local NLU model behind it, so its predictions are real. Serve one with ``emulator.serve()``
(uvicorn on 127.0.0.1, a free port, in a thread) or ``serve(emulator.app)``; from a shell:
``python -m nluflow.testing.emulators rasa --port 5005``. ``LabelStudioEmulator`` emulates the
annotation tool's export and auth (a data source, not a training platform).
"""

from nluflow.testing.emulators._base import Emulator, JobOutcome
from nluflow.testing.emulators._middleware import EmulatorSettings, Fault, FaultPlan, RecordedRequest
from nluflow.testing.emulators._serving import ServedApp, serve
from nluflow.testing.emulators.cognigy import CognigyEmulator
from nluflow.testing.emulators.labelstudio import LabelStudioEmulator
from nluflow.testing.emulators.neuralspace import NeuralSpaceEmulator
from nluflow.testing.emulators.rasa import RasaEmulator
from nluflow.testing.emulators.service import TrainingServiceEmulator

__all__ = [
    "CognigyEmulator",
    "Emulator",
    "EmulatorSettings",
    "Fault",
    "FaultPlan",
    "JobOutcome",
    "LabelStudioEmulator",
    "NeuralSpaceEmulator",
    "RasaEmulator",
    "RecordedRequest",
    "ServedApp",
    "TrainingServiceEmulator",
    "serve",
]
