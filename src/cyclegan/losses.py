"""CycleGAN losses, per example so they reduce correctly over replicas.

Each function returns a [batch] vector (the mean over one image's pixels/patches); the train
step averages them over the *global* batch with `tf.nn.compute_average_loss`. With one replica
that equals the seed's Keras losses (`BinaryCrossentropy(from_logits=True)`, mean L1).
"""

from __future__ import annotations

import tensorflow as tf


def _per_example_mean(x: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(tf.reshape(x, [tf.shape(x)[0], -1]), axis=1)


def adversarial(logits: tf.Tensor, target_is_real: bool, gan_mode: str) -> tf.Tensor:
    """`bce`: sigmoid cross-entropy from logits (the seed); `lsgan`: MSE to 1/0 (the paper)."""
    logits = tf.cast(logits, tf.float32)
    target = tf.ones_like(logits) if target_is_real else tf.zeros_like(logits)
    if gan_mode == "bce":
        loss = tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=logits)
    elif gan_mode == "lsgan":
        loss = tf.square(logits - target)
    else:
        raise ValueError(f"train.gan_mode must be 'bce' or 'lsgan', got {gan_mode!r}")
    return _per_example_mean(loss)


def l1(real: tf.Tensor, other: tf.Tensor) -> tf.Tensor:
    """Mean absolute error per example: the cycle and identity losses."""
    return _per_example_mean(tf.abs(tf.cast(real, tf.float32) - tf.cast(other, tf.float32)))
