"""Register step: one MLflow run with everything about this pipeline run, the generator as a
pyfunc model version, and the FID gate that decides `champion`."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path

from cyclegan import tracking
from cyclegan.config import Config
from cyclegan.storage import read_manifest, write_json

REGISTRATION_JSON = "registration.json"


@dataclasses.dataclass
class RegisterResult:
    model_name: str
    version: int
    run_id: str
    promoted: bool
    reason: str
    tracking_uri: str
    info: dict


def run(cfg: Config, train_dir: str | Path, eval_dir: str | Path, out_dir: str | Path,
        validate_dir: str | Path | None = None) -> RegisterResult:  # fmt: skip
    import mlflow
    from mlflow import MlflowClient

    rcfg = cfg.register
    uri = tracking.check_tracking_server()
    train_dir, eval_dir = Path(train_dir), Path(eval_dir)
    export = train_dir / "export"
    train_manifest = read_manifest(export, "train")
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    fingerprint = train_manifest["fingerprint"]

    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    mlflow.set_experiment(rcfg.experiment)

    existing = client.search_model_versions(
        f"name = '{rcfg.model_name}' and tags.`{tracking.TAG_FINGERPRINT}` = '{fingerprint}'"
    ) if client.search_registered_models(f"name = '{rcfg.model_name}'") else []  # fmt: skip
    if existing:  # idempotent: this exact model is registered already
        version = existing[0]
        info = {"model_name": rcfg.model_name, "version": int(version.version),
                "run_id": version.run_id, "promoted": version.tags.get("promoted") == "true",
                "reason": version.tags.get("reason", ""), "tracking_uri": uri,
                "fid": metrics["fid"], "already_registered": True}  # fmt: skip
        write_json(Path(out_dir) / REGISTRATION_JSON, info)
        return RegisterResult(rcfg.model_name, int(version.version), version.run_id,
                              info["promoted"], info["reason"], uri, info)  # fmt: skip

    tags = {"git_commit": tracking.git_commit() or "unknown", tracking.TAG_FINGERPRINT: fingerprint,
            "extractor": metrics["extractor"], **tracking.dvc_data_hashes()}  # fmt: skip
    if os.environ.get("KFP_RUN_ID"):
        tags["kfp_run_id"] = os.environ["KFP_RUN_ID"]
    with mlflow.start_run(run_name=f"cyclegan-{fingerprint}", tags=tags) as active:
        run_id = active.info.run_id
        mlflow.log_params(tracking.flatten(cfg.to_dict()))
        losses_csv = train_dir / "losses.csv"
        if losses_csv.is_file():
            with losses_csv.open() as fh:
                tracking.log_metric_history(client, run_id, csv.DictReader(fh))
            mlflow.log_artifact(str(losses_csv), "train")
        fid_csv = train_dir / "fid.csv"  # the FID curve, when train.fid_every_epochs was on
        if fid_csv.is_file():
            with fid_csv.open() as fh:
                fid_rows = list(csv.DictReader(fh))
            if fid_rows:
                tracking.log_fid_history(client, run_id, fid_rows)
                mlflow.log_artifact(str(fid_csv), "train")
        numeric = {k: v for k, v in metrics.items()
                   if isinstance(v, int | float) and not isinstance(v, bool)}  # fmt: skip
        mlflow.log_metrics(numeric)
        mlflow.log_artifacts(str(eval_dir), "evaluate")
        if validate_dir and Path(validate_dir).is_dir():
            for name in ("summary.json", "rejected.csv"):
                if (Path(validate_dir) / name).is_file():
                    mlflow.log_artifact(str(Path(validate_dir) / name), "validate")
            if (Path(validate_dir) / "data_docs").is_dir():
                mlflow.log_artifacts(str(Path(validate_dir) / "data_docs"), "validate/data_docs")
        model_info = tracking.log_generator(
            export / "G_savedmodel", int(train_manifest["size_multiple"]),
            registered_model_name=rcfg.model_name,
        )  # fmt: skip
    version = int(model_info.registered_model_version)

    client.set_model_version_tag(
        rcfg.model_name, str(version), tracking.TAG_FINGERPRINT, fingerprint
    )
    promoted, reason = tracking.gate(client, rcfg.model_name, version, metrics["fid"],
                                     metrics["extractor"], rcfg.promote_margin)  # fmt: skip
    champion = tracking.current_champion(client, rcfg.model_name)
    client.set_tag(run_id, "registry.decision", reason)

    info = {"model_name": rcfg.model_name, "version": version, "run_id": run_id,
            "promoted": promoted, "reason": reason, "tracking_uri": uri, "fid": metrics["fid"],
            "champion_version": champion["version"] if champion else None,
            "model_uri": f"models:/{rcfg.model_name}/{version}"}  # fmt: skip
    write_json(Path(out_dir) / REGISTRATION_JSON, info)
    return RegisterResult(rcfg.model_name, version, run_id, promoted, reason, uri, info)
