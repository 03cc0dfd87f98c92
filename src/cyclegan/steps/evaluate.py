"""Evaluate step: translate held-out photos with G; FID/KID/MiFID against the paintings, the
baseline FID(photos, paintings), and a sample grid PNG."""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

import numpy as np

from cyclegan.config import Config
from cyclegan.storage import atomic_path, read_manifest, write_json

METRICS_JSON = "metrics.json"
GRID_PNG = "grid.png"


@dataclasses.dataclass
class EvaluateResult:
    metrics: dict
    out_dir: Path


def load_generators(train_dir: str | Path):
    """(G, F, export manifest) from the train step's export directory."""
    import keras

    import cyclegan.model.layers  # noqa: F401  (registers the custom layers)

    export = Path(train_dir) / "export"
    manifest = read_manifest(export, "train")
    G = keras.saving.load_model(export / "G.keras", compile=False)
    F = keras.saving.load_model(export / "F.keras", compile=False)
    return G, F, manifest


def _translate(model, images: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate(
        [np.asarray(model(images[i : i + batch_size], training=False))
         for i in range(0, len(images), batch_size)]
    )  # fmt: skip


def to_uint8(images: np.ndarray) -> np.ndarray:
    return np.clip((np.asarray(images) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def sample_grid(rows: list[list[np.ndarray]]) -> np.ndarray:
    """Stack rows of equally sized [-1, 1] images into one uint8 picture, 2 px gutters."""
    h, w = rows[0][0].shape[:2]
    gap = 2
    n_cols = max(len(r) for r in rows)
    canvas = np.full(((h + gap) * len(rows) - gap, (w + gap) * n_cols - gap, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            canvas[i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = to_uint8(
                image
            )
    return canvas


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def run(cfg: Config, data_dir: str | Path, train_dir: str | Path, out_dir: str | Path,
        extractor=None) -> EvaluateResult:  # fmt: skip
    """`extractor`: a FeatureExtractor to use instead of the one params name (tests)."""
    from PIL import Image

    from cyclegan.data.pipeline import eval_images
    from cyclegan.metrics import fid, kid, load_extractor, mifid
    from cyclegan.steps.preprocess import shard_files

    ecfg = cfg.evaluate
    G, F, train_manifest = load_generators(train_dir)
    image_size = int(train_manifest["image_size"])
    photo_files, n_photo = shard_files(data_dir, "photo", "test")
    monet_files = sum((shard_files(data_dir, "monet", s)[0] for s in ("train", "test")), [])
    if n_photo < 2:
        raise ValueError(
            f"'{data_dir}' holds {n_photo} held-out photos; FID needs at least 2 "
            f"(raise preprocess.test_fraction or add photos)"
        )
    photos = np.concatenate(
        list(eval_images(photo_files, image_size, ecfg.batch_size).as_numpy_iterator())
    )
    paintings = np.concatenate(
        list(eval_images(monet_files, image_size, ecfg.batch_size).as_numpy_iterator())
    )
    generated = _translate(G, photos, ecfg.batch_size)

    extractor = extractor or load_extractor(ecfg.extractor, ecfg.inception_weights, ecfg.input_size)

    def feats(images):
        return extractor.features(
            images[i : i + ecfg.batch_size] for i in range(0, len(images), ecfg.batch_size)
        )

    f_photo, f_gen, f_paint = feats(photos), feats(generated), feats(paintings)
    dims = f_gen.shape[1]
    notes = []
    if min(len(f_gen), len(f_paint)) < dims:
        notes.append(
            f"FID from {len(f_gen)} generated and {len(f_paint)} real images with {dims}-d "
            f"features is biased upward: compare only runs with the same image counts"
        )
        warnings.warn(notes[-1], stacklevel=2)
    fid_value = fid(f_gen, f_paint)
    baseline = fid(f_photo, f_paint)
    kid_mean, kid_std = kid(f_gen, f_paint, ecfg.kid_subsets, ecfg.kid_subset_size)
    metrics = {
        "fid": _finite_or_none(fid_value),
        "fid_baseline_photos": _finite_or_none(baseline),
        "fid_ratio": _finite_or_none(fid_value / baseline) if baseline > 0 else None,
        "kid_mean": _finite_or_none(kid_mean),
        "kid_std": _finite_or_none(kid_std),
        "mifid": _finite_or_none(mifid(f_gen, f_paint)),
        "n_generated": len(f_gen),
        "n_paintings": len(f_paint),
        "extractor": extractor.name,
        "train_steps": int(train_manifest["steps"]),
        "notes": notes,
    }
    if metrics["fid"] is None:
        raise RuntimeError("FID came out NaN/Inf; the generator output is broken (see the grid)")

    rows_n = min(ecfg.grid_rows, len(photos), len(paintings))
    cycled = _translate(F, generated[:rows_n], ecfg.batch_size)
    fake_photos = _translate(F, paintings[:rows_n], ecfg.batch_size)
    cycled_paint = _translate(G, fake_photos, ecfg.batch_size)
    grid = sample_grid(
        [[photos[i], generated[i], cycled[i], paintings[i], fake_photos[i], cycled_paint[i]]
         for i in range(rows_n)]
    )  # fmt: skip
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        write_json(tmp / METRICS_JSON, metrics)
        Image.fromarray(grid).save(tmp / GRID_PNG)
    return EvaluateResult(metrics=metrics, out_dir=out_dir)
