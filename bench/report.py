"""docs/BENCHMARKS.md from bench/results/*.json."""

from __future__ import annotations

from bench.common import REPORT, fmt, git_revision, load_all

ORDER = ("train", "input", "frechet", "preprocess", "dvc", "peak")
TITLES = {
    "train": "1–2. Train step: the project's step vs the seed's step (same process)",
    "input": "3. Input pipeline vs what the train step consumes",
    "frechet": "4. Fréchet distance, d = 2048: `cyclegan.metrics.fid` vs `scipy.linalg.sqrtm`",
    "preprocess": "5. Preprocess JPEG → TFRecord, 1 vs 2 workers",
    "dvc": "6. `dvc repro` on the sample data",
    "peak": "Machine peak (measured in the train run)",
}

HOW = """\
Run: `make bench` (= `python -m bench`, the `--quick` defaults, about 15 min on 2 cores), or
one benchmark: `python -m bench train|frechet|data|dvc|peak`. `--full` runs more rounds,
steps, images and every ablation at every size; `--gpu` keeps the GPU visible and adds the fp16
variants (on a CPU-only machine the GPU is hidden and fp16 is skipped: TF has no fast fp16 CPU
kernels). Each benchmark runs in its own process, writes `bench/results/<name>.json`, and this
file is regenerated from all result files (`python -m bench report`). Every row names the
command that produced it.

Method: the project and its baseline are measured in the same process, interleaved round by
round (alternating order), so load from other processes hits both alike; a row reports the
best round (like `timeit`), and the ratio is baseline time / project time.
"""

NOTES = """\
## Notes

- **Same work.** The train rows compare equal work: the seed's architecture (pix2pix U-Net
  generators, 70×70 PatchGAN, ngf = ndf = 64, BCE, no image pool, batch 1). The seed's step
  (`bench/seed_step.py`, a copy of `seed_step` in tests/test_train.py) runs under `tf.function`
  as in the TF tutorial, with the textbook instance norm (`tf.nn.moments`) and Keras Adam. The
  project's step is `cyclegan.train.CycleGAN.train_step` through `distributed_step` with the
  options named in the row.
- **What the project's fp32 step changes** (structure unchanged: one persistent tape, one
  optimizer for G+F, one per D): `fuse_calls` (4 generator calls instead of 6, 2 discriminator
  calls instead of 4: larger batches per call, weights read once per call); `instance_norm:
  fused` (one fused batch-norm kernel per image forward and one backward, instead of ~15
  elementwise/reduction ops); Adam as one `ResourceApplyAdam` kernel per variable (same formula
  as Keras', bit-identical in the tests). The ablation rows switch these off one at a time.
- **Losses match.** Column "note" gives the largest relative difference of the first step's
  losses (generator total, D_X, D_Y) to the seed's, from identical weights and inputs with dropout
  off. Stated tolerances, enforced by tests/test_speed_options.py: fp32 options 1e-5, XLA 1e-4,
  bf16 5e-2 (bf16 keeps 8 mantissa bits; losses, weights, Adam and instance-norm statistics are
  float32).
- **FLOPs** are analytic convolution FLOPs (2 × multiply-adds) for one step: forward
  2 × (3 G + 2 D) calls, backward ≈ 2 × forward per generator call and 2–3 × per discriminator
  call (18 G + 14 D forward-equivalents per image); elementwise ops are not counted. GFLOP/s
  is that over the measured step time; "% of peak" is against the machine's own big-conv /
  big-matmul rate in the peak table.
- **XLA on CPU** compiles convolutions to Eigen, not oneDNN, and is slower here; it stays an
  option (`train.jit_compile`, default false) for GPUs.
"""


def _row_table(rows: list[dict]) -> list[str]:
    out = ["| case | variant | result | baseline | ratio | target | met | note | command |",
           "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        value = f"{fmt(r['value'])} {r['unit']}" if r["value"] is not None else "–"
        base = (f"{fmt(r['baseline'])} {r['unit']} ({r['baseline_name']})"
                if r["baseline"] is not None else "–")  # fmt: skip
        ratio = f"{r['ratio']:.2f}×" if r["ratio"] is not None else "–"
        met = {True: "**yes**", False: "no", None: ""}[r["met"]]
        cmd = f"`{r['command']}`" if r["command"] else ""
        out.append(f"| {r['case']} | {r['variant']} | {value} | {base} | {ratio} | "
                   f"{r['target']} | {met} | {r['note']} | {cmd} |")  # fmt: skip
    return out


def findings(results: dict) -> list[str]:
    lines = []
    train = results.get("train")
    if train:
        for size_info in train["extra"].get("sizes", []):
            size = size_info["size"]
            rows = [r for r in train["rows"] if r["case"].startswith(f"{size} px")]
            seed = next((r for r in rows if r["variant"].startswith("seed")), None)
            peak = train["extra"].get("peak", {})
            if seed and peak:
                eff = (
                    size_info["flops_per_step"]
                    * seed["value"]
                    / 2
                    / size_info["batch"]
                    / 1e9
                    / peak["fp32"]
                )
                lines.append(
                    f"- {size} px: the seed's step already runs at {100 * eff:.0f}% of the measured "
                    f"fp32 conv peak, so no fp32 step doing the same convolutions can be more than "
                    f"{1 / eff:.1f}× faster on this machine (bf16 peak: {peak['bf16'] / peak['fp32']:.1f}× fp32)."
                )
    return lines


def write() -> str:
    results = load_all()
    lines = ["# Benchmarks", "", HOW]
    any_result = next(iter(results.values()), None)
    if any_result:
        m = any_result["machine"]
        lines += [f"Machine: {m.get('cpu')}, {m.get('cores_usable')} usable cores, flags "
                  f"{', '.join(m.get('cpu_flags', []))}; TensorFlow {m.get('tensorflow')}, "
                  f"Python {m.get('python')}; GPUs: {', '.join(m.get('gpus', [])) or 'none'}. "
                  f"Code: {git_revision()}.", ""]  # fmt: skip
    targets = [r for name in ORDER if name in results for r in results[name]["rows"] if r["target"]]
    if targets:
        lines += ["## Targets", ""] + _row_table(targets) + [""]
    found = findings(results)
    if found:
        lines += ["## What bounds the train step", ""] + found + [""]
    for name in ORDER:
        if name not in results:
            continue
        data = results[name]
        lines += [f"## {TITLES[name]}", "", f"Measured {data['when']}.", ""]
        lines += _row_table(data["rows"]) + [""]
        if name == "train":
            for info in data["extra"].get("sizes", []):
                g, d = info["flops_forward"]["G"], info["flops_forward"]["D"]
                lines.append(f"- {info['size']} px: conv FLOPs forward per image G {g / 1e9:.2f} G, "
                             f"D {d / 1e9:.2f} G; per step {info['flops_per_step'] / 1e9:.1f} GFLOP. "
                             f"Build + trace/compile s: " + ", ".join(
                                 f"{k} {v:.0f}" for k, v in info["compile_s"].items()))  # fmt: skip
            lines.append("")
        if data["extra"].get("load"):
            lines += [
                f"Load average during the run (1 min, start → end): {data['extra']['load']}.",
                "",
            ]
    lines += [NOTES]
    text = "\n".join(lines)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(text)
    return text
