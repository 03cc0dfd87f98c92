"""Shared bits: timing, machine facts, result files, the markdown report."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _out() -> Path | None:
    """$BENCH_OUT, set by `--out`: trial runs and tests keep the committed results."""
    out = os.environ.get("BENCH_OUT")
    return Path(out) if out else None


def results_dir() -> Path:
    """bench/results, or $BENCH_OUT."""
    return _out() or REPO / "bench" / "results"


def report_path() -> Path:
    """docs/BENCHMARKS.md, or BENCHMARKS.md in $BENCH_OUT."""
    out = _out()
    return out / "BENCHMARKS.md" if out else REPO / "docs" / "BENCHMARKS.md"


def write_atomic(path: Path, text: str) -> None:
    """Whole file or the old one: a killed benchmark never leaves half a result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclasses.dataclass
class Row:
    """One line of the report: the project's number, the baseline's, their ratio."""

    bench: str  # train, input, frechet, preprocess, dvc, peak
    case: str  # e.g. "256 px, batch 1"
    variant: str  # what of the project is measured
    value: float | None  # the project's number
    unit: str
    baseline: float | None = None  # the baseline's number, same unit
    baseline_name: str = ""
    ratio: float | None = None  # value / baseline (or baseline / value for times)
    target: str = ""  # e.g. ">= 2x"
    met: bool | None = None
    note: str = ""
    command: str = ""


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def machine() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform()}
    try:
        with open("/proc/cpuinfo") as fh:
            cpuinfo = fh.read().splitlines()
        model = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
        flags = next(line for line in cpuinfo if line.startswith("flags")).split()
        info["cpu"] = f"{model[0]} x {len(model)}" if model else platform.processor()
        info["cpu_flags"] = [
            f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags
        ]
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    info["cores_usable"] = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    )
    try:
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
        info["gpus"] = [d.name for d in tf.config.list_physical_devices("GPU")]
    except ImportError:
        pass
    info["OPENBLAS_CORETYPE"] = os.environ.get("OPENBLAS_CORETYPE", "")
    info["malloc_env"] = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    return info


def command_line(args: list[str]) -> str:
    return "python -m bench " + " ".join(shlex.quote(a) for a in args)


def save(name: str, rows: list[Row], extra: dict | None = None) -> Path:
    path = results_dir() / f"{name}.json"
    payload = {
        "bench": name,
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "code": git_revision(),
        "rows": [dataclasses.asdict(r) for r in rows],
        "extra": extra or {},
    }
    write_atomic(path, json.dumps(payload, indent=1, default=float) + "\n")
    return path


def load_all() -> dict[str, dict]:
    out = {}
    for path in sorted(results_dir().glob("*.json")):
        if path.name.startswith("train_part_"):  # a per-size piece of a running train benchmark
            continue
        data = json.loads(path.read_text())
        out[data["bench"]] = data
    return out


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return rev + (" (+ uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def log(*parts) -> None:
    print("[bench]", *parts, file=sys.stderr, flush=True)


def fmt(x, digits=3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.{digits}g}"
