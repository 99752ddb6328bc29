"""Overlay PNGs: pyramid level choice, full-resolution crops, contours coloured by class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from test_labels import disc_labels, write_test_image  # tests/ is on sys.path (rootdir conftest)

from segpipe.errors import ConfigError, ImageNotFoundError, TableFileError
from segpipe.labels import create_label_array, finalize_labels, image_zarr_url
from segpipe.show import UNKNOWN_COLOR, class_colors, overlay_images, render_overlay
from segpipe.tables import write_image_row, write_regions

SHAPE = (300, 260)


def build_results(
    results: str, image_id: str = "slide-a", run_id: str = "run1", seed: int = 0,
    storage_options: dict[str, Any] | None = None, with_tables: bool = True, chunk: int = 64,
) -> np.ndarray:  # fmt: skip
    """A results folder with one brightfield image, its ``nuclei`` labels and tables rows."""
    labels = disc_labels(SHAPE, n=12, seed=seed)
    image = np.full((3,) + SHAPE, 220, np.uint8)
    image[:, labels > 0] = 90
    url = image_zarr_url(results, image_id)
    write_test_image(url, image, chunk=chunk, storage_options=storage_options)
    arr = create_label_array(url, "nuclei", SHAPE, (chunk, chunk), storage_options=storage_options)
    arr[:] = labels
    finalize_labels(url, "nuclei", storage_options=storage_options)
    if with_tables:
        ids = np.unique(labels[labels > 0])
        area = np.array([(labels == i).sum() for i in ids], np.int64)
        ys, xs = zip(*[np.nonzero(labels == i) for i in ids], strict=True)
        columns = {
            "label": ids.astype(np.uint32),
            "class": ["tumor" if i % 2 else "stroma" for i in ids],
            "area_px": area,
            "area_um2": area * 0.25,
            "centroid_y": np.array([y.mean() for y in ys]),
            "centroid_x": np.array([x.mean() for x in xs]),
            "bbox_y0": np.array([y.min() for y in ys]),
            "bbox_x0": np.array([x.min() for x in xs]),
            "bbox_y1": np.array([y.max() + 1 for y in ys]),
            "bbox_x1": np.array([x.max() + 1 for x in xs]),
            "mean_intensity": np.full((len(ids), 3), 90.0),
        }
        write_regions(results, image_id, run_id, columns, storage_options=storage_options)
        write_image_row(results, {"image_id": image_id, "run_id": run_id, "status": "done",
                                  "n_regions": len(ids), "mpp": 0.5, "tissue_area_um2": 19500.0,
                                  "image_uri": url, "labels_uri": f"{url}/labels/nuclei"},
                        storage_options=storage_options)  # fmt: skip
    return labels


def _colour_pixels(png: Path, colour: tuple[int, int, int]) -> int:
    rgb = np.asarray(Image.open(png).convert("RGB"))
    return int(np.all(rgb == colour, axis=-1).sum())


def test_overlay_contours_coloured_by_class(tmp_path: Path) -> None:
    results = str(tmp_path / "res")
    labels = build_results(results)
    out = render_overlay(results, "slide-a", tmp_path / "png" / "a.png")
    assert out.exists() and Image.open(out).size == (SHAPE[1], SHAPE[0])  # level 0 fits 1024
    colours = class_colors({"tumor", "stroma"})
    rgb = np.asarray(Image.open(out).convert("RGB"))
    from skimage.segmentation import find_boundaries

    edges = find_boundaries(labels, mode="inner") & (labels > 0)
    tumor = edges & (labels % 2 == 1)
    stroma = edges & (labels % 2 == 0) & (labels > 0)
    assert tumor.any() and stroma.any()
    assert np.all(rgb[tumor] == colours["tumor"]) and np.all(rgb[stroma] == colours["stroma"])
    assert set(np.unique(rgb[~edges])) <= {90, 220}  # the image itself elsewhere
    assert _colour_pixels(out, UNKNOWN_COLOR) == 0


def test_lowest_level_that_fits(tmp_path: Path) -> None:
    results = str(tmp_path / "res")
    build_results(results)
    png = render_overlay(results, "slide-a", tmp_path / "small.png", max_size=100)
    assert Image.open(png).size == (65, 75)  # level 2 of 300 x 260
    png = render_overlay(results, "slide-a", tmp_path / "tiny.png", max_size=50)
    assert max(Image.open(png).size) == 50  # smallest level, resized
    plain, drawn, colours = overlay_images(results, "slide-a", max_size=160)
    assert plain.size == (130, 150) and set(colours) == {"tumor", "stroma"}
    assert np.any(np.asarray(plain) != np.asarray(drawn))


def test_full_resolution_region(tmp_path: Path) -> None:
    results = str(tmp_path / "res")
    labels = build_results(results)
    png = render_overlay(
        results, "slide-a", tmp_path / "crop.png", region=(100, 50, 200, 180), max_size=64
    )
    rgb = np.asarray(Image.open(png).convert("RGB"))
    assert rgb.shape == (100, 130, 3)  # full resolution whatever max_size says
    inside = labels[100:200, 50:180] > 0
    from skimage.segmentation import find_boundaries

    edges = find_boundaries(labels, mode="inner")[100:200, 50:180]
    assert np.all(rgb[inside & ~edges] == 90) and np.all(rgb[~inside] == 220)
    with pytest.raises(ConfigError, match="empty"):
        render_overlay(results, "slide-a", tmp_path / "x.png", region=(500, 500, 600, 600))


def test_unknown_image_and_label(tmp_path: Path) -> None:
    results = str(tmp_path / "res")
    build_results(results)
    with pytest.raises(ImageNotFoundError, match="'nope'.*known: slide-a") as info:
        render_overlay(results, "nope", tmp_path / "x.png")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="no label image 'cells'"):
        render_overlay(results, "slide-a", tmp_path / "x.png", label_name="cells")


def test_without_tables_one_colour(tmp_path: Path) -> None:
    results = str(tmp_path / "res")
    build_results(results, with_tables=False)
    png = render_overlay(results, "slide-a", tmp_path / "x.png")
    assert _colour_pixels(png, class_colors({"region"})["region"]) > 50


def test_overlay_from_s3(s3: Any, tmp_path: Path) -> None:
    results = f"s3://{s3.bucket('show')}/res"
    build_results(results, storage_options=s3.storage_options, chunk=512)  # few S3 objects
    png = render_overlay(
        results, "slide-a", tmp_path / "s3.png", storage_options=s3.storage_options
    )
    colours = class_colors({"tumor", "stroma"})
    assert (
        _colour_pixels(png, colours["tumor"]) > 20 and _colour_pixels(png, colours["stroma"]) > 20
    )
    remote = render_overlay(
        results,
        "slide-a",
        f"{results}/reports/run1/slide-a.png",
        storage_options=s3.storage_options,
    )
    assert remote == f"{results}/reports/run1/slide-a.png"
    (tmp_path / "back.png").write_bytes(s3.fs.cat(remote))
    assert _colour_pixels(tmp_path / "back.png", colours["tumor"]) > 20


def test_default_label_is_the_one_the_images_row_names(tmp_path: Path) -> None:
    results = str(tmp_path / "res")
    build_results(results)
    url = image_zarr_url(results, "slide-a")
    cells = create_label_array(url, "cells", SHAPE, (64, 64))
    cells[100:140, 100:140] = 1
    finalize_labels(url, "cells")  # listed after "nuclei"
    columns = {"label": [1], "class": ["cell"], "area_px": [1600], "area_um2": [400.0],
               "centroid_y": [119.5], "centroid_x": [119.5], "bbox_y0": [100], "bbox_x0": [100],
               "bbox_y1": [140], "bbox_x1": [140]}  # fmt: skip
    write_regions(results, "slide-a", "run2", columns)
    write_image_row(results, {"image_id": "slide-a", "run_id": "run2", "status": "done",
                              "labels_uri": f"{url}/labels/cells"})  # fmt: skip
    rgb = np.asarray(Image.open(render_overlay(results, "slide-a", tmp_path / "c.png")))
    colour = class_colors({"cell"})["cell"]
    assert np.all(rgb[100, 100:140] == colour) and np.all(rgb[139, 100:140] == colour)
    assert not np.all(rgb[120, 120] == colour)


def test_a_crop_without_every_class_keeps_the_image_colours() -> None:
    """Session 9: a crop holding only some classes of a semantic model's image raised
    ``'stain' is not in list``; and a class's colour must not depend on which classes a
    crop (or a report picture) happens to show."""
    from segpipe.show import _draw_contours

    labels = np.zeros((20, 20), np.int64)
    labels[2:8, 2:8], labels[10:16, 10:16] = 1, 2
    classes = {1: "pit", 2: "scratch", 3: "stain"}  # 3 is elsewhere in the image
    rgb = np.zeros((20, 20, 3), np.uint8)
    out, colors = _draw_contours(rgb, labels, classes)
    everyone = class_colors({"pit", "scratch", "stain"})
    assert colors == {"pit": everyone["pit"], "scratch": everyone["scratch"]}
    assert tuple(out[2, 2]) == everyone["pit"] and tuple(out[10, 10]) == everyone["scratch"]
    run_palette = {"pit": (1, 2, 3), "scratch": (4, 5, 6), "stain": (7, 8, 9), "dust": (9, 9, 9)}
    out, colors = _draw_contours(rgb, labels, classes, run_palette)  # a report's colours win
    assert tuple(out[2, 2]) == (1, 2, 3) and colors == {"pit": (1, 2, 3), "scratch": (4, 5, 6)}


@pytest.mark.parametrize("table", ["images", "regions"])
def test_a_bad_table_file_is_named_not_drawn_around(tmp_path: Path, table: str) -> None:
    """A truncated table file: one line naming it, no picture without the classes."""
    build_results(str(tmp_path))
    bad = tmp_path / "tables" / table / "slide-a" / "run1.parquet"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(TableFileError, match=rf"^{bad}: not a Parquet file \(truncated or corrupt\)"):
        render_overlay(str(tmp_path), "slide-a", tmp_path / "a.png")
    assert not (tmp_path / "a.png").exists()
