"""``make bench``: the accuracy table, the orchestration overhead and rerun figures, the scale sweep, then the
other engineers' benchmarks when present (``bench/serve_bench.py``, ``bench/sweep_bench.py``), in that order.

    python -m bench.run_all [--only accuracy,overhead,scale] [--reps 3] [--scale-budget-seconds 600]

Every table is printed as it is measured and once more at the end; results go to ``bench/results/*.json``
and the tables to ``bench/results/summary.md``. A benchmark that fails is reported and the others still run;
the exit code is then 1 (2 when the datasets are missing).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import accuracy, overhead, scale
from bench.common import REPO, RESULTS_DIR, DatasetsMissing, child_env, datasets_dir, say

STEPS = ("accuracy", "overhead", "scale")
OTHER_BENCHES = ("serve_bench", "sweep_bench")  # other engineers' modules, run as they are when present


def _accuracy(args: argparse.Namespace, results: Path) -> str:
    payload = accuracy.run(_csv(args.datasets), _csv(args.configs), results_dir=results)
    return accuracy.render(payload["rows"], list(payload["configs"]))


def _overhead(args: argparse.Namespace, results: Path) -> str:
    datasets = _csv(args.overhead_datasets) or list(overhead.DEFAULT_DATASETS)
    payload = overhead.run(datasets, args.reps, api_url=args.api_url, results_dir=results)
    return overhead.render(payload["summaries"])


def _scale(args: argparse.Namespace, results: Path) -> str:
    sizes = [int(s) for s in (_csv(args.scale_sizes) or [str(n) for n in scale.DEFAULT_SIZES])]
    payload = scale.run(sizes, args.scale_budget_seconds, results_dir=results)
    return scale.render(payload["points"], payload["summary"])


RUNNERS: dict[str, Callable[[argparse.Namespace, Path], str]] = {
    "accuracy": _accuracy,
    "overhead": _overhead,
    "scale": _scale,
}


def _other(name: str) -> str | None:
    """Run another engineer's benchmark module as it is (its own output streams through)."""
    if not (REPO / "bench" / f"{name}.py").is_file():
        return None
    say(f"\n== {name} (python -m bench.{name}) ==")
    done = subprocess.run([sys.executable, "-m", f"bench.{name}"], cwd=REPO, env=child_env(), check=False)
    return None if done.returncode == 0 else f"bench.{name} exited with code {done.returncode}"


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated subset of: " + ", ".join(STEPS + OTHER_BENCHES))
    parser.add_argument("--datasets", help="accuracy: datasets (default: the four in data/)")
    parser.add_argument("--configs", help="accuracy: configurations (default: all in CONFIGS)")
    parser.add_argument(
        "--overhead-datasets", help=f"overhead: datasets (default: {','.join(overhead.DEFAULT_DATASETS)})"
    )
    parser.add_argument("--reps", type=int, default=overhead.DEFAULT_REPS, help="overhead: repetitions")
    parser.add_argument("--api-url", default=None, help="overhead: a running Prefect API to use")
    parser.add_argument("--scale-sizes", help="scale: training set sizes")
    parser.add_argument("--scale-budget-seconds", type=float, default=scale.DEFAULT_BUDGET_SECONDS)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    chosen = _csv(args.only) or [*STEPS, *OTHER_BENCHES]
    unknown = sorted(set(chosen) - set(STEPS) - set(OTHER_BENCHES))
    if unknown:
        parser.error(
            f"unknown benchmark(s) {', '.join(unknown)}; expected: {', '.join(STEPS + OTHER_BENCHES)}"
        )
    try:
        datasets = datasets_dir()
    except DatasetsMissing as exc:
        say(f"bench: {exc}")
        return 2
    say(f"bench: datasets in {datasets}; results go to {args.results_dir}")

    tables: list[str] = []
    failures: list[str] = []
    for step in STEPS:
        if step not in chosen:
            continue
        say(f"\n== {step} ==")
        started = time.perf_counter()
        try:
            tables.append(RUNNERS[step](args, args.results_dir))
        except Exception as exc:  # one failing benchmark must not hide the others' figures
            traceback.print_exc()
            failures.append(f"{step}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        say(f"== {step} took {time.perf_counter() - started:.0f} s ==")
    for name in OTHER_BENCHES:
        if name in chosen:
            problem = _other(name)
            if problem:
                failures.append(problem)

    summary = "\n\n".join(["# nluflow benchmarks", *tables])
    if failures:
        summary += "\n\n## Failed\n\n" + "\n".join(f"- {f}" for f in failures)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "summary.md").write_text(summary + "\n", encoding="utf-8")
    print("\n" + summary, flush=True)
    say(f"bench: tables written to {args.results_dir / 'summary.md'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
