"""Files between steps: atomic writes, sha256, and JSON manifests.

Every step writes through these helpers so a killed step never leaves a half-written file under
its final name, and every step reads the manifest of the step before it first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


class ManifestError(RuntimeError):
    """An input directory lacks its manifest or does not match it."""


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success rename it onto `path` (file or directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: str | Path, step: str, **fields: Any) -> Path:
    return write_json(Path(directory) / MANIFEST, {"step": step, **fields})


def read_manifest(directory: str | Path, step: str) -> dict[str, Any]:
    """Read the manifest a previous step left in `directory`, or fail naming what to run."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ManifestError(
            f"'{path}' not found: '{directory}' is not the output of `cyclegan {step}` "
            f"(run that step first, or point to its output directory)"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ManifestError(f"'{path}' is not valid JSON ({exc}); rerun `cyclegan {step}`") from exc
    if manifest.get("step") != step:
        raise ManifestError(
            f"'{path}' was written by step '{manifest.get('step')}', expected '{step}'"
        )
    return manifest


# --- s3:// through boto3 (endpoint from AWS_ENDPOINT_URL; MinIO, moto, AWS) -----------------

S3_SCHEME = "s3://"


def is_s3_uri(value: str | os.PathLike) -> bool:
    return str(value).startswith(S3_SCHEME)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ('bucket', 'some/prefix')."""
    if not is_s3_uri(uri):
        raise ValueError(f"'{uri}' is not an s3:// URI")
    bucket, _, key = uri[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise ValueError(f"'{uri}' names no bucket (expected s3://bucket/prefix)")
    return bucket, key


def s3_client(retry_mode: str = "standard", max_attempts: int = 5):
    """A boto3 S3 client; endpoint from `AWS_ENDPOINT_URL` (MinIO/moto) or AWS itself.

    botocore's retry handler retries 5xx, throttling (SlowDown, 429) and connection errors with
    jittered exponential backoff, up to `max_attempts` attempts per request in total
    ('standard'; 'adaptive' adds client-side rate limiting).
    """
    import boto3
    from botocore.config import Config as BotoConfig

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    config = BotoConfig(
        retries={"mode": retry_mode, "total_max_attempts": max_attempts},
        s3={"addressing_style": "path"} if endpoint else None,
        connect_timeout=10,
        read_timeout=60,
    )
    return boto3.client("s3", endpoint_url=endpoint or None, config=config)


def iter_s3_objects(client, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
    """Every object under `prefix` ({'Key', 'Size', 'ETag', ...}), in key order, paginated."""
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        yield from page.get("Contents", [])


def download_s3_object(client, bucket: str, key: str, dest: str | Path,
                       chunk: int = 1 << 20) -> str:  # fmt: skip
    """Stream one object into `dest` (atomically); return its sha256."""
    digest = hashlib.sha256()
    with atomic_path(dest) as tmp, open(tmp, "wb") as fh:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        for block in iter(lambda: body.read(chunk), b""):
            digest.update(block)
            fh.write(block)
    return digest.hexdigest()
