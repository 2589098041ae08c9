"""The domain library never imports Prefect: flows wire, tasks wrap, blocks build clients."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nluflow

PACKAGE = Path(nluflow.__file__).resolve().parent


def test_importing_every_nluflow_module_does_not_import_prefect() -> None:
    modules = sorted(
        "nluflow." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
        for p in PACKAGE.rglob("*.py")
    )
    modules = [m.removesuffix(".") for m in modules]
    assert len(modules) > 10, modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "leaked = sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.'))\n"
        "print(len(leaked))\n"
        "sys.exit(1 if leaked else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"prefect was imported by the domain library:\n{proc.stdout}{proc.stderr}"


def test_the_guard_would_catch_a_prefect_import() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, prefect; sys.exit(1 if 'prefect' in sys.modules else 0)"],
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == 1
