"""Where the segment stage spends its time: cProfile of ``segment_image`` in one process.

``segment_image(..., client=None)`` runs the very functions the Dask tasks run (pass 1,
plan, pass 2, pyramid), serially in this process, so a profile names the bottleneck
function. Not a benchmark with a target: it explains the others. ``(predict)`` is the
network (``Model.predict``, the optimised copy); ``to_labels`` is the post-processing, run
in ``_finish`` on a second thread of the block task. Writes the top
functions (by own time) into docs/benchmarks.md, section ``profile``.
"""

from __future__ import annotations

import argparse
import sys

from benchmarks._data import bench_model, synthetic_slide
from benchmarks._harness import Outcome, cli_main, run_child


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--size", type=int, default=None, help="Slide side (default 2048; 1024 with --quick)."
    )
    p.add_argument("--top", type=int, default=12, help="Functions listed.")


def run(args: argparse.Namespace) -> Outcome:
    size = args.size or (1024 if args.quick else 2048)
    model = bench_model(args.workdir, args.model)
    slide = str(synthetic_slide(args.workdir, size, 1.0))
    c = run_child(
        "profile",
        [
            "--source",
            slide,
            "--model",
            model.spec,
            "--threads",
            1,
            "--out",
            args.workdir / "out" / "profile",
        ],
        args.workdir,
        label="profile",
    )
    total = c.result["seconds"]
    rows = [
        [f"`{r['function']}`", r["calls"], r["tottime"], 100 * r["tottime"] / total, r["cumtime"]]
        for r in c.result["by_tottime"][: args.top]
    ]
    eng = c.result["engine_timings"]
    keys = (
        "window_probabilities",
        "predict_window",
        "(predict)",
        "cover_cells",
        "to_labels",
        "_finish",
        "partial_stats",
        "prepare",
        "_read_window",
        "_pass2",
        "provisional_block",
        "finalize_labels",
        "image_stats",
        "tissue_mask",
    )
    seen, stages = set(), []
    for r in c.result["by_cumtime"]:
        fn = r["function"]
        if any(k in fn for k in keys) and fn not in seen:
            seen.add(fn)
            stages.append(f"{fn} {r['cumtime']:.1f} s ({r['calls']} calls)")
    notes = [
        f"{model.label}; {size}² fully-tissue slide; one process, 1 torch thread, {total:.1f} s under cProfile.",
        "segment_image's own timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in eng.items()),
        "Cumulative time of segpipe's steps: " + "; ".join(stages),
    ]
    return Outcome(
        "profile",
        "Profile of the segment stage",
        ["function", "calls", "own s", "% of total", "cumulative s"],
        rows,
        None,
        "—",
        "— (explanatory)",
        True,
        args.command,
        notes,
        args.quick,
        {"informational": True},
    )


def main(argv: list[str] | None = None) -> int:
    return cli_main("profile_segment", __doc__, add_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
