"""Ingest against tifffile's raw decode of the same slide (8k² and 32k²).

tifffile reading and decoding every level-0 tile in one thread (``raw_decode`` of the io
owner's ``benchmarks/bench_ingest.py``, nothing kept) is the speed limit of reading the
file; segpipe's ingest also writes zstd OME-Zarr chunks and builds the pyramid, on a Dask
LocalCluster (one single-threaded worker per core). Both in megapixels per second — ingest
per worker, to compare with the one decoding thread — and the peak memory of ingest (all
processes) on both sizes.
Targets: ingest per worker ≥ 0.33× the raw decode speed (decode + encode + pyramid ≈ 3
passes over the pixels), and the 32k² ingest peak ≤ 1.2× the 8k² one (flat in size).
Ingest is measured on a warm cluster (a 1024² warm-up ingest first); ``--reuse-memory``
takes the ingest stage of ``bench_memory``'s cold runs instead.
"""

from __future__ import annotations

import argparse
import os
import sys

from benchmarks._data import mosaic_slide, synthetic_slide
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

TARGET_SPEED = 0.33
TARGET_MEM = 1.2


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sizes",
        default=None,
        help="Small,large sides (default 8192,32768; 2048,8192 with --quick).",
    )
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    p.add_argument(
        "--reuse-memory",
        action="store_true",
        help="Take the ingest figures from bench_memory's cold runs instead of measuring warm ingests here.",
    )


def run(args: argparse.Namespace) -> Outcome:
    sizes = [
        int(v) for v in (args.sizes or ("2048,8192" if args.quick else "8192,32768")).split(",")
    ]
    mem = load_json(args.workdir, "memory") if args.reuse_memory else None
    warm = str(synthetic_slide(args.workdir, 1024, 1.0))
    header = [
        "slide",
        "tifffile raw decode (1 thread), median s",
        "MP/s",
        "segpipe ingest, median s",
        "MP/s",
        "MP/s per worker",
        "per worker / decode",
        "ingest peak RSS MiB (all processes)",
    ]
    rows, raw, notes = [], {}, []
    speed, peaks = {}, {}
    for i, size in enumerate(sizes):
        slide = str(mosaic_slide(args.workdir, size))
        n = repeats(args) if i == 0 or args.quick else 1
        dec = run_child(
            "decode",
            ["--source", slide, "--workers", args.workers, "--repeats", n],
            args.workdir,
            label=f"ingest-decode-{size}",
        )
        runs = (mem or {}).get("raw", {}).get(str(size))
        if runs:
            t_ing = [r["info"]["ingest"] for r in runs]
            peak = median(r["ingest_peak"] for r in runs)
            notes.append(
                f"{size}²: ingest figures from bench_memory's {len(runs)} cold run(s) (workers not warm)."
            )
        else:
            c = run_child(
                "ingest",
                [
                    "--source",
                    slide,
                    "--warmup",
                    warm,
                    "--workers",
                    args.workers,
                    "--repeats",
                    n,
                    "--out",
                    args.workdir / "out" / f"ingest-{size}",
                ],
                args.workdir,
                label=f"ingest-{size}",
            )
            t_ing = [r["seconds"] for r in c.result["runs"]]
            peak = c.peak_rss
        mp = size * size / 1e6
        td, ti = median(dec.result["runs"]), median(t_ing)
        speed[size] = (mp / ti / args.workers) / (mp / td)
        peaks[size] = peak
        raw[size] = {"decode": dec.result, "ingest_s": t_ing, "peak": peak}
        rows.append(
            [f"{size}²", td, mp / td, ti, mp / ti, mp / ti / args.workers, speed[size], mb(peak)]
        )
    save_json(args.workdir, "ingest_raw", {"raw": raw})
    mem_ratio = peaks[sizes[-1]] / peaks[sizes[0]]
    worst = min(speed.values())
    notes.insert(
        0,
        f"Source: tiled (256²) zlib BigTIFF mosaics, one uint16 channel; ingest writes 1024² zstd chunks "
        f"+ pyramid with {args.workers} Dask workers. The io owner's `python benchmarks/bench_ingest.py [--big]` measures "
        f"the same on an RGB JPEG-tiled pyramid (standalone, not part of this suite's timing budget).",
    )
    notes.append(
        f"Ingest peak memory {sizes[-1]}² / {sizes[0]}²: {mem_ratio:.2f} (target ≤ {TARGET_MEM})."
    )
    passed = worst >= TARGET_SPEED and mem_ratio <= TARGET_MEM
    return Outcome(
        "ingest_raw",
        "Ingest vs tifffile's raw decode",
        header,
        rows,
        worst,
        "ingest speed per worker / raw decode speed (worst size)",
        f"≥ {TARGET_SPEED}, and ingest peak {sizes[-1]}²/{sizes[0]}² ≤ {TARGET_MEM}",
        passed,
        args.command,
        notes,
        args.quick,
        {"mem_ratio": mem_ratio},
    )


def main(argv: list[str] | None = None) -> int:
    return cli_main("bench_ingest_raw", __doc__, add_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
