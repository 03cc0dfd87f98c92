"""The validation gate on a corpus of every kind of bad input, built on the fly.

Each bad file must be rejected with its own named issue and a readable reason; the input folder
must be untouched (bytes, mtimes, listing); `on_invalid: skip` must still let preprocess and a
short training run go through. Tests run as root, where `chmod 000` does not stop reads, so an
unreadable file is simulated by a broken symlink and a FIFO with an image name (a plain
permission-denied file is added too when the tests run as a normal user).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import stat
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cyclegan.steps import preprocess, validate

IS_ROOT = os.geteuid() == 0


def noise(seed: int, size=(48, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def encoded(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png(width: int, height: int, depth: int, color_type: int, raw: bytes) -> bytes:
    """A PNG written by hand: any header (incl. sizes PIL must refuse) and raw scanlines."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))  # fmt: skip


def png16(channels: int, seed: int, size: int = 40) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 65535, (size, size * channels), dtype=np.uint16).astype(">u2")
    raw = b"".join(b"\x00" + arr[i].tobytes() for i in range(size))
    return png(size, size, 16, 2 if channels == 3 else 0, raw)


def exif_rotated_jpeg() -> bytes:
    """64x32 stored, left half red / right half blue, EXIF orientation 6 (rotate 90 CW):
    displayed 32x64 with red on top."""
    arr = np.zeros((32, 64, 3), dtype=np.uint8)
    arr[:, :32] = (220, 20, 20)
    arr[:, 32:] = (20, 20, 220)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(Image.fromarray(arr, "RGB"), "JPEG", quality=95, exif=exif.tobytes())


# file (relative to the corpus root) -> the issues it must be rejected with
EXPECTED = {
    "bad/truncated.jpg": {"truncated"},
    "bad/empty.jpg": {"zero_byte"},
    "bad/text.jpg": {"not_an_image"},
    "bad/cmyk.jpg": {"cmyk"},
    "bad/gray.jpg": {"grayscale"},
    "bad/rgba.png": {"alpha"},
    "bad/palette.png": {"palette"},
    "bad/deep16.png": {"16_bit"},  # 16-bit RGB: PIL would silently read it as 8-bit RGB
    "bad/gray16.png": {"16_bit"},
    "bad/tiny.jpg": {"too_small"},
    "bad/bomb.png": {"decompression_bomb"},  # header claims 100000 x 100000
    "bad/huge.png": {"too_large"},  # 9000 x 9000 header: over max_side, under PIL's limit
    "bad/bitmap.png": {"format"},  # a BMP with a .png name
    "bad/blank.jpg": {"blank"},
    "bad/ghost.jpg": {"unreadable"},  # broken symlink
    "bad/pipe.jpg": {"unreadable"},  # FIFO: must never be opened (it would block)
    "zz_copy.jpg": {"duplicate"},
}
GOOD_PHOTOS = [f"good{i}.jpg" for i in range(5)] + ["nested/deeper/good5.png", "exif6.jpg"]


def build_corpus(root: Path) -> dict[str, set[str]]:
    """Photos: good ones + every bad kind. Monet: a zip with good paintings and traversal entries."""
    photos = root / "photos"
    (photos / "bad").mkdir(parents=True)
    (photos / "nested" / "deeper").mkdir(parents=True)
    for i, name in enumerate(GOOD_PHOTOS[:-1]):
        fmt = "PNG" if name.endswith(".png") else "JPEG"
        (photos / name).write_bytes(encoded(noise(i), fmt))
    (photos / "exif6.jpg").write_bytes(exif_rotated_jpeg())
    full = encoded(noise(50, (96, 96)), "JPEG")
    files = {
        "bad/truncated.jpg": full[: len(full) // 2],
        "bad/empty.jpg": b"",
        "bad/text.jpg": b"I am a text file with an image extension\n",
        "bad/cmyk.jpg": encoded(noise(51).convert("CMYK"), "JPEG"),
        "bad/gray.jpg": encoded(noise(52).convert("L"), "JPEG"),
        "bad/rgba.png": encoded(noise(53).convert("RGBA"), "PNG"),
        "bad/palette.png": encoded(noise(54).convert("P"), "PNG"),
        "bad/deep16.png": png16(3, 55),
        "bad/gray16.png": png16(1, 56),
        "bad/tiny.jpg": encoded(noise(57, (8, 8)), "JPEG"),
        "bad/bomb.png": png(100_000, 100_000, 8, 2, b"\x00" * 64),
        "bad/huge.png": png(9000, 9000, 8, 2, b"\x00" * 64),
        "bad/bitmap.png": encoded(noise(58), "BMP"),
        "bad/blank.jpg": encoded(Image.new("RGB", (48, 48), (120, 130, 140)), "JPEG"),
        "zz_copy.jpg": (photos / "good0.jpg").read_bytes(),
    }
    for name, data in files.items():
        (photos / name).write_bytes(data)
    os.symlink(photos / "no-such-file.jpg", photos / "bad" / "ghost.jpg")
    os.mkfifo(photos / "bad" / "pipe.jpg")
    expected = dict(EXPECTED)
    if not IS_ROOT:  # root reads through chmod 000; the symlink and FIFO cover it there
        (photos / "bad" / "noperm.jpg").write_bytes(encoded(noise(59), "JPEG"))
        (photos / "bad" / "noperm.jpg").chmod(0)
        expected["bad/noperm.jpg"] = {"unreadable"}

    entries = {f"gan/monet_jpg/m{i}.jpg": encoded(noise(100 + i), "JPEG") for i in range(5)}
    entries["../evil.jpg"] = encoded(noise(200), "JPEG")
    entries["/tmp/rooted.jpg"] = encoded(noise(201), "JPEG")
    with zipfile.ZipFile(root / "monet.zip", "w") as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    expected["zip:../evil.jpg"] = {"path_traversal"}
    expected["zip:/tmp/rooted.jpg"] = {"path_traversal"}
    return expected


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under root: type, mode, size, mtime (ns) and content hash / link target."""
    out = {".": (os.lstat(root).st_mtime_ns,)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = os.lstat(path)
            entry: tuple = (stat.S_IFMT(st.st_mode), st.st_mode, st.st_size, st.st_mtime_ns)
            if stat.S_ISREG(st.st_mode) and os.access(path, os.R_OK):
                entry += (hashlib.sha256(path.read_bytes()).hexdigest(),)
            elif stat.S_ISLNK(st.st_mode):
                entry += (os.readlink(path),)
            out[str(path.relative_to(root))] = entry
    return out


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def key_of(row: dict, root: Path) -> str:
    if "!" in row["source"]:
        return "zip:" + row["source"].split("!", 1)[1]
    return str(Path(row["source"]).relative_to(root / "photos"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    expected = build_corpus(root)
    return root, expected


@pytest.fixture(scope="module")
def skipped_run(corpus, tmp_path_factory, tiny_config):
    root, _ = corpus
    before = snapshot(root)
    cfg = tiny_config(validate__on_invalid="skip", validate__workers=3)
    out = tmp_path_factory.mktemp("validated") / "validate"
    result = validate.run(cfg, root / "photos", root / "monet.zip", out, progress=False)
    return cfg, result, out, before


def test_every_bad_input_is_rejected_with_its_named_issue(corpus, skipped_run):
    root, expected = corpus
    _, result, out, _ = skipped_run
    rejected = {key_of(r, root): r for r in read_csv(out / "rejected.csv")}
    assert {k: set(r["issue"].split(";")) for k, r in rejected.items()} == expected
    reasons = {k: r["reason"] for k, r in rejected.items()}
    assert "decompression bomb refused" in reasons["bad/bomb.png"]
    assert "100000x100000" in reasons["bad/bomb.png"] and "never decoded" in reasons["bad/bomb.png"]
    assert "width 9000 px outside [32, 8192] px (never decoded)" in reasons["bad/huge.png"]
    assert "truncated image" in reasons["bad/truncated.jpg"]
    assert "broken symbolic link" in reasons["bad/ghost.jpg"]
    assert "named pipe (FIFO), not an image file" in reasons["bad/pipe.jpg"]
    assert "colour mode CMYK" in reasons["bad/cmyk.jpg"]
    assert "16 bits per channel" in reasons["bad/deep16.png"]
    assert "exact duplicate of " + str(root / "photos" / "good0.jpg") in reasons["zz_copy.jpg"]
    assert "zip entry '../evil.jpg' would be written outside" in reasons["zip:../evil.jpg"]
    assert all(r["expectation"].startswith("expect_column_values") for r in rejected.values())

    summary = result.summary
    assert result.passed and summary["on_invalid"] == "skip"
    assert summary["accepted"] == {"photo": len(GOOD_PHOTOS), "monet": 5}
    assert summary["n_rejected"] == len(expected)
    assert summary["rejected_by_issue"]["path_traversal"] == 2
    assert summary["rejected_by_issue"]["unreadable"] == (2 if IS_ROOT else 3)
    assert (out / "data_docs" / "index.html").is_file()


def test_exif_orientation_is_applied_in_metadata(corpus, skipped_run):
    root, _ = corpus
    out = skipped_run[2]
    rows = {r["name"]: r for r in read_csv(out / "images.csv")}
    assert (rows["exif6.jpg"]["width"], rows["exif6.jpg"]["height"]) == ("32", "64")
    assert rows["exif6.jpg"]["accepted"] == "True"
    assert rows["m0.jpg"]["staged"] == "True" and rows["m0.jpg"]["path"].startswith("staging/")


def test_inputs_are_never_modified(corpus, skipped_run):
    root, _ = corpus
    before = skipped_run[3]
    assert snapshot(root) == before
    assert not (root.parent / "evil.jpg").exists() and not Path("/tmp/rooted.jpg").exists()


def test_skip_policy_still_preprocesses_and_trains(skipped_run, tmp_path):
    from cyclegan.data.tfrecord import read_examples
    from cyclegan.steps import train

    cfg, _, validated, _ = skipped_run
    data = tmp_path / "data"
    result = preprocess.run(cfg, validated, data, progress=False)
    assert sum(sum(c.values()) for c in result.counts.values()) == len(GOOD_PHOTOS) + 5

    # EXIF orientation 6 is applied before the resize: red on top, blue at the bottom
    examples = [ex for f in sorted(data.glob("photo-*.tfrecord")) for ex in read_examples(f)]
    (rotated,) = [ex for ex in examples if ex["image_name"] == b"exif6.jpg"]
    img = np.asarray(Image.open(io.BytesIO(rotated["image"])).convert("RGB"), dtype=float)
    assert img.shape == (32, 32, 3)
    top, bottom = img[:12].mean(axis=(0, 1)), img[-12:].mean(axis=(0, 1))
    assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0], (top, bottom)
    staged = [ex for f in sorted(data.glob("monet-*.tfrecord")) for ex in read_examples(f)]
    assert sorted(ex["image_name"] for ex in staged) == [f"m{i}.jpg".encode() for i in range(5)]

    trained = train.run(cfg, data, tmp_path / "train", max_steps=2, progress=False)
    assert trained.steps == 2


def test_fail_policy_stops_with_a_readable_summary(corpus, tiny_config, tmp_path):
    root, expected = corpus
    cfg = tiny_config(validate__on_invalid="fail")
    result = validate.run(cfg, root / "photos", root / "monet.zip", tmp_path / "v", progress=False)
    assert not result.passed
    message = result.message()
    assert f"{len(expected)} rejected" in message
    assert "rejected by issue:" in message and "path_traversal 2" in message
    assert "set validate.on_invalid: skip" in message
    with pytest.raises(RuntimeError, match="records a failed validation"):
        preprocess.run(cfg, tmp_path / "v", tmp_path / "data", progress=False)


def test_empty_domain_fails_even_when_skipping_and_gx_bars_are_off(tmp_path, tiny_config, capfd):
    photos, monets = tmp_path / "photos", tmp_path / "monets"
    photos.mkdir()
    (monets / "only-notes").mkdir(parents=True)
    (monets / "only-notes" / "readme.txt").write_text("no images here")
    for i in range(5):
        (photos / f"p{i}.jpg").write_bytes(encoded(noise(i), "JPEG"))
    cfg = tiny_config(validate__on_invalid="skip")
    result = validate.run(cfg, photos, monets, tmp_path / "v", progress=False)
    assert not result.passed
    assert result.summary["domains"]["monet"] == {
        "source": str(monets), "found": 0, "accepted": 0, "issue": "empty_domain",
    }  # fmt: skip
    assert f"domain 'monet' ({monets}) is empty" in result.message()
    captured = capfd.readouterr()
    assert "Calculating Metrics" not in captured.err + captured.out
