"""Evaluation metrics: Inception features, FID (exact and fast), KID, Kaggle's MiFID.

Numbers are comparable only when they come from the same feature extractor; every result
carries the extractor's id. Keras' InceptionV3 is *not* the TTUR/pytorch-fid/Kaggle graph, so
FIDs here compare with other runs of this project only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import socket
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

KERAS_INCEPTION_NOTOP = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
RANDOM_INIT_SEED = 0


# ---------------------------------------------------------------- statistics


NOT_FINITE = "features contain NaN/Inf; the extractor or the images are broken"


def _checked(features: np.ndarray) -> np.ndarray:
    x = np.asarray(features)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need a 2-D array of at least 2 feature rows, got shape {x.shape}")
    return x


def _centered(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, (rows - mean) / sqrt(N - 1)) in float64; one copy, centred and scaled in place."""
    x = np.array(_checked(features), dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError(NOT_FINITE)
    mu = x.mean(axis=0)
    x -= mu
    x *= 1.0 / np.sqrt(x.shape[0] - 1)
    return mu, x


def _eigen_route(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr sqrt(S1 S2) from the symmetric similar matrix sqrt(S1) S2 sqrt(S1); any PSD S1."""
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ sigma2 @ root1
    return _sum_sqrt(np.linalg.eigvalsh((m + m.T) * 0.5))


def _eigenvalues_of_product(a: np.ndarray, b: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """Eigenvalues of B A (lower triangles read) by LAPACK sygv type 3: Cholesky B = L L^T, the
    symmetric L^T A L, values only. LinAlgError when B is not positive definite."""
    from scipy.linalg import eigh

    return eigh(a, b, type=3, lower=True, eigvals_only=True, driver="gv", check_finite=False,
                overwrite_a=overwrite, overwrite_b=overwrite)  # fmt: skip


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, lower_only: bool = False) -> float:
    """tr sqrt(S1 S2) for symmetric PSD S1, S2, exactly, without scipy.linalg.sqrtm.

    The eigenvalues of S1 S2 are those of the symmetric L^T S2 L with S1 = L L^T (Cholesky):
    LAPACK's generalized eigensolver (sygv, type 3) does exactly that, values only, reading one
    triangle of each matrix. Negative round-off is clipped. If neither matrix is positive
    definite (dead features, duplicated rows), the eigen route through sqrt(S1) is used.
    `lower_only`: only the lower triangles hold data (covariances from syrk).
    """
    from scipy.linalg import LinAlgError

    for a, b in ((sigma2, sigma1), (sigma1, sigma2)):  # b must be positive definite
        try:
            return _sum_sqrt(_eigenvalues_of_product(a, b))
        except LinAlgError:
            continue
    if lower_only:
        sigma1 = np.tril(sigma1) + np.tril(sigma1, -1).T
        sigma2 = np.tril(sigma2) + np.tril(sigma2, -1).T
    return _eigen_route(sigma1, sigma2)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2), in float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2)
    value -= 2.0 * trace_sqrt_product(sigma1, sigma2)
    return float(max(value, 0.0))


ROW_BLOCK = 512  # rows centred at a time for the covariance (one 512 x d buffer, reused)


def _mean_and_covariance(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 mean and covariance (N - 1), lower triangle only: BLAS syrk (half a matrix
    product) accumulated over blocks of centred rows, so no centred copy of every row is made
    (fresh memory is what makes large calls slow and erratic: the kernel must fault it in)."""
    from scipy.linalg import blas

    x = _checked(features)
    n, d = x.shape
    mu = x.mean(axis=0, dtype=np.float64)
    block = np.empty((min(ROW_BLOCK, n), d))
    cov = None
    for start in range(0, n, ROW_BLOCK):
        rows = np.subtract(x[start : start + ROW_BLOCK], mu, out=block[: min(ROW_BLOCK, n - start)])
        if not np.isfinite(rows).all():
            raise ValueError(NOT_FINITE)
        if cov is None:
            cov = blas.dsyrk(1.0 / (n - 1), rows.T, lower=1)
        else:
            cov = blas.dsyrk(1.0 / (n - 1), rows.T, beta=1.0, c=cov, lower=1, overwrite_c=1)
    return mu, cov


def _sum_sqrt(eigenvalues: np.ndarray) -> float:
    return float(np.sqrt(np.clip(eigenvalues, 0, None)).sum())  # negative round-off clipped


def fid(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID of two feature sets (covariances with N-1), exact.

    With A_i the centred rows / sqrt(N_i - 1), S_i = A_i^T A_i, and the non-zero eigenvalues of
    S1 S2 are the squared singular values of A1 A2^T: tr sqrt(S1 S2) = nuclear norm of A1 A2^T.
    That is exact and cheap when a set has fewer images than dimensions (300 Monet paintings vs
    2048-d features); otherwise the covariances are formed (syrk over row blocks) and
    tr sqrt(S1 S2) comes from Cholesky + symmetric eigenvalues (`trace_sqrt_product`).
    """
    x1, x2 = _checked(features1), _checked(features2)
    if x1.shape[1] != x2.shape[1]:
        raise ValueError(f"feature sizes differ: {x1.shape[1]} vs {x2.shape[1]}")
    if min(len(x1), len(x2)) < x1.shape[1]:
        (mu1, a1), (mu2, a2) = _centered(x1), _centered(x2)
        traces = np.einsum("ij,ij->", a1, a1) + np.einsum("ij,ij->", a2, a2)
        cross = float(np.linalg.svd(a1 @ a2.T, compute_uv=False).sum())
    else:
        (mu1, s1), (mu2, s2) = _mean_and_covariance(x1), _mean_and_covariance(x2)
        traces = np.trace(s1) + np.trace(s2)
        cross = _trace_sqrt_of_own(s1, s2, x1, x2)
    diff = mu1 - mu2
    return float(max(diff @ diff + traces - 2.0 * cross, 0.0))


def _trace_sqrt_of_own(s1: np.ndarray, s2: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> float:
    """`trace_sqrt_product` of covariances just made from x1, x2: LAPACK may overwrite them (no
    copies of two d x d matrices). If S1 is not positive definite (dead features), they are
    made again and `trace_sqrt_product` tries the other order, then the general route."""
    from scipy.linalg import LinAlgError

    try:
        return _sum_sqrt(_eigenvalues_of_product(s2, s1, overwrite=True))
    except LinAlgError:
        s1, s2 = _mean_and_covariance(x1)[1], _mean_and_covariance(x2)[1]
        return trace_sqrt_product(s1, s2, lower_only=True)


def kid(features1, features2, n_subsets=100, subset_size=1000, seed=0) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD^2, kernel (x.y/d + 1)^3, mean and std over
    random subsets (torch-fidelity's defaults)."""
    x = np.asarray(features1, np.float64)
    y = np.asarray(features2, np.float64)
    d = x.shape[1]
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ValueError("KID needs at least 2 images per set")
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(n_subsets):
        xs = x[rng.choice(len(x), m, replace=False)]
        ys = y[rng.choice(len(y), m, replace=False)]
        kxx = (xs @ xs.T / d + 1) ** 3
        kyy = (ys @ ys.T / d + 1) ** 3
        kxy = (xs @ ys.T / d + 1) ** 3
        mmd = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        mmd += (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        mmd -= 2 * kxy.mean()
        scores.append(mmd)
    return float(np.mean(scores)), float(np.std(scores))


def memorization_distance(generated, real) -> float:
    """Kaggle's d: mean over generated rows of min over real rows of 1 - |cos|."""

    def normalise(f):
        f = np.asarray(f, np.float64)
        f = f[np.linalg.norm(f, axis=1) > 0]
        return f / np.linalg.norm(f, axis=1, keepdims=True)

    g, r = normalise(generated), normalise(real)
    return float(np.mean(np.min(1.0 - np.abs(g @ r.T), axis=1)))


def mifid(generated, real, epsilon: float = 0.1) -> float:
    """MiFID = FID / (d_thr + 1e-14), d_thr = d if d < epsilon else 1 (Kaggle's metric)."""
    d = memorization_distance(generated, real)
    d_thr = d if d < epsilon else 1.0
    return fid(generated, real) / (d_thr + 1e-14)


# ---------------------------------------------------------------- feature extractors


@dataclasses.dataclass
class FeatureExtractor:
    """A named function from [-1, 1] float images to feature rows."""

    name: str
    input_size: int
    model: Callable

    def features(self, batches: Iterable[np.ndarray], total: int | None = None,
                 desc: str = "features") -> np.ndarray:  # fmt: skip
        """Feature rows of all images in `batches`; a progress bar (`total` images) on a TTY."""
        import sys

        import tensorflow as tf
        from tqdm import tqdm

        out = []
        with tqdm(total=total, desc=desc, unit="img", leave=False,
                  disable=not sys.stderr.isatty()) as bar:  # fmt: skip
            for batch in batches:
                x = tf.convert_to_tensor(batch, tf.float32)
                x = tf.image.resize(x, [self.input_size] * 2, method="bilinear", antialias=True)
                out.append(np.asarray(self.model(tf.clip_by_value(x, -1.0, 1.0), training=False)))
                bar.update(len(batch))
        feats = np.concatenate(out).astype(np.float64)
        return feats.reshape(len(feats), -1)


def _online(host="storage.googleapis.com", port=443, timeout=3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def imagenet_weights_cached() -> bool:
    """Whether Keras already holds the ImageNet InceptionV3 (no-top) weights file."""
    import keras

    home = (
        Path(keras.config.keras_home())
        if hasattr(keras.config, "keras_home")
        else Path.home() / ".keras"
    )
    return (home / "models" / KERAS_INCEPTION_NOTOP).is_file()


def _file_id(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def load_extractor(name: str, weights: str, input_size: int) -> FeatureExtractor:
    """`inception_v3` with weights `auto` | `imagenet` | a weights file, or a `.keras` model."""
    import keras

    if name != "inception_v3":
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(
                f"evaluate.extractor '{name}' is neither 'inception_v3' nor an existing .keras file"
            )
        model = keras.saving.load_model(path, compile=False)
        return FeatureExtractor(f"keras:{path.name}:{_file_id(path)}", input_size, model)

    shape = (input_size, input_size, 3)
    if weights == "auto":
        weights = "imagenet" if imagenet_weights_cached() or _online() else "random"
        if weights == "random":
            warnings.warn(
                "ImageNet InceptionV3 weights are neither cached nor downloadable: using a "
                f"seeded random-init InceptionV3 (seed {RANDOM_INIT_SEED}). Its FIDs compare "
                "only with FIDs from the same extractor.",
                stacklevel=2,
            )
    if weights == "imagenet":
        model = keras.applications.InceptionV3(
            include_top=False, pooling="avg", weights="imagenet", input_shape=shape
        )
        return FeatureExtractor("inception_v3:imagenet", input_size, model)
    if weights == "random":
        keras.utils.set_random_seed(RANDOM_INIT_SEED)
        model = keras.applications.InceptionV3(
            include_top=False, pooling="avg", weights=None, input_shape=shape
        )
        return FeatureExtractor(
            f"inception_v3:random-init(seed={RANDOM_INIT_SEED})", input_size, model
        )
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"evaluate.inception_weights '{weights}' is not auto, imagenet, or an existing file"
        )
    model = keras.applications.InceptionV3(
        include_top=False, pooling="avg", weights=str(path), input_shape=shape
    )
    return FeatureExtractor(f"inception_v3:file:{_file_id(path)}", input_size, model)
