"""The DVC remote on S3 (MinIO in the cluster), against a real S3 API server on 127.0.0.1.

The server is moto's standalone server (`ThreadedMotoServer`, the one MLflow and dvc-s3 test
against), on a free port. A throw-away git + DVC repository adds a folder of images, pushes it
to `s3://dvc/cyclegan` exactly as infra/README.md configures it (`dvc remote add`, `endpointurl`,
credentials in the environment or in the git-ignored `.dvc/config.local`), deletes the data and
the cache, pulls, and compares every byte. DVC runs as the venv's `dvc` executable, as a user
would run it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import delete_bucket

DVC = Path(sys.executable).parent / "dvc"
BUCKET, PREFIX = "dvc", "cyclegan"
FAKE_KEY, FAKE_SECRET = "testing-key", "testing-secret"  # moto accepts any credentials


@pytest.fixture(scope="module")
def s3_endpoint(moto_server):
    host, port = moto_server
    return f"http://{host}:{port}"


@pytest.fixture
def s3(s3_endpoint):
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=FAKE_KEY,
        aws_secret_access_key=FAKE_SECRET,
    )
    client.create_bucket(Bucket=BUCKET)
    yield client
    delete_bucket(client, BUCKET)


def base_env(tmp_path: Path) -> dict[str, str]:
    """No credentials of the machine's own, DVC's caches inside tmp_path, no network chatter."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DVC_"))}
    aws = tmp_path / "aws"
    aws.mkdir(exist_ok=True)
    for name in ("config", "credentials"):
        (aws / name).touch()
    env.update(
        AWS_CONFIG_FILE=str(aws / "config"),
        AWS_SHARED_CREDENTIALS_FILE=str(aws / "credentials"),
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
        DVC_NO_ANALYTICS="1",
        DVC_SITE_CACHE_DIR=str(tmp_path / "dvc-site-cache"),
        XDG_CONFIG_HOME=str(tmp_path / "xdg-config"),
        GIT_CONFIG_NOSYSTEM="1",
    )
    return env


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def make_images(root: Path) -> None:
    """A few real image files (JPEG, PNG, a nested folder) with random content."""
    rng = np.random.default_rng(0)
    (root / "photo").mkdir(parents=True)
    (root / "monet" / "extra").mkdir(parents=True)
    for i in range(3):
        pixels = rng.integers(0, 256, size=(40 + i, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "photo" / f"photo_{i}.jpg", quality=90)
        Image.fromarray(pixels[::-1]).save(root / "monet" / f"monet_{i}.png")
    big = rng.integers(0, 256, size=(512, 512, 3), dtype=np.uint8)  # ~770 KB, not one tiny blob
    Image.fromarray(big).save(root / "monet" / "extra" / "large.png", compress_level=0)


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def new_repo(tmp_path: Path, env: dict[str, str]) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    run(["git", "init", "-q"], repo, env)
    run(["git", "config", "user.name", "cyclegan tests"], repo, env)
    run(["git", "config", "user.email", "tests@example.invalid"], repo, env)
    run([str(DVC), "init", "-q"], repo, env)
    return repo


@pytest.mark.parametrize("credentials", ["env", "config.local"])
def test_push_wipe_pull_round_trip(tmp_path, s3_endpoint, s3, credentials):
    assert DVC.is_file(), f"dvc not found next to {sys.executable}"
    env = base_env(tmp_path)
    repo = new_repo(tmp_path, env)
    data = repo / "data" / "images"
    make_images(data)
    before = digests(data)
    assert len(before) == 7

    run([str(DVC), "add", "data/images"], repo, env)
    # the remote as infra/README.md sets it up
    run([str(DVC), "remote", "add", "-d", "minio", f"s3://{BUCKET}/{PREFIX}"], repo, env)
    run([str(DVC), "remote", "modify", "minio", "endpointurl", s3_endpoint], repo, env)
    if credentials == "env":
        # sanity of the setup: without credentials the push is refused, nothing lands
        proc = subprocess.run(
            [str(DVC), "push"], cwd=repo, env=env, capture_output=True, timeout=120
        )
        assert proc.returncode != 0 and b"credentials" in proc.stderr, proc.stderr
        assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0
        env = {**env, "AWS_ACCESS_KEY_ID": FAKE_KEY, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET}
    else:
        for key, value in (("access_key_id", FAKE_KEY), ("secret_access_key", FAKE_SECRET)):
            run([str(DVC), "remote", "modify", "--local", "minio", key, value], repo, env)
        local = (repo / ".dvc" / "config.local").read_text()
        assert FAKE_KEY in local and FAKE_SECRET in local
        assert FAKE_SECRET not in (repo / ".dvc" / "config").read_text()
        run(["git", "check-ignore", "-q", ".dvc/config.local"], repo, env)  # never committed
    run(["git", "add", "data/images.dvc", "data/.gitignore", ".dvc/config"], repo, env)
    run(["git", "commit", "-q", "-m", "images under DVC"], repo, env)

    run([str(DVC), "push"], repo, env)
    keys = [
        obj["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX)
        for obj in page.get("Contents", [])
    ]
    assert len(keys) == len(before) + 1, keys  # every file + the directory manifest
    assert all(k.startswith(f"{PREFIX}/files/md5/") for k in keys), keys

    # lose everything local: the data and the cache
    shutil.rmtree(data)
    shutil.rmtree(repo / ".dvc" / "cache")
    assert not data.exists()

    run([str(DVC), "pull"], repo, env)
    assert digests(data) == before
    assert "in sync" in run([str(DVC), "status", "--cloud"], repo, env)
