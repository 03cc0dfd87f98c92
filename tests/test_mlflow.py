"""MLflow tracking and registry against real services on 127.0.0.1.

A real `mlflow server` process (sqlite backend, artifacts proxied to S3) and a real S3 API
server (moto's standalone server). Nothing is faked.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from cyclegan import tracking

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
BUCKET = "mlflow-artifacts"
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
         "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(url)


@pytest.fixture(scope="module")
def s3(moto_server):
    import boto3

    host, port = moto_server
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in CREDS.items()
                                                          if k != "AWS_DEFAULT_REGION"},
                          region_name="us-east-1")  # fmt: skip
    client.create_bucket(Bucket=BUCKET)
    return endpoint, client


@pytest.fixture(scope="module")
def mlflow_server(s3, tmp_path_factory):
    endpoint, _ = s3
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {**os.environ, **CREDS, "MLFLOW_S3_ENDPOINT_URL": endpoint}
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", f"s3://{BUCKET}/artifacts", "--serve-artifacts",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=root, env=env, stdout=(root / "server.log").open("w"), stderr=subprocess.STDOUT,  # noqa: SIM115
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{uri}/health", proc)
        yield uri
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def use_server(mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    return mlflow_server


def test_register_step_logs_everything_to_the_server(
    use_server, s3, tiny_config, pipeline_outputs, tmp_path
):
    from mlflow import MlflowClient

    from cyclegan.steps import register

    cfg = tiny_config(register__model_name="monet-e2e")
    o = pipeline_outputs
    result = register.run(
        cfg, o["train"], o["evaluate"], tmp_path / "reg", validate_dir=o["validate"]
    )
    client = MlflowClient(use_server)
    run = client.get_run(result.run_id)
    assert run.data.params["train.ngf"] == "4" and run.data.params["preprocess.image_size"] == "32"
    assert run.data.tags["extractor"].startswith("keras:") and "git_commit" in run.data.tags
    rows = (o["train"] / "losses.csv").read_text().strip().splitlines()[1:]
    history = client.get_metric_history(result.run_id, "train.gen_total")
    assert len(history) == len(rows)
    assert [m.step for m in history] == [int(r.split(",")[0]) for r in rows]
    assert client.get_metric_history(result.run_id, "epoch.gen_total")
    # The FID curve was off (header-only fid.csv): no train.fid history, no fid.csv artifact.
    assert client.get_metric_history(result.run_id, "train.fid") == []
    assert "train/fid.csv" not in {a.path for a in client.list_artifacts(result.run_id, "train")}
    fid = json.loads((o["evaluate"] / "metrics.json").read_text())["fid"]
    assert run.data.metrics["fid"] == pytest.approx(fid)
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "evaluate")}
    assert {"evaluate/grid.png", "evaluate/metrics.json"} <= artifacts
    assert "validate/summary.json" in {
        a.path for a in client.list_artifacts(result.run_id, "validate")
    }
    version = client.get_model_version_by_alias("monet-e2e", "champion")
    assert int(version.version) == result.version == 1 and version.run_id == result.run_id
    # The artifacts really are in the S3 bucket behind the server.
    keys = [o["Key"] for o in s3[1].list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert any(k.endswith("evaluate/grid.png") for k in keys)
    assert any("G_savedmodel" in k or "generator" in k for k in keys)

    again = register.run(
        cfg, o["train"], o["evaluate"], tmp_path / "reg2", validate_dir=o["validate"]
    )
    assert again.version == result.version  # idempotent: no duplicate version
    assert len(client.search_model_versions("name = 'monet-e2e'")) == 1


def test_register_logs_the_fid_curve_as_metric_history(
    mlflow_uri, tiny_config, fid_outputs, tmp_path
):
    import csv

    from mlflow import MlflowClient

    from cyclegan.steps import register

    cfg = tiny_config(register__model_name="monet-fid-curve")
    o = fid_outputs
    result = register.run(cfg, o["train"], o["evaluate"], tmp_path / "reg")
    with (o["train"] / "fid.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows
    client = MlflowClient(mlflow_uri)
    history = client.get_metric_history(result.run_id, "train.fid")
    assert [m.step for m in history] == [int(r["step"]) for r in rows]
    np.testing.assert_allclose([m.value for m in history], [float(r["fid"]) for r in rows])
    assert "train/fid.csv" in {a.path for a in client.list_artifacts(result.run_id, "train")}


def test_registered_pyfunc_translates_odd_sizes_in_a_fresh_process(
    use_server, tiny_config, pipeline_outputs, tmp_path
):
    from cyclegan.steps import register

    cfg = tiny_config(register__model_name="monet-serve")
    o = pipeline_outputs
    register.run(cfg, o["train"], o["evaluate"], tmp_path / "reg")
    script = textwrap.dedent("""
        import json, numpy as np, mlflow.pyfunc
        model = mlflow.pyfunc.load_model("models:/monet-serve@champion")
        image = np.random.default_rng(0).integers(0, 255, (37, 51, 3), dtype=np.uint8)
        out = model.predict(image[None])
        print(json.dumps({"shape": list(out.shape), "dtype": str(out.dtype)}))
    """)
    # `mlflow models serve` execs uvicorn from PATH, as in an activated virtualenv.
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": use_server,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {
        "shape": [1, 37, 51, 3],
        "dtype": "uint8",
    }

    port = free_port()
    serve = subprocess.Popen(
        [str(BIN / "mlflow"), "models", "serve", "-m", "models:/monet-serve@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "-p", str(port)],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", serve, timeout=180)
        image = np.random.default_rng(1).integers(0, 255, (1, 21, 30, 3)).astype(np.uint8)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": image.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            predictions = np.asarray(json.loads(response.read())["predictions"])
        assert predictions.shape == (1, 21, 30, 3)
        assert predictions.min() >= 0 and predictions.max() <= 255
    finally:
        serve.terminate()
        serve.wait(timeout=30)


def _new_version(client, name: str, fid: float, extractor: str = "inception_v3:imagenet") -> int:
    """A model version without weights: enough for the registry's gate."""
    import contextlib

    from mlflow.exceptions import MlflowException

    with contextlib.suppress(MlflowException):  # exists already
        client.create_registered_model(name)
    run = client.create_run(client.get_experiment_by_name("Default").experiment_id)
    version = client.create_model_version(name, f"{run.info.artifact_uri}/model", run.info.run_id)
    return int(version.version)


def test_promotion_gate_rollback_and_manual_promote(use_server):
    from mlflow import MlflowClient

    client = MlflowClient(use_server)
    name = "monet-gate"
    v1 = _new_version(client, name, 10.0)
    assert tracking.gate(client, name, v1, 10.0, "inception_v3:imagenet", 0.5)[0]
    v2 = _new_version(client, name, 12.0)
    promoted, reason = tracking.gate(client, name, v2, 12.0, "inception_v3:imagenet", 0.5)
    assert not promoted and "does not beat champion v1" in reason
    assert int(client.get_model_version_by_alias(name, "champion").version) == v1
    assert int(client.get_model_version_by_alias(name, "challenger").version) == v2
    v3 = _new_version(client, name, 9.8)  # better, but not by the margin
    assert not tracking.gate(client, name, v3, 9.8, "inception_v3:imagenet", 0.5)[0]
    v4 = _new_version(client, name, 8.0)
    assert tracking.gate(client, name, v4, 8.0, "inception_v3:imagenet", 0.5)[0]
    assert client.get_model_version(name, str(v4)).tags["champion_fid"] == "10.0"
    v5 = _new_version(client, name, 1.0)
    promoted, reason = tracking.gate(client, name, v5, 1.0, "inception_v3:random-init(seed=0)", 0.5)
    assert not promoted and "not comparable" in reason

    previous, _ = tracking.rollback(client, name)
    assert previous == v1 == int(client.get_model_version_by_alias(name, "champion").version)
    assert client.get_model_version(name, str(v4)).tags["promoted"] == "false"
    tracking.promote(client, name, v2, note="visual check")
    champion = client.get_model_version_by_alias(name, "champion")
    assert int(champion.version) == v2 and champion.tags["decided_by"] == "human"
    assert "visual check" in champion.tags["champion_reason"]


RACE = """
import sys, time
from mlflow import MlflowClient
from cyclegan import tracking
from tests.test_mlflow import _new_version
uri, name, fid, start, delay = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
client = MlflowClient(uri)
time.sleep(max(0.0, start - time.time()) + delay)  # versions get created in a shuffled order
version = _new_version(client, name, fid)
time.sleep(max(0.0, start + 1.0 - time.time()))
tracking.gate(client, name, version, fid, "inception_v3:imagenet", 0.0)
"""


def test_concurrent_registrations_end_with_the_best_champion(use_server):
    from mlflow import MlflowClient

    client = MlflowClient(use_server)
    repo = Path(__file__).resolve().parents[1]
    rng = np.random.default_rng(0)
    for round_ in range(3):
        name = f"monet-race-{round_}"
        fids = [7.0, 3.0, 5.0, 6.0]
        start = time.time() + 7
        delays = rng.permutation(len(fids)) * 0.2
        procs = [subprocess.Popen([sys.executable, "-c", RACE, use_server, name, str(f), str(start), str(d)],
                                  cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for f, d in zip(fids, delays, strict=True)]  # fmt: skip
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
        champion = client.get_model_version_by_alias(name, "champion")
        versions = {v.version: v.tags for v in client.search_model_versions(f"name = '{name}'")}
        assert float(champion.tags["fid"]) == 3.0, (champion.version, versions)


def test_unreachable_server_fails_fast_before_heavy_work(
    monkeypatch, tiny_config, pipeline_outputs, tmp_path
):
    from cyclegan.steps import train

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    started = time.time()
    with pytest.raises(tracking.TrackingUnavailable, match="unreachable"):
        train.run(tiny_config(), pipeline_outputs["data"], tmp_path / "train")
    assert time.time() - started < 30
    assert not (tmp_path / "train").exists()
