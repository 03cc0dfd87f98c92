"""Validation gate: a per-image metadata table checked by a Great Expectations suite.

The suite is built from params (`validate:`); every rejected file is listed with the
expectation it failed and a human reason; GX Data Docs give the browsable report.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from tqdm import tqdm

from cyclegan.config import ValidateConfig
from cyclegan.data.images import METADATA_COLUMNS, inspect_image, list_images

SUITE_NAME = "cyclegan_images"


def metadata_table(dirs: dict[str, Path], max_side: int, progress: bool = True) -> pd.DataFrame:
    """Inspect every image of every domain; add `duplicate_of` for repeated content."""
    rows = []
    for domain, root in dirs.items():
        for path in tqdm(list_images(root), desc=f"inspect {domain}", disable=not progress):
            rows.append(inspect_image(path, domain, max_side))
    table = pd.DataFrame(rows, columns=list(METADATA_COLUMNS))
    first_path = {}
    duplicate_of = []
    for sha, path in zip(table["sha256"], table["path"], strict=True):
        if sha is None or pd.isna(sha):
            duplicate_of.append(None)
        elif sha in first_path:
            duplicate_of.append(first_path[sha])
        else:
            first_path[sha] = path
            duplicate_of.append(None)
    table["duplicate_of"] = pd.Series(duplicate_of, dtype=object)
    return table


def _image_expectations(cfg: ValidateConfig):
    """(expectation, reason(row) -> str) pairs; the reason tells the user what is wrong."""
    import great_expectations as gx

    E = gx.expectations
    limits = f"[{cfg.min_side}, {cfg.max_side}] px"
    return [
        (
            E.ExpectColumnValuesToBeInSet(column="decodable", value_set=[True]),
            lambda r: f"cannot decode: {r['error']}",
        ),
        (
            E.ExpectColumnValuesToBeInSet(column="format", value_set=cfg.formats),
            lambda r: f"format {r['format']} is not one of {cfg.formats}: re-save as JPEG",
        ),
        (
            E.ExpectColumnValuesToBeInSet(column="mode", value_set=cfg.modes),
            lambda r: f"colour mode {r['mode']} is not one of {cfg.modes} "
            f"(grayscale, CMYK, palette, alpha or 16-bit): convert it to 8-bit RGB",
        ),
        (
            E.ExpectColumnValuesToBeBetween(
                column="width", min_value=cfg.min_side, max_value=cfg.max_side
            ),
            lambda r: f"width {r['width']:.0f} px outside {limits}",
        ),
        (
            E.ExpectColumnValuesToBeBetween(
                column="height", min_value=cfg.min_side, max_value=cfg.max_side
            ),
            lambda r: f"height {r['height']:.0f} px outside {limits}",
        ),
        (
            E.ExpectColumnValuesToBeNull(column="duplicate_of"),
            lambda r: f"exact duplicate of {r['duplicate_of']}",
        ),
        (
            E.ExpectColumnValuesToBeBetween(column="std", min_value=cfg.min_std),
            lambda r: f"blank image (brightness std {r['std']:.2f} < {cfg.min_std})",
        ),
    ]


def run_suite(table: pd.DataFrame, cfg: ValidateConfig, docs_dir: Path) -> dict:
    """Run the GX suite over the table; return per-row rejections and the domain check.

    Writes GX Data Docs (HTML) under `docs_dir`.
    """
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
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
    result_format = {"result_format": "COMPLETE", "unexpected_index_column_names": ["path"]}
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name="images",
            validation_definitions=[validation],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=["report"])],
            result_format=result_format,
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": indexed})
    (run_result,) = result.run_results.values()

    reasons: dict[int, list[tuple[str, str]]] = {}
    for (expectation, reason), res in zip(pairs, run_result.results, strict=True):
        for idx in res.result.get("unexpected_index_list") or []:
            row_idx = idx if isinstance(idx, int) else indexed.index[indexed["path"] == idx["path"]][0]
            reasons.setdefault(int(row_idx), []).append(
                (f"{expectation.expectation_type}({expectation.column})", reason(indexed.loc[row_idx]))
            )

    rejected = set(reasons)
    accepted = indexed.loc[~indexed.index.isin(rejected)]
    counts = accepted.groupby("domain").size().reindex(["photo", "monet"], fill_value=0)
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
