"""Finding image files and reading their metadata, without ever writing to the input."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png"}
DOMAINS = ("photo", "monet")
METADATA_COLUMNS = (
    "path", "domain", "format", "width", "height", "mode", "bytes", "sha256",
    "decodable", "error", "mean", "std",
)  # fmt: skip


def list_images(root: str | Path) -> list[Path]:
    """All files with an image extension under `root` (nested folders allowed), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"image folder '{root}' does not exist (check data.photo_dir / data.monet_dir "
            f"in params.yaml)"
        )
    return sorted(
        p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )


def open_rgb(path: str | Path) -> Image.Image:
    """Open an accepted image the one way every step does: EXIF orientation applied, RGB."""
    with Image.open(path) as img:
        return ImageOps.exif_transpose(img).convert("RGB")


def inspect_image(path: Path, domain: str, max_side: int) -> dict:
    """One metadata row: format, size, mode, bytes, sha256, decodability, brightness stats.

    Images larger than `max_side` are never decoded (decompression bombs stay harmless).
    """
    row = dict.fromkeys(METADATA_COLUMNS)
    row.update(path=str(path), domain=domain, decodable=False)
    try:
        data = path.read_bytes()
    except OSError as exc:
        row["error"] = f"unreadable file ({exc.strerror or exc}): check its permissions"
        return row
    row["bytes"] = len(data)
    row["sha256"] = hashlib.sha256(data).hexdigest()
    if not data:
        row["error"] = "zero-byte file"
        return row
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            row["format"] = img.format
            row["mode"] = img.mode
            w, h = img.size
            exif_rotated = ImageOps.exif_transpose(img) if max(w, h) <= max_side else None
            if exif_rotated is None:
                row["width"], row["height"] = w, h
                row["decodable"] = None  # not decoded on purpose: too large
                return row
            exif_rotated.load()
            row["width"], row["height"] = exif_rotated.size
            arr = np.asarray(exif_rotated.convert("L"), dtype=np.float64)
            row["mean"] = float(arr.mean())
            row["std"] = float(arr.std())
            row["decodable"] = True
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        row["error"] = f"decompression bomb refused by PIL's pixel limit ({exc})"
    except UnidentifiedImageError:
        row["error"] = "not an image (content is not JPEG/PNG although the extension says so)"
    except (OSError, SyntaxError, ValueError) as exc:
        row["error"] = f"corrupt or truncated image ({exc})"
    return row
