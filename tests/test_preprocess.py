"""Preprocess: atomic, restartable shards (a real SIGKILL mid-run, then a rerun gives
byte-identical shards), a content-hash split that never moves old images, and a clear error when
an input changed after validation."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cyclegan.config import load_config
from cyclegan.steps import preprocess, validate
from cyclegan.storage import sha256_file
from tests.conftest import REPO, tiny_overrides, write_params

CYCLEGAN = Path(sys.executable).parent / "cyclegan"
OVERRIDES = tiny_overrides(preprocess__shard_size=1, preprocess__workers=2,
                           validate__min_images_per_domain=4)  # fmt: skip


def write_images(folder: Path, seeds: range, size: int = 40) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        rng = np.random.default_rng(seed)
        arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=90)
        (folder / f"img{seed:04d}.jpg").write_bytes(buf.getvalue())


def shard_hashes(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.glob("*.tfrecord"))}


def splits_by_name(folder: Path) -> dict[str, str]:
    import tensorflow as tf

    from cyclegan.data.tfrecord import parse_example

    out = {}
    for split in ("train", "test"):
        files = sorted(str(p) for p in folder.glob(f"*-{split}-*.tfrecord"))
        for record in tf.data.TFRecordDataset(files).map(parse_example).as_numpy_iterator():
            out[record["image_name"].decode()] = split
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """150 photos + 60 paintings, validated, and a reference uninterrupted preprocess run."""
    root = tmp_path_factory.mktemp("kill")
    write_images(root / "photos", range(150))
    write_images(root / "monets", range(1000, 1060))
    params = write_params(root / "params.yaml", OVERRIDES)
    cfg = load_config(params)
    result = validate.run(cfg, root / "photos", root / "monets", root / "validate", progress=False)
    assert result.passed, result.message()
    # the reference encodes in-process (workers 1); the killed run below uses 2 worker
    # processes: the bytes must not depend on the parallelism either
    serial = load_config(params, ["preprocess.workers=1"])
    preprocess.run(serial, root / "validate", root / "reference", progress=False)
    return root, cfg, params


def test_killed_run_leaves_no_partial_shard_and_rerun_is_byte_identical(dataset):
    root, cfg, params = dataset
    reference = shard_hashes(root / "reference")
    assert len(reference) >= 200  # shard_size 1: many shards, so the kill lands mid-run
    out = root / "killed"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(
        [str(CYCLEGAN), "-p", str(params), "preprocess", "--validated", str(root / "validate"),
         "--out", str(out)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: the kill takes the workers too
    )  # fmt: skip
    deadline = time.monotonic() + 120
    try:
        # kill once ~40% of the shards are out (past several `.progress.json` saves, so the
        # rerun has finished shards to keep), at no chosen point of a write
        while not (out.is_dir() and len(list(out.glob("*.tfrecord"))) >= 0.4 * len(reference)):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the shards did not appear within 120 s"
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    visible = shard_hashes(out)
    assert not (out / "manifest.json").exists(), "the run finished before the kill"
    assert 0 < len(visible) < len(reference)
    # every shard under its final name is complete: byte-identical to the reference's
    assert {name: reference[name] for name in visible} == visible
    with pytest.raises(Exception, match="manifest.json' not found"):
        preprocess.shard_files(out, "photo", "train")  # a later step refuses the half output

    result = preprocess.run(cfg, root / "validate", out, progress=False)
    assert 0 < result.reused_shards <= len(visible)  # finished shards kept, after a hash check
    assert shard_hashes(out) == reference
    ref_manifest = json.loads((root / "reference" / "manifest.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["shards"], manifest["counts"]) == (
        ref_manifest["shards"],
        ref_manifest["counts"],
    )
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no temp left


def test_split_is_stable_when_images_are_added(dataset, tmp_path):
    root, _, params = dataset
    cfg = load_config(params, ["preprocess.shard_size=32", "preprocess.workers=1"])
    before = splits_by_name(root / "reference")
    write_images(tmp_path / "photos", range(150))
    write_images(tmp_path / "photos", range(5000, 5040))  # 40 new photos
    result = validate.run(cfg, tmp_path / "photos", root / "monets", tmp_path / "validate",
                          progress=False)  # fmt: skip
    assert result.passed
    preprocess.run(cfg, tmp_path / "validate", tmp_path / "data", progress=False)
    after = splits_by_name(tmp_path / "data")
    assert len(after) == len(before) + 40
    assert {name: after[name] for name in before} == before
    assert {"train", "test"} == set(after.values())


def test_input_changed_after_validation_is_a_clear_error(dataset, tmp_path):
    root, _, params = dataset
    import shutil

    cfg = load_config(params, ["preprocess.workers=1"])

    shutil.copytree(root / "photos", tmp_path / "photos")
    validate.run(cfg, tmp_path / "photos", root / "monets", tmp_path / "validate", progress=False)
    write_images(tmp_path / "changed", range(7000, 7001))
    os.replace(tmp_path / "changed" / "img7000.jpg", tmp_path / "photos" / "img0003.jpg")
    with pytest.raises(preprocess.InputChangedError, match="img0003.jpg' changed after validation"):
        preprocess.run(cfg, tmp_path / "validate", tmp_path / "data", progress=False)


def test_large_jpegs_decode_at_reduced_scale_and_look_the_same(tmp_path):
    """A 2400x1800 photo bound for 64 px is decoded at 1/4 scale (>= 4x the output size), and
    the resized image matches a full-resolution bicubic resize to a fraction of a level."""
    from cyclegan.data.images import open_rgb
    from cyclegan.data.sample import source_photos

    photo = Image.open(source_photos()[0]).convert("RGB").resize((2400, 1800), Image.BICUBIC)
    path = tmp_path / "big.jpg"
    photo.save(path, quality=95)
    size = 64

    drafted = open_rgb(path, min_side=preprocess.DECODE_GAP * size)
    assert drafted.size == (600, 450)  # 1/4 scale: both sides still >= 256
    assert open_rgb(path).size == (2400, 1800)  # without min_side: full resolution
    ours = preprocess.resize(drafted, size, "center_crop")
    full = open_rgb(path).crop((300, 0, 2100, 1800)).resize((size, size), Image.BICUBIC)
    diff = np.abs(np.asarray(ours, np.float64) - np.asarray(full, np.float64))
    assert diff.mean() < 0.5, diff.mean()  # of 255 levels (the JPEG encode adds ~1-4)

    buf = io.BytesIO()
    ours.save(buf, format="JPEG", quality=95)  # encode_image is this exact path
    assert preprocess.encode_image(str(path), size, "center_crop", 95) == buf.getvalue()
