"""Generators. `resnet`: the paper's (c7s1-64, d128, d256, R256 x n, u128, u64, c7s1-3), layer
for layer the official `ResnetGenerator`. `unet`: the TF tutorial / Kaggle starter's pix2pix U-Net.

Both are fully convolutional (Input shape (None, None, 3)): a trained generator translates any
image whose sides are a multiple of `size_multiple(...)` (callers pad/crop around that).
"""

from __future__ import annotations

import math

import keras
from keras import layers

from cyclegan.model.layers import (
    Conv2D,
    Conv2DTranspose,
    InstanceNorm,
    ReflectionPad,
    conv_init,
)


def _conv(filters, kernel, stride=1, name=None):
    return Conv2D(
        filters, kernel, strides=stride, padding="valid", use_bias=True,
        kernel_initializer=conv_init(), name=name,
    )  # fmt: skip


def c7s1(x, filters, name, activation="relu"):
    """c7s1-k: 7x7 conv, stride 1, reflection padding 3, then norm+ReLU (or tanh at the end)."""
    x = ReflectionPad(3, name=f"{name}_pad")(x)
    x = _conv(filters, 7, name=f"{name}_conv")(x)
    if activation == "tanh":
        return layers.Activation("tanh", name=f"{name}_tanh")(x)
    x = InstanceNorm(name=f"{name}_norm")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def d(x, filters, name):
    """dk: 3x3 conv, stride 2 (zero padding 1, as the official code), norm, ReLU."""
    x = layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
    x = _conv(filters, 3, stride=2, name=f"{name}_conv")(x)
    x = InstanceNorm(name=f"{name}_norm")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def R(x, filters, name):
    """Rk: residual block of two reflection-padded 3x3 convs."""
    y = ReflectionPad(1, name=f"{name}_pad1")(x)
    y = _conv(filters, 3, name=f"{name}_conv1")(y)
    y = InstanceNorm(name=f"{name}_norm1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = ReflectionPad(1, name=f"{name}_pad2")(y)
    y = _conv(filters, 3, name=f"{name}_conv2")(y)
    y = InstanceNorm(name=f"{name}_norm2")(y)
    return layers.Add(name=f"{name}_add")([x, y])


def u(x, filters, name, upsample="transpose"):
    """uk: x2 upsampling to k filters, norm, ReLU.

    `transpose` = ConvTranspose2d(k3, s2, p1, output_padding 1) exactly (valid transpose conv,
    then drop the first row/column); `resize_conv` = nearest resize + reflection-padded 3x3
    conv, which avoids checkerboard artifacts (same parameter count).
    """
    if upsample == "transpose":
        x = Conv2DTranspose(
            filters, 3, strides=2, padding="valid", use_bias=True,
            kernel_initializer=conv_init(), name=f"{name}_convT",
        )(x)  # fmt: skip
        x = layers.Cropping2D(((1, 0), (1, 0)), name=f"{name}_crop")(x)
    else:
        x = layers.UpSampling2D(2, interpolation="nearest", name=f"{name}_resize")(x)
        x = ReflectionPad(1, name=f"{name}_pad")(x)
        x = _conv(filters, 3, name=f"{name}_conv")(x)
    x = InstanceNorm(name=f"{name}_norm")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def resnet_generator(ngf=64, n_blocks=9, upsample="transpose", name="G") -> keras.Model:
    inputs = keras.Input((None, None, 3), name="image")
    x = c7s1(inputs, ngf, f"c7s1-{ngf}")
    x = d(x, ngf * 2, f"d{ngf * 2}")
    x = d(x, ngf * 4, f"d{ngf * 4}")
    for i in range(n_blocks):
        x = R(x, ngf * 4, f"R{ngf * 4}_{i + 1}")
    x = u(x, ngf * 2, f"u{ngf * 2}", upsample)
    x = u(x, ngf, f"u{ngf}", upsample)
    outputs = c7s1(x, 3, "c7s1-3", activation="tanh")
    return keras.Model(inputs, outputs, name=name)


def unet_depth(image_size: int) -> int:
    """The tutorial's U-Net halves 8 times at 256 px; smaller images get fewer levels."""
    return max(2, min(8, int(math.log2(image_size))))


def unet_generator(ngf=64, image_size=256, upsample="transpose", name="G") -> keras.Model:
    """pix2pix U-Net (TF tutorial): 4x4 convs, instance norm, dropout 0.5 in the first 3 ups."""
    depth = unet_depth(image_size)
    filters = [ngf * m for m in (1, 2, 4, 8, 8, 8, 8, 8)][:depth]
    inputs = keras.Input((None, None, 3), name="image")
    x, skips = inputs, []
    for i, f in enumerate(filters):
        x = Conv2D(f, 4, strides=2, padding="same", use_bias=False,
                   kernel_initializer=conv_init(), name=f"down{i + 1}_conv")(x)  # fmt: skip
        if i > 0:
            x = InstanceNorm(name=f"down{i + 1}_norm")(x)
        x = layers.LeakyReLU(0.2, name=f"down{i + 1}_lrelu")(x)
        skips.append(x)
    for i, (f, skip) in enumerate(zip(reversed(filters[:-1]), reversed(skips[:-1]), strict=True)):
        if upsample == "transpose":
            x = Conv2DTranspose(f, 4, strides=2, padding="same", use_bias=False,
                                kernel_initializer=conv_init(), name=f"up{i + 1}_convT")(x)  # fmt: skip
        else:
            x = layers.UpSampling2D(2, name=f"up{i + 1}_resize")(x)
            x = Conv2D(f, 3, padding="same", use_bias=False,
                       kernel_initializer=conv_init(), name=f"up{i + 1}_conv")(x)  # fmt: skip
        x = InstanceNorm(name=f"up{i + 1}_norm")(x)
        if i < 3:
            x = layers.Dropout(0.5, name=f"up{i + 1}_dropout")(x)
        x = layers.ReLU(name=f"up{i + 1}_relu")(x)
        x = layers.Concatenate(name=f"up{i + 1}_skip")([x, skip])
    outputs = Conv2DTranspose(3, 4, strides=2, padding="same", activation="tanh",
                              kernel_initializer=conv_init(), name="last")(x)  # fmt: skip
    return keras.Model(inputs, outputs, name=name)


def build_generator(train_cfg, image_size: int, name: str) -> keras.Model:
    if train_cfg.generator == "resnet":
        return resnet_generator(train_cfg.ngf, train_cfg.n_blocks, train_cfg.upsample, name=name)
    return unet_generator(train_cfg.ngf, image_size, train_cfg.upsample, name=name)


def size_multiple(generator: str, image_size: int) -> int:
    """Input sides must be a multiple of this (two stride-2 downs, or the U-Net's depth)."""
    return 4 if generator == "resnet" else 2 ** unet_depth(image_size)
