"""Incremental reruns: ``segpipe run`` again on an unchanged 50-image archive.

The first run processes every image; each rerun must process none (all skipped: same
files, model and settings) and take seconds. For scale, the same command on an empty
archive is timed too: what is left is the fixed start-up cost (Prefect, the Dask cluster).
Target: no image processed and the rerun done in ≤ 15 s.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys

from benchmarks._data import png_archive
from benchmarks._harness import Outcome, cli_main, mb, median, repeats, run_child, save_json

TARGET_S = 15.0


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--images", type=int, default=None, help="Archive size (default 50; 10 with --quick)."
    )
    p.add_argument("--side", type=int, default=512, help="Image side in px (default 512).")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--run-model",
        default="classical",
        help="Model of the runs (default classical: the skip logic does not depend on it).",
    )


def _counts(summary: str) -> dict[str, int]:
    found = {k: int(v) for v, k in re.findall(r"(\d+) (done|skipped|failed)", summary)}
    return found


def run(args: argparse.Namespace) -> Outcome:
    n = args.images or (10 if args.quick else 50)
    archive = png_archive(args.workdir, n, args.side)
    empty = args.workdir / "archives" / "empty"
    empty.mkdir(parents=True, exist_ok=True)
    results = args.workdir / "out" / "incremental"
    shutil.rmtree(results, ignore_errors=True)
    base = ["--model", args.run_model, "--workers", args.workers]
    first = run_child(
        "cli",
        ["--source", archive, "--out", results, *base],
        args.workdir,
        label="incremental-first",
    )
    reruns = [
        run_child(
            "cli",
            ["--source", archive, "--out", results, *base],
            args.workdir,
            label=f"incremental-rerun-{i}",
        )
        for i in range(repeats(args))
    ]
    shutil.rmtree(args.workdir / "out" / "incremental-empty", ignore_errors=True)
    blank = run_child(
        "cli",
        ["--source", empty, "--out", args.workdir / "out" / "incremental-empty", *base],
        args.workdir,
        label="incremental-empty",
    )
    t_first = first.result["seconds"]
    t_re = median(r.result["seconds"] for r in reruns)
    counts = [_counts(r.result["summary"]) for r in reruns]
    processed = max((c.get("done", -1) + c.get("failed", 0) for c in counts), default=-1)
    skipped = min((c.get("skipped", -1) for c in counts), default=-1)
    header = ["run", "median s", "images done", "images skipped", "peak RSS MiB"]
    fc = _counts(first.result["summary"])
    rows = [
        ["first run", t_first, fc.get("done", "?"), fc.get("skipped", "?"), mb(first.peak_rss)],
        [
            f"rerun, unchanged archive (×{len(reruns)})",
            t_re,
            processed,
            skipped,
            mb(max(r.peak_rss for r in reruns)),
        ],
        ["same command on an empty archive", blank.result["seconds"], 0, 0, mb(blank.peak_rss)],
    ]
    save_json(
        args.workdir,
        "incremental",
        {"first": first.result, "reruns": [r.result for r in reruns], "empty": blank.result},
    )
    passed = processed == 0 and skipped == n and t_re <= TARGET_S
    notes = [
        f"{n} PNGs of {args.side}² px, model {args.run_model}, `segpipe run ARCHIVE --out RESULTS --model {args.run_model} "
        f"--workers {args.workers}` in a fresh process each time (wall time of the whole command).",
        f"Rerun summary: {reruns[0].result['summary']}",
    ]
    return Outcome(
        "incremental",
        "Incremental rerun on an unchanged archive",
        header,
        rows,
        t_re,
        "rerun seconds",
        f"0 images processed, ≤ {TARGET_S:.0f} s",
        passed,
        args.command,
        notes,
        args.quick,
    )


def main(argv: list[str] | None = None) -> int:
    return cli_main("bench_incremental", __doc__, add_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
