"""Train step: TFRecords in, checkpoints + exported generators + loss history out.

Resumable: rerunning the same command after a crash or a SIGTERM (pod preemption) continues
from the last checkpoint when the configuration and data are unchanged; otherwise it starts over.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import shutil
import signal
import sys
import time
import warnings
from pathlib import Path

from cyclegan.config import Config
from cyclegan.storage import atomic_path, read_manifest, write_json, write_manifest, write_text

CKPT_DIR = "checkpoints"
EXPORT_DIR = "export"
LOSSES_CSV = "losses.csv"
FID_CSV = "fid.csv"  # the FID curve (train.fid_every_epochs): one row per scored epoch
FID_FIELDS = ["step", "epoch", "fid", "extractor"]
# Settings that watch training without changing it: a resume ignores them.
MONITORING_KEYS = ("fid_every_epochs",)


class TrainingDiverged(RuntimeError):
    """A loss became NaN/Inf; the last good checkpoint is kept."""


class Preempted(RuntimeError):
    """SIGTERM arrived; a checkpoint was saved and the same command resumes."""


@dataclasses.dataclass
class TrainResult:
    out_dir: Path
    steps: int
    final_losses: dict[str, float]
    resumed_from: int


def _fingerprint(cfg: Config, data_manifest: dict) -> str:
    import hashlib

    train = {k: v for k, v in cfg.to_dict()["train"].items() if k not in MONITORING_KEYS}
    blob = json.dumps({"train": train, "data": data_manifest["shards"]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _read_history(path: Path, up_to_step: int) -> list[dict]:
    if not path.is_file():
        return []
    with path.open() as fh:
        return [r for r in csv.DictReader(fh) if int(r["step"]) <= up_to_step]


def _write_history(path: Path, rows: list[dict], fieldnames: list[str] | None = None) -> None:
    """Write rows as CSV, atomically; with `fieldnames`, a header-only file when no rows."""
    if not rows and fieldnames is None:
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fieldnames or list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def _is_chief(strategy) -> tuple[bool, int]:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True, 0
    task_type, task_id = resolver.task_type, resolver.task_id or 0
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    chief = task_type == "chief" or (not has_chief and task_type == "worker" and task_id == 0)
    return chief, task_id


def _fid_scorer(cfg: Config, data_dir: str | Path, image_size: int):
    """The evaluate step's FID scorer: its extractor settings, loaded once per run."""
    from cyclegan.metrics import load_extractor
    from cyclegan.steps.evaluate import FidScorer, small_sample_note

    ecfg = cfg.evaluate
    extractor = load_extractor(ecfg.extractor, ecfg.inception_weights, ecfg.input_size)
    scorer = FidScorer.load(data_dir, image_size, extractor, ecfg.batch_size)
    n_paint, dims = scorer.painting_features.shape
    note = small_sample_note(scorer.n_photo, n_paint, dims)
    if note:
        warnings.warn(f"train.fid_every_epochs: {note}", stacklevel=3)
    return scorer


def _scoring_generator(gan, cache: dict):
    """G as the export computes it: float32 (a kept copy, refreshed) after mixed precision."""
    if gan.cfg.mixed_precision == "none":
        return gan.G
    if "G" not in cache:
        cache["G"] = gan.export_generators()[0]
    else:
        cache["G"].set_weights(gan.G.get_weights())
    return cache["G"]


def run(cfg: Config, data_dir: str | Path, out_dir: str | Path, progress: bool = True,
        max_steps: int | None = None) -> TrainResult:  # fmt: skip
    """Train G, F, D_X, D_Y on `data_dir` (the preprocess output); write into `out_dir`.

    `max_steps` stops early (used to simulate an interruption); the step count target is
    steps_per_epoch x (epochs + epochs_decay).
    """
    import tensorflow as tf
    from tqdm import tqdm

    from cyclegan.data.pipeline import unpaired_batches
    from cyclegan.model import size_multiple
    from cyclegan.steps.preprocess import shard_files
    from cyclegan.tracking import check_tracking_server
    from cyclegan.train import LOSS_NAMES, CycleGAN, distributed_step, make_strategy

    tcfg = cfg.train
    check_tracking_server()  # a down MLflow server fails now, not after hours of training
    data_manifest = read_manifest(data_dir, "preprocess")
    image_size = int(data_manifest["image_size"])
    if tcfg.load_size < image_size:
        raise ValueError(
            f"train.load_size={tcfg.load_size} is smaller than the data's image size "
            f"{image_size} (preprocess.image_size); set train.load_size >= {image_size}"
        )
    photo_files, n_photo = shard_files(data_dir, "photo", "train")
    monet_files, n_monet = shard_files(data_dir, "monet", "train")
    if not n_photo or not n_monet:
        raise ValueError(f"'{data_dir}' has no training images for photo ({n_photo}) "
                         f"or monet ({n_monet}); add images or lower preprocess.test_fraction")  # fmt: skip

    tf.keras.utils.set_random_seed(tcfg.seed)
    if tcfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = make_strategy(tcfg.strategy)
    chief, task_id = _is_chief(strategy)
    # The FID curve: only the chief scores (the other workers wait at the next collective).
    # Loaded before the models and the data, then the seeds again, so that turning it on
    # changes nothing in training.
    scorer = None
    if tcfg.fid_every_epochs and chief:
        scorer = _fid_scorer(cfg, data_dir, image_size)
        tf.keras.utils.set_random_seed(tcfg.seed)
    out_dir = Path(out_dir)
    # MultiWorkerMirroredStrategy: every worker saves (collective ops), only the chief's copy
    # is the output; the others write beside it under .worker-N/.
    write_dir = out_dir if chief else out_dir / f".worker-{task_id}"
    global_batch = tcfg.batch_size * strategy.num_replicas_in_sync
    dataset, steps_per_epoch = unpaired_batches(
        photo_files, n_photo, monet_files, n_monet, global_batch=global_batch,
        image_size=image_size, load_size=tcfg.load_size, flip=tcfg.flip, seed=tcfg.seed,
    )  # fmt: skip
    total_steps = steps_per_epoch * (tcfg.epochs + tcfg.epochs_decay)
    with strategy.scope():
        gan = CycleGAN(tcfg, image_size, steps_per_epoch, global_batch)
    checkpoint = gan.checkpoint()

    fingerprint = _fingerprint(cfg, data_manifest)
    ckpt_dir = write_dir / CKPT_DIR
    stamp = ckpt_dir / "fingerprint.json"
    if ckpt_dir.exists() and (not stamp.is_file()
                              or json.loads(stamp.read_text())["fingerprint"] != fingerprint):  # fmt: skip
        print(f"train: {ckpt_dir} holds a run with other settings or data; starting over",
              file=sys.stderr)  # fmt: skip
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    write_json(stamp, {"fingerprint": fingerprint})
    manager = tf.train.CheckpointManager(checkpoint, str(ckpt_dir), max_to_keep=2)
    resumed_from = 0
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        resumed_from = int(gan.step.numpy())
        print(f"train: resumed from {manager.latest_checkpoint} at step {resumed_from}",
              file=sys.stderr)  # fmt: skip

    history_path = write_dir / LOSSES_CSV
    history = _read_history(history_path, resumed_from)
    fid_path = write_dir / FID_CSV
    fid_rows = _read_history(fid_path, resumed_from) if scorer else []
    _write_history(fid_path, fid_rows, FID_FIELDS)  # exists (header only when off) from now on
    scoring_cache: dict = {}

    def fid_due(at_step: int) -> bool:
        if scorer is None or at_step <= 0 or at_step % steps_per_epoch:
            return False
        return (at_step // steps_per_epoch) % tcfg.fid_every_epochs == 0 or at_step == total_steps

    def record_fid(at_step: int) -> None:
        value, _ = scorer.score(_scoring_generator(gan, scoring_cache))
        if not math.isfinite(value):
            warnings.warn(f"train: FID is not finite at step {at_step}; recorded as empty",
                          stacklevel=2)  # fmt: skip
        fid_rows.append({"step": at_step, "epoch": at_step // steps_per_epoch,
                         "fid": value if math.isfinite(value) else "",
                         "extractor": scorer.extractor.name})  # fmt: skip
        _write_history(fid_path, fid_rows, FID_FIELDS)
        if bar.disable:
            print(f"train: step {at_step} epoch {at_step // steps_per_epoch} FID {value:.4g} "
                  f"({scorer.extractor.name})", file=sys.stderr)  # fmt: skip

    # Skip the batches an uninterrupted run would have consumed, so resuming is exact.
    iterator = iter(strategy.experimental_distribute_dataset(dataset.skip(resumed_from)))
    step_fn = distributed_step(strategy, gan)

    stop = {"sigterm": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(sigterm=True))
    target = total_steps if max_steps is None else min(total_steps, max_steps)
    bar = tqdm(total=total_steps, initial=resumed_from, desc="train", unit="step",
               disable=not (progress and sys.stderr.isatty()))  # fmt: skip
    step, values, started = resumed_from, {}, time.time()
    try:
        # A resumed boundary without its row (killed while scoring the step it had just
        # checkpointed, or the curve turned on since): score it now.
        if fid_due(step) and not any(int(r["step"]) == step for r in fid_rows):
            record_fid(step)
        while step < target:
            photo, monet = next(iterator)
            values = {k: float(v) for k, v in step_fn(photo, monet).items()}
            step = int(gan.step.numpy())
            bar.update(1)
            if not all(math.isfinite(v) for v in values.values()):
                bad = ", ".join(f"{k}={v}" for k, v in values.items() if not math.isfinite(v))
                raise TrainingDiverged(
                    f"loss is not finite at step {step} ({bad}); the last good checkpoint "
                    f"{manager.latest_checkpoint or '(none yet)'} is kept. Lower train.lr or "
                    f"check the data."
                )
            if step % tcfg.log_every == 0 or step == total_steps:
                epoch = (step - 1) // steps_per_epoch
                history.append({"step": step, "epoch": epoch,
                                "lr": float(gan.schedule(step - 1)), **values})  # fmt: skip
            if step % tcfg.checkpoint_every == 0 or stop["sigterm"]:
                manager.save(checkpoint_number=step)
                _write_history(history_path, history)
                if bar.disable:
                    rate = (step - resumed_from) / max(time.time() - started, 1e-9)
                    print(f"train: step {step}/{total_steps} gen_total={values['gen_total']:.3f} "
                          f"D_X={values['D_X']:.3f} D_Y={values['D_Y']:.3f} ({rate:.1f} steps/s)",
                          file=sys.stderr)  # fmt: skip
            if stop["sigterm"]:
                raise Preempted(f"SIGTERM at step {step}: checkpoint saved in {ckpt_dir}; "
                                f"rerun the same command to resume")  # fmt: skip
            if fid_due(step):
                record_fid(step)
    finally:
        bar.close()
        signal.signal(signal.SIGTERM, previous)
    if (
        manager.latest_checkpoint is None
        or int(manager.latest_checkpoint.rsplit("-", 1)[1]) != step
    ):
        manager.save(checkpoint_number=step)
    _write_history(history_path, history)
    if step < total_steps:  # stopped early on request (max_steps)
        return TrainResult(write_dir, step, values, resumed_from)

    if not values and history:
        values = {k: float(history[-1][k]) for k in LOSS_NAMES}
    export_dir = write_dir / EXPORT_DIR
    with atomic_path(export_dir) as tmp:
        tmp.mkdir(parents=True)
        G, F = gan.export_generators()  # float32 copies after mixed-precision training
        G.save(tmp / "G.keras")
        F.save(tmp / "F.keras")
        G.export(str(tmp / "G_savedmodel"), format="tf_saved_model", verbose=False)
        write_manifest(
            tmp, "train",
            steps=step,
            image_size=image_size,
            size_multiple=size_multiple(tcfg.generator, image_size),
            generator=tcfg.generator,
            final_losses=values,
            data_manifest_sha256=data_manifest.get("sha256") or fingerprint,
            fingerprint=fingerprint,
            params=dataclasses.asdict(tcfg),
            n_train={"photo": n_photo, "monet": n_monet},
        )  # fmt: skip
    return TrainResult(write_dir, step, values, resumed_from)
