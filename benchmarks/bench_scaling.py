"""Scaling: the same slide with 1 and with 2 Dask workers (one thread each) on this machine.

The pipeline (ingest excluded, and included) on the fully-tissue slide of
``bench_throughput`` with the same network. Target: 2 workers ≥ 1.6× as fast as 1
(80 % parallel efficiency on 2 cores).
"""

from __future__ import annotations

import argparse
import sys

from benchmarks._data import bench_model, synthetic_slide
from benchmarks._harness import (
    Outcome,
    cli_main,
    load_json,
    mb,
    median,
    repeats,
    run_child,
    save_json,
)

TARGET = 1.6


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--size", type=int, default=None, help="Slide side (default 2048; 1024 with --quick)."
    )
    p.add_argument(
        "--max-workers",
        type=int,
        default=2,
        help="Largest worker count (default 2 = the cores here).",
    )
    p.add_argument(
        "--no-reuse",
        action="store_true",
        help="Measure the 2-worker case even when bench_throughput just did.",
    )


def run(args: argparse.Namespace) -> Outcome:
    size = args.size or (1024 if args.quick else 2048)
    model = bench_model(args.workdir, args.model)
    slide = str(synthetic_slide(args.workdir, size, 1.0))
    warm = str(synthetic_slide(args.workdir, 1024, 1.0))
    header = [
        "workers",
        "ingest excluded, median s",
        "speed-up",
        "ingest included, median s",
        "speed-up",
        "peak RSS MiB",
    ]
    rows, raw, notes = [], {}, []
    prev = load_json(args.workdir, "throughput")
    for w in range(1, args.max_workers + 1):
        if (
            w == 2
            and not args.no_reuse
            and prev
            and prev.get("size") == size
            and prev.get("model") == model.spec
            and prev.get("repeats") == repeats(args)
            and "net" in prev.get("raw", {})
        ):
            runs, peak = prev["raw"]["net"]["pipeline_runs"], prev["raw"]["net"]["pipeline_peak"]
            notes.append("2 workers: reused from bench_throughput (same slide, model, settings).")
        else:
            c = run_child(
                "pipeline",
                [
                    "--source",
                    slide,
                    "--warmup",
                    warm,
                    "--model",
                    model.spec,
                    "--workers",
                    w,
                    "--repeats",
                    repeats(args),
                    "--out",
                    args.workdir / "out" / f"scaling-{w}",
                ],
                args.workdir,
                label=f"scaling-{w}",
            )
            runs, peak = c.result["runs"], c.peak_rss
        raw[w] = {"runs": runs, "peak": peak}
    base_ex = median(r["segment"] + r["publish"] for r in raw[1]["runs"])
    base_in = median(r["ingest"] + r["segment"] + r["publish"] for r in raw[1]["runs"])
    for w, d in raw.items():
        ex = median(r["segment"] + r["publish"] for r in d["runs"])
        inc = median(r["ingest"] + r["segment"] + r["publish"] for r in d["runs"])
        rows.append([w, ex, base_ex / ex, inc, base_in / inc, mb(d["peak"])])
    save_json(args.workdir, "scaling", {"size": size, "model": model.spec, "raw": raw})
    top = max(raw)
    ratio = base_ex / median(r["segment"] + r["publish"] for r in raw[top]["runs"])
    notes.insert(
        0,
        f"Network: {model.label}; {size}² fully-tissue slide ({(size // 1024) ** 2} blocks of 1024²); "
        f"median of {repeats(args)} runs after a warm-up image.",
    )
    return Outcome(
        "scaling",
        "Scaling: 1 vs 2 Dask workers",
        header,
        rows,
        ratio,
        f"speed-up {top} workers / 1 (ingest excluded)",
        f"≥ {TARGET}",
        ratio >= TARGET,
        args.command,
        notes,
        args.quick,
    )


def main(argv: list[str] | None = None) -> int:
    return cli_main("bench_scaling", __doc__, add_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
