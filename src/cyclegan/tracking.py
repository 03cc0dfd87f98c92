"""MLflow: tracking URI, run logging, the pyfunc model, and the FID-gated registry.

Registry conventions are MLflow 3's: aliases (`challenger`, `champion`), not stages.
"""

from __future__ import annotations

import getpass
import json
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
TAG_HISTORY = "champion_history"  # JSON list of champion versions, oldest first
TAG_GATE_FLOOR = "gate_floor"  # versions up to this one predate the last human decision


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
    """The code version: git HEAD, else $CYCLEGAN_GIT_COMMIT (set in the container image)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("CYCLEGAN_GIT_COMMIT")


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


def log_metric_history(client, run_id: str, rows: Iterable[dict], batch: int = 1000) -> int:
    """Log the loss history: every column per step (`train.*`) and the per-epoch means
    (`epoch.*`, step = epoch), in batches of `batch` values, not one HTTP call per value."""
    import time
    from collections import defaultdict

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics, sums = [], defaultdict(lambda: defaultdict(list))
    for row in rows:
        step, epoch = int(row["step"]), int(row["epoch"])
        for k, v in row.items():
            if k in ("step", "epoch"):
                continue
            metrics.append(Metric(key=f"train.{k}", value=float(v), timestamp=now, step=step))
            sums[epoch][k].append(float(v))
    for epoch, columns in sums.items():
        for k, values in columns.items():
            metrics.append(Metric(key=f"epoch.{k}", value=sum(values) / len(values),
                                  timestamp=now, step=epoch))  # fmt: skip
    _log_batches(client, run_id, metrics, batch)
    return len(metrics)


def log_fid_history(client, run_id: str, rows: Iterable[dict], batch: int = 1000) -> int:
    """Log the train step's FID curve (fid.csv rows) as `train.fid`, step = global step.
    Rows without a finite FID (recorded empty) are left out."""
    import math
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = []
    for row in rows:
        value = float(row["fid"]) if str(row.get("fid") or "").strip() else math.nan
        if math.isfinite(value):
            metrics.append(Metric(key="train.fid", value=value, timestamp=now,
                                  step=int(row["step"])))  # fmt: skip
    _log_batches(client, run_id, metrics, batch)
    return len(metrics)


def _log_batches(client, run_id: str, metrics: list, batch: int) -> None:
    for i in range(0, len(metrics), batch):
        client.log_batch(run_id, metrics=metrics[i : i + batch])


def log_generator(saved_model_dir: str | Path, size_multiple: int, name: str = "generator",
                  registered_model_name: str | None = None):  # fmt: skip
    """Log the generator as a pyfunc ("models from code"); returns the ModelInfo."""
    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    example = np.zeros((1, 32, 32, 3), np.uint8)
    images = Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))])  # any batch, any size
    signature = ModelSignature(inputs=images, outputs=images)
    tf_req = "tensorflow-cpu" if _installed("tensorflow-cpu") else "tensorflow"
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(Path(__file__).with_name("serving_model.py")),
        artifacts={"generator": str(saved_model_dir)},
        model_config={"size_multiple": size_multiple, "batch_size": 8},
        signature=signature,
        input_example=example,
        registered_model_name=registered_model_name,
        pip_requirements=[
            f"{tf_req}=={_version(tf_req)}",
            f"mlflow=={_version('mlflow')}",
            f"numpy=={_version('numpy')}",
        ],  # fmt: skip
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


TRANSIENT_REGISTRY_ERRORS = ("UNIQUE constraint failed", "database is locked", "Deadlock")


def _retry(fn, *args, attempts: int = 6):
    """Call a registry write, retrying races between concurrent writers that MLflow's SQL
    store reports as errors (a UNIQUE constraint when two set the same alias or tag at once,
    a locked sqlite database)."""
    import time

    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            return fn(*args)
        except MlflowException as exc:
            if attempt == attempts - 1 or not any(t in str(exc) for t in TRANSIENT_REGISTRY_ERRORS):
                raise
            time.sleep(0.1 * 2**attempt)


def _set_alias(client, name: str, alias: str, version: int) -> None:
    _retry(client.set_registered_model_alias, name, alias, str(version))


def _tag_version(client, name: str, version: int, key: str, value) -> None:
    _retry(client.set_model_version_tag, name, str(version), key, str(value))


def _tag_model(client, name: str, key: str, value) -> None:
    _retry(client.set_registered_model_tag, name, key, str(value))


def _history(client, name: str) -> list[int]:
    return json.loads(client.get_registered_model(name).tags.get(TAG_HISTORY, "[]"))


def _set_champion(client, name: str, version: int, reason: str, decided_by: str) -> None:
    """Record why on the version, then move the `champion` alias and extend the history.

    The tags come first so a concurrent reconciler that sees the alias also sees the tags.
    """
    _tag_version(client, name, version, "promoted", "true")
    _tag_version(client, name, version, "champion_reason", reason)
    _tag_version(client, name, version, "decided_by", decided_by)
    _set_alias(client, name, CHAMPION, version)
    history = [v for v in _history(client, name) if v != version] + [version]
    _tag_model(client, name, TAG_HISTORY, json.dumps(history))
    if decided_by == "human":  # automatic reconciliation never overrides a human decision
        latest = max(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        _tag_model(client, name, TAG_GATE_FLOOR, str(latest))


def gate(client, name: str, version: int, fid: float, extractor: str, margin: float
         ) -> tuple[bool, str]:  # fmt: skip
    """The FID gate for a new version: `challenger` always; `champion` if it wins.

    Concurrent registrations end consistent: after moving the alias, every gate winner since
    the last human decision is reconciled, so the best FID among them holds.
    """
    champion = current_champion(client, name)
    promoted, reason = promotion_decision(fid, extractor, champion, margin)
    tags = {TAG_FID: fid, TAG_EXTRACTOR: extractor, "promoted": str(promoted).lower(),
            "reason": reason, "champion_fid": champion[TAG_FID] if champion else "none"}  # fmt: skip
    for key, value in tags.items():
        _tag_version(client, name, version, key, str(value))
    _set_alias(client, name, CHALLENGER, version)
    if promoted:
        _set_champion(client, name, version, reason, "fid-gate")
        reconcile_champion(client, name)
    return promoted, reason


def reconcile_champion(client, name: str) -> int | None:
    """Among the versions the gate promoted since the last human decision, with the
    champion's extractor, make the best FID the champion (idempotent; run after every
    promotion, so the last reconciler sees every winner: their tags precede their alias)."""
    champion = current_champion(client, name)
    if champion is None:
        return None
    since_version = int(client.get_registered_model(name).tags.get(TAG_GATE_FLOOR, "0"))
    winners = [
        v for v in client.search_model_versions(f"name = '{name}'")
        if int(v.version) > since_version and v.tags.get("promoted") == "true"
        and v.tags.get("decided_by") == "fid-gate"
        and v.tags.get(TAG_EXTRACTOR) == champion.get(TAG_EXTRACTOR) and TAG_FID in v.tags
    ]  # fmt: skip
    if not winners:
        return champion["version"]
    best = min(winners, key=lambda v: (float(v.tags[TAG_FID]), int(v.version)))
    if int(best.version) != champion["version"] and float(best.tags[TAG_FID]) < float(
        champion[TAG_FID]
    ):
        _set_champion(client, name, int(best.version),
                      f"concurrent registrations reconciled: best FID {best.tags[TAG_FID]}", "fid-gate")  # fmt: skip
        return int(best.version)
    return champion["version"]


def promote(client, name: str, version: int, note: str = "") -> str:
    """A human decision: make `version` the champion, recorded like the gate's."""
    client.get_model_version(name, str(version))  # fails clearly if it does not exist
    reason = f"promoted by hand by {getpass.getuser()}" + (f": {note}" if note else "")
    _set_champion(client, name, version, reason, "human")
    return reason


def rollback(client, name: str) -> tuple[int, str]:
    """Give `champion` back to the previous champion in the model's history."""
    history = _history(client, name)
    current = current_champion(client, name)
    if current is not None and history and history[-1] == current["version"]:
        history = history[:-1]
    if not history:
        raise RuntimeError(f"model '{name}' has no earlier champion to roll back to")
    previous = history[-1]
    _tag_version(client, name, current["version"], "promoted", "false")
    _tag_version(client, name, current["version"], "rolled_back_by", getpass.getuser())
    _set_alias(client, name, CHAMPION, previous)
    _tag_model(client, name, TAG_HISTORY, json.dumps(history))
    latest = max(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    _tag_model(client, name, TAG_GATE_FLOOR, str(latest))
    reason = f"rolled back by hand from v{current['version']} to v{previous}"
    _tag_version(client, name, previous, "champion_reason", reason)
    return previous, reason
