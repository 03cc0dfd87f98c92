"""Shared fixtures: tiny params, tiny sample data, a tiny feature extractor, a local MLflow.

TF on 2 CPU cores is slow, so tests run the real code at toy sizes (32 px, ngf 4, 1 block).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]

# Overrides that shrink params.yaml to test size; every test starts from the real file.
TINY = {
    "data.sample.n_photo": 28,
    "data.sample.n_monet": 20,
    "data.sample.size": 48,
    "validate.min_images_per_domain": 4,
    "preprocess.image_size": 32,
    "preprocess.shard_size": 16,
    "preprocess.workers": 1,
    "preprocess.test_fraction": 0.25,
    "train.ngf": 4,
    "train.ndf": 4,
    "train.n_blocks": 1,
    "train.epochs": 1,
    "train.epochs_decay": 1,
    "train.batch_size": 2,
    "train.load_size": 36,
    "train.pool_size": 4,
    "train.checkpoint_every": 5,
    "train.log_every": 2,
    "evaluate.input_size": 32,
    "evaluate.kid_subsets": 5,
    "evaluate.grid_rows": 2,
}


def tiny_overrides(**extra) -> list[str]:
    values = {**TINY, **{k.replace("__", "."): v for k, v in extra.items()}}
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]  # JSON is valid YAML


def write_params(path: Path, overrides: list[str]) -> Path:
    """Copy the repository's params.yaml with overrides applied (the real loader checks them)."""
    from cyclegan.config import apply_override

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for o in overrides:
        apply_override(raw, o)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def tiny_extractor_path(tmp_path_factory) -> Path:
    """A small deterministic Keras feature network, standing in for InceptionV3 in tests."""
    import keras

    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((None, None, 3)),
            keras.layers.Conv2D(16, 3, strides=2, activation="relu"),
            keras.layers.Conv2D(32, 3, strides=2, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
        ]
    )
    path = tmp_path_factory.mktemp("extractor") / "tiny_features.keras"
    model.save(path)
    return path


@pytest.fixture(scope="session")
def tiny_config(tiny_extractor_path):
    from cyclegan.config import load_config

    def make(**extra):
        extra.setdefault("evaluate__extractor", str(tiny_extractor_path))
        return load_config(REPO / "params.yaml", tiny_overrides(**extra))

    return make


@pytest.fixture(scope="session")
def sample_dirs(tmp_path_factory, tiny_config) -> dict[str, Path]:
    """Tiny sample data (Kaggle layout), made once; tests must not modify it."""
    from cyclegan.steps import sample_data

    out = tmp_path_factory.mktemp("sample") / "sample"
    dirs = sample_data.run(tiny_config(), out)
    return {k: Path(v) for k, v in dirs.items()}


@pytest.fixture(scope="session")
def pipeline_outputs(tmp_path_factory, tiny_config, sample_dirs) -> dict[str, Path]:
    """validate -> preprocess -> train -> evaluate on the tiny data, once per session."""
    from cyclegan.steps import evaluate, preprocess, train, validate

    cfg = tiny_config()
    root = tmp_path_factory.mktemp("pipeline")
    outs = {k: root / k for k in ("validate", "data", "train", "evaluate")}
    result = validate.run(cfg, sample_dirs["photo_dir"], sample_dirs["monet_dir"],
                          outs["validate"], progress=False)  # fmt: skip
    assert result.passed, result.message()
    preprocess.run(cfg, outs["validate"], outs["data"], progress=False)
    train.run(cfg, outs["data"], outs["train"], progress=False)
    evaluate.run(cfg, outs["data"], outs["train"], outs["evaluate"])
    return outs


@pytest.fixture(scope="session")
def fid_outputs(tmp_path_factory, tiny_config, pipeline_outputs) -> dict[str, Path]:
    """train with the FID curve on (train.fid_every_epochs=1), then evaluate, on the tiny data,
    once per session; otherwise the settings of pipeline_outputs."""
    from cyclegan.steps import evaluate, train

    cfg = tiny_config(train__fid_every_epochs=1)
    root = tmp_path_factory.mktemp("fid")
    outs = {
        "data": pipeline_outputs["data"],
        "train": root / "train",
        "evaluate": root / "evaluate",
    }
    train.run(cfg, outs["data"], outs["train"], progress=False)
    evaluate.run(cfg, outs["data"], outs["train"], outs["evaluate"])
    return outs


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # sqlite stores put artifacts under ./mlruns
    return uri


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def delete_bucket(client, bucket: str) -> None:
    """Empty and delete an S3 bucket (tests share one moto server for the session)."""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])
    client.delete_bucket(Bucket=bucket)


@pytest.fixture(scope="session")
def moto_server() -> tuple[str, int]:
    """A real S3 API server on 127.0.0.1 (moto's standalone server), shared by the session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        yield server.get_host_and_port()
    finally:
        server.stop()
