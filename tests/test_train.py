"""The train step against the seed, the image pool, the LR schedule, distribution, resume."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from bench.seed_step import seed_step  # the seed, transcribed as written (one copy)
from cyclegan import losses
from cyclegan.train import CycleGAN, ImagePool, LinearDecay
from tests.conftest import tiny_overrides, write_params

BIN = Path(sys.executable).parent


def _clone(model):
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def test_one_step_equals_the_seed_transcription(tiny_config):
    cfg = tiny_config(train__pool_size=0, train__gan_mode="bce").train
    rng = np.random.default_rng(0)
    photo = tf.constant(rng.uniform(-1, 1, (2, 32, 32, 3)), tf.float32)
    monet = tf.constant(rng.uniform(-1, 1, (2, 32, 32, 3)), tf.float32)
    gan = CycleGAN(cfg, 32, steps_per_epoch=10, global_batch=2)
    G, F, D_M, D_P = (_clone(m) for m in (gan.G, gan.F, gan.D_Y, gan.D_X))

    def adam():
        return keras.optimizers.Adam(2e-4, beta_1=0.5)

    seed_gen, seed_dm, seed_dp = seed_step(G, F, D_M, D_P, adam(), adam(), adam(), photo, monet)
    ours = gan.train_step(photo, monet)
    np.testing.assert_allclose(ours["gen_total"], seed_gen, rtol=1e-5)
    np.testing.assert_allclose(ours["D_Y"], seed_dm, rtol=1e-5)
    np.testing.assert_allclose(ours["D_X"], seed_dp, rtol=1e-5)
    for mine, theirs in [(gan.G, G), (gan.F, F), (gan.D_Y, D_M), (gan.D_X, D_P)]:
        for a, b in zip(mine.get_weights(), theirs.get_weights(), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_lsgan_and_bce_match_their_formulas():
    logits = tf.constant(np.random.default_rng(1).normal(size=(3, 4, 4, 1)), tf.float32)
    x = logits.numpy().reshape(3, -1)
    np.testing.assert_allclose(
        losses.adversarial(logits, True, "lsgan"), ((x - 1) ** 2).mean(1), rtol=1e-6
    )
    np.testing.assert_allclose(
        losses.adversarial(logits, False, "lsgan"), (x**2).mean(1), rtol=1e-6
    )
    bce_real = np.log1p(np.exp(-x)).mean(1)  # -log(sigmoid(x))
    np.testing.assert_allclose(losses.adversarial(logits, True, "bce"), bce_real, rtol=1e-5)
    np.testing.assert_allclose(
        losses.adversarial(logits, False, "bce"), np.log1p(np.exp(x)).mean(1), rtol=1e-5
    )


def test_lr_schedule_is_the_official_linear_policy():
    sched = LinearDecay(2e-4, steps_per_epoch=10, epochs=3, epochs_decay=3)
    for step in (0, 9, 10, 29):
        assert float(sched(step)) == pytest.approx(2e-4)  # epochs 0..2 constant
    for epoch in (3, 4, 5):  # lr_l = 1 - max(0, epoch + 1 - n_epochs) / (n_epochs_decay + 1)
        expected = 2e-4 * (1 - (epoch + 1 - 3) / 4)
        assert float(sched(epoch * 10)) == pytest.approx(expected)


def test_image_pool_has_the_papers_semantics():
    pool = ImagePool(size=8, image_size=2, seed=3, name="pool")
    images = [np.full((1, 2, 2, 3), i, np.float32) for i in range(2000)]
    for i in range(8):  # filling: every fake is stored and returned as is
        assert float(pool.query(tf.constant(images[i]), tf.constant(i, tf.int64))[0, 0, 0, 0]) == i
    assert int(pool.count.numpy()) == 8
    returned_old, seen_in_pool = 0, set(range(8))
    for i in range(8, 2000):
        out = float(pool.query(tf.constant(images[i]), tf.constant(i, tf.int64))[0, 0, 0, 0])
        if out != i:
            returned_old += 1
            assert out in seen_in_pool  # an old image comes from the pool...
            seen_in_pool.discard(out)
            seen_in_pool.add(i)  # ...and the new one took its place
        assert set(pool.images.numpy()[:, 0, 0, 0].astype(int)) == seen_in_pool
    n = 2000 - 8
    # Binomial(n, 0.5): mean 996, sd ~22; 5 sd either side.
    assert abs(returned_old - n / 2) < 5 * np.sqrt(n) / 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_cmd(params: Path, data: Path, out: Path, *overrides: str) -> list[str]:
    sets = [a for o in overrides for a in ("-S", o)]
    return [
        str(BIN / "cyclegan"),
        "-p",
        str(params),
        *sets,
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
    ]


def _generator(export: Path):
    import cyclegan.model.layers  # noqa: F401

    return keras.saving.load_model(export / "G.keras", compile=False)


def _weights(export: Path) -> list[np.ndarray]:
    return _generator(export).get_weights()


@pytest.fixture(scope="module")
def params_file(tmp_path_factory, tiny_extractor_path):
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    return write_params(path, tiny_overrides(evaluate__extractor=str(tiny_extractor_path)))


@pytest.mark.slow
def test_kill_9_then_rerun_resumes_and_matches_an_uninterrupted_run(
    params_file, pipeline_outputs, tmp_path
):
    data = pipeline_outputs["data"]
    opts = (
        "train.deterministic=true",
        "train.epochs=3",
        "train.epochs_decay=2",
        "train.checkpoint_every=3",
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "-1"}
    straight = subprocess.run(_train_cmd(params_file, data, tmp_path / "straight", *opts),
                              env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert straight.returncode == 0, straight.stderr
    total = int(json.loads((tmp_path / "straight/export/manifest.json").read_text())["steps"])

    out = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(params_file, data, out, *opts), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    # `checkpoint` (the manager's pointer, written atomically after the ckpt-N files) marks a
    # finished save; killed between the two, a rerun rightly starts over, which is not this test
    while not (out / "checkpoints" / "checkpoint").is_file() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "export").exists()

    rerun = subprocess.run(_train_cmd(params_file, data, out, *opts), env=env,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    resumed = int(rerun.stderr.split("at step ")[1].split()[0])
    assert 0 < resumed < total
    assert int(json.loads((out / "export/manifest.json").read_text())["steps"]) == total
    for a, b in zip(_weights(out / "export"), _weights(tmp_path / "straight/export"), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_143(params_file, pipeline_outputs, tmp_path):
    out = tmp_path / "preempted"
    cmd = _train_cmd(
        params_file, pipeline_outputs["data"], out, "train.epochs=20", "train.checkpoint_every=1000"
    )
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "fingerprint.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(8)  # let it get into the training loop
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "SIGTERM at step" in err and list((out / "checkpoints").glob("ckpt-*.index"))


MIRRORED = """
import json, sys
import tensorflow as tf
cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * {n})
from cyclegan.config import load_config
from cyclegan.steps import train
cfg = load_config(sys.argv[1], sys.argv[4:])
result = train.run(cfg, sys.argv[2], sys.argv[3], progress=False)
print(json.dumps(result.final_losses))
"""


@pytest.mark.slow
def test_mirrored_on_two_devices_matches_one_device(params_file, pipeline_outputs, tmp_path):
    """Same global batch (4): 2 replicas x 2 vs 1 replica x 4; pool off (it is per replica)."""
    results = {}
    for name, n, strategy, batch in [("one", 1, "default", 4), ("two", 2, "mirrored", 2)]:
        script = tmp_path / f"{name}.py"
        script.write_text(MIRRORED.format(n=n))
        proc = subprocess.run(
            [sys.executable, str(script), str(params_file), str(pipeline_outputs["data"]),
             str(tmp_path / name), f"train.strategy={strategy}", f"train.batch_size={batch}",
             "train.pool_size=0", "train.epochs=1", "train.epochs_decay=0", "train.deterministic=true"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    # Final losses after an epoch: a wrong reduction (e.g. dividing by the per-replica batch)
    # would be off by 2x; cross-replica round-off, amplified by Adam, stays under 1% (seen: 0.3%).
    for key in ("gen_total", "D_X", "D_Y"):
        assert results["two"][key] == pytest.approx(results["one"][key], rel=1e-2)
    # Compare what the generators compute, not raw weights: a conv bias right before instance
    # norm has a zero true gradient, so Adam turns its round-off gradient into arbitrary +-lr
    # steps that differ between summation orders yet cannot change any output.
    x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    out_one, out_two = (np.asarray(_generator(tmp_path / n / "export")(x)) for n in ("one", "two"))
    # Stated tolerance: 1% of the [-1, 1] output range after one epoch of Adam steps, whose
    # gradient normalisation amplifies cross-replica round-off (measured: max 0.007).
    np.testing.assert_allclose(out_two, out_one, atol=1e-2)


@pytest.mark.slow
def test_multi_worker_with_two_real_processes(params_file, pipeline_outputs, tmp_path):
    workers = [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]
    out = tmp_path / "mwms"
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "CUDA_VISIBLE_DEVICES": "-1"}
        cmd = _train_cmd(params_file, pipeline_outputs["data"], out, "train.strategy=multi_worker",
                         "train.epochs=1", "train.epochs_decay=0")  # fmt: skip
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    results = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
    chief, worker = _weights(out / "export"), _weights(out / ".worker-1" / "export")
    for a, b in zip(chief, worker, strict=True):
        np.testing.assert_array_equal(a, b)


def test_nan_loss_stops_training_naming_the_step_and_keeps_the_last_checkpoint(
    tiny_config, pipeline_outputs, tmp_path
):
    from cyclegan.steps import train

    # An absurd learning rate blows the weights up within a few steps.
    cfg = tiny_config(train__lr=1e30, train__checkpoint_every=1, train__pool_size=0)
    with pytest.raises(
        train.TrainingDiverged,
        match=r"loss is not finite at step (\d+) .*last good checkpoint .*ckpt-\d+",
    ) as err:
        train.run(cfg, pipeline_outputs["data"], tmp_path / "nan", progress=False)
    bad_step = int(err.value.args[0].split("at step ")[1].split()[0])
    kept = sorted(
        int(p.stem.split("-")[1]) for p in (tmp_path / "nan/checkpoints").glob("ckpt-*.index")
    )
    assert kept and max(kept) == bad_step - 1  # the diverged step was not saved
    assert not (tmp_path / "nan/export").exists()


def _fid_rows(train_dir: Path) -> list[dict]:
    import csv

    with (train_dir / "fid.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_fid_curve_every_epoch_ends_at_the_evaluate_steps_fid(fid_outputs, pipeline_outputs):
    rows = _fid_rows(fid_outputs["train"])
    metrics = json.loads((fid_outputs["evaluate"] / "metrics.json").read_text())
    manifest = json.loads((fid_outputs["train"] / "export/manifest.json").read_text())
    epochs = manifest["params"]["epochs"] + manifest["params"]["epochs_decay"]
    assert [int(r["epoch"]) for r in rows] == list(range(1, epochs + 1))  # one row per epoch
    steps = [int(r["step"]) for r in rows]
    assert steps[-1] == manifest["steps"] and steps == [steps[0] * e for e in range(1, epochs + 1)]
    assert all(np.isfinite(float(r["fid"])) and float(r["fid"]) >= 0 for r in rows)
    assert {r["extractor"] for r in rows} == {metrics["extractor"]}
    assert metrics["extractor"].startswith("keras:tiny_features.keras:")
    # The same scorer as the evaluate step: G(held-out photos) vs all paintings.
    assert float(rows[-1]["fid"]) == pytest.approx(metrics["fid"], rel=1e-6)
    # Monitoring changes nothing in training: same losses as the run with the curve off.
    on, off = ((d / "losses.csv").read_text().splitlines() for d in
               (fid_outputs["train"], pipeline_outputs["train"]))  # fmt: skip
    assert len(on) == len(off) and on[0] == off[0]
    for a, b in zip(on[1:], off[1:], strict=True):
        np.testing.assert_allclose(
            [float(x) for x in a.split(",")], [float(x) for x in b.split(",")], rtol=1e-4
        )


def test_fid_curve_is_off_by_default_header_only(pipeline_outputs):
    assert (pipeline_outputs["train"] / "fid.csv").read_text() == "step,epoch,fid,extractor\n"


def test_fid_curve_survives_resume_without_duplicates(tiny_config, fid_outputs, tmp_path):
    """Interrupted at an epoch's end with the curve off (the checkpoint is kept when it is
    turned on: monitoring is not part of the resume fingerprint; the missed boundary is scored
    on resume), then mid-epoch, then run to the end: the rows of an uninterrupted run."""
    from cyclegan.steps import train

    straight = _fid_rows(fid_outputs["train"])
    per_epoch = int(straight[0]["step"])
    out = tmp_path / "resumed"
    first = train.run(tiny_config(), fid_outputs["data"], out, progress=False, max_steps=per_epoch)
    assert first.steps == per_epoch and _fid_rows(out) == []
    on = tiny_config(train__fid_every_epochs=1)
    second = train.run(on, fid_outputs["data"], out, progress=False, max_steps=per_epoch + 3)
    assert second.resumed_from == per_epoch
    assert [int(r["step"]) for r in _fid_rows(out)] == [per_epoch]
    third = train.run(on, fid_outputs["data"], out, progress=False)
    assert third.resumed_from == per_epoch + 3
    resumed = _fid_rows(out)
    assert [(r["step"], r["epoch"], r["extractor"]) for r in resumed] == [
        (r["step"], r["epoch"], r["extractor"]) for r in straight
    ]
    np.testing.assert_allclose([float(r["fid"]) for r in resumed],
                               [float(r["fid"]) for r in straight], rtol=1e-6)  # fmt: skip
