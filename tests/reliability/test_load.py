"""Load: many small images and a few large slides, bounded memory, same results as one by one.

Each case is one real ``segpipe run`` subprocess; a sampler thread sums the RSS of the
run's whole process tree (flow, Dask scheduler, nanny and worker processes) every 0.2 s
and the peak is printed (``-s`` shows it) and asserted under a bound. "One by one" is the
in-memory ``segpipe.segment_array`` of each image: same object count and areas per image.

Default run: 20 small PNGs. ``-m slow``: 1,000 small PNGs, two 8k² mosaic slides; set
``RELIABILITY_SLIDE_SIDE=32768`` for the 32k² case (~14 min on 2 cores) and
``RELIABILITY_SLIDE_COUNT`` for the number of slides (default 2). A slide's one-by-one
reference is each of its tissue patches segmented alone in memory (a 32k² slide does not
fit in memory whole); at <= 8192² the whole slide is compared as well.
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


def _measured_run(
    archive: Path, results: Path, env: dict[str, str], timeout: float
) -> tuple[float, int, str]:
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [SEGPIPE, "run", str(archive), "--out", str(results)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    with PeakRSS(proc.pid) as rss:
        out, err = proc.communicate(timeout=timeout)
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, err[-3000:]
    return seconds, rss.peak, out


def _areas_by_image(results: Path) -> dict[str, list[int]]:
    con = tables.open_results(str(results))
    rows = con.execute(
        "select image_id, area_px from regions order by image_id, area_px"
    ).fetchall()
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
        image, _ = nuclei_sample(
            (64, 64),
            rng=i,
            modality="fluorescence",
            diameter_px=(6, 14),
            jpeg_probability=0.0,
            tissue_edge_probability=0.0,
        )
        Image.fromarray(image[0]).save(folder / f"img{i:04d}.png")
        images[f"img{i:04d}"] = image[0]
    return images


def _many_small(n: int, tmp_path: Path, popen_env, concurrency: int) -> None:
    import segpipe

    images = _small_archive(tmp_path / "archive", n)
    results = tmp_path / "results"
    env = popen_env(settings={"run.concurrency": concurrency})
    seconds, peak, _ = _measured_run(tmp_path / "archive", results, env, timeout=3000)
    print(
        f"\nLOAD {n} x 64x64 PNG: {seconds:.1f} s ({60 * n / seconds:.0f} images/min), "
        f"peak RSS {peak / 2**20:.0f} MiB (concurrency {concurrency})\n"
        f"segpipe imported from {segpipe.__file__}"
    )
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


#: Mosaic slides (:func:`segpipe.synthetic.write_mosaic`, sparse): one rendered ``_PATCH``²
#: fluorescence patch (and its 8 flips / transposes) in the patches with even row and column
#: index, glass elsewhere (25 % tissue). Written tile by tile: ~1 min for 32k², not the
#: ~15 min of rendering it nucleus by nucleus with ``write_slide``.
_PATCH, _MPP = 2048, 0.5


def _pipeline_stats(results: Path, image_id: str):
    """The normalisation statistics the pipeline used: from the pyramid level it picks."""
    import zarr

    from segpipe.infer._driver import _pick_level
    from segpipe.ingest import read_meta
    from segpipe.models import load_model
    from segpipe.normalize import image_stats

    url = f"{results}/images/{image_id}.ome.zarr"
    meta = read_meta(url)
    thumb = np.asarray(zarr.open_array(f"{url}/{_pick_level(meta.levels)}", mode="r")[:])
    return image_stats(thumb, load_model("classical").card, meta.modality), meta.modality


def _one_by_one_patches(side: int, seed: int, stats, modality: str) -> list[int]:
    """Region areas of a sparse mosaic, each tissue patch segmented in memory on its own.

    Every tissue patch is surrounded by >= one patch of glass (or the slide's edge), so
    segmenting it alone, with a 256-px glass margin on its inner sides and the slide's edge
    kept as an edge, with the whole slide's statistics, gives the slide's objects there.
    """
    from segpipe import segment_array
    from segpipe.synthetic import mosaic_patches, mosaic_variant_at

    variants, glass = mosaic_patches(_PATCH, seed)
    pad = 256
    cache: dict[tuple[int, bool, bool], list[int]] = {}
    areas: list[int] = []
    n = side // _PATCH
    for py in range(0, n, 2):
        for px in range(0, n, 2):
            key = (mosaic_variant_at(py, px), py > 0, px > 0)
            if key not in cache:
                top, left = pad if key[1] else 0, pad if key[2] else 0
                canvas = np.full(
                    (top + _PATCH + pad, left + _PATCH + pad), glass[0, 0], glass.dtype
                )
                canvas[top : top + _PATCH, left : left + _PATCH] = variants[key[0]]
                labels = segment_array(
                    canvas, model="classical", mpp=_MPP, modality=modality, stats=stats
                )
                cache[key] = [int(a) for a in np.bincount(labels.ravel())[1:] if a > 0]
            areas += cache[key]
    return sorted(areas)


@pytest.mark.slow
def test_large_slides(tmp_path, popen_env):
    import segpipe
    from segpipe.io import open_image
    from segpipe.synthetic import write_mosaic

    side = int(os.environ.get("RELIABILITY_SLIDE_SIDE", "8192"))
    count = int(os.environ.get("RELIABILITY_SLIDE_COUNT", "2"))
    print(f"\nsegpipe imported from {segpipe.__file__}")
    archive = tmp_path / "archive"
    archive.mkdir()
    t0 = time.monotonic()
    for i in range(count):
        write_mosaic(archive / f"slide{i}.tif", side, seed=i, sparse=True, mpp=_MPP)
    print(f"wrote {count} x {side}² mosaic slides in {time.monotonic() - t0:.0f} s")
    results = tmp_path / "results"
    env = popen_env(
        settings={"ingest.chunk": 1024, "ingest.min_size": 1024, "run.concurrency": 1},
        SEGPIPE_RUN__N_WORKERS="2",
    )
    seconds, peak, _ = _measured_run(archive, results, env, timeout=3000)
    print(f"LOAD {count} x {side}² slides: {seconds:.1f} s, peak RSS {peak / 2**20:.0f} MiB")
    states = tables.image_states(str(results))
    assert {s["status"] for s in states.values()} == {"done"} and len(states) == count
    # bounded memory: far below holding a whole slide's float32 probabilities per process
    assert peak < 6 * 2**30, f"peak RSS {peak / 2**20:.0f} MiB"
    got = _areas_by_image(results)
    for i in range(count):
        stats, modality = _pipeline_stats(results, f"slide{i}")
        expected = _one_by_one_patches(side, i, stats, modality)
        assert got[f"slide{i}"] == expected, (
            f"slide{i}: {len(got[f'slide{i}'])} vs {len(expected)} regions"
        )
        print(
            f"slide{i}: {len(expected)} regions, equal to its tissue patches segmented one by one"
        )
        if side <= 8192:  # the whole slide in memory too (a 32k² slide does not fit here)
            with open_image(str(archive / f"slide{i}.tif")) as src:
                image = src.read_region(0, 0, 0, side, side)
            assert got[f"slide{i}"] == _one_by_one(image), f"slide{i}"
