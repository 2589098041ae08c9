"""Pull the data sources named in ``RetrainParams.data`` (Label Studio projects, folders, S3 prefixes).

``pull-sources`` runs before ``load-dataset`` and is never cached: it exports every source now, into
content-addressed files in the workspace, and hands their paths on. ``load-dataset`` is then cached on those
files' content, as for plain paths, so an unchanged export hits the cache and a changed one retrains (a cache
key on the *reference* would serve an updated export from the cache).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun

from nluflow.errors import ConfigError, TransientSourceError
from nluflow.sources.base import PulledData, SourceProvenance, is_source_ref, split_data
from tasks.common import load_block

# Retry delays (seconds) for a source that failed transiently (after the HTTP layer's own retries).
SOURCE_RETRY_DELAYS: list[float] = [5.0, 20.0, 60.0]


def _transient(task: Any, task_run: TaskRun, state: State[Any]) -> bool:
    """Retry sources that were unreachable or answered 5xx/429; fail fast on refusals and bad data."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:
        return False
    return isinstance(exc, TransientSourceError)


def pull_one(reference: str, workspace_path: str) -> PulledData:
    """Load the source block named by ``reference`` and pull it into ``<workspace>/sources``."""
    block = load_block(reference, "data source")
    if not hasattr(block, "get_source"):
        raise ConfigError(
            f"data source {reference!r} is a {type(block).__name__}, not a data source block; expected "
            "a 'nluflow-label-studio-source/<name>' or 'nluflow-folder-source/<name>' block; nothing was "
            "trained"
        )
    source = block.get_source(reference=reference)
    return source.pull(Path(workspace_path) / "sources")  # type: ignore[no-any-return]


@task(
    name="pull-sources",
    cache_policy=NO_CACHE,
    retries=len(SOURCE_RETRY_DELAYS),
    retry_delay_seconds=SOURCE_RETRY_DELAYS,
    retry_condition_fn=_transient,
)
def pull_sources(data: list[str], workspace_path: str) -> tuple[list[str], list[SourceProvenance]]:
    """Replace every source reference in ``data`` by the local files it pulled now; paths pass through.

    Returns the paths for ``load-dataset`` (in the given order) and one provenance record per source.
    """
    paths: list[str] = []
    provenance: list[SourceProvenance] = []
    for item in data:
        if not is_source_ref(item):
            paths.append(item)
            continue
        pulled = pull_one(item, workspace_path)
        paths.extend(pulled.paths)
        provenance.append(pulled.provenance)
    return paths, provenance


def resolve_data(data: list[str], workspace_path: str) -> tuple[list[str], list[SourceProvenance]]:
    """``data`` as paths: unchanged (and no extra task run) when it names no source, else ``pull-sources``."""
    _paths, refs = split_data(data)
    if not refs:
        return list(data), []
    return pull_sources(data, workspace_path)


def data_label(data: list[str], provenance: list[SourceProvenance]) -> str | None:
    """How messages name pulled data: the ``data`` items as the user wrote them (references, not workspace
    paths); None when nothing was pulled (the paths name themselves)."""
    return ", ".join(data) if provenance else None


def provenance_info(provenance: list[SourceProvenance], brief: bool = False) -> dict[str, Any]:
    """What the sources were, for the audit line and the result (``data_sources``: one record each), or
    ``brief``: one line per source for the report's Data section (``data_source``). Empty without sources."""
    if not provenance:
        return {}
    if brief:
        return {"data_source": " | ".join(p.summary() for p in provenance)}
    return {"data_sources": [p.model_dump(mode="json") for p in provenance]}
