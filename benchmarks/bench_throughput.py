"""Throughput against the limit: segpipe's whole pipeline vs the same network alone.

The limit is the network on the slide's tiles already in memory (``load_model(...).predict``
in batches, all cores to torch). segpipe runs the whole pipeline on the same fully-tissue
synthetic slide — ingest excluded (segment + publish, from the OME-Zarr) and included —
on a Dask LocalCluster with one single-threaded worker per core, as ``segpipe run`` does.
Target: pipeline (ingest excluded) ≥ 0.85 × model-only megapixels per second.

A second row does the same with the ``classical`` model (almost no compute): it shows
what the pipeline itself costs per megapixel, the regime a GPU puts a network in.
"""

from __future__ import annotations

import argparse
import os
import sys

from benchmarks._analysis import model_only_pixels, pipeline_pixels
from benchmarks._data import bench_model, mosaic_slide, synthetic_slide
from benchmarks._harness import Outcome, cli_main, mb, median, repeats, run_child, save_json

TARGET = 0.85


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help="Slide side for the network (default 2048; 1024 with --quick).",
    )
    p.add_argument(
        "--classical-size",
        type=int,
        default=None,
        help="Slide side for the classical row (default 4096; 2048 with --quick; 0 = skip).",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 2,
        help="Dask workers (default: one per core).",
    )
    p.add_argument("--batch", type=int, default=8, help="Tiles per model call, both sides.")


def measure(args: argparse.Namespace, model_spec: str, slide: str, warm: str, tag: str) -> dict:
    r = repeats(args)
    threads = os.cpu_count() or 1
    mo = run_child(
        "model-only",
        [
            "--source",
            slide,
            "--model",
            model_spec,
            "--threads",
            threads,
            "--batch",
            args.batch,
            "--repeats",
            r,
        ],
        args.workdir,
        label=f"throughput-{tag}-model",
    )
    pl = run_child(
        "pipeline",
        [
            "--source",
            slide,
            "--warmup",
            warm,
            "--model",
            model_spec,
            "--workers",
            args.workers,
            "--repeats",
            r,
            "--out",
            args.workdir / "out" / f"throughput-{tag}",
        ],
        args.workdir,
        label=f"throughput-{tag}-pipeline",
    )
    runs = pl.result["runs"]
    return {
        "pixels": mo.result["pixels"],
        "n_tiles": mo.result["n_tiles"],
        "tile": mo.result["tile"],
        "model_s": median(mo.result["runs"]),
        "model_runs": mo.result["runs"],
        "model_peak": mo.peak_rss,
        "excl_s": median(x["segment"] + x["publish"] for x in runs),
        "incl_s": median(x["ingest"] + x["segment"] + x["publish"] for x in runs),
        "ingest_s": median(x["ingest"] for x in runs),
        "pipeline_runs": runs,
        "pipeline_peak": pl.peak_rss,
        "api": pl.result["api"],
        "blocks": f"{runs[0].get('n_blocks', runs[0].get('blocks_processed'))}/"
        f"{runs[0].get('n_blocks_total', runs[0].get('blocks_total'))}",
        "n_regions": runs[0].get("n_regions"),
        "pipeline_work": pipeline_pixels(_side(slide), model_spec),
        "model_work": model_only_pixels(_side(slide), mo.result["tile"], mo.result["stride"]),
    }


def _side(slide: str) -> tuple[int, int]:
    from segpipe.io import open_image

    with open_image(slide) as src:
        return tuple(src.level_shapes[0])  # type: ignore[return-value]


def run(args: argparse.Namespace) -> Outcome:
    size = args.size or (1024 if args.quick else 2048)
    csize = (
        args.classical_size if args.classical_size is not None else (2048 if args.quick else 4096)
    )
    model = bench_model(args.workdir, args.model)
    warm = str(synthetic_slide(args.workdir, 1024, 1.0))
    cases = [("net", model.spec, model.label, str(synthetic_slide(args.workdir, size, 1.0)), size)]
    if csize and model.spec != "classical":
        cases.append(
            ("classical", "classical", "classical", str(mosaic_slide(args.workdir, csize)), csize)
        )
    header = [
        "model",
        "slide",
        "side",
        "median s",
        "MP/s",
        "× model-only",
        "peak RSS MiB",
        "work done",
    ]
    rows, raw, notes = [], {}, []
    headline = None
    for tag, spec, _label, slide, side in cases:
        m = measure(args, spec, slide, warm, tag)
        raw[tag] = m
        mp = m["pixels"] / 1e6
        short = "network" if tag == "net" else "classical"
        name = f"{side}² fully tissue"
        rows.append(
            [
                short,
                name,
                "model only (tiles in memory)",
                m["model_s"],
                mp / m["model_s"],
                1.0,
                mb(m["model_peak"]),
                f"{m['n_tiles']} tiles",
            ]
        )
        rows.append(
            [
                short,
                name,
                "segpipe, ingest excluded",
                m["excl_s"],
                mp / m["excl_s"],
                m["model_s"] / m["excl_s"],
                mb(m["pipeline_peak"]),
                f"{m['blocks']} blocks, {m['pipeline_work'][0]} passes",
            ]
        )
        rows.append(
            [
                short,
                name,
                "segpipe, ingest included",
                m["incl_s"],
                mp / m["incl_s"],
                m["model_s"] / m["incl_s"],
                mb(m["pipeline_peak"]),
                m["blocks"],
            ]
        )
        if tag == "net":
            headline = m["model_s"] / m["excl_s"]
        pw, mw = m["pipeline_work"], m["model_work"]
        notes.append(
            f"{short}: the network sees {pw[1] / 1e6:.1f} MP in segpipe ({pw[0]} forward passes: {pw[2]}) "
            f"against {mw[1] / 1e6:.1f} MP model-only ({mw[0]} tiles of {m['tile']}²): ×{pw[1] / mw[1]:.2f} the work."
        )
    save_json(
        args.workdir,
        "throughput",
        {"size": size, "model": model.spec, "repeats": repeats(args), "raw": raw},
    )
    notes.append(
        f"Network: {model.label}. Model-only uses {os.cpu_count()} torch threads in one process; "
        f"segpipe {args.workers} Dask workers × 1 thread. Batch {args.batch} tiles both sides. "
        f"Median of {repeats(args)} runs; the pipeline is timed after a warm-up image (model loaded on the workers)."
    )
    notes.append(
        "Pipeline seconds = segment stage (read OME-Zarr, normalise, predict, post-process, stitch, "
        "labels + pyramid, region statistics) + publish (tables); 'included' adds ingest (TIFF → OME-Zarr)."
    )
    passed = headline is not None and headline >= TARGET
    return Outcome(
        "throughput",
        "Throughput vs the network alone",
        header,
        rows,
        headline,
        "segpipe (ingest excluded) / model-only",
        f"≥ {TARGET}",
        passed,
        args.command,
        notes,
        args.quick,
        {"raw": raw},
    )


def main(argv: list[str] | None = None) -> int:
    return cli_main("bench_throughput", __doc__, add_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
