"""Helpers for the reliability suite (issue 9): real processes, real faults.

``snapshot(results)``
    Everything a user reads back: the visible regions, each image's latest state and the
    number of duplicated region rows.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

#: Settings that keep the suite fast: the classical model, 128-px chunks, tiny pyramids.
SETTINGS: dict[str, Any] = {
    "infer.model": "classical",
    "ingest.chunk": 128,
    "ingest.min_size": 128,
    "run.concurrency": 2,
    "run.retries": 0,
    "run.retry_delay_s": 0,
}

SEGPIPE = str(Path(sys.executable).parent / "segpipe")


def settings_env(settings: dict[str, Any]) -> dict[str, str]:
    """``{"infer.model": "classical"}`` → ``{"SEGPIPE_INFER__MODEL": "classical"}``."""
    out = {}
    for key, value in settings.items():
        section, name = key.split(".")
        out[f"SEGPIPE_{section.upper()}__{name.upper()}"] = str(value)
    return out


def nuclei_tif(path: Path | str, side: int = 256, seed: int = 0) -> Path:
    """A grey fluorescence nuclei image from :mod:`segpipe.synthetic`, written as TIFF."""
    from segpipe.synthetic import nuclei_sample

    image, _ = nuclei_sample((side, side), rng=seed, modality="fluorescence", jpeg_probability=0.0,
                             tissue_edge_probability=0.0)
    tifffile.imwrite(path, image[0])
    return Path(path)


def snapshot(results: Path | str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Regions (visible rows), images_latest and duplicate count of a results folder."""
    from segpipe import tables

    con = tables.open_results(str(results), storage_options)
    try:
        regions = con.execute(
            "select image_id, label, class, area_px, centroid_y, centroid_x, bbox_y0, bbox_x0, "
            "bbox_y1, bbox_x1, mean_intensity from regions order by image_id, label").fetchall()
        images = con.execute(
            "select image_id, status, n_regions, fingerprint, model, config_hash "
            "from images_latest order by image_id").fetchall()
        dup = con.execute(
            "select count(*) - count(distinct (image_id, label)) from regions").fetchone()[0]
    finally:
        con.close()
    return {"regions": regions, "images": images, "duplicates": dup}


def labels_of(results: Path | str, image_id: str) -> np.ndarray:
    """The full-resolution label image of one image (its only registered label image)."""
    import zarr

    group = zarr.open_group(f"{results}/images/{image_id}.ome.zarr/labels", mode="r")
    names = group.attrs["ome"]["labels"]
    assert len(names) == 1, names
    return np.asarray(group[f"{names[0]}/0"][...])
