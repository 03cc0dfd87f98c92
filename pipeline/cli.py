"""`cyclegan pipeline compile | run | schedule | local`: the Kubeflow Pipelines commands.

Wired into the `cyclegan` CLI by `add_pipeline_commands(subparsers)`; also runs on its own as
`python -m pipeline ...` (`main(argv)`). The run's params are the `-p` file (default
params.yaml) plus `-S section.key=value` overrides, passed as the pipeline parameters
`params_yaml` and `overrides`.
"""

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from pipeline.defaults import DEFAULT_MOUNT, DEFAULT_RESOURCES, PIPELINE_NAME

# pipeline.dag (and so kfp) is imported inside the commands: building the `cyclegan` parser
# must stay cheap for every other command.

HOST_ENV = "KFP_HOST"


# ---------------------------------------------------------------------------- helpers


def _image(args) -> str:
    from components import IMAGE_ENV, default_image

    image = getattr(args, "image", None) or os.environ.get(IMAGE_ENV)
    if not image and getattr(args, "pipeline_command", "") != "local":
        raise ValueError(f"no image: pass --image REGISTRY/cyclegan:TAG or set ${IMAGE_ENV}")
    return image or default_image()


def _overrides(args) -> list[str]:
    return list(getattr(args, "set", None) or []) + list(getattr(args, "pipeline_set", None) or [])


def _parse_toleration(text: str) -> dict[str, Any]:
    """KEY[=VALUE][:EFFECT] -> a toleration (operator Equal with a value, else Exists)."""
    key, _, effect = text.partition(":")
    key, eq, value = key.partition("=")
    tol: dict[str, Any] = {"key": key, "operator": "Equal" if eq else "Exists"}
    if eq:
        tol["value"] = value
    if effect:
        tol["effect"] = effect
    return tol


def _options(args):
    from pipeline.dag import PipelineOptions

    resources = dict(DEFAULT_RESOURCES)
    cpu_req, cpu_lim, mem_req, mem_lim = resources["train"]
    resources["train"] = (args.train_cpu or cpu_req, args.train_cpu or cpu_lim,
                          args.train_memory or mem_req, args.train_memory or mem_lim)  # fmt: skip
    selector = None
    if args.node_selector is not None:
        selector = dict(kv.split("=", 1) for kv in args.node_selector if kv)
    tolerations = None
    if args.toleration is not None:
        tolerations = [_parse_toleration(t) for t in args.toleration if t]
    return PipelineOptions(
        gpus=args.gpus, workers=args.workers, pvc=args.pvc or "", mount_path=args.mount_path,
        s3_secret=args.s3_secret, mlflow_secret=args.mlflow_secret, node_selector=selector,
        tolerations=tolerations, resources=resources, train_retries=args.retries,
    )  # fmt: skip


def _arguments(args) -> dict[str, Any]:
    """Pipeline run arguments: the params text, the overrides, and any given data dirs / gate."""
    from pipeline.dag import params_text

    out: dict[str, Any] = {"params_yaml": params_text(args.params), "overrides": _overrides(args)}
    for name in ("photo_dir", "monet_dir", "max_fid_ratio"):
        if getattr(args, name, None) is not None:
            out[name] = getattr(args, name)
    return out


def _package(args, tmp: str) -> str:
    """The pipeline YAML to submit: --package, else compiled now from the options."""
    from pipeline.dag import compile_pipeline

    if getattr(args, "package", None):
        return args.package
    path = Path(tmp) / "pipeline.yaml"
    compile_pipeline(path, _image(args), _options(args), args.params, _overrides(args))
    return str(path)


def _client(args):
    import kfp

    host = args.host or os.environ.get(HOST_ENV)
    if not host:
        raise ValueError(f"no KFP endpoint: pass --host URL or set ${HOST_ENV}")
    return kfp.Client(host=host, namespace=args.namespace or "kubeflow")


# ---------------------------------------------------------------------------- commands


def cmd_compile(args) -> int:
    from pipeline.dag import compile_pipeline

    path = compile_pipeline(args.out, _image(args), _options(args), args.params, _overrides(args))
    print(f"pipeline: compiled to {path} (image {_image(args)}, gpus {args.gpus}, "
          f"workers {args.workers})")  # fmt: skip
    return 0


def cmd_run(args) -> int:
    client = _client(args)
    with tempfile.TemporaryDirectory(prefix="cyclegan-kfp-") as tmp:
        result = client.create_run_from_pipeline_package(
            _package(args, tmp),
            arguments=_arguments(args),
            run_name=args.run_name or f"{PIPELINE_NAME} {time.strftime('%Y-%m-%d %H:%M:%S')}",
            experiment_name=args.experiment, namespace=args.namespace,
        )  # fmt: skip
    print(f"pipeline: run {result.run_id} submitted to experiment '{args.experiment}'")
    return 0


def find_recurring_run(client, name: str, experiment_id: str | None = None):
    """The recurring run called `name` (in `experiment_id`), or None; reads every page."""
    token = ""
    flt = json.dumps({"predicates": [{"key": "display_name", "operation": "EQUALS",
                                      "stringValue": name}]})  # fmt: skip
    while True:
        page = client.list_recurring_runs(page_token=token, page_size=100,
                                          experiment_id=experiment_id, filter=flt)  # fmt: skip
        for rec in page.recurring_runs or []:
            if rec.display_name == name:
                return rec
        token = page.next_page_token
        if not token:
            return None


def cmd_schedule(args) -> int:
    client = _client(args)
    experiment = client.create_experiment(args.experiment, namespace=args.namespace)
    existing = find_recurring_run(client, args.name, experiment.experiment_id)
    if existing is not None and not args.replace:
        cron = getattr(getattr(existing, "trigger", None), "cron_schedule", None)
        print(f"pipeline: recurring run '{args.name}' exists already "
              f"({existing.recurring_run_id}, cron {getattr(cron, 'cron', '?')}); nothing created "
              f"(--replace to recreate it)")  # fmt: skip
        return 0
    if existing is not None:
        client.delete_recurring_run(existing.recurring_run_id)
        print(f"pipeline: deleted recurring run '{args.name}' ({existing.recurring_run_id})")
    with tempfile.TemporaryDirectory(prefix="cyclegan-kfp-") as tmp:
        created = client.create_recurring_run(
            experiment_id=experiment.experiment_id, job_name=args.name,
            description=f"cyclegan pipeline, cron '{args.cron}'", cron_expression=args.cron,
            max_concurrency=args.max_concurrency, no_catchup=True,
            params=_arguments(args), pipeline_package_path=_package(args, tmp), enabled=True,
        )  # fmt: skip
    print(f"pipeline: recurring run '{args.name}' ({created.recurring_run_id}) created, "
          f"cron '{args.cron}'")  # fmt: skip
    return 0


def run_local(params_path: str | Path = "params.yaml", overrides: list[str] | tuple = (),
              pipeline_root: str | Path = "out/kfp-local", photo_dir: str = "",
              monet_dir: str = "", max_fid_ratio: float | None = None,
              image: str | None = None) -> Path:  # fmt: skip
    """Run the whole pipeline on this machine with kfp.local's SubprocessRunner (this Python
    environment, no containers, no cluster settings). Returns the run's output directory."""
    from kfp import local

    from cyclegan.config import load_config
    from pipeline.dag import PipelineOptions, build_pipeline, params_text

    pipeline_root = Path(pipeline_root).absolute()
    before = set(pipeline_root.iterdir()) if pipeline_root.is_dir() else set()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root),
               raise_on_error=True)  # fmt: skip
    func = build_pipeline(image, PipelineOptions(kubernetes=False), params_path, overrides)
    if max_fid_ratio is None:  # the params' gate, as the compiled pipeline's default
        max_fid_ratio = load_config(params_path, list(overrides)).register.max_fid_ratio
    with warnings.catch_warnings():  # the image is not used here: no containers
        warnings.filterwarnings("ignore", "You may be attemping", RuntimeWarning)
        func(params_yaml=params_text(params_path), overrides=list(overrides),
             photo_dir=str(photo_dir), monet_dir=str(monet_dir), max_fid_ratio=float(max_fid_ratio))  # fmt: skip
    new = sorted(set(pipeline_root.iterdir()) - before, key=lambda p: p.stat().st_mtime)
    return new[-1] if new else pipeline_root


def cmd_local(args) -> int:
    arguments = _arguments(args)
    run_dir = run_local(args.params, arguments["overrides"], args.pipeline_root,
                        arguments.get("photo_dir", ""), arguments.get("monet_dir", ""),
                        arguments.get("max_fid_ratio"), image=_image(args))  # fmt: skip
    print(f"pipeline: local run finished; outputs in {run_dir}")
    registrations = sorted(run_dir.glob("register*/registration/registration.json"))
    for path in registrations:
        info = json.loads(path.read_text())
        state = "champion" if info["promoted"] else "challenger"
        print(f"pipeline: registered {info['model_name']} version {info['version']} ({state}) "
              f"at {info['tracking_uri']}")  # fmt: skip
    if not registrations:
        print("pipeline: the FID gate did not pass (see evaluate/ and --max-fid-ratio); "
              "nothing registered")  # fmt: skip
    return 0


# ---------------------------------------------------------------------------- parser


def _compile_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("compile options (the cluster side)")
    g.add_argument("--image", help="project image REGISTRY/cyclegan:TAG (default $CYCLEGAN_IMAGE)")
    g.add_argument("--gpus", type=int, default=0, help="GPUs per training process (0 = CPU)")
    g.add_argument("--workers", type=int, default=1,
                   help="training processes; > 1 runs a TFJob (Chief + Workers), needs --pvc")  # fmt: skip
    g.add_argument("--pvc", help="ReadWriteMany PVC mounted on every task (resume, TFJob data)")
    g.add_argument("--mount-path", default=DEFAULT_MOUNT, help="where --pvc is mounted")
    g.add_argument("--s3-secret", default="cyclegan-s3",
                   help="secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY ('' = none)")  # fmt: skip
    g.add_argument("--mlflow-secret", default="cyclegan-mlflow",
                   help="secret with MLFLOW_TRACKING_URI ('' = none)")  # fmt: skip
    g.add_argument("--node-selector", action="append", metavar="KEY=VALUE",
                   help="train node selector (default with GPUs: nvidia.com/gpu.present=true)")  # fmt: skip
    g.add_argument("--toleration", action="append", metavar="KEY[=VALUE][:EFFECT]",
                   help="train toleration (default with GPUs: nvidia.com/gpu:NoSchedule)")  # fmt: skip
    g.add_argument("--train-cpu", help="train CPU request=limit, e.g. 8")
    g.add_argument("--train-memory", help="train memory request=limit, e.g. 32G")
    g.add_argument("--retries", type=int, default=3, help="train retries (preemption)")


def _run_arguments(p: argparse.ArgumentParser, local: bool = False) -> None:
    p.add_argument("-S", "--set", dest="pipeline_set", action="append", default=[],
                   metavar="KEY=VALUE", help="override a param for this run (repeatable)")  # fmt: skip
    p.add_argument("--photo-dir", help="default: data.photo_dir")
    p.add_argument("--monet-dir", help="default: data.monet_dir")
    p.add_argument("--max-fid-ratio", type=float,
                   help="register only if FID / baseline FID <= this "
                        "(default: register.max_fid_ratio in the params)")  # fmt: skip
    if not local:
        p.add_argument("--host", help=f"KFP API endpoint (default ${HOST_ENV})")
        p.add_argument("--namespace", help="KFP namespace (multi-user deployments)")
        p.add_argument("--experiment", default="cyclegan", help="KFP experiment name")
        p.add_argument("--package", help="a compiled pipeline YAML (default: compile now)")


def add_subcommands(sub) -> None:
    """The compile / run / schedule / local subcommands (each sets `pipeline_func`)."""
    p = sub.add_parser("compile", help="compile the pipeline to a KFP v2 YAML")
    p.add_argument("--out", default="pipeline.yaml")
    p.add_argument("-S", "--set", dest="pipeline_set", action="append", default=[],
                   metavar="KEY=VALUE", help="bake an override into the default (repeatable)")  # fmt: skip
    _compile_options(p)
    p.set_defaults(pipeline_func=cmd_compile)

    p = sub.add_parser("run", help="submit one run to a KFP endpoint")
    _run_arguments(p)
    p.add_argument("--run-name", help="default: pipeline name + timestamp")
    _compile_options(p)
    p.set_defaults(pipeline_func=cmd_run)

    p = sub.add_parser("schedule", help="create a recurring run (idempotent by --name)")
    _run_arguments(p)
    p.add_argument("--cron", required=True, help="6-field cron, e.g. '0 0 3 * * *' (03:00 daily)")
    p.add_argument("--name", required=True, help="recurring run name (not duplicated)")
    p.add_argument("--replace", action="store_true", help="recreate it if it exists")
    p.add_argument("--max-concurrency", type=int, default=1)
    _compile_options(p)
    p.set_defaults(pipeline_func=cmd_schedule)

    p = sub.add_parser("local", help="run the whole pipeline here (kfp.local SubprocessRunner)")
    _run_arguments(p, local=True)
    p.add_argument("--pipeline-root", default="out/kfp-local", help="where outputs go")
    p.add_argument("--image", help=argparse.SUPPRESS)
    p.set_defaults(pipeline_func=cmd_local)


def dispatch(args) -> int:
    return args.pipeline_func(args) or 0


def _cyclegan_entry(cfg, args) -> int:
    """`args.func` for the cyclegan CLI (which already loaded and checked -p / -S into cfg)."""
    return dispatch(args)


def add_pipeline_commands(subparsers) -> argparse.ArgumentParser:
    """Add `pipeline {compile,run,schedule,local}` to the `cyclegan` CLI's subparsers.

    The parser gets `func(cfg, args)`, like every cyclegan command; the top-level `-p` and `-S`
    (args.params, args.set) are the params file and overrides.
    """
    p = subparsers.add_parser("pipeline", help="Kubeflow Pipelines: compile, run, schedule, local")
    sub = p.add_subparsers(dest="pipeline_command", required=True)
    add_subcommands(sub)
    p.set_defaults(func=_cyclegan_entry)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cyclegan pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("-p", "--params", default="params.yaml", help="params file")
    parser.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param (repeatable)")  # fmt: skip
    sub = parser.add_subparsers(dest="pipeline_command", required=True)
    add_subcommands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from cyclegan.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return dispatch(args)
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"cyclegan pipeline {args.pipeline_command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
