"""The ``span`` rule: entity offsets in range, start < end, ``text[start:end] == value``, no overlaps.

Problems are grouped by kind (one finding per kind and split). With severity ``warn`` the training
examples that have any are dropped from training (the caller reads the indices this rule returns).
"""

from __future__ import annotations

import itertools
from collections import defaultdict

from nluflow.data.schema import Example
from nluflow.data.validation.run import Group, Run, Split
from nluflow.data.validation.text import excerpt

KINDS = ("range", "empty", "mismatch", "overlap")
EXPECTED = {
    "range": "offsets within the text",
    "empty": "start < end",
    "mismatch": "text[start:end] == value",
    "overlap": "entity spans that do not overlap",
}


def span_problems(ex: Example) -> list[tuple[str, str]]:
    """(kind, detail) of each span problem of one example: per entity, then the first overlap of the
    entities that are otherwise fine."""
    text, n = ex.text, len(ex.text)
    problems: list[tuple[str, str]] = []
    good: list[tuple[int, int, str]] = []
    for ent in ex.entities:
        span = f"entity '{ent.entity}' span {ent.start}–{ent.end}"
        if ent.end > n or ent.start > n:
            problems.append(("range", f"{span} is outside the text (length {n})"))
        elif ent.start >= ent.end:
            problems.append(("empty", f"{span} is empty or reversed"))
        elif text[ent.start : ent.end] != ent.value:
            shown = excerpt(text[ent.start : ent.end])
            problems.append(("mismatch", f"{span} does not match text {shown} (value {excerpt(ent.value)})"))
        else:
            good.append((ent.start, ent.end, ent.entity))
    good.sort()
    for (s1, e1, t1), (s2, e2, t2) in itertools.pairwise(good):
        if s2 < e1:
            problems.append(("overlap", f"entities '{t1}' {s1}–{e1} and '{t2}' {s2}–{e2} overlap"))
            break
    return problems


def check_spans(run: Run, split: Split) -> set[int]:
    """Report span problems by kind; return the indices of examples that have any."""
    kinds: dict[str, Group] = defaultdict(Group)
    bad: set[int] = set()
    for i, ex in enumerate(split.examples):
        problems = span_problems(ex) if ex.entities else []
        if problems:
            bad.add(i)
        for kind, detail in problems:
            kinds[kind].add(split.where[i], detail)
    for kind in KINDS:
        group = kinds.get(kind)
        if group is not None:
            _report(run, split, kind, group)
    return bad


def _report(run: Run, split: Split, kind: str, group: Group) -> None:
    """One finding for one kind of span problem in one split."""
    warn_next = (
        "examples skipped from training"
        if split.name == "training"
        else "test examples kept; their entity scores may be off"
    )
    if split.name == "test":
        group.detail = "test example: " + group.detail
    run.add_group(
        "span",
        group,
        EXPECTED[kind],
        run.next_step("span", warn_next if group.count > 1 else warn_next.replace("examples", "example")),
        more=("span like it", "spans like it"),
    )
