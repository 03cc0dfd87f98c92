"""CycleGAN networks: generators (resnet, unet) and the PatchGAN discriminator."""

from cyclegan.model.discriminator import patchgan_discriminator
from cyclegan.model.generators import build_generator, size_multiple

__all__ = ["build_generator", "patchgan_discriminator", "size_multiple"]
