"""Benchmark 6: `dvc repro` on the sample data from a clean state, and the no-op rerun.

A temporary copy of the project (src/, dvc.yaml, params.yaml, .dvc/config) becomes a fresh
git + DVC repository; `dvc repro` runs every stage with the `cyclegan` command of this
environment (the editable install points at this checkout's src/, so the copy's src/ is only
what DVC hashes); then `dvc repro` again, which must find nothing to do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import REPO, Row, log

NOOP_TARGET_S = 10.0


def _run(cmd: list[str], cwd: Path, env: dict, timeout: float) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return dt, proc.stdout


def make_copy(root: Path, overrides: dict[str, object]) -> Path:
    repo = root / "repo"
    repo.mkdir()
    shutil.copytree(
        REPO / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    shutil.copy2(REPO / "dvc.yaml", repo / "dvc.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for dotted, value in overrides.items():
        node = params
        *parents, key = dotted.split(".")
        for part in parents:
            node = node[part]
        if key not in node:
            raise KeyError(f"params.yaml has no {dotted}")
        node[key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return repo


def run(timeout: float, overrides: dict[str, object], command: str) -> list[Row]:
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@localhost",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@localhost",
    }
    env.pop("MLFLOW_TRACKING_URI", None)  # the copy's own local mlflow.db
    dvc = str(bin_dir / "dvc")
    with tempfile.TemporaryDirectory(prefix="bench-dvc-") as tmp:
        repo = make_copy(Path(tmp), overrides)
        _run(["git", "init", "-q"], repo, env, 60)
        _run([dvc, "init", "-q"], repo, env, 120)
        shutil.copy2(REPO / ".dvc" / "config", repo / ".dvc" / "config")
        (repo / ".gitignore").write_text("/out/\n/mlflow.db\n/mlruns/\n/mlartifacts/\n")
        _run(["git", "add", "-A"], repo, env, 60)
        _run(["git", "commit", "-q", "-m", "bench copy"], repo, env, 60)
        log("dvc repro from a clean state ...")
        clean, _ = _run([dvc, "repro"], repo, env, timeout)
        log(f"dvc repro (clean): {clean:.1f}s; no-op rerun ...")
        noop, out = _run([dvc, "repro"], repo, env, 600)
        log(f"dvc repro (no-op): {noop:.1f}s")
        if "didn't change" not in out and "up to date" not in out.lower():
            log(f"warning: the rerun did not report every stage unchanged:\n{out[-2000:]}")
    shrunk = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "params.yaml as is"
    return [
        Row(
            "dvc",
            "sample data, clean state",
            "dvc repro (all 6 stages)",
            clean,
            "s",
            note=shrunk,
            command=command,
        ),
        Row(
            "dvc",
            "sample data, nothing changed",
            "dvc repro (no-op)",
            noop,
            "s",
            target=f"<= {NOOP_TARGET_S:.0f} s",
            met=noop <= NOOP_TARGET_S,
            command=command,
        ),
    ]
