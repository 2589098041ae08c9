"""Rasa Open Source over its HTTP API (``rasa run --enable-api``), Rasa 3.x shapes.

- train: ``POST /model/train`` with one YAML document (config + NLU data); the answer is the model archive,
  its name in the ``filename`` header. Training is synchronous, so the read timeout is long
  (``TRAIN_READ_TIMEOUT``) and ``submit`` returns a job that has already succeeded.
- Rasa has no idempotency key, and Rasa 3.x trains again on every request (no "Nothing changed" reply as
  in 2.x; the HTTP API takes no ``fixed_model_name``). So a train request is sent once and never resent
  after its answer may have been lost. Each training's config carries ``assistant_id`` =
  ``archive_tag(project, key)``, which Rasa writes into the archive's ``metadata.json``; after a lost answer
  the client waits for the server's training to end and takes that archive from the server's models folder
  (``server_models_folder``, a shared volume). A marker in ``workdir`` makes a retry of the step (a Prefect
  task retry, a fresh client) do the same before it trains. Without the models folder a lost answer is a
  ``TrainingOutcomeUnknownError`` (not retried: a retry would train a second time).
- one model served: Rasa serves one model, so a server whose served archive was trained for another project
  (its ``assistant_id``) is refused for training, evaluation, activation and rollback
  (``ServedModelMismatchError``): one server per project.
- predict: with ``evaluation_url`` (a second Rasa server used for evaluation) the model is loaded there and
  each text is parsed with ``POST /model/parse`` (intents, ranking and entities). Without it,
  ``POST /model/test/intents?model=<path>`` evaluates the model without replacing the served one: the frozen
  test set is sent with its true intents and entities (``predict_labelled``; Rasa 3.x evaluates intents only
  with ≥ 2 distinct intents and de-duplicates identical examples), predictions are matched back by text (the
  top intent and its confidence), and entity predictions are rebuilt from ``entity_evaluation``'s errors.
- activate: ``PUT /model {"model_file": path}`` (204), checked with ``GET /status``; rollback is the same
  call with the previous model's path. Rasa answers 400 when the archive is gone from its models folder and
  has no upload call: with ``server_models_folder`` (that folder as mounted here) the archive is copied back
  from nluflow's copy and loaded again; without it the error says which file to copy where.
- auth: ``?token=`` or ``Authorization: Bearer <jwt>``. Errors have Rasa's body
  ``{"status": "failure", "reason", "message", "code"}``.

The package: ``documents`` (the training document, archive tags and metadata), ``server`` (settings,
sessions, ``GET /status``, one model per project), ``training`` (``POST /model/train`` and lost answers),
``evaluation`` (``/model/test/intents``), ``backend`` (``RasaBackend``: predict, activate, roll back).
"""

from nluflow.backends.rasa.backend import RasaBackend
from nluflow.backends.rasa.documents import archive_tag, tag_project, training_document
from nluflow.backends.rasa.evaluation import PADDING_INTENT, PLACEHOLDER_INTENT
from nluflow.backends.rasa.server import IDLE_WAIT, TRAIN_READ_TIMEOUT, RasaSettings

__all__ = [
    "IDLE_WAIT",
    "PADDING_INTENT",
    "PLACEHOLDER_INTENT",
    "TRAIN_READ_TIMEOUT",
    "RasaBackend",
    "RasaSettings",
    "archive_tag",
    "tag_project",
    "training_document",
]
