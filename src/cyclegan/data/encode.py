"""Decode -> resize -> JPEG, the preprocess workers' whole job, in a module that imports only
PIL: spawned workers start in a fraction of the time the full step module takes to import."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from PIL import Image, ImageOps

REDUCING_GAP = 3  # box reduction stops at 3x the output size, the rest is bicubic
DECODE_GAP = 4  # JPEGs decode at 1/2-1/8 DCT scale down to 4x the output size: as close to a
# full-resolution bicubic resize as the box reduction (8x8 DC-only decodes closer are softer)


class InputChangedError(RuntimeError):
    """An input file no longer has the content the validate step checked."""


def open_rgb(path: str | Path | io.BytesIO, min_side: int | None = None) -> Image.Image:
    """Open an accepted image the one way every step does: EXIF orientation applied, RGB.

    `min_side`: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, PIL's
    `draft`, as `Image.thumbnail` does) while both sides stay >= min_side: a 12 MP photo bound
    for 256 px decodes several times faster, and the final resize still has >= min_side px.
    """
    with Image.open(path) as img:
        if min_side and img.format == "JPEG":
            img.draft(None, (min_side, min_side))
        return ImageOps.exif_transpose(img).convert("RGB")


def resize(img: Image.Image, size: int, policy: str) -> Image.Image:
    if policy == "center_crop":
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    return img.resize((size, size), Image.BICUBIC, reducing_gap=REDUCING_GAP)


def encode_image(path: str, size: int, policy: str, quality: int,
                 sha256: str | None = None) -> bytes:  # fmt: skip
    """Worker: read, check the content hash, decode (EXIF applied), resize, encode baseline JPEG."""
    data = Path(path).read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise InputChangedError(
            f"'{path}' changed after validation (sha256 differs from the validate manifest); "
            f"rerun `cyclegan validate`"
        )
    buf = io.BytesIO()
    image = open_rgb(io.BytesIO(data), min_side=DECODE_GAP * size)
    resize(image, size, policy).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_images(items: list[tuple[str, str | None]], size: int, policy: str,
                  quality: int) -> list[bytes]:  # fmt: skip
    """Worker task: `encode_image` over a chunk of (path, sha256), one round trip per chunk."""
    return [encode_image(path, size, policy, quality, sha256) for path, sha256 in items]


def worker_init() -> None:
    """Pool worker set-up: keep freed image buffers in glibc's heap. By default each buffer
    over 128 KB is a fresh mmap that the kernel zero-fills page by page, which made a fresh
    worker ~25% slower per image than the long-lived parent (measured, bench/data_benches.py).
    No-op where malloc is not glibc's."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD: buffers up to 64 MB from the heap
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD: give memory back above 256 MB free
    except (OSError, AttributeError):
        pass
