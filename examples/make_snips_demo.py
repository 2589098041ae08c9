"""Rebuild examples/snips-demo from the Snips 2017 benchmark (CC0) vendored in data/snips2017.

The demo tells the story of a bot whose annotators keep sending batches:

- batch-1.jsonl: a first small batch (20 utterances per intent) — run 1 promotes the first model;
- batch-2.jsonl: a larger, clean batch (100 more per intent) — run 2 beats the active model and promotes;
- batch-3-mislabelled.jsonl: a batch in which an annotator filed 80 'SearchScreeningEvent' requests
  (movie times) under 'SearchCreativeWork' — run 3 trains on it, the per-intent guard catches the
  regression and the active model stays;
- test.jsonl: 50 utterances per intent from the benchmark's held-out set, the frozen test set;
- must-pass.jsonl: a few plain utterances (written for this demo) the bot must always get right.

Run: python examples/make_snips_demo.py [folder with train.jsonl[.xz] and test.jsonl[.xz]]
"""

from __future__ import annotations

import json
import lzma
import random
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent / "snips-demo"
SEED = 7
MUST_PASS = [
    ("add this song to my running playlist", "AddToPlaylist"),
    ("put the album thriller on my party playlist", "AddToPlaylist"),
    ("book a table for two at an italian restaurant tonight", "BookRestaurant"),
    ("reserve a restaurant for four people on friday", "BookRestaurant"),
    ("what will the weather be like in paris tomorrow", "GetWeather"),
    ("is it going to rain in boston this weekend", "GetWeather"),
    ("play some jazz music", "PlayMusic"),
    ("play the latest album by adele", "PlayMusic"),
    ("rate this novel five out of six stars", "RateBook"),
    ("give the current book a rating of 4", "RateBook"),
    ("find the tv series the wire", "SearchCreativeWork"),
    ("search for the video game called doom", "SearchCreativeWork"),
    ("what movies are playing at the nearest cinema", "SearchScreeningEvent"),
    ("show me the movie schedule for tonight", "SearchScreeningEvent"),
]


def read(path: Path) -> list[dict[str, object]]:
    """The rows of ``path``, or of ``path.xz`` (how data/ keeps them) when there is no plain file."""
    packed = path.with_name(path.name + ".xz")
    raw = path.read_bytes() if path.is_file() else lzma.decompress(packed.read_bytes())
    return [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]


def by_intent(rows: list[dict[str, object]]) -> dict[str, list[dict[str, object]]]:
    groups: dict[str, list[dict[str, object]]] = defaultdict(list)
    for row in rows:
        groups[str(row["intent"])].append(row)
    return dict(sorted(groups.items()))


def write(name: str, rows: list[dict[str, object]]) -> None:
    with open(HERE / name, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{name}: {len(rows)} utterances")


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "data/snips2017"
    rng = random.Random(SEED)
    train = by_intent(read(src / "train.jsonl"))
    test = by_intent(read(src / "test.jsonl"))
    for rows in (*train.values(), *test.values()):
        rng.shuffle(rows)
    write("batch-1.jsonl", [r for rows in train.values() for r in rows[:20]])
    write("batch-2.jsonl", [r for rows in train.values() for r in rows[20:120]])
    wrong = [dict(r, intent="SearchCreativeWork") for r in train["SearchScreeningEvent"][120:200]]
    write("batch-3-mislabelled.jsonl", wrong)
    write("test.jsonl", [r for rows in test.values() for r in rows[:50]])
    write("must-pass.jsonl", [{"text": t, "intent": i, "entities": []} for t, i in MUST_PASS])


if __name__ == "__main__":
    main()
