"""The demo behind ``make run``: a bot's annotators send three batches; each one triggers a retrain."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.rule import Rule

DEMO_PROJECT = "snips-demo"
DEMO_DATA = Path(__file__).resolve().parents[1] / "examples" / "snips-demo"

STEPS: list[tuple[str, list[str]]] = [
    ("Run 1: the first batch (20 utterances per intent) — no active model yet", ["batch-1.jsonl"]),
    ("Run 2: a larger, clean batch arrives (+100 per intent)", ["batch-1.jsonl", "batch-2.jsonl"]),
    (
        "Run 3: a batch with a labelling mistake arrives (movie times filed as creative-work searches)",
        ["batch-1.jsonl", "batch-2.jsonl", "batch-3-mislabelled.jsonl"],
    ),
]


def run_demo(home: Path, print_summary: Callable[[Any], None], console: Console) -> list[Any]:
    """Run the three retrains in one process (one Prefect server start) and return their results."""
    from flows.retrain import RetrainParams, retrain

    store = home / "store"
    # The demo tells its story from an empty project each time; other projects in the store are left alone.
    shutil.rmtree(store / DEMO_PROJECT, ignore_errors=True)
    results = []
    for title, files in STEPS:
        console.print(Rule(title))
        params = RetrainParams(
            project=DEMO_PROJECT,
            data=[str(DEMO_DATA / f) for f in files],
            test=[str(DEMO_DATA / "test.jsonl")],
            must_pass=str(DEMO_DATA / "must-pass.jsonl"),
            store=str(store),
            workspace=str(home / "work"),
        )
        result = retrain(params)
        print_summary(result)
        results.append(result)
    console.print(Rule("What happened"))
    for (title, _), result in zip(STEPS, results, strict=True):
        console.print(f"- {title.split(':')[0]}: {result.message}", highlight=False, markup=False)
    console.print(
        f"\nActive model: {results[-1].active}. Check it: `nluflow models show --project {DEMO_PROJECT} "
        f"--store {store}` and `nluflow audit verify --project {DEMO_PROJECT} --store {store}`."
    )
    return results
