"""Layers the paper uses that Keras lacks: affine-free instance norm, reflection padding."""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

INSTANCE_NORM_IMPLS = ("fused", "moments")
SMALL_CONV_IMPLS = ("matmul", "native")
# Layers built outside layer_impls() (and old saved files) use these.
_defaults = {"instance_norm": "moments", "small_conv": "native"}
_CHOICES = {"instance_norm": INSTANCE_NORM_IMPLS, "small_conv": SMALL_CONV_IMPLS}
# cuDNN's batch-norm kernels reject epsilon < 1e-5 (TF's own fused_batch_norm wrapper clamps
# to this); the difference to 1e-5 is ~5e-4 relative only for a constant (zero-variance) channel.
_FUSED_MIN_EPSILON = 1.001e-5
# Below this many pixels per image the per-image fused kernels cost more than they save
# (measured fwd+bwd on 2 cores: 8x8x512 0.5x, 16x16x512 1.5x, 128x128x64 2.8x the moments speed).
_FUSED_MIN_PIXELS = 256
# With `small_conv: matmul`, a convolution whose matrix multiply has at most this many rows per
# image (output pixels of a conv, input pixels of a transposed conv) runs as that one matmul.
# These are the U-Net's innermost 512-1024-channel layers, where most of its weights are:
# oneDNN's conv kernels stream those 4-34 MB of weights several times slower than a matmul does.
# Chosen on the whole train step (2 cores, fp32 and bf16, 64-256 px; docs/BENCHMARKS.md):
# transposed convs from up to 8x8 px 3-7% faster than up to 4x4, from 16x16 no faster; convs
# to 4x4 px no faster than to 2x2, nor transposed ones from 16x16. Single layers, fwd+bwd, fp32
# (matmul speed / conv speed): conv to 1x1-2x2 2.3-2.7x, transposed from 2x2 3-8.5x, from
# 4x4-8x8 1.7-3.8x (with the products of matmul_by_weights; plain tf.matmul: 1.3-2.2x).
_MATMUL_MAX_ROWS = {"conv": 4, "transpose": 64}


def conv_init() -> keras.initializers.Initializer:
    """The official init: normal(0, 0.02) (`init_type normal`, `init_gain 0.02`)."""
    return keras.initializers.RandomNormal(mean=0.0, stddev=0.02)


@contextlib.contextmanager
def layer_impls(**impls: str):
    """Layers built inside this block use these implementations (train.instance_norm,
    train.small_conv); the functions computed are the same either way."""
    for kind, impl in impls.items():
        if impl not in _CHOICES[kind]:
            raise ValueError(f"{kind} impl must be one of {_CHOICES[kind]}, got {impl!r}")
    previous = dict(_defaults)
    _defaults.update(impls)
    try:
        yield
    finally:
        _defaults.update(previous)


def _chosen_impl(kind: str, impl: str | None) -> str:
    """A layer's `impl`: the one given (from its config), else the layer_impls() default."""
    impl = impl or _defaults[kind]
    if impl not in _CHOICES[kind]:
        raise ValueError(f"{kind} impl must be one of {_CHOICES[kind]}, got {impl!r}")
    return impl


def instance_norm_moments(x: tf.Tensor, epsilon: float) -> tf.Tensor:
    """Reference: statistics by tf.nn.moments (two passes), in float32, autodiff gradient."""
    x32 = tf.cast(x, tf.float32)
    mean, var = tf.nn.moments(x32, axes=[1, 2], keepdims=True)
    return tf.cast((x32 - mean) * tf.math.rsqrt(var + epsilon), x.dtype)


def instance_norm_fused(x: tf.Tensor, epsilon: float) -> tf.Tensor:
    """The same function via the fused batch-norm kernel run per image (a batch of one *is*
    instance norm): one kernel for statistics + normalisation forward, one for the whole
    gradient backward, float32 statistics for bf16/fp16 inputs. Channels-last (NHWC)."""
    channels = x.shape[-1]
    scale = tf.ones([channels], tf.float32)
    offset = tf.zeros([channels], tf.float32)
    empty = tf.zeros([0], tf.float32)

    def one(image):
        return tf.raw_ops.FusedBatchNormV3(
            x=image, scale=scale, offset=offset, mean=empty, variance=empty,
            epsilon=max(epsilon, _FUSED_MIN_EPSILON), is_training=True, data_format="NHWC",
        )[0]  # fmt: skip

    batch = x.shape[0]
    if batch == 1:
        return one(x)
    return tf.concat([one(image) for image in tf.split(x, batch)], axis=0)


@keras.saving.register_keras_serializable(package="cyclegan")
class InstanceNorm(keras.layers.Layer):
    """InstanceNorm2d(affine=False, track_running_stats=False): per-image, per-channel.

    `impl`: `moments` (tf.nn.moments; the default) or `fused` (per-image fused batch-norm kernels
    where the batch size and image size are static and the image has >= 256 pixels, else
    `moments`).
    Statistics are float32 under a mixed-precision policy either way.
    """

    def __init__(self, epsilon: float = 1e-5, impl: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.impl = _chosen_impl("instance_norm", impl)

    def call(self, x):
        n, h, w = x.shape[0], x.shape[1], x.shape[2]
        if self.impl == "fused" and None not in (n, h, w) and h * w >= _FUSED_MIN_PIXELS:
            return instance_norm_fused(x, self.epsilon)
        return instance_norm_moments(x, self.epsilon)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon, "impl": self.impl}


@keras.saving.register_keras_serializable(package="cyclegan")
class ReflectionPad(keras.layers.Layer):
    """nn.ReflectionPad2d(pad) for NHWC tensors."""

    def __init__(self, pad: int, **kwargs):
        super().__init__(**kwargs)
        self.pad = pad

    def call(self, x):
        p = self.pad
        return tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], mode="REFLECT")

    def get_config(self):
        return {**super().get_config(), "pad": self.pad}


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF's "same": the output has ceil(size / stride) pixels, the odd pad pixel goes last."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _matmul_transposed(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """a @ b^T. TF's MatMul with transpose_b runs 2-5x slower in float32 on oneDNN than this
    (BatchMatMulV2 with adj_y) when `a` has few rows and `b` is a big weight matrix (measured
    on 2 cores: 48 x 1024 times 1024 x 8192: 51 vs 163 GFLOP/s; bf16 runs fast either way)."""
    return tf.raw_ops.BatchMatMulV2(x=a, y=b, adj_y=True)


@tf.custom_gradient
def matmul_by_weights(rows: tf.Tensor, weights: tf.Tensor):
    """rows @ weights ([M, K] x [K, N]) whose gradients run no a @ b^T product through MatMul
    (see _matmul_transposed): the rows' gradient is the one such product here."""

    def gradients(upstream):
        return _matmul_transposed(upstream, weights), tf.matmul(rows, upstream, transpose_a=True)

    return tf.matmul(rows, weights), gradients


@tf.custom_gradient
def matmul_by_weights_transposed(rows: tf.Tensor, weights: tf.Tensor):
    """rows @ weights^T ([M, K] x [N, K]^T), the forward product as _matmul_transposed."""

    def gradients(upstream):
        return tf.matmul(upstream, weights), tf.matmul(upstream, rows, transpose_a=True)

    return _matmul_transposed(rows, weights), gradients


def conv2d_as_matmul(x: tf.Tensor, kernel: tf.Tensor, stride: int, padding: str) -> tf.Tensor:
    """tf.nn.conv2d (NHWC, square kernel [k, k, c_in, c_out], square stride) as im2col + one
    matmul: the k*k shifted views of the input side by side, times the kernel as a matrix."""
    k, _, c_in, c_out = kernel.shape
    if padding == "same":
        (top, bottom), (left, right) = (_same_padding(x.shape[i], k, stride) for i in (1, 2))
        x = tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]])
    out_h, out_w = (x.shape[1] - k) // stride + 1, (x.shape[2] - k) // stride + 1
    views = [
        x[:, a : a + stride * (out_h - 1) + 1 : stride, b : b + stride * (out_w - 1) + 1 : stride]
        for a in range(k)
        for b in range(k)
    ]  # ordered as the kernel's (row, column, channel) axes
    columns = tf.reshape(tf.concat(views, axis=-1), [-1, k * k * c_in])
    out = matmul_by_weights(columns, tf.reshape(kernel, [k * k * c_in, c_out]))
    return tf.reshape(out, [-1, out_h, out_w, c_out])


def conv2d_transpose_as_matmul(
    x: tf.Tensor, kernel: tf.Tensor, stride: int, padding: str
) -> tf.Tensor:
    """tf.nn.conv2d_transpose (NHWC, kernel [k, k, c_out, c_in], k a multiple of the stride)
    as one matmul + overlap-add: every input pixel times the kernel gives its k x k output
    patch; kernel tap a = stride * q + r lands on output row stride * (i + q) + r."""
    k, _, c_out, c_in = kernel.shape
    s, q = stride, k // stride
    h, w = x.shape[1], x.shape[2]
    patches = matmul_by_weights_transposed(
        tf.reshape(x, [-1, c_in]), tf.reshape(kernel, [k * k * c_out, c_in])
    )
    patches = tf.reshape(patches, [-1, h, w, q, s, q, s, c_out])
    # one transpose puts the q x q kernel blocks first; unstacking them is free (slicing each
    # block out of place instead costs 1.1-1.5x the whole layer, forward + backward)
    patches = tf.transpose(patches, [3, 5, 0, 1, 2, 4, 6, 7])  # qh, qw, n, h, w, rh, rw, c
    blocks = tf.unstack(tf.reshape(patches, [q * q, -1, h, w, s, s, c_out]))
    full = tf.add_n(
        [
            tf.pad(block, [[0, 0], [qh, q - 1 - qh], [qw, q - 1 - qw], [0, 0], [0, 0], [0, 0]])
            for (qh, qw), block in ((divmod(i, q), block) for i, block in enumerate(blocks))
        ]
    )
    full_h, full_w = s * (h + q - 1), s * (w + q - 1)  # = (h - 1) * s + k
    full = tf.reshape(tf.transpose(full, [0, 1, 3, 2, 4, 5]), [-1, full_h, full_w, c_out])
    if padding == "valid":
        return full
    top = left = max(k - s, 0) // 2  # the forward conv's "same" padding
    return full[:, top : top + h * s, left : left + w * s]


def _matmul_shaped(layer, rows_per_image: int | None, kind: str) -> bool:
    """Whether `layer` runs as a matmul: small_conv matmul, a square kernel and stride, no
    dilation, channels-last, a static image size giving few enough rows."""
    k, s = layer.kernel_size, layer.strides
    return (
        layer.impl == "matmul"
        and rows_per_image is not None
        and rows_per_image <= _MATMUL_MAX_ROWS[kind]
        and k[0] == k[1]
        and s[0] == s[1]
        and tuple(layer.dilation_rate) == (1, 1)
        and layer.data_format == "channels_last"
        and layer.padding in ("same", "valid")
        and getattr(layer, "groups", 1) == 1
    )


class _SmallConvImpl:
    """The `impl` option shared by Conv2D and Conv2DTranspose: stored in the config."""

    def __init__(self, *args, impl: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.impl = _chosen_impl("small_conv", impl)

    def get_config(self):
        return {**super().get_config(), "impl": self.impl}


@keras.saving.register_keras_serializable(package="cyclegan")
class Conv2D(_SmallConvImpl, keras.layers.Conv2D):
    """keras.layers.Conv2D (same weights, same function) that, with `impl="matmul"`, computes
    layers with at most 4 output pixels per image as one matmul (_MATMUL_MAX_ROWS)."""

    def convolution_op(self, inputs, kernel):
        _, out_h, out_w, _ = self.compute_output_shape(inputs.shape)
        rows = out_h * out_w if out_h is not None and out_w is not None else None
        if not _matmul_shaped(self, rows, "conv"):
            return super().convolution_op(inputs, kernel)
        return conv2d_as_matmul(inputs, kernel, self.strides[0], self.padding)


@keras.saving.register_keras_serializable(package="cyclegan")
class Conv2DTranspose(_SmallConvImpl, keras.layers.Conv2DTranspose):
    """keras.layers.Conv2DTranspose (same weights, same function) that, with `impl="matmul"`,
    computes layers with at most 64 input pixels per image as one matmul (_MATMUL_MAX_ROWS)."""

    def call(self, inputs):
        h, w = inputs.shape[1], inputs.shape[2]
        rows = h * w if h is not None and w is not None else None
        if (
            not _matmul_shaped(self, rows, "transpose")
            or self.output_padding is not None
            or self.kernel_size[0] % self.strides[0]
        ):
            return super().call(inputs)
        outputs = conv2d_transpose_as_matmul(inputs, self.kernel, self.strides[0], self.padding)
        if self.use_bias:
            outputs = keras.ops.add(outputs, keras.ops.reshape(self.bias, (1, 1, 1, -1)))
        return self.activation(outputs) if self.activation is not None else outputs
