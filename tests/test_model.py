"""The networks match the paper / official implementation, layer for layer."""

import numpy as np
import pytest

from cyclegan.model.discriminator import patchgan_discriminator
from cyclegan.model.generators import resnet_generator, size_multiple, unet_generator


def conv_params(k: int, c_in: int, c_out: int) -> int:
    return k * k * c_in * c_out + c_out  # conv biases on, as in the official code


def test_resnet_9blocks_ngf64_matches_the_official_generator():
    ngf = 64
    expected = (
        conv_params(7, 3, ngf)  # c7s1-64
        + conv_params(3, ngf, 2 * ngf)  # d128
        + conv_params(3, 2 * ngf, 4 * ngf)  # d256
        + 9 * 2 * conv_params(3, 4 * ngf, 4 * ngf)  # R256 x 9
        + conv_params(3, 4 * ngf, 2 * ngf)  # u128 (ConvTranspose2d weight 256x128x3x3)
        + conv_params(3, 2 * ngf, ngf)  # u64
        + conv_params(7, ngf, 3)  # c7s1-3
    )  # instance norm has no affine parameters
    model = resnet_generator(ngf=64, n_blocks=9)
    assert model.count_params() == expected == 11_378_179
    convs = [layer for layer in model.layers if "conv" in layer.name.lower()]
    names = [layer.name.rsplit("_", 1)[0] for layer in convs]
    assert names[:3] == ["c7s1-64", "d128", "d256"] and names[-3:] == ["u128", "u64", "c7s1-3"]
    assert sum(n.startswith("R256") for n in names) == 18
    assert not any(w.name in ("gamma", "beta") for w in model.weights)


def test_patchgan_70x70_matches_the_official_discriminator():
    ndf = 64
    expected = (
        conv_params(4, 3, ndf)  # C64, no norm
        + conv_params(4, ndf, 2 * ndf)  # C128
        + conv_params(4, 2 * ndf, 4 * ndf)  # C256
        + conv_params(4, 4 * ndf, 8 * ndf)  # C512, stride 1
        + conv_params(4, 8 * ndf, 1)  # 1-channel patch logits
    )
    model = patchgan_discriminator(ndf=64, n_layers=3)
    assert model.count_params() == expected == 2_764_737
    out = model(np.zeros((1, 256, 256, 3), np.float32))
    assert out.shape == (1, 30, 30, 1)  # 256 -> 128 -> 64 -> 32 -> 31 -> 30, as in PyTorch


def test_patchgan_receptive_field_is_70_pixels():
    """Receptive field of the conv stack, read off the built layers (instance norm aside,
    which mixes statistics over the whole image by design)."""
    import keras

    model = patchgan_discriminator(ndf=4, n_layers=3)
    rf, jump = 1, 1
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            rf += (layer.kernel_size[0] - 1) * jump
            jump *= layer.strides[0]
    assert rf == 70


@pytest.mark.parametrize("upsample", ["transpose", "resize_conv"])
def test_generators_are_fully_convolutional(upsample):
    g = resnet_generator(ngf=4, n_blocks=1, upsample=upsample)
    for shape in [(1, 32, 32, 3), (2, 40, 56, 3)]:
        out = np.asarray(g(np.zeros(shape, np.float32)))
        assert out.shape == shape and np.all(np.abs(out) <= 1.0)
    assert size_multiple("resnet", 256) == 4


def test_resize_conv_has_the_same_parameter_count_as_transpose():
    a = resnet_generator(ngf=8, n_blocks=2, upsample="transpose").count_params()
    b = resnet_generator(ngf=8, n_blocks=2, upsample="resize_conv").count_params()
    assert a == b


def test_unet_is_the_tutorial_shape_at_256():
    g = unet_generator(ngf=8, image_size=256)
    assert size_multiple("unet", 256) == 256
    assert len([layer for layer in g.layers if layer.name.endswith("_dropout")]) == 3
    assert np.asarray(g(np.zeros((1, 256, 256, 3), np.float32))).shape == (1, 256, 256, 3)


def test_weights_are_initialised_normal_0_002():
    g = resnet_generator(ngf=32, n_blocks=2)
    kernels = np.concatenate([w.numpy().ravel() for w in g.weights if "kernel" in w.name])
    assert abs(kernels.mean()) < 1e-3 and kernels.std() == pytest.approx(0.02, rel=0.05)
