"""Layers the paper uses that Keras lacks: affine-free instance norm, reflection padding."""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

INSTANCE_NORM_IMPLS = ("fused", "moments")
_default_impl = ["moments"]  # models built outside instance_norm_impl(), old saved files
# cuDNN's batch-norm kernels reject epsilon < 1e-5 (TF's own fused_batch_norm wrapper clamps
# to this); the difference to 1e-5 is ~5e-4 relative only for a constant (zero-variance) channel.
_FUSED_MIN_EPSILON = 1.001e-5
# Below this many pixels per image the per-image fused kernels cost more than they save
# (measured fwd+bwd on 2 cores: 8x8x512 0.5x, 16x16x512 1.5x, 128x128x64 2.8x the moments speed).
_FUSED_MIN_PIXELS = 256


def conv_init() -> keras.initializers.Initializer:
    """The official init: normal(0, 0.02) (`init_type normal`, `init_gain 0.02`)."""
    return keras.initializers.RandomNormal(mean=0.0, stddev=0.02)


@contextlib.contextmanager
def instance_norm_impl(impl: str):
    """InstanceNorm layers built inside this block use `impl` (train.instance_norm)."""
    if impl not in INSTANCE_NORM_IMPLS:
        raise ValueError(f"instance norm impl must be one of {INSTANCE_NORM_IMPLS}, got {impl!r}")
    previous = _default_impl[0]
    _default_impl[0] = impl
    try:
        yield
    finally:
        _default_impl[0] = previous


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
        self.impl = impl or _default_impl[0]
        if self.impl not in INSTANCE_NORM_IMPLS:
            raise ValueError(f"InstanceNorm impl must be one of {INSTANCE_NORM_IMPLS}")

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
