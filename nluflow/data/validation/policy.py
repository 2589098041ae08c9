"""The validation policy (a severity per rule, thresholds), findings and the report."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nluflow.data.schema import MAX_TOKENS, SUPPORTED_LOCALES, Dataset
from nluflow.errors import ConfigError, DataError

MAX_LOCATIONS = 10
STOPS = "the retrain stops before training"


class Severity(StrEnum):
    """What a finding does: stop the retrain, be reported, or not be checked at all."""

    BLOCK = "block"
    WARN = "warn"
    OFF = "off"


RULES: tuple[str, ...] = (
    "min_intents",
    "min_examples_per_intent",
    "imbalance",
    "span",
    "token_limit",
    "duplicate",
    "normalized_duplicate",
    "conflict",
    "leakage",
    "annotation_score",
    "unknown_locale",
)

DEFAULT_SEVERITY: dict[str, Severity] = {
    "min_intents": Severity.BLOCK,
    "min_examples_per_intent": Severity.BLOCK,
    "imbalance": Severity.WARN,
    "span": Severity.BLOCK,
    "token_limit": Severity.BLOCK,
    "duplicate": Severity.WARN,
    "normalized_duplicate": Severity.WARN,
    "conflict": Severity.WARN,
    "leakage": Severity.WARN,
    "annotation_score": Severity.BLOCK,
    "unknown_locale": Severity.BLOCK,
}


class ValidationPolicy(BaseModel):
    """Thresholds and a severity per rule; unknown rule names are refused, missing ones take the defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_intents: int = Field(default=2, ge=1, description="Fewest distinct intents a training set may have.")
    min_examples_per_intent: int = Field(
        default=10, ge=1, description="Fewest usable training examples each intent needs."
    )
    max_imbalance_ratio: float = Field(
        default=5.0, ge=1.0, description="Largest allowed ratio of the biggest to the smallest intent."
    )
    max_tokens: int = Field(
        default=MAX_TOKENS, ge=1, description="Most word/punctuation tokens an example may have."
    )
    min_mean_score: float = Field(
        default=0.85, ge=0.0, le=1.0, description="Lowest allowed mean annotation score, where scores exist."
    )
    locales: tuple[str, ...] = Field(
        default=SUPPORTED_LOCALES, description="Locales an example may carry (examples without one pass)."
    )
    severity: dict[str, Severity] = Field(
        default_factory=lambda: dict(DEFAULT_SEVERITY),
        description="Severity per rule (block, warn or off); rules not named keep their default.",
    )

    @field_validator("severity")
    @classmethod
    def _known_rules(cls, value: dict[str, Severity]) -> dict[str, Severity]:
        unknown = sorted(set(value) - set(RULES))
        if unknown:
            raise ValueError(f"unknown rule(s) {', '.join(unknown)}; known rules: {', '.join(RULES)}")
        return {rule: value.get(rule, DEFAULT_SEVERITY[rule]) for rule in RULES}

    def severity_of(self, rule: str) -> Severity:
        return self.severity[rule]

    @classmethod
    def parse(cls, data: dict[str, Any]) -> ValidationPolicy:
        """Validate a user-supplied policy, raising ConfigError with every problem listed."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'policy'}: {err['msg']}" for err in exc.errors()
            )
            raise ConfigError(
                f"validation policy is invalid: {problems}; nothing was validated; fix the policy and rerun"
            ) from exc


class Finding(BaseModel):
    """One kind of problem, reported once with how often it occurs and where (first ten locations)."""

    model_config = ConfigDict(frozen=True)

    rule: str = Field(description="The rule's name, one of RULES.")
    severity: Severity = Field(description="block stops the retrain; warn is reported.")
    message: str = Field(description="path:line: what was found; expected ...; what happens next.")
    count: int = Field(ge=1, description="How many occurrences (examples, intents or texts).")
    locations: list[str] = Field(default_factory=list, description="'file:line' of the first occurrences.")


class ValidationReport(BaseModel):
    """Findings of one validation run, with the counts that describe the data.

    ``intent_counts`` and ``entity_counts`` describe the usable training set (train minus ``dropped``).
    """

    model_config = ConfigDict(frozen=True)

    findings: list[Finding] = Field(default_factory=list, description="Blocking findings first.")
    n_examples: int = Field(description="Training examples validated.")
    n_test_examples: int | None = Field(default=None, description="Test examples validated, if a test set.")
    intent_counts: dict[str, int] = Field(
        default_factory=dict, description="Usable training examples per intent."
    )
    entity_counts: dict[str, int] = Field(default_factory=dict, description="Usable training spans per type.")
    dropped: list[int] = Field(
        default_factory=list, description="Indices of training examples a 'warn' span problem drops."
    )
    loader_counts: dict[str, int] = Field(
        default_factory=dict,
        description=(
            "What the loader left out or noticed, by kind: e.g. Label Studio 'cancelled_annotations', "
            "'unannotated_tasks', 'annotation_disagreements' (tasks whose annotations disagree)."
        ),
    )

    @property
    def blocking(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.BLOCK]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.WARN]

    @property
    def ok(self) -> bool:
        return not self.blocking

    def usable(self, train: Dataset) -> Dataset:
        """The training set minus the examples this report dropped."""
        if len(train) != self.n_examples:
            raise ConfigError(
                f"this report was made for {self.n_examples} training examples, got {len(train)}; expected "
                "the dataset that was validated; nothing was dropped; validate this dataset first"
            )
        if not self.dropped:
            return train
        drop = set(self.dropped)
        keep = tuple(e for i, e in enumerate(train.examples) if i not in drop)
        return Dataset(examples=keep, source=train.source, skipped=dict(train.skipped))

    def raise_for_blocking(self) -> None:
        """Raise DataError naming every blocking finding (at the first one's first location), if any."""
        blocking = self.blocking
        if not blocking:
            return
        path, line = _split_location(blocking[0].locations[0]) if blocking[0].locations else (None, None)
        listed = " ".join(f"({n}) [{f.rule}] {f.message}." for n, f in enumerate(blocking, 1))
        raise DataError(
            f"data validation found {len(blocking)} blocking problem{'s' if len(blocking) != 1 else ''}: "
            f"{listed} Overall: {STOPS}; fix the data, or set the rule's severity to 'warn' in the "
            "validation policy if the data is right.",
            path,
            line,
        )

    def to_markdown(self) -> str:
        """A summary table and a findings table (severity, rule, count, message, where)."""
        counts = sorted(self.intent_counts.items(), key=lambda kv: (kv[1], kv[0]))
        verdict = "passed" if self.ok else f"blocked ({len(self.blocking)} blocking)"
        rows: list[tuple[str, str]] = [
            ("verdict", verdict),
            ("training examples", str(self.n_examples)),
            ("dropped (span warnings)", str(len(self.dropped))),
            ("test examples", "—" if self.n_test_examples is None else str(self.n_test_examples)),
            ("intents", str(len(self.intent_counts))),
        ]
        if counts:
            rows.append(("smallest intent", f"{_md(counts[0][0])} ({counts[0][1]})"))
            rows.append(("largest intent", f"{_md(counts[-1][0])} ({counts[-1][1]})"))
        rows += [
            ("entity types", str(len(self.entity_counts))),
            ("entity spans", str(sum(self.entity_counts.values()))),
            ("blocking findings", str(len(self.blocking))),
            ("warnings", str(len(self.warnings))),
        ]
        rows += [
            (f"loader: {kind.replace('_', ' ')}", str(n)) for kind, n in sorted(self.loader_counts.items())
        ]
        out = ["## Data validation", "", "| | |", "|---|---|"]
        out += [f"| {k} | {v} |" for k, v in rows]
        out += ["", "### Findings", ""]
        if not self.findings:
            out.append("No findings.")
        else:
            out += ["| severity | rule | count | message | where |", "|---|---|---:|---|---|"]
            for f in self.findings:
                where = ", ".join(f.locations[:3]) + (" …" if len(f.locations) > 3 or f.count > 3 else "")
                out.append(f"| {f.severity.value} | {f.rule} | {f.count} | {_md(f.message)} | {_md(where)} |")
        return "\n".join(out) + "\n"


def _md(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


_LOCATION = re.compile(r"^(?P<path>.+):(?P<line>\d+)$")


def _split_location(location: str) -> tuple[str, int | None]:
    match = _LOCATION.match(location)
    return (match["path"], int(match["line"])) if match else (location, None)
