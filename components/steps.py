"""The five pipeline steps as KFP v2 lightweight Python components.

Each function is a thin adapter: it turns KFP artifacts and parameters into directories and a
`cyclegan.config.Config` (the pipeline passes the text of params.yaml plus `section.key=value`
overrides), calls `cyclegan.steps.<step>.run(...)`, and fills the output artifacts. KFP runs
each body in a fresh interpreter inside the project image, so every import is inside the body.

The image is never hard-coded: `make_components(image)` wraps these functions with
`dsl.component(base_image=image)`; `default_image()` reads `$CYCLEGAN_IMAGE`.
"""

import dataclasses
import os
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output, OutputPath

IMAGE_ENV = "CYCLEGAN_IMAGE"
FALLBACK_IMAGE = "cyclegan:latest"


def validate(
    photo_dir: str,
    monet_dir: str,
    params_yaml: str,
    overrides: list[str],
    validated: Output[Dataset],
    data_docs: Output[HTML],
) -> NamedTuple("ValidateOutputs", [("n_accepted", int), ("n_rejected", int)]):
    """Great Expectations checks of every input image -> the validated manifest directory."""
    from collections import namedtuple
    from pathlib import Path

    from components import _runtime
    from cyclegan.steps import validate as step

    cfg = _runtime.load_cfg(params_yaml, overrides)
    result = step.run(cfg, photo_dir or cfg.data.photo_dir, monet_dir or cfg.data.monet_dir,
                      validated.path, progress=False)  # fmt: skip
    print(result.message())
    _runtime.copy_file(Path(validated.path) / "data_docs" / "index.html", data_docs.path)
    summary = result.summary
    validated.metadata.update(
        {"passed": result.passed, "n_accepted": summary["n_accepted"],
         "n_rejected": summary["n_rejected"], "accepted": summary["accepted"]}
    )  # fmt: skip
    if not result.passed:
        raise RuntimeError("validation failed:\n" + result.message())
    outputs = namedtuple("ValidateOutputs", ["n_accepted", "n_rejected"])
    return outputs(int(summary["n_accepted"]), int(summary["n_rejected"]))


def preprocess(
    validated: Input[Dataset],
    params_yaml: str,
    overrides: list[str],
    data: Output[Dataset],
):
    """Accepted images -> resized, sharded TFRecords (train/test split) + manifest."""
    from components import _runtime
    from cyclegan.steps import preprocess as step

    cfg = _runtime.load_cfg(params_yaml, overrides)
    result = step.run(cfg, validated.path, data.path, progress=False)
    print(f"preprocess: {result.counts}")
    data.metadata.update({"counts": result.counts, "image_size": cfg.preprocess.image_size})


def train(
    data: Input[Dataset],
    params_yaml: str,
    overrides: list[str],
    model: Output[Model],
    work_root: str = "",
    run_id: str = "",
) -> NamedTuple("TrainOutputs", [("steps", int)]):
    """Train G, F, D_X, D_Y in this pod (default / mirrored strategy).

    `work_root`: a mounted persistent volume. Training then happens in
    `<work_root>/<run_id>/train` so a retried (preempted) pod resumes from the checkpoints there;
    the result minus checkpoints is copied into the `model` artifact.
    """
    from collections import namedtuple

    from components import _runtime
    from cyclegan.steps import train as step

    cfg = _runtime.load_cfg(params_yaml, overrides)
    work = _runtime.work_dir(work_root, run_id, "train")
    result = step.run(cfg, data.path, work or model.path, progress=False)
    if work is not None:
        _runtime.copy_tree(work, model.path, exclude=("checkpoints",))
    print(
        f"train: {result.steps} steps (resumed from {result.resumed_from}); {result.final_losses}"
    )
    model.metadata.update({"steps": result.steps, "resumed_from": result.resumed_from,
                           "final_losses": result.final_losses, "framework": "keras"})  # fmt: skip
    return namedtuple("TrainOutputs", ["steps"])(int(result.steps))


def train_tfjob(
    data: Input[Dataset],
    params_yaml: str,
    overrides: list[str],
    model: Output[Model],
    image: str,
    workers: int,
    gpus_per_worker: int,
    work_root: str,
    pvc_name: str,
    run_id: str,
    pod_options_json: str = "{}",
    namespace: str = "",
    poll_s: int = 15,
    timeout_s: int = 86400,
) -> NamedTuple("TrainOutputs", [("steps", int)]):
    """Multi-node training: stage the data on the shared volume, run a Kubeflow TFJob
    (Chief + Workers, MultiWorkerMirroredStrategy) of the same image, copy its result back.

    The manifest comes from `pipeline.tfjob.tfjob_manifest`, the wait from `launch_tfjob`.
    """
    import json
    from collections import namedtuple
    from pathlib import Path

    from components import _runtime
    from pipeline import tfjob

    _runtime.load_cfg(params_yaml, overrides)  # fail here, not in the TFJob, on bad params
    if not work_root or not pvc_name:
        raise ValueError("multi-worker training needs a shared ReadWriteMany volume: compile "
                         "the pipeline with --pvc NAME")  # fmt: skip
    work = _runtime.work_dir(work_root, run_id, "tfjob")
    if not (work / "data" / "manifest.json").is_file():  # a retried launcher: staged already
        _runtime.copy_tree(data.path, work / "data")
    (work / "params.yaml").write_text(params_yaml)
    name = tfjob.job_name(run_id)
    manifest = tfjob.tfjob_manifest(
        name=name, namespace=namespace or tfjob.current_namespace(), image=image,
        workers=workers, gpus_per_worker=gpus_per_worker, data_uri=str(work / "data"),
        out_uri=str(work / "train"), params_overrides=list(overrides),
        params_path=str(work / "params.yaml"), pvc_name=pvc_name, mount_path=work_root,
        **json.loads(pod_options_json),
    )  # fmt: skip
    custom, core = tfjob.kube_apis()
    tfjob.launch_tfjob(custom, manifest, manifest["metadata"]["namespace"], poll_s=poll_s,
                       timeout_s=timeout_s, core_api=core)  # fmt: skip
    _runtime.copy_tree(work / "train", model.path, exclude=("checkpoints",))
    export = json.loads((Path(model.path) / "export" / "manifest.json").read_text())
    model.metadata.update({"steps": export["steps"], "tfjob": name, "workers": workers,
                           "final_losses": export["final_losses"], "framework": "keras"})  # fmt: skip
    return namedtuple("TrainOutputs", ["steps"])(int(export["steps"]))


def evaluate(
    data: Input[Dataset],
    model: Input[Model],
    params_yaml: str,
    overrides: list[str],
    max_fid_ratio: float,
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    samples: Output[HTML],
    fid: OutputPath(float),
) -> bool:
    """FID / KID / MiFID of G(held-out photos) vs the paintings, and the sample grid.

    Returns the registration gate (the task's `Output`; a single return value, because
    kfp.local's condition evaluator only resolves task outputs named `Output`); the FID value
    is the output parameter `fid`.
    """
    from pathlib import Path

    from components import _runtime
    from cyclegan.steps import evaluate as step

    cfg = _runtime.load_cfg(params_yaml, overrides)
    result = step.run(cfg, data.path, model.path, evaluation.path)
    m = result.metrics
    for key, value in _runtime.numeric_metrics(m).items():
        metrics.log_metric(key, value)
    passed = _runtime.fid_gate(m, max_fid_ratio)
    metrics.log_metric("passed_gate", float(passed))
    Path(samples.path).parent.mkdir(parents=True, exist_ok=True)
    Path(samples.path).write_text(_runtime.image_html(
        Path(evaluation.path) / step.GRID_PNG, "CycleGAN samples",
        "photo | G(photo) | F(G(photo)) | painting | F(painting) | G(F(painting))",
    ))  # fmt: skip
    evaluation.metadata.update({"extractor": m["extractor"], "notes": m["notes"]})
    print(
        f"evaluate: FID {m['fid']:.4g}, baseline {m['fid_baseline_photos']}, "
        f"ratio {m['fid_ratio']} (gate <= {max_fid_ratio}: {'pass' if passed else 'fail'})"
    )
    Path(fid).parent.mkdir(parents=True, exist_ok=True)
    Path(fid).write_text(repr(float(m["fid"])))
    return passed


def register(
    model: Input[Model],
    evaluation: Input[Artifact],
    validated: Input[Dataset],
    params_yaml: str,
    overrides: list[str],
    registration: Output[Artifact],
    run_id: str = "",
) -> NamedTuple("RegisterOutputs", [("model_uri", str), ("version", int), ("promoted", bool)]):
    """Log the run to MLflow, register G as a model version, FID-gated `champion` alias."""
    import os
    from collections import namedtuple

    from components import _runtime
    from cyclegan.steps import register as step

    if run_id:
        os.environ.setdefault("KFP_RUN_ID", run_id)
    cfg = _runtime.load_cfg(params_yaml, overrides)
    result = step.run(cfg, model.path, evaluation.path, registration.path,
                      validate_dir=validated.path)  # fmt: skip
    state = "champion" if result.promoted else "challenger"
    print(f"register: {result.model_name} version {result.version} ({state}): {result.reason}")
    uri = f"models:/{result.model_name}/{result.version}"
    registration.metadata.update({"model_uri": uri, "run_id": result.run_id,
                                  "promoted": result.promoted, "reason": result.reason,
                                  "tracking_uri": result.tracking_uri})  # fmt: skip
    outputs = namedtuple("RegisterOutputs", ["model_uri", "version", "promoted"])
    return outputs(uri, int(result.version), bool(result.promoted))


STEP_FUNCTIONS = {
    "validate": validate,
    "preprocess": preprocess,
    "train": train,
    "train_tfjob": train_tfjob,
    "evaluate": evaluate,
    "register": register,
}


@dataclasses.dataclass(frozen=True)
class Components:
    """The component objects for one image."""

    image: str
    validate: object
    preprocess: object
    train: object
    train_tfjob: object
    evaluate: object
    register: object


def default_image() -> str:
    return os.environ.get(IMAGE_ENV) or FALLBACK_IMAGE


def make_components(image: str | None = None) -> Components:
    """Wrap the step functions as KFP components running in `image` (default `$CYCLEGAN_IMAGE`).

    The image already contains kfp and this project, so nothing is pip-installed at run time.
    """
    image = image or default_image()
    made = {
        name: dsl.component(func, base_image=image, install_kfp_package=False)
        for name, func in STEP_FUNCTIONS.items()
    }
    return Components(image=image, **made)
