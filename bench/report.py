"""docs/BENCHMARKS.md from bench/results/*.json."""

from __future__ import annotations

from bench.common import fmt, git_revision, load_all, report_path, write_atomic

ORDER = ("train", "train_malloc_tuned", "input", "frechet", "preprocess", "dvc", "peak")
TITLES = {
    "train": "1–2. Train step: the project's step vs the seed's step (same process)",
    "train_malloc_tuned": "1–2b. Allocator sensitivity: both steps under a tuned glibc malloc",
    "input": "3. Input pipeline vs what the train step consumes",
    "frechet": "4. Fréchet distance, d = 2048: `cyclegan.metrics.fid` vs `scipy.linalg.sqrtm`",
    "preprocess": "5. Preprocess JPEG → TFRecord, 1 vs 2 workers",
    "dvc": "6. `dvc repro` on the sample data",
    "peak": "Machine peak (measured in the train run)",
}

HOW = """\
Run: `make bench` (= `python -m bench`, the `--quick` defaults, 10–15 min on 2 cores), or
one benchmark: `python -m bench train|frechet|data|dvc|peak`. `--full` runs more rounds,
steps, images and every ablation at every size; `--gpu` keeps the GPU visible and adds the fp16
variants (on a CPU-only machine the GPU is hidden and fp16 is skipped: TF has no fast fp16 CPU
kernels). Each benchmark runs in its own process, writes `bench/results/<name>.json`, and this
file is regenerated from all result files (`python -m bench report`). Every row names the
command that produced it. `--out DIR` writes the result files and this report to DIR instead
(trial runs); `python -m bench train --malloc tuned` (part of `--full`) reruns the train rows
with glibc's malloc told to keep freed memory (section 1–2b).

Method: the project and its baseline are measured in the same process, interleaved round by
round (alternating order), so load from other processes hits both alike; a row reports the
best round (like `timeit`), and the ratio is baseline time / project time.
"""

NOTES = """\
## Notes

- **Same work.** The train rows compare equal work: the seed's architecture (pix2pix U-Net
  generators, 70×70 PatchGAN, ngf = ndf = 64, BCE, no image pool, batch 1). The seed's step
  (`bench/seed_step.py`, a copy of `seed_step` in tests/test_train.py) runs under `tf.function`
  as in the TF tutorial (eager would flatter the project), with the textbook instance norm
  (`tf.nn.moments`) and Keras Adam. The project's step is `cyclegan.train.CycleGAN.train_step`
  through `distributed_step`, with the `train.*` options named in the row.
- **What the project's fp32 step changes**, keeping the seed's structure (one persistent tape,
  one optimizer for G+F, one per D): `fuse_calls` (G on [photo; monet], F on [monet; photo; G(photo)],
  G on F(monet): 3 generator calls instead of 6, the fewest the two cycles allow; each D on
  [real; fake]: 2 calls instead of 4; with the image pool of real training, on [real; pooled]
  and on [fake], so each loss's backward pass runs over its own images only: 11% (fp32) and 5%
  (bf16) faster than one call on all three, A/B at 128 px; instance norm
  is per image, so each image's result is the separate call's); `instance_norm: fused` (one
  fused batch-norm kernel per image forward and one backward instead of ~15 elementwise and
  reduction ops; `moments` below 16×16 px, where it is faster); Adam as one
  `ResourceApplyAdam` kernel per variable (Keras' formula, same slots and checkpoints; equal to
  Keras Adam to 1e-6 in the tests); `small_conv: matmul` (convolutions with at most 2×2
  output pixels per image, transposed ones with at most 8×8 input pixels, run as one matmul:
  im2col + matmul, or matmul + overlap-add; these are the U-Net's innermost 512–1024-channel
  layers, 4–34 MB of weights each for a few MFLOP, where oneDNN's conv kernels ran at 1–3
  GFLOP/s; the same weights, the same function, equal to TF's ops to 1e-5 in the tests, forward
  and both gradients; every a·bᵀ product, forward or backward, runs as BatchMatMulV2: oneDNN's
  MatMul with transpose_b is 2–5× slower in fp32 for a few rows times a big weight matrix,
  which made the whole 128 px fp32 step ~8% slower). The ablation rows switch these off one at a time, then all together.
- **Where the rest of the step goes** (TF profiler, op self-times, 128 px): convolutions and
  matmul convs ~75%, Adam ~6-8% (one fused kernel per variable, but 2 x 42 M generator
  parameters are ~2.4 GB of memory traffic a step), under bf16 the casts of float32 weights at
  every call ~8%, instance norm ~3%. At 256 px the U-Net's and PatchGAN's big layers alone
  (fwd + bwd, batch 2) run at 146-209 GFLOP/s fp32 (66-94% of the peak below) and 302-368
  GFLOP/s bf16 (66-81%); the step's 70% / 58% is close to that, so 2x fp32 at 256 px (the
  seed already at ~50% of the peak) is out of reach of any CPU step here, and 3x bf16 would
  need the step at ~78% of the bf16 peak. Tried and dropped: sub-pixel (4 phase convs) and
  space-to-depth forms of the big transposed / strided convs (0.4-0.9x oneDNN's own), matmul
  convs for 4x4-output convs and 16x16-input transposed convs (no faster on the whole step),
  one inter-op thread (slower), avoiding TF's remapper failure on the PatchGAN's first layer
  (no change), under bf16 one cast per kernel per step shared by G's two calls instead of
  Keras' cast per call (0–1.6%, within the noise), and without a pool D on [real] and [fake]
  separately (−2% to +5%, no consistent gain).
- **Image pool.** "project, fp32, image pool 50" is real training's setting (params/paper.yaml):
  each D learns from [real; pooled] and judges [fake] for the generator loss, three images
  through D instead of two but the same convolution FLOPs, as each loss's backward pass runs
  over its own images only. Its time is within the noise of the no-pool step (64 and 128 px).
  The seed has no pool, so that row's ratio is not like-for-like.
- **Noise.** Differences under ~5% between rows of one size are within the run-to-run spread
  here. The seed's step moves more: 0.54–0.72 s at 64 px across runs, with 0.3–1.2 GB of page
  faults a step depending on the state glibc's adaptive mmap threshold is in (see
  "Allocator" above); ratios near a target flip with it. The fused instance norm is 2–3×
  faster than `tf.nn.moments` per call (fwd + bwd, from
  16×16 px up) but the step is convolution-bound: a separate 5–6-round comparison measured
  2.29 vs 2.36 s/step at 256 px (3%) and no difference at 128 px.
- **Defaults.** params/paper.yaml (the real training settings) turns `fuse_calls`,
  `instance_norm: fused` and `small_conv: matmul` on; params.yaml turns on `small_conv: matmul`
  (summation order only; it changes nothing for the demo's ResNet generator, whose smallest
  layer is 16×16 px) and otherwise (the demo, and the base of the tests) keeps the seed's
  numerics: tests/test_train.py compares the project's step with the seed's weight by weight
  (rtol 1e-4), where fused calls give the conv biases right before an instance norm (true
  gradient 0) Adam steps of ±lr from round-off, and its mirrored-vs-one-device check (1% of the
  output range after an epoch) is near its edge with the fused norm's float32 round-off
  (measured 0.010 vs 0.005). Losses agree to ~1e-6 either way. `jit_compile` and
  `mixed_precision` are off in both (XLA is slower on CPU; bf16 moves losses by ~1e-3).
- **Losses match.** The note column gives the largest relative difference of the first step's
  losses (generator total, D_X, D_Y) to the seed's, from identical weights and inputs with
  dropout off. Tolerances stated and enforced by tests/test_speed_options.py: fused calls /
  fused norm / matmul convs 1e-5, XLA 1e-4, bf16 5e-2 (8 mantissa bits in the convolutions; losses, weights,
  Adam and instance-norm statistics float32), fp16 with loss scaling 1e-2.
- **FLOPs** are analytic convolution FLOPs (2 × multiply-adds) of one step: forward 3 calls per
  generator and 2 per discriminator; backward ≈ 2 × forward per generator call and 2–3 × per
  discriminator call (18 G + 14 D forward-equivalents per image); elementwise ops not counted.
  GFLOP/s is that over the measured step time; "% of peak" is against this machine's own big
  conv / big matmul rate (peak table, measured in the same run).
- **Input pipeline** is measured alone (both cores to itself); during training it shares the
  cores with the step, but at three orders of magnitude above the step's consumption it needs
  well under 1% of them. Data: 1000 generated 512 px JPEGs (crops of the photos shipped with
  scikit-image / scikit-learn) run through validate + preprocess (256 px shards), then
  `unpaired_batches` with the paper's jitter (resize 286, random crop 256, flip).
- **Preprocess scaling** needs more than one core free: the note gives this machine's own
  ceiling, measured in the same run: the same `encode_image` calls split over two bare,
  already-started processes vs one. When other jobs share the cores that ceiling drops (to
  ~1.0x under one busy neighbour), and the pipeline's ratio with it. What took 2 workers from
  1.3x to ~1.8x: workers import only `cyclegan.data.encode` (PIL; start-up 0.04 s instead of
  0.18 s), keep freed image buffers in glibc's heap (a fresh process otherwise page-faults every
  decode buffer in anew: ~25% slower per image than the long-lived parent), and take 8 images
  per task. The parent only serializes, writes and hashes (~3% of the 1-worker time).
- **Large photos** (the 12 MP row): JPEGs are decoded at 1/2-1/8 DCT scale as long as both
  sides stay >= 4x the output size (PIL `draft`, as `Image.thumbnail` does), so the bicubic
  resize is as close to a full-resolution one as before (< 0.5 levels of 255, tested).
- **Fréchet**: metrics.fid is exact in both cases; at 7000 vs 300 the sqrtm result itself is
  the less accurate one (Σ1Σ2 is singular: rank ≤ 299). For n < d it takes the nuclear norm of
  the small cross product A1 A2ᵀ; for n ≥ d the covariances by BLAS syrk (half a product) and
  tr sqrt(Σ1Σ2) from LAPACK's generalized symmetric eigensolver (sygv type 3: Cholesky of Σ1,
  Lᵀ Σ2 L, eigenvalues only). Its floor at 5000 vs 5000 is the two syrks (~0.45 s) plus the
  generalized eigensolver (~0.45 s) on 2 cores; sqrtm's Schur form costs ~10 s. Fresh memory
  mattered as much as FLOPs: with a centred copy of every row and LAPACK's copies of both
  covariances (~300 MB per call) the kernel time of faulting it in varied from 0.0 to 0.5 s a
  call (1.2 s best of 3, 8.8x); centring 512 rows at a time into one reused buffer and letting
  LAPACK overwrite the covariances it was given brought it to ~1.0 s with sys ~0.01 s.
- **XLA on CPU** compiles convolutions to Eigen rather than oneDNN and is slower here (and
  compiles for minutes at 256 px); it stays an option (`train.jit_compile`) for GPUs. With
  several devices only each replica's losses and gradients are compiled.
- **Shared machine.** Other processes ran during these measurements (load averages above);
  interleaving and best-of-rounds reduce, but do not remove, their effect. Rerun to check.
"""


def _row_table(rows: list[dict]) -> list[str]:
    out = [
        "| case | variant | result | baseline | ratio | target | met | note | command |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        value = f"{fmt(r['value'])} {r['unit']}" if r["value"] is not None else "–"
        base = (
            f"{fmt(r['baseline'])} {r['unit']} ({r['baseline_name']})"
            if r["baseline"] is not None
            else "–"
        )
        ratio = f"{r['ratio']:.2f}×" if r["ratio"] is not None else "–"
        met = {True: "**yes**", False: "no", None: ""}[r["met"]]
        cmd = f"`{r['command']}`" if r["command"] else ""
        out.append(
            f"| {r['case']} | {r['variant']} | {value} | {base} | {ratio} | "
            f"{r['target']} | {met} | {r['note']} | {cmd} |"
        )
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
                params = size_info.get("params", {})
                lines.append(
                    f"- {size} px: the seed's step runs at {100 * eff:.0f}% of the measured fp32 conv "
                    f"peak, so no fp32 step doing the same convolutions can be more than "
                    f"{1 / eff:.1f}× faster on this machine (the bf16 peak is "
                    f"{peak['bf16'] / peak['fp32']:.1f}× the fp32 one)."
                    + (
                        f" Each U-Net generator has {params['G'] / 1e6:.0f} M parameters at this "
                        f"size for {size_info['flops_forward']['G'] / 1e9:.2f} GFLOP per image: "
                        f"weights, their gradients and Adam's state dominate the memory traffic, "
                        f"which the fused calls (weights read once per call), the matmul convs and the "
                        f"fused Adam cut."
                        if params and size <= 128
                        else ""
                    )
                )
    tuned = results.get("train_malloc_tuned")
    if train and tuned and tuned["code"] == train["code"]:
        lines.append(_allocator_finding(train, tuned))
    elif train and tuned:
        lines.append(
            f"- Allocator: section 1–2b was measured at code {tuned['code']}, section 1–2 at "
            f"{train['code']}; rerun `python -m bench train --malloc tuned` (or `--full`) to "
            f"compare them."
        )
    return lines


def _allocator_finding(train: dict, tuned: dict) -> str:
    """How much of the train rows' margin is the allocator: section 1–2b against 1–2."""

    def by_size(data, bench):
        out: dict[int, dict[str, float]] = {}
        for r in data["rows"]:
            if r["bench"] == bench:
                out.setdefault(int(r["case"].split()[0]), {})[r["variant"]] = r["value"]
        return out

    default, alloc = by_size(train, "train"), by_size(tuned, "train_malloc_tuned")
    sizes = [s for s in sorted(alloc) if s in default]
    seed = "seed step, fp32 (baseline)"
    variants = [v for v in ("project, fp32", "project, bf16") if all(v in alloc[s] for s in sizes)]

    def per_size(fn):
        return " / ".join(fn(s) for s in sizes)

    speedup = per_size(lambda s: f"{100 * (alloc[s][seed] / default[s][seed] - 1):+.0f}%")
    project = [alloc[s][v] / default[s][v] - 1 for s in sizes for v in variants]
    ratios = "; ".join(
        f"{v.removeprefix('project, ')} "
        + per_size(lambda s, v=v: f"{alloc[s][v] / alloc[s][seed]:.2f}×")
        for v in variants
    )
    px = " / ".join(str(s) for s in sizes)
    return (
        f"- Allocator: with glibc's malloc tuned to keep freed memory (section 1–2b) the seed's "
        f"throughput changes by {speedup} ({px} px) and the project's by "
        f"{100 * min(project):+.0f}% to {100 * max(project):+.0f}%; the ratios there are {ratios}. "
        f"TF's native convolutions on the U-Net's big-weight inner layers take big buffers from "
        f"malloc at each call, which glibc maps and zeroes anew (the 'page-faulted/step' notes: "
        f"the seed's step faults, the project's hardly, its 'small_conv native' ablation brings "
        f"the faults back; the seed with the project's fused Adam faults as much as before). "
        f"The targets are judged with the default allocator, the one a training script gets "
        f"unless it sets MALLOC_* variables; 1–2b is how much of the margin comes from it."
    )


def _sections(results: dict) -> dict[str, list[tuple[dict, dict]]]:
    """Rows grouped by benchmark (a result file may hold several), each with its file's data.
    The peak rows of the train run (the ones its GFLOP/s refer to) win over a separate run's."""
    sections: dict[str, list] = {}
    for name, data in results.items():
        for row in data["rows"]:
            if row["bench"] == "peak" and name == "peak" and "train" in results:
                continue
            sections.setdefault(row["bench"], []).append((row, data))
    return sections


def _with_flops(results: dict) -> None:
    """Train rows: add achieved GFLOP/s and the share of the measured peak to the note."""
    for key in ("train", "train_malloc_tuned"):
        if key in results:
            _add_flops(results[key], key)


def _add_flops(train: dict, bench: str) -> None:
    peak = train["extra"].get("peak", {})
    for info in train["extra"].get("sizes", []):
        for row in train["rows"]:
            if row["bench"] != bench or not row["case"].startswith(f"{info['size']} px"):
                continue
            gflops = info["flops_per_step"] * row["value"] / (2 * info["batch"]) / 1e9
            kind = "bf16" if ("bf16" in row["variant"] or "fp16" in row["variant"]) else "fp32"
            share = (
                f" ({100 * gflops / peak[kind]:.0f}% of the {kind} peak)" if kind in peak else ""
            )
            row["note"] = f"{gflops:.0f} GFLOP/s{share}; {row['note']}"


def _refresh_input(results: dict) -> None:
    """Input-vs-train rows: compare with the train step numbers now in train.json."""
    if "train" not in results or "data" not in results:
        return
    consumption = {
        r["variant"]: r["value"]
        for r in results["train"]["rows"]
        if r["bench"] == "train" and r["case"].startswith("256 px")
    }
    for row in results["data"]["rows"]:
        variant = row["variant"].removeprefix("pipeline vs the 256 px train step: ")
        if row["baseline_name"] == "train step consumption" and variant in consumption:
            row["baseline"] = consumption[variant]
            row["ratio"] = row["value"] / row["baseline"]
            row["met"] = row["ratio"] >= 20
            row["note"] = f"train step img/s from the train run of {results['train']['when']}"


def write() -> str:
    results = load_all()
    _with_flops(results)
    _refresh_input(results)
    sections = _sections(results)
    lines = ["# Benchmarks", "", HOW]
    any_result = next(iter(results.values()), None)
    if any_result:
        m = any_result["machine"]
        lines += [
            f"Machine: {m.get('cpu')}, {m.get('cores_usable')} usable cores, flags "
            f"{', '.join(m.get('cpu_flags', []))}; TensorFlow {m.get('tensorflow')}, "
            f"Python {m.get('python')}; GPUs: {', '.join(m.get('gpus', [])) or 'none'}. "
            f"Report written at code {git_revision()}.",
            "",
        ]
    targets = [r for key in ORDER for r, _ in sections.get(key, []) if r["target"]]
    if targets:
        lines += ["## Targets", ""] + _row_table(targets) + [""]
    found = findings(results)
    if found:
        lines += ["## What bounds the train step", ""] + found + [""]
    for key in ORDER:
        if key not in sections:
            continue
        rows = [r for r, _ in sections[key]]
        data = sections[key][0][1]
        lines += [
            f"## {TITLES[key]}",
            "",
            f"Measured {data['when']}" + (f" at code {data['code']}." if data.get("code") else "."),
        ]
        if data["extra"].get("load"):
            lines[-1] += f" Load average (1 min) at start → end: {data['extra']['load']}."
        if data["machine"].get("malloc_env"):
            settings = ", ".join(f"`{k}={v}`" for k, v in data["machine"]["malloc_env"].items())
            lines[-1] += f" glibc malloc settings: {settings}."
        lines += [""] + _row_table(rows) + [""]
        if key == "train":
            for info in data["extra"].get("sizes", []):
                g, d = info["flops_forward"]["G"], info["flops_forward"]["D"]
                compile_s = ", ".join(f"{k} {v:.0f}" for k, v in info["compile_s"].items())
                lines.append(
                    f"- {info['size']} px: conv FLOPs forward per image G {g / 1e9:.2f} G, "
                    f"D {d / 1e9:.2f} G; per step {info['flops_per_step'] / 1e9:.1f} GFLOP. "
                    f"Build + trace/compile, s: {compile_s}."
                )
            lines.append("")
    lines += [NOTES]
    text = "\n".join(lines)
    write_atomic(report_path(), text)
    return text
