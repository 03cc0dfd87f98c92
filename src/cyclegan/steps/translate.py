"""Use a trained generator: translate photos of any size, and write Kaggle's images.zip.

The pre/post-processing is the registered pyfunc's own (cyclegan.serving_model), so local
exports, registry models and `mlflow models serve` all translate the same way.
"""

from __future__ import annotations

import dataclasses
import io
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image
from tqdm import tqdm

from cyclegan.data.images import list_images, open_rgb
from cyclegan.storage import MANIFEST, atomic_path

KAGGLE_MIN, KAGGLE_MAX, KAGGLE_SIZE = 7000, 10000, 256

Translator = Callable[[np.ndarray], np.ndarray]


def load_translator(model: str | Path) -> Translator:
    """`models:/name@alias`, `runs:/...`, an MLflow model folder, or a train output/export dir."""
    ref = str(model)
    local = Path(ref)
    for candidate in (local / "export", local):
        if (candidate / MANIFEST).is_file() and (candidate / "G_savedmodel").is_dir():
            import json

            from cyclegan.serving_model import MonetGenerator

            manifest = json.loads((candidate / MANIFEST).read_text())
            generator = MonetGenerator()
            generator.load_context(SimpleNamespace(
                artifacts={"generator": str(candidate / "G_savedmodel")},
                model_config={"size_multiple": manifest["size_multiple"], "batch_size": 8},
            ))  # fmt: skip
            return lambda images: generator.predict(None, images)
    if "://" in ref or (local / "MLmodel").is_file():
        import mlflow.pyfunc

        from cyclegan.tracking import tracking_uri

        mlflow.set_tracking_uri(tracking_uri())
        pyfunc = mlflow.pyfunc.load_model(ref)
        return pyfunc.predict
    raise FileNotFoundError(
        f"model '{ref}' is neither a models:/ or runs:/ URI, an MLflow model folder, nor a "
        f"`cyclegan train` output (with export/manifest.json)"
    )


def _inputs(paths: list[str | Path]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += list_images(p)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"input '{p}' does not exist")
    if not files:
        raise FileNotFoundError(f"no images (jpg/jpeg/png) found in {[str(p) for p in paths]}")
    return files


@dataclasses.dataclass
class TranslateResult:
    written: list[Path]


def translate(inputs: list[str | Path], model: str | Path, out_dir: str | Path,
              progress: bool = True) -> TranslateResult:  # fmt: skip
    """Translate every image into `out_dir` (PNG, same stem), any size; inputs are never
    overwritten (an output path that is an input is refused)."""
    files = _inputs(inputs)
    out_dir = Path(out_dir)
    targets = [out_dir / f"{f.stem}.png" for f in files]
    resolved_inputs = {f.resolve() for f in files}
    clash = [t for t in targets if t.resolve() in resolved_inputs]
    if clash:
        raise ValueError(f"output {clash[0]} would overwrite an input; choose another --out")
    if len({t.name for t in targets}) != len(targets):
        raise ValueError(
            "several inputs share a file stem; translate them into separate --out dirs"
        )
    run = load_translator(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    for src, dst in tqdm(list(zip(files, targets, strict=True)), desc="translate", unit="img",
                         disable=not progress):  # fmt: skip
        out = run(np.asarray(open_rgb(src))[None])[0]
        with atomic_path(dst) as tmp:
            Image.fromarray(out).save(tmp, format="PNG")
    return TranslateResult(written=targets)


def submit(photo_dir: str | Path, model: str | Path, out_zip: str | Path, force: bool = False,
           batch_size: int = 16, progress: bool = True) -> int:  # fmt: skip
    """Kaggle's images.zip: every photo translated to a 256x256 JPEG, streamed into the zip."""
    files = _inputs([photo_dir])
    if not (KAGGLE_MIN <= len(files) <= KAGGLE_MAX) and not force:
        raise ValueError(
            f"Kaggle expects {KAGGLE_MIN}-{KAGGLE_MAX} images, '{photo_dir}' has {len(files)}; "
            f"use --force to write the zip anyway"
        )
    run = load_translator(model)
    with atomic_path(out_zip) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        bar = tqdm(total=len(files), desc="submit", unit="img", disable=not progress)
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            batch = np.stack([
                np.asarray(open_rgb(f).resize((KAGGLE_SIZE, KAGGLE_SIZE), Image.BICUBIC))
                for f in chunk
            ])  # fmt: skip
            for f, image in zip(chunk, run(batch), strict=True):
                buf = io.BytesIO()
                Image.fromarray(image).save(buf, format="JPEG", quality=95)
                zf.writestr(f"{f.stem}.jpg", buf.getvalue())
            bar.update(len(chunk))
        bar.close()
    return len(files)
