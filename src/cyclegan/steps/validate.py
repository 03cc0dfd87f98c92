"""Validate step: metadata table + GX suite -> summary, rejected list, Data Docs, manifest."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cyclegan.config import Config
from cyclegan.storage import atomic_path, write_json, write_manifest
from cyclegan.validation import metadata_table, run_suite


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
        lines += [f"  {r}" for r in s["problems"]]
        if s["n_rejected"]:
            lines.append(f"  every rejected file and its reason: {self.out_dir / 'rejected.csv'}")
        lines.append(f"  report: {self.out_dir / 'data_docs' / 'index.html'}")
        return "\n".join(lines)


def run(cfg: Config, photo_dir: str | Path, monet_dir: str | Path, out_dir: str | Path,
        progress: bool = True) -> ValidateResult:  # fmt: skip
    """Check every input image; never touches the inputs. `passed` is False when the policy
    (`validate.on_invalid`) says the pipeline must stop."""
    vcfg = cfg.validate
    out_dir = Path(out_dir)
    dirs = {"photo": Path(photo_dir), "monet": Path(monet_dir)}
    table = metadata_table(dirs, vcfg.max_side, progress=progress)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        suite = run_suite(table, vcfg, tmp / "data_docs")
        reasons = suite["reasons"]
        table["accepted"] = [i not in reasons for i in range(len(table))]
        table["expectation"] = [
            "; ".join(e for e, _ in reasons.get(i, [])) for i in range(len(table))
        ]
        table["reason"] = ["; ".join(r for _, r in reasons.get(i, [])) for i in range(len(table))]
        table.to_csv(tmp / "images.csv", index=False)
        rejected = table.loc[~table["accepted"], ["path", "domain", "expectation", "reason"]]
        rejected.to_csv(tmp / "rejected.csv", index=False)

        problems = []
        for domain, n in suite["counts"].items():
            if n < vcfg.min_images_per_domain:
                problems.append(
                    f"domain '{domain}' ({dirs[domain]}) has {n} usable images, fewer than "
                    f"validate.min_images_per_domain={vcfg.min_images_per_domain}"
                )
        if len(rejected) and vcfg.on_invalid == "fail":
            for _, r in rejected.head(10).iterrows():
                problems.append(f"{r['path']}: {r['reason']}")
            if len(rejected) > 10:
                problems.append(f"... and {len(rejected) - 10} more")
            problems.append(
                "fix or remove these files, or set validate.on_invalid: skip to go on without them"
            )
        passed = suite["domains_success"] and (vcfg.on_invalid == "skip" or not len(rejected))
        summary = {
            "passed": passed,
            "n_images": len(table),
            "n_accepted": int(table["accepted"].sum()),
            "n_rejected": len(rejected),
            "accepted": suite["counts"],
            "rejected_by_reason": rejected["expectation"].value_counts().to_dict(),
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
                {"path": r.path, "domain": r.domain, "sha256": r.sha256}
                for r in accepted.itertuples()
            ],
            params=dataclasses.asdict(vcfg),
        )
    return ValidateResult(passed=passed, summary=summary, out_dir=out_dir)
