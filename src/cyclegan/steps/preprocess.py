"""Preprocess step: accepted images -> resized RGB JPEG -> sharded TFRecords + manifest.

Train/test split by a stable hash of each image's content, so adding images never moves old
ones between splits. Workers do the CPU-heavy decode/resize/encode with PIL; the parent writes
each shard under a temp name and renames it, so a killed run leaves no partial shard and a
rerun writes byte-identical shards.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import io
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from cyclegan.config import Config, PreprocessConfig
from cyclegan.data.images import DOMAINS, open_rgb
from cyclegan.storage import atomic_path, read_manifest, sha256_file, write_manifest

SPLITS = ("train", "test")


@dataclasses.dataclass
class PreprocessResult:
    out_dir: Path
    counts: dict[str, dict[str, int]]


def split_of(sha256: str, test_fraction: float) -> str:
    """Stable split from content: the first 8 hex digits as a fraction of 2^32."""
    return "test" if int(sha256[:8], 16) / 2**32 < test_fraction else "train"


def resize(img: Image.Image, size: int, policy: str) -> Image.Image:
    if policy == "center_crop":
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    return img.resize((size, size), Image.BICUBIC, reducing_gap=3.0)


def encode_image(path: str, size: int, policy: str, quality: int) -> bytes:
    """Worker: decode (EXIF applied), resize, re-encode as baseline JPEG."""
    buf = io.BytesIO()
    resize(open_rgb(path), size, policy).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def shard_name(domain: str, split: str, index: int, total: int) -> str:
    return f"{domain}-{split}-{index:05d}-of-{total:05d}.tfrecord"


def _write_shard(path: Path, records: list[bytes]) -> None:
    import tensorflow as tf

    with atomic_path(path) as tmp, tf.io.TFRecordWriter(str(tmp)) as writer:
        for record in records:
            writer.write(record)


def run(cfg: Config, validated_dir: str | Path, out_dir: str | Path,
        progress: bool = True) -> PreprocessResult:  # fmt: skip
    """Write `{domain}-{split}-NNNNN-of-MMMMM.tfrecord` shards and a manifest into `out_dir`."""
    from cyclegan.data.tfrecord import encode_example

    pcfg: PreprocessConfig = cfg.preprocess
    validated = read_manifest(validated_dir, "validate")
    if not validated.get("passed", False):
        raise RuntimeError(
            f"'{validated_dir}' records a failed validation; fix the data (see its rejected.csv) "
            f"and rerun `cyclegan validate`"
        )
    groups: dict[tuple[str, str], list[dict]] = {(d, s): [] for d in DOMAINS for s in SPLITS}
    for image in sorted(validated["images"], key=lambda im: im["sha256"]):
        groups[(image["domain"], split_of(image["sha256"], pcfg.test_fraction))].append(image)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.tfrecord"):
        stale.unlink()  # our own outputs from an earlier run with other settings
    shards, counts = [], {d: dict.fromkeys(SPLITS, 0) for d in DOMAINS}
    total = sum(len(g) for g in groups.values())
    with (
        cf.ProcessPoolExecutor(max_workers=pcfg.workers) as pool,
        tqdm(total=total, desc="preprocess", disable=not progress) as bar,
    ):
        for (domain, split), images in groups.items():
            n_shards = max(1, -(-len(images) // pcfg.shard_size))
            for index in range(n_shards):
                chunk = images[index * pcfg.shard_size : (index + 1) * pcfg.shard_size]
                jpegs = pool.map(
                    encode_image,
                    [im["path"] for im in chunk],
                    [pcfg.image_size] * len(chunk),
                    [pcfg.resize] * len(chunk),
                    [pcfg.jpeg_quality] * len(chunk),
                    chunksize=8,
                )
                records = [
                    encode_example(Path(im["path"]).name, jpeg, domain)
                    for im, jpeg in zip(chunk, jpegs, strict=True)
                ]
                path = out_dir / shard_name(domain, split, index, n_shards)
                _write_shard(path, records)
                bar.update(len(chunk))
                shards.append(
                    {"file": path.name, "domain": domain, "split": split,
                     "count": len(records), "sha256": sha256_file(path)}
                )  # fmt: skip
                counts[domain][split] += len(records)
    write_manifest(
        out_dir,
        "preprocess",
        counts=counts,
        shards=shards,
        image_size=pcfg.image_size,
        params=dataclasses.asdict(pcfg),
    )
    return PreprocessResult(out_dir=out_dir, counts=counts)


def shard_files(data_dir: str | Path, domain: str, split: str) -> tuple[list[str], int]:
    """Shard paths and image count of one domain/split, checked against the manifest."""
    manifest = read_manifest(data_dir, "preprocess")
    files, count = [], 0
    for shard in manifest["shards"]:
        if shard["domain"] == domain and shard["split"] == split and shard["count"]:
            path = Path(data_dir) / shard["file"]
            if not path.is_file():
                raise FileNotFoundError(
                    f"shard '{path}' listed in {data_dir}/manifest.json is missing; "
                    f"rerun `cyclegan preprocess`"
                )
            files.append(str(path))
            count += shard["count"]
    return files, count
