"""End to end: an ingested OME-Zarr segmented block by block equals the whole-image result.

The same image is segmented in this process, on the 2-worker ``dask_client`` LocalCluster
and on a separate ``dask scheduler`` + ``dask worker`` pair started as subprocesses; all
must give identical labels and region tables. The classical model runs on a synthetic
fluorescence slide; the learned ``nuclei`` model is tried too once its weights exist.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch
import zarr

from segpipe.infer import SegmentResult, segment_image
from segpipe.ingest import IngestSpec, ingest_image, read_meta
from segpipe.io import zarr_store
from segpipe.predict import segment_array, segment_window
from segpipe.tiling import BlockGrid

CHUNK = 128
SHAPE = (520, 650)  # not a multiple of the chunk: partial blocks on both edges


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A synthetic fluorescence slide (with ground truth), ingested in 128-px chunks."""
    from segpipe.synthetic import write_slide

    root = tmp_path_factory.mktemp("infer")
    info = write_slide(
        root / "slide.tif", shape=SHAPE, kind="fluorescence", seed=3, tissue_fraction=0.4,
        mpp=0.5, tile=128, density=0.45,
    )  # fmt: skip
    url = str(root / "slide.ome.zarr")
    ingest_image(str(info.path), url, IngestSpec(chunk=CHUNK, min_size=256))
    return url, info.labels_path


def read_labels(url: str, name: str) -> np.ndarray:
    group = zarr.open_group(store=zarr_store(url, read_only=True), mode="r")
    return np.asarray(group[f"labels/{name}/0"][...])


def read_image(url: str) -> np.ndarray:
    group = zarr.open_group(store=zarr_store(url, read_only=True), mode="r")
    return np.asarray(group["0"][...])


def assert_same_partition(tiled: np.ndarray, whole: np.ndarray) -> None:
    np.testing.assert_array_equal(tiled > 0, whole > 0)
    fg = whole > 0
    pairs = np.unique(np.stack([tiled[fg], whole[fg]]), axis=1)
    assert pairs.shape[1] == len(np.unique(tiled[fg])) == len(np.unique(whole[fg]))


def assert_same_result(a: SegmentResult, b: SegmentResult, url_a: str, url_b: str) -> None:
    np.testing.assert_array_equal(read_labels(url_a, a.label_name), read_labels(url_b, b.label_name))
    assert a.n_regions == b.n_regions
    for name, col in a.columns.items():
        if col.dtype == object:
            assert col.tolist() == b.columns[name].tolist(), name
        else:
            np.testing.assert_allclose(col, b.columns[name], rtol=1e-12, err_msg=name)


@pytest.fixture(scope="module")
def local_result(slide: tuple[str, Path]) -> SegmentResult:
    url, _ = slide
    return segment_image(url, "classical", label_name="local", blocks="all")


def test_tiled_equals_whole_image_exactly(slide, local_result) -> None:
    url, _ = slide
    image = read_image(url)
    meta = read_meta(url)
    whole = segment_window("classical", image, local_result.stats, (0, 0), meta.modality).labels
    tiled = read_labels(url, "local")
    assert tiled.dtype == np.uint32 and tiled.shape == SHAPE
    assert_same_partition(tiled, whole)
    assert local_result.n_regions == len(np.unique(whole)) - 1 > 20
    assert local_result.blocks_processed == local_result.blocks_total == 5 * 6
    # region table: one row per label, measured over whole objects
    cols = local_result.columns
    assert sorted(cols["label"].tolist()) == sorted(np.unique(tiled[tiled > 0]).tolist())
    areas = dict(zip(*np.unique(tiled[tiled > 0], return_counts=True), strict=True))
    assert [areas[v] for v in cols["label"]] == cols["area_px"].tolist()
    assert (cols["image_id"] == "slide").all() and (cols["class"] == "object").all()
    np.testing.assert_allclose(cols["area_um2"], cols["area_px"] * 0.25)
    # measured block by block = measured on the whole stitched label image (perimeter too)
    from segpipe.regions import regions_table

    ref = regions_table(tiled, image, mpp=0.5, class_names=["background", "object"],
                        image_id="slide")  # fmt: skip
    for name, col in ref.items():
        if col.dtype == object:
            assert col.tolist() == cols[name].tolist(), name
        else:
            np.testing.assert_allclose(cols[name], col, rtol=1e-9, atol=1e-9, err_msg=name)


def test_no_ground_truth_nucleus_is_split_at_a_block_border(slide, local_result) -> None:
    url, truth_path = slide
    truth = tifffile.imread(truth_path)
    tiled = read_labels(url, "local")
    grid = BlockGrid(SHAPE, CHUNK, local_result.halo)
    by = np.arange(SHAPE[0])[:, None] // CHUNK
    bx = np.arange(SHAPE[1])[None, :] // CHUNK
    block_id = np.broadcast_to(by * grid.grid_shape[1] + bx, SHAPE)
    straddling = split = 0
    for t in np.unique(truth[truth > 0]):
        inside = (truth == t) & (tiled > 0)
        if not inside.any() or len(np.unique(block_id[inside])) < 2:
            continue
        straddling += 1
        split += len(np.unique(tiled[inside])) > 1 and _connected_in_one(inside)
    assert straddling >= 10, "the test slide should have nuclei on block borders"
    assert split == 0


def _connected_in_one(mask: np.ndarray) -> bool:
    """A nucleus whose detected pixels are one 4-connected piece must carry one id."""
    from skimage.measure import label

    return label(mask, connectivity=1).max() == 1


def test_background_blocks_are_never_read_nor_predicted(slide, tmp_path, monkeypatch) -> None:
    """Poison level 0 of the skipped blocks in a copy: the labels must not change."""
    import shutil

    import segpipe.infer._driver

    url, _ = slide
    # this image is small enough for level 0 to be its own thumbnail; use level 1 instead,
    # as a whole slide would, so that level 0 is only read block by block
    monkeypatch.setattr(segpipe.infer._driver, "STATS_SIDE", 400)
    segment_image(url, "classical", label_name="all-blocks", blocks="all")
    result = segment_image(url, "classical", label_name="tissue")
    skipped = sorted(set(BlockGrid(SHAPE, CHUNK).blocks()) - set(result.processed))
    assert result.blocks_skipped == len(skipped) > 0
    assert result.blocks_processed + result.blocks_skipped == result.blocks_total
    labels = read_labels(url, "tissue")
    full = read_labels(url, "all-blocks")
    grid = BlockGrid(SHAPE, CHUNK)
    for b in skipped:
        y0, x0, y1, x1 = grid.core(b)
        assert not labels[y0:y1, x0:x1].any()
    for b in result.processed:  # processed blocks see exactly what a full run sees
        y0, x0, y1, x1 = grid.core(b)
        np.testing.assert_array_equal(labels[y0:y1, x0:x1] > 0, full[y0:y1, x0:x1] > 0)
    poisoned = str(tmp_path / "poisoned.ome.zarr")
    shutil.copytree(url, poisoned)
    # processed windows reach into skipped blocks by the halo; poison everything beyond
    seen = np.zeros(SHAPE, bool)
    for b in result.processed:
        y0, x0, y1, x1 = BlockGrid(SHAPE, CHUNK, result.halo).window(b)
        seen[y0:y1, x0:x1] = True
    level0 = zarr.open_array(store=zarr_store(poisoned + "/0"), mode="r+")
    image = np.asarray(level0[...])
    image[:, ~seen] = 255  # would be one big object wherever it were predicted
    level0[...] = image
    assert (~seen).sum() > CHUNK * CHUNK
    again = segment_image(poisoned, "classical", label_name="tissue")
    assert again.processed == result.processed
    np.testing.assert_array_equal(read_labels(poisoned, "tissue"), labels)


def test_background_cells_inside_blocks_are_not_predicted(slide, monkeypatch) -> None:
    """Inside selected blocks only the tissue cells (grown by the halo) are predicted — or
    the whole window, when that costs no more of the classical model's global tiles
    (``test_masked_window_predicts_what_is_cheaper``); the labels still equal a run that
    predicts every pixel of those blocks."""
    import segpipe.infer._driver
    import segpipe.predict

    url, _ = slide
    monkeypatch.setattr(segpipe.infer._driver, "STATS_SIDE", 400)
    monkeypatch.setattr(segpipe.predict, "MASK_CELL", 64)
    predicted: list[int] = []
    real = segpipe.predict.predict_window

    def counting(model, window, *args, **kwargs):  # type: ignore[no-untyped-def]
        predicted.append(window.shape[1] * window.shape[2])
        return real(model, window, *args, **kwargs)

    monkeypatch.setattr(segpipe.predict, "predict_window", counting)
    result = segment_image(url, "classical", label_name="cells")
    grid = BlockGrid(SHAPE, CHUNK, result.halo)
    window_px = 0
    for b in result.processed:
        y0, x0, y1, x1 = grid.window(b)
        window_px += (y1 - y0) * (x1 - x0)
    assert 0 < sum(predicted) <= window_px  # never more than the blocks' windows
    labels = read_labels(url, "cells")
    every = segment_image(url, "classical", label_name="cells-all", blocks=result.processed)
    assert every.processed == result.processed
    assert_same_partition(labels, read_labels(url, "cells-all"))
    assert result.n_regions == every.n_regions > 20


def test_local_cluster_gives_identical_labels_and_table(slide, local_result, dask_client) -> None:
    from segpipe.models import load_model

    url, _ = slide
    seen: list[tuple[int, int]] = []
    model = load_model("classical", device="cpu")  # a loaded model is scattered to the workers
    result = segment_image(url, model, label_name="cluster", client=dask_client,
                           blocks="all", progress=lambda d, t: seen.append((d, t)))  # fmt: skip
    assert_same_result(local_result, result, url, url)
    assert seen[-1] == (2 * result.blocks_processed, 2 * result.blocks_processed)
    # the temporary provisional array is gone, the labels are registered with a pyramid
    group = zarr.open_group(store=zarr_store(url, read_only=True), mode="r")
    assert not any(k.startswith("_segpipe_tmp") for k in group.keys())
    assert "cluster" in group["labels"].attrs["ome"]["labels"]
    assert "1" in group["labels/cluster"]


@pytest.fixture()
def separate_cluster(tmp_path: Path) -> Iterator[Any]:
    """``dask scheduler`` and one ``dask worker`` as separate processes, joined by address."""
    from distributed import Client

    bindir = Path(sys.executable).parent
    sched_file = tmp_path / "scheduler.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(
        [str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
         "--no-dashboard", "--scheduler-file", str(sched_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )]  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        import json

        address = json.loads(sched_file.read_text())["address"]
        procs.append(subprocess.Popen(
            [str(bindir / "dask"), "worker", address, "--nthreads", "1", "--nworkers", "1",
             "--no-dashboard", "--memory-limit", "2GB"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        ))  # fmt: skip
        with Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=60)
            yield client
    finally:
        procs[-1].kill()  # the worker: no graceful shutdown needed, it holds nothing
        for proc in procs:
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_separate_scheduler_and_worker_give_identical_result(
    slide, local_result, separate_cluster
) -> None:
    url, _ = slide
    result = segment_image(url, "classical", label_name="remote", client=separate_cluster,
                           blocks="all")  # fmt: skip
    assert_same_result(local_result, result, url, url)


def test_gpu_workers_get_grouped_tasks_with_gpu_resource(slide, local_result) -> None:
    """Workers offering a GPU resource (here without a real GPU) run pipelined block groups."""
    from distributed import Client, LocalCluster, get_task_stream

    from segpipe.cluster import has_gpu_workers

    url, _ = slide
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None,
                      resources={"GPU": 1}) as cluster, Client(cluster) as client:  # fmt: skip
        assert has_gpu_workers(client)
        with get_task_stream(client) as stream:
            result = segment_image(url, "classical", label_name="gpu", client=client, blocks="all")
        keys = {str(t["key"]) for t in stream.data if "pass1" in str(t["key"])}
        assert_same_result(local_result, result, url, url)
        assert 0 < len(keys) < result.blocks_processed  # groups of blocks, not one task per block
        # more finishing threads and larger groups: the same result, fewer tasks
        with get_task_stream(client) as stream:
            wide = segment_image(url, "classical", label_name="gpu-wide", client=client,
                                 blocks="all", finish_threads=5, gpu_group=12)  # fmt: skip
        wide_keys = {str(t["key"]) for t in stream.data if "pass1" in str(t["key"])}
    assert_same_result(local_result, wide, url, url)
    assert len(wide_keys) == -(-wide.blocks_processed // 12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_cluster_segments_like_the_cpu(slide) -> None:
    """The real CUDA path: connect() on a GPU machine gives GPU workers, pass 1 runs the
    built-in nuclei network there under bf16 autocast, and the labels match a CPU run up to
    the few pixels bf16 moves."""
    from segpipe.cluster import cluster_client, has_gpu_workers

    url, _ = slide
    cpu = segment_image(url, "nuclei", label_name="nuclei-cpu", blocks="all", device="cpu")
    with cluster_client(dashboard_address=None) as client:
        assert has_gpu_workers(client)
        gpu = segment_image(url, "nuclei", label_name="nuclei-gpu", client=client, blocks="all")
        on_gpu = client.run(_holds_cuda_memory)
    assert any(on_gpu.values())  # the model was loaded on a worker's GPU
    a, b = read_labels(url, "nuclei-cpu") > 0, read_labels(url, "nuclei-gpu") > 0
    assert (a & b).sum() / (a | b).sum() > 0.98
    assert abs(gpu.n_regions - cpu.n_regions) <= max(2, 0.03 * cpu.n_regions)


def _holds_cuda_memory() -> bool:
    import torch

    return torch.cuda.is_initialized() and torch.cuda.memory_allocated() > 0


class _ThreeClass(torch.nn.Module):
    """A semantic stand-in: background / dim / bright from the classical model's logits."""

    size_multiple = 1

    def __init__(self) -> None:
        from segpipe.models import ClassicalModule

        super().__init__()
        self.inner = ClassicalModule(sigma=1.0, threshold=0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.inner(x)  # 20 * (smoothed - 0.5): dim above 0.5, bright above 0.8
        return torch.cat([-z, z, 2 * z - 6], dim=1)


def test_semantic_model_writes_a_class_map_and_stitches_by_class(slide) -> None:
    from segpipe.models import Model, ModelCard, builtin_card

    url, _ = slide
    card = ModelCard(**{
        **builtin_card("classical").model_dump(), "name": "three-class", "task": "semantic",
        "classes": ["background", "dim", "bright"], "outputs": ["background", "dim", "bright"],
        "postprocess": {"min_size": 0},
    })  # fmt: skip
    model = Model(_ThreeClass(), card, device="cpu")
    result = segment_image(url, model, blocks="all")
    assert result.label_name == "three-class" and result.classes_url is not None
    whole = segment_window(model, read_image(url), result.stats, (0, 0), read_meta(url).modality)
    tiled = read_labels(url, "three-class")
    classes = read_labels(url, "three-class-classes")
    assert classes.dtype == np.uint8
    np.testing.assert_array_equal(classes, whole.classes)
    assert set(np.unique(classes)) == {0, 1, 2}
    assert_same_partition(tiled, whole.labels)
    cols = result.columns
    first_pixel = {int(v): (y, x) for v, y, x in zip(
        tiled[tiled > 0], *np.nonzero(tiled), strict=True)}  # fmt: skip
    expected = [card.classes[classes[first_pixel[int(v)]]] for v in cols["label"]]
    assert cols["class"].tolist() == expected


def _ingested(tmp_path: Path, image: np.ndarray, chunk: int = 256) -> str:
    tifffile.imwrite(tmp_path / "src.tif", image)
    url = str(tmp_path / "img.ome.zarr")
    ingest_image(str(tmp_path / "src.tif"), url, IngestSpec(chunk=chunk))
    return url


def _touching_ids_differ(labels: np.ndarray) -> int:
    """Neighbouring (4-connected) foreground pixels with different ids: a seam."""
    a, b = labels[:, :-1], labels[:, 1:]
    c, d = labels[:-1], labels[1:]
    return int(((a > 0) & (b > 0) & (a != b)).sum() + ((c > 0) & (d > 0) & (c != d)).sum())


def test_objects_touching_the_image_border_are_kept(tmp_path) -> None:
    """The foreground mask's closing must not strip the image's edges: a bar 3 px wide along
    the border was left out of the mask, its blocks never predicted (session 9)."""
    image = np.zeros((1024, 1300), np.uint8)
    image[100:130, 100:130] = image[600:640, 700:740] = 200
    image[500:530, 0:3] = 200  # touches the left border
    image[0:3, 300:330] = 200  # the top border
    url = _ingested(tmp_path, image)
    result = segment_image(url, "classical")  # default: the foreground mask picks the blocks
    labels = read_labels(url, result.label_name)
    assert result.n_regions == 4
    assert labels[500:530, 0:3].any() and labels[0:3, 300:330].any()
    assert_same_partition(labels, segment_array(image, model="classical"))


def test_unselected_cells_are_background_in_every_window() -> None:
    """Which cells the cover of a window predicts depends on the window; pixels of cells the
    mask did not select must be background in all of them, or one object gets two ids at a
    block border (a seam; session 9: a bar across a left-out cell, windows of two blocks)."""
    from segpipe.models import load_model
    from segpipe.normalize import stats_from_image

    image = np.zeros((1, 40, 600), np.uint8)
    image[:, :, 17:356] = image[:, :, 396:509] = 200  # a bar across cells 0–2, one in 3
    cells = np.array([[True, False, True, True, True]])  # cell 1 (x 128–256) not selected
    keep = np.repeat(np.repeat(cells, 128, 0), 128, 1)[:40, :600]
    stats = stats_from_image(image, load_model("classical").card, "grey")
    for x0, x1 in ((0, 273), (239, 529)):  # the windows of blocks 0 and 1 (256 px, halo 17)
        seg = segment_window("classical", image[:, :, x0:x1], stats, (0, x0), "grey",
                             mask=keep[:, x0:x1], context=16)  # fmt: skip
        assert not seg.labels[:, max(128 - x0, 0) : 256 - x0].any(), (x0, x1)
        assert seg.labels[5:35, (50 if x0 == 0 else 300) - x0].all()  # the bar in a selected cell is found


def test_segment_array_on_a_one_pixel_high_image() -> None:
    """The statistics thumbnail of a 1 × 5000 image is 1 × 1250 (a pyramid level), not empty."""
    from segpipe.normalize import thumbnail

    image = np.zeros((1, 5000), np.uint8)
    image[0, 100:400] = image[0, 3000:3500] = 200
    assert thumbnail(image[None]).shape == (1, 1, 1250)
    assert segment_array(image, model="classical").max() == 2


def test_explicit_blocks_and_bad_arguments(slide) -> None:
    from segpipe.errors import ConfigError

    url, _ = slide
    with pytest.raises(ConfigError, match="halo"):
        segment_image(url, "classical", halo=1, blocks="all")
    with pytest.raises(ConfigError, match="outside"):
        segment_image(url, "classical", blocks=[(99, 0)])
    result = segment_image(url, "classical", label_name="two", blocks=[(2, 3), (2, 4)])
    assert (result.blocks_processed, result.blocks_skipped) == (2, 28)
    labels = read_labels(url, "two")
    assert not labels[:256].any() and not labels[384:].any()
    none = segment_image(url, "classical", label_name="none", blocks=[])
    assert none.n_regions == 0 and none.blocks_processed == 0
    assert none.columns["label"].dtype == np.uint32 and none.columns["mean_intensity"].shape == (0, 1)
    assert not read_labels(url, "none").any()


def test_learned_nuclei_model_when_its_weights_exist(slide) -> None:
    from segpipe.models import is_installed

    if not is_installed("nuclei"):
        pytest.skip("the nuclei model's weights are not trained yet (train owner)")
    url, _ = slide
    result = segment_image(url, "nuclei", label_name="nuclei-test", blocks="all")
    image = read_image(url)
    # the engine predicts a learned model's windows in one pass each, and segment_array the
    # whole image in one pass, with the same scale rule: the in-memory API is the reference
    meta = read_meta(url)
    whole = segment_array(image, "nuclei", mpp=meta.mpp, modality=meta.modality, stats=result.stats)
    tiled = read_labels(url, "nuclei-test")
    # U-Net windows equal the whole image to float tolerance (segpipe.predict), so a
    # probability exactly at a threshold may flip a pixel; objects must otherwise agree
    disagree = np.count_nonzero((tiled > 0) != (whole > 0))
    assert disagree <= 1e-4 * tiled.size
    n_whole = len(np.unique(whole)) - 1
    assert abs(result.n_regions - n_whole) <= max(1, n_whole // 100)
