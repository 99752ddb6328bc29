"""Load: many small images and a few large slides, bounded memory, same results as one by one.

Each case is one real ``segpipe run`` subprocess; a sampler thread sums the RSS of the
run's whole process tree (flow, Dask scheduler, nanny and worker processes) every 0.2 s
and the peak is printed (``-s`` shows it) and asserted under a bound. "One by one" is the
in-memory ``segpipe.segment_array`` of each image: same object count and areas per image.

Default run: 20 small PNGs. ``-m slow``: 1,000 small PNGs, two 8k² slides; set
``RELIABILITY_SLIDE_SIDE=32768`` for the 32k² case.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image
from reliability_helpers import SEGPIPE

from segpipe import tables

pytestmark = pytest.mark.timeout(3600)


class PeakRSS:
    """Peak summed RSS (bytes) of a process and all its descendants, sampled in a thread."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        self.pid, self.every, self.peak = pid, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            total = 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for proc in procs:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.every)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _measured_run(archive: Path, results: Path, env: dict[str, str], timeout: float) -> tuple[float, int, str]:
    t0 = time.monotonic()
    proc = subprocess.Popen([SEGPIPE, "run", str(archive), "--out", str(results)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    with PeakRSS(proc.pid) as rss:
        out, err = proc.communicate(timeout=timeout)
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, err[-3000:]
    return seconds, rss.peak, out


def _areas_by_image(results: Path) -> dict[str, list[int]]:
    con = tables.open_results(str(results))
    rows = con.execute("select image_id, area_px from regions order by image_id, area_px").fetchall()
    out: dict[str, list[int]] = {}
    for image_id, area in rows:
        out.setdefault(image_id, []).append(int(area))
    return out


def _one_by_one(image: np.ndarray) -> list[int]:
    from segpipe import segment_array

    labels = segment_array(image, model="classical")
    return sorted(int(a) for a in np.bincount(labels.ravel())[1:] if a > 0)


def _small_archive(folder: Path, n: int) -> dict[str, np.ndarray]:
    from segpipe.synthetic import nuclei_sample

    folder.mkdir()
    images = {}
    for i in range(n):
        image, _ = nuclei_sample((64, 64), rng=i, modality="fluorescence", diameter_px=(6, 14),
                                 jpeg_probability=0.0, tissue_edge_probability=0.0)
        Image.fromarray(image[0]).save(folder / f"img{i:04d}.png")
        images[f"img{i:04d}"] = image[0]
    return images


def _many_small(n: int, tmp_path: Path, popen_env, concurrency: int) -> None:
    images = _small_archive(tmp_path / "archive", n)
    results = tmp_path / "results"
    env = popen_env(settings={"run.concurrency": concurrency})
    seconds, peak, _ = _measured_run(tmp_path / "archive", results, env, timeout=3000)
    print(f"\nLOAD {n} x 64x64 PNG: {seconds:.1f} s, peak RSS {peak / 2**20:.0f} MiB "
          f"(concurrency {concurrency})")
    states = tables.image_states(str(results))
    assert len(states) == n and {s["status"] for s in states.values()} == {"done"}
    got = _areas_by_image(results)
    for image_id, image in images.items():
        assert got.get(image_id, []) == _one_by_one(image), image_id
    assert peak < 4 * 2**30, f"peak RSS {peak / 2**20:.0f} MiB"


def test_many_small_images(tmp_path, popen_env):
    _many_small(20, tmp_path, popen_env, concurrency=4)


@pytest.mark.slow
def test_thousand_small_images(tmp_path, popen_env):
    _many_small(1000, tmp_path, popen_env, concurrency=4)


@pytest.mark.slow
def test_large_slides(tmp_path, popen_env):
    from segpipe.io import open_image
    from segpipe.synthetic import write_slide

    side = int(os.environ.get("RELIABILITY_SLIDE_SIDE", "8192"))
    archive = tmp_path / "archive"
    archive.mkdir()
    for i in range(2):
        write_slide(archive / f"slide{i}.tif", shape=(side, side), kind="fluorescence", seed=i,
                    tissue_fraction=0.5, mpp=0.5)
    results = tmp_path / "results"
    env = popen_env(settings={"ingest.chunk": 1024, "ingest.min_size": 1024, "run.concurrency": 1},
                    SEGPIPE_RUN__N_WORKERS="2")
    seconds, peak, _ = _measured_run(archive, results, env, timeout=3000)
    print(f"\nLOAD 2 x {side}² slides: {seconds:.1f} s, peak RSS {peak / 2**20:.0f} MiB")
    states = tables.image_states(str(results))
    assert {s["status"] for s in states.values()} == {"done"} and len(states) == 2
    # bounded memory: far below holding a whole slide's float32 probabilities per process
    assert peak < 6 * 2**30, f"peak RSS {peak / 2**20:.0f} MiB"
    if side <= 8192:  # one by one in memory (a 32k² slide does not fit here)
        got = _areas_by_image(results)
        for i in range(2):
            with open_image(str(archive / f"slide{i}.tif")) as src:
                image = src.read_region(0, 0, 0, side, side)
            assert got[f"slide{i}"] == _one_by_one(image), f"slide{i}"
