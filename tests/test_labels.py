"""Label pyramids inside OME-Zarr images: empty chunks, nearest downsampling, NGFF metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from segpipe.errors import ConfigError, ImageNotFoundError
from segpipe.io import zarr_store
from segpipe.labels import create_label_array, finalize_labels, label_names, open_label_level


def write_test_image(
    url: str, data: np.ndarray, mpp: float | None = 0.5, n_levels: int = 3, chunk: int = 64,
    storage_options: dict[str, Any] | None = None,
) -> None:  # fmt: skip
    """A small OME-NGFF 0.5 image laid out as docs/architecture.md says ingest writes it."""
    group = zarr.open_group(store=zarr_store(url, storage_options), mode="w", zarr_format=3)
    c = data.shape[0]
    for k in range(n_levels):
        level = data[:, :: 2**k, :: 2**k]
        group.create_array(
            str(k), data=level, chunks=(c, chunk, chunk), dimension_names=("c", "y", "x")
        )
    unit = {"unit": "micrometer"} if mpp else {}
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [{
            "name": "image",
            "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", **unit},
                     {"name": "x", "type": "space", **unit}],
            "datasets": [{"path": str(k), "coordinateTransformations": [
                {"type": "scale", "scale": [1.0, (mpp or 1.0) * 2**k, (mpp or 1.0) * 2**k]}]}
                for k in range(n_levels)],
        }],
        "omero": {"channels": [{"label": f"ch{i}", "color": "FFFFFF", "window": {
            "min": 0, "max": 255, "start": 0, "end": 255}} for i in range(c)]},
    }  # fmt: skip
    group.attrs["segpipe"] = {"mpp": mpp, "modality": "brightfield", "source_uri": "synthetic",
                              "channel_names": [f"ch{i}" for i in range(c)]}  # fmt: skip


def disc_labels(shape: tuple[int, int], n: int = 12, seed: int = 0) -> np.ndarray:
    """Non-overlapping-ish discs with ids 1..n (later ids win on overlap)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.uint32)
    for i in range(1, n + 1):
        cy, cx = rng.integers(10, shape[0] - 10), rng.integers(10, shape[1] - 10)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(16, 81)] = i
    return labels


def _chunk_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p.name != "zarr.json"]


@pytest.fixture
def image_url(tmp_path: Path) -> str:
    url = str(tmp_path / "img.ome.zarr")
    rng = np.random.default_rng(1)
    write_test_image(url, rng.integers(0, 255, (3, 300, 260), dtype=np.uint8))
    return url


def test_empty_chunks_cost_nothing(image_url: str) -> None:
    arr = create_label_array(image_url, "nuclei", (300, 260), (64, 64))
    assert arr.shape == (300, 260) and arr.dtype == np.uint32 and arr.fill_value == 0
    root = Path(image_url) / "labels" / "nuclei" / "0"
    arr[0:128, 0:128] = 0  # background only: nothing stored
    assert _chunk_files(root) == []
    arr[70:80, 70:80] = 5  # one chunk, (1, 1)
    assert len(_chunk_files(root)) == 1
    assert int(arr[75, 75]) == 5 and int(arr[299, 259]) == 0
    assert label_names(image_url) == []  # not listed before finalize_labels


def test_sharded_background_shards_are_not_written(image_url: str) -> None:
    arr = create_label_array(image_url, "nuclei", (300, 260), (32, 32), shards=(128, 128))
    assert arr.shards == (128, 128) and arr.chunks == (32, 32)
    arr[0:128, 0:128] = 0
    arr[130:140, 130:140] = 3
    files = _chunk_files(Path(image_url) / "labels" / "nuclei" / "0")
    assert len(files) == 1 and files[0].parts[-2:] == ("1", "1")


def test_pyramid_metadata_and_reader(image_url: str) -> None:
    labels = disc_labels((300, 260))
    arr = create_label_array(image_url, "nuclei", (300, 260), (64, 64))
    arr[:] = labels
    shapes = finalize_labels(image_url, "nuclei", colors={1: [255, 0, 0, 255]},
                             properties={1: {"class": "nucleus"}})  # fmt: skip
    assert shapes == [(300, 260), (150, 130), (75, 65)]  # as many levels as the image
    for k in range(3):
        level = open_label_level(image_url, "nuclei", k)[:]
        np.testing.assert_array_equal(level, labels[:: 2**k, :: 2**k])  # nearest, never averaged
        assert set(np.unique(level)) <= set(np.unique(labels))
    group = zarr.open_group(f"{image_url}/labels/nuclei", mode="r")
    ome = group.attrs["ome"]
    assert ome["version"] == "0.5"
    datasets = ome["multiscales"][0]["datasets"]
    assert [d["path"] for d in datasets] == ["0", "1", "2"]
    assert datasets[2]["coordinateTransformations"][0]["scale"] == [2.0, 2.0]
    assert ome["multiscales"][0]["axes"][0] == {"name": "y", "type": "space", "unit": "micrometer"}
    assert ome["image-label"]["source"] == {"image": "../../"}
    assert {"label-value": 1, "rgba": [255, 0, 0, 255]} in ome["image-label"]["colors"]
    assert ome["image-label"]["properties"] == [{"label-value": 1, "class": "nucleus"}]
    assert label_names(image_url) == ["nuclei"]

    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    nodes = list(Reader(parse_url(image_url))())
    image_node = nodes[0]
    assert image_node.load(Multiscales) is not None
    assert [d.shape for d in image_node.data] == [(3, 300, 260), (3, 150, 130), (3, 75, 65)]
    label_nodes = [n for n in nodes if n.load(Label) is not None]
    assert len(label_nodes) == 1
    node = label_nodes[0]
    assert node.metadata["name"] == "nuclei"
    assert node.metadata["color"][1] == [1.0, 0.0, 0.0, 1.0]
    assert [d.shape for d in node.data] == [(300, 260), (150, 130), (75, 65)]
    np.testing.assert_array_equal(np.asarray(node.data[1]), labels[::2, ::2])

    # finalizing again (a rerun) keeps a single registration
    finalize_labels(image_url, "nuclei")
    assert label_names(image_url) == ["nuclei"]


def test_sharded_pyramid_on_a_dask_cluster(tmp_path: Path, dask_client: Any) -> None:
    url = str(tmp_path / "big.ome.zarr")
    write_test_image(url, np.zeros((1, 520, 390), np.uint16), mpp=None, n_levels=4)
    labels = disc_labels((520, 390), n=30, seed=3)
    arr = create_label_array(url, "cells", (520, 390), (32, 32), shards=(64, 64))
    arr[:] = labels
    shapes = finalize_labels(url, "cells", client=dask_client)
    assert shapes == [(520, 390), (260, 195), (130, 98), (65, 49)]
    np.testing.assert_array_equal(open_label_level(url, "cells", 3)[:], labels[::8, ::8])
    unit_free = zarr.open_group(f"{url}/labels/cells", mode="r").attrs["ome"]["multiscales"][0]
    assert "unit" not in unit_free["axes"][0]


def test_labels_on_s3(s3: Any) -> None:
    url = f"s3://{s3.bucket('labels')}/results/images/a.ome.zarr"
    so = s3.storage_options
    write_test_image(url, np.ones((1, 200, 150), np.uint8), storage_options=so)
    labels = disc_labels((200, 150), n=5)
    arr = create_label_array(url, "nuclei", (200, 150), (64, 64), storage_options=so)
    arr[:] = labels
    finalize_labels(url, "nuclei", storage_options=so)
    assert label_names(url, storage_options=so) == ["nuclei"]
    np.testing.assert_array_equal(
        open_label_level(url, "nuclei", 1, storage_options=so)[:], labels[::2, ::2]
    )


def test_errors(tmp_path: Path, image_url: str) -> None:
    with pytest.raises(ImageNotFoundError, match="missing.ome.zarr"):
        create_label_array(str(tmp_path / "missing.ome.zarr"), "nuclei", (10, 10), (8, 8))
    with pytest.raises(ConfigError, match="plain name"):
        create_label_array(image_url, "a/b", (10, 10), (8, 8))
    with pytest.raises(ConfigError, match="integer"):
        create_label_array(image_url, "x", (10, 10), (8, 8), dtype="float32")
    with pytest.raises((ConfigError, ImageNotFoundError)):
        finalize_labels(image_url, "never-created")


def test_rerun_unlists_until_finalized(image_url: str) -> None:
    arr = create_label_array(image_url, "nuclei", (300, 260), (64, 64))
    arr[:] = disc_labels((300, 260))
    finalize_labels(image_url, "nuclei")
    other = create_label_array(image_url, "cells", (300, 260), (64, 64))
    finalize_labels(image_url, "cells")
    assert label_names(image_url) == ["nuclei", "cells"]
    again = create_label_array(image_url, "nuclei", (300, 260), (64, 64))
    assert label_names(image_url) == ["cells"]  # half-written labels are never listed
    assert int(again[:].max()) == 0 and "1" not in zarr.open_group(
        f"{image_url}/labels/nuclei", mode="r"
    )
    assert other.shape == (300, 260)
    finalize_labels(image_url, "nuclei")
    assert label_names(image_url) == ["cells", "nuclei"]


def test_known_base_and_scale_give_the_same_label_image(tmp_path: Path) -> None:
    """A caller that has level 0 open and knows the image's scale (the engine) skips the
    round trips, and the files are the same as when finalize_labels reads them itself."""
    data = np.random.default_rng(3).integers(0, 255, (1, 200, 160), dtype=np.uint8)
    labels = disc_labels((200, 160), seed=4)
    trees = []
    for k, known in enumerate((False, True)):
        url = str(tmp_path / f"img{k}.ome.zarr")
        write_test_image(url, data, mpp=0.25, n_levels=2)
        base = create_label_array(url, "cells", (200, 160), (64, 64), check_image=not known)
        base[:] = labels
        shapes = finalize_labels(url, "cells", base=base if known else None,
                                 image_scale=(0.25, 2) if known else None)  # fmt: skip
        assert shapes == [(200, 160), (100, 80)] and label_names(url) == ["cells"]
        root = Path(url) / "labels"
        trees.append({p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()})
    assert trees[0] == trees[1]
