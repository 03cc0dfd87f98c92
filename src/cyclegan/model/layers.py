"""Layers the paper uses that Keras lacks: affine-free instance norm, reflection padding."""

from __future__ import annotations

import keras
import tensorflow as tf


def conv_init() -> keras.initializers.Initializer:
    """The official init: normal(0, 0.02) (`init_type normal`, `init_gain 0.02`)."""
    return keras.initializers.RandomNormal(mean=0.0, stddev=0.02)


@keras.saving.register_keras_serializable(package="cyclegan")
class InstanceNorm(keras.layers.Layer):
    """InstanceNorm2d(affine=False, track_running_stats=False): per-image, per-channel."""

    def __init__(self, epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def call(self, x):
        mean, var = tf.nn.moments(x, axes=[1, 2], keepdims=True)
        return (x - mean) * tf.math.rsqrt(var + self.epsilon)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


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
