"""The `cyclegan` CLI of each step on tiny data, chained the way dvc.yaml chains them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cyclegan.cli import EXIT_INVALID_DATA, main
from tests.conftest import tiny_overrides, write_params


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_extractor_path):
    root = tmp_path_factory.mktemp("cli")
    write_params(root / "params.yaml", tiny_overrides(evaluate__extractor=str(tiny_extractor_path)))
    return root


def cli(workdir: Path, *args: str) -> int:
    return main(["-p", str(workdir / "params.yaml"), *args])


def test_steps_chain_through_the_cli(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'mlflow.db'}")
    assert cli(workdir, "sample-data", "--out", "data/sample") == 0
    assert len(list((workdir / "data/sample/photo_jpg").glob("*.jpg"))) == 28
    assert len(list((workdir / "data/sample/monet_jpg").glob("*.jpg"))) == 20

    assert cli(workdir, "validate", "--photo-dir", "data/sample/photo_jpg",
               "--monet-dir", "data/sample/monet_jpg", "--out", "out/validate") == 0  # fmt: skip
    summary = json.loads((workdir / "out/validate/summary.json").read_text())
    assert summary["passed"] and summary["n_accepted"] == 48 and summary["n_rejected"] == 0
    assert (workdir / "out/validate/data_docs/index.html").is_file()

    assert cli(workdir, "preprocess", "--validated", "out/validate", "--out", "out/data") == 0
    manifest = json.loads((workdir / "out/data/manifest.json").read_text())
    total = sum(n for d in manifest["counts"].values() for n in d.values())
    assert total == 48 and manifest["image_size"] == 32
    assert all((workdir / "out/data" / s["file"]).is_file() for s in manifest["shards"])

    assert cli(workdir, "train", "--data", "out/data", "--out", "out/train") == 0
    export = workdir / "out/train/export"
    assert (export / "G.keras").is_file() and (export / "G_savedmodel" / "saved_model.pb").is_file()
    history = (workdir / "out/train/losses.csv").read_text().splitlines()
    assert history[0].startswith("step,epoch,lr,") and len(history) > 2

    assert cli(workdir, "evaluate", "--data", "out/data", "--train", "out/train",
               "--out", "out/evaluate") == 0  # fmt: skip
    metrics = json.loads((workdir / "out/evaluate/metrics.json").read_text())
    assert metrics["fid"] >= 0 and metrics["fid_baseline_photos"] > 0
    assert metrics["extractor"].startswith("keras:tiny_features.keras:")
    assert (workdir / "out/evaluate/grid.png").is_file()

    assert cli(workdir, "register", "--train", "out/train", "--eval", "out/evaluate",
               "--validated", "out/validate", "--out", "out/register") == 0  # fmt: skip
    registration = json.loads((workdir / "out/register/registration.json").read_text())
    assert registration["version"] == 1 and registration["promoted"] is True

    capsys.readouterr()
    assert cli(workdir, "results") == 0
    printed = capsys.readouterr().out
    assert "FID(G(photos), paintings)" in printed and "grid.png" in printed
    assert "version 1 (champion)" in printed and "mlflow ui --backend-store-uri" in printed


def test_validate_cli_fails_on_bad_data_and_names_the_file(workdir, tmp_path, capsys):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(5):
        Image.effect_noise((40, 40), 60 + i).convert("RGB").save(photos / f"p{i}.jpg")
    (photos / "broken.jpg").write_bytes(b"not a jpeg at all")
    monets = tmp_path / "monets"
    monets.mkdir()
    for i in range(5):
        Image.effect_noise((40, 40), 30 + i).convert("RGB").save(monets / f"m{i}.jpg")
    code = cli(workdir, "validate", "--photo-dir", str(photos), "--monet-dir", str(monets),
               "--out", str(tmp_path / "out"))  # fmt: skip
    assert code == EXIT_INVALID_DATA
    out = capsys.readouterr().out
    assert "broken.jpg: cannot decode: not an image" in out
    assert "validate.on_invalid: skip" in out


def test_installed_console_script_runs():
    exe = Path(sys.executable).parent / "cyclegan"
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for step in ("sample-data", "validate", "preprocess", "train", "evaluate", "register"):
        assert step in proc.stdout
