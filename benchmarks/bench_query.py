"""Queries on many small images' results: ``segpipe query`` before and after packing.

Each image of a run writes its own row and regions files; at the end of the run they are
packed into one file per run and table (``segpipe.tables.pack_run``). This benchmark writes
the tables of ``--images`` small images (one run, ``--regions`` rows each, as the pipeline
writes them: ``write_image_row`` / ``write_regions``), times ``segpipe query`` (the whole
command, a fresh process each time) on the regions and the images tables, packs the run,
and times the same queries again. Target: the packed regions query ≥ 5× faster.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from benchmarks._harness import Outcome, cli_main, median, repeats, save_json

TARGET = 5.0
RUN_ID = "20261126T000000Z-query0"
QUERIES = {
    "regions": "select count(*), count(distinct image_id), avg(area_px) from regions",
    "images": "select status, count(*) from images group by 1",
}


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", type=int, default=None, help="Images (default 10000; 200 with --quick).")
    p.add_argument("--regions", type=int, default=300, help="Regions per image (default 300).")


def _columns(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    area = rng.integers(20, 200, n).astype(np.int64)
    y0, x0 = rng.integers(0, 1000, (2, n)).astype(np.int64)
    return {
        "label": np.arange(1, n + 1, dtype=np.uint32), "class": np.full(n, "nucleus", dtype=object),
        "area_px": area, "area_um2": area * 0.25, "centroid_y": y0 + 5.0, "centroid_x": x0 + 5.0,
        "bbox_y0": y0, "bbox_x0": x0, "bbox_y1": y0 + 10, "bbox_x1": x0 + 10,
        "mean_intensity": rng.random((n, 3)), "std_intensity": rng.random((n, 3)),
        "perimeter_px": rng.random(n) * 30,
    }  # fmt: skip


def _write(results: Path, n: int, regions: int) -> list[str]:
    from segpipe import tables

    shutil.rmtree(results, ignore_errors=True)
    tables.init_results(str(results))
    now = datetime.now(timezone.utc)
    ids = [f"img_{i:05d}" for i in range(n)]
    for i, image_id in enumerate(ids):
        tables.write_regions(str(results), image_id, RUN_ID, _columns(regions, i))
        tables.write_image_row(str(results), {"image_id": image_id, "run_id": RUN_ID, "status": "done",
                                              "n_regions": regions, "updated_at": now})  # fmt: skip
    return ids


def _time_query(results: Path, sql: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run([str(Path(sys.executable).with_name("segpipe")), "query", str(results), sql, "-f", "csv"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return time.perf_counter() - t0, proc.stdout.strip().splitlines()[-1]


def run(args: argparse.Namespace) -> Outcome:
    from segpipe import tables

    n = args.images or (200 if args.quick else 10000)
    results = args.workdir / "out" / "query"
    t0 = time.perf_counter()
    ids = _write(results, n, args.regions)
    t_write = time.perf_counter() - t0
    r = repeats(args)
    files = {"per image": sum(1 for _ in (results / "tables").rglob("*.parquet"))}
    timed: dict[tuple[str, str], tuple[float, str]] = {}
    for name, sql in QUERIES.items():
        runs = [_time_query(results, sql) for _ in range(r)]
        timed["per image", name] = (median(s for s, _ in runs), runs[0][1])
    t0 = time.perf_counter()
    summary = tables.pack_run(str(results), RUN_ID, ids)
    t_pack = time.perf_counter() - t0
    files["packed"] = sum(1 for _ in (results / "tables").rglob("*.parquet"))
    for name, sql in QUERIES.items():
        runs = [_time_query(results, sql) for _ in range(r)]
        timed["packed", name] = (median(s for s, _ in runs), runs[0][1])
    same = all(timed["per image", q][1] == timed["packed", q][1] for q in QUERIES)
    speedup = timed["per image", "regions"][0] / timed["packed", "regions"][0]
    header = ["table files", "files", "regions query s", "images query s"]
    rows = [[layout, files[layout], timed[layout, "regions"][0], timed[layout, "images"][0]]
            for layout in ("per image", "packed")]  # fmt: skip
    save_json(args.workdir, "query", {"timed": {f"{k[0]}/{k[1]}": v for k, v in timed.items()},
                                      "pack_s": t_pack, "write_s": t_write, "files": files})  # fmt: skip
    notes = [
        f"{n} images × {args.regions} regions, one run, written with `write_image_row` / `write_regions` "
        f"in {t_write:.0f} s; `pack_run` took {t_pack:.1f} s ({summary.images} row files, "
        f"{summary.regions} regions files packed).",
        f"Queries (`segpipe query RESULTS SQL -f csv`, whole command, median of {r}): "
        + "; ".join(f"`{sql}`" for sql in QUERIES.values()) + ".",
        f"Same answers before and after packing: {'yes' if same else 'NO'} "
        f"(regions: {timed['packed', 'regions'][1]}).",
    ]
    return Outcome("query", "Queries on many small images: per-image files vs packed", header, rows, speedup,
                   "packed regions query speed-up", f"≥ {TARGET:.0f}×", same and speedup >= TARGET,
                   args.command, notes, args.quick)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return cli_main("bench_query", __doc__, add_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
