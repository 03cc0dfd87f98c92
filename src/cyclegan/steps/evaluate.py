"""Evaluate step: translate held-out photos with G; FID/KID/MiFID against the paintings, the
baseline FID(photos, paintings), and a sample grid PNG."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from cyclegan.config import Config
from cyclegan.metrics import FeatureExtractor
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
    batches = (images[i : i + batch_size] for i in range(0, len(images), batch_size))
    return np.concatenate(list(_translated(model, batches)))


def _translated(model, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    for batch in batches:
        yield np.asarray(model(batch, training=False))


def _head(batches: Iterable[np.ndarray], n: int) -> np.ndarray:
    """The first `n` images of a stream of batches."""
    out, have = [], 0
    for batch in batches:
        if have >= n:
            break
        out.append(batch[: n - have])
        have += len(out[-1])
    return np.concatenate(out)


def small_sample_note(n_generated: int, n_real: int, dims: int) -> str | None:
    """The warning for an FID from fewer images than feature dimensions, or None."""
    if min(n_generated, n_real) >= dims:
        return None
    return (f"FID from {n_generated} generated and {n_real} real images with {dims}-d "
            f"features is biased upward: compare only runs with the same image counts")  # fmt: skip


@dataclasses.dataclass
class FidScorer:
    """FID(G(held-out photos), all paintings) with one feature extractor: the evaluate step's
    FID, and the train step's FID curve (train.fid_every_epochs) through the same code.

    Held-out photos are the preprocess output's photo/test shards, paintings every monet shard.
    The paintings' features are computed once, in `load`; each `score(G)` streams the photos
    through G and the extractor batch by batch (nothing image-sized is kept in memory).
    """

    extractor: FeatureExtractor
    photo_files: list[str]
    monet_files: list[str]
    n_photo: int
    n_monet: int
    image_size: int
    batch_size: int
    painting_features: np.ndarray | None = None

    @classmethod
    def load(cls, data_dir: str | Path, image_size: int, extractor: FeatureExtractor,
             batch_size: int) -> FidScorer:  # fmt: skip
        from cyclegan.steps.preprocess import shard_files

        photo_files, n_photo = shard_files(data_dir, "photo", "test")
        monet = [shard_files(data_dir, "monet", s) for s in ("train", "test")]
        monet_files, n_monet = sum((f for f, _ in monet), []), sum(n for _, n in monet)
        if n_photo < 2:
            raise ValueError(
                f"'{data_dir}' holds {n_photo} held-out photos; FID needs at least 2 "
                f"(raise preprocess.test_fraction or add photos)"
            )
        scorer = cls(extractor, photo_files, monet_files, n_photo, n_monet, image_size,
                     batch_size)  # fmt: skip
        scorer.painting_features = extractor.features(scorer.painting_batches(), n_monet,
                                                      "features: paintings")  # fmt: skip
        if not np.all(np.isfinite(scorer.painting_features)):
            raise ValueError(f"extractor {extractor.name} gives NaN/Inf features for the "
                             f"paintings in '{data_dir}'; the extractor is broken")  # fmt: skip
        return scorer

    def _batches(self, files: list[str]) -> Iterator[np.ndarray]:
        from cyclegan.data.pipeline import eval_images

        return eval_images(files, self.image_size, self.batch_size).as_numpy_iterator()

    def photo_batches(self) -> Iterator[np.ndarray]:
        """Held-out photos at the training size, [-1, 1], in batches of `batch_size`."""
        return self._batches(self.photo_files)

    def painting_batches(self) -> Iterator[np.ndarray]:
        return self._batches(self.monet_files)

    def photo_features(self) -> np.ndarray:
        """Features of the untranslated held-out photos (the baseline FID's)."""
        return self.extractor.features(self.photo_batches(), self.n_photo, "features: photos")

    def score(self, G) -> tuple[float, np.ndarray]:
        """(FID, features of G(photos)); the FID is NaN when G's output is not finite."""
        from cyclegan.metrics import fid

        generated = self.extractor.features(_translated(G, self.photo_batches()), self.n_photo,
                                            "features: G(photos)")  # fmt: skip
        if not np.all(np.isfinite(generated)):
            return math.nan, generated
        return fid(generated, self.painting_features), generated


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

    from cyclegan.metrics import fid, kid, load_extractor, mifid

    ecfg = cfg.evaluate
    G, F, train_manifest = load_generators(train_dir)
    image_size = int(train_manifest["image_size"])
    extractor = extractor or load_extractor(ecfg.extractor, ecfg.inception_weights, ecfg.input_size)
    scorer = FidScorer.load(data_dir, image_size, extractor, ecfg.batch_size)
    fid_value, f_gen = scorer.score(G)
    if not math.isfinite(fid_value):
        raise RuntimeError("FID came out NaN/Inf; the generator output is broken (see the grid)")
    f_paint = scorer.painting_features
    f_photo = scorer.photo_features()
    notes = []
    note = small_sample_note(len(f_gen), len(f_paint), f_gen.shape[1])
    if note:
        notes.append(note)
        warnings.warn(note, stacklevel=2)
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

    rows_n = min(ecfg.grid_rows, len(f_gen), len(f_paint))
    photos = _head(scorer.photo_batches(), rows_n)
    paintings = _head(scorer.painting_batches(), rows_n)
    generated = _translate(G, photos, ecfg.batch_size)
    cycled = _translate(F, generated, ecfg.batch_size)
    fake_photos = _translate(F, paintings, ecfg.batch_size)
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
