"""The data validation report: named rules, a severity per rule, findings with file:line.

``validate(train, test, policy)`` runs every rule whose severity is not ``off`` and returns a
:class:`ValidationReport`. Like Rasa's validator, identical problems are reported once: one finding per kind
of problem, with a count, the first ten locations and a one-paragraph message that reads
``path:line: what was found; expected ...; what happens next``. ``block`` findings stop a retrain
(:meth:`ValidationReport.raise_for_blocking`); ``warn`` findings are reported and training continues, except
that examples with broken entity spans are dropped from training (:attr:`ValidationReport.dropped`).

Rules (``RULES``) with their default severity:

- ``min_intents`` (block): the usable training set has at least ``min_intents`` intents.
- ``min_examples_per_intent`` (block): each intent has ``min_examples_per_intent`` usable training examples.
- ``imbalance`` (warn): largest / smallest intent is at most ``max_imbalance_ratio``.
- ``span`` (block): entity offsets in range, start < end, ``text[start:end] == value``, no overlapping spans.
- ``token_limit`` (block): at most ``max_tokens`` word/punctuation tokens per example.
- ``duplicate`` (warn): no exact duplicate (text, intent) within a split.
- ``normalized_duplicate`` (warn): no duplicate after NFKC, case folding and punctuation/space normalisation.
- ``conflict`` (warn): one intent per normalised text within a split.
- ``leakage`` (warn): no test text whose normalised form is in the training set.
- ``annotation_score`` (block): mean annotation score at least ``min_mean_score`` where scores exist.
- ``unknown_locale`` (block): every locale given is in ``locales``.

Why these defaults: too few intents or examples, broken spans, over-long inputs, low-confidence annotation
batches and unknown locales mean the model would learn something other than what was meant, so they block.
Imbalance, duplicates, conflicts and leakage are common in real, useful data, so they warn and the report
shows them: the official Banking77 train split has an intent ratio of 5.3 (187/35) and 26 test texts that
match train after normalisation; Snips 2017 has 161 exact duplicates in train and 2 exact test/train
overlaps; HWU64 has 2 conflicting texts.

Per-example rules (``span``, ``token_limit``, ``duplicate``, ``normalized_duplicate``, ``conflict``,
``annotation_score``, ``unknown_locale``) also run on the test set; their findings say "test". The size rules
(``min_intents``, ``min_examples_per_intent``, ``imbalance``) concern the training set only.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nluflow.data.schema import MAX_TOKENS, SUPPORTED_LOCALES, Dataset, Example
from nluflow.errors import ConfigError, DataError

MAX_LOCATIONS = 10
_STOPS = "the retrain stops before training"


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
            f"{listed} Overall: {_STOPS}; fix the data, or set the rule's severity to 'warn' in the "
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


# ---------------------------------------------------------------------------------------------- text helpers

_APOSTROPHES = re.compile("['’‘`´ʼ]")
_NON_WORD = re.compile(r"[^\w\s]")
_SPACES = re.compile(r"\s+")
_TOKEN = re.compile(r"\w+|[^\w\s]")


def normalize_text(text: str) -> str:
    """The text as duplicate, conflict and leakage rules compare it: NFKC, casefold, punctuation removed.

    Apostrophes vanish ("what's" == "whats"), other punctuation becomes a space ("top-up" == "top up"),
    whitespace collapses. Symbols stay ("€1" != "£1"). A text of punctuation only keeps its case-folded form.
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    norm = _SPACES.sub(" ", _NON_WORD.sub(_punctuation_to_space, _APOSTROPHES.sub("", folded))).strip()
    return norm or _SPACES.sub(" ", folded).strip()


@functools.cache
def _is_punctuation(char: str) -> bool:
    return unicodedata.category(char).startswith("P")


def _punctuation_to_space(match: re.Match[str]) -> str:
    char = match.group()
    return " " if _is_punctuation(char) else char


def count_tokens(text: str) -> int:
    """Word and punctuation tokens, as ``token_limit`` counts them."""
    return sum(1 for _ in _TOKEN.finditer(text))


def _excerpt(text: str, limit: int = 50) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# --------------------------------------------------------------------------------------------------- the run


@dataclass
class _Group:
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
class _Split:
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


class _Run:
    def __init__(self, policy: ValidationPolicy) -> None:
        self.policy = policy
        self.findings: list[Finding] = []

    def on(self, rule: str) -> bool:
        return self.policy.severity_of(rule) is not Severity.OFF

    def next_step(self, rule: str, when_warn: str) -> str:
        return _STOPS if self.policy.severity_of(rule) is Severity.BLOCK else when_warn

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
        self, rule: str, group: _Group, expected: str, next_step: str, more: tuple[str, str]
    ) -> None:
        """A grouped finding: first location and detail, '(and N more ...)', what was expected, what next."""
        if not group.count:
            return
        rest = group.count - 1
        extra = f" (and {rest} more {more[0] if rest == 1 else more[1]})" if rest else ""
        message = f"{group.locations[0]}: {group.detail}{extra}; expected {expected}; {next_step}"
        self.add(rule, message, group.count, group.locations)


def validate(
    train: Dataset, test: Dataset | None = None, policy: ValidationPolicy | None = None
) -> ValidationReport:
    """Run every rule not switched off; never raises on any dataset (findings carry the problems)."""
    policy = policy or ValidationPolicy()
    run = _Run(policy)
    tr = _Split(train, "training")
    te = _Split(test, "test") if test is not None else None

    dropped: list[int] = []
    if run.on("span"):
        bad = _check_spans(run, tr)
        if policy.severity_of("span") is Severity.WARN:
            dropped = sorted(bad)
        if te is not None:
            _check_spans(run, te)
    drop = set(dropped)
    usable = [e for i, e in enumerate(train.examples) if i not in drop]
    intent_counts = Counter(e.intent for e in usable)
    entity_counts = Counter(ent.entity for e in usable for ent in e.entities)

    _check_sizes(run, tr, usable, intent_counts)
    for split in (tr, te):
        if split is None:
            continue
        if run.on("token_limit"):
            _check_tokens(run, split)
        if run.on("duplicate") or run.on("normalized_duplicate"):
            _check_duplicates(run, split)
        if run.on("conflict"):
            _check_conflicts(run, split)
        if run.on("annotation_score"):
            _check_scores(run, split)
    if te is not None and run.on("leakage"):
        _check_leakage(run, tr, te)
    if run.on("unknown_locale"):
        _check_locales(run, [s for s in (tr, te) if s is not None])

    order = {rule: n for n, rule in enumerate(RULES)}
    findings = sorted(
        run.findings, key=lambda f: (f.severity is not Severity.BLOCK, order[f.rule])
    )  # stable: train before test within a rule
    return ValidationReport(
        findings=findings,
        n_examples=len(train),
        n_test_examples=len(test) if test is not None else None,
        intent_counts=dict(sorted(intent_counts.items())),
        entity_counts=dict(sorted(entity_counts.items())),
        dropped=dropped,
        loader_counts=dict(train.skipped),
    )


# --------------------------------------------------------------------------------------------------- rules


def _check_spans(run: _Run, split: _Split) -> set[int]:
    """Report span problems by kind; return the indices of examples that have any."""
    kinds: dict[str, _Group] = defaultdict(_Group)
    bad: set[int] = set()
    for i, ex in enumerate(split.examples):
        if not ex.entities:
            continue
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
                shown = _excerpt(text[ent.start : ent.end])
                problems.append(
                    ("mismatch", f"{span} does not match text {shown} (value {_excerpt(ent.value)})")
                )
            else:
                good.append((ent.start, ent.end, ent.entity))
        good.sort()
        for (s1, e1, t1), (s2, e2, t2) in itertools.pairwise(good):
            if s2 < e1:
                problems.append(("overlap", f"entities '{t1}' {s1}–{e1} and '{t2}' {s2}–{e2} overlap"))
                break
        if problems:
            bad.add(i)
            for kind, detail in problems:
                kinds[kind].add(split.where[i], detail)
    warn_next = (
        "examples skipped from training"
        if split.name == "training"
        else "test examples kept; their entity scores may be off"
    )
    expected = {
        "range": "offsets within the text",
        "empty": "start < end",
        "mismatch": "text[start:end] == value",
        "overlap": "entity spans that do not overlap",
    }
    for kind in ("range", "empty", "mismatch", "overlap"):
        group = kinds.get(kind)
        if group is not None:
            if split.name == "test":
                group.detail = "test example: " + group.detail
            run.add_group(
                "span",
                group,
                expected[kind],
                run.next_step(
                    "span", warn_next if group.count > 1 else warn_next.replace("examples", "example")
                ),
                more=("span like it", "spans like it"),
            )
    return bad


def _check_sizes(run: _Run, tr: _Split, usable: list[Example], counts: Counter[str]) -> None:
    source = tr.data.source
    policy = run.policy
    first_at: dict[str, str] = {}
    for ex, where in zip(tr.examples, tr.where, strict=True):
        first_at.setdefault(ex.intent, where)
    if run.on("min_intents") and len(counts) < policy.min_intents:
        names = ", ".join(f"'{k}'" for k in sorted(counts)) or "none"
        run.add(
            "min_intents",
            f"{source}: found {_plural(len(counts), 'intent')} ({names}) in "
            f"{_plural(len(usable), 'usable example')}; "
            f"expected at least {policy.min_intents}; {run.next_step('min_intents', 'training continues')}",
            max(policy.min_intents - len(counts), 1),
            [source],
        )
    small = sorted((n, k) for k, n in counts.items() if n < policy.min_examples_per_intent)
    if run.on("min_examples_per_intent") and small:
        shown = ", ".join(f"'{k}' ({n})" for n, k in small[:20]) + (" …" if len(small) > 20 else "")
        run.add(
            "min_examples_per_intent",
            f"{source}: {_plural(len(small), 'intent')} {'has' if len(small) == 1 else 'have'} fewer than "
            f"{policy.min_examples_per_intent} usable training examples: {shown}; expected at least "
            f"{policy.min_examples_per_intent} per intent; "
            f"{run.next_step('min_examples_per_intent', 'training continues')}",
            len(small),
            [first_at[k] for _, k in small],
        )
    if run.on("imbalance") and len(counts) >= 2:
        (low_n, low), (high_n, high) = (
            min((n, k) for k, n in counts.items()),
            max((n, k) for k, n in counts.items()),
        )
        ratio = high_n / low_n
        if ratio > policy.max_imbalance_ratio:
            under = sorted(k for k, n in counts.items() if n * policy.max_imbalance_ratio < high_n)
            run.add(
                "imbalance",
                f"{source}: the largest intent '{high}' has {high_n} training examples and the smallest "
                f"'{low}' has {low_n} (ratio {ratio:.1f}; {_plural(len(under), 'intent')} below "
                f"1/{policy.max_imbalance_ratio:g} of the largest); expected a ratio of at most "
                f"{policy.max_imbalance_ratio:g}; "
                f"{run.next_step('imbalance', 'training continues; small intents may be under-predicted')}",
                len(under),
                [first_at[k] for k in under],
            )


def _check_tokens(run: _Run, split: _Split) -> None:
    limit = run.policy.max_tokens
    group = _Group()
    for ex, where in zip(split.examples, split.where, strict=True):
        if len(ex.text) > limit:  # a text of at most `limit` characters cannot exceed `limit` tokens
            n = count_tokens(ex.text)
            if n > limit:
                group.add(where, f"{split.name} example {_excerpt(ex.text, 30)} has {n} tokens")
    run.add_group(
        "token_limit",
        group,
        f"at most {limit} tokens per example",
        run.next_step("token_limit", "the model truncates or ignores the rest"),
        more=("example", "examples"),
    )


def _check_duplicates(run: _Run, split: _Split) -> None:
    exact_first: dict[tuple[str, str], int] = {}
    norm_first: dict[tuple[str, str], int] = {}
    exact, near = _Group(), _Group()
    for i, ex in enumerate(split.examples):
        key = (ex.text, ex.intent)
        if key in exact_first:
            j = exact_first[key]
            exact.add(
                split.where[i],
                f"{split.name} example {_excerpt(ex.text)} (intent '{ex.intent}') repeats the one at "
                f"{split.where[j]}",
            )
            continue
        exact_first[key] = i
        nkey = (split.norm[i], ex.intent)
        if nkey in norm_first:
            j = norm_first[nkey]
            near.add(
                split.where[i],
                f"{split.name} example {_excerpt(ex.text)} (intent '{ex.intent}') equals "
                f"{_excerpt(split.examples[j].text)} at {split.where[j]} after case folding and removing "
                "punctuation",
            )
        else:
            norm_first[nkey] = i
    if run.on("duplicate"):
        run.add_group(
            "duplicate",
            exact,
            "each example once",
            run.next_step("duplicate", "training continues; repeated examples weigh more"),
            more=("repeat", "repeats"),
        )
    if run.on("normalized_duplicate"):
        run.add_group(
            "normalized_duplicate",
            near,
            "distinct examples",
            run.next_step("normalized_duplicate", "training continues; near-repeats weigh more"),
            more=("near-repeat", "near-repeats"),
        )


def _check_conflicts(run: _Run, split: _Split) -> None:
    by_text: dict[str, dict[str, int]] = defaultdict(dict)  # normalised text -> intent -> first index
    for i, ex in enumerate(split.examples):
        by_text[split.norm[i]].setdefault(ex.intent, i)
    group = _Group()
    locations: list[str] = []
    for intents in by_text.values():
        if len(intents) < 2:
            continue
        firsts = sorted(intents.values())
        ex = split.examples[firsts[0]]
        others = ", ".join(f"'{split.examples[j].intent}' at {split.where[j]}" for j in firsts[1:4])
        group.add(
            split.where[firsts[0]],
            f"{split.name} text {_excerpt(ex.text)} is labelled '{ex.intent}' here and {others}",
        )
        locations.extend(split.where[j] for j in firsts)
    group.locations = locations[:MAX_LOCATIONS]
    run.add_group(
        "conflict",
        group,
        "one intent per text",
        run.next_step("conflict", "training continues with contradictory labels"),
        more=("conflicting text", "conflicting texts"),
    )


def _check_leakage(run: _Run, tr: _Split, te: _Split) -> None:
    train_at: dict[str, int] = {}
    for i, norm in enumerate(tr.norm):
        train_at.setdefault(norm, i)
    train_texts = {e.text for e in tr.examples}
    leaked: list[tuple[int, int]] = [(i, train_at[n]) for i, n in enumerate(te.norm) if n in train_at]
    if not leaked:
        return
    exact = sum(te.examples[i].text in train_texts for i, _ in leaked)
    i, j = leaked[0]
    verb = "occurs" if len(leaked) == 1 else "occur"
    run.add(
        "leakage",
        f"{te.where[i]}: {_plural(len(leaked), 'test example')} also {verb} in the training set "
        f"({exact} exact, {len(leaked) - exact} after case folding and removing punctuation), e.g. "
        f"{_excerpt(te.examples[i].text)} as {_excerpt(tr.examples[j].text)} at {tr.where[j]}; expected test "
        "texts the training set does not contain; "
        + run.next_step("leakage", "evaluation continues; scores on these examples overstate generalisation"),
        len(leaked),
        [te.where[k] for k, _ in leaked],
    )


def _check_scores(run: _Run, split: _Split) -> None:
    scored = [
        (ex.score, w) for ex, w in zip(split.examples, split.where, strict=True) if ex.score is not None
    ]
    if not scored:
        return
    mean = math.fsum(s for s, _ in scored) / len(scored)
    minimum = run.policy.min_mean_score
    if mean >= minimum - 1e-12:  # a tolerance so that n copies of the minimum pass despite rounding
        return
    low = sorted((s, w) for s, w in scored if s < minimum) or sorted(scored)
    run.add(
        "annotation_score",
        f"{split.data.source}: mean annotation score of "
        f"{_plural(len(scored), f'scored {split.name} example')} "
        f"is {mean:.3f} ({_plural(len(low), 'example')} below {minimum:g}; lowest {low[0][0]:.2f} at "
        f"{low[0][1]}); expected a mean of at least {minimum:g}; "
        f"{run.next_step('annotation_score', 'training continues on low-confidence labels')}",
        len(low),
        [w for _, w in low],
    )


def _check_locales(run: _Run, splits: list[_Split]) -> None:
    allowed = set(run.policy.locales)
    groups: dict[str, _Group] = defaultdict(_Group)
    for split in splits:
        for ex, where in zip(split.examples, split.where, strict=True):
            if ex.locale is not None and ex.locale not in allowed:
                groups[ex.locale].add(where, f"locale {ex.locale!r}")
    expected = f"one of {', '.join(run.policy.locales) or '(no locales allowed)'}"
    for locale in sorted(groups):
        group = groups[locale]
        group.detail = f"{group.detail} in {_plural(group.count, 'example')}"
        run.add(
            "unknown_locale",
            f"{group.locations[0]}: {group.detail}; expected {expected}; "
            f"{run.next_step('unknown_locale', 'training continues with these examples')}",
            group.count,
            group.locations,
        )
