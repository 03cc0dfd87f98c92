"""The real DVC pipeline (dvc.yaml of this repository) end to end, in a temporary git repo.

Runs `dvc repro` for real on a `dvc add`-ed tiny dataset with tiny params, then checks the
no-op rerun, that a train.* change reruns only train and what follows, and dvc push/pull with
the default local remote of .dvc/config.
"""

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, tiny_overrides, write_params

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}", "DVC_NO_ANALYTICS": "1"}  # fmt: skip
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_extractor_path, sample_dirs):
    root = tmp_path_factory.mktemp("dvcrepo") / "repo"
    root.mkdir()
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    # The user's own dataset, brought under DVC with `dvc add`.
    shutil.copytree(sample_dirs["photo_dir"], root / "mydata" / "photo_jpg")
    shutil.copytree(sample_dirs["monet_dir"], root / "mydata" / "monet_jpg")
    write_params(root / "params.yaml", tiny_overrides(
        evaluate__extractor=str(tiny_extractor_path),
        data__photo_dir="mydata/photo_jpg", data__monet_dir="mydata/monet_jpg",
    ))  # fmt: skip
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.email", "test@example.invalid"], root)
    run(["git", "config", "user.name", "test"], root)
    run([str(BIN / "dvc"), "init", "-q"], root)
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")  # the default local remote
    run([str(BIN / "dvc"), "add", "-q", "mydata"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "tiny repo"], root)
    return root


def test_repro_runs_every_stage_and_writes_metrics(repo):
    out = run([str(BIN / "dvc"), "repro"], repo).stdout
    for stage in ("sample_data", "validate", "preprocess", "train", "evaluate", "register"):
        assert f"Running stage '{stage}'" in out
    metrics = run([str(BIN / "dvc"), "metrics", "show", "--json"], repo).stdout
    assert '"fid"' in metrics and '"fid_baseline_photos"' in metrics
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"sample_data", "validate", "preprocess", "train", "evaluate",
                                   "register"}  # fmt: skip
    plots = run([str(BIN / "dvc"), "plots", "show", "--json"], repo).stdout
    assert "losses.csv" in plots


def test_second_repro_is_a_noop(repo):
    out = run([str(BIN / "dvc"), "repro"], repo).stdout
    assert "Data and pipelines are up to date" in out
    assert "Running stage" not in out


def test_train_param_change_reruns_only_train_and_after(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["epochs_decay"] = 0
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run([str(BIN / "dvc"), "repro"], repo).stdout
    for stage in ("train", "evaluate", "register"):
        assert f"Running stage '{stage}'" in out
    for stage in ("sample_data", "validate", "preprocess"):
        assert f"Running stage '{stage}'" not in out


def test_push_and_pull_with_the_default_local_remote(repo):
    run([str(BIN / "dvc"), "push", "-q"], repo)
    originals = repo.parent / "originals"
    shutil.copytree(repo / "mydata", originals)
    shutil.rmtree(repo / "mydata")
    shutil.rmtree(repo / ".dvc" / "cache")
    run([str(BIN / "dvc"), "pull", "-q", "mydata.dvc"], repo)
    cmp = filecmp.dircmp(originals, repo / "mydata")
    assert not cmp.left_only and not cmp.right_only
    for sub in ("photo_jpg", "monet_jpg"):
        names = sorted(p.name for p in (originals / sub).iterdir())
        match, mismatch, errors = filecmp.cmpfiles(originals / sub, repo / "mydata" / sub, names,
                                                   shallow=False)  # fmt: skip
        assert match == names and not mismatch and not errors
