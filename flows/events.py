"""Event-triggered retrains: the ``nlu.dataset.annotated`` event, its deployment trigger, and the relay.

How an annotation becomes a retrain::

    Label Studio / script ─► relay (nluflow.apps.relay) ─► POST /api/events ─┐
    nluflow notify-annotated ──────────────────────► POST /api/events ─┼─► trigger ─► retrain(params) run
    a flow: emit_annotated() ─────────────────────► emit_event() ──────┘   (one per project per window)

Debounce (what really works in Prefect 3.8.8, proven in ``tests/events``):

* **Bursts** — the trigger is Reactive with ``threshold=1``, ``within=W`` and ``for_each`` on the project
  resource. The server fires on the first event of a project, then opens the project's next bucket only at
  ``first + W``: every later event inside the window is dropped (``evaluate`` case 1 in
  ``prefect/server/events/triggers.py``). N events within W start exactly one run; an event after W
  starts the next one. Projects never share a window.
* **Late data of the burst** — the run is scheduled ``schedule_after=W`` after the first event, so it loads
  the data once the window has closed and sees every annotation of the burst.
* **A run in progress** — the deployment has ``concurrency_limit: 1`` with ``collision_strategy: ENQUEUE``:
  a run triggered while another is Pending/Running waits in ``AwaitingConcurrencySlot`` until it ends, so
  runs never overlap (they are not cancelled: the queued run holds the annotations the first one missed).
  The limit is per deployment, so with the wildcard trigger all projects share it; deploy one trigger per
  project (``project=...``) to serialise per project only.

Parameters are templated from the event: ``params.project`` from ``event.payload.project`` and
``params.data`` from ``event.payload.data``; the other ``RetrainParams`` fields come from ``base_params``.
``params.data`` is written ``"{{ [event.payload.data] }}"`` on purpose: ``prefect deploy`` (3.8.8) drops
list items that hold an unresolved placeholder, so ``["{{ event.payload.data }}"]`` would deploy as ``[]``.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import uuid
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger, emit_event
from prefect.events.schemas.events import Event
from prefect.settings import get_current_settings
from pydantic import SecretStr

from nluflow.apps.relay import (
    EVENT_NAME,
    RESOURCE_PREFIX,
    Emitter,
    PrefectApiEmitter,
    QueryRedactor,
    RelayConfig,
    annotated_event,
    create_app,
    resource_id,
)
from nluflow.errors import BackendError, ConfigError
from nluflow.sources.base import is_source_ref
from nluflow.store import ID_PATTERN

if TYPE_CHECKING:
    from starlette.applications import Starlette

logger = logging.getLogger("nluflow.events")

DEPLOYMENT_NAME = "retrain-on-annotation"
ANNOTATION_WINDOW_SECONDS = 60.0
DEFAULT_RELAY_HOST = "127.0.0.1"
DEFAULT_RELAY_PORT = 8787
DEFAULT_WORK_POOL = "nluflow-local"
# Fields the trigger fills from the event; base_params must not set them.
_TEMPLATED = {
    "project": "{{ event.payload.project }}",
    # A one-item list built by Jinja; see the module docstring for why it is not ["{{ ... }}"].
    "data": "{{ [event.payload.data] }}",
}


def _check_project(project: str) -> None:
    if not re.match(ID_PATTERN, project):
        raise ConfigError(
            f"project {project!r}: expected letters, digits, '.', '_' or '-' (at most 128, starting with a "
            "letter or digit); nothing emitted"
        )


# ------------------------------------------------------------------------------------------------ trigger


def annotation_trigger_spec(
    project: str | None = None,
    *,
    within_seconds: float = ANNOTATION_WINDOW_SECONDS,
    schedule_after_seconds: float | None = None,
    base_params: Mapping[str, Any] | None = None,
    name: str | None = None,
    enabled: bool = True,
) -> dict[str, Any]:
    """The trigger as plain data: the ``triggers:`` entry of ``prefect.yaml``, and the model's input.

    ``project=None`` matches every ``nluflow.dataset.*`` resource, one window per project (``for_each``).
    ``schedule_after_seconds`` defaults to the window, so the run reads the data after the burst.
    """
    if project is not None:
        _check_project(project)
    if within_seconds <= 0:
        raise ConfigError(f"within_seconds={within_seconds}: expected a window > 0 s (0 disables debounce)")
    after = within_seconds if schedule_after_seconds is None else schedule_after_seconds
    if after < 0:
        raise ConfigError(f"schedule_after_seconds={after}: expected >= 0")
    base = dict(base_params or {})
    clash = sorted(set(base) & set(_TEMPLATED))
    if clash:
        raise ConfigError(f"base_params sets {clash}: these come from the event payload; remove them")
    target = resource_id(project) if project else f"{RESOURCE_PREFIX}*"
    return {
        "type": "event",
        "name": name or f"retrain on annotation ({project or 'every project'})",
        "description": (
            f"Retrain when {EVENT_NAME} arrives for {target}: the first event of a {_num(within_seconds)} s "
            "window starts one run, later events in the window are absorbed."
        ),
        "enabled": enabled,
        "match": {"prefect.resource.id": target},
        "expect": [EVENT_NAME],
        "for_each": ["prefect.resource.id"],
        "posture": "Reactive",
        "threshold": 1,
        "within": _num(within_seconds),
        "schedule_after": _num(after),
        "parameters": {"params": {**base, **_TEMPLATED}},
    }


def _num(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def annotation_trigger(
    project: str | None = None,
    *,
    within_seconds: float = ANNOTATION_WINDOW_SECONDS,
    schedule_after_seconds: float | None = None,
    base_params: Mapping[str, Any] | None = None,
    name: str | None = None,
    enabled: bool = True,
) -> DeploymentEventTrigger:
    """The "retrain on annotation" deployment trigger (see the module docstring for its debounce)."""
    spec = annotation_trigger_spec(
        project,
        within_seconds=within_seconds,
        schedule_after_seconds=schedule_after_seconds,
        base_params=base_params,
        name=name,
        enabled=enabled,
    )
    return DeploymentEventTrigger.model_validate(
        {
            **spec,
            "within": timedelta(seconds=spec["within"]),
            "schedule_after": timedelta(seconds=spec["schedule_after"]),
        }
    )


def _check_base_params(base_params: Mapping[str, Any] | None) -> None:
    """Fail at deploy time, not at the first annotation, when base_params do not fit RetrainParams."""
    from pydantic import ValidationError

    from flows.retrain import RetrainParams

    try:
        RetrainParams.model_validate({**(base_params or {}), "project": "check", "data": ["check"]})
    except ValidationError as exc:
        raise ConfigError(f"base_params do not fit RetrainParams: {exc}") from None


def annotation_deployment(
    name: str = DEPLOYMENT_NAME,
    *,
    project: str | None = None,
    within_seconds: float = ANNOTATION_WINDOW_SECONDS,
    schedule_after_seconds: float | None = None,
    base_params: Mapping[str, Any] | None = None,
    concurrency_limit: int | None = 1,
    **to_deployment_kwargs: Any,
) -> RunnerDeployment:
    """The retrain deployment (as ``retrain.to_deployment``) with the trigger and a one-run-at-a-time limit.

    Apply it with ``.apply()`` (no worker needed to schedule runs), or serve it with ``prefect.serve``.
    """
    from flows.retrain import retrain

    _check_base_params(base_params)
    trigger = annotation_trigger(
        project,
        within_seconds=within_seconds,
        schedule_after_seconds=schedule_after_seconds,
        base_params=base_params,
    )
    limit = (
        ConcurrencyLimitConfig(limit=concurrency_limit, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
        if concurrency_limit
        else None
    )
    # What retrain.to_deployment() builds, without its sync/async dispatch (a plain object everywhere).
    return RunnerDeployment.from_flow(
        retrain,
        name=name,
        triggers=[trigger],
        concurrency_limit=limit,
        description="Retrain when new annotations arrive (nlu.dataset.annotated), debounced per project.",
        **to_deployment_kwargs,
    )


def annotation_deployment_spec(
    name: str = DEPLOYMENT_NAME,
    *,
    work_pool: str = DEFAULT_WORK_POOL,
    project: str | None = None,
    within_seconds: float = ANNOTATION_WINDOW_SECONDS,
    schedule_after_seconds: float | None = None,
    base_params: Mapping[str, Any] | None = None,
    concurrency_limit: int = 1,
) -> dict[str, Any]:
    """The ``deployments:`` entry of ``prefect.yaml`` for the same deployment (read by ``prefect deploy``)."""
    return {
        "name": name,
        "description": "Retrain when new annotations arrive (nlu.dataset.annotated), debounced per project.",
        "entrypoint": "flows/retrain.py:retrain",
        "work_pool": {"name": work_pool, "work_queue_name": "default"},
        "concurrency_limit": {"limit": concurrency_limit, "collision_strategy": "ENQUEUE"},
        "triggers": [
            annotation_trigger_spec(
                project,
                within_seconds=within_seconds,
                schedule_after_seconds=schedule_after_seconds,
                base_params=base_params,
            )
        ],
    }


def annotation_deployment_yaml(**kwargs: Any) -> str:
    """:func:`annotation_deployment_spec` as YAML, indented to sit under ``deployments:``."""
    text = yaml.safe_dump(
        [annotation_deployment_spec(**kwargs)], sort_keys=False, allow_unicode=True, width=4096
    )
    return "".join("  " + line if line.strip() else line for line in text.splitlines(keepends=True))


# ------------------------------------------------------------------------------------------------ emitting


def emit_annotated(project: str, data: str, new_examples: int = 0) -> Event | None:
    """Emit ``nlu.dataset.annotated`` through Prefect's events client (from a flow, or with an API set).

    Returns the event, or None when this process emits no events (no API configured); delivery is
    asynchronous (Prefect's events worker).
    """
    _check_project(project)
    if new_examples < 0:
        raise ConfigError(f"new_examples={new_examples}: expected a count >= 0; nothing emitted")
    event = annotated_event(project, data, new_examples)
    return emit_event(
        event=event["event"], resource=event["resource"], payload=event["payload"], id=uuid.UUID(event["id"])
    )


def _secret(value: SecretStr | str | None) -> str | None:
    if isinstance(value, SecretStr):
        return value.get_secret_value() or None
    return value or None


def prefect_api_emitter(
    api_url: str | None = None,
    api_key: str | None = None,
    *,
    transport: httpx.BaseTransport | None = None,
) -> PrefectApiEmitter:
    """A :class:`PrefectApiEmitter` for the configured Prefect API (``PREFECT_API_URL`` and its auth)."""
    settings = get_current_settings()
    url = api_url or settings.api.url
    if not url:
        raise ConfigError(
            "PREFECT_API_URL is not set: expected the API of a running Prefect server (e.g. `prefect server "
            "start`, then `export PREFECT_API_URL=http://127.0.0.1:4200/api`), where the deployment trigger "
            "lives; nothing emitted"
        )
    return PrefectApiEmitter(
        url,
        api_key or _secret(settings.api.key),
        transport,
        auth_string=_secret(settings.api.auth_string),
    )


def notify_annotated(
    project: str,
    data: str | Path,
    new_examples: int = 0,
    *,
    api_url: str | None = None,
    api_key: str | None = None,
    transport: httpx.BaseTransport | None = None,
) -> dict[str, Any]:
    """Emit ``nlu.dataset.annotated`` now and synchronously (for scripts and CI); returns the event.

    Posts to ``POST /api/events`` so a failure is an error here, not a silent drop. ``data`` may be a source
    block reference (``nluflow-label-studio-source/<name>``, sent as given). A local ``data`` path
    that exists is made absolute (the worker may run elsewhere in the tree); one that does not exist here
    is sent as given, with a warning (it may exist where the worker runs).
    """
    _check_project(project)
    if new_examples < 0:
        raise ConfigError(f"new_examples={new_examples}: expected a count >= 0; nothing emitted")
    location = str(data)
    local = Path(location).expanduser()
    if is_source_ref(location):
        pass  # a source block: the retrain pulls it where it runs
    elif local.exists():
        location = str(local.resolve())
    else:
        logger.warning(
            "data %s does not exist here; sent as given (it must exist where the retrain runs)", data
        )
    emitter = prefect_api_emitter(api_url, api_key, transport=transport)
    event = annotated_event(project, location, new_examples)
    try:
        emitter(event)
    except httpx.HTTPError as exc:
        raise BackendError(
            f"{emitter.url}: could not emit {EVENT_NAME} for project {project!r} "
            f"({type(exc).__name__}: {exc}); is the Prefect server running? Nothing was emitted"
        ) from None
    logger.info("emitted %s %s for project %r (data %s)", EVENT_NAME, event["id"], project, location)
    return event


# ------------------------------------------------------------------------------------------------ relay


def build_relay(
    config: str | Path | RelayConfig,
    *,
    emitter: Emitter | None = None,
    api_url: str | None = None,
    api_key: str | None = None,
) -> Starlette:
    """The relay ASGI app from a config file (secret from the environment) or a config object."""
    relay_config = config if isinstance(config, RelayConfig) else RelayConfig.from_file(config)
    return create_app(relay_config, emitter if emitter is not None else prefect_api_emitter(api_url, api_key))


def serve_relay(
    host: str = DEFAULT_RELAY_HOST,
    port: int = DEFAULT_RELAY_PORT,
    config: str | Path | RelayConfig = "relay.yml",
    *,
    emitter: Emitter | None = None,
    api_url: str | None = None,
    api_key: str | None = None,
    log_level: str = "info",
) -> None:
    """Run the relay with uvicorn until interrupted (``nluflow relay``)."""
    import uvicorn

    from nluflow.apps.server_limits import uvicorn_config

    app = build_relay(config, emitter=emitter, api_url=api_url, api_key=api_key)
    relay_logging()
    local = {"send_to_api": False}  # no flow run here: Prefect's API log handler must skip these lines
    if not _is_loopback(host):
        logger.warning(
            "relay listening on %s speaks plain HTTP: put it behind a TLS proxy, the shared secret "
            "travels in a header",
            host,
            extra=local,
        )
    logger.info("relay on http://%s:%d/hooks/label-studio and /hooks/generic", host, port, extra=local)
    # Slow and idle clients are timed out, open connections capped (nluflow.apps.server_limits).
    server = uvicorn.Server(uvicorn_config(app, host=host, port=port, log_level=log_level))
    # After Config (which configures uvicorn's loggers): a query string never reaches the access log.
    logging.getLogger("uvicorn.access").addFilter(QueryRedactor())
    server.run()


def relay_logging() -> None:
    """Show the relay's INFO lines (one per emitted event) on the terminal.

    With ``PREFECT_LOGGING_EXTRA_LOGGERS=nluflow`` the ``nluflow`` logger already has Prefect's console
    handler, but inherits the root's WARNING level; without it, nothing would print at all.
    """
    log = logging.getLogger("nluflow")
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
