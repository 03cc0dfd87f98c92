"""The benchmark harness itself (`python -m bench`): a tiny train run end to end.

32 px, one round: the numbers mean nothing here; what is checked is that the harness runs the
seed's step and the project's variants, checks their losses against each other, and writes
result files and a report where it is told to, never over the committed ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

from tests.conftest import REPO

COMMITTED = [*sorted((REPO / "bench" / "results").glob("*.json")), REPO / "docs" / "BENCHMARKS.md"]


def _digests():
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in COMMITTED if p.exists()}


def _bench(*args, out):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *args, "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_train_benchmark_measures_seed_and_project_and_writes_report_to_out(tmp_path):
    before = _digests()
    args = ["train", "--sizes", "32", "--rounds", "1", "--xla-sizes", "", "--ablation-sizes", ""]
    _bench(*args, out=tmp_path)
    _bench("report", out=tmp_path)

    result = json.loads((tmp_path / "train.json").read_text())
    rows = {r["variant"]: r for r in result["rows"] if r["bench"] == "train"}
    assert set(rows) == {"seed step, fp32 (baseline)", "project, fp32", "project, bf16"}
    seed = rows["seed step, fp32 (baseline)"]
    assert seed["case"] == "32 px, batch 1" and seed["unit"] == "img/s" and seed["value"] > 0
    for name in ("project, fp32", "project, bf16"):
        row = rows[name]
        assert row["value"] > 0 and row["baseline"] == seed["value"]
        assert abs(row["ratio"] - row["value"] / row["baseline"]) < 1e-9 * row["ratio"]
        assert row["met"] == (row["ratio"] >= (3 if "bf16" in name else 2))
        assert "page-faulted/step" in row["note"]
    (info,) = result["extra"]["sizes"]
    # the project's first step from the seed's weights gives the seed's losses
    assert max(info["loss_check"]["project, fp32"].values()) < 1e-5
    assert max(info["loss_check"]["project, bf16"].values()) < 5e-2
    assert info["flops_per_step"] > 0 and set(info["step_page_faults"]) == set(info["step_s"])
    peaks = {(r["case"], r["variant"]): r["value"] for r in result["rows"] if r["bench"] == "peak"}
    assert len(peaks) == 4 and all(v > 0 for v in peaks.values())

    report = (tmp_path / "BENCHMARKS.md").read_text()
    assert "| 32 px, batch 1 | project, fp32 |" in report
    assert "% of the fp32 peak)" in report  # GFLOP/s against the peak measured in the run
    assert "`python -m bench train --sizes 32 --xla-sizes '' --ablation-sizes '' --rounds 1`" in (
        report
    )
    assert _digests() == before, "--out must leave bench/results and docs/BENCHMARKS.md alone"


def test_allocator_finding_compares_the_tuned_run_with_the_default_one():
    from bench.report import _allocator_finding

    def result(bench, seed_s, fp32_s, bf16_s):
        rows = [
            {"bench": bench, "case": f"{size} px, batch 1", "variant": v, "value": 2 / t}
            for size, scale in ((64, 1.0), (128, 4.0))
            for v, t in (
                ("seed step, fp32 (baseline)", seed_s * scale),
                ("project, fp32", fp32_s * scale),
                ("project, bf16", bf16_s * scale),
            )
        ]
        return {"rows": [*rows, {"bench": "peak", "case": "4096x4096 matmul", "variant": "fp32"}]}

    line = _allocator_finding(
        result("train", 0.6, 0.25, 0.2), result("train_malloc_tuned", 0.5, 0.25, 0.25)
    )
    assert "changes by +20% / +20% (64 / 128 px)" in line  # seed: 0.6 s -> 0.5 s
    assert "the project's by -20% to +0%" in line  # bf16 0.2 -> 0.25 s, fp32 unchanged
    assert "fp32 2.00× / 2.00×; bf16 2.00× / 2.00×" in line  # 0.5 / 0.25, tuned vs tuned
