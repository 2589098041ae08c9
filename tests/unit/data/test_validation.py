"""Validation rules, severities, grouping, the report's outputs, and the vendored benchmark splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from nluflow.data.loaders import load_file
from nluflow.data.schema import Dataset, Entity, Example, Origin
from nluflow.data.validation import (
    DEFAULT_SEVERITY,
    RULES,
    Finding,
    Severity,
    ValidationPolicy,
    ValidationReport,
    count_tokens,
    normalize_text,
    validate,
)
from nluflow.errors import ConfigError, DataError

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo"]


def ex(text: str, intent: str, line: int, *, path: str = "data/nlu.yml", **kw: object) -> Example:
    return Example(text=text, intent=intent, origin=Origin(path=path, line=line), **kw)


def clean(
    n_per_intent: int = 10, intents: tuple[str, ...] = ("greet", "bye"), path: str = "train.jsonl"
) -> Dataset:
    """A dataset that passes every rule: distinct texts, balanced intents."""
    examples = [
        ex(f"{intent} {WORDS[i % len(WORDS)]} number {i}", intent, k * n_per_intent + i + 1, path=path)
        for k, intent in enumerate(intents)
        for i in range(n_per_intent)
    ]
    return Dataset.of(examples, source=path)


def with_extra(base: Dataset, *extra: Example) -> Dataset:
    return Dataset.of([*base.examples, *extra], source=base.source)


def only(report: ValidationReport, rule: str) -> list[Finding]:
    return [f for f in report.findings if f.rule == rule]


def test_clean_data_passes_with_no_findings() -> None:
    test = Dataset.of([ex(f"held out {w}", "greet", i + 1, path="test.jsonl") for i, w in enumerate(WORDS)])
    report = validate(clean(), test)
    assert report.ok
    assert report.findings == []
    assert report.intent_counts == {"bye": 10, "greet": 10}
    assert (report.n_examples, report.n_test_examples) == (20, len(WORDS))
    report.raise_for_blocking()  # no-op


def test_min_intents_blocks_a_single_intent() -> None:
    report = validate(clean(intents=("greet",)))
    (finding,) = only(report, "min_intents")
    assert finding.severity is Severity.BLOCK
    assert "found 1 intent ('greet')" in finding.message and "expected at least 2" in finding.message
    assert not report.ok


def test_min_examples_per_intent_names_intents_and_counts() -> None:
    base = clean(n_per_intent=12)
    small = [ex(f"small {w}", "tiny", 100 + i) for i, w in enumerate(WORDS[:3])]
    small += [ex(f"few {w}", "few", 200 + i) for i, w in enumerate(WORDS[:9])]
    report = validate(with_extra(base, *small))
    (finding,) = only(report, "min_examples_per_intent")
    assert finding.count == 2
    assert "'tiny' (3), 'few' (9)" in finding.message
    assert "expected at least 10 per intent" in finding.message
    assert finding.locations == ["data/nlu.yml:100", "data/nlu.yml:200"]  # first example of each intent


def test_imbalance_warns_with_the_ratio() -> None:
    data = with_extra(
        clean(n_per_intent=10, intents=("small",)), *clean(n_per_intent=60, intents=("big",)).examples
    )
    report = validate(data)
    (finding,) = only(report, "imbalance")
    assert finding.severity is Severity.WARN
    assert "'big' has 60" in finding.message and "'small' has 10" in finding.message
    assert "ratio 6.0" in finding.message
    assert report.ok  # imbalance only warns by default


def _span_data() -> Dataset:
    return with_extra(
        clean(),
        ex(
            "fly to Paris now", "greet", 42, entities=(Entity(start=7, end=11, entity="city", value="Paris"),)
        ),
        ex("to Rome", "greet", 43, entities=(Entity(start=3, end=30, entity="city", value="Rome"),)),
        ex("to Oslo", "greet", 44, entities=(Entity(start=5, end=5, entity="city", value=""),)),
        ex(
            "new york city",
            "greet",
            45,
            entities=(
                Entity(start=0, end=8, entity="city", value="new york"),
                Entity(start=4, end=13, entity="place", value="york city"),
            ),
        ),
        ex("to Bonn", "greet", 46, entities=(Entity(start=3, end=7, entity="city", value="Bonn"),)),  # fine
    )


def test_span_rule_reports_each_kind_rasa_style_and_blocks_by_default() -> None:
    report = validate(_span_data())
    by_loc = {f.locations[0]: f.message for f in only(report, "span")}
    assert by_loc == {
        "data/nlu.yml:43": "data/nlu.yml:43: entity 'city' span 3–30 is outside the text (length 7); "
        "expected offsets within the text; the retrain stops before training",
        "data/nlu.yml:44": "data/nlu.yml:44: entity 'city' span 5–5 is empty or reversed; "
        "expected start < end; the retrain stops before training",
        "data/nlu.yml:42": "data/nlu.yml:42: entity 'city' span 7–11 does not match text 'Pari' "
        "(value 'Paris'); expected text[start:end] == value; the retrain stops before training",
        "data/nlu.yml:45": "data/nlu.yml:45: entities 'city' 0–8 and 'place' 4–13 overlap; "
        "expected entity spans that do not overlap; the retrain stops before training",
    }
    assert all(f.severity is Severity.BLOCK for f in only(report, "span"))
    assert report.dropped == [] and not report.ok


def test_span_mismatch_message_matches_the_house_example() -> None:
    data = with_extra(
        clean(),
        ex("I love Paris", "greet", 42, entities=(Entity(start=7, end=12, entity="city", value="Pari"),)),
    )
    policy = ValidationPolicy(severity={"span": Severity.WARN})
    (finding,) = only(validate(data, policy=policy), "span")
    assert finding.message == (
        "data/nlu.yml:42: entity 'city' span 7–12 does not match text 'Paris' (value 'Pari'); "
        "expected text[start:end] == value; example skipped from training"
    )


def test_span_warn_drops_the_bad_examples_and_usable_removes_them() -> None:
    data = _span_data()
    report = validate(data, policy=ValidationPolicy(severity={"span": "warn"}))
    assert report.ok
    assert report.dropped == [20, 21, 22, 23]
    assert len(only(report, "span")) == 4
    assert all(
        f.severity is Severity.WARN and "skipped from training" in f.message for f in only(report, "span")
    )
    usable = report.usable(data)
    assert len(usable) == len(data) - 4
    assert usable.examples[-1].text == "to Bonn"
    assert report.intent_counts["greet"] == 11  # counts describe the usable set
    assert report.entity_counts == {"city": 1}
    with pytest.raises(ConfigError):
        report.usable(clean())


def test_span_off_keeps_everything() -> None:
    report = validate(_span_data(), policy=ValidationPolicy(severity={"span": Severity.OFF}))
    assert only(report, "span") == [] and report.dropped == [] and report.ok


def test_span_problems_in_the_test_set_are_reported_but_not_dropped() -> None:
    test = Dataset.of(
        [
            ex(
                "to Paris",
                "greet",
                7,
                path="test.jsonl",
                entities=(Entity(start=3, end=8, entity="c", value="x"),),
            )
        ],
        source="test.jsonl",
    )
    report = validate(clean(), test, ValidationPolicy(severity={"span": Severity.WARN}))
    (finding,) = only(report, "span")
    assert finding.locations == ["test.jsonl:7"]
    assert "test example" in finding.message and "kept" in finding.message
    assert report.dropped == []


def test_token_limit_counts_words_and_punctuation() -> None:
    assert count_tokens("Hello, world! It's 5pm.") == 9  # Hello , world ! It ' s 5pm .
    long_text = " ".join(["word"] * 600)
    report = validate(with_extra(clean(), ex(long_text, "greet", 99)))
    (finding,) = only(report, "token_limit")
    assert finding.severity is Severity.BLOCK and finding.locations == ["data/nlu.yml:99"]
    assert "has 600 tokens" in finding.message and "at most 512" in finding.message
    assert validate(
        with_extra(clean(), ex(long_text, "greet", 99)), policy=ValidationPolicy(max_tokens=600)
    ).ok


def test_identical_problems_are_reported_once_with_a_count_and_ten_locations() -> None:
    dupes = [ex("greet alpha number 0", "greet", 100 + i) for i in range(14)]
    report = validate(with_extra(clean(), *dupes))
    (finding,) = only(report, "duplicate")
    assert finding.count == 14
    assert len(finding.locations) == 10
    assert finding.locations[0] == "data/nlu.yml:100"
    assert (
        "repeats the one at train.jsonl:1 " in finding.message and "(and 13 more repeats)" in finding.message
    )
    assert finding.severity is Severity.WARN


def test_normalized_duplicate_and_conflict() -> None:
    data = with_extra(
        clean(),
        ex("What's the time?", "greet", 50),
        ex("whats   the TIME", "greet", 51),
        ex("Book a table", "greet", 52),
        ex("book a table!", "bye", 53),
    )
    report = validate(data)
    (near,) = only(report, "normalized_duplicate")
    assert near.locations == ["data/nlu.yml:51"] and near.count == 1
    (conflict,) = only(report, "conflict")
    assert conflict.count == 1
    assert conflict.locations == ["data/nlu.yml:52", "data/nlu.yml:53"]
    assert "labelled 'greet' here and 'bye' at data/nlu.yml:53" in conflict.message
    assert report.ok


def test_normalize_text() -> None:
    assert normalize_text("  What's   the TIME?! ") == "whats the time"
    assert normalize_text("top-up") == normalize_text("top up")
    assert normalize_text("€1 fee") != normalize_text("£1 fee")  # symbols are kept
    assert normalize_text("?") != normalize_text("!")  # punctuation-only texts stay distinct
    assert normalize_text("ＡＢＣ") == "abc"  # NFKC


def test_leakage_counts_exact_and_normalised_overlaps() -> None:
    train = clean()
    test = Dataset.of(
        [
            ex("greet alpha number 0", "greet", 1, path="test.jsonl"),
            ex("Greet bravo, number 1!", "greet", 2, path="test.jsonl"),
            ex("something new", "bye", 3, path="test.jsonl"),
        ],
        source="test.jsonl",
    )
    report = validate(train, test)
    (finding,) = only(report, "leakage")
    assert finding.count == 2 and finding.locations == ["test.jsonl:1", "test.jsonl:2"]
    assert "(1 exact, 1 after case folding" in finding.message
    assert finding.severity is Severity.WARN
    assert only(validate(train), "leakage") == []


def test_annotation_score_blocks_a_low_mean_and_points_at_the_worst() -> None:
    scored = [ex(f"scored {w}", "greet", 60 + i, score=0.5 + 0.01 * i) for i, w in enumerate(WORDS[:5])]
    report = validate(with_extra(clean(), *scored))
    (finding,) = only(report, "annotation_score")
    assert finding.severity is Severity.BLOCK
    assert "mean annotation score of 5 scored training examples is 0.520" in finding.message
    assert finding.locations[0] == "data/nlu.yml:60"
    high = [ex(f"scored {w}", "greet", 60 + i, score=0.85) for i, w in enumerate(WORDS[:7])]
    assert only(validate(with_extra(clean(), *high)), "annotation_score") == []  # exactly at the minimum


def test_unknown_locale_is_grouped_by_locale() -> None:
    data = with_extra(
        clean(),
        ex("hallo eins", "greet", 70, locale="de_DE"),
        ex("hallo zwei", "greet", 71, locale="de_DE"),
        ex("hola", "greet", 72, locale="xx"),
        ex("hello", "greet", 73, locale="en-US"),
    )
    findings = only(validate(data), "unknown_locale")
    assert [(f.count, f.locations) for f in findings] == [
        (2, ["data/nlu.yml:70", "data/nlu.yml:71"]),
        (1, ["data/nlu.yml:72"]),
    ]
    assert "locale 'de_DE' in 2 examples; expected one of en-US, de-DE" in findings[0].message
    assert validate(data, policy=ValidationPolicy(locales=("en-US", "de_DE", "xx"))).ok


def test_policy_defaults_partial_severity_and_unknown_rules() -> None:
    policy = ValidationPolicy()
    assert tuple(policy.severity) == RULES and policy.severity == DEFAULT_SEVERITY
    partial = ValidationPolicy(severity={"leakage": Severity.BLOCK})
    assert partial.severity["leakage"] is Severity.BLOCK and partial.severity["span"] is Severity.BLOCK
    with pytest.raises(ValidationError, match="unknown rule"):
        ValidationPolicy(severity={"spans": Severity.WARN})
    with pytest.raises(ValidationError):
        ValidationPolicy(min_intnets=3)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="severity: Value error, unknown rule"):
        ValidationPolicy.parse({"severity": {"nope": "warn"}})
    with pytest.raises(ConfigError, match="max_imbalance_ratio"):
        ValidationPolicy.parse({"max_imbalance_ratio": 0.5})
    assert (
        ValidationPolicy.parse({"severity": {"imbalance": "block"}}).severity["imbalance"] is Severity.BLOCK
    )
    dumped = json.loads(policy.model_dump_json())
    assert ValidationPolicy.model_validate(dumped) == policy


def test_off_rules_report_nothing() -> None:
    data = with_extra(clean(intents=("greet",)), ex("greet alpha number 0", "greet", 99))
    policy = ValidationPolicy(severity={rule: Severity.OFF for rule in RULES})
    report = validate(data, data, policy)
    assert report.findings == [] and report.ok


def test_raise_for_blocking_lists_every_blocking_finding_at_the_first_location() -> None:
    data = with_extra(
        clean(),
        ex("I love Paris", "greet", 42, entities=(Entity(start=7, end=12, entity="city", value="Pari"),)),
        ex("hallo", "greet", 43, locale="de_DE"),
    )
    report = validate(data)
    assert [f.rule for f in report.blocking] == ["span", "unknown_locale"]
    with pytest.raises(DataError) as info:
        report.raise_for_blocking()
    err = info.value
    assert (err.path, err.line) == ("data/nlu.yml", 42)
    text = str(err)
    assert text.startswith("data/nlu.yml:42: data validation found 2 blocking problems: (1) [span] ")
    assert "(2) [unknown_locale] data/nlu.yml:43: locale 'de_DE'" in text
    assert "the retrain stops before training" in text
    assert "\n" not in text


def test_raise_for_blocking_without_a_line_uses_the_source() -> None:
    report = validate(clean(intents=("greet",), path="data/train.csv"))
    with pytest.raises(DataError) as info:
        report.raise_for_blocking()
    assert (info.value.path, info.value.line) == ("data/train.csv", None)


def test_findings_are_sorted_blocking_first() -> None:
    data = with_extra(
        clean(), ex("greet alpha number 0", "greet", 99), ex("hallo", "greet", 100, locale="zz")
    )
    report = validate(data)
    assert [f.severity for f in report.findings] == [Severity.BLOCK, Severity.WARN]


def test_markdown_has_a_summary_and_a_findings_table_with_escaped_pipes() -> None:
    data = with_extra(clean(), ex("a | b", "greet", 99), ex("a | b", "greet", 100))
    md = validate(data).to_markdown()
    assert "| verdict | passed |" in md
    assert "| training examples | 22 |" in md
    assert "| severity | rule | count | message | where |" in md
    row = next(line for line in md.splitlines() if line.startswith("| warn | duplicate |"))
    assert "'a \\| b'" in row and "data/nlu.yml:100" in row
    assert "No findings." in validate(clean()).to_markdown()


def test_in_memory_examples_get_indexed_locations() -> None:
    data = Dataset.of(
        [Example(text="same", intent="a")] * 2 + [Example(text=f"b {i}", intent="b") for i in range(2)]
    )
    (finding,) = only(validate(data), "duplicate")
    assert finding.locations == ["<memory>[1]"]


def test_report_survives_json_round_trip() -> None:
    report = validate(_span_data(), policy=ValidationPolicy(severity={"span": Severity.WARN}))
    again = ValidationReport.model_validate_json(report.model_dump_json())
    assert again == report and again.dropped == report.dropped


def test_validate_never_raises_on_degenerate_input() -> None:
    empty = Dataset()
    report = validate(empty, empty)
    assert not report.ok and [f.rule for f in report.blocking] == ["min_intents"]
    assert report.to_markdown()


@pytest.mark.parametrize("name", ["banking77", "hwu64", "snips2017"])
@pytest.mark.slow
def test_official_splits_have_no_blocking_finding_under_defaults(name: str, datasets: Path) -> None:
    folder = datasets / name
    train, test = load_file(folder / "train.jsonl"), load_file(folder / "test.jsonl")
    report = validate(train, test)
    assert report.blocking == [], report.to_markdown()
    assert report.dropped == []
    assert report.n_examples == len(train) and report.n_test_examples == len(test)
    rules = {f.rule for f in report.findings}
    expected = {
        "banking77": {"imbalance", "leakage", "conflict", "normalized_duplicate"},
        "hwu64": {"conflict", "leakage", "normalized_duplicate"},
        "snips2017": {"duplicate", "leakage", "normalized_duplicate"},
    }[name]
    assert rules == expected
