"""`python -m bench [peak|train|frechet|data|dvc|report ...] [--full] [--gpu] ...`

Without names: all of them, each in its own process, then docs/BENCHMARKS.md. Quick defaults
fit in about 15 minutes on 2 CPU cores; `--full` measures longer and at more settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

from bench.common import REPO, command_line, log, report_path, results_dir, save

ALL = ("train", "frechet", "data", "dvc")  # train measures the peak too; `peak` alone on request

# `--malloc tuned`: glibc serves big buffers from its heap instead of fresh mmaps and keeps freed
# memory instead of returning it to the kernel, so a buffer freed and allocated again each step
# is not page-faulted (zeroed) in anew. All three are needed: setting the trim threshold alone
# turns off glibc's adaptive mmap threshold and faults more (measured: seed 40% slower at 64 px).
TUNED_MALLOC = {
    "MALLOC_MMAP_THRESHOLD_": str(4 << 30),
    "MALLOC_TRIM_THRESHOLD_": str(16 << 30),
    "MALLOC_TOP_PAD_": str(1 << 30),
}


def parse(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"any of {', '.join(ALL)}, report (default: all, then report)",
    )
    p.add_argument("--quick", action="store_true", help="the default: bounded time on 2 cores")
    p.add_argument("--full", action="store_true", help="more rounds/steps/images, all ablations")
    p.add_argument("--gpu", action="store_true", help="use the GPU (adds fp16 variants)")
    p.add_argument("--sizes", default="64,128,256", help="train: image sizes, px")
    p.add_argument("--batch", type=int, default=1, help="train: batch size (seed/paper: 1)")
    p.add_argument("--rounds", type=int, help="train: interleaved timing rounds")
    p.add_argument("--xla-sizes", help="train: sizes with XLA variants (quick CPU: 64)")
    p.add_argument("--ablation-sizes", help="train: sizes with ablation rows (quick: 64,128)")
    p.add_argument(
        "--dvc-real",
        action="store_true",
        help="dvc: the real params.yaml (quick: epochs shrunk for the clean run)",
    )
    p.add_argument(
        "--malloc",
        choices=("default", "tuned"),
        default="default",
        help="train: run both steps under glibc's default malloc or one tuned to keep freed "
        "memory (an allocator-sensitivity check; rows go to their own section, no targets)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="write result files and BENCHMARKS.md to DIR instead of bench/results and docs/",
    )
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.out:  # children inherit it
        os.environ["BENCH_OUT"] = os.path.abspath(args.out)
    unknown = [n for n in args.names if n not in (*ALL, "peak", "report")]
    if unknown:
        p.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(ALL)}, peak, report")
    return args


def _sizes(text: str | None, default: list[int]) -> list[int]:
    return [int(s) for s in text.split(",") if s] if text is not None else default


def flags(args, sizes: bool = True) -> list[str]:
    """The flags that shape results, for the 'command' column (`sizes`: with --sizes)."""
    out = []
    if args.full:
        out.append("--full")
    if args.gpu:
        out.append("--gpu")
    for name in ("sizes", "xla_sizes", "ablation_sizes"):
        value = getattr(args, name)
        if name == "sizes" and not sizes:
            continue
        if value is not None and not (name == "sizes" and value == "64,128,256"):
            out += [f"--{name.replace('_', '-')}", value]
    if args.batch != 1:
        out += ["--batch", str(args.batch)]
    if args.rounds:
        out += ["--rounds", str(args.rounds)]
    if args.dvc_real:
        out.append("--dvc-real")
    if args.malloc != "default":
        out += ["--malloc", args.malloc]
    return out


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "?"


def _train_sizes(sizes: list[int], args, command: str) -> tuple[list, dict]:
    from bench import peak, train_step

    measured = peak.measure(reps=5)
    # XLA on CPU is slower and compiles for minutes at 256 px: quick runs try it at 64 px
    sensitivity = args.malloc != "default"  # the recommended variants only
    xla = _sizes(args.xla_sizes, [] if sensitivity else sizes if args.full or args.gpu else [64])
    abl = _sizes(args.ablation_sizes, [] if sensitivity else sizes if args.full else [64, 128])
    rows, infos = [], []
    for size in sizes:
        vs = train_step.variants(args.gpu, ablations=size in abl, jit=size in xla)
        rounds = args.rounds or (5 if args.full or size <= 128 else 3)
        steps = (4 if size <= 64 else 2) if args.full else (2 if size <= 64 else 1)
        r, info = train_step.run_size(size, args.batch, vs, rounds, steps, command)
        rows += r
        infos.append(info)
    again = peak.measure(reps=3)  # the peak is the better of a measurement before and after
    measured = {k: max(v, again[k]) for k, v in measured.items()}
    return peak.rows(measured, command) + rows, {"peak": measured, "sizes": infos}


def _train_parts(sizes: list[int], args, command: str) -> tuple[list, dict]:
    from bench import peak

    rows, infos, measured = [], [], {}
    other = flags(args, sizes=False)
    for size in sizes:
        env = {**os.environ, "BENCH_TRAIN_PART": "1", "BENCH_COMMAND": command}
        argv = [sys.executable, "-m", "bench", "train", "--child", *other, "--sizes", str(size)]
        subprocess.run(argv, cwd=REPO, env=env, check=True)
        part_file = results_dir() / f"train_part_{size}.json"
        part = json.loads(part_file.read_text())
        part_file.unlink()
        rows += [r for r in part["rows"] if r["bench"] == "train"]
        infos += part["extra"]["sizes"]
        for key, value in part["extra"]["peak"].items():
            measured[key] = max(measured.get(key, 0.0), value)
    from bench.common import Row

    rows = [Row(**r) for r in rows]
    return peak.rows(measured, command) + rows, {"peak": measured, "sizes": infos}


def run_one(name: str, args) -> None:
    command = command_line([name, *flags(args)])
    load_start = _load()
    if not args.gpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
    extra: dict = {}
    if name == "peak":
        from bench import peak

        measured = peak.measure(reps=5 if args.full else 3)
        rows, extra = peak.rows(measured, command), {"peak": measured}
    elif name == "train":
        sizes = [int(s) for s in args.sizes.split(",")]
        if os.environ.get("BENCH_TRAIN_PART") or len(sizes) == 1:
            rows, extra = _train_sizes(sizes, args, os.environ.get("BENCH_COMMAND", command))
            if os.environ.get("BENCH_TRAIN_PART"):
                save(f"train_part_{sizes[0]}", rows, extra)
                return
        else:  # one process per size: memory is returned between sizes
            rows, extra = _train_parts(sizes, args, command)
        if args.malloc != "default":
            name = f"train_malloc_{args.malloc}"  # its own section; the peak rows stay train's
            rows = [
                dataclasses.replace(r, bench=name, target="", met=None)
                for r in rows
                if r.bench == "train"
            ]
    elif name == "frechet":
        from bench import frechet

        rows = frechet.run(reps=5 if args.full else 3, command=command)
    elif name == "data":
        from bench import data_benches

        if args.full:
            rows = data_benches.run(3000, 1000, 512, 3, 30.0, args.batch, command)
        else:
            rows = data_benches.run(750, 250, 512, 2, 10.0, args.batch, command)
    elif name == "dvc":
        from bench import dvc_repro

        shrink = (
            {} if (args.dvc_real or args.full) else {"train.epochs": 1, "train.epochs_decay": 1}
        )
        rows = dvc_repro.run(timeout=3600, overrides=shrink, command=command)
    else:
        raise ValueError(name)
    extra["load"] = f"{load_start} → {_load()}"
    path = save(name, rows, extra)
    log(f"{name}: {len(rows)} rows -> {path}")


def main(argv=None) -> int:
    args = parse(argv)
    names = args.names or [*ALL, "report"]
    if args.child:
        for name in names:
            run_one(name, args)
        return 0
    jobs = [(name, args) for name in names if name != "report"]
    if args.full and not args.names and args.malloc == "default":  # + the allocator check
        jobs.insert(1, ("train", argparse.Namespace(**{**vars(args), "malloc": "tuned"})))
    failed = []
    for name, job in jobs:
        t0 = time.perf_counter()
        label = name if job.malloc == "default" else f"{name} --malloc {job.malloc}"
        log(f"=== {label} ===")
        argv_child = [sys.executable, "-m", "bench", name, "--child", *flags(job)]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        if name == "train" and job.malloc == "tuned":
            env.update(TUNED_MALLOC)
        proc = subprocess.run(argv_child, cwd=REPO, env=env)
        ok = "ok" if proc.returncode == 0 else "FAILED"
        log(f"=== {label}: {ok} in {time.perf_counter() - t0:.0f}s")
        if proc.returncode:
            failed.append(label)
    if "report" in names or not args.names:
        from bench import report

        report.write()
        log(f"wrote {report_path()}")
    if failed:
        log(f"failed: {', '.join(failed)}")
        print(json.dumps({"failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
