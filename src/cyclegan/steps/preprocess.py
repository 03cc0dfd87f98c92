"""Preprocess step: accepted images -> resized RGB JPEG -> sharded TFRecords + manifest.

- Split: train/test by a stable hash of each image's content, so adding images never moves old
  ones between splits; within a shard, images are ordered by content hash.
- Parallel: worker processes (`preprocess.workers`, spawned, PIL only) decode (EXIF orientation
  applied), resize and JPEG-encode; the parent writes shards. Only a bounded window is encoded
  ahead (two shards, or 8 images per worker if more), so memory stays bounded whatever the
  dataset size.
- Atomic and restartable: the old manifest is removed first (a half-written output directory is
  never mistaken for a finished one); each shard is written under a hidden temp name, fsynced
  and renamed; `.progress.json` records finished shards of the current plan (inputs + params),
  so a rerun after a kill keeps them (after checking their sha256) and writes the rest; any
  other shard is deleted. Shards are byte-identical to those of an uninterrupted run (records
  serialized deterministically, fixed order, same encoder).
- Consistent: each image's sha256 is checked against the validate manifest while encoding.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path

from tqdm import tqdm

from cyclegan.config import Config, PreprocessConfig
from cyclegan.data.encode import (  # noqa: F401  (re-exported: the step's API)
    DECODE_GAP,
    REDUCING_GAP,
    InputChangedError,
    encode_image,
    encode_images,
    resize,
    worker_init,
)
from cyclegan.data.images import DOMAINS
from cyclegan.storage import (
    MANIFEST,
    atomic_path,
    read_manifest,
    sha256_file,
    write_json,
    write_manifest,
)

SPLITS = ("train", "test")
PROGRESS = ".progress.json"
PROGRESS_EVERY_S = 1.0  # `.progress.json` is saved after this many seconds or shards, so a
PROGRESS_EVERY_SHARDS = 8  # kill loses little finished work (and tiny shards stay cheap)
IN_FLIGHT_SHARDS = 2  # bounded memory: at most this many shards (or IN_FLIGHT_PER_WORKER
IN_FLIGHT_PER_WORKER = 8  # images per worker, if more) are encoded ahead of the writer
CHUNK = 8  # images per worker task: fewer inter-process round trips, same bytes


@dataclasses.dataclass
class PreprocessResult:
    out_dir: Path
    counts: dict[str, dict[str, int]]
    reused_shards: int = 0


def split_of(sha256: str, test_fraction: float) -> str:
    """Stable split from content: the first 8 hex digits as a fraction of 2^32."""
    return "test" if int(sha256[:8], 16) / 2**32 < test_fraction else "train"


def shard_name(domain: str, split: str, index: int, total: int) -> str:
    return f"{domain}-{split}-{index:05d}-of-{total:05d}.tfrecord"


def _write_shard(path: Path, records: list[bytes]) -> None:
    import tensorflow as tf

    with atomic_path(path) as tmp:
        with tf.io.TFRecordWriter(str(tmp)) as writer:
            for record in records:
                writer.write(record)
        with open(tmp, "rb+") as fh:  # on disk before it gets its final name
            os.fsync(fh.fileno())


@dataclasses.dataclass
class _Shard:
    file: str
    domain: str
    split: str
    images: list[dict]


def _plan(images: list[dict], pcfg: PreprocessConfig) -> list[_Shard]:
    groups: dict[tuple[str, str], list[dict]] = {(d, s): [] for d in DOMAINS for s in SPLITS}
    for image in sorted(images, key=lambda im: (im["sha256"], im["file"])):
        groups[(image["domain"], split_of(image["sha256"], pcfg.test_fraction))].append(image)
    shards = []
    for (domain, split), group in groups.items():
        n_shards = max(1, -(-len(group) // pcfg.shard_size))
        for index in range(n_shards):
            chunk = group[index * pcfg.shard_size : (index + 1) * pcfg.shard_size]
            shards.append(_Shard(shard_name(domain, split, index, n_shards), domain, split, chunk))
    return shards


def _plan_hash(shards: list[_Shard], pcfg: PreprocessConfig) -> str:
    blob = json.dumps(
        {
            "params": dataclasses.asdict(pcfg) | {"workers": None},  # workers don't change bytes
            "shards": [[s.file, [(im["sha256"], im["name"]) for im in s.images]] for s in shards],
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class _Inline(cf.Executor):
    """workers: 1 -> encode in this process (no pool start-up)."""

    def submit(self, fn, /, *args, **kwargs):
        future: cf.Future = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


def _finished_shards(out_dir: Path, plan_hash: str) -> dict[str, str]:
    """Shards a killed run of the same plan finished (verified against their sha256)."""
    path = out_dir / PROGRESS
    try:
        progress = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if progress.get("plan") != plan_hash:
        return {}
    return {
        f: sha
        for f, sha in progress.get("done", {}).items()
        if (out_dir / f).is_file() and sha256_file(out_dir / f) == sha
    }


def _resolve(image: dict, validated_dir: Path) -> dict:
    path = Path(image["path"])
    if image.get("staged"):
        path = validated_dir / path
    return {**image, "file": str(path), "name": image.get("name") or path.name}


def run(cfg: Config, validated_dir: str | Path, out_dir: str | Path,
        progress: bool = True) -> PreprocessResult:  # fmt: skip
    """Write `{domain}-{split}-NNNNN-of-MMMMM.tfrecord` shards and a manifest into `out_dir`."""
    from cyclegan.data.tfrecord import encode_example

    pcfg: PreprocessConfig = cfg.preprocess
    validated_dir = Path(validated_dir)
    validated = read_manifest(validated_dir, "validate")
    if not validated.get("passed", False):
        raise RuntimeError(
            f"'{validated_dir}' records a failed validation; fix the data (see its rejected.csv) "
            f"and rerun `cyclegan validate`"
        )
    images = [_resolve(im, validated_dir) for im in validated["images"]]
    missing = [im["file"] for im in images if not Path(im["file"]).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} accepted images listed in {validated_dir / MANIFEST} are missing "
            f"(first: '{missing[0]}'); rerun `cyclegan validate`"
        )
    shards = _plan(images, pcfg)
    plan_hash = _plan_hash(shards, pcfg)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # first: from now on this is not a finished output
    for tmp in out_dir.glob(".*.tmp"):  # temp dirs of a killed run (atomic_path)
        shutil.rmtree(tmp, ignore_errors=True)
    done = _finished_shards(out_dir, plan_hash)
    for stale in out_dir.glob("*.tfrecord"):
        if stale.name not in done:
            stale.unlink()  # our own outputs from an earlier run with other settings or data
    write_json(out_dir / PROGRESS, {"plan": plan_hash, "done": done})

    counts = {d: dict.fromkeys(SPLITS, 0) for d in DOMAINS}
    entries = []
    todo = [s for s in shards if s.file not in done]
    args = (pcfg.image_size, pcfg.resize, pcfg.jpeg_quality)
    executor = (
        cf.ProcessPoolExecutor(
            pcfg.workers, mp_context=multiprocessing.get_context("spawn"), initializer=worker_init
        )
        if pcfg.workers > 1 and todo
        else _Inline()
    )
    in_flight: collections.deque = collections.deque()
    todo_iter = iter(todo)
    ahead = IN_FLIGHT_PER_WORKER * pcfg.workers

    def fill() -> None:
        while len(in_flight) < IN_FLIGHT_SHARDS or sum(len(s.images) for s, _ in in_flight) < ahead:
            shard = next(todo_iter, None)
            if shard is None:
                return
            chunks = [shard.images[i : i + CHUNK] for i in range(0, len(shard.images), CHUNK)]
            futures = [
                executor.submit(encode_images, [(im["file"], im["sha256"]) for im in c], *args)
                for c in chunks
            ]
            in_flight.append((shard, futures))

    total = sum(len(s.images) for s in todo)
    saved, unsaved = time.monotonic(), 0
    with executor, tqdm(total=total, desc="preprocess", disable=not progress) as bar:
        fill()
        while in_flight:
            shard, futures = in_flight.popleft()
            jpegs = [jpeg for future in futures for jpeg in future.result()]
            records = [
                encode_example(im["name"], jpeg, shard.domain)
                for im, jpeg in zip(shard.images, jpegs, strict=True)
            ]
            fill()
            _write_shard(out_dir / shard.file, records)
            done[shard.file] = sha256_file(out_dir / shard.file)
            unsaved += 1
            if unsaved >= PROGRESS_EVERY_SHARDS or time.monotonic() - saved > PROGRESS_EVERY_S:
                write_json(out_dir / PROGRESS, {"plan": plan_hash, "done": done})
                saved, unsaved = time.monotonic(), 0
            bar.update(len(records))
    for shard in shards:
        entries.append(
            {"file": shard.file, "domain": shard.domain, "split": shard.split,
             "count": len(shard.images), "sha256": done[shard.file]}
        )  # fmt: skip
        counts[shard.domain][shard.split] += len(shard.images)
    write_manifest(
        out_dir,
        "preprocess",
        counts=counts,
        shards=entries,
        image_size=pcfg.image_size,
        params=dataclasses.asdict(pcfg),
    )
    (out_dir / PROGRESS).unlink(missing_ok=True)
    return PreprocessResult(out_dir=out_dir, counts=counts, reused_shards=len(shards) - len(todo))


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
