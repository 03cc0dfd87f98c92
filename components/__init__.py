"""KFP v2 components for the CycleGAN pipeline (thin adapters over `cyclegan.steps`)."""

from components.steps import IMAGE_ENV, Components, default_image, make_components

__all__ = ["IMAGE_ENV", "Components", "default_image", "make_components"]
