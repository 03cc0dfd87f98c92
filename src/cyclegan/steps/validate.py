"""Validate step: ingest -> metadata table -> GX suite -> summary, rejected list, Data Docs,
manifest.

Outputs (written atomically into `out_dir`):
  images.csv     every input with its metadata, `accepted`, `issue`, `expectation`, `reason`
  rejected.csv   every rejected input: path, source, domain, issue, expectation, reason
  summary.json   counts, per-domain state, rejections by issue (a DVC metric)
  data_docs/     the Great Expectations HTML report
  staging/       content-addressed local copies of zip / TFRecord / S3 inputs
  manifest.json  the accepted images (path, domain, sha256, name, source, staged)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cyclegan.config import Config
from cyclegan.data.images import DOMAINS
from cyclegan.data.ingest import S3Options, ingest
from cyclegan.storage import atomic_path, write_json, write_manifest
from cyclegan.validation import metadata_table, run_suite

REJECTED_COLUMNS = ["path", "source", "domain", "issue", "expectation", "reason"]
STAGING = "staging"


@dataclasses.dataclass
class ValidateResult:
    passed: bool
    summary: dict
    out_dir: Path

    def message(self) -> str:
        s = self.summary
        lines = [
            f"validated {s['n_images']} images: {s['n_accepted']} accepted, "
            f"{s['n_rejected']} rejected (photo {s['accepted']['photo']}, "
            f"monet {s['accepted']['monet']} accepted)"
        ]
        if s["n_rejected"]:
            by_issue = ", ".join(f"{k} {v}" for k, v in s["rejected_by_issue"].items())
            lines.append(f"  rejected by issue: {by_issue}")
        lines += [f"  {r}" for r in s["problems"]]
        if s["n_rejected"]:
            lines.append(f"  every rejected file and its reason: {self.out_dir / 'rejected.csv'}")
        lines.append(f"  report: {self.out_dir / 'data_docs' / 'index.html'}")
        return "\n".join(lines)


def _domain_state(n_found: int, n_accepted: int, minimum: int) -> str | None:
    if n_found == 0:
        return "empty_domain"
    if n_accepted < minimum:
        return "too_few_images"
    return None


def run(cfg: Config, photo_dir: str | Path, monet_dir: str | Path, out_dir: str | Path,
        progress: bool = True) -> ValidateResult:  # fmt: skip
    """Check every input image; never touches the inputs. `passed` is False when the policy
    (`validate.on_invalid`) says the pipeline must stop.

    `photo_dir` / `monet_dir` are sources as in `data.photo_dir`: a folder, a Kaggle folder or
    zip, or an s3:// prefix (see cyclegan.data.ingest)."""
    vcfg = cfg.validate
    out_dir = Path(out_dir)
    sources = {"photo": str(photo_dir), "monet": str(monet_dir)}
    s3 = S3Options(cfg.data.s3_retry_mode, cfg.data.s3_max_attempts, vcfg.workers)
    previous = out_dir / STAGING
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        items = ingest(sources, tmp / STAGING, s3=s3,
                       reuse_from=previous if previous.is_dir() else None, progress=progress)  # fmt: skip
        table = metadata_table(items, vcfg.max_side, workers=vcfg.workers, progress=progress,
                               base=tmp)  # fmt: skip
        suite = run_suite(table, vcfg, tmp / "data_docs")
        reasons = suite["reasons"]
        row_ids = table["row_id"].tolist()
        table["accepted"] = [i not in reasons for i in row_ids]
        table["issue"] = [
            ";".join(dict.fromkeys(issue for issue, _, _ in reasons[i])) if i in reasons else None
            for i in row_ids
        ]
        table["expectation"] = ["; ".join(e for _, e, _ in reasons.get(i, [])) for i in row_ids]
        table["reason"] = ["; ".join(r for _, _, r in reasons.get(i, [])) for i in row_ids]
        table.drop(columns=["row_id"]).to_csv(tmp / "images.csv", index=False)
        rejected = table.loc[~table["accepted"], REJECTED_COLUMNS]
        rejected.to_csv(tmp / "rejected.csv", index=False)

        problems, domains = [], {}
        for domain in DOMAINS:
            n_found = int((table["domain"] == domain).sum())
            n_ok = suite["counts"][domain]
            state = _domain_state(n_found, n_ok, vcfg.min_images_per_domain)
            domains[domain] = {"source": sources[domain], "found": n_found, "accepted": n_ok,
                               "issue": state}  # fmt: skip
            if state == "empty_domain":
                problems.append(
                    f"domain '{domain}' ({sources[domain]}) is empty: no .jpg/.jpeg/.png images "
                    f"or TFRecords found (check data.{domain}_dir)"
                )
            elif state == "too_few_images":
                problems.append(
                    f"domain '{domain}' ({sources[domain]}) has {n_ok} usable images, fewer than "
                    f"validate.min_images_per_domain={vcfg.min_images_per_domain}"
                )
        if len(rejected) and vcfg.on_invalid == "fail":
            for _, r in rejected.head(10).iterrows():
                problems.append(f"{r['source']}: {r['reason']}")
            if len(rejected) > 10:
                problems.append(f"... and {len(rejected) - 10} more")
            problems.append(
                "fix or remove these files, or set validate.on_invalid: skip to go on without them"
            )
        domains_ok = suite["domains_success"] and all(d["issue"] is None for d in domains.values())
        passed = domains_ok and (vcfg.on_invalid == "skip" or not len(rejected))
        by_issue = rejected["issue"].str.split(";").explode().value_counts()
        summary = {
            "passed": passed,
            "n_images": len(table),
            "n_accepted": int(table["accepted"].sum()),
            "n_rejected": len(rejected),
            "accepted": suite["counts"],
            "domains": domains,
            "rejected_by_issue": {str(k): int(v) for k, v in by_issue.items()},
            "rejected_by_expectation": rejected["expectation"].value_counts().to_dict(),
            "on_invalid": vcfg.on_invalid,
            "problems": problems,
        }
        write_json(tmp / "summary.json", summary)
        accepted = table.loc[table["accepted"]]
        write_manifest(
            tmp,
            "validate",
            passed=passed,
            images=[
                {
                    "path": r.path,
                    "domain": r.domain,
                    "sha256": r.sha256,
                    "name": r.name,
                    "source": r.source,
                    "staged": bool(r.staged),
                }
                for r in accepted.itertuples()
            ],  # fmt: skip
            params=dataclasses.asdict(vcfg),
        )
    return ValidateResult(passed=passed, summary=summary, out_dir=out_dir)
