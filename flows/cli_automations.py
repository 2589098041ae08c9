"""``nluflow automations apply``: create or update nluflow's Prefect automations (one command, idempotent).

The automations live as files under ``automations/`` in the format ``prefect automation create --from-file``
reads. The one shipped, ``detect-zombie-flows.yaml``, marks flow runs that stopped sending heartbeats as
Crashed: a retrain killed by SIGKILL or a lost machine would otherwise stay RUNNING forever.

``flows/cli.py`` mounts ``automations_app`` as ``nluflow automations``. Exit codes as for every nluflow
command: 0 done, 2 bad input (a file that is not an automation), 1 other failures (the Prefect API).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from nluflow.errors import DataError, NluflowError

AUTOMATIONS_DIR = Path(__file__).resolve().parents[1] / "automations"
ZOMBIE_AUTOMATION = AUTOMATIONS_DIR / "detect-zombie-flows.yaml"

automations_app = typer.Typer(
    help="Create or update nluflow's Prefect automations (e.g. crash runs that stopped sending heartbeats).",
    no_args_is_help=True,
    add_completion=False,
)

console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def load_automations(path: Path) -> list[Any]:
    """The automations a file defines (one mapping, a list, or ``{automations: [...]}``), validated by
    Prefect's own model; DataError naming the file otherwise."""
    import yaml
    from prefect.events.schemas.automations import AutomationCore
    from pydantic import ValidationError

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"cannot read the automation file: {exc.strerror}", path=path) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise DataError(f"not valid YAML: {exc}", path=path, line=mark.line + 1 if mark else None) from None
    items = data.get("automations") if isinstance(data, dict) and "automations" in data else data
    items = items if isinstance(items, list) else [items]
    automations = []
    for i, item in enumerate(items):
        try:
            automations.append(AutomationCore.model_validate(item))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'automation'}: {e['msg']}" for e in exc.errors()
            )
            raise DataError(
                f"automation {i + 1} is not a Prefect automation ({problems}); nothing was created", path=path
            ) from None
    return automations


def apply_automations(path: Path) -> list[tuple[str, str, str]]:
    """Create each automation of ``path``, or update the one of the same name: ``(name, id, created|updated)``
    for each. Running it again changes nothing but the definitions."""
    from prefect.client.orchestration import get_client

    done: list[tuple[str, str, str]] = []
    with get_client(sync_client=True) as client:
        for automation in load_automations(path):
            existing = client.read_automations_by_name(automation.name)
            if existing:
                client.update_automation(existing[0].id, automation)
                for extra in existing[1:]:  # copies made by `prefect automation create` before
                    client.delete_automation(extra.id)
                done.append((automation.name, str(existing[0].id), "updated"))
            else:
                done.append((automation.name, str(client.create_automation(automation)), "created"))
    return done


@automations_app.command("apply")
def apply(
    file: Annotated[
        Path,
        typer.Option("--file", "-f", help="Automation file (YAML, as `prefect automation create` reads)."),
    ] = ZOMBIE_AUTOMATION,
) -> None:
    """Create or update the automation(s) of FILE on the Prefect server (default: crash zombie flow runs)."""
    try:
        for name, automation_id, what in apply_automations(file):
            console.print(f"{what} automation {escape(name)} ({automation_id})", highlight=False)
    except NluflowError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except Exception as exc:  # the Prefect API: unreachable, or refused the definition
        err_console.print(
            f"[bold red]error:[/] could not apply {escape(str(file))} on the Prefect API: "
            f"{escape(type(exc).__name__)}: {escape(str(exc)[:300])}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1) from None


__all__ = ["ZOMBIE_AUTOMATION", "apply_automations", "automations_app", "load_automations"]
