"""Ingest throughput vs tifffile's raw tile decode, and peak memory over all processes.

    python benchmarks/bench_ingest.py               # 8k x 8k RGB JPEG-tiled pyramid
    python benchmarks/bench_ingest.py --big         # 32k x 32k, written tile by tile
    python benchmarks/bench_ingest.py --workers 2 --compression zlib

Writes a synthetic tiled pyramidal TIFF (tile by tile: the image is never held in memory),
then measures

* raw decode: tifffile reading and decoding every level-0 tile in one thread;
* ingest: :func:`segpipe.ingest.ingest_image` on a LocalCluster of ``--workers`` single-
  threaded worker processes (all levels written, zstd), after a small warm-up ingest (so
  worker start-up and imports are not counted; ``--cold`` counts them);
* peak RSS summed over this process and all its child processes (psutil, sampled every
  50 ms) during the ingest.

It prints MP/s for both and their ratio (ingest throughput per worker / raw decode).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import tifffile

TILE = 256


def _tile(y0: int, x0: int, h: int, w: int, scale: int) -> np.ndarray:
    """Smooth synthetic RGB content of tile (y0, x0) at pyramid scale ``scale``."""
    yy, xx = np.mgrid[y0 : y0 + h, x0 : x0 + w].astype(np.float32) * scale
    r = 128 + 100 * np.sin(yy / 300.0) * np.cos(xx / 500.0)
    g = 128 + 80 * np.sin((yy + xx) / 700.0)
    b = 200 - 60 * np.cos(xx / 250.0)
    noise = ((yy * 7 + xx * 13) % 17).astype(np.float32)
    return np.clip(np.stack([r, g, b], -1) + noise[..., None], 0, 255).astype(np.uint8)


def _tiles(shape: tuple[int, int], scale: int) -> Iterator[np.ndarray]:
    ny, nx = shape
    for y0 in range(0, ny, TILE):
        for x0 in range(0, nx, TILE):
            t = np.zeros((TILE, TILE, 3), np.uint8)
            h, w = min(TILE, ny - y0), min(TILE, nx - x0)
            t[:h, :w] = _tile(y0, x0, h, w, scale)
            yield t


def write_pyramid(path: Path, size: int, compression: str) -> None:
    """Tiled BigTIFF pyramid (levels as SubIFDs), tile by tile."""
    shapes = [(size, size)]
    while max(shapes[-1]) > 1024:
        shapes.append(((shapes[-1][0] + 1) // 2, (shapes[-1][1] + 1) // 2))
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, shape in enumerate(shapes):
            tw.write(
                _tiles(shape, 2**i),
                shape=(*shape, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                photometric="rgb",
                compression=compression,
                subifds=len(shapes) - 1 if i == 0 else None,
                subfiletype=1 if i else 0,
                resolution=(1e4 / 0.25 / 2**i,) * 2,
                resolutionunit="CENTIMETER",
                metadata=None,
            )


def raw_decode(path: Path) -> float:
    """Seconds tifffile needs to read + decode every level-0 tile in one thread."""
    start = time.perf_counter()
    with tifffile.TiffFile(path) as tif:
        for _ in tif.pages[0].segments(maxworkers=1):
            pass
    return time.perf_counter() - start


class PeakRSS:
    """Sample the summed RSS of this process and all its descendants."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process(os.getpid())
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--big", action="store_true", help="32k x 32k instead of 8k x 8k")
    parser.add_argument("--size", type=int, default=None, help="side in pixels (overrides --big)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--shard", type=int, default=None)
    parser.add_argument("--compression", default="jpeg", help="TIFF tile compression")
    parser.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    parser.add_argument(
        "--cold", action="store_true", help="no warm-up ingest: count worker start-up and imports"
    )
    args = parser.parse_args()
    size = args.size or (32768 if args.big else 8192)

    from distributed import Client, LocalCluster

    from segpipe.ingest import IngestSpec, ingest_image

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        src = Path(tmp) / "bench.tif"
        t0 = time.perf_counter()
        write_pyramid(src, size, args.compression)
        print(
            f"wrote {size}x{size} RGB ({args.compression}) in {time.perf_counter() - t0:.1f} s, "
            f"{src.stat().st_size / 1e6:.0f} MB"
        )
        mp = size * size / 1e6
        t_raw = raw_decode(src)
        print(f"raw decode (tifffile, 1 thread):  {mp / t_raw:8.1f} MP/s  ({t_raw:.2f} s)")
        with (
            LocalCluster(
                n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            if not args.cold:  # workers import readers / codecs and open a TIFF once
                warm = Path(tmp) / "warm.tif"
                write_pyramid(warm, 512, args.compression)
                ingest_image(str(warm), str(Path(tmp) / "warm.ome.zarr"), client=client)
            base = sum(
                p.memory_info().rss
                for p in [psutil.Process(), *psutil.Process().children(recursive=True)]
            )
            with PeakRSS() as peak:
                t0 = time.perf_counter()
                meta = ingest_image(
                    str(src),
                    str(Path(tmp) / "bench.ome.zarr"),
                    IngestSpec(chunk=args.chunk, shard=args.shard),
                    client=client,
                )
                t_ing = time.perf_counter() - t0
        per_worker = mp / t_ing / args.workers
        print(
            f"ingest ({args.workers} worker(s), {len(meta.levels)} levels): {mp / t_ing:8.1f} MP/s  "
            f"({t_ing:.2f} s; {per_worker:.1f} MP/s per worker)"
        )
        print(f"ratio ingest-per-worker / raw decode: {per_worker / (mp / t_raw):.2f}")
        print(
            f"peak RSS, all processes: {peak.peak / 2**20:.0f} MiB "
            f"(cluster idle before: {base / 2**20:.0f} MiB; image {size * size * 3 / 2**20:.0f} MiB)"
        )


if __name__ == "__main__":
    main()
