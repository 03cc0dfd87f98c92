"""Benchmark 4: Frechet distance at d = 2048, `cyclegan.metrics.fid` vs scipy.linalg.sqrtm.

The baseline is pytorch-fid's / TTUR's formula: mean and covariance with numpy, then
tr sqrt(S1 S2) by `scipy.linalg.sqrtm` (real part kept; without the deprecated `disp`
argument). Both start from the same float64 feature rows and are timed end to end. Features are
random but Inception-like: non-negative, correlated (a low-rank factor model plus noise), the
two sets drawn from slightly different distributions.
"""

from __future__ import annotations

import time

import numpy as np

from bench.common import Row, log

CASES = ((7000, 300), (5000, 5000))  # Kaggle: ~7000 photos vs 300 Monet; a balanced case
DIM = 2048


def features(n: int, shift: float, seed: int, dim: int = DIM) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(12345).normal(size=(128, dim)) / np.sqrt(128)
    z = rng.normal(size=(n, 128)) + shift
    x = z @ basis + 0.5 * rng.normal(size=(n, dim)) + 0.3
    return np.maximum(x, 0.0)


def sqrtm_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    from scipy import linalg

    mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = linalg.sqrtm(s1.dot(s2))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def run(reps: int, command: str) -> list[Row]:
    from cyclegan.metrics import fid

    rows = []
    for n1, n2 in CASES:
        f1, f2 = features(n1, 0.0, 1), features(n2, 0.15, 2)
        fns = {"project": fid, "sqrtm": sqrtm_fid}
        times = {name: [] for name in fns}
        values = {}
        for _ in range(reps):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                values[name] = fn(f1, f2)
                times[name].append(time.perf_counter() - t0)
        t_project, t_sqrtm = min(times["project"]), min(times["sqrtm"])
        rel = abs(values["project"] - values["sqrtm"]) / abs(values["sqrtm"])
        ratio = t_sqrtm / t_project
        log(
            f"frechet {n1} vs {n2}: project {t_project:.2f}s, sqrtm {t_sqrtm:.2f}s, "
            f"FID {values['project']:.6g} vs {values['sqrtm']:.6g} (rel. diff {rel:.1e})"
        )
        rows.append(
            Row(
                "frechet",
                f"{n1} vs {n2} features, d = {DIM}",
                "cyclegan.metrics.fid",
                t_project,
                "s",
                baseline=t_sqrtm,
                baseline_name="scipy.linalg.sqrtm FID",
                ratio=ratio,
                target=">= 10x at equal result",
                met=ratio >= 10 and rel < 1e-6,
                note=f"FID {values['project']:.6g} vs {values['sqrtm']:.6g}: relative difference "
                f"{rel:.1e}; best of {reps}",
                command=command,
            )
        )
    return rows
