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


def candidate_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    """A faster exact route for n > d, offered for cyclegan.metrics.fid: covariances by syrk
    (one triangle, half a matmul), S1 = L L^T (Cholesky), tr sqrt(S1 S2) = sum of sqrt
    eigenvalues of the symmetric L^T S2 L (two triangular products), values only. For n <= d
    (300 Monet paintings) metrics.fid's SVD of the small cross product is already fast."""
    from scipy.linalg import blas, eigvalsh, lapack

    from cyclegan.metrics import fid

    x1, x2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    (n1, d), n2 = x1.shape, x2.shape[0]
    if min(n1, n2) <= d:
        return fid(f1, f2)
    mu1, mu2 = x1.mean(axis=0), x2.mean(axis=0)
    # (x - mu).T is Fortran-ordered: syrk reads it without a copy; lower triangles only
    s1 = blas.dsyrk(1.0 / (n1 - 1), (x1 - mu1).T, lower=1)
    s2 = blas.dsyrk(1.0 / (n2 - 1), (x2 - mu2).T, lower=1)
    chol, info = lapack.dpotrf(s1, lower=1, clean=1)
    if info != 0:  # S1 not positive definite: the general route
        return fid(f1, f2)
    s2 += np.tril(s2, -1).T
    m = blas.dtrmm(
        1.0, chol, blas.dtrmm(1.0, chol, s2, side=0, lower=1, trans_a=1), side=1, lower=1
    )
    eig = eigvalsh(m, lower=True, check_finite=False)
    diff = mu1 - mu2
    value = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.sqrt(np.clip(eig, 0, None)).sum()
    return float(max(value, 0.0))


def run(reps: int, command: str) -> list[Row]:
    from cyclegan.metrics import fid

    rows = []
    for n1, n2 in CASES:
        f1, f2 = features(n1, 0.0, 1), features(n2, 0.15, 2)
        fns = {"project": fid, "sqrtm": sqrtm_fid, "candidate": candidate_fid}
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
        if n1 > DIM and n2 > DIM:  # below d the candidate is metrics.fid itself
            t_cand = min(times["candidate"])
            rel_c = abs(values["candidate"] - values["sqrtm"]) / abs(values["sqrtm"])
            log(f"frechet {n1} vs {n2}: candidate {t_cand:.2f}s (rel. diff {rel_c:.1e})")
            rows.append(
                Row(
                    "frechet",
                    f"{n1} vs {n2} features, d = {DIM}",
                    "candidate for metrics.fid: syrk + Cholesky + eigvalsh (bench/frechet.py)",
                    t_cand,
                    "s",
                    baseline=t_sqrtm,
                    baseline_name="scipy.linalg.sqrtm FID",
                    ratio=t_sqrtm / t_cand,
                    note=f"FID {values['candidate']:.6g}: relative difference {rel_c:.1e}; "
                    f"not the project's code (cyclegan/metrics.py is another owner's)",
                    command=command,
                )
            )
    return rows
