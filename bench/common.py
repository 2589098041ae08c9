"""What every benchmark shares: the datasets in ``data/`` (unpacked on first use), child processes with their
peak memory, plain-text tables, medians, and the JSON results with the machine they were measured on.

Benchmarks run from the repository root (``python -m bench.run_all``); results go to ``bench/results/``
(git-ignored). Nothing here is imported by ``nluflow``.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import lzma
import os
import platform
import runpy
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
DATA_DIR = REPO / "data"
DATASETS_ENV = "NLUFLOW_DATASETS"
PROGRESS_ENV = "NLUFLOW_BENCH_PROGRESS"
SCHEMA_VERSION = 1
_VERSIONED = ("nluflow", "prefect", "scikit-learn", "numpy", "scipy", "python-crfsuite")
_POLL_SECONDS = 0.05
_TAIL_CHARS = 2000
_PEAK_FLAG = "--write-peak"


class DatasetsMissing(RuntimeError):
    """The benchmark datasets are not where the benchmark looks for them."""


# ---------------------------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class DatasetSpec:
    """One benchmark dataset: its folder, training file and test files (label → file name)."""

    name: str
    train: str = "train.jsonl"
    tests: Mapping[str, str] = field(default_factory=lambda: {"test": "test.jsonl"})

    def train_path(self, root: Path) -> Path:
        return root / self.name / self.train

    def test_paths(self, root: Path) -> dict[str, Path]:
        return {label: root / self.name / file for label, file in self.tests.items()}

    def missing(self, root: Path) -> list[Path]:
        return [p for p in (self.train_path(root), *self.test_paths(root).values()) if not p.is_file()]


# The datasets of the accuracy table, vendored in data/ (each with its licence). rasa_demo is GPL-3.0 and is
# never copied into this repository: it is known by name so that ``--datasets rasa_demo`` works on a folder
# that holds it (NLUFLOW_DATASETS=/path/to/datasets), and is not in the default list.
DATASETS: tuple[DatasetSpec, ...] = (
    DatasetSpec("banking77"),
    DatasetSpec("hwu64"),
    DatasetSpec("snips2017"),
    DatasetSpec("rasa_financial_demo"),
)
EXTERNAL_DATASETS: tuple[DatasetSpec, ...] = (
    DatasetSpec("rasa_demo", tests={"test": "test.jsonl", "test_unseen": "test_unseen.jsonl"}),
)


def dataset_spec(name: str) -> DatasetSpec:
    for spec in (*DATASETS, *EXTERNAL_DATASETS):
        if spec.name == name:
            return spec
    known = ", ".join(s.name for s in (*DATASETS, *EXTERNAL_DATASETS))
    raise SystemExit(f"unknown dataset {name!r}; expected one of: {known}")


def unpack_datasets(dest: Path, source: Path = DATA_DIR) -> Path:
    """The vendored datasets as plain files: a copy of ``source`` under ``dest/<digest>/`` with every
    ``*.xz`` decompressed (``banking77/train.jsonl.xz`` → ``banking77/train.jsonl``; READMEs, ``raw/`` files
    as they are). ``<digest>`` hashes the archives, so an updated archive is never shadowed by an old copy,
    and a second call with the same ``dest`` reuses the first one's files. Raises :class:`DatasetsMissing`,
    naming ``source``, when it holds no ``*/*.jsonl.xz``."""
    archives = sorted(source.glob("*/*.jsonl.xz"))
    if not archives:
        raise DatasetsMissing(
            f"{source}: no <dataset>/*.jsonl.xz files; expected the datasets that travel with the repository "
            "(data/README.md lists them): this checkout is incomplete, nothing was run"
        )
    digest = hashlib.sha256()
    for archive in archives:
        digest.update(f"{archive.relative_to(source)}\0".encode())
        digest.update(archive.read_bytes())
    root = dest / digest.hexdigest()[:16]
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        rel = path.relative_to(source)
        target = root / (rel.with_suffix("") if path.suffix == ".xz" else rel)
        if target.is_file():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        with lzma.open(path) if path.suffix == ".xz" else path.open("rb") as src, partial.open("wb") as out:
            shutil.copyfileobj(src, out)
        os.replace(partial, target)  # atomic: a concurrent caller sees the whole file or none
    return root


def datasets_dir(env: Mapping[str, str] | None = None, cache: Path | None = None) -> Path:
    """``$NLUFLOW_DATASETS`` (a folder of ``<dataset>/*.jsonl``, e.g. one that also holds the GPL rasa_demo),
    else the vendored ``data/`` unpacked under ``cache`` (default ``bench/results/.datasets``, git-ignored).
    Raises :class:`DatasetsMissing` saying where it looked."""
    env = os.environ if env is None else env
    if env.get(DATASETS_ENV):
        given = Path(env[DATASETS_ENV]).expanduser().resolve()
        if given.is_dir() and any(given.glob("*/*.jsonl")):
            return given
        raise DatasetsMissing(
            f"{DATASETS_ENV}={given}: no <dataset>/*.jsonl files there; expected folders like "
            "banking77/train.jsonl (unset it to use the datasets in data/); no benchmark was run"
        )
    return unpack_datasets(cache or RESULTS_DIR / ".datasets")


# ---------------------------------------------------------------------------------------------- child runs


@dataclass(frozen=True)
class ChildResult:
    """A finished child process: exit code, wall time, peak resident memory, and its output.

    ``max_rss_mb`` is the child's own high-water mark (``VmHWM``, written by the child as it exits). The
    ``wait4`` figure is kept as ``wait4_max_rss_mb``: on Linux ``ru_maxrss`` of a child also counts the
    parent's resident memory at fork/exec time (the kernel carries the pre-exec high-water mark over), so
    it overstates a small child of a large parent. A child killed before it could write its figure (a
    timeout, the OOM killer) falls back to the ``wait4`` figure."""

    returncode: int
    wall_seconds: float
    max_rss_mb: float
    stdout: str
    stderr: str
    timed_out: bool = False
    wait4_max_rss_mb: float = 0.0
    peak_source: str = "VmHWM"

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def tail(self) -> str:
        text = (self.stderr.strip() or self.stdout.strip())[-_TAIL_CHARS:]
        return text or f"exit code {self.returncode}, no output"


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a benchmark child: the repository importable as ``bench``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONHASHSEED", "0")
    if extra:
        env.update(extra)
    return env


def run_child(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    cwd: Path = REPO,
    on_poll: Callable[[], None] | None = None,
) -> ChildResult:
    """Run ``python <args>`` (``-m module ...`` or ``-c code ...``) and account for it alone: its wall time
    and its own peak RSS (see :class:`ChildResult`), not the maximum over every child this process ever had
    as ``RUSAGE_CHILDREN`` gives. ``on_poll`` is called while the child runs (e.g. to relay progress)."""
    if not args or args[0] not in ("-m", "-c") or len(args) < 2:
        raise ValueError(f"run_child runs '-m module ...' or '-c code ...', got {list(args)[:2]}")
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.TemporaryDirectory(prefix="nluflow-peak-") as peak_dir,
    ):
        peak_file = Path(peak_dir) / "peak.json"
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.common", _PEAK_FLAG, str(peak_file), *args],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else child_env(),
            cwd=cwd,
        )
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            if timeout is not None and time.perf_counter() - started > timeout:
                proc.kill()  # our own child, by its pid
                timed_out = True
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            if on_poll is not None:
                on_poll()
            time.sleep(_POLL_SECONDS)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        out.seek(0)
        err.seek(0)
        wait4_mb = _rss_mb(usage.ru_maxrss)
        own = _read_peak(peak_file)
        return ChildResult(
            returncode=proc.returncode,
            wall_seconds=wall,
            max_rss_mb=own if own is not None else wait4_mb,
            wait4_max_rss_mb=wait4_mb,
            peak_source="VmHWM" if own is not None else "wait4 ru_maxrss (upper bound)",
            stdout=out.read().decode("utf-8", "replace"),
            stderr=err.read().decode("utf-8", "replace"),
            timed_out=timed_out,
        )


def _read_peak(path: Path) -> float | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("peak_rss_mb")
    except (OSError, ValueError):
        return None
    return float(value) if value is not None else None


def vm_hwm_mb() -> float | None:
    """This process's own resident high-water mark since its exec (``VmHWM`` in /proc; Linux only)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        return None
    return None


def _peak_main(argv: Sequence[str]) -> None:
    """``python -m bench.common --write-peak FILE -m module args...`` (or ``-c code args...``): run the
    module or code as ``__main__`` and write this process's peak RSS to FILE as it exits."""
    peak_file = Path(argv[1])
    mode, target, rest = argv[2], argv[3], list(argv[4:])

    def write_peak() -> None:
        peak = vm_hwm_mb()
        with contextlib.suppress(OSError):
            peak_file.write_text(json.dumps({"peak_rss_mb": peak}), encoding="utf-8")

    atexit.register(write_peak)
    if mode == "-m":
        sys.argv = [target, *rest]
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        sys.argv = ["-c", *rest]
        exec(compile(target, "<string>", "exec"), {"__name__": "__main__"})


def _rss_mb(ru_maxrss: int) -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    return ru_maxrss / (1024 * 1024) if sys.platform == "darwin" else ru_maxrss / 1024


def self_peak_rss_mb() -> float:
    """Peak RSS of this process so far (VmHWM where available, else ru_maxrss)."""
    import resource

    own = vm_hwm_mb()
    return own if own is not None else _rss_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


# ---------------------------------------------------------------------------------------------- numbers


def median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and count of a series of measurements (the noise shows in min..max)."""
    if not values:
        return {"n": 0, "median": None, "min": None, "max": None, "values": []}
    return {
        "n": len(values),
        "median": float(statistics.median(values)),
        "min": float(min(values)),
        "max": float(max(values)),
        "values": [float(v) for v in values],
    }


def pct(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{100 * x:.{digits}f} %"


def num(x: float | None, digits: int = 2, unit: str = "") -> str:
    return "—" if x is None else f"{x:.{digits}f}{unit}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[bool] = ()) -> str:
    """A GitHub-markdown table, padded so it also reads well in a terminal."""
    cells = [[str(h) for h in headers], *[["—" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = list(right) + [False] * (len(headers) - len(right))

    def line(row: Sequence[str]) -> str:
        parts = [c.rjust(w) if a else c.ljust(w) for c, w, a in zip(row, widths, align, strict=True)]
        return "| " + " | ".join(parts) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if a else ("-" * (w + 2)) for w, a in zip(widths, align, strict=True)
        )
        + "|"
    )
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


# ---------------------------------------------------------------------------------------------- results


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    commit = out.stdout.strip() or None
    return f"{commit}+dirty" if commit and dirty.stdout.strip() else commit


def machine_info() -> dict[str, Any]:
    """Where and with what a figure was measured; the load average tells how busy the box was."""
    versions: dict[str, str] = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "versions": versions,
        "commit": git_commit(),
    }
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        info["load_average"] = None
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * page_size / 2**30, 1)
    except (ValueError, OSError):
        info["memory_gib"] = None
    return info


def write_results(name: str, payload: Mapping[str, Any], results_dir: Path | None = None) -> Path:
    """Write ``<results_dir>/<name>.json`` with the machine info and a UTC timestamp added."""
    folder = results_dir or RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": name,
        "schema_version": SCHEMA_VERSION,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        **payload,
    }
    path = folder / f"{name}.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def say(message: str = "") -> None:
    """Progress lines of a benchmark (stderr, so a table on stdout stays clean); a child benchmark process
    with ``$NLUFLOW_BENCH_PROGRESS`` set appends them to that file, which its parent relays."""
    target = os.environ.get(PROGRESS_ENV)
    if target:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(message + "\n")
        return
    print(message, file=sys.stderr, flush=True)


class ProgressRelay:
    """Relays the lines a child appends to its progress file (an ``on_poll`` for :func:`run_child`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def __call__(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except FileNotFoundError:
            return
        complete = chunk[: chunk.rfind("\n") + 1]
        self._offset += len(complete.encode("utf-8"))
        for line in complete.splitlines():
            print(line, file=sys.stderr, flush=True)


if __name__ == "__main__" and len(sys.argv) >= 4 and sys.argv[1] == _PEAK_FLAG:
    _peak_main(sys.argv[1:])
