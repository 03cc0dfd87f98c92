"""Helpers the KFP components call *inside* their containers (the image installs this package).

Only translation between KFP's world (artifact paths, string parameters) and the library's
(a Config, directories) lives here; every step's behaviour stays in `cyclegan.steps`.
"""

from __future__ import annotations

import base64
import html
import math
import shutil
from pathlib import Path


def load_cfg(params_yaml: str, overrides: list[str] | None = None):
    """A validated Config from params.yaml's contents (YAML or JSON text) plus
    `section.key=value` overrides, exactly as `cyclegan -p FILE -S ...` would build it."""
    import yaml

    from cyclegan.config import ConfigError, apply_override, from_dict

    try:
        raw = yaml.safe_load(params_yaml) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"pipeline parameter params_yaml is not valid YAML/JSON: {exc}") from exc
    for override in overrides or []:
        apply_override(raw, override)
    return from_dict(raw, source="params_yaml")


def copy_file(src: str | Path, dst: str | Path) -> Path:
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def copy_tree(src: str | Path, dst: str | Path, exclude: tuple[str, ...] = ()) -> Path:
    """Copy directory `src` onto `dst` (replacing it), leaving out top-level names in `exclude`."""
    dst = Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=lambda d, names: [n for n in names if Path(d) == Path(src)
                                                       and n in exclude])  # fmt: skip
    return dst


def work_dir(work_root: str, run_id: str, step: str) -> Path | None:
    """A per-run directory on a persistent volume (resume across retries), or None."""
    if not work_root:
        return None
    return Path(work_root) / (run_id or "manual") / step


def image_html(png: str | Path, title: str, caption: str = "") -> str:
    """A self-contained HTML page showing a PNG (base64 inline, as the KFP UI needs)."""
    data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head><body>"
        f"<h3>{html.escape(title)}</h3><p>{html.escape(caption)}</p>"
        f"<img alt='{html.escape(title)}' src='data:image/png;base64,{data}' "
        "style='image-rendering: pixelated; max-width: 100%'></body></html>"
    )


def numeric_metrics(metrics: dict) -> dict[str, float]:
    """The finite numbers of an evaluate metrics dict (what a KFP Metrics artifact can hold)."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


def fid_gate(metrics: dict, max_fid_ratio: float) -> bool:
    """The pipeline's registration gate: FID finite and FID / baseline FID <= `max_fid_ratio`.

    The baseline is FID(untranslated photos, paintings), so the default 1.0 means "G moved the
    photos closer to the paintings than they were".
    """
    fid, ratio = metrics.get("fid"), metrics.get("fid_ratio")
    if fid is None or not math.isfinite(fid):
        return False
    return ratio is not None and math.isfinite(ratio) and ratio <= max_fid_ratio
