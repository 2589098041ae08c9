"""Scale: training time and peak memory of the default local model as the training set grows (10k → 200k).

    python -m bench.scale [--sizes 10000,20000,50000,100000,200000] [--budget-seconds 600]

The training sets are built from the shared banking77, hwu64 and snips2017 training files: the first pass
over the (shuffled) pool takes the utterances as they are, every further pass perturbs them (words dropped,
neighbour words swapped; entity spans are kept whole and re-offset), so a larger set is a superset of a
smaller one.
Intents keep their dataset as a prefix (``banking77:card_arrival``). Each size is fitted in its own child
process; its peak RSS is the child's own high-water mark. Sizes whose predicted fit time would overrun the
time budget are skipped and listed as such. The plot goes to ``bench/results/scale.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import (
    RESULTS_DIR,
    DatasetsMissing,
    child_env,
    dataset_spec,
    datasets_dir,
    format_table,
    num,
    run_child,
    say,
    self_peak_rss_mb,
    write_results,
)
from nluflow.data.schema import Dataset, Entity, Example

DEFAULT_SIZES = (10_000, 20_000, 50_000, 100_000, 200_000)
PARTS = ("all", "intent")
SOURCES = ("banking77", "hwu64", "snips2017")
DEFAULT_BUDGET_SECONDS = 600.0
DROP_PROBABILITY = 0.1
SWAP_PROBABILITY = 0.1
MEMORY_LIMIT_GIB = 24.0
_GRACE_SECONDS = 120.0
_SEED = 7

Token = tuple[str, str | None]  # (text, entity type or None for a plain word)


# ---------------------------------------------------------------------------------------------- data


def _tokens(example: Example) -> list[Token] | None:
    """Plain words and whole entity spans, in order; None when spans overlap or fall outside the text."""
    spans = sorted(example.entities, key=lambda e: e.start)
    text = example.text
    out: list[Token] = []
    pos = 0
    for ent in spans:
        if ent.start < pos or ent.end > len(text) or ent.start >= ent.end:
            return None
        out += [(w, None) for w in text[pos : ent.start].split()]
        out.append((text[ent.start : ent.end], ent.entity))
        pos = ent.end
    out += [(w, None) for w in text[pos:].split()]
    return out


def perturb(example: Example, rng: random.Random) -> Example:
    """Drop and swap plain words (never inside an entity span); entity offsets are recomputed."""
    tokens = _tokens(example)
    if tokens is None or len(tokens) < 2:
        return example
    kept = [t for t in tokens if t[1] is not None or rng.random() >= DROP_PROBABILITY]
    if not kept:
        kept = tokens[:1]
    i = 0
    while i < len(kept) - 1:
        if kept[i][1] is None and kept[i + 1][1] is None and rng.random() < SWAP_PROBABILITY:
            kept[i], kept[i + 1] = kept[i + 1], kept[i]
            i += 2
        else:
            i += 1
    parts: list[str] = []
    entities: list[Entity] = []
    pos = 0
    for text, etype in kept:
        if parts:
            pos += 1  # the joining space
        if etype is not None:
            entities.append(Entity(start=pos, end=pos + len(text), entity=etype, value=text))
        parts.append(text)
        pos += len(text)
    return Example(text=" ".join(parts), intent=example.intent, entities=tuple(entities))


def scaled_dataset(pool: Sequence[Example], n: int, seed: int = _SEED) -> Dataset:
    """``n`` examples: the shuffled pool as it is, then perturbed copies pass after pass. The result for a
    smaller ``n`` is a prefix of the one for a larger ``n`` (same seed)."""
    if not pool:
        raise ValueError("scaled_dataset needs a non-empty pool of examples")
    rng = random.Random(seed)
    order = list(range(len(pool)))
    rng.shuffle(order)
    examples = [
        pool[order[i % len(pool)]] if i < len(pool) else perturb(pool[order[i % len(pool)]], rng)
        for i in range(n)
    ]
    return Dataset.of(examples, source=f"bench.scale:{n}")


def load_pool(root: Path, sources: Sequence[str] = SOURCES) -> list[Example]:
    """The training examples of ``sources``, intents prefixed with their dataset."""
    from nluflow.data.loaders import load_file

    pool: list[Example] = []
    for name in sources:
        for ex in load_file(dataset_spec(name).train_path(root)).examples:
            pool.append(ex.model_copy(update={"intent": f"{name}:{ex.intent}", "origin": None}))
    return pool


# ---------------------------------------------------------------------------------------------- one fit


def fit_one(path: Path, part: str = "all") -> dict[str, Any]:
    """Load a training file and fit the default model on it, in this process; the seconds of the intent
    classifier and of the entity CRF come from the model's own progress reports. ``part="intent"`` fits the
    intent classifier alone (to follow it further than the whole model gets in the time budget)."""
    from nluflow.backends.base import TrainingConfig
    from nluflow.data.loaders import load_file
    from nluflow.models.intent import IntentClassifier
    from nluflow.models.nlu import NLUModel

    config = TrainingConfig()
    started = time.perf_counter()
    data = load_file(path)
    load_seconds = time.perf_counter() - started
    marks: dict[str, float] = {}

    def progress(fraction: float, message: str) -> None:
        if message.startswith("entity CRF") and "crf_start" not in marks:
            marks["crf_start"] = time.perf_counter()

    started = time.perf_counter()
    if part == "intent":
        IntentClassifier.from_options(config.local, config.seed).fit(data.texts, data.intents)
    else:
        NLUModel(config.local, random_state=config.seed).fit(data, on_progress=progress)
    ended = time.perf_counter()
    crf_start = marks.get("crf_start", ended)
    return {
        "part": part,
        "n": len(data),
        "n_intents": len(data.intent_counts()),
        "n_entity_types": len(data.entity_types()),
        "n_with_entities": sum(1 for e in data.examples if e.entities),
        "load_seconds": load_seconds,
        "fit_seconds": ended - started,
        "intent_seconds": crf_start - started,
        "entity_seconds": None if part == "intent" else ended - crf_start,
        "peak_rss_mb": self_peak_rss_mb(),
    }


# ---------------------------------------------------------------------------------------------- the sweep


def growth_exponent(points: Sequence[dict[str, Any]], key: str) -> float | None:
    """``b`` in ``y ∝ n^b`` (least squares on logs); 1.0 is linear. None with fewer than two points."""
    xs = [math.log(p["n"]) for p in points if p.get(key)]
    ys = [math.log(p[key]) for p in points if p.get(key)]
    if len(xs) < 2 or max(xs) == min(xs):
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def predict_seconds(points: Sequence[dict[str, Any]], n: int) -> float | None:
    """Fit seconds expected at ``n`` from the measured points (never assumed better than linear)."""
    if not points:
        return None
    last = points[-1]
    b = max(1.0, growth_exponent(points, "fit_seconds") or 1.0)
    return float(last["child_wall_seconds"]) * float((n / last["n"]) ** b)


def measure(
    pool: Sequence[Example],
    sizes: Sequence[int],
    budget_seconds: float,
    workdir: Path,
    *,
    seed: int = _SEED,
    part: str = "all",
) -> list[dict[str, Any]]:
    """One child per size, smallest first, while the time budget lasts; skipped sizes say why."""
    points: list[dict[str, Any]] = []
    measured: list[dict[str, Any]] = []
    started = time.perf_counter()
    for n in sorted(sizes):
        elapsed = time.perf_counter() - started
        expected = predict_seconds(measured, n)
        if expected is not None and elapsed + expected > budget_seconds:
            points.append(
                {
                    "n": n,
                    "status": f"skipped: predicted {expected:.0f} s after {elapsed:.0f} s would exceed the "
                    f"{budget_seconds:.0f} s budget",
                }
            )
            say(f"scale: {n}: {points[-1]['status']}")
            continue
        path = workdir / f"scale-{n}.jsonl"
        scaled_dataset(pool, n, seed).write_jsonl(path)
        out = workdir / f"scale-{n}.json"
        say(f"scale: fitting {n} utterances ...")
        remaining = max(budget_seconds - elapsed, 0.0) + _GRACE_SECONDS
        child = run_child(
            ["-m", "bench.scale", "--child", "--part", part, "--data", str(path), "--out", str(out)],
            env=child_env(),
            timeout=remaining,
        )
        path.unlink(missing_ok=True)
        if not child.ok or not out.is_file():
            why = "timed out" if child.timed_out else f"exit {child.returncode}"
            points.append(
                {"n": n, "status": f"failed ({why}): {child.tail()}", "peak_rss_mb": child.max_rss_mb}
            )
            say(f"scale: {n}: failed ({why})")
            break
        point = {**json.loads(out.read_text(encoding="utf-8")), "status": "ok"}
        point["peak_rss_mb"] = child.max_rss_mb
        point["peak_source"] = child.peak_source
        point["child_wall_seconds"] = child.wall_seconds
        points.append(point)
        measured.append(point)
        say(f"scale: {n}: fit {point['fit_seconds']:.1f} s, peak {point['peak_rss_mb']:.0f} MB")
    return points


def scale_table(points: Sequence[dict[str, Any]]) -> str:
    body: list[list[Any]] = []
    first = next((p for p in points if p.get("status") == "ok"), None)
    for p in points:
        if p.get("status") != "ok":
            body.append([p["n"], p["status"].splitlines()[0][:120], "", "", "", "", "", ""])
            continue
        assert first is not None
        ratio_n = p["n"] / first["n"]
        body.append(
            [
                p["n"],
                num(p["fit_seconds"], 1),
                num(p["intent_seconds"], 1),
                num(p["entity_seconds"], 1),
                f"{p['fit_seconds'] / first['fit_seconds']:.2f}× for {ratio_n:.1f}× data",
                num(1e3 * p["fit_seconds"] / p["n"], 2),
                num(p["peak_rss_mb"], 0),
                f"{p['n_intents']} / {p['n_entity_types']}",
            ]
        )
    return format_table(
        [
            "utterances",
            "fit s",
            "intent s",
            "entity CRF s",
            "growth",
            "ms per utt",
            "peak MB",
            "intents / entity types",
        ],
        body,
        right=[True, True, True, True, True, True, True, False],
    )


def plot(points: Sequence[dict[str, Any]], path: Path, part: str = "all") -> Path:
    """Fit seconds and peak memory against utterances, each with the linear extrapolation of the smallest
    point as a dashed reference (matplotlib's object API; no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    ok = [p for p in points if p.get("status") == "ok"]
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax_t, ax_m = fig.subplots(1, 2)
    if ok:
        ns = [p["n"] for p in ok]
        x_max = max(p["n"] for p in points)
        ref_x = [ns[0], x_max]
        series = [("fit_seconds", "fit (total)", "o-")]
        if part == "all":
            series += [
                ("intent_seconds", "intent classifier", "s--"),
                ("entity_seconds", "entity CRF", "^--"),
            ]
        for key, label, style in series:
            ax_t.plot(ns, [p[key] for p in ok], style, label=label)
        t0 = ok[0]["fit_seconds"]
        ax_t.plot(
            ref_x,
            [t0, t0 * x_max / ns[0]],
            ":",
            color="grey",
            label="proportional to n (from the first point)",
        )
        ax_m.plot(ns, [p["peak_rss_mb"] / 1024 for p in ok], "o-", label="peak RSS")
        m0 = ok[0]["peak_rss_mb"] / 1024
        ax_m.plot(
            ref_x,
            [m0, m0 * x_max / ns[0]],
            ":",
            color="grey",
            label="proportional to n (from the first point)",
        )
        skipped = [p["n"] for p in points if p.get("status") != "ok"]
        if skipped:
            ax_t.set_title(f"Fit time (not measured: {', '.join(f'{n:,}' for n in skipped)})", fontsize=10)
        else:
            ax_t.set_title("Fit time", fontsize=10)
    for ax in (ax_t, ax_m):
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x / 1000:g}k"))
    ax_t.set_xlabel("training utterances")
    ax_t.set_ylabel("seconds")
    ax_t.legend(fontsize=8)
    ax_t.grid(alpha=0.3)
    ax_m.set_title(f"Peak memory of the fitting process (box: {MEMORY_LIMIT_GIB:.0f} GiB)", fontsize=10)
    ax_m.set_xlabel("training utterances")
    ax_m.set_ylabel("GiB")
    ax_m.legend(fontsize=8)
    ax_m.grid(alpha=0.3)
    what = "default local model" if part == "all" else "default intent classifier alone"
    fig.suptitle(f"nluflow {what}: scale (banking77 + hwu64 + snips2017, perturbed)", fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def summarize(points: Sequence[dict[str, Any]]) -> dict[str, Any]:
    ok = [p for p in points if p.get("status") == "ok"]
    peak = max((p["peak_rss_mb"] for p in ok), default=None)
    return {
        "measured_sizes": [p["n"] for p in ok],
        "not_measured": {p["n"]: p["status"] for p in points if p.get("status") != "ok"},
        "fit_growth_exponent": growth_exponent(ok, "fit_seconds"),
        "intent_growth_exponent": growth_exponent(ok, "intent_seconds"),
        "entity_growth_exponent": growth_exponent(ok, "entity_seconds"),
        "memory_growth_exponent": growth_exponent(ok, "peak_rss_mb"),
        "max_peak_rss_mb": peak,
        "out_of_memory": any("exit -9" in p.get("status", "") for p in points),
        "under_memory_limit": None if peak is None else peak < MEMORY_LIMIT_GIB * 1024,
    }


def render(points: Sequence[dict[str, Any]], summary: dict[str, Any], part: str = "all") -> str:
    exps = ", ".join(
        f"{label} n^{summary[key]:.2f}"
        for key, label in (
            ("fit_growth_exponent", "fit"),
            ("intent_growth_exponent", "intent"),
            ("entity_growth_exponent", "entity CRF"),
            ("memory_growth_exponent", "memory"),
        )
        if summary[key] is not None
    )
    return "\n\n".join(
        [
            "## Scale ("
            + ("default local model" if part == "all" else "intent classifier alone")
            + "; one child process per size)",
            scale_table(points),
            f"Growth (1.00 = linear): {exps or 'needs two measured sizes'}; highest peak "
            f"{num(summary['max_peak_rss_mb'], 0)} MB of {MEMORY_LIMIT_GIB:.0f} GiB.",
        ]
    )


# ---------------------------------------------------------------------------------------------- CLI


def run(
    sizes: Sequence[int] = DEFAULT_SIZES,
    budget_seconds: float = DEFAULT_BUDGET_SECONDS,
    *,
    results_dir: Path | None = None,
    pool: Sequence[Example] | None = None,
    part: str = "all",
) -> dict[str, Any]:
    """Build, fit, plot, print the table, write ``scale.json`` and ``scale.png``; returns the payload.
    ``pool`` replaces the shared datasets (tests use a tiny one)."""
    given = pool is not None
    if pool is None:
        pool = load_pool(datasets_dir())
    folder = results_dir or RESULTS_DIR
    with tempfile.TemporaryDirectory(prefix="nluflow-scale-") as tmp:
        points = measure(pool, sizes, budget_seconds, Path(tmp), part=part)
    summary = summarize(points)
    name = "scale" if part == "all" else f"scale-{part}"
    png = plot(points, folder / f"{name}.png", part)
    payload = {
        "part": part,
        "sources": "given pool" if given else list(SOURCES),
        "pool_size": len(pool),
        "budget_seconds": budget_seconds,
        "perturbation": {"drop": DROP_PROBABILITY, "swap": SWAP_PROBABILITY, "seed": _SEED},
        "points": points,
        "summary": summary,
        "plot": str(png),
    }
    path = write_results(name, payload, folder)
    print(render(points, summary, part), flush=True)
    say(f"scale: results written to {path}, plot {png}")
    return payload


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(str(n) for n in DEFAULT_SIZES))
    parser.add_argument("--budget-seconds", type=float, default=DEFAULT_BUDGET_SECONDS)
    parser.add_argument("--results-dir", type=Path, default=None)
    parser.add_argument(
        "--part",
        choices=PARTS,
        default="all",
        help="all: the whole model (default); intent: the intent classifier alone (writes scale-intent.*)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        Path(args.out).write_text(json.dumps(fit_one(Path(args.data), args.part)), encoding="utf-8")
        return 0
    try:
        run(
            [int(s) for s in args.sizes.split(",") if s.strip()],
            args.budget_seconds,
            results_dir=args.results_dir,
            part=args.part,
        )
    except DatasetsMissing as exc:
        say(f"scale: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
