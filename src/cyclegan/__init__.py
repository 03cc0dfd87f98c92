"""Photo -> Monet CycleGAN as an MLOps pipeline (see README.md)."""

__version__ = "0.1.0"
