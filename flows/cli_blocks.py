"""``nluflow blocks``: register nluflow's block types and create block documents from environment variables.

``flows/cli.py`` mounts ``blocks_app`` as ``nluflow blocks``; ``python -m flows.cli_blocks`` runs it alone.
Exit codes as for every nluflow command: 0 done, 2 bad input (``blocks.yaml`` or the environment), 1 other
failures (the Prefect API).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from nluflow.errors import NluflowError

blocks_app = typer.Typer(
    help="Register nluflow's block types and create block documents from environment variables.",
    no_args_is_help=True,
    add_completion=False,
)

console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def _fail(exc: NluflowError) -> typer.Exit:
    """A known error becomes one clear paragraph and its exit code, never a traceback."""
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    return typer.Exit(exc.exit_code)


@blocks_app.command("create")
def create(
    file: Annotated[
        Path, typer.Option("--file", "-f", help="The blocks file: which documents, from which variables.")
    ] = Path("blocks.yaml"),
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace documents that exist (default: keep them).")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and report; save nothing.")] = False,
) -> None:
    """Create the block documents of blocks.yaml from environment variables (no secret is ever in a file)."""
    from blocks.provision import create_blocks

    try:
        report = create_blocks(file, overwrite=overwrite, dry_run=dry_run)
    except NluflowError as exc:
        raise _fail(exc) from None
    for line in report.lines():
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    console.print(report.summary(), highlight=False, markup=False, soft_wrap=True)


@blocks_app.command("register")
def register() -> None:
    """Register nluflow's block types (and the prefect-aws ones the S3 store nests) with the Prefect API."""
    import blocks
    from blocks.blocks_file import block_class

    classes = [getattr(blocks, name) for name in blocks.__all__]
    classes += [block_class(slug) for slug in ("s3-bucket", "aws-credentials", "minio-credentials")]
    slugs = [cls.get_block_type_slug() for cls in classes]
    for cls, slug in zip(classes, slugs, strict=True):
        try:
            cls.register_type_and_schema()
        except Exception as exc:  # the API is unreachable or refused it: one paragraph, exit 1
            raise _fail(
                NluflowError(f"registering block type {slug} failed ({type(exc).__name__}: {exc})")
            ) from None
    console.print(f"registered {len(slugs)} block types: {', '.join(slugs)}", highlight=False)


if __name__ == "__main__":
    blocks_app()
