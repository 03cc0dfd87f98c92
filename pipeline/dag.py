"""The KFP v2 DAG: validate -> preprocess -> train -> evaluate -> register (FID-gated).

`build_pipeline(image, options)` returns the pipeline function; everything that depends on the
cluster (image, GPUs, workers, secrets, node placement, volumes) is a compile-time option, and
everything in params.yaml is a run-time pipeline parameter: `params_yaml` (the whole file, its
compile-time contents as the default) plus `overrides` (`section.key=value`, the CLI's `-S`).
"""

import dataclasses
import json
from pathlib import Path
from typing import Any

from kfp import compiler, dsl

from components import make_components
from pipeline.defaults import (
    DEFAULT_MOUNT,
    DEFAULT_RESOURCES,
    GPU_TOLERATION,
    MLFLOW_KEYS,
    MLFLOW_OPTIONAL_KEYS,
    PIPELINE_NAME,
    S3_KEYS,
    S3_OPTIONAL_KEYS,
)

__all__ = ["DEFAULT_MOUNT", "PIPELINE_NAME", "PipelineOptions", "build_pipeline",
           "compile_pipeline", "params_text"]  # fmt: skip


@dataclasses.dataclass
class PipelineOptions:
    """Compile-time options of the pipeline (the cluster side)."""

    gpus: int = 0  # per training process; 0 = CPU
    workers: int = 1  # > 1: a TFJob with 1 Chief + (workers - 1) Workers
    pvc: str = ""  # ReadWriteMany PVC mounted at `mount_path` on every task (needed if workers > 1)
    mount_path: str = DEFAULT_MOUNT
    s3_secret: str = "cyclegan-s3"  # "" = don't wire
    mlflow_secret: str = "cyclegan-mlflow"  # "" = don't wire
    node_selector: dict[str, str] | None = None  # train pods; default: GPU nodes when gpus > 0
    tolerations: list[dict[str, Any]] | None = None  # train pods; default: the nvidia.com/gpu taint
    resources: dict[str, tuple[str, str, str, str]] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_RESOURCES)
    )
    train_retries: int = 3  # preemption: a retried train resumes from checkpoints on the PVC
    tfjob_timeout_s: int = 7 * 24 * 3600
    kubernetes: bool = True  # False: no cluster settings at all (kfp.local runs)

    def __post_init__(self) -> None:
        if self.gpus < 0 or self.workers < 1:
            raise ValueError(
                f"gpus must be >= 0 and workers >= 1 (got {self.gpus}, {self.workers})"
            )
        if self.workers > 1 and not self.pvc and self.kubernetes:
            raise ValueError("--workers > 1 runs a TFJob, whose pods share data through a "
                             "ReadWriteMany volume: pass --pvc NAME")  # fmt: skip

    def train_node_selector(self) -> dict[str, str]:
        if self.node_selector is not None:
            return dict(self.node_selector)
        return {"nvidia.com/gpu.present": "true"} if self.gpus else {}

    def train_tolerations(self) -> list[dict[str, Any]]:
        if self.tolerations is not None:
            return [dict(t) for t in self.tolerations]
        return [dict(GPU_TOLERATION)] if self.gpus else []


def _resources(task: dsl.PipelineTask, spec: tuple[str, str, str, str]) -> None:
    cpu_req, cpu_lim, mem_req, mem_lim = spec
    task.set_cpu_request(cpu_req).set_cpu_limit(cpu_lim)
    task.set_memory_request(mem_req).set_memory_limit(mem_lim)


def _wire_secrets(task: dsl.PipelineTask, opts: PipelineOptions, mlflow: bool = False) -> None:
    from kfp import kubernetes

    if opts.s3_secret:
        kubernetes.use_secret_as_env(task, opts.s3_secret, S3_KEYS)
        kubernetes.use_secret_as_env(task, opts.s3_secret, S3_OPTIONAL_KEYS, optional=True)
    if mlflow and opts.mlflow_secret:
        kubernetes.use_secret_as_env(task, opts.mlflow_secret, MLFLOW_KEYS)
        kubernetes.use_secret_as_env(task, opts.mlflow_secret, MLFLOW_OPTIONAL_KEYS, optional=True)


def _cluster(task: dsl.PipelineTask, step: str, opts: PipelineOptions, *, mlflow: bool = False,
             placement: bool = False) -> None:  # fmt: skip
    """Resources, secrets as env, the shared volume and (train) node placement."""
    if not opts.kubernetes:
        return
    from kfp import kubernetes

    _resources(task, opts.resources[step])
    _wire_secrets(task, opts, mlflow=mlflow)
    if opts.pvc:
        kubernetes.mount_pvc(task, pvc_name=opts.pvc, mount_path=opts.mount_path)
    if placement:
        for key, value in opts.train_node_selector().items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for tol in opts.train_tolerations():
            kubernetes.add_toleration(task, key=tol.get("key"), operator=tol.get("operator"),
                                      value=tol.get("value"), effect=tol.get("effect"),
                                      toleration_seconds=tol.get("tolerationSeconds"))  # fmt: skip


def _tfjob_pod_options(opts: PipelineOptions) -> str:
    cpu_req, cpu_lim, mem_req, mem_lim = opts.resources["train"]
    secret_env = []
    if opts.s3_secret:
        secret_env += [{"secret": opts.s3_secret, "keys": S3_KEYS},
                       {"secret": opts.s3_secret, "keys": S3_OPTIONAL_KEYS, "optional": True}]  # fmt: skip
    return json.dumps({
        "node_selector": opts.train_node_selector(),
        "tolerations": opts.train_tolerations(),
        "resources": {"requests": {"cpu": cpu_req, "memory": mem_req},
                      "limits": {"cpu": cpu_lim, "memory": mem_lim}},
        "secret_env": secret_env,
    })  # fmt: skip


def default_overrides(opts: PipelineOptions, overrides: list[str] | tuple = ()) -> list[str]:
    """Run-time overrides' default: more than one local GPU means MirroredStrategy."""
    out = list(overrides)
    if (
        opts.gpus > 1
        and opts.workers == 1
        and not any(o.startswith("train.strategy=") for o in out)
    ):
        out.insert(0, "train.strategy=mirrored")
    return out


def params_text(params_path: str | Path = "params.yaml") -> str:
    """params.yaml as one line of JSON: the `params_yaml` pipeline parameter (JSON is YAML).

    One line, because the KFP compiler echoes parameter defaults into a YAML comment header,
    where a multi-line default would break the file.
    """
    import yaml

    return json.dumps(yaml.safe_load(Path(params_path).read_text()))


def build_pipeline(image: str | None = None, options: PipelineOptions | None = None,
                   params_path: str | Path = "params.yaml", overrides: list[str] | tuple = ()):  # fmt: skip
    """The pipeline function for `image`; `params_path`'s text is the default `params_yaml`."""
    from cyclegan.config import load_config

    opts = options or PipelineOptions()
    comps = make_components(image)
    default_params = params_text(params_path)
    cfg = load_config(params_path, list(overrides))  # a bad params file fails at compile time
    defaults = default_overrides(opts, overrides)
    work_root = opts.mount_path if opts.pvc else ""

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Photo -> Monet CycleGAN: validate, preprocess, train, evaluate, and "
        "register in MLflow when the FID gate passes.",
    )
    def cyclegan_pipeline(
        params_yaml: str = default_params,
        overrides: list = defaults,  # noqa: B006 (KFP needs a literal default)
        photo_dir: str = "",
        monet_dir: str = "",
        max_fid_ratio: float = cfg.register.max_fid_ratio,
    ):
        """photo_dir / monet_dir: "" = data.photo_dir / data.monet_dir from the params.
        max_fid_ratio: register only if FID(G(photos), paintings) / FID(photos, paintings) <= this."""
        validate = comps.validate(photo_dir=photo_dir, monet_dir=monet_dir,
                                  params_yaml=params_yaml, overrides=overrides)  # fmt: skip
        validate.set_display_name("validate").set_caching_options(True)
        _cluster(validate, "validate", opts)

        preprocess = comps.preprocess(validated=validate.outputs["validated"],
                                      params_yaml=params_yaml, overrides=overrides)  # fmt: skip
        preprocess.set_display_name("preprocess").set_caching_options(True)
        _cluster(preprocess, "preprocess", opts)

        if opts.workers > 1:
            train = comps.train_tfjob(
                data=preprocess.outputs["data"], params_yaml=params_yaml, overrides=overrides,
                image=comps.image, workers=opts.workers, gpus_per_worker=opts.gpus,
                work_root=work_root, pvc_name=opts.pvc, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                pod_options_json=_tfjob_pod_options(opts), timeout_s=opts.tfjob_timeout_s,
            )  # fmt: skip
            train.set_display_name("train (TFJob)")
            _cluster(train, "train_launcher", opts)
        else:
            train = comps.train(data=preprocess.outputs["data"], params_yaml=params_yaml,
                                overrides=overrides, work_root=work_root,
                                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)  # fmt: skip
            train.set_display_name("train")
            if opts.gpus and opts.kubernetes:
                train.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(opts.gpus)
            _cluster(train, "train", opts, placement=True)
        train.set_caching_options(False)
        if opts.kubernetes:
            train.set_retry(num_retries=opts.train_retries, backoff_duration="60s",
                            backoff_factor=2.0, backoff_max_duration="3600s")  # fmt: skip

        evaluate = comps.evaluate(data=preprocess.outputs["data"], model=train.outputs["model"],
                                  params_yaml=params_yaml, overrides=overrides,
                                  max_fid_ratio=max_fid_ratio)  # fmt: skip
        evaluate.set_display_name("evaluate").set_caching_options(True)
        _cluster(evaluate, "evaluate", opts)

        with dsl.If(evaluate.outputs["Output"] == True, name="fid-gate"):  # noqa: E712
            register = comps.register(model=train.outputs["model"],
                                      evaluation=evaluate.outputs["evaluation"],
                                      validated=validate.outputs["validated"],
                                      params_yaml=params_yaml, overrides=overrides,
                                      run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)  # fmt: skip
            register.set_display_name("register").set_caching_options(False)
            _cluster(register, "register", opts, mlflow=True)

    return cyclegan_pipeline


def compile_pipeline(package_path: str | Path, image: str | None = None,
                     options: PipelineOptions | None = None, params_path: str | Path = "params.yaml",
                     overrides: list[str] | tuple = ()) -> Path:  # fmt: skip
    """Compile the pipeline to a KFP v2 IR YAML file."""
    func = build_pipeline(image, options, params_path, overrides)
    package_path = Path(package_path)
    package_path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_func=func, package_path=str(package_path))
    return package_path
