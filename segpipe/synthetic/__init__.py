"""Seeded synthetic images for tests, the demo, model training and benchmarks.

In-memory samples for training (fast, one call per sample):

* :func:`nuclei_sample` — fluorescence or H&E nuclei with instance labels;
* :func:`blob_sample` — plain-style nuclei (flat / sharp / any contrast and noise);
* :func:`defects_sample` — industrial surfaces with a scratch / pit / stain class map.

Files:

* :func:`write_slide` — an SVS-like pyramidal BigTIFF written tile by tile (any size) and
  its instance labels; :class:`SyntheticSlide` renders any region of such a slide;
* :func:`write_mosaic` — a tiled BigTIFF of any size repeating one rendered patch (fast);
* :func:`write_industrial` — a 16-bit PNG or tiled TIFF and its class map;
* :func:`make_archive` — a small archive of both, ground truth in a parallel folder.
"""

from segpipe.synthetic._archive import ArchiveInfo, ArchiveItem, make_archive, truth_path
from segpipe.synthetic._blobs import blob_sample
from segpipe.synthetic._industrial import (
    DEFECT_CLASSES,
    SURFACES,
    IndustrialInfo,
    defects_sample,
    write_industrial,
)
from segpipe.synthetic._mosaic import mosaic_patches, mosaic_variant_at, write_mosaic
from segpipe.synthetic._render import Style, random_style
from segpipe.synthetic._samples import MODALITIES, nuclei_sample
from segpipe.synthetic._scene import SyntheticSlide
from segpipe.synthetic._slide import SlideInfo, labels_path_for, level_shapes, write_slide

__all__ = [
    "DEFECT_CLASSES",
    "MODALITIES",
    "SURFACES",
    "ArchiveInfo",
    "ArchiveItem",
    "IndustrialInfo",
    "SlideInfo",
    "Style",
    "SyntheticSlide",
    "blob_sample",
    "defects_sample",
    "labels_path_for",
    "level_shapes",
    "make_archive",
    "mosaic_patches",
    "mosaic_variant_at",
    "nuclei_sample",
    "random_style",
    "truth_path",
    "write_industrial",
    "write_mosaic",
    "write_slide",
]
