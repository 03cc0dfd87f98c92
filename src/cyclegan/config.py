"""Typed mirror of params.yaml: load, override (`-S train.epochs=3`), validate.

params.yaml is the single source of defaults; these dataclasses only give the knobs types so
that an unknown key or a wrong type is an error that names the key, never a silent default.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A params file or override is wrong; the message names the key and the fix."""


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    n_photo: int
    n_monet: int
    size: int
    seed: int


@dataclasses.dataclass(frozen=True)
class DataConfig:
    photo_dir: str  # a folder, a Kaggle folder/zip, or s3://bucket/prefix (cyclegan.data.ingest)
    monet_dir: str
    s3_retry_mode: Literal["standard", "adaptive"]
    s3_max_attempts: int
    sample: SampleConfig


@dataclasses.dataclass(frozen=True)
class ValidateConfig:
    formats: list[str]
    modes: list[str]
    min_side: int
    max_side: int
    min_images_per_domain: int
    min_std: float
    on_invalid: Literal["fail", "skip"]
    workers: int


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    image_size: int
    resize: Literal["center_crop", "stretch"]
    jpeg_quality: int
    test_fraction: float
    shard_size: int
    workers: int


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    seed: int
    generator: Literal["resnet", "unet"]
    n_blocks: int
    ngf: int
    ndf: int
    n_layers_d: int
    upsample: Literal["transpose", "resize_conv"]
    gan_mode: Literal["bce", "lsgan"]
    lambda_cycle: float
    lambda_identity: float
    pool_size: int
    batch_size: int
    lr: float
    beta_1: float
    epochs: int
    epochs_decay: int
    load_size: int
    flip: bool
    strategy: Literal["default", "mirrored", "multi_worker"]
    checkpoint_every: int
    log_every: int
    fid_every_epochs: int  # 0 = off; N = FID of G(held-out photos) every N epochs (fid.csv)
    deterministic: bool
    fuse_calls: bool
    jit_compile: bool
    mixed_precision: Literal["none", "bf16", "fp16"]
    instance_norm: Literal["fused", "moments"]
    small_conv: Literal["matmul", "native"]


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    extractor: str
    inception_weights: str
    input_size: int
    batch_size: int
    kid_subsets: int
    kid_subset_size: int
    grid_rows: int


@dataclasses.dataclass(frozen=True)
class RegisterConfig:
    model_name: str
    experiment: str
    promote_margin: float
    max_fid_ratio: float


@dataclasses.dataclass(frozen=True)
class Config:
    data: DataConfig
    validate: ValidateConfig
    preprocess: PreprocessConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    register: RegisterConfig

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def section_hash(self, *sections: str) -> str:
        """Stable hash of some sections: a fingerprint of what produced an artifact."""
        blob = json.dumps({s: self.to_dict()[s] for s in sections}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


_CHECKS = {
    "data.s3_max_attempts": lambda v: v >= 1 or "must be >= 1 (attempts per request, in all)",
    "validate.workers": lambda v: v >= 1 or "must be >= 1",
    "validate.min_side": lambda v: v >= 1 or "must be >= 1",
    "validate.max_side": lambda v: v >= 1 or "must be >= 1",
    "preprocess.image_size": lambda v: (
        v >= 16 and v % 4 == 0 or "must be >= 16 and a multiple of 4"
    ),
    "preprocess.jpeg_quality": lambda v: 1 <= v <= 100 or "must be in 1..100",
    "preprocess.test_fraction": lambda v: 0.0 < v < 1.0 or "must be between 0 and 1",
    "preprocess.workers": lambda v: v >= 1 or "must be >= 1",
    "preprocess.shard_size": lambda v: v >= 1 or "must be >= 1",
    "train.batch_size": lambda v: v >= 1 or "must be >= 1",
    "train.ngf": lambda v: v >= 1 or "must be >= 1",
    "train.ndf": lambda v: v >= 1 or "must be >= 1",
    "train.epochs": lambda v: v >= 0 or "must be >= 0",
    "train.epochs_decay": lambda v: v >= 0 or "must be >= 0",
    "train.pool_size": lambda v: v >= 0 or "must be >= 0 (0 disables the pool)",
    "train.lr": lambda v: v > 0 or "must be > 0",
    "train.checkpoint_every": lambda v: v >= 1 or "must be >= 1",
    "train.log_every": lambda v: v >= 1 or "must be >= 1",
    "train.fid_every_epochs": lambda v: (
        v >= 0 or "must be >= 0 (0 turns the FID curve off, N computes it every N epochs)"
    ),
    "evaluate.batch_size": lambda v: v >= 1 or "must be >= 1",
}


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, t) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    return isinstance(value, tp)


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: '{prefix or 'top level'}' must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(
            f"{source}: unknown key '{key}'. Known keys here: {', '.join(sorted(fields))}."
        )
    missing = sorted(fields - set(raw))
    if missing:
        key = f"{prefix}.{missing[0]}" if prefix else missing[0]
        raise ConfigError(f"{source}: missing key '{key}' (params.yaml holds every default)")
    values = {}
    for name in dataclasses.fields(cls):
        key = f"{prefix}.{name.name}" if prefix else name.name
        tp = hints[name.name]
        value = raw[name.name]
        if dataclasses.is_dataclass(tp):
            values[name.name] = _build(tp, value, key, source)
            continue
        if not _type_ok(value, tp):
            raise ConfigError(
                f"{source}: '{key}' must be {_describe(tp)}, got {value!r} ({type(value).__name__})"
            )
        if tp is float and isinstance(value, int):
            value = float(value)
        check = _CHECKS.get(key)
        if check is not None:
            verdict = check(value)
            if verdict is not True:
                raise ConfigError(f"{source}: '{key}' = {value!r} {verdict}")
        values[name.name] = value
    return cls(**values)


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one `section.key=value` override (value parsed as YAML) to a raw params dict."""
    if "=" not in override:
        raise ConfigError(f"override '{override}' must look like section.key=value")
    dotted, text = override.split("=", 1)
    parts = dotted.strip().split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"override '{override}': unknown key '{'.'.join(parts[: i + 1])}'")
        node = node[part]
    if parts[-1] not in node:
        raise ConfigError(f"override '{override}': unknown key '{dotted}'")
    value = yaml.safe_load(text)
    if isinstance(value, str) and any(c.isdigit() for c in value):
        with contextlib.suppress(ValueError):  # YAML 1.1 reads "1e-3" as a string
            value = float(value)
    node[parts[-1]] = value


def load_config(path: str | Path = "params.yaml", overrides: list[str] | tuple = ()) -> Config:
    """Read params.yaml, apply overrides, and return a validated Config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"params file '{path}' not found (run from the repository root or pass -p)"
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    for override in overrides:
        apply_override(raw, override)
    return from_dict(raw, source=str(path))


def from_dict(raw: dict[str, Any], source: str = "params") -> Config:
    return _build(Config, raw, "", source)
