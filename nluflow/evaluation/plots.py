"""Figures of one evaluation, as PNG files (matplotlib's object-oriented API; no pyplot, no display).

Figures grow with the number of intents and their fonts shrink to a readable floor, so a 77-intent test set
(Banking77) still shows every label. ``png_data_uri`` turns a file into a ``data:`` URI for markdown
artifacts.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap, ListedColormap, PowerNorm
from matplotlib.figure import Figure
from PIL import Image

from nluflow.evaluation.metrics import EvaluationResult

__all__ = ["FIGURES", "png_data_uri", "render_figures"]

logger = logging.getLogger(__name__)

DPI = 100
FIGURES: tuple[str, ...] = ("confusion_matrix", "pr_curve", "intent_f1", "confidence_hist")
_CORRECT = "#2a9d4b"
_WRONG = "#d1495b"
_THRESHOLD = "#333333"
# Label counts above which cell values are not written into the confusion matrix (they would not fit).
_ANNOTATE_MAX_LABELS = 25


def render_figures(result: EvaluationResult, outdir: Path, prefix: str = "") -> dict[str, Path]:
    """Write the four figures of ``result`` into ``outdir`` as ``<prefix><name>.png``; return name → path."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    painters: dict[str, Callable[[EvaluationResult], Figure]] = {
        "confusion_matrix": _confusion_matrix,
        "pr_curve": _pr_curve,
        "intent_f1": _intent_f1,
        "confidence_hist": _confidence_hist,
    }
    paths: dict[str, Path] = {}
    for name, paint in painters.items():
        path = outdir / f"{prefix}{name}.png"
        _save(paint(result), path)
        paths[name] = path
    logger.debug("rendered %d figures into %s", len(paths), outdir)
    return paths


def png_data_uri(path: Path) -> str:
    """``data:image/png;base64,...`` for an image that a markdown artifact can embed without a file server."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _save(fig: Figure, path: Path) -> None:
    canvas = FigureCanvasAgg(fig)
    raw = io.BytesIO()
    fig.savefig(raw, format="rgba", dpi=DPI)
    width, height = canvas.get_width_height(physical=True)
    # Plots use few colours: a 256-colour palette PNG is about 3x smaller than matplotlib's RGBA one and looks
    # the same (no dithering, so flat cells stay flat). Pillow is a dependency of matplotlib.
    image = Image.frombuffer("RGBA", (width, height), raw.getvalue(), "raw", "RGBA", 0, 1).convert("RGB")
    palette = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    tmp = path.with_name(path.name + ".tmp")
    palette.save(tmp, format="PNG", optimize=True)
    tmp.replace(path)


def _tick_fontsize(n_labels: int) -> float:
    return float(np.clip(11.0 - n_labels / 12.0, 7.0, 10.0))


def _confusion_matrix(result: EvaluationResult) -> Figure:
    labels = result.labels
    k = len(labels)
    counts = np.asarray(result.confusion, dtype=float).reshape(k, k)
    row_sums = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, row_sums, out=np.zeros_like(counts), where=row_sums > 0)
    fontsize = _tick_fontsize(k)
    longest = max((len(label) for label in labels), default=1)
    margin = 1.5 + longest * fontsize * 0.55 / 72.0  # room for the longest tick label, in inches
    cell = 0.42 if k <= _ANNOTATE_MAX_LABELS else 0.19
    side = max(6.0, k * cell + margin + 1.5)
    fig = Figure(figsize=(side + 1.0, side), dpi=DPI)
    ax = fig.add_subplot()
    # A square-root colour scale keeps a 2 % confusion visible next to a 95 % diagonal; zeros stay white.
    cmap = _blues()
    image = ax.imshow(
        np.ma.masked_equal(shares, 0.0),
        cmap=cmap,
        norm=PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0),
        interpolation="nearest",
        aspect="equal",
    )
    ax.set_xticks(np.arange(k), labels=labels, rotation=90, fontsize=fontsize)
    ax.set_yticks(np.arange(k), labels=labels, fontsize=fontsize)
    ax.set_xticks(np.arange(-0.5, k, 1.0), minor=True)
    ax.set_yticks(np.arange(-0.5, k, 1.0), minor=True)
    ax.grid(which="minor", color="#dddddd", linewidth=0.4)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("predicted intent", fontsize=fontsize + 2)
    ax.set_ylabel("true intent", fontsize=fontsize + 2)
    ax.set_title(
        f"Confusion matrix, normalised per true intent (row)\n"
        f"{result.n} test utterances, accuracy {result.accuracy:.3f}, macro F1 {result.macro_f1:.3f}",
        fontsize=fontsize + 3,
    )
    if k <= _ANNOTATE_MAX_LABELS:
        for i in range(k):
            for j in range(k):
                if counts[i, j] > 0:
                    ax.text(
                        j,
                        i,
                        f"{shares[i, j]:.0%}",
                        ha="center",
                        va="center",
                        fontsize=fontsize - 1,
                        color="white" if shares[i, j] > 0.5 else "black",
                    )
    bar = fig.colorbar(image, ax=ax, fraction=0.035, pad=0.02)
    bar.set_label("share of the true intent's utterances (white: none)", fontsize=fontsize + 1)
    bar.set_ticks([0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0])
    bar.ax.tick_params(labelsize=fontsize)
    fig.set_layout_engine("tight")
    return fig


def _blues() -> Colormap:
    # Blues without its near-white start, so that any non-zero cell is visibly blue; zeros (masked) are white.
    cmap = ListedColormap(colormaps["Blues"](np.linspace(0.18, 1.0, 256)), name="nluflow_blues")
    return cmap.with_extremes(bad="white")


def _threshold_point(result: EvaluationResult) -> tuple[float, float] | None:
    """(recall, precision) of the chosen threshold on the PR curve, if there is one."""
    if result.threshold is None or result.precision_at_threshold is None:
        return None
    correct = np.asarray([t == p for t, p in zip(result.y_true, result.y_pred, strict=True)])
    accepted = np.asarray(result.confidences) >= result.threshold
    n_correct = int(correct.sum())
    recall = float((correct & accepted).sum() / n_correct) if n_correct else 0.0
    return recall, result.precision_at_threshold


def _threshold_text(result: EvaluationResult) -> str:
    if result.threshold is None or result.precision_at_threshold is None:
        return f"no confidence threshold reaches precision {result.target_precision:.2f}"
    return (
        f"threshold {result.threshold:.3f}: precision {result.precision_at_threshold:.3f}, "
        f"coverage {result.coverage:.1%} of utterances"
    )


def _pr_curve(result: EvaluationResult) -> Figure:
    fig = Figure(figsize=(7.5, 6.0), dpi=DPI)
    ax = fig.add_subplot()
    ax.plot(
        result.pr_recall,
        result.pr_precision,
        drawstyle="steps-post",
        color="#1f5fa8",
        linewidth=1.8,
        label=f"top intent correct vs its confidence (average precision {result.pr_auc:.3f})",
    )
    ax.axhline(
        result.target_precision,
        color="#888888",
        linestyle="--",
        linewidth=1.0,
        label=f"target precision {result.target_precision:.2f}",
    )
    point = _threshold_point(result)
    if point is not None and result.threshold is not None:
        # The full numbers go into the legend, which matplotlib keeps clear of the curve.
        ax.plot(
            *point,
            marker="o",
            markersize=9,
            color=_WRONG,
            linestyle="none",
            zorder=5,
            label=_threshold_text(result),
        )
        ax.annotate(
            f"{result.threshold:.2f}",
            xy=point,
            xytext=(-12, -16),
            textcoords="offset points",
            ha="right",
            fontsize=9,
            color=_WRONG,
        )
    else:
        ax.plot([], [], " ", label=_threshold_text(result))
    low = min(min(result.pr_precision, default=0.0), result.target_precision)
    ax.set_ylim(max(0.0, low - 0.05), 1.01)
    ax.set_xlim(0.0, 1.01)
    ax.set_xlabel("recall: share of the correct predictions that are accepted")
    ax.set_ylabel("precision: share of accepted predictions that are correct")
    ax.set_title("Precision-recall of the top intent, by confidence threshold")
    ax.grid(color="#eeeeee")
    ax.legend(loc="best", fontsize=9, framealpha=0.95)
    fig.set_layout_engine("tight")
    return fig


def _intent_f1(result: EvaluationResult) -> Figure:
    f1 = result.intent_f1()
    support = {label: int(result.intent_report[label]["support"]) for label in f1}
    order = sorted(f1, key=lambda label: (f1[label], label))  # worst first
    k = len(order)
    fontsize = _tick_fontsize(k)
    longest = max((len(label) for label in order), default=1)
    height = max(4.0, 0.2 * k + 1.6)
    width = 6.0 + longest * fontsize * 0.55 / 72.0
    fig = Figure(figsize=(width, height), dpi=DPI)
    ax = fig.add_subplot()
    values = np.asarray([f1[label] for label in order])
    colours = [_WRONG if v < 0.7 else "#e9a23b" if v < 0.9 else _CORRECT for v in values]
    y = np.arange(k)
    ax.barh(y, values, color=colours, height=0.75)
    ax.set_yticks(y, labels=[f"{label} (n={support[label]})" for label in order], fontsize=fontsize)
    ax.invert_yaxis()  # worst at the top
    for yi, v in zip(y, values, strict=True):
        ax.text(min(v, 1.0) + 0.01, float(yi), f"{v:.2f}", va="center", fontsize=fontsize - 0.5)
    ax.axvline(
        result.macro_f1,
        color=_THRESHOLD,
        linestyle="--",
        linewidth=1.0,
        zorder=0.5,
    )
    ax.set_xlim(0.0, 1.1)
    ax.set_ylim(k - 0.5, -0.5)
    ax.set_xlabel("F1 on the test set (red < 0.70 ≤ amber < 0.90 ≤ green)")
    ax.set_title(
        f"F1 per intent, worst first ({k} intents)\ndashed line: macro F1 {result.macro_f1:.3f}", fontsize=12
    )
    ax.grid(axis="x", color="#eeeeee")
    ax.set_axisbelow(True)
    fig.set_layout_engine("tight")
    return fig


def _confidence_hist(result: EvaluationResult) -> Figure:
    conf = np.asarray(result.confidences, dtype=float)
    correct = np.asarray([t == p for t, p in zip(result.y_true, result.y_pred, strict=True)])
    lo, hi = min(0.0, float(conf.min())), max(1.0, float(conf.max()))
    bins = np.linspace(lo, hi, 41).tolist()
    fig = Figure(figsize=(8.0, 5.0), dpi=DPI)
    ax = fig.add_subplot()
    # Side-by-side bars per bin: overlaid ones would mix into a third colour.
    ax.hist(
        [conf[correct], conf[~correct]],
        bins=bins,
        color=[_CORRECT, _WRONG],
        label=[f"correct ({int(correct.sum())})", f"wrong ({int((~correct).sum())})"],
    )
    if result.threshold is not None:
        ax.axvline(
            result.threshold, color=_THRESHOLD, linestyle="--", linewidth=1.2, label=_threshold_text(result)
        )
    else:
        ax.plot([], [], " ", label=_threshold_text(result))
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_xlabel("confidence of the top intent")
    ax.set_ylabel("utterances (log scale)")
    ax.set_title("Confidence of correct and wrong predictions")
    ax.legend(loc="upper left", fontsize=9)
    ax.grid(color="#eeeeee")
    ax.set_axisbelow(True)
    fig.set_layout_engine("tight")
    return fig
