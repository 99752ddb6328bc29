"""Peak memory of a whole run (all processes) on an 8k² and a 32k² slide.

Each run is one cold process tree — the pipeline's driver, the Dask nannies and workers —
doing ingest → segment → publish of one slide (25 % tissue by default, ``--full-tissue``
for 100 %; a mosaic of a rendered
synthetic patch, so both sizes have the same content statistics; written tile by tile).
Memory = RSS summed over every process of the tree, sampled every 50 ms; the peak is
reported, overall and per stage. Target: the 32k² peak ≤ 1.2 × the 8k² peak (memory flat
in image size).
"""

from __future__ import annotations

import argparse
import sys

from benchmarks._data import bench_model, mosaic_slide
from benchmarks._harness import (
    ChildRun,
    Outcome,
    cli_main,
    mb,
    median,
    repeats,
    run_child,
    save_json,
)

TARGET = 1.2


def add_args(p: argparse.ArgumentParser) -> None:
    _add_tissue_arg(p)
    p.add_argument(
        "--sizes",
        default=None,
        help="Small,large slide sides (default 8192,32768; 2048,8192 with --quick).",
    )
    p.add_argument(
        "--large-repeats",
        type=int,
        default=1,
        help="Runs of the large slide (default 1: it is the longest run of the suite).",
    )
    p.add_argument("--workers", type=int, default=2, help="Dask workers.")
    p.add_argument(
        "--mem-model",
        default="classical",
        help="Model for this benchmark (default classical: the network at 32k² would take hours on a CPU; memory per block does not depend on the model's speed).",
    )


def _add_tissue_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--full-tissue",
        action="store_true",
        help="Fully-tissue slides (default: 25 %% tissue, every other 2048² patch in both directions, "
        "which keeps the 32k² run within a 2-core machine's time budget).",
    )


def _stage_peaks(run: ChildRun, info: dict) -> tuple[int, int]:
    t0 = info["t_start"]
    t1 = t0 + info["ingest"]
    return run.peak_between(t0, t1), run.peak_between(
        t1, t1 + info["segment"] + info["publish"] + 0.5
    )


def run(args: argparse.Namespace) -> Outcome:
    small, large = (
        int(v) for v in (args.sizes or ("2048,8192" if args.quick else "8192,32768")).split(",")
    )
    model = bench_model(args.workdir, args.mem_model)
    header = [
        "slide",
        "runs",
        "median peak RSS MiB (all processes)",
        "peak in ingest",
        "peak in segment+publish",
        "max processes",
        "median s",
        "regions",
    ]
    rows, raw, peaks = [], {}, {}
    for size, n in ((small, repeats(args)), (large, 1 if args.quick else args.large_repeats)):
        slide = str(mosaic_slide(args.workdir, size, sparse=not args.full_tissue))
        runs = []
        for i in range(n):
            c = run_child(
                "pipeline",
                [
                    "--source",
                    slide,
                    "--model",
                    model.spec,
                    "--workers",
                    args.workers,
                    "--repeats",
                    1,
                    "--out",
                    args.workdir / "out" / f"memory-{size}",
                ],
                args.workdir,
                label=f"memory-{size}-{i}",
                timeout=3 * 3600,
            )
            info = c.result["runs"][0]
            pi, ps = _stage_peaks(c, info)
            runs.append(
                {
                    "peak": c.peak_rss,
                    "ingest_peak": pi,
                    "segment_peak": ps,
                    "procs": c.n_procs,
                    "seconds": info["total"],
                    "n_regions": info.get("n_regions"),
                    "info": info,
                    "startup_s": c.result.get("startup_s"),
                }
            )
        peaks[size] = median(r["peak"] for r in runs)
        raw[size] = runs
        rows.append(
            [
                f"{size}² ({size * size / 1e6:.0f} MP)",
                n,
                mb(peaks[size]),
                mb(median(r["ingest_peak"] for r in runs)),
                mb(median(r["segment_peak"] for r in runs)),
                max(r["procs"] for r in runs),
                median(r["seconds"] for r in runs),
                runs[0]["n_regions"],
            ]
        )
    save_json(args.workdir, "memory", {"sizes": [small, large], "raw": raw})
    ratio = peaks[large] / peaks[small]
    notes = [
        f"Model: {model.label}; {'fully-tissue' if args.full_tissue else '25 %-tissue (every other 2048² patch)'} "
        f"mosaic slides; {args.workers} Dask workers × 1 thread, ingest chunks 1024², "
        f"cold start (cluster start-up included in the run and in its memory).",
        f"The large slide has {large * large / (small * small):.0f}× the pixels of the small one.",
    ]
    return Outcome(
        "memory",
        "Peak memory: flat in image size?",
        header,
        rows,
        ratio,
        f"peak RSS {large}² / {small}²",
        f"≤ {TARGET}",
        ratio <= TARGET,
        args.command,
        notes,
        args.quick,
        {"raw": raw},
    )


def main(argv: list[str] | None = None) -> int:
    return cli_main("bench_memory", __doc__, add_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
