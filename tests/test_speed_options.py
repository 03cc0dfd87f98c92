"""The train step's speed options give the plain step's numbers (docs/BENCHMARKS.md).

Stated tolerances, on the first step's losses from identical weights and inputs (relative):
fuse_calls / instance_norm fused / small_conv matmul: 1e-5 (float32 summation order only);
XLA: 1e-4;
bf16: 5e-2 (8 mantissa bits in the convolutions; losses, statistics and weights float32);
fp16 + loss scaling: 1e-2. Models are tiny; U-Net dropout is switched off where a check needs
identical randomness (the fused calls draw masks for the concatenated batch).
"""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from bench.seed_step import seed_step
from cyclegan.config import ConfigError
from cyclegan.model.layers import (
    Conv2D,
    Conv2DTranspose,
    InstanceNorm,
    conv2d_as_matmul,
    conv2d_transpose_as_matmul,
    instance_norm_fused,
    instance_norm_moments,
    matmul_by_weights,
    matmul_by_weights_transposed,
)
from cyclegan.train import CycleGAN, FusedAdam, distributed_step

KEYS = ("gen_total", "G_cycle", "F_identity", "D_X", "D_Y")
SIZE = 32


def _inputs(batch=2, seed=0):
    rng = np.random.default_rng(seed)
    photo = tf.constant(rng.uniform(-1, 1, (batch, SIZE, SIZE, 3)), tf.float32)
    monet = tf.constant(rng.uniform(-1, 1, (batch, SIZE, SIZE, 3)), tf.float32)
    return photo, monet


def _no_dropout(gan):
    for model in (gan.G, gan.F):
        for layer in model.layers:
            if isinstance(layer, keras.layers.Dropout):
                layer.rate = 0.0


def _gan(cfg, weights=None, **options):
    cfg = dataclasses.replace(cfg, **options)
    gan = CycleGAN(cfg, SIZE, steps_per_epoch=10, global_batch=cfg.batch_size)
    if weights is not None:
        for model, w in zip((gan.G, gan.F, gan.D_X, gan.D_Y), weights, strict=True):
            model.set_weights(w)
    _no_dropout(gan)
    return gan


def _weights(gan):
    return [m.get_weights() for m in (gan.G, gan.F, gan.D_X, gan.D_Y)]


def _step(gan, photo, monet, steps=1):
    step = distributed_step(tf.distribute.get_strategy(), gan)
    for _ in range(steps):
        out = step(photo, monet)
    return {k: float(v) for k, v in out.items()}


def _assert_losses_close(got, want, rtol):
    for key in KEYS:
        assert got[key] == pytest.approx(want[key], rel=rtol), key


@pytest.fixture(scope="module", params=["resnet", "unet"])
def plain(request, tiny_config):
    """The plain step (separate calls, tf.nn.moments, TF's conv ops, float32, no XLA), one step
    from fixed weights: its config, initial weights, losses, and G's output afterwards."""
    cfg = tiny_config(train__generator=request.param, train__pool_size=0).train
    keras.utils.set_random_seed(0)
    gan = _gan(cfg, fuse_calls=False, instance_norm="moments", small_conv="native")
    weights = _weights(gan)
    photo, monet = _inputs()
    losses = _step(gan, photo, monet)
    return cfg, weights, losses, np.asarray(gan.G(photo, training=False))


def test_fused_calls_fused_norm_and_matmul_convs_equal_the_plain_step(plain):
    cfg, weights, want, g_after = plain
    photo, monet = _inputs()
    gan = _gan(cfg, weights, fuse_calls=True, instance_norm="fused", small_conv="matmul")
    _assert_losses_close(_step(gan, photo, monet), want, rtol=1e-5)
    # After the update: what G computes agrees (raw conv biases right before instance norm may
    # not: their true gradient is zero and Adam turns round-off into +-lr steps).
    np.testing.assert_allclose(np.asarray(gan.G(photo, training=False)), g_after, atol=1e-4)


@pytest.mark.parametrize("plain", ["resnet"], indirect=True)  # one generator: XLA compiles slowly
def test_xla_equals_the_plain_step(plain):
    cfg, weights, want, _ = plain
    photo, monet = _inputs()
    gan = _gan(cfg, weights, jit_compile=True)
    _assert_losses_close(_step(gan, photo, monet), want, rtol=1e-4)


def test_bf16_is_within_its_stated_tolerance(plain):
    cfg, weights, want, _ = plain
    photo, monet = _inputs()
    gan = _gan(cfg, weights, mixed_precision="bf16")
    assert gan.G.compute_dtype == "bfloat16" and gan.G.weights[0].dtype == "float32"
    got = _step(gan, photo, monet)
    _assert_losses_close(got, want, rtol=5e-2)
    G, F = gan.export_generators()  # exported in float32, same weights
    assert G.compute_dtype == F.compute_dtype == "float32"
    np.testing.assert_array_equal(G.get_weights()[0], gan.G.get_weights()[0])


def test_fp16_with_loss_scaling(tiny_config):
    cfg = tiny_config(train__pool_size=0).train
    keras.utils.set_random_seed(0)
    ref = _gan(cfg, fuse_calls=False, instance_norm="moments")
    weights = _weights(ref)
    photo, monet = _inputs()
    want = _step(ref, photo, monet)
    gan = _gan(cfg, weights, mixed_precision="fp16")
    assert isinstance(gan.optimizer_G, keras.optimizers.LossScaleOptimizer)
    _assert_losses_close(_step(gan, photo, monet), want, rtol=1e-2)
    more = _step(gan, photo, monet, steps=2)  # overflowing steps are skipped, never NaN
    assert all(np.isfinite(v) for v in more.values())
    assert 1 <= int(gan.step.numpy()) <= 3


def test_fast_step_equals_the_seed_transcription(tiny_config):
    """Fused calls + fused norm vs ../shared/seed.txt as written (bench/seed_step.py)."""
    cfg = tiny_config(train__pool_size=0, train__gan_mode="bce").train
    keras.utils.set_random_seed(0)
    gan = _gan(cfg, fuse_calls=True, instance_norm="fused")
    models = [keras.models.clone_model(m) for m in (gan.G, gan.F, gan.D_Y, gan.D_X)]
    for copy, model in zip(models, (gan.G, gan.F, gan.D_Y, gan.D_X), strict=True):
        copy.set_weights(model.get_weights())
    photo, monet = _inputs()
    adams = [keras.optimizers.Adam(2e-4, beta_1=0.5) for _ in range(3)]
    gen, d_m, d_p = seed_step(*models, *adams, photo, monet)
    got = _step(gan, photo, monet)
    assert got["gen_total"] == pytest.approx(float(gen), rel=1e-5)
    assert got["D_Y"] == pytest.approx(float(d_m), rel=1e-5)
    assert got["D_X"] == pytest.approx(float(d_p), rel=1e-5)


def test_pool_with_fused_calls_equals_separate_calls(tiny_config):
    cfg = tiny_config(train__pool_size=3).train
    keras.utils.set_random_seed(0)
    ref = _gan(cfg, fuse_calls=False)
    weights = _weights(ref)
    photo, monet = _inputs()
    want = _step(ref, photo, monet, steps=3)  # fills the pool, then swaps
    got = _step(_gan(cfg, weights, fuse_calls=True), photo, monet, steps=3)
    _assert_losses_close(got, want, rtol=1e-3)  # 3 Adam steps of round-off apart


def _run_optimizer(opt, variables, grads):
    opt.build(variables)

    @tf.function
    def apply(g):
        opt.apply_gradients(zip(g, variables))

    for g in grads:
        apply(g)
    return [v.numpy() for v in variables]


def test_fused_adam_is_keras_adam():
    rng = np.random.default_rng(0)
    shapes = [(3, 3, 4, 8), (8,), (17,)]
    init = [rng.normal(size=s).astype(np.float32) for s in shapes]
    grads = [[tf.constant(rng.normal(size=s), tf.float32) for s in shapes] for _ in range(5)]
    results = []
    for cls in (keras.optimizers.Adam, FusedAdam):
        variables = [keras.Variable(v) for v in init]
        opt = cls(2e-4, beta_1=0.5, beta_2=0.999)
        results.append(_run_optimizer(opt, variables, grads))
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("shape", [(1, 16, 16, 8), (3, 12, 10, 5)])
def test_fused_instance_norm_equals_moments(shape):
    x = tf.constant(np.random.default_rng(1).normal(2.0, 3.0, shape), tf.float32)
    dy = tf.constant(np.random.default_rng(2).normal(size=shape), tf.float32)
    outs = []
    for fn in (instance_norm_moments, instance_norm_fused):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x, 1e-5)
        outs.append((y.numpy(), tape.gradient(y, x, output_gradients=dy).numpy()))
    np.testing.assert_allclose(outs[1][0], outs[0][0], atol=1e-5)
    np.testing.assert_allclose(outs[1][1], outs[0][1], atol=1e-4)
    # bf16 input: statistics in float32, output in bf16 close to the float32 result
    y16 = instance_norm_fused(tf.cast(x, tf.bfloat16), 1e-5)
    assert y16.dtype == tf.bfloat16
    np.testing.assert_allclose(tf.cast(y16, tf.float32).numpy(), outs[0][0], atol=5e-2)


def test_instance_norm_layer_picks_moments_for_unknown_or_tiny_shapes():
    layer = InstanceNorm(impl="fused")
    x = tf.random.normal([2, 8, 8, 3])  # 64 pixels: the per-image kernels do not pay
    np.testing.assert_allclose(layer(x), instance_norm_moments(x, 1e-5), atol=1e-6)
    assert InstanceNorm.from_config(layer.get_config()).impl == "fused"
    assert InstanceNorm.from_config({"epsilon": 1e-5}).impl == "moments"  # files saved before impl


def test_speed_options_are_validated(tiny_config):
    with pytest.raises(ConfigError, match="train.mixed_precision"):
        tiny_config(train__mixed_precision="fp8")
    with pytest.raises(ConfigError, match="train.instance_norm"):
        tiny_config(train__instance_norm="pallas")
    with pytest.raises(ConfigError, match="train.small_conv"):
        tiny_config(train__small_conv="winograd")
    defaults = tiny_config().train
    # params.yaml keeps the seed's numerics (tests/test_train.py compares bit-close);
    # params/paper.yaml turns fuse_calls and the fused norm on; small_conv matmul (on in both)
    # only changes float32 summation order
    assert (defaults.fuse_calls, defaults.jit_compile) == (False, False)
    assert (defaults.mixed_precision, defaults.instance_norm) == ("none", "moments")
    assert defaults.small_conv == "matmul"


def _conv_and_gradients(fn, x, kernel):
    dy_seed = np.random.default_rng(3)
    with tf.GradientTape() as tape:
        tape.watch([x, kernel])
        y = fn(x, kernel)
    dy = tf.constant(dy_seed.normal(size=y.shape), y.dtype)
    dx, dk = tape.gradient(y, [x, kernel], output_gradients=dy)
    return [t.numpy() for t in (y, dx, dk)]


CONVS = [  # (input side, kernel, stride, padding, c_in, c_out): the U-Net's, and odd ones
    (4, 4, 2, "same", 6, 5),  # -> 2x2 (the U-Net's down layers)
    (2, 4, 2, "same", 6, 5),  # -> 1x1
    (5, 4, 2, "same", 3, 4),  # odd side: TF puts the odd pad pixel last
    (3, 3, 1, "valid", 4, 2),
    (2, 3, 1, "same", 4, 2),  # the U-Net's resize_conv layers
    (6, 4, 1, "valid", 2, 3),  # the PatchGAN's stride-1 layers
]
TRANSPOSED = [
    (1, 4, 2, "same", 6, 5),  # 1x1 -> 2x2 (the U-Net's up layers)
    (2, 4, 2, "same", 6, 5),
    (4, 4, 2, "same", 3, 4),
    (2, 4, 2, "valid", 3, 4),  # -> 6x6
    (3, 2, 2, "same", 2, 3),
    (3, 3, 1, "same", 2, 3),  # stride 1: k = 3 taps per phase
    (2, 3, 1, "valid", 2, 3),
]


@pytest.mark.parametrize("side,k,stride,padding,c_in,c_out", CONVS)
def test_conv_as_matmul_equals_tf_conv2d(side, k, stride, padding, c_in, c_out):
    rng = np.random.default_rng(side * 100 + k)
    x = tf.constant(rng.normal(size=(2, side, side + 1, c_in)), tf.float32)  # not square
    kernel = tf.constant(rng.normal(size=(k, k, c_in, c_out)), tf.float32)
    want = _conv_and_gradients(lambda x, w: tf.nn.conv2d(x, w, stride, padding.upper()), x, kernel)
    got = _conv_and_gradients(lambda x, w: conv2d_as_matmul(x, w, stride, padding), x, kernel)
    for g, w in zip(got, want, strict=True):  # output, input gradient, kernel gradient
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("side,k,stride,padding,c_in,c_out", TRANSPOSED)
def test_transposed_conv_as_matmul_equals_tf_conv2d_transpose(
    side, k, stride, padding, c_in, c_out
):
    rng = np.random.default_rng(side * 100 + k)
    x = tf.constant(rng.normal(size=(2, side, side + 1, c_in)), tf.float32)
    kernel = tf.constant(rng.normal(size=(k, k, c_out, c_in)), tf.float32)
    layer = keras.layers.Conv2DTranspose(c_out, k, strides=stride, padding=padding)
    out_shape = layer.compute_output_shape(x.shape)
    want = _conv_and_gradients(
        lambda x, w: tf.nn.conv2d_transpose(x, w, out_shape, stride, padding.upper()), x, kernel
    )
    got = _conv_and_gradients(
        lambda x, w: conv2d_transpose_as_matmul(x, w, stride, padding), x, kernel
    )
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("transposed", [False, True])
def test_weight_matmuls_equal_tf_matmul_and_avoid_its_slow_transposed_form(transposed):
    """The convs' matmuls: same values and gradients as tf.matmul, and no MatMul op with
    transpose_b (oneDNN runs that form 2-5x slower in float32 for few rows; BatchMatMulV2)."""
    rng = np.random.default_rng(5)
    rows = tf.constant(rng.normal(size=(6, 7)), tf.float32)
    weights = tf.constant(rng.normal(size=(9, 7) if transposed else (7, 9)), tf.float32)
    ours = matmul_by_weights_transposed if transposed else matmul_by_weights

    def products(fn):
        def run(rows, weights):
            with tf.GradientTape() as tape:
                tape.watch([rows, weights])
                y = fn(rows, weights)
            dy = tf.reshape(tf.range(54, dtype=tf.float32) / 7.0, y.shape)
            return [y, *tape.gradient(y, [rows, weights], output_gradients=dy)]

        return run

    want = products(lambda a, b: tf.matmul(a, b, transpose_b=transposed))(rows, weights)
    got = products(ours)(rows, weights)
    for g, w in zip(got, want, strict=True):  # output, rows' gradient, weights' gradient
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-5)
    graph = tf.function(products(ours)).get_concrete_function(rows, weights).graph
    matmuls = [op for op in graph.get_operations() if op.type == "MatMul"]
    assert matmuls and not any(op.get_attr("transpose_b") for op in matmuls)


def _op_types(fn, spec):
    graph = tf.function(fn).get_concrete_function(spec).graph
    return {op.type for op in graph.get_operations()}


@pytest.mark.parametrize(
    "cls,keras_cls,side,kwargs",
    [
        (Conv2D, keras.layers.Conv2D, 4, dict(strides=2, padding="same")),
        (Conv2DTranspose, keras.layers.Conv2DTranspose, 4, dict(strides=2, padding="same")),
    ],
)
def test_small_conv_layers_are_keras_layers_computed_by_matmul(cls, keras_cls, side, kwargs):
    """Same weights and results as the Keras layer (bias and activation included); the matmul
    only for static small images, any batch size; TF's conv op otherwise."""
    rng = np.random.default_rng(0)
    mine = cls(5, 4, activation="tanh", impl="matmul", **kwargs)
    ref = keras_cls(5, 4, activation="tanh", **kwargs)
    x = tf.constant(rng.normal(size=(3, side, side, 6)), tf.float32)
    ref(x)
    mine(x)
    mine.set_weights([w + 0.1 * rng.normal(size=w.shape) for w in ref.get_weights()])
    ref.set_weights(mine.get_weights())
    np.testing.assert_allclose(mine(x), ref(x), rtol=1e-5, atol=1e-6)

    small = tf.TensorSpec([None, side, side, 6], tf.float32)  # unknown batch: still the matmul
    ops = _op_types(mine, small)
    assert "MatMul" in ops or "BatchMatMulV2" in ops
    assert not ops & {"Conv2D", "Conv2DBackpropInput"}
    assert tf.function(mine)(x).shape == ref(x).shape
    big = tf.TensorSpec([None, 16, 16, 6], tf.float32)  # 16x16 -> 8x8 / 16x16 -> 32x32: TF conv
    unknown = tf.TensorSpec([None, None, None, 6], tf.float32)
    for spec in (big, unknown):
        assert _op_types(mine, spec) & {"Conv2D", "Conv2DBackpropInput"}
    native = cls.from_config({**mine.get_config(), "impl": "native"})
    native.build(x.shape)
    assert _op_types(native, small) & {"Conv2D", "Conv2DBackpropInput"}
    assert cls.from_config(mine.get_config()).impl == "matmul"
    with pytest.raises(ValueError, match="impl"):
        cls(5, 4, impl="winograd")


def test_small_conv_matmul_under_bf16_keeps_float32_weights():
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(2, 2, 2, 8)), tf.float32)
    ref = Conv2DTranspose(4, 4, strides=2, padding="same", impl="native")
    want = ref(x)
    fast = Conv2DTranspose(4, 4, strides=2, padding="same", impl="matmul", dtype="mixed_bfloat16")
    fast(x)
    fast.set_weights(ref.get_weights())
    got = fast(tf.cast(x, tf.bfloat16))
    assert got.dtype == tf.bfloat16 and fast.kernel.dtype == "float32"
    np.testing.assert_allclose(tf.cast(got, tf.float32), want, rtol=5e-2, atol=5e-2)


MIRRORED_XLA = """
import dataclasses, json, sys
import numpy as np
import tensorflow as tf
cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from cyclegan.config import load_config
from cyclegan.train import CycleGAN, distributed_step, make_strategy
cfg = load_config(sys.argv[1], sys.argv[2:]).train
strategy = make_strategy("mirrored")
rng = np.random.default_rng(0)
batch = (rng.uniform(-1, 1, (4, 32, 32, 3)).astype("float32"),
         rng.uniform(-1, 1, (4, 32, 32, 3)).astype("float32"))
out, weights = {}, None
for jit in (False, True):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        gan = CycleGAN(dataclasses.replace(cfg, jit_compile=jit), 32, 10, 4)
    if weights is None:
        weights = [m.get_weights() for m in (gan.G, gan.F, gan.D_X, gan.D_Y)]
    for m, w in zip((gan.G, gan.F, gan.D_X, gan.D_Y), weights):
        m.set_weights(w)
    step = distributed_step(strategy, gan)
    data = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch).repeat(2))
    for photo, monet in data:
        losses = step(photo, monet)
    out[str(jit)] = {k: float(v) for k, v in losses.items()}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_xla_under_mirrored_strategy_compiles_each_replica(tmp_path):
    """jit_compile with two devices: per-replica XLA gradients, same losses (2 steps, 1e-4)."""
    import json
    import subprocess
    import sys

    from tests.conftest import REPO, tiny_overrides, write_params

    params = write_params(tmp_path / "params.yaml", tiny_overrides(train__pool_size=0))
    script = tmp_path / "mirrored_xla.py"
    script.write_text(MIRRORED_XLA)
    proc = subprocess.run([sys.executable, str(script), str(params), "train.batch_size=2"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in KEYS:
        assert out["True"][key] == pytest.approx(out["False"][key], rel=1e-4), key
