"""Memory: peak RSS and time of loading one large data file (JSONL by default), as the file grows.

    python -m bench.memory [--sizes-mb 14,28,56,112] [--format jsonl|csv|json|yml]

Each file is generated in a temporary folder (shared-format rows with one entity each, ~110 bytes a row, a
mix of ASCII and non-ASCII text) and loaded with ``nluflow.data.loaders.load_file`` in its own child process,
whose peak RSS is its own high-water mark (``ru_maxrss``). ``baseline MB`` is the peak of a child that only
imports the loaders, so ``load MB`` = peak - baseline is what the load itself cost. The loaded dataset has to
live in memory (it is the result), so the useful figure is ``load MB`` against the file size: flat ratios
mean memory grows linearly with the input, and a small ratio means no raw text, parsed dicts or copies are
held beside the examples.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.common import format_table, say

DEFAULT_SIZES_MB = (14, 28, 56, 112)
_WORDS = ("play", "some", "music", "by", "queen", "in", "the", "kitchen", "wake", "me", "up", "at", "seven")
_CITIES = ("paris", "berlin", "zürich", "kraków", "são paulo", "tokyo", "oslo")

_CHILD = """
import json, resource, sys, time
from nluflow.data.loaders import load_file
if sys.argv[1] != "-":
    started = time.perf_counter()
    dataset = load_file(sys.argv[1])
    seconds = time.perf_counter() - started
    examples = len(dataset.examples)
else:
    seconds, examples = 0.0, 0
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
print(json.dumps({"seconds": seconds, "examples": examples, "peak_mb": peak_kib / 1024}))
"""


def _row(rng: random.Random) -> dict[str, object]:
    words = rng.sample(_WORDS, 6)
    city = rng.choice(_CITIES)
    text = " ".join(words) + " in " + city
    start = len(text) - len(city)
    return {
        "text": text,
        "intent": rng.choice(("play_music", "set_alarm", "weather")),
        "entities": [{"start": start, "end": len(text), "entity": "city", "value": city}],
    }


def write_file(path: Path, size_mb: float, fmt: str, seed: int = 7) -> int:
    """Write about ``size_mb`` MB of rows to ``path`` in ``fmt``; returns the number of rows."""
    rng = random.Random(seed)
    target = int(size_mb * 1_000_000)
    written = rows = 0
    with path.open("w", encoding="utf-8", newline="") as out:
        if fmt == "csv":
            written += out.write("text,intent,entities\n")
        elif fmt == "json":
            written += out.write("[\n")
        elif fmt == "yml":
            written += out.write("nlu:\n")
        while written < target:
            row = _row(rng)
            if fmt == "jsonl":
                line = json.dumps(row, ensure_ascii=False) + "\n"
            elif fmt == "csv":
                cell = json.dumps(row["entities"], ensure_ascii=False).replace('"', '""')
                line = f'{row["text"]},{row["intent"]},"{cell}"\n'
            elif fmt == "yml":  # one intent item per 50 rows, each example with an inline annotation
                text, city = str(row["text"]), str(row["entities"][0]["value"])  # type: ignore[index]
                head = f"- intent: {row['intent']}\n  examples: |\n" if rows % 50 == 0 else ""
                line = f"{head}    - {text[: -len(city)]}[{city}](city)\n"
            else:
                line = ("," if rows else "") + json.dumps(row, ensure_ascii=False) + "\n"
            written += out.write(line)
            rows += 1
        if fmt == "json":
            out.write("]\n")
    return rows


def measure(path: Path | None) -> dict[str, float]:
    """Load ``path`` (or nothing, for the baseline) in a child process; its time and peak RSS."""
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path) if path is not None else "-"],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", default=",".join(map(str, DEFAULT_SIZES_MB)))
    parser.add_argument("--format", default="jsonl", choices=("jsonl", "csv", "json", "yml"))
    args = parser.parse_args(argv)
    sizes = [float(s) for s in args.sizes_mb.split(",") if s.strip()]
    baseline = measure(None)["peak_mb"]
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="nluflow-bench-memory-") as tmp:
        for size in sizes:
            path = Path(tmp) / f"data.{args.format}"
            n = write_file(path, size, args.format)
            file_mb = path.stat().st_size / 1_000_000
            say(f"{args.format} {file_mb:.1f} MB ({n} rows): loading…")
            got = measure(path)
            path.unlink()
            load = got["peak_mb"] - baseline
            rows.append(
                [
                    f"{file_mb:.1f}",
                    f"{n:,}",
                    f"{got['seconds']:.1f}",
                    f"{got['peak_mb']:.0f}",
                    f"{load:.0f}",
                    f"{load / file_mb:.1f}",
                ]
            )
    print(f"loading one {args.format} file; baseline (imports only) {baseline:.0f} MB peak RSS")
    print(
        format_table(
            ["file MB", "rows", "seconds", "peak MB", "load MB", "load MB per file MB"],
            rows,
            right=[True] * 6,
        )
    )


if __name__ == "__main__":
    main()
