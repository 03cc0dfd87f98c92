"""Sample-data step: the offline demo dataset (see cyclegan.data.sample)."""

from __future__ import annotations

from pathlib import Path

from cyclegan.config import Config
from cyclegan.data.sample import make_sample


def run(cfg: Config, out_dir: str | Path) -> dict:
    return make_sample(cfg.data.sample, out_dir)
