"""What the rules share while they run: the split being checked, grouped occurrences, the findings so far."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from nluflow.data.schema import Dataset, Example
from nluflow.data.validation.policy import MAX_LOCATIONS, STOPS, Finding, Severity, ValidationPolicy
from nluflow.data.validation.text import normalize_text


@dataclass
class Group:
    """Occurrences of one kind of problem: the first one's detail, a count, the first locations."""

    detail: str = ""
    count: int = 0
    locations: list[str] = field(default_factory=list)

    def add(self, location: str, detail: str = "") -> None:
        if not self.count:
            self.detail = detail
        self.count += 1
        if len(self.locations) < MAX_LOCATIONS:
            self.locations.append(location)


@dataclass
class Split:
    """A dataset being validated, with what several rules share (locations, normalised texts)."""

    data: Dataset
    name: str  # "training" or "test"
    where: list[str] = field(init=False)
    norm: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.where = [
            e.where() if e.origin is not None else f"{self.data.source}[{i}]"
            for i, e in enumerate(self.data.examples)
        ]
        self.norm = [normalize_text(e.text) for e in self.data.examples]

    @property
    def examples(self) -> tuple[Example, ...]:
        return self.data.examples


class Run:
    def __init__(self, policy: ValidationPolicy) -> None:
        self.policy = policy
        self.findings: list[Finding] = []

    def on(self, rule: str) -> bool:
        return self.policy.severity_of(rule) is not Severity.OFF

    def next_step(self, rule: str, when_warn: str) -> str:
        return STOPS if self.policy.severity_of(rule) is Severity.BLOCK else when_warn

    def add(self, rule: str, message: str, count: int, locations: Iterable[str]) -> None:
        self.findings.append(
            Finding(
                rule=rule,
                severity=self.policy.severity_of(rule),
                message=message,
                count=count,
                locations=list(locations)[:MAX_LOCATIONS],
            )
        )

    def add_group(
        self, rule: str, group: Group, expected: str, next_step: str, more: tuple[str, str]
    ) -> None:
        """A grouped finding: first location and detail, '(and N more ...)', what was expected, what next."""
        if not group.count:
            return
        rest = group.count - 1
        extra = f" (and {rest} more {more[0] if rest == 1 else more[1]})" if rest else ""
        message = f"{group.locations[0]}: {group.detail}{extra}; expected {expected}; {next_step}"
        self.add(rule, message, group.count, group.locations)
