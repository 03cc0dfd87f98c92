"""MLflow: tracking URI, run logging, the pyfunc model, and the FID-gated registry.

Registry conventions are MLflow 3's: aliases (`challenger`, `champion`), not stages.
"""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
CHAMPION, CHALLENGER = "champion", "challenger"
TAG_FID, TAG_EXTRACTOR, TAG_FINGERPRINT = "fid", "extractor", "cyclegan.fingerprint"


class TrackingUnavailable(RuntimeError):
    """The MLflow server cannot be reached; raised before any heavy work."""


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def check_tracking_server(uri: str | None = None, timeout: float = 5.0) -> str:
    """Fail fast, with the URI and the fix, if an HTTP tracking server does not answer."""
    uri = uri or tracking_uri()
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
                pass
        except (urllib.error.URLError, OSError) as exc:
            raise TrackingUnavailable(
                f"MLflow tracking server {uri} is unreachable ({exc}). Start it, fix "
                f"MLFLOW_TRACKING_URI, or unset it to use the local {DEFAULT_TRACKING_URI}"
            ) from exc
    return uri


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def git_commit(cwd: str | Path = ".") -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None


def dvc_data_hashes(lock_path: str | Path = "dvc.lock") -> dict[str, str]:
    """md5 of every stage output recorded in dvc.lock: the data lineage of this run."""
    import yaml

    path = Path(lock_path)
    if not path.is_file():
        return {}
    lock = yaml.safe_load(path.read_text()) or {}
    hashes = {}
    for stage, body in (lock.get("stages") or {}).items():
        for out in body.get("outs") or []:
            if "md5" in out:
                hashes[f"dvc.{stage}.{out['path']}"] = out["md5"]
    return hashes


def log_metric_history(client, run_id: str, rows: Iterable[dict], step_key: str = "step",
                       batch: int = 1000) -> int:  # fmt: skip
    """Log every numeric column of `rows` against `step`, in batches (not one call per value)."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [
        Metric(key=f"train.{k}", value=float(v), timestamp=now, step=int(row[step_key]))
        for row in rows
        for k, v in row.items()
        if k != step_key
    ]
    for i in range(0, len(metrics), batch):
        client.log_batch(run_id, metrics=metrics[i : i + batch])
    return len(metrics)


def log_generator(saved_model_dir: str | Path, size_multiple: int, name: str = "generator",
                  registered_model_name: str | None = None):  # fmt: skip
    """Log the generator as a pyfunc ("models from code"); returns the ModelInfo."""
    import mlflow
    import numpy as np
    from mlflow.models import infer_signature

    example = np.zeros((1, 32, 32, 3), np.uint8)
    signature = infer_signature(example, example)
    tf_req = "tensorflow-cpu" if _installed("tensorflow-cpu") else "tensorflow"
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(Path(__file__).with_name("serving_model.py")),
        artifacts={"generator": str(saved_model_dir)},
        model_config={"size_multiple": size_multiple, "batch_size": 8},
        signature=signature,
        input_example=example,
        registered_model_name=registered_model_name,
        pip_requirements=[f"{tf_req}=={_version(tf_req)}", f"mlflow=={_version('mlflow')}",
                          f"numpy=={_version('numpy')}"],  # fmt: skip
    )


def _installed(dist: str) -> bool:
    from importlib import metadata

    try:
        metadata.version(dist)
        return True
    except metadata.PackageNotFoundError:
        return False


def _version(dist: str) -> str:
    from importlib import metadata

    return metadata.version(dist)


def promotion_decision(candidate_fid: float, candidate_extractor: str,
                       champion: dict | None, margin: float) -> tuple[bool, str]:  # fmt: skip
    """Whether a candidate beats the champion; the reason says why in words."""
    if champion is None:
        return True, "no champion yet: the first model becomes champion"
    if champion.get(TAG_EXTRACTOR) != candidate_extractor:
        return False, (
            f"not compared: champion v{champion['version']} was scored with "
            f"{champion.get(TAG_EXTRACTOR)!r}, this model with {candidate_extractor!r}; FIDs from "
            f"different extractors are not comparable (promote by hand with "
            f"`cyclegan promote --version N` if intended)"
        )
    champion_fid = float(champion[TAG_FID])
    if candidate_fid < champion_fid - margin:
        return True, (f"FID {candidate_fid:.4g} beats champion v{champion['version']} "
                      f"FID {champion_fid:.4g} by more than the margin {margin}")  # fmt: skip
    return False, (f"FID {candidate_fid:.4g} does not beat champion v{champion['version']} "
                   f"FID {champion_fid:.4g} by the margin {margin}")  # fmt: skip


def current_champion(client, name: str) -> dict | None:
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    return {"version": int(version.version), **version.tags}
