"""FID, KID and MiFID against closed forms and direct transcriptions of their definitions."""

import numpy as np
import pytest
import scipy.linalg

from cyclegan.metrics import (
    ROW_BLOCK,
    fid,
    frechet_distance,
    kid,
    memorization_distance,
    mifid,
)


def sqrtm_reference(f1, f2):
    """pytorch-fid/TTUR's formula with scipy.linalg.sqrtm, as the reference."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_distance_of_gaussians_equals_the_closed_form():
    # Commuting covariances: tr sqrt(S1 S2) = sum sqrt(a_i b_i).
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    a, b = rng.uniform(0.5, 3, 6), rng.uniform(0.5, 3, 6)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    expected = ((mu1 - mu2) ** 2).sum() + (a + b - 2 * np.sqrt(a * b)).sum()
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)


def test_fid_of_samples_converges_to_the_gaussians_fid():
    rng = np.random.default_rng(1)
    f1 = rng.normal(0.0, 1.0, (20000, 4))
    f2 = rng.normal(0.5, 2.0, (20000, 4))
    expected = 4 * 0.5**2 + 4 * (1 + 4 - 2 * 2)  # mu term + per-dim (1 + 4 - 2*sqrt(4))
    assert fid(f1, f2) == pytest.approx(expected, rel=0.03)


def test_fid_equals_the_sqrtm_reference_on_full_rank_features():
    rng = np.random.default_rng(2)
    d = 64
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    f1 = rng.normal(size=(1300, d)) @ mix + 3.0  # > ROW_BLOCK rows: blocks, one partial
    f2 = rng.normal(size=(400, d)) @ mix * 1.3 + 0.2
    before = f1.copy(), f2.copy()
    assert 2 * ROW_BLOCK < len(f1) < 3 * ROW_BLOCK
    assert fid(f1, f2) == pytest.approx(sqrtm_reference(f1, f2), rel=1e-6)
    assert fid(f2, f1) == pytest.approx(fid(f1, f2), rel=1e-9)
    assert fid(f1, f1) == pytest.approx(0.0, abs=1e-8)
    np.testing.assert_array_equal(f1, before[0])  # inputs untouched
    np.testing.assert_array_equal(f2, before[1])
    assert fid(f1.astype(np.float32), f2) == pytest.approx(
        sqrtm_reference(f1.astype(np.float32).astype(np.float64), f2), rel=1e-6
    )  # float32 features (what extractors give) are computed in float64


def test_fid_with_dead_features_more_images_than_dims_equals_the_reference():
    # Inception pool features can have channels that are always 0 (dead ReLUs): a covariance
    # is then singular even with more images than dimensions, and Cholesky of it fails.
    rng = np.random.default_rng(5)
    d = 48
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    f1 = rng.normal(size=(300, d)) @ mix
    f2 = rng.normal(size=(250, d)) @ mix * 0.8 - 0.1
    f1[:, 3] = 0.0  # S1 singular, S2 positive definite
    assert fid(f1, f2) == pytest.approx(sqrtm_reference(f1, f2), rel=1e-6)
    assert fid(f2, f1) == pytest.approx(sqrtm_reference(f1, f2), rel=1e-6)
    f2[:, 3] = 0.25  # both singular: the dead column only adds its mean difference
    live = np.arange(d) != 3
    expected = sqrtm_reference(f1[:, live], f2[:, live]) + 0.25**2
    assert fid(f1, f2) == pytest.approx(expected, rel=1e-6)


def test_fid_rank_deficient_like_300_monet_vs_2048_dims_is_finite_and_close():
    rng = np.random.default_rng(3)
    d = 2048
    f1 = rng.normal(size=(300, d))  # covariance rank 299
    f2 = rng.normal(size=(1000, d)) * 1.1 + 0.05
    ours = fid(f1, f2)
    assert np.isfinite(ours)
    assert ours == pytest.approx(sqrtm_reference(f1, f2), rel=1e-4)


def test_kid_matches_a_direct_transcription():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(60, 8)), rng.normal(0.3, 1, (50, 8))
    m, d = 40, 8

    def direct(xs, ys):
        k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
        kxx, kyy, kxy = k(xs, xs), k(ys, ys), k(xs, ys)
        off = lambda mtx: (mtx.sum() - np.trace(mtx)) / (m * (m - 1))  # noqa: E731
        return off(kxx) + off(kyy) - 2 * kxy.mean()

    rs = np.random.default_rng(7)
    expected = []
    for _ in range(10):
        xs = x[rs.choice(len(x), m, replace=False)]
        ys = y[rs.choice(len(y), m, replace=False)]
        expected.append(direct(xs, ys))
    mean, std = kid(x, y, n_subsets=10, subset_size=m, seed=7)
    assert mean == pytest.approx(np.mean(expected), rel=1e-10)
    assert std == pytest.approx(np.std(expected), rel=1e-10)


def test_mifid_matches_kaggles_definition():
    rng = np.random.default_rng(5)
    real = rng.normal(size=(80, 16))
    gen = rng.normal(size=(40, 16))
    gen[0] = 0.0  # all-zero rows are dropped from the memorization term
    g = gen[np.linalg.norm(gen, axis=1) > 0]
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    rn = real / np.linalg.norm(real, axis=1, keepdims=True)
    d = np.mean([min(1 - abs(gi @ rj) for rj in rn) for gi in gn])
    assert memorization_distance(gen, real) == pytest.approx(d, rel=1e-12)
    d_thr = d if d < 0.1 else 1.0
    assert mifid(gen, real) == pytest.approx(fid(gen, real) / (d_thr + 1e-14), rel=1e-12)


def test_mifid_punishes_memorised_copies():
    rng = np.random.default_rng(6)
    real = rng.normal(size=(100, 16))
    copies = real[:50] + rng.normal(scale=1e-3, size=(50, 16))
    assert memorization_distance(copies, real) < 0.1
    assert mifid(copies, real) > 10 * fid(copies, real)


def test_nan_features_are_refused():
    bad = np.ones((5, 3))
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fid(bad, np.ones((5, 3)))
