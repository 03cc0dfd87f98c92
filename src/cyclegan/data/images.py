"""Finding image files and reading their metadata, without ever writing to the input.

`inspect_image` is the one place that looks inside an input file. It never crashes on bad input:
every problem becomes a row with a named `issue` (a short stable code, see `ISSUES`) and a human
`error`. Files are read once (bytes -> sha256 -> PIL from memory); images above `max_side` or
PIL's pixel limit are measured from their header and never decoded.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cyclegan.data.encode import open_rgb  # noqa: F401  (one way to open an image, re-exported)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png"}
DOMAINS = ("photo", "monet")
METADATA_COLUMNS = (
    "path", "domain", "source", "name", "staged", "format", "width", "height", "mode",
    "bit_depth", "bytes", "sha256", "decodable", "issue", "error", "mean", "std",
)  # fmt: skip

# Named reasons a file is rejected. Those found while reading a file are set by inspect_image /
# ingest; the others come from the Great Expectations suite (cyclegan.validation).
ISSUES = {
    "unreadable": "the file cannot be read (permissions, broken link, not a regular file)",
    "path_traversal": "a zip entry that would escape the extraction folder",
    "zero_byte": "an empty file",
    "not_an_image": "content is not an image although the extension says so",
    "truncated": "the image data ends early (truncated download or copy)",
    "corrupt": "the image data is damaged",
    "corrupt_tfrecord": "a TFRecord file that is damaged or truncated",
    "bad_record": "a TFRecord record without JPEG bytes in its `image` feature",
    "decompression_bomb": "more pixels than PIL's safety limit; never decoded",
    "too_large": "wider or taller than validate.max_side; never decoded",
    "too_small": "narrower or shorter than validate.min_side",
    "format": "a format outside validate.formats",
    "cmyk": "CMYK colour",
    "grayscale": "grayscale (or black-and-white)",
    "alpha": "has an alpha channel (RGBA / LA)",
    "palette": "a palette (indexed-colour) image",
    "16_bit": "16 bits per channel",
    "mode": "a colour mode outside validate.modes",
    "duplicate": "exact duplicate (same bytes) of another input",
    "blank": "blank: (almost) a single flat colour",
}


def list_images(root: str | Path) -> list[Path]:
    """All regular files with an image extension under `root` (nested folders allowed), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"image folder '{root}' does not exist (check data.photo_dir / data.monet_dir "
            f"in params.yaml)"
        )
    return sorted(
        p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):  # fmt: skip
        if test(mode):
            return kind
    return "not a regular file"


def read_input(path: str | Path) -> tuple[bytes | None, str | None]:
    """The bytes of an input file, or (None, reason) when it cannot be read.

    Never opens anything but a regular file (a FIFO with an image name would block forever).
    """
    path = Path(path)
    try:
        st = os.stat(path)  # follows symlinks
    except FileNotFoundError:
        if path.is_symlink():
            return None, f"broken symbolic link (points to '{os.readlink(path)}')"
        return None, "file vanished while validating"
    except OSError as exc:
        return None, f"cannot stat the file ({exc.strerror or exc})"
    if not stat.S_ISREG(st.st_mode):
        return None, f"{_file_kind(st.st_mode)}, not an image file"
    try:
        return path.read_bytes(), None
    except OSError as exc:
        return None, f"{exc.strerror or exc}: check its permissions"


def _bit_depth(img: Image.Image, data: bytes) -> int:
    """Bits per channel. PIL silently reads 16-bit RGB PNGs as 8-bit RGB, so ask the header."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 25:
        return data[24]
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return 16
    if img.mode in ("I", "F"):
        return 32
    return int(getattr(img, "bits", 8) or 8)


def _decode_issue(exc: Exception) -> tuple[str, str]:
    text = str(exc) or type(exc).__name__
    lowered = text.lower()
    if isinstance(exc, UnidentifiedImageError):
        return (
            "not_an_image",
            "not an image (content is not JPEG/PNG although the extension says so)",
        )
    if isinstance(exc, Image.DecompressionBombError):
        return "decompression_bomb", f"decompression bomb refused (never decoded): {text}"
    if any(
        s in lowered for s in ("truncated", "end of file", "eof", "premature end")
    ) or isinstance(exc, EOFError | struct.error):
        return "truncated", f"truncated image ({text})"
    return "corrupt", f"corrupt image ({type(exc).__name__}: {text})"


def empty_row(domain: str, source: str, name: str | None = None) -> dict:
    row = dict.fromkeys(METADATA_COLUMNS)
    row.update(domain=domain, source=source, name=name, staged=False, decodable=False)
    return row


def inspect_image(path: str | Path, domain: str, max_side: int, *, source: str | None = None,
                  name: str | None = None, staged: bool = False) -> dict:  # fmt: skip
    """One metadata row: format, size (EXIF-oriented), mode, bit depth, bytes, sha256,
    decodability, brightness mean/std, or the named `issue` that stopped the inspection.

    Images larger than `max_side` or than PIL's pixel limit are never decoded.
    """
    path = Path(path)
    row = empty_row(domain, source or str(path), name or path.name)
    row.update(path=str(path), staged=staged)
    data, unreadable = read_input(path)
    if data is None:
        row.update(issue="unreadable", error=unreadable)
        return row
    row["bytes"] = len(data)
    row["sha256"] = hashlib.sha256(data).hexdigest()
    if not data:
        row.update(issue="zero_byte", error="zero-byte file (empty)")
        return row
    try:
        img = Image.open(io.BytesIO(data))  # raises DecompressionBombError at 2x the limit
        with img:
            row["format"] = img.format
            row["mode"] = img.mode
            row["bit_depth"] = _bit_depth(img, data)
            w, h = img.size
            limit = Image.MAX_IMAGE_PIXELS
            if limit and w * h > limit:  # PIL only warned (under twice its limit)
                row.update(
                    issue="decompression_bomb",
                    error=f"decompression bomb refused: {w}x{h} = {w * h} pixels is over "
                    f"PIL's limit of {limit} (never decoded)",
                )
                return row
            if max(w, h) > max_side:
                row["width"], row["height"] = w, h
                row["decodable"] = None  # not decoded on purpose: too large (GX says why)
                return row
            oriented = ImageOps.exif_transpose(img)
            oriented.load()
            row["width"], row["height"] = oriented.size
            arr = np.asarray(oriented.convert("L"), dtype=np.float64)
            row["mean"] = float(arr.mean())
            row["std"] = float(arr.std())
            row["decodable"] = True
    except Exception as exc:  # a validator must survive any input
        row["issue"], row["error"] = _decode_issue(exc)
        if row["issue"] == "decompression_bomb" and _png_size(data):
            row["error"] += " (PNG header: {}x{})".format(*_png_size(data))
    return row


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    return None
