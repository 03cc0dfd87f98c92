"""Built-in demo data, made offline: real photos shipped inside installed packages.

Photo domain: random crops of the colour photos in scikit-image's `skimage/data/` and
scikit-learn's sample images. Painting domain: other crops passed through a deterministic
painterly transform (mode filter = flat brush strokes, a palette shift toward Monet's
blues/greens/pinks, a canvas weave). It is a stand-in for Kaggle's gan-getting-started data and
is written in the same layout (`photo_jpg/`, `monet_jpg/`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from cyclegan.config import SampleConfig
from cyclegan.storage import atomic_path, write_manifest

# Colour photographs shipped in the scikit-image wheel (no pooch download needed).
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "hubble_deep_field.jpg",
)
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")

# Monet-ish palette (RGB, 0..1): water blue, lily green, pink haze, warm light.
MONET_PALETTE = np.array(
    [[0.42, 0.55, 0.75], [0.45, 0.62, 0.45], [0.85, 0.65, 0.72], [0.93, 0.85, 0.62]]
)


def _package_dir(module: str, sub: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"package '{module}' is not installed; `pip install -e .` installs it")
    return Path(spec.origin).parent / sub


def source_photos() -> list[Path]:
    """Paths of the real photos the sample is cut from."""
    paths = [_package_dir("skimage", "data") / n for n in SKIMAGE_PHOTOS]
    paths += [_package_dir("sklearn", "datasets/images") / n for n in SKLEARN_PHOTOS]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise RuntimeError(f"sample source photos missing from installed packages: {missing}")
    return paths


def random_crops(images: list[Image.Image], n: int, size: int, rng: np.random.Generator):
    """Yield `n` square crops (random image, scale and position), resized to `size`."""
    for _ in range(n):
        img = images[rng.integers(len(images))]
        w, h = img.size
        side = int(rng.uniform(0.25, 0.7) * min(w, h))
        x = int(rng.integers(0, w - side + 1))
        y = int(rng.integers(0, h - side + 1))
        crop = img.crop((x, y, x + side, y + side)).resize((size, size), Image.LANCZOS)
        yield crop.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop


def canvas_texture(size: int, seed: int) -> np.ndarray:
    """A fixed canvas weave: fine crossing threads plus grain, around 1.0."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    weave = 0.5 * (np.sin(xx * 2.1) + np.sin(yy * 2.1))
    grain = rng.normal(0, 1, (size, size))
    return 1.0 + 0.035 * weave + 0.02 * grain


def paint(photo: Image.Image, texture: np.ndarray) -> Image.Image:
    """Deterministic painterly transform: flat strokes, Monet palette, soft light, canvas."""
    strokes = photo.filter(ImageFilter.ModeFilter(5)).filter(ImageFilter.SMOOTH_MORE)
    rgb = np.asarray(strokes, dtype=np.float64) / 255.0
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    # Map luminance onto the palette (dark -> blue/green, light -> pink/warm), keep some hue.
    idx = np.clip(luma * (len(MONET_PALETTE) - 1), 0, len(MONET_PALETTE) - 1 - 1e-9)
    lo = np.floor(idx).astype(int)
    frac = (idx - lo)[..., None]
    palette = MONET_PALETTE[lo] * (1 - frac) + MONET_PALETTE[lo + 1] * frac
    mixed = 0.55 * palette + 0.45 * rgb
    # Low contrast, lifted shadows: Monet's hazy light.
    mixed = 0.18 + 0.78 * mixed
    mixed = mixed * texture[..., None]
    return Image.fromarray(np.clip(mixed * 255.0 + 0.5, 0, 255).astype(np.uint8))


def make_sample(cfg: SampleConfig, out_dir: str | Path) -> dict:
    """Write `photo_jpg/` and `monet_jpg/` (Kaggle layout) under `out_dir`, atomically."""
    out_dir = Path(out_dir)
    rng = np.random.default_rng(cfg.seed)
    images = [Image.open(p).convert("RGB") for p in source_photos()]
    texture = canvas_texture(cfg.size, cfg.seed)
    with atomic_path(out_dir) as tmp:
        (tmp / "photo_jpg").mkdir(parents=True)
        (tmp / "monet_jpg").mkdir(parents=True)
        for i, crop in enumerate(random_crops(images, cfg.n_photo, cfg.size, rng)):
            crop.save(tmp / "photo_jpg" / f"photo_{i:04d}.jpg", quality=95)
        for i, crop in enumerate(random_crops(images, cfg.n_monet, cfg.size, rng)):
            paint(crop, texture).save(tmp / "monet_jpg" / f"monet_{i:04d}.jpg", quality=95)
        write_manifest(
            tmp,
            "sample-data",
            n_photo=cfg.n_photo,
            n_monet=cfg.n_monet,
            size=cfg.size,
            seed=cfg.seed,
            sources=[p.name for p in source_photos()],
        )
    return {"photo_dir": str(out_dir / "photo_jpg"), "monet_dir": str(out_dir / "monet_jpg")}
