"""Foreground (tissue) masks from a low-resolution level, and the blocks worth processing.

The mask is computed once per image on a thumbnail (a low pyramid level, typically
≤ 1024 px a side); only full-resolution blocks that touch the mask are read and predicted
(``DESIGN.md``: chunks outside the foreground are never read at full resolution).

* brightfield (H&E, RGB): Otsu on the HSV saturation — stained tissue is coloured, glass
  is white or grey whatever the illumination;
* fluorescence: Otsu on the smoothed intensity (dark glass vs autofluorescent tissue and
  nuclei; smoothing turns dense nuclei into a continuous foreground);
* grey (industrial): Otsu on the smoothed intensity, foreground = the side the image
  border is *not* on.

The cut is moved halfway from the Otsu threshold towards the background class mean, so a
thumbnail pixel only partly covered by tissue still counts as foreground.

Industrial parts and fully covered slides usually fill the frame; Otsu then splits one
class in two. When the split is weak — Otsu's effectiveness (between-class variance over
total variance) below ``min_separation`` and, for brightfield / fluorescence, the class
means fewer than ``MIN_TIGHT_RATIO`` standard deviations of the tighter class (the glass)
apart — everything is foreground. Grey images use the effectiveness alone, so a stain on a
part that fills the frame never cuts the part.
"""

from __future__ import annotations

from segpipe.tissue._mask import MIN_SEPARATION, MIN_TIGHT_RATIO, WORK_SIZE, tissue_mask
from segpipe.tissue._select import (
    block_fraction_skipped,
    select_blocks,
    select_blocks_and_cells,
    select_from_thumb,
    tissue_cells,
)
from segpipe.tissue._threshold import otsu_separation

__all__ = [
    "MIN_SEPARATION",
    "MIN_TIGHT_RATIO",
    "WORK_SIZE",
    "tissue_mask",
    "otsu_separation",
    "select_blocks",
    "tissue_cells",
    "select_blocks_and_cells",
    "select_from_thumb",
    "block_fraction_skipped",
]
