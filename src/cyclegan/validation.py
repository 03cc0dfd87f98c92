"""Validation gate: a per-image metadata table checked by a Great Expectations suite.

The suite is built from params (`validate:`); every rejected file is listed with a named issue
(see `cyclegan.data.images.ISSUES`), the expectation it failed and a human reason; GX Data Docs
give the browsable report.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import warnings
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from PIL import Image
from tqdm import tqdm

from cyclegan.config import ValidateConfig
from cyclegan.data.images import DOMAINS, METADATA_COLUMNS, empty_row, inspect_image
from cyclegan.data.ingest import Item

SUITE_NAME = "cyclegan_images"
MAX_BIT_DEPTH = 8  # the pipeline trains on 8-bit RGB; PIL would silently truncate 16-bit PNGs
ROW_ID = "row_id"
# issues found while reading a file: the reason text says "cannot read", others "cannot decode"
READ_ISSUES = {"unreadable", "path_traversal", "too_large", "corrupt_tfrecord", "bad_record"}


def metadata_table(items: list[Item], max_side: int, *, workers: int = 1, progress: bool = True,
                   base: Path | None = None) -> pd.DataFrame:  # fmt: skip
    """Inspect every item (in `workers` threads; PIL and hashlib release the GIL), in order.

    Adds `duplicate_of` (the first path with the same bytes) and a `row_id`. Staged paths are
    written relative to `base` (the validate output), where the next step finds them.
    """

    def inspect(item: Item) -> dict:
        if item.path is None:
            row = empty_row(item.domain, item.source, item.name)
            row.update(issue=item.issue, error=item.error)
            return row
        row = inspect_image(item.path, item.domain, max_side, source=item.source,
                            name=item.name, staged=item.staged)  # fmt: skip
        if item.staged and base is not None:
            row["path"] = Path(item.path).relative_to(base).as_posix()
        return row

    with warnings.catch_warnings(), cf.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        # inspect_image reports PIL's pixel limit itself (issue decompression_bomb)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        rows = list(tqdm(pool.map(inspect, items), total=len(items), desc="inspect images",
                         disable=not progress))  # fmt: skip
    table = pd.DataFrame(rows, columns=list(METADATA_COLUMNS))
    for column in ("width", "height", "bit_depth", "bytes"):
        table[column] = pd.to_numeric(table[column]).astype("Int64")
    first_source: dict[str, str] = {}
    duplicate_of = []
    for sha, source in zip(table["sha256"], table["source"], strict=True):
        if sha is None or pd.isna(sha):
            duplicate_of.append(None)
        elif sha in first_source:
            duplicate_of.append(first_source[sha])
        else:
            first_source[sha] = source
            duplicate_of.append(None)
    table["duplicate_of"] = pd.Series(duplicate_of, dtype=object)
    table.insert(0, ROW_ID, range(len(table)))
    return table


def _mode_issue(mode) -> str:
    if mode == "CMYK":
        return "cmyk"
    if str(mode).startswith("I;16"):
        return "16_bit"
    if mode in ("RGBA", "RGBa", "LA", "La"):
        return "alpha"
    if mode in ("P", "PA"):
        return "palette"
    if mode in ("L", "1", "I", "F"):
        return "grayscale"
    return "mode"


Reason = Callable[[pd.Series], tuple[str, str]]


def _image_expectations(cfg: ValidateConfig) -> list[tuple[object, Reason]]:
    """(expectation, reason(row) -> (issue, text)) pairs; the text tells the user what to do."""
    import great_expectations as gx

    E = gx.expectations
    limits = f"[{cfg.min_side}, {cfg.max_side}] px"

    def decodable(r):
        issue = r["issue"] or "corrupt"
        verb = "cannot read" if issue in READ_ISSUES else "cannot decode"
        return issue, f"{verb}: {r['error']}"

    def side(axis):
        def reason(r):
            issue = "too_small" if r[axis] < cfg.min_side else "too_large"
            never = " (never decoded)" if issue == "too_large" else ""
            return issue, f"{axis} {r[axis]:.0f} px outside {limits}{never}"

        return reason

    return [
        (E.ExpectColumnValuesToBeInSet(column="decodable", value_set=[True]), decodable),
        (
            E.ExpectColumnValuesToBeInSet(column="format", value_set=cfg.formats),
            lambda r: (
                "format",
                f"format {r['format']} is not one of {cfg.formats}: re-save as JPEG",
            ),
        ),
        (
            E.ExpectColumnValuesToBeInSet(column="mode", value_set=cfg.modes),
            lambda r: (
                _mode_issue(r["mode"]),
                f"colour mode {r['mode']} is not one of {cfg.modes} "
                f"(grayscale, CMYK, palette, alpha or 16-bit): convert it to 8-bit RGB",
            ),
        ),
        (
            E.ExpectColumnValuesToBeBetween(column="bit_depth", max_value=MAX_BIT_DEPTH),
            lambda r: (
                "16_bit",
                f"{r['bit_depth']:.0f} bits per channel (PNG header); the pipeline takes "
                f"8-bit images: convert it to 8-bit RGB",
            ),
        ),
        (
            E.ExpectColumnValuesToBeBetween(
                column="width", min_value=cfg.min_side, max_value=cfg.max_side
            ),
            side("width"),
        ),
        (
            E.ExpectColumnValuesToBeBetween(
                column="height", min_value=cfg.min_side, max_value=cfg.max_side
            ),
            side("height"),
        ),
        (
            E.ExpectColumnValuesToBeNull(column="duplicate_of"),
            lambda r: ("duplicate", f"exact duplicate of {r['duplicate_of']}"),
        ),
        (
            E.ExpectColumnValuesToBeBetween(column="std", min_value=cfg.min_std),
            lambda r: ("blank", f"blank image (brightness std {r['std']:.2f} < {cfg.min_std})"),
        ),
    ]


def _quiet_context(gx):
    """An ephemeral GX context without its per-metric tqdm bars (they flood logs)."""
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    with contextlib.suppress(Exception):  # only cosmetics depend on it
        context.variables.progress_bars = ProgressBarsConfig(
            globally=False, metric_calculations=False
        )
    return context


def run_suite(table: pd.DataFrame, cfg: ValidateConfig, docs_dir: Path) -> dict:
    """Run the GX suite over the table; return per-row rejections and the domain check.

    `reasons[row_id]` is a list of (issue, expectation, reason). Writes GX Data Docs (HTML)
    under `docs_dir`.
    """
    import great_expectations as gx

    context = _quiet_context(gx)
    context.add_data_docs_site(
        site_name="report",
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(docs_dir.resolve()),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    source = context.data_sources.add_pandas("images")
    pairs = _image_expectations(cfg)
    suite = context.suites.add(gx.ExpectationSuite(name=SUITE_NAME))
    for expectation, _ in pairs:
        suite.add_expectation(expectation)

    domain_suite = context.suites.add(gx.ExpectationSuite(name=f"{SUITE_NAME}_domains"))
    domain_suite.add_expectation(
        gx.expectations.ExpectColumnValuesToBeBetween(
            column="n_accepted", min_value=cfg.min_images_per_domain
        )
    )

    indexed = table.reset_index(drop=True)
    # GX compares columns by value; give it plain object/float columns (None, not NaN, for missing)
    checked = indexed.astype(
        {c: "float64" for c in ("width", "height", "bit_depth", "std", "mean")}
    )
    asset = source.add_dataframe_asset("metadata")
    batch_def = asset.add_batch_definition_whole_dataframe("all")
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name="images", data=batch_def, suite=suite)
    )
    domain_asset = source.add_dataframe_asset("domains")
    domain_batch = domain_asset.add_batch_definition_whole_dataframe("all")
    domain_validation = context.validation_definitions.add(
        gx.ValidationDefinition(name="domains", data=domain_batch, suite=domain_suite)
    )
    result_format = {"result_format": "COMPLETE", "unexpected_index_column_names": [ROW_ID]}
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name="images",
            validation_definitions=[validation],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=["report"])],
            result_format=result_format,
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": checked})
    (run_result,) = result.run_results.values()

    reasons: dict[int, list[tuple[str, str, str]]] = {}
    for (expectation, reason), res in zip(pairs, run_result.results, strict=True):
        if res.exception_info and res.exception_info.get("raised_exception"):
            raise RuntimeError(
                f"Great Expectations could not evaluate {expectation.expectation_type}"
                f"({expectation.column}): {res.exception_info.get('exception_message')}"
            )
        for idx in res.result.get("unexpected_index_list") or []:
            row_id = int(idx[ROW_ID] if isinstance(idx, dict) else idx)
            issue, text = reason(indexed.loc[row_id])
            reasons.setdefault(row_id, []).append(
                (issue, f"{expectation.expectation_type}({expectation.column})", text)
            )

    rejected = set(reasons)
    accepted = indexed.loc[~indexed[ROW_ID].isin(rejected)]
    counts = accepted.groupby("domain").size().reindex(list(DOMAINS), fill_value=0)
    counts_df = pd.DataFrame({"domain": counts.index, "n_accepted": counts.values})
    domain_checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name="domains",
            validation_definitions=[domain_validation],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=["report"])],
            result_format={"result_format": "COMPLETE"},
        )
    )
    domain_result = domain_checkpoint.run(batch_parameters={"dataframe": counts_df})
    return {
        "reasons": reasons,
        "images_success": bool(result.success),
        "domains_success": bool(domain_result.success),
        "counts": {d: int(n) for d, n in counts.items()},
        "n_expectations": len(pairs) + 1,
    }
