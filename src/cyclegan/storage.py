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
