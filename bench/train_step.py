"""Benchmarks 1 + 2: train-step throughput, the project's step vs the seed's, same process.

Architecture for both: the seed's (TF tutorial / Kaggle starter): pix2pix U-Net generators and
70x70 PatchGAN discriminators, ngf = ndf = 64, BCE from logits, no image pool (the seed has
none), batch 1, at 64 / 128 / 256 px. The seed's models use the textbook instance norm
(tf.nn.moments); its step is `bench.seed_step.seed_step` under `tf.function` (as in the
tutorial; eager would flatter the project). Every model is built once, warmed up, then the
variants are timed in interleaved rounds so that machine noise hits all of them alike; the
reported number is the best round (as `timeit`: other processes only ever add time).

Loss check: each project variant starts from the seed's weights and takes one step on the same
batch with dropout switched off (the U-Net's dropout masks are random); the relative difference
of its losses (generator total, D_X, D_Y) to the seed's fp32 losses is reported.

Each row also gives the page faults of a step (median round), the memory the kernel had to map
and zero anew: the cost that `python -m bench train --malloc tuned` takes away from both steps.
One extra row runs the project with real training's image pool (pool_size 50); the seed has no
pool, so its ratio is for information only.
"""

from __future__ import annotations

import dataclasses
import gc
import time

from bench.common import Row, log

ARCH = dict(
    generator="unet",
    ngf=64,
    ndf=64,
    n_layers_d=3,
    pool_size=0,
    gan_mode="bce",
    lambda_cycle=10.0,
    lambda_identity=0.5,
    upsample="transpose",
)


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    options: dict  # train.* overrides on top of the params.yaml defaults


def variants(gpu: bool, ablations: bool, jit: bool) -> list[Variant]:
    """The project's step with its speed options (all other train.* from params.yaml)."""
    fast = {"fuse_calls": True, "instance_norm": "fused", "small_conv": "matmul"}  # paper.yaml
    out = [Variant("project, fp32", fast)]
    if jit:
        out.append(Variant("project, fp32 + XLA", {**fast, "jit_compile": True}))
    out.append(Variant("project, bf16", {**fast, "mixed_precision": "bf16"}))
    if jit:
        out.append(
            Variant("project, bf16 + XLA", {**fast, "mixed_precision": "bf16", "jit_compile": True})
        )
    if gpu:
        out.append(Variant("project, fp16 + loss scaling", {**fast, "mixed_precision": "fp16"}))
        if jit:
            out.append(
                Variant(
                    "project, fp16 + XLA", {**fast, "mixed_precision": "fp16", "jit_compile": True}
                )
            )
    if ablations:
        out += [
            # real training's setting (params/paper.yaml); the seed has no pool, so this row
            # shows what the pool costs, not a like-for-like ratio
            Variant("project, fp32, image pool 50", {**fast, "pool_size": 50}),
            Variant("ablation: fp32, fuse_calls off", {**fast, "fuse_calls": False}),
            Variant("ablation: fp32, instance_norm moments", {**fast, "instance_norm": "moments"}),
            Variant("ablation: fp32, small_conv native", {**fast, "small_conv": "native"}),
            Variant(
                "ablation: fp32, all off (seed's calls; fused Adam only)",
                {"fuse_calls": False, "instance_norm": "moments", "small_conv": "native"},
            ),
        ]
    return out


def train_config(size: int, batch: int, **options):
    from bench.common import REPO
    from cyclegan.config import load_config

    cfg = load_config(REPO / "params.yaml").train
    return dataclasses.replace(cfg, **{**ARCH, **options}, batch_size=batch)


# ------------------------------------------------------------------ FLOPs (analytic)


def conv_flops(model, size: int) -> int:
    """Multiply-adds x 2 of every convolution for one image of `size` px, forward."""
    import keras

    convs = [
        lyr
        for lyr in model.layers
        if isinstance(lyr, keras.layers.Conv2D | keras.layers.Conv2DTranspose)
    ]
    probe = keras.Model(model.inputs, [lyr.output for lyr in convs])
    shapes = probe.compute_output_spec(keras.KerasTensor((1, size, size, 3)))
    total = 0
    for layer, out in zip(convs, shapes, strict=True):
        kh, kw = layer.kernel_size
        h, w, c_out = out.shape[1], out.shape[2], out.shape[3]
        if isinstance(layer, keras.layers.Conv2DTranspose):  # every input pixel scatters k*k
            c_in = layer.kernel.shape[3]
            pixels = h * w // (layer.strides[0] * layer.strides[1])
        else:
            c_in = layer.kernel.shape[2]
            pixels = h * w
        total += 2 * pixels * kh * kw * c_in * c_out
    return total


def step_flops(g_fwd: int, d_fwd: int, batch: int) -> int:
    """Conv FLOPs of one step (the seed's and the project's are the same work).

    Forward: 3 calls per generator, 2 per discriminator. Backward ~ 2x forward per generator
    call (input + weight gradients); discriminator on real: weight + inner input gradients (2x);
    on fake: that, plus the input gradients of the generator loss (3x). So 2 x 9 G + 2 x (3 + 4) D.
    """
    return batch * (18 * g_fwd + 14 * d_fwd)


# ------------------------------------------------------------------ builders


class SeedRunner:
    def __init__(self, size: int, batch: int):
        import keras
        import tensorflow as tf

        from bench.seed_step import seed_step
        from cyclegan.model import build_generator, patchgan_discriminator
        from cyclegan.model.layers import layer_impls

        cfg = train_config(size, batch)
        with layer_impls(instance_norm="moments", small_conv="native"):  # Keras' own ops
            self.G = build_generator(cfg, size, name="G")
            self.F = build_generator(cfg, size, name="F")
            self.D_M = patchgan_discriminator(cfg.ndf, cfg.n_layers_d, name="D_M")
            self.D_P = patchgan_discriminator(cfg.ndf, cfg.n_layers_d, name="D_P")
        self.models = (self.G, self.F, self.D_M, self.D_P)
        self.initial_weights = [m.get_weights() for m in self.models]
        opts = [keras.optimizers.Adam(2e-4, beta_1=0.5) for _ in range(3)]

        def step(photo, monet):
            return seed_step(*self.models, *opts, photo, monet)

        self.step = tf.function(step)
        self.check = tf.function(step)  # traced with dropout off

    def run(self, photo, monet):
        gen, dm, dp = self.step(photo, monet)
        return float(gen)

    def check_losses(self, photo, monet):
        with dropout_off(self.models):
            gen, dm, dp = self.check(photo, monet)
        return {"gen_total": float(gen), "D_Y": float(dm), "D_X": float(dp)}


class ProjectRunner:
    def __init__(self, size: int, batch: int, options: dict, seed: SeedRunner):
        import tensorflow as tf

        from cyclegan.train import CycleGAN, distributed_step

        cfg = train_config(size, batch, **options)
        self.gan = CycleGAN(cfg, size, steps_per_epoch=10**6, global_batch=batch)
        for mine, weights in zip(
            (self.gan.G, self.gan.F, self.gan.D_Y, self.gan.D_X), seed.initial_weights, strict=True
        ):
            mine.set_weights(weights)
        self.models = (self.gan.G, self.gan.F, self.gan.D_X, self.gan.D_Y)
        strategy = tf.distribute.get_strategy()
        self.step = distributed_step(strategy, self.gan)
        self.check = distributed_step(strategy, self.gan)

    def run(self, photo, monet):
        return float(self.step(photo, monet)["gen_total"])

    def check_losses(self, photo, monet):
        with dropout_off(self.models):
            out = self.check(photo, monet)
        return {k: float(out[k]) for k in ("gen_total", "D_Y", "D_X")}


class dropout_off:
    """Dropout rate 0 while a function is traced (Keras reads the rate at trace time)."""

    def __init__(self, models):
        import keras

        self.layers = [
            lyr for m in models for lyr in m.layers if isinstance(lyr, keras.layers.Dropout)
        ]

    def __enter__(self):
        self.rates = [lyr.rate for lyr in self.layers]
        for lyr in self.layers:
            lyr.rate = 0.0

    def __exit__(self, *exc):
        for lyr, rate in zip(self.layers, self.rates, strict=True):
            lyr.rate = rate


# ------------------------------------------------------------------ the benchmark


def _faulted_bytes() -> int:
    """Memory this process has page-faulted in so far: each fault is a fresh page the kernel
    zeroes, the cost of big buffers malloc returns to the kernel and maps again next step."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt * resource.getpagesize()


def _faults_note(per_step: list[float]) -> str:
    from bench.common import median

    return f"{median(per_step) / 1e9:.2f} GB page-faulted/step"


def run_size(
    size: int, batch: int, vs: list[Variant], rounds: int, steps: int, command: str
) -> tuple[list[Row], dict]:
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(size)
    photo = tf.constant(rng.uniform(-1, 1, (batch, size, size, 3)), tf.float32)
    monet = tf.constant(rng.uniform(-1, 1, (batch, size, size, 3)), tf.float32)
    tf.keras.utils.set_random_seed(0)

    seed = SeedRunner(size, batch)
    runners: dict[str, object] = {}
    info: dict = {"size": size, "batch": batch, "compile_s": {}, "loss_check": {}}
    reference = seed.check_losses(photo, monet)  # before any update: all start from these weights
    runners_order = ["seed step (baseline)"] + [v.name for v in vs]
    for v in vs:
        t0 = time.perf_counter()
        runners[v.name] = runner = ProjectRunner(size, batch, v.options, seed)
        got = runner.check_losses(photo, monet)
        info["loss_check"][v.name] = {
            k: abs(got[k] - reference[k]) / max(abs(reference[k]), 1e-12) for k in reference
        }
        info["compile_s"][v.name] = time.perf_counter() - t0
        log(
            f"{size}px {v.name}: built + checked in {info['compile_s'][v.name]:.1f}s, "
            f"loss rel. diff {max(info['loss_check'][v.name].values()):.2e}"
        )
    seed.initial_weights = None  # every variant has its copy
    runners["seed step (baseline)"] = seed
    for name in runners_order:  # trace/compile + one warm step each
        t0 = time.perf_counter()
        runners[name].run(photo, monet)
        runners[name].run(photo, monet)
        info["compile_s"][name] = info["compile_s"].get(name, 0) + time.perf_counter() - t0
    times = {name: [] for name in runners_order}
    cpu = {name: [] for name in runners_order}
    faults = {name: [] for name in runners_order}  # bytes page-faulted in, per step
    for r in range(rounds):
        order = runners_order if r % 2 == 0 else runners_order[::-1]
        for name in order:
            t0, c0, f0 = time.perf_counter(), time.process_time(), _faulted_bytes()
            for _ in range(steps):
                runners[name].run(photo, monet)
            times[name].append((time.perf_counter() - t0) / steps)
            cpu[name].append((time.process_time() - c0) / steps)
            faults[name].append((_faulted_bytes() - f0) / steps)
    info["step_s"] = times
    info["step_cpu_s"] = cpu
    info["step_page_faults"] = faults

    g_fwd, d_fwd = conv_flops(seed.G, size), conv_flops(seed.D_M, size)
    flops = step_flops(g_fwd, d_fwd, batch)
    info["flops_per_step"] = flops
    info["flops_forward"] = {"G": g_fwd, "D": d_fwd}
    info["params"] = {"G": seed.G.count_params(), "D": seed.D_M.count_params()}
    best = {name: min(ts) for name, ts in times.items()}  # best round, as timeit
    base = best["seed step (baseline)"]
    case = f"{size} px, batch {batch}"
    rows = [
        Row(
            "train",
            case,
            "seed step, fp32 (baseline)",
            2 * batch / base,
            "img/s",
            note=f"{base:.3f} s/step; {_faults_note(faults['seed step (baseline)'])}",
            command=command,
        )
    ]
    for v in vs:
        t = best[v.name]
        low_precision = v.options.get("mixed_precision", "none") != "none"
        # the targets apply to the recommended settings; XLA and ablations are for comparison
        target = {
            "project, fp32": ">= 2x",
            "project, bf16": ">= 3x",
            "project, fp16 + loss scaling": ">= 3x",
        }.get(v.name, "")
        ratio = base / t
        rows.append(
            Row(
                "train",
                case,
                v.name,
                2 * batch / t,
                "img/s",
                baseline=2 * batch / base,
                baseline_name="seed step",
                ratio=ratio,
                target=target,
                met=(ratio >= (3 if low_precision else 2)) if target else None,
                note=f"{t:.3f} s/step; {_faults_note(faults[v.name])}; "
                f"max loss rel. diff {max(info['loss_check'][v.name].values()):.1e}",
                command=command,
            )
        )
    del runners, seed
    tf.keras.backend.clear_session()
    gc.collect()
    return rows, info
