"""The compiled KFP v2 pipeline YAML: DAG order, the FID gate, GPUs, secrets, placement, images."""

from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from tests.conftest import REPO

IMAGE = "registry.example.com/ml/cyclegan:1.2.3"
STEPS = ["validate", "preprocess", "train", "evaluate", "register"]


def compile_yaml(tmp_path: Path, *args: str, env_image: str | None = None) -> tuple[dict, dict]:
    out = tmp_path / "pipeline.yaml"
    argv = ["-p", str(REPO / "params.yaml"), "compile", "--out", str(out), *args]
    assert main(argv) == 0
    docs = list(yaml.safe_load_all(out.read_text()))
    assert len(docs) == 2, "pipeline spec + kubernetes platform spec"
    return docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.fixture(scope="module")
def gpu_spec(tmp_path_factory):
    return compile_yaml(tmp_path_factory.mktemp("kfp"), "--image", IMAGE, "--gpus", "1")


def tasks_of(spec: dict) -> dict[str, dict]:
    """Every task by name, the condition group's tasks included, with its enclosing group."""
    out = {}
    for name, task in spec["root"]["dag"]["tasks"].items():
        out[name] = {**task, "_group": "root"}
        comp = spec["components"][task["componentRef"]["name"]]
        for inner, inner_task in comp.get("dag", {}).get("tasks", {}).items():
            out[inner] = {**inner_task, "_group": name}
    return out


def test_five_steps_in_order_with_register_under_the_fid_gate(gpu_spec):
    spec, _ = gpu_spec
    tasks = tasks_of(spec)
    assert set(STEPS) <= set(tasks)
    assert "validate" not in str(tasks["validate"].get("dependentTasks", []))
    assert tasks["preprocess"]["dependentTasks"] == ["validate"]
    assert tasks["train"]["dependentTasks"] == ["preprocess"]
    assert set(tasks["evaluate"]["dependentTasks"]) == {"preprocess", "train"}
    gate = tasks["register"]["_group"]
    assert gate != "root", "register must sit inside the dsl.If group"
    assert "evaluate" in spec["root"]["dag"]["tasks"][gate]["dependentTasks"]
    condition = spec["root"]["dag"]["tasks"][gate]["triggerPolicy"]["condition"]
    assert condition == "inputs.parameter_values['pipelinechannel--evaluate-Output'] == true"
    # the artifacts flow step to step
    art = tasks["register"]["inputs"]["artifacts"]
    assert art["model"]["componentInputArtifact"] == "pipelinechannel--train-model"
    assert art["evaluation"]["componentInputArtifact"] == "pipelinechannel--evaluate-evaluation"
    data = tasks["train"]["inputs"]["artifacts"]["data"]["taskOutputArtifact"]
    assert data == {"outputArtifactKey": "data", "producerTask": "preprocess"}


def test_artifact_types_and_outputs(gpu_spec):
    spec, _ = gpu_spec
    outs = {n: spec["components"][f"comp-{n}"]["outputDefinitions"] for n in STEPS}
    types = {n: {k: v["artifactType"]["schemaTitle"] for k, v in o.get("artifacts", {}).items()}
             for n, o in outs.items()}  # fmt: skip
    assert types["validate"] == {"validated": "system.Dataset", "data_docs": "system.HTML"}
    assert types["preprocess"] == {"data": "system.Dataset"}
    assert types["train"] == {"model": "system.Model"}
    assert types["evaluate"] == {"evaluation": "system.Artifact", "metrics": "system.Metrics",
                                 "samples": "system.HTML"}  # fmt: skip
    params = outs["evaluate"]["parameters"]
    assert params["fid"]["parameterType"] == "NUMBER_DOUBLE"
    assert params["Output"]["parameterType"] == "BOOLEAN"


def test_pipeline_parameters_come_from_params_yaml(gpu_spec):
    spec, _ = gpu_spec
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert set(inputs) == {"params_yaml", "overrides", "photo_dir", "monet_dir", "max_fid_ratio"}
    assert yaml.safe_load(inputs["params_yaml"]["defaultValue"]) == yaml.safe_load(
        (REPO / "params.yaml").read_text()
    )
    assert inputs["overrides"]["parameterType"] == "LIST"


def test_train_gets_the_gpu_retries_and_no_cache_data_steps_cache(gpu_spec):
    spec, platform = gpu_spec
    train = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert train["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert train["accelerator"]["resourceCount"] == "1"
    assert train["resourceCpuRequest"] and train["resourceMemoryLimit"]
    tasks = tasks_of(spec)
    assert tasks["train"]["retryPolicy"]["maxRetryCount"] == 3
    for step in ("validate", "preprocess"):
        assert tasks[step]["cachingOptions"] == {"enableCache": True}
    for step in ("train", "register"):
        assert not tasks[step]["cachingOptions"].get("enableCache", False)
    # placement: GPU nodes, tolerating their taint
    assert platform["exec-train"]["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in platform[
        "exec-train"
    ]["tolerations"]
    assert "nodeSelector" not in platform["exec-validate"]


def _secret_env(executor: dict) -> dict[str, str]:
    return {e["envVar"]: s["secretName"] for s in executor.get("secretAsEnv", [])
            for e in s["keyToEnv"]}  # fmt: skip


def test_secrets_are_wired_as_env(gpu_spec):
    _, platform = gpu_spec
    register = _secret_env(platform["exec-register"])
    assert register["MLFLOW_TRACKING_URI"] == "cyclegan-mlflow"
    assert register["AWS_ACCESS_KEY_ID"] == register["AWS_SECRET_ACCESS_KEY"] == "cyclegan-s3"
    for step in ("validate", "preprocess", "train", "evaluate"):
        env = _secret_env(platform[f"exec-{step}"])
        assert env["AWS_ACCESS_KEY_ID"] == "cyclegan-s3"
        assert "MLFLOW_TRACKING_URI" not in env


def test_every_executor_runs_the_given_image(gpu_spec):
    spec, _ = gpu_spec
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == 5
    assert {e["container"]["image"] for e in executors.values()} == {IMAGE}
    for e in executors.values():  # the image has kfp + the project: no pip install at run time
        assert "pip install" not in " ".join(e["container"]["command"])


def test_cpu_build_has_no_accelerator_and_names_come_from_options(tmp_path, monkeypatch):
    monkeypatch.setenv("CYCLEGAN_IMAGE", "other.example/cyclegan:env")
    spec, platform = compile_yaml(tmp_path, "--gpus", "0", "--s3-secret", "minio-creds",
                                  "--mlflow-secret", "tracking", "--node-selector", "pool=train",
                                  "--toleration", "dedicated=ml:NoSchedule")  # fmt: skip
    train = spec["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert "accelerator" not in train["resources"]
    assert train["image"] == "other.example/cyclegan:env"
    assert _secret_env(platform["exec-register"])["MLFLOW_TRACKING_URI"] == "tracking"
    assert _secret_env(platform["exec-train"])["AWS_ACCESS_KEY_ID"] == "minio-creds"
    assert platform["exec-train"]["nodeSelector"]["labels"] == {"pool": "train"}
    assert platform["exec-train"]["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
    ]


def test_multi_gpu_defaults_to_mirrored_strategy(tmp_path):
    spec, _ = compile_yaml(tmp_path, "--image", IMAGE, "--gpus", "4")
    overrides = spec["root"]["inputDefinitions"]["parameters"]["overrides"]["defaultValue"]
    assert overrides == ["train.strategy=mirrored"]


def test_multi_worker_compiles_to_the_tfjob_launcher(tmp_path):
    spec, platform = compile_yaml(tmp_path, "--image", IMAGE, "--gpus", "2", "--workers", "3",
                                  "--pvc", "cyclegan-work")  # fmt: skip
    tasks = spec["root"]["dag"]["tasks"]
    assert "train" not in tasks
    train = tasks["train-tfjob"]
    assert train["componentRef"]["name"] == "comp-train-tfjob"
    assert "train-tfjob" in tasks["evaluate"]["dependentTasks"]
    params = train["inputs"]["parameters"]
    assert params["workers"]["runtimeValue"]["constant"] == 3
    assert params["gpus_per_worker"]["runtimeValue"]["constant"] == 2
    assert params["image"]["runtimeValue"]["constant"] == IMAGE
    # the launcher pod itself needs no GPU; the volume is shared with the TFJob's pods
    launcher = spec["deploymentSpec"]["executors"]["exec-train-tfjob"]["container"]
    assert "accelerator" not in launcher.get("resources", {})
    assert platform["exec-train-tfjob"]["pvcMount"][0]["mountPath"] == "/mnt/cyclegan"


def test_compile_errors_are_reported(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CYCLEGAN_IMAGE", raising=False)
    out = str(tmp_path / "p.yaml")
    assert main(["-p", str(REPO / "params.yaml"), "compile", "--out", out]) == 1
    assert "--image" in capsys.readouterr().err
    assert main(["-p", str(REPO / "params.yaml"), "compile", "--out", out, "--image", IMAGE,
                 "--workers", "2"]) == 1  # fmt: skip
    assert "--pvc" in capsys.readouterr().err
    assert main(["-p", str(REPO / "params.yaml"), "-S", "train.nope=1", "compile", "--out", out,
                 "--image", IMAGE]) == 1  # fmt: skip
    assert "train.nope" in capsys.readouterr().err


def test_pipeline_commands_plug_into_a_cyclegan_style_parser(tmp_path):
    """`add_pipeline_commands` under a parser with cyclegan's top-level -p / -S options."""
    import argparse

    from cyclegan.config import load_config
    from pipeline.cli import add_pipeline_commands

    parser = argparse.ArgumentParser(prog="cyclegan")
    parser.add_argument("-p", "--params", default="params.yaml")
    parser.add_argument("-S", "--set", action="append", default=[])
    add_pipeline_commands(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "p.yaml"
    args = parser.parse_args(["-p", str(REPO / "params.yaml"), "-S", "train.epochs=2", "pipeline",
                              "compile", "--out", str(out), "--image", IMAGE, "-S", "train.ngf=8"])  # fmt: skip
    assert args.func(load_config(args.params, args.set), args) == 0
    spec = next(yaml.safe_load_all(out.read_text()))
    overrides = spec["root"]["inputDefinitions"]["parameters"]["overrides"]["defaultValue"]
    assert overrides == ["train.epochs=2", "train.ngf=8"]


def test_the_gate_threshold_defaults_to_params_yaml(tmp_path):
    """register.max_fid_ratio (params.yaml, with the compile's overrides) is the gate's default."""
    spec, _ = compile_yaml(tmp_path, "--image", IMAGE)
    gate = spec["root"]["inputDefinitions"]["parameters"]["max_fid_ratio"]
    assert (
        gate["defaultValue"]
        == yaml.safe_load((REPO / "params.yaml").read_text())["register"]["max_fid_ratio"]
    )
    spec, _ = compile_yaml(tmp_path, "--image", IMAGE, "-S", "register.max_fid_ratio=0.75")
    assert spec["root"]["inputDefinitions"]["parameters"]["max_fid_ratio"]["defaultValue"] == 0.75
