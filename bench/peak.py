"""The machine's measured peak: a big matmul and a big convolution, fp32 and bf16."""

from __future__ import annotations

import time

from bench.common import Row, log


def _rate(fn, flops: float, reps: int) -> float:
    fn()
    fn()  # trace + warm
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        _ = out.numpy().ravel()[:1]
        best = min(best, time.perf_counter() - t0)
    return flops / best / 1e9


def measure(reps: int = 5, device: str | None = None) -> dict:
    import tensorflow as tf

    out = {}
    dev = device or ("/GPU:0" if tf.config.list_logical_devices("GPU") else "/CPU:0")
    with tf.device(dev):
        for dtype, key in ((tf.float32, "fp32"), (tf.bfloat16, "bf16")):
            n = 4096
            a = tf.cast(tf.random.normal([n, n]), dtype)
            b = tf.cast(tf.random.normal([n, n]), dtype)
            matmul = _rate(tf.function(lambda a=a, b=b: tf.matmul(a, b)), 2 * n**3, reps)
            x = tf.cast(tf.random.normal([8, 64, 64, 256]), dtype)
            w = tf.cast(tf.random.normal([3, 3, 256, 256]), dtype)
            conv = _rate(
                tf.function(lambda x=x, w=w: tf.nn.conv2d(x, w, 1, "SAME")),
                2 * 8 * 64 * 64 * 9 * 256 * 256,
                reps,
            )
            out[f"matmul_{key}"], out[f"conv_{key}"] = matmul, conv
            log(f"peak {key}: matmul {matmul:.0f} GFLOP/s, conv {conv:.0f} GFLOP/s")
    out["fp32"] = max(out["matmul_fp32"], out["conv_fp32"])
    out["bf16"] = max(out["matmul_bf16"], out["conv_bf16"])
    return out


def rows(peak: dict, command: str) -> list[Row]:
    return [
        Row("peak", "4096x4096 matmul", "fp32", peak["matmul_fp32"], "GFLOP/s", command=command),
        Row("peak", "4096x4096 matmul", "bf16", peak["matmul_bf16"], "GFLOP/s", command=command),
        Row(
            "peak",
            "conv 3x3, 8x64x64x256 -> 256",
            "fp32",
            peak["conv_fp32"],
            "GFLOP/s",
            command=command,
        ),
        Row(
            "peak",
            "conv 3x3, 8x64x64x256 -> 256",
            "bf16",
            peak["conv_bf16"],
            "GFLOP/s",
            command=command,
        ),
    ]
