"""70x70 PatchGAN (`basic`, n_layers 3), layer for layer the official NLayerDiscriminator:
C64 (no norm) - C128 - C256 - C512 (stride 1) - 1-channel conv; 4x4 kernels, zero padding 1,
LeakyReLU 0.2, affine-free instance norm, conv biases on. Outputs logits per patch."""

from __future__ import annotations

import keras
from keras import layers

from cyclegan.model.layers import Conv2D, InstanceNorm, conv_init


def _c(x, filters, stride, name, norm=True, activation=True):
    x = layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
    x = Conv2D(filters, 4, strides=stride, padding="valid", use_bias=True,
               kernel_initializer=conv_init(), name=f"{name}_conv")(x)  # fmt: skip
    if norm:
        x = InstanceNorm(name=f"{name}_norm")(x)
    if activation:
        x = layers.LeakyReLU(0.2, name=f"{name}_lrelu")(x)
    return x


def patchgan_discriminator(ndf=64, n_layers=3, name="D") -> keras.Model:
    inputs = keras.Input((None, None, 3), name="image")
    x = _c(inputs, ndf, 2, f"C{ndf}", norm=False)
    mult = 1
    for n in range(1, n_layers):
        mult = min(2**n, 8)
        x = _c(x, ndf * mult, 2, f"C{ndf * mult}")
    mult = min(2**n_layers, 8)
    x = _c(x, ndf * mult, 1, f"C{ndf * mult}_s1")
    outputs = _c(x, 1, 1, "patch_logits", norm=False, activation=False)
    return keras.Model(inputs, outputs, name=name)
