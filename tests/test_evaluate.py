"""Evaluate step outputs, the feature-extractor choice, translate and the Kaggle submission."""

import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from cyclegan import metrics
from cyclegan.steps import evaluate, translate


def test_evaluate_writes_metrics_and_grid(pipeline_outputs):
    m = json.loads((pipeline_outputs["evaluate"] / "metrics.json").read_text())
    for key in ("fid", "fid_baseline_photos", "kid_mean", "kid_std", "mifid"):
        assert isinstance(m[key], float) and np.isfinite(m[key])
    assert m["extractor"].startswith("keras:tiny_features.keras:")
    assert m["n_generated"] >= 2 and m["n_paintings"] >= 2
    grid = Image.open(pipeline_outputs["evaluate"] / "grid.png")
    assert grid.size == (6 * 32 + 5 * 2, 2 * 32 + 2)  # 6 columns, grid_rows=2, 2 px gutters


def test_too_few_images_warns_with_the_count(tiny_config, pipeline_outputs, tmp_path):
    cfg = tiny_config()
    with pytest.warns(UserWarning, match=r"FID from \d+ generated and \d+ real images with \d+-d"):
        result = evaluate.run(
            cfg, pipeline_outputs["data"], pipeline_outputs["train"], tmp_path / "ev"
        )
    assert result.metrics["notes"]


def test_auto_weights_offline_fall_back_to_seeded_random_init(monkeypatch):
    monkeypatch.setattr(metrics, "imagenet_weights_cached", lambda: False)
    monkeypatch.setattr(metrics, "_online", lambda: False)
    with pytest.warns(UserWarning, match="random-init InceptionV3"):
        a = metrics.load_extractor("inception_v3", "auto", 75)
    b = metrics.load_extractor("inception_v3", "random", 75)
    assert a.name == b.name == "inception_v3:random-init(seed=0)"
    x = np.random.default_rng(0).uniform(-1, 1, (2, 40, 40, 3)).astype(np.float32)
    fa, fb = a.features([x]), b.features([x])
    assert fa.shape == (2, 2048)
    np.testing.assert_allclose(fa, fb, rtol=1e-5)  # seeded: the same network every time


def test_inception_weights_from_a_file_are_loaded_and_named_by_hash(tmp_path):
    import keras

    source = keras.applications.InceptionV3(include_top=False, pooling="avg", weights=None,
                                            input_shape=(75, 75, 3))  # fmt: skip
    path = tmp_path / "inception.weights.h5"
    source.save_weights(path)
    extractor = metrics.load_extractor("inception_v3", str(path), 75)
    assert extractor.name.startswith("inception_v3:file:")
    x = np.random.default_rng(1).uniform(-1, 1, (2, 75, 75, 3)).astype(np.float32)
    np.testing.assert_allclose(extractor.features([x]), np.asarray(source(x)), rtol=1e-4, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="inception_weights 'nope.h5'"):
        metrics.load_extractor("inception_v3", "nope.h5", 75)


def test_translate_any_size_never_overwrites_inputs(pipeline_outputs, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (37, 53, 3), dtype=np.uint8)).save(src / "odd.png")
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(src / "small.jpg")
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    result = translate.translate([src], pipeline_outputs["train"], tmp_path / "out", progress=False)
    sizes = {p.name: Image.open(p).size for p in result.written}
    assert sizes == {"odd.png": (53, 37), "small.png": (20, 20)}
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
    with pytest.raises(ValueError, match="would overwrite an input"):
        translate.translate([src / "odd.png"], pipeline_outputs["train"], src, progress=False)


def test_submit_writes_a_valid_kaggle_zip(pipeline_outputs, sample_dirs, tmp_path):
    photos = sample_dirs["photo_dir"]
    with pytest.raises(ValueError, match="Kaggle expects 7000-10000 images"):
        translate.submit(photos, pipeline_outputs["train"], tmp_path / "images.zip", progress=False)
    assert not (tmp_path / "images.zip").exists()
    n = translate.submit(photos, pipeline_outputs["train"], tmp_path / "images.zip", force=True,
                         batch_size=8, progress=False)  # fmt: skip
    with zipfile.ZipFile(tmp_path / "images.zip") as zf:
        names = zf.namelist()
        assert len(names) == n == len(list(photos.glob("*.jpg")))
        for name in names[:5]:
            with zf.open(name) as fh:
                image = Image.open(fh)
                image.load()
            assert image.format == "JPEG" and image.size == (256, 256) and image.mode == "RGB"


def test_fid_scorer_nan_generator_output_is_nan_not_an_error(tiny_config, pipeline_outputs):
    """The FID curve must not stop training on a broken G: score() says NaN, never raises."""
    import keras

    ecfg = tiny_config().evaluate
    extractor = metrics.load_extractor(ecfg.extractor, ecfg.inception_weights, ecfg.input_size)
    scorer = evaluate.FidScorer.load(pipeline_outputs["data"], 32, extractor, ecfg.batch_size)
    assert np.all(np.isfinite(scorer.painting_features))
    broken = keras.Sequential(
        [keras.Input((None, None, 3)), keras.layers.Lambda(lambda x: x * np.nan)]
    )
    value, generated = scorer.score(broken)
    assert np.isnan(value) and len(generated) == scorer.n_photo
    G, _, _ = evaluate.load_generators(pipeline_outputs["train"])
    value, _ = scorer.score(G)
    m = json.loads((pipeline_outputs["evaluate"] / "metrics.json").read_text())
    assert value == pytest.approx(m["fid"], rel=1e-6) and m["extractor"] == extractor.name
