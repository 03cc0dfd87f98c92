"""params.yaml loading: overrides, and bad params that must fail naming the key."""

import pytest
import yaml

from cyclegan.cli import EXIT_BAD_CONFIG, main
from cyclegan.config import ConfigError, load_config
from tests.conftest import REPO, write_params


def test_repository_params_load_with_their_defaults():
    cfg = load_config(REPO / "params.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert cfg.train.ngf == raw["train"]["ngf"]
    assert cfg.preprocess.image_size == raw["preprocess"]["image_size"]
    assert cfg.train.lambda_cycle == 10.0 and cfg.train.lambda_identity == 0.5


def test_paper_params_file_is_valid_and_paper_scale():
    cfg = load_config(REPO / "params" / "paper.yaml")
    t = cfg.train
    assert (cfg.preprocess.image_size, t.ngf, t.ndf, t.n_blocks) == (256, 64, 64, 9)
    assert (t.epochs, t.epochs_decay, t.load_size, t.gan_mode, t.batch_size) == (
        100,
        100,
        286,
        "lsgan",
        1,
    )


def test_fid_curve_is_off_by_default_and_on_at_paper_scale():
    assert load_config(REPO / "params.yaml").train.fid_every_epochs == 0
    assert load_config(REPO / "params" / "paper.yaml").train.fid_every_epochs == 10
    assert (
        load_config(REPO / "params.yaml", ["train.fid_every_epochs=5"]).train.fid_every_epochs == 5
    )


def test_override_changes_one_value_with_yaml_typing():
    cfg = load_config(REPO / "params.yaml", ["train.epochs=3", "train.flip=false", "train.lr=1e-3"])
    assert cfg.train.epochs == 3 and cfg.train.flip is False and cfg.train.lr == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochz=3", "unknown key 'train.epochz'"),
        ("trian.epochs=3", "unknown key 'trian'"),
        ("train.ngf=abc", "'train.ngf' must be int, got 'abc'"),
        ("train.ngf=4.5", "'train.ngf' must be int"),
        ("train.flip=3", "'train.flip' must be bool"),
        ("train.gan_mode=wgan", "'train.gan_mode' must be one of 'bce', 'lsgan'"),
        (
            "preprocess.image_size=30",
            "'preprocess.image_size' = 30 must be >= 16 and a multiple of 4",
        ),
        ("validate.formats=JPEG", "'validate.formats' must be list"),
        ("train.fid_every_epochs=-1", "'train.fid_every_epochs' = -1 must be >= 0"),
        ("train.fid_every_epochs=2.5", "'train.fid_every_epochs' must be int"),
        ("train.epochs", "must look like section.key=value"),
    ],
)
def test_bad_override_is_a_clear_error(override, message):
    with pytest.raises(
        ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("'", "'")
    ):
        load_config(REPO / "params.yaml", [override])


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"]["learning_rate"] = 0.1
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"params.yaml: unknown key 'train.learning_rate'"):
        load_config(path)


def test_missing_key_in_file_is_an_error(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    del raw["evaluate"]["batch_size"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"missing key 'evaluate.batch_size'"):
        load_config(path)


def test_cli_reports_bad_params_and_exits_nonzero(tmp_path, capsys):
    params = write_params(tmp_path / "params.yaml", [])
    code = main(["-p", str(params), "-S", "train.ngf=[1]", "train", "--data", str(tmp_path)])
    assert code == EXIT_BAD_CONFIG
    err = capsys.readouterr().err
    assert "'train.ngf' must be int" in err


def test_missing_params_file_is_named(tmp_path, capsys):
    code = main(["-p", str(tmp_path / "nope.yaml"), "validate"])
    assert code == EXIT_BAD_CONFIG
    assert "nope.yaml' not found" in capsys.readouterr().err
