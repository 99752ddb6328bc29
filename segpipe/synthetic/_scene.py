"""A whole synthetic slide as a deterministic, tile-independent description.

* Tissue: one to four lobulated islands with rough edges (``_islands.py``) covering about
  ``tissue_fraction`` of the slide, with lumens cut out (H&E). It is a pure function of
  level-0 coordinates, so any region (or a low-resolution thumbnail) can be evaluated on
  its own.
* Nuclei: the slide is cut into square cells; each cell draws its nuclei from a generator
  seeded with ``(seed, cell y, cell x)``, keeping only nuclei whose centre lies in tissue.
  A nucleus too close to one of a neighbouring cell with higher (hashed) priority is
  dropped — a rule that only looks at the 3×3 neighbourhood, so the outcome does not
  depend on which tile is being rendered.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from segpipe.errors import ConfigError
from segpipe.synthetic._islands import make_islands
from segpipe.synthetic._noise import hash_uniform, sub_seed
from segpipe.synthetic._nuclei import (
    Nuclei,
    conflicts,
    drop_occluded,
    max_radius,
    sample_nuclei,
)
from segpipe.synthetic._render import (
    HEMATOXYLIN_OD,
    Scene,
    Style,
    gather,
    lumens,
    quantize,
    random_style,
    render_background,
    render_region,
)
from segpipe.synthetic._samples import check_diameter, mean_area

KINDS = ("he", "fluorescence")
_MAX_PER_CELL = 256
_CACHE_MIN = 512
_LUMEN_MAX_STEP = 4.0
_CELL_STEP = 4  # nuclei placement looks at the tissue map on a grid of this step
_BLOCK = 256  # render grid: every pixel is computed within its own block of this size


@dataclass
class SyntheticSlide:
    """A virtual slide: render any region of it, or a thumbnail, deterministically.

    Parameters
    ----------
    shape : (Y, X)
        Level-0 size in pixels.
    kind : {"he", "fluorescence"}
        Staining.
    seed : int
        Everything follows from it.
    tissue_fraction : float
        Approximate fraction of the slide covered by tissue (0 < f <= 1).
    diameter_px : (min, max)
        Nucleus diameters at level 0.
    density : float
        Fraction of the tissue area covered by nuclei.
    """

    shape: tuple[int, int]
    kind: str = "he"
    seed: int = 0
    tissue_fraction: float = 0.4
    diameter_px: tuple[float, float] = (10, 32)
    density: float = 0.3
    style: Style = field(init=False)
    _cache: dict = field(init=False, default_factory=dict, repr=False)
    _last_tissue: tuple = field(init=False, default=(None, None), repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"kind={self.kind!r}: use one of {', '.join(KINDS)}")
        if not 0.0 < self.tissue_fraction <= 1.0:
            raise ConfigError(f"tissue_fraction={self.tissue_fraction!r}: give a value in (0, 1]")
        Y, X = (int(v) for v in self.shape)
        if Y < 16 or X < 16:
            raise ConfigError(f"shape={self.shape!r}: a slide needs at least 16 x 16 pixels")
        self.shape = (Y, X)
        self.diameter_px = check_diameter(self.diameter_px)
        rng = np.random.default_rng(sub_seed(self.seed, 1))
        self.style = random_style(rng, self.kind)
        self._scene_seed = sub_seed(self.seed, 5)
        # fluorescence scanners write 12–16 bit; H&E is 8-bit RGB
        self.dtype: type = np.uint16 if self.kind == "fluorescence" else np.uint8
        self._reach = int(np.ceil(max_radius(self.diameter_px))) + 1
        self.cell = int(np.ceil(max(128, 4 * self.diameter_px[1]) / 16) * 16)
        self._islands = make_islands(sub_seed(self.seed, 2), (Y, X), self.tissue_fraction)

    # ---- tissue -------------------------------------------------------------------------
    def tissue(self, y0: int, x0: int, y1: int, x1: int, step: float = 1.0) -> np.ndarray:
        """Soft tissue map in [0, 1] of a region (in the grid of ``step`` level-0 px)."""
        key = (y0, x0, y1, x1, step)
        if self._last_tissue[0] == key:  # render asks for the block it just checked
            return self._last_tissue[1]
        if self.tissue_fraction >= 1.0:
            out = np.ones((y1 - y0, x1 - x0), np.float32)
        else:
            out = self._islands.tissue(y0, x0, y1, x1, step)
        if step <= _LUMEN_MAX_STEP:  # lumens are finer than a thumbnail pixel: skip them there
            out *= 1.0 - lumens(self._scene_seed, self.style, y0, x0, y1, x1, step)
        out.flags.writeable = False
        self._last_tissue = (key, out)
        return out

    # ---- nuclei -------------------------------------------------------------------------
    def _raw_cell(self, cy: int, cx: int) -> Nuclei:
        key = ("raw", cy, cx)
        if key in self._cache:
            return self._cache[key]
        c, q = self.cell, _CELL_STEP
        y0, x0 = cy * c, cx * c
        t = self.tissue(y0 // q, x0 // q, (y0 + c) // q, (x0 + c) // q, float(q))
        rng = np.random.default_rng(sub_seed(self.seed, 3, cy, cx))
        count = int(
            rng.poisson(self.density * float(t.sum()) * q * q / mean_area(self.diameter_px))
        )
        count = min(count, _MAX_PER_CELL - 1)
        nuclei = sample_nuclei(rng, (y0, x0, y0 + c, x0 + c), count, self.diameter_px)
        if len(nuclei):
            at = t[
                ((nuclei.cy - y0) // q).astype(int).clip(0, c // q - 1),
                ((nuclei.cx - x0) // q).astype(int).clip(0, c // q - 1),
            ]
            nuclei = nuclei.take(np.flatnonzero(at > 0.5))
        n_cx = -(-self.shape[1] // c) + 2
        base = ((cy + 1) * n_cx + (cx + 1)) * _MAX_PER_CELL
        nuclei.ids = (base + 1 + np.arange(len(nuclei))).astype(np.uint32)
        self._store(key, nuclei)
        return nuclei

    def _cell(self, cy: int, cx: int) -> Nuclei:
        """Nuclei of a cell after dropping those that later neighbours split or hide."""
        key = ("clean", cy, cx)
        if key in self._cache:
            return self._cache[key]
        own = self._spaced_cell(cy, cx)
        if len(own):
            around = [
                self._spaced_cell(ny, nx)
                for ny in (cy - 1, cy, cy + 1)
                for nx in (cx - 1, cx, cx + 1)
            ]
            own = drop_occluded(own, Nuclei.concat([a for a in around if len(a)]))
        self._store(key, own)
        return own

    def _spaced_cell(self, cy: int, cx: int) -> Nuclei:
        """Nuclei of a cell after dropping those too close to a higher-priority neighbour cell."""
        key = ("final", cy, cx)
        if key in self._cache:
            return self._cache[key]
        own = self._raw_cell(cy, cx)
        if len(own):
            prio = hash_uniform(sub_seed(self.seed, 4), np.asarray(cy), np.asarray(cx))
            drop = np.zeros(len(own), bool)
            for ny in (cy - 1, cy, cy + 1):
                for nx in (cx - 1, cx, cx + 1):
                    if (ny, nx) == (cy, cx):
                        continue
                    if hash_uniform(sub_seed(self.seed, 4), np.asarray(ny), np.asarray(nx)) > prio:
                        drop |= conflicts(own, self._raw_cell(ny, nx), 0.82)
            own = own.take(np.flatnonzero(~drop))
        self._store(key, own)
        return own

    def _store(self, key: tuple, value: Nuclei) -> None:
        # tiles are rendered row by row: keep the cells of the last few cell rows only
        limit = max(_CACHE_MIN, 16 * (-(-self.shape[1] // self.cell) + 2))
        while len(self._cache) >= limit:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = value

    def nuclei_in(self, y0: int, x0: int, y1: int, x1: int) -> Nuclei:
        """All nuclei that may touch region ``[y0:y1, x0:x1]``."""
        c = self.cell
        reach = self._reach
        cy0, cy1 = int((y0 - reach) // c), int((y1 + reach) // c)
        cx0, cx1 = int((x0 - reach) // c), int((x1 + reach) // c)
        parts = [self._cell(cy, cx) for cy in range(cy0, cy1 + 1) for cx in range(cx0, cx1 + 1)]
        return Nuclei.concat([p for p in parts if len(p)])

    # ---- rendering ----------------------------------------------------------------------
    @property
    def scene(self) -> Scene:
        """The render description (style, noise seed, nuclei, tissue)."""
        return Scene(self.style, self._scene_seed, self.nuclei_in, self.tissue, self.dtype)

    def render(self, y0: int, x0: int, y1: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``(C, h, w)`` (``self.dtype``) and labels ``(h, w)`` uint32 of a level-0 region.

        The region is assembled from blocks on a fixed global grid, each rendered on its own
        with enough halo for the blur, so the result does not depend on the region asked for:
        rendering a large region and cropping equals rendering the crop.
        """
        B = _BLOCK
        channels = 3 if self.kind == "he" else 1
        image = np.empty((channels, y1 - y0, x1 - x0), self.dtype)
        labels = np.empty((y1 - y0, x1 - x0), np.uint32)
        for by in range(y0 // B, -(-y1 // B)):
            for bx in range(x0 // B, -(-x1 // B)):
                bimg, blab = self._render_block(by, bx)
                sy0, sy1 = max(by * B, y0), min((by + 1) * B, y1)
                sx0, sx1 = max(bx * B, x0), min((bx + 1) * B, x1)
                src = (slice(sy0 - by * B, sy1 - by * B), slice(sx0 - bx * B, sx1 - bx * B))
                dst = (slice(sy0 - y0, sy1 - y0), slice(sx0 - x0, sx1 - x0))
                image[(slice(None), *dst)] = bimg[(slice(None), *src)]
                labels[dst] = blab[src]
        return image, labels

    def _surely_no_tissue(self, y0: int, x0: int, y1: int, x1: int) -> bool:
        """True when the region certainly has no tissue (checked cheaply on a 4-px grid).

        The island distance changes by at most a few px per px, so a coarse maximum well
        below the soft edge (-edge/2) proves the full-resolution map is 0 (lumens only
        remove tissue). A False answer just means "render in full".
        """
        if self.tissue_fraction >= 1.0:
            return False
        q = 4
        d = self._islands.distance(y0 // q, x0 // q, -(-y1 // q) + 1, -(-x1 // q) + 1, float(q))
        return float(d.max()) < -(self._islands.edge_px / 2 + 6 * q)

    def _render_block(self, by: int, bx: int) -> tuple[np.ndarray, np.ndarray]:
        B = _BLOCK
        y0, x0, y1, x1 = by * B, bx * B, (by + 1) * B, (bx + 1) * B
        # No tissue within reach of a nucleus centre (centres need tissue > 0.5 on the
        # _CELL_STEP grid) means no nucleus and no tissue in the block or its halo.
        m = self.style.halo + self._reach + 2 * _CELL_STEP
        empty = self._surely_no_tissue(y0 - m, x0 - m, y1 + m, x1 + m)
        channels = 3 if self.kind == "he" else 1
        # pixel noise from a generator seeded per block: blocks are the fixed unit, so this
        # stays region-independent and is much faster than hashing every pixel
        rng = np.random.default_rng(sub_seed(self.seed, 7, by, bx))
        normals = rng.standard_normal((channels, B, B), np.float32)
        if empty:  # glass only: no texture, nothing to blur — much faster
            image = render_background(self.scene, y0, x0, y1, x1, normals)
            return image, np.zeros((B, B), np.uint32)
        image, index, nuclei = render_region(self.scene, y0, x0, y1, x1, normals)
        labels = gather(nuclei.ids.astype(np.uint32), index)
        return image, labels

    def thumbnail(self, step: int) -> np.ndarray:
        """A ``(C, ceil(Y/step), ceil(X/step))`` overview (``self.dtype``) at its own scale.

        Tissue and glass are evaluated exactly; nuclei appear as their mean coverage
        (cheap: no nucleus is rasterised), so a thumbnail of a 100k-px slide is instant.
        """
        Y, X = self.shape
        h, w = -(-Y // step), -(-X // step)
        sub = 2 if step >= 2 else 1  # average 2 × 2 samples per pixel, as a pyramid level does
        t = self.tissue(0, 0, h * sub, w * sub, float(step) / sub)
        t = t.reshape(h, sub, w, sub).mean(axis=(1, 3))
        st = self.style
        cover = self.density * np.clip((t - 0.5) * 4, 0, 1)
        rng = np.random.default_rng(sub_seed(self.seed, 6))
        if self.kind == "fluorescence":
            value = st.background + st.autofluorescence * t + cover * st.exposure * 0.9
            image = value[None] + rng.normal(0, 1.0, (1, h, w))
        else:
            h_conc = t * st.h_tissue + cover * st.h_nucleus
            e_conc = t * st.e_tissue * (1 - 0.5 * cover)
            od = (
                h_conc[None] * np.asarray(st.h_vec)[:, None, None]
                + e_conc[None] * np.asarray(st.e_vec)[:, None, None]
            )
            image = np.asarray(st.light)[:, None, None] * 255.0 * 10.0 ** (-od)
            image = image + rng.normal(0, 1.0, image.shape)
        return quantize(image, self.dtype)


__all__ = ["SyntheticSlide", "HEMATOXYLIN_OD"]
