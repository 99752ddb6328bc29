"""segpipe against MONAI's sliding-window inference, same network, tile, overlap and batch.

MONAI (``monai.inferers.sliding_window_inference``) runs the network as a user would hand
it (the plain ``nn.Module``, ``model.module``) over the whole image held in memory, with roi = the card's tile, an overlap that makes its
scan interval exactly segpipe's tile stride, the same batch, and the same normalisation
(segpipe's ``prepare``, timed on MONAI's side too); it returns probabilities only. segpipe
runs its whole pipeline from the OME-Zarr (ingest excluded: MONAI is handed the image in
memory) and returns labels, stitched ids and region tables — more work. Two slides: fully
tissue, and 40 % tissue where segpipe's tissue mask skips background blocks and, inside
the blocks it reads, background cells. Targets (against the plain module): segpipe faster
at 100 % tissue (speed-up > 1) and ≥ 1.6× faster at 40 %.

A second MONAI row hands it segpipe's optimised network (``Model.inference_module``:
BatchNorm folded, channels_last, with channels_last input): segpipe against that row is
the part of the speed-up that comes from the pipeline (tissue skipping, less halo), the
rest is network execution.
"""

from __future__ import annotations

import argparse
import os
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

TARGETS = {1.0: 1.0, 0.4: 1.6}


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--size", type=int, default=None, help="Slide side (default 2048; 1024 with --quick)."
    )
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 2,
        help="segpipe's Dask workers (default: one per core).",
    )
    p.add_argument("--batch", type=int, default=8, help="Tiles per network call, both sides.")
    p.add_argument(
        "--no-reuse",
        action="store_true",
        help="Measure segpipe at 100 %% tissue again even when bench_throughput just did (same slide, model, workers, repeats).",
    )


def _segpipe(
    args: argparse.Namespace, model: str, slide: str, warm: str, tissue: float, size: int
) -> tuple[list[dict], int, str]:
    prev = load_json(args.workdir, "throughput")
    if (
        tissue == 1.0
        and not args.no_reuse
        and prev
        and prev.get("size") == size
        and prev.get("model") == model
        and prev.get("repeats") == repeats(args)
        and "net" in prev.get("raw", {})
    ):
        net = prev["raw"]["net"]
        return (
            net["pipeline_runs"],
            net["pipeline_peak"],
            "reused from bench_throughput (same slide, model, settings)",
        )
    pl = run_child(
        "pipeline",
        [
            "--source",
            slide,
            "--warmup",
            warm,
            "--model",
            model,
            "--workers",
            args.workers,
            "--repeats",
            repeats(args),
            "--out",
            args.workdir / "out" / f"monai-segpipe-{tissue}",
        ],
        args.workdir,
        label=f"monai-segpipe-t{round(tissue * 100)}",
    )
    return pl.result["runs"], pl.peak_rss, ""


def run(args: argparse.Namespace) -> Outcome:
    size = args.size or (1024 if args.quick else 2048)
    model = bench_model(args.workdir, args.model)
    warm = str(synthetic_slide(args.workdir, 1024, 1.0))
    threads = os.cpu_count() or 1
    header = [
        "tissue",
        "tool",
        "median s",
        "MP/s",
        "speed-up vs MONAI",
        "peak RSS MiB",
        "blocks done",
    ]
    rows, notes, raw, ratios, pipeline_ratios = [], [], {}, {}, {}
    for tissue, _target in TARGETS.items():
        slide = str(synthetic_slide(args.workdir, size, tissue))
        mo, mo_fast = (
            run_child(
                "monai",
                [
                    "--source",
                    slide,
                    "--model",
                    model.spec,
                    "--threads",
                    threads,
                    "--batch",
                    args.batch,
                    "--repeats",
                    repeats(args),
                    "--network",
                    network,
                ],
                args.workdir,
                label=f"monai-{network}-t{round(tissue * 100)}",
            )
            for network in ("plain", "optimised")
        )
        runs, peak, note = _segpipe(args, model.spec, slide, warm, tissue, size)
        t_monai = median(mo.result["runs"])
        t_fast = median(mo_fast.result["runs"])
        t_seg = median(r["segment"] + r["publish"] for r in runs)
        t_inc = median(r["ingest"] + r["segment"] + r["publish"] for r in runs)
        mp = mo.result["pixels"] / 1e6
        blocks = f"{runs[0].get('n_blocks', runs[0].get('blocks_processed'))}/{runs[0].get('n_blocks_total', runs[0].get('blocks_total'))}"
        pct = f"{round(tissue * 100)} %"
        rows.append(
            [
                pct,
                "MONAI sliding_window_inference (probabilities)",
                t_monai,
                mp / t_monai,
                1.0,
                mb(mo.peak_rss),
                "all",
            ]
        )
        rows.append(
            [
                pct,
                "MONAI with segpipe's optimised network (Model.inference_module)",
                t_fast,
                mp / t_fast,
                t_monai / t_fast,
                mb(mo_fast.peak_rss),
                "all",
            ]
        )
        rows.append(
            [
                pct,
                "segpipe, ingest excluded (labels + tables)",
                t_seg,
                mp / t_seg,
                t_monai / t_seg,
                mb(peak),
                blocks,
            ]
        )
        rows.append(
            [pct, "segpipe, ingest included", t_inc, mp / t_inc, t_monai / t_inc, mb(peak), blocks]
        )
        ratios[tissue] = t_monai / t_seg
        pipeline_ratios[tissue] = t_fast / t_seg
        raw[str(tissue)] = {
            "monai": mo.result,
            "monai_peak": mo.peak_rss,
            "monai_optimised": mo_fast.result,
            "monai_optimised_peak": mo_fast.peak_rss,
            "segpipe_runs": runs,
            "segpipe_peak": peak,
        }
        if note:
            notes.append(f"{pct} tissue, segpipe: {note}.")
    save_json(args.workdir, "monai", {"size": size, "model": model.spec, "raw": raw})
    notes.insert(
        0,
        f"Network: {model.label}; slides {size}² synthetic fluorescence. MONAI: one process, "
        f"{threads} torch threads, overlap {raw['1.0']['monai']['overlap']:.4f} (scan interval = segpipe's "
        f"stride), mode='constant'. segpipe: {args.workers} Dask workers × 1 thread. Median of {repeats(args)} runs.",
    )
    passed = all(ratios[t] > TARGETS[t] if t == 1.0 else ratios[t] >= TARGETS[t] for t in TARGETS)
    headline = ratios[0.4]
    notes.append(
        f"Speed-up at 100 % tissue: {ratios[1.0]:.2f} (target > 1); at 40 %: {ratios[0.4]:.2f} (target ≥ 1.6)."
    )
    notes.append(
        "Of which the pipeline (segpipe vs MONAI running the same optimised network): "
        f"{pipeline_ratios[1.0]:.2f} at 100 % tissue, {pipeline_ratios[0.4]:.2f} at 40 %; "
        "the rest is network execution (BatchNorm folded, channels_last)."
    )
    return Outcome(
        "monai",
        "segpipe vs MONAI sliding-window inference",
        header,
        rows,
        headline,
        "speed-up vs MONAI at 40 % tissue",
        "> 1 at 100 % and ≥ 1.6 at 40 %",
        passed,
        args.command,
        notes,
        args.quick,
        {"ratios": ratios, "pipeline_ratios": pipeline_ratios},
    )


def main(argv: list[str] | None = None) -> int:
    return cli_main("bench_monai", __doc__, add_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
