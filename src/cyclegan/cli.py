"""`cyclegan <step> ...`: the command-line adapter over cyclegan.steps (used by dvc.yaml).

Only argument parsing and printing live here; each step's behaviour is in its step function.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from cyclegan.config import ConfigError, load_config

EXIT_INVALID_DATA = 2
EXIT_BAD_CONFIG = 3
EXIT_PREEMPTED = 143


def _quiet_tf() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def cmd_sample_data(cfg, args):
    from cyclegan.steps import sample_data

    dirs = sample_data.run(cfg, args.out)
    print(f"sample data: {cfg.data.sample.n_photo} photos -> {dirs['photo_dir']}, "
          f"{cfg.data.sample.n_monet} paintings -> {dirs['monet_dir']}")  # fmt: skip


def cmd_validate(cfg, args):
    from cyclegan.steps import validate

    result = validate.run(cfg, args.photo_dir or cfg.data.photo_dir,
                          args.monet_dir or cfg.data.monet_dir, args.out)  # fmt: skip
    print(result.message())
    return 0 if result.passed else EXIT_INVALID_DATA


def cmd_preprocess(cfg, args):
    from cyclegan.steps import preprocess

    result = preprocess.run(cfg, args.validated, args.out)
    print(f"preprocess: TFRecords in {result.out_dir}: {json.dumps(result.counts)}")


def cmd_train(cfg, args):
    from cyclegan.steps import train

    try:
        result = train.run(cfg, args.data, args.out, max_steps=args.max_steps)
    except train.Preempted as exc:
        print(f"train: {exc}", file=sys.stderr)
        return EXIT_PREEMPTED
    losses = ", ".join(f"{k}={v:.3f}" for k, v in result.final_losses.items())
    print(f"train: {result.steps} steps (resumed from {result.resumed_from}); {losses}")
    print(f"train: generators exported to {Path(args.out) / 'export'}")


def cmd_evaluate(cfg, args):
    from cyclegan.steps import evaluate

    result = evaluate.run(cfg, args.data, args.train, args.out)
    m = result.metrics
    print(
        f"evaluate: FID(G(photos), paintings) = {m['fid']:.4g}  "
        f"baseline FID(photos, paintings) = {m['fid_baseline_photos']:.4g}  "
        f"KID = {m['kid_mean']:.4g}  MiFID = {m['mifid']:.4f}  [extractor {m['extractor']}]"
    )
    print(
        f"evaluate: metrics {result.out_dir / evaluate.METRICS_JSON}, "
        f"sample grid {result.out_dir / evaluate.GRID_PNG}"
    )


def cmd_register(cfg, args):
    from cyclegan.steps import register

    result = register.run(cfg, args.train, args.eval, args.out, validate_dir=args.validated)
    state = "champion" if result.promoted else "challenger"
    print(f"register: {result.model_name} version {result.version} ({state}): {result.reason}")
    print(f"register: MLflow run {result.run_id} at {result.tracking_uri}")


def cmd_promote(cfg, args):
    from mlflow import MlflowClient

    from cyclegan import tracking

    uri = tracking.check_tracking_server()
    client = MlflowClient(uri)
    name = args.model_name or cfg.register.model_name
    if args.rollback:
        version, reason = tracking.rollback(client, name)
    else:
        version, reason = args.version, tracking.promote(client, name, args.version, args.note)
    print(f"promote: {name} version {version} is champion ({reason})")


def cmd_translate(cfg, args):
    from cyclegan.steps import translate

    result = translate.translate(args.inputs, args.model, args.out)
    print(f"translate: {len(result.written)} images -> {args.out}")


def cmd_submit(cfg, args):
    from cyclegan.steps import translate

    n = translate.submit(args.photos, args.model, args.out, force=args.force)
    print(f"submit: {n} translated 256x256 JPEGs -> {args.out}")


def cmd_results(cfg, args):
    """Where a pipeline run's results are (the end of `make repro`)."""
    out = Path(args.out_root)
    metrics_path = out / "evaluate" / "metrics.json"
    registration_path = out / "register" / "registration.json"
    if not metrics_path.is_file():
        print(f"no results yet: {metrics_path} is missing (run `dvc repro`)", file=sys.stderr)
        return 1
    m = json.loads(metrics_path.read_text())
    print("\n== Results ==")
    print(f"FID(G(photos), paintings): {m['fid']:.4g}   baseline FID(photos, paintings): "
          f"{m['fid_baseline_photos']:.4g}   (extractor {m['extractor']})")  # fmt: skip
    print(f"  metrics:      {metrics_path}   (`dvc metrics show`)")
    print(
        f"  sample grid:  {out / 'evaluate' / 'grid.png'}   "
        f"(photo | G(photo) | F(G(photo)) | painting | F(painting) | G(F(painting)))"
    )
    print(f"  loss curves:  {out / 'train' / 'losses.csv'}   (`dvc plots show`)")
    print(f"  validation:   {out / 'validate' / 'data_docs' / 'index.html'}")
    if registration_path.is_file():
        r = json.loads(registration_path.read_text())
        state = "champion" if r["promoted"] else "challenger"
        print(f"  model:        {r['model_name']} version {r['version']} ({state}): {r['reason']}")
        uri = r["tracking_uri"]
        if uri.startswith("sqlite"):
            print(
                f"  MLflow UI:    mlflow ui --backend-store-uri {uri}   (then open http://127.0.0.1:5000)"
            )
        else:
            print(f"  MLflow UI:    {uri}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cyclegan", description=__doc__.splitlines()[0])
    parser.add_argument(
        "-p", "--params", default="params.yaml", help="params file (default: params.yaml)"
    )
    parser.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param, e.g. -S train.epochs=3 (repeatable)")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample-data", help="make the offline demo dataset")
    p.add_argument("--out", default="data/sample")
    p.set_defaults(func=cmd_sample_data)

    p = sub.add_parser("validate", help="check every input image (Great Expectations)")
    p.add_argument("--photo-dir", help="photos: a folder, a Kaggle folder or .zip, a folder of "
                   ".tfrec files, or s3://bucket/prefix (default: data.photo_dir)")  # fmt: skip
    p.add_argument("--monet-dir", help="paintings, same kinds of source (default: data.monet_dir)")
    p.add_argument("--out", default="out/validate")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("preprocess", help="accepted images -> sharded TFRecords")
    p.add_argument("--validated", default="out/validate")
    p.add_argument("--out", default="out/data")
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("train", help="train the CycleGAN (resumes from its checkpoints)")
    p.add_argument("--data", default="out/data")
    p.add_argument("--out", default="out/train")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (resume later)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="FID/KID/MiFID of G(held-out photos) + sample grid")
    p.add_argument("--data", default="out/data")
    p.add_argument("--train", default="out/train")
    p.add_argument("--out", default="out/evaluate")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("register", help="log to MLflow, register G, FID-gated promotion")
    p.add_argument("--train", default="out/train")
    p.add_argument("--eval", default="out/evaluate")
    p.add_argument("--validated", default="out/validate")
    p.add_argument("--out", default="out/register")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("promote", help="a human registry decision: promote a version or roll back")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--version", type=int, help="make this version the champion")
    group.add_argument("--rollback", action="store_true", help="restore the previous champion")
    p.add_argument("--model-name", help="default: register.model_name")
    p.add_argument("--note", default="", help="why (recorded as a tag)")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("translate", help="translate photos (any size) with a trained generator")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--model", default="out/train",
                   help="models:/NAME@champion, runs:/..., an MLflow model dir, or a train output dir")  # fmt: skip
    p.add_argument("--out", required=True, help="output folder (PNG per input)")
    p.set_defaults(func=cmd_translate)

    p = sub.add_parser("submit", help="write Kaggle's images.zip (7,000-10,000 256x256 JPEGs)")
    p.add_argument("photos", help="folder of photos (e.g. Kaggle's photo_jpg)")
    p.add_argument("--model", default="out/train")
    p.add_argument("--out", default="images.zip")
    p.add_argument("--force", action="store_true", help="write even outside 7,000-10,000 images")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("results", help="print where the last pipeline run's results are")
    p.add_argument("--out-root", default="out")
    p.set_defaults(func=cmd_results)

    from pipeline.cli import add_pipeline_commands  # the Kubeflow adapter (pipeline/)

    add_pipeline_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_tf()
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.params, args.set)
    except ConfigError as exc:
        print(f"cyclegan: bad params: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        try:
            return args.func(cfg, args) or 0
        except (FileNotFoundError, ValueError, RuntimeError) as exc:
            print(f"cyclegan {args.command}: error: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
