"""The benchmark code paths (tables, JSON, child accounting, scale data, plot, bare retrain) on tiny synthetic
data. No timing is asserted: only what the benchmarks compute and write."""

from __future__ import annotations

import json
import lzma
import random
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # bench/ is not an installed package; it runs from the repository root
    sys.path.insert(0, str(REPO))

from bench import accuracy, overhead, scale  # noqa: E402
from bench.common import (  # noqa: E402
    DATASETS,
    DatasetsMissing,
    DatasetSpec,
    datasets_dir,
    format_table,
    run_child,
    unpack_datasets,
)
from nluflow.data.schema import Dataset, Entity, Example  # noqa: E402

CITIES = [
    "paris",
    "berlin",
    "rome",
    "oslo",
    "lima",
    "quito",
    "cairo",
    "delhi",
    "tokyo",
    "seoul",
    "perth",
    "dakar",
    "accra",
    "hanoi",
    "nice",
    "bern",
]


def _examples() -> list[Example]:
    out: list[Example] = []
    for i, city in enumerate(CITIES):
        out.append(Example(text=f"hello there friend number {i}", intent="greet"))
        text = f"what is the weather in {city} today"
        start = text.index(city)
        out.append(
            Example(
                text=text,
                intent="weather",
                entities=(Entity(start=start, end=start + len(city), entity="city", value=city),),
            )
        )
        out.append(Example(text=f"order {i} large pizzas with cheese", intent="order"))
    return out


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    """A datasets-like folder with one dataset, ``tiny``, that a model separates perfectly."""
    examples = _examples()  # 16 per intent: 12 train (validation wants 10), 4 test
    train = [e for k, e in enumerate(examples) if (k // 3) % 4 != 0]
    test = [e for k, e in enumerate(examples) if (k // 3) % 4 == 0]
    Dataset.of(train).write_jsonl(tmp_path / "tiny" / "train.jsonl")
    Dataset.of(test).write_jsonl(tmp_path / "tiny" / "test.jsonl")
    return tmp_path


@pytest.mark.slow
def test_accuracy_run_writes_rows_tables_and_json(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tiny / "results"
    payload = accuracy.run(
        config_names=["default"], results_dir=results, root=tiny, specs=[DatasetSpec("tiny")]
    )
    (row,) = payload["rows"]
    assert row["status"] == "ok"
    assert (row["dataset"], row["test"], row["config"]) == ("tiny", "test", "default")
    assert row["intent_accuracy"] == 1.0  # three intents with disjoint words
    assert row["entity_f1"] is not None and 0.0 <= row["entity_f1"] <= 1.0
    assert row["n_train"] + row["n_test"] == len(_examples())
    assert row["peak_rss_mb"] > 10  # measured in the child (a Python with numpy loaded)
    written = json.loads((results / "accuracy.json").read_text(encoding="utf-8"))
    assert written["rows"] == payload["rows"]
    assert written["machine"]["cpu_count"] >= 1
    assert {g["dataset"] for g in written["goals"]} >= {"banking77", "snips2017"}
    printed = capsys.readouterr().out
    assert "| tiny" in printed and "100.00 %" in printed
    assert "USE+ConveRT" in printed  # the published figures are printed next to ours


def test_accuracy_lists_missing_files_and_unavailable_configs_as_skipped(tiny: Path) -> None:
    needs_extra = accuracy.BenchConfig(
        "needs-extra",
        "a config whose extra is absent",
        accuracy.CONFIGS["default"].options,
        ("no_such_mod_x",),
    )
    rows = accuracy.measure([DatasetSpec("tiny"), DatasetSpec("absent")], [needs_extra], tiny, isolate=False)
    assert [r["dataset"] for r in rows] == ["tiny", "absent"]
    assert rows[0]["status"] == "skipped: needs no_such_mod_x (not installed)"
    assert rows[1]["status"].startswith("skipped: ") and "absent" in rows[1]["status"]
    table = accuracy.accuracy_table(rows)
    assert "needs no_such_mod_x" in table


def test_datasets_dir_prefers_the_env_folder_then_unpacks_the_vendored_data_and_says_where_it_looked(
    tiny: Path, tmp_path: Path
) -> None:
    assert datasets_dir({"NLUFLOW_DATASETS": str(tiny)}) == tiny.resolve()
    with pytest.raises(DatasetsMissing) as missing:
        datasets_dir({"NLUFLOW_DATASETS": str(tmp_path / "nowhere")})
    assert "nowhere" in str(missing.value) and "no benchmark was run" in str(missing.value)

    unpacked = datasets_dir({}, cache=tmp_path / "cache")  # the repository's data/, decompressed
    assert unpacked.parent == tmp_path / "cache"
    assert {spec.name for spec in DATASETS} <= {p.name for p in unpacked.iterdir()}
    for spec in DATASETS:
        assert spec.missing(unpacked) == []
    assert "rasa_demo" not in {p.name for p in unpacked.iterdir()}  # GPL-3.0: never vendored


def test_unpack_datasets_decompresses_copies_the_rest_and_reuses_its_copy(tmp_path: Path) -> None:
    source = tmp_path / "data"
    (source / "tiny" / "raw").mkdir(parents=True)
    rows = b'{"text": "hi", "intent": "greet", "entities": []}\n'
    (source / "tiny" / "train.jsonl.xz").write_bytes(lzma.compress(rows))
    (source / "tiny" / "raw" / "nlu.yml").write_text("nlu: []\n", encoding="utf-8")
    root = unpack_datasets(tmp_path / "out", source)
    assert (root / "tiny" / "train.jsonl").read_bytes() == rows
    assert (root / "tiny" / "raw" / "nlu.yml").read_text(encoding="utf-8") == "nlu: []\n"
    assert not list(root.rglob("*.xz")) and not list(root.rglob("*.partial"))
    assert unpack_datasets(tmp_path / "out", source) == root  # the same archives: the same copy

    (source / "tiny" / "train.jsonl.xz").write_bytes(lzma.compress(rows * 2))
    again = unpack_datasets(tmp_path / "out", source)
    assert again != root and (again / "tiny" / "train.jsonl").read_bytes() == rows * 2  # never stale

    with pytest.raises(DatasetsMissing) as missing:
        unpack_datasets(tmp_path / "out", tmp_path / "empty")
    assert str(tmp_path / "empty") in str(missing.value) and "data/README.md" in str(missing.value)


def test_run_child_accounts_peak_memory_of_that_child_alone() -> None:
    big = run_child(["-c", "x = bytearray(80_000_000); x[::4096] = b'1' * len(x[::4096])"])
    small = run_child(["-c", "import sys; sys.exit(3)"])
    assert big.ok and big.max_rss_mb >= 80
    assert small.returncode == 3 and not small.ok
    assert small.max_rss_mb < big.max_rss_mb  # not the maximum over all children so far


def test_perturb_keeps_entity_spans_valid_and_scaled_sets_grow_as_prefixes() -> None:
    pool = _examples()
    rng = random.Random(0)
    for _ in range(20):
        for ex in pool:
            new = scale.perturb(ex, rng)
            assert new.intent == ex.intent
            assert [e.value for e in new.entities] == [e.value for e in ex.entities]
            assert all(new.text[e.start : e.end] == e.value for e in new.entities)
    small, large = scale.scaled_dataset(pool, 50), scale.scaled_dataset(pool, 120)
    assert len(small) == 50 and len(large) == 120
    assert large.examples[:50] == small.examples
    assert len({e.text for e in large.examples}) > len(pool)  # later passes are perturbed, not copies


def test_scale_summary_table_and_plot(tmp_path: Path) -> None:
    points: list[dict[str, Any]] = [
        {
            "n": n,
            "status": "ok",
            "fit_seconds": 0.01 * n,
            "intent_seconds": 0.004 * n,
            "entity_seconds": 0.006 * n,
            "peak_rss_mb": 200 + 0.01 * n,
            "n_intents": 3,
            "n_entity_types": 1,
            "child_wall_seconds": 0.01 * n + 2,
        }
        for n in (1000, 2000, 4000)
    ]
    points.append({"n": 8000, "status": "skipped: predicted 90 s after 70 s would exceed the 100 s budget"})
    summary = scale.summarize(points)
    assert summary["fit_growth_exponent"] == pytest.approx(1.0)
    assert summary["measured_sizes"] == [1000, 2000, 4000]
    assert 8000 in summary["not_measured"] and summary["under_memory_limit"] is True
    assert scale.predict_seconds(points[:3], 8000) == pytest.approx(2 * (0.01 * 4000 + 2))
    text = scale.render(points, summary)
    assert "4.00× for 4.0× data" in text and "skipped: predicted 90 s" in text
    png = scale.plot(points, tmp_path / "scale.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_overhead_summary_uses_paired_ratios_and_judges_goals() -> None:
    samples = [
        {"bare_seconds": 10.0, "flow_seconds": 11.0, "rerun_seconds": 0.5},
        {"bare_seconds": 20.0, "flow_seconds": 21.0, "rerun_seconds": 3.0},
        {"bare_seconds": 10.0, "flow_seconds": 13.0, "rerun_seconds": 0.9},
    ]
    s = overhead.summarize("tiny", samples)
    assert s["flow_over_bare"]["median"] == pytest.approx(1.1)
    assert s["rerun_over_first"]["median"] == pytest.approx(0.9 / 13)
    assert s["flow_goal_met"] is True and s["rerun_goal_met"] is True
    assert s["overhead_seconds"]["median"] == pytest.approx(1.0)
    slow = overhead.summarize("slow", [{"bare_seconds": 1.0, "flow_seconds": 2.0, "rerun_seconds": 1.0}])
    assert slow["flow_goal_met"] is False and slow["rerun_goal_met"] is False
    table = overhead.render([s, slow])
    assert "1.100×" in table and "missed" in table and "met" in table


@pytest.mark.slow
def test_bare_retrain_does_the_flows_work_without_prefect(tiny: Path, tmp_path: Path) -> None:
    from nluflow.store import ModelStore
    from nluflow.store.audit_log import AuditLog

    store = tmp_path / "store"
    result = overhead.bare_retrain(
        "tiny", tiny / "tiny" / "train.jsonl", tiny / "tiny" / "test.jsonl", store, tmp_path / "work", seed=1
    )
    assert result["promoted"] is True and result["intent_accuracy"] == 1.0
    assert set(result["stages"]) >= {"load", "validate", "train", "evaluate_candidate", "store", "audit"}
    pointer = ModelStore.local(store).active("tiny")
    assert pointer is not None and pointer.model_id == result["model_id"]
    assert AuditLog(store / "tiny" / "audit.jsonl").verify().ok
    assert (tmp_path / "work" / "runs" / "tiny" / "bare" / "report.md").is_file()


def test_format_table_pads_every_line_to_one_width() -> None:
    lines = format_table(
        ["a", "long header"], [[1, None], ["wide cell", 2.5]], right=[False, True]
    ).splitlines()
    assert len({len(line) for line in lines}) == 1
    assert lines[2].startswith("| 1 ") and "—" in lines[2]
