"""Figures: four valid PNGs of sensible size, readable for 77 intents, rendered without pyplot."""

from __future__ import annotations

import base64
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nluflow.backends.base import IntentScore, Parse
from nluflow.data.schema import Dataset, Example
from nluflow.evaluation import EvaluationResult, evaluate, png_data_uri, render_figures

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[3]
WORDS = [
    "card",
    "payment",
    "not",
    "recognised",
    "balance",
    "updated",
    "after",
    "cheque",
    "or",
    "cash",
    "top_up",
]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    with Image.open(path) as image:
        image.verify()  # checks chunk CRCs; raises on a truncated or corrupt file
    return int(width), int(height)


@pytest.fixture(scope="module")
def banking77_like() -> EvaluationResult:
    """77 intents with Banking77-like long names, 3,080 utterances, ~90 % accuracy, realistic confidences."""
    rng = np.random.default_rng(0)
    labels = sorted("_".join(rng.choice(WORDS, size=int(rng.integers(2, 7)))) + f"_{i}" for i in range(77))
    y_true = [labels[i % 77] for i in range(3080)]
    test = Dataset.of(Example(text=f"utterance {i}", intent=t) for i, t in enumerate(y_true))
    parses = []
    for i, t in enumerate(y_true):
        ok = rng.random() < 0.9
        name = t if ok else labels[int(rng.integers(77))]
        conf = float(rng.beta(8, 1.5) if ok else rng.beta(3, 3))
        parses.append(Parse(text=f"utterance {i}", intent=IntentScore(name=name, confidence=conf)))
    return evaluate(test, parses)


@pytest.mark.slow
def test_banking77_sized_figures_are_valid_readable_pngs(
    banking77_like: EvaluationResult, tmp_path: Path
) -> None:
    paths = render_figures(banking77_like, tmp_path)
    assert set(paths) == {"confusion_matrix", "pr_curve", "intent_f1", "confidence_hist"}
    sizes = {}
    for name, path in paths.items():
        assert path == tmp_path / f"{name}.png" and path.exists()
        sizes[name] = _png_size(path)
        assert 5_000 < path.stat().st_size < 400_000, f"{name}: {path.stat().st_size} bytes"
    # The confusion matrix grows with the labels: at least ~15 px per cell, so 77 tick labels do not overlap.
    width, height = sizes["confusion_matrix"]
    assert width >= 77 * 15 and height >= 77 * 15
    # The per-intent bars get a row each, however many intents there are.
    assert sizes["intent_f1"][1] >= 77 * 15
    assert sizes["pr_curve"][0] < 1200 and sizes["confidence_hist"][0] < 1200
    assert not list(tmp_path.glob("*.tmp")), "temporary files left behind"


def test_small_and_degenerate_cases_render(tmp_path: Path) -> None:
    # Everything wrong: no threshold reaches the target, the PR curve is degenerate.
    test = Dataset.of(Example(text=f"u{i}", intent=i_) for i, i_ in enumerate(["a", "b", "c", "c"]))
    parses = [
        Parse(text=f"u{i}", intent=IntentScore(name=p, confidence=c))
        for i, (p, c) in enumerate([("b", 0.9), ("c", 0.4), ("a", 0.5), ("a", 0.5)])
    ]
    result = evaluate(test, parses)
    assert result.threshold is None
    paths = render_figures(result, tmp_path / "figs", prefix="candidate-")
    assert sorted(p.name for p in paths.values()) == [
        "candidate-confidence_hist.png",
        "candidate-confusion_matrix.png",
        "candidate-intent_f1.png",
        "candidate-pr_curve.png",
    ]
    for path in paths.values():
        width, height = _png_size(path)
        assert width >= 400 and height >= 300


def test_png_data_uri_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    Image.new("RGB", (2, 2), "white").save(path)
    uri = png_data_uri(path)
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == path.read_bytes()


@pytest.mark.slow
def test_rendering_uses_neither_pyplot_nor_prefect(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from nluflow.backends.base import IntentScore, Parse\n"
        "from nluflow.data.schema import Dataset, Example\n"
        "from nluflow.evaluation import evaluate, render_figures\n"
        "t = Dataset.of([Example(text='x', intent='a'), Example(text='y', intent='b')])\n"
        "p = [Parse(text='x', intent=IntentScore(name='a', confidence=0.9)),\n"
        "     Parse(text='y', intent=IntentScore(name='a', confidence=0.6))]\n"
        f"render_figures(evaluate(t, p), Path({str(tmp_path)!r}))\n"
        "bad = sorted(m for m in sys.modules if m == 'matplotlib.pyplot' or m.split('.')[0] == 'prefect')\n"
        "assert not bad, bad\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    env.pop("MPLBACKEND", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(list(tmp_path.glob("*.png"))) == 4
