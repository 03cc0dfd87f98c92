"""The whole KFP pipeline on this machine through kfp.local's SubprocessRunner, on tiny sample
data, ending with the model registered in a real (sqlite) MLflow registry."""

import base64
import json

import pytest

from components import _runtime
from pipeline.cli import main
from tests.conftest import REPO, tiny_overrides, write_params


@pytest.mark.slow
def test_local_pipeline_registers_the_model(tmp_path, mlflow_uri, sample_dirs,
                                            tiny_extractor_path, capsys):  # fmt: skip
    from mlflow import MlflowClient

    params = write_params(tmp_path / "params.yaml",
                          tiny_overrides(evaluate__extractor=str(tiny_extractor_path)))  # fmt: skip
    root = tmp_path / "kfp-root"
    rc = main(["-p", str(params), "-S", "train.epochs_decay=0", "local",
               "--pipeline-root", str(root), "--photo-dir", str(sample_dirs["photo_dir"]),
               "--monet-dir", str(sample_dirs["monet_dir"]), "--max-fid-ratio", "1e9"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    assert "registered monet-generator version 1 (champion)" in out

    (run_dir,) = root.glob("cyclegan-photo2monet-*")
    assert {p.name for p in run_dir.iterdir()} >= {"validate", "preprocess", "train", "evaluate",
                                                    "register"}  # fmt: skip
    # typed artifacts: the Data Docs page, the TFRecords, the model, the metrics, the grid
    assert "<html" in (run_dir / "validate/data_docs").read_text().lower()
    assert (run_dir / "validate/validated/manifest.json").is_file()
    assert list((run_dir / "preprocess/data").glob("*.tfrecord"))
    export = json.loads((run_dir / "train/model/export/manifest.json").read_text())
    assert export["params"]["epochs_decay"] == 0, "the run's -S override reached the train step"
    samples = (run_dir / "evaluate/samples").read_text()
    png = base64.b64decode(samples.split("data:image/png;base64,")[1].split("'")[0])
    assert png.startswith(b"\x89PNG")
    evaluated = json.loads((run_dir / "evaluate/executor_output.json").read_text())
    metrics = evaluated["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert {"fid", "fid_baseline_photos", "kid_mean", "mifid"} <= set(metrics)
    assert evaluated["parameterValues"]["Output"] is True
    assert float((run_dir / "evaluate/fid").read_text()) == pytest.approx(metrics["fid"])

    client = MlflowClient(mlflow_uri)
    model = client.get_registered_model("monet-generator")
    (version,) = client.search_model_versions("name = 'monet-generator'")
    assert str(model.aliases["champion"]) == str(version.version) == "1"
    assert version.tags["fid"] and float(version.tags["fid"]) == pytest.approx(metrics["fid"])
    run = client.get_run(version.run_id)
    assert run.data.tags["kfp_run_id"]  # the KFP job id placeholder, resolved by kfp.local
    registered = json.loads((run_dir / "register/executor_output.json").read_text())
    assert registered["parameterValues"] == {"model_uri": "models:/monet-generator/1",
                                             "version": 1, "promoted": True}  # fmt: skip


def test_fid_gate_and_params_loading():
    assert _runtime.fid_gate({"fid": 10.0, "fid_ratio": 0.5}, 1.0)
    assert not _runtime.fid_gate({"fid": 10.0, "fid_ratio": 1.5}, 1.0)
    assert not _runtime.fid_gate({"fid": 10.0, "fid_ratio": None}, 1.0)
    assert not _runtime.fid_gate({"fid": None, "fid_ratio": 0.5}, 1.0)
    cfg = _runtime.load_cfg((REPO / "params.yaml").read_text(), ["train.epochs=2"])
    assert cfg.train.epochs == 2
    from pipeline.dag import params_text

    assert (
        _runtime.load_cfg(params_text(REPO / "params.yaml")).to_dict()
        == _runtime.load_cfg((REPO / "params.yaml").read_text()).to_dict()
    )
    from cyclegan.config import ConfigError

    with pytest.raises(ConfigError, match="train.nope"):
        _runtime.load_cfg(params_text(REPO / "params.yaml"), ["train.nope=1"])
