"""``cover_cells`` picks the same rectangles as its earlier implementation (numpy-indexed
counts, uncached trims; frozen below as the reference)."""

from __future__ import annotations

from functools import cache

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from segpipe.tiling import cover_cells


def reference_cover_cells(mask, origin=(0, 0), cell=128, context=0, overhead=None):
    m = np.asarray(mask, bool)
    ny, nx = m.shape
    if not m.any():
        return []
    oy, ox = (int(v) for v in origin)
    ey = np.unique(np.clip(np.arange(oy // cell * cell, oy + ny + cell, cell) - oy, 0, ny))
    ex = np.unique(np.clip(np.arange(ox // cell * cell, ox + nx + cell, cell) - ox, 0, nx))
    active = np.add.reduceat(np.add.reduceat(m, ey[:-1], axis=0), ex[:-1], axis=1) > 0
    counts = np.pad(active.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    extra = cell * cell if overhead is None else int(overhead)

    def count(r0, r1, c0, c1):
        return int(counts[r1, c1] - counts[r0, c1] - counts[r1, c0] + counts[r0, c0])

    def trim(r0, r1, c0, c1):
        if count(r0, r1, c0, c1) == 0:
            return None
        while count(r0, r0 + 1, c0, c1) == 0:
            r0 += 1
        while count(r1 - 1, r1, c0, c1) == 0:
            r1 -= 1
        while count(r0, r1, c0, c0 + 1) == 0:
            c0 += 1
        while count(r0, r1, c1 - 1, c1) == 0:
            c1 -= 1
        return r0, r1, c0, c1

    def area(r0, r1, c0, c1):
        h = min(int(ey[r1]) + context, ny) - max(int(ey[r0]) - context, 0)
        w = min(int(ex[c1]) + context, nx) - max(int(ex[c0]) - context, 0)
        return h * w + extra

    @cache
    def best(r0, r1, c0, c1):
        cost, parts = area(r0, r1, c0, c1), ((r0, r1, c0, c1),)
        rows = [((r0, r, c0, c1), (r, r1, c0, c1)) for r in range(r0 + 1, r1)]
        cols = [((r0, r1, c0, c), (r0, r1, c, c1)) for c in range(c0 + 1, c1)]
        for first, second in rows + cols:
            a, b = trim(*first), trim(*second)
            if a is not None and b is not None:
                (ca, pa), (cb, pb) = best(*a), best(*b)
                if ca + cb < cost:
                    cost, parts = ca + cb, pa + pb
        return cost, parts

    _, parts = best(*trim(0, active.shape[0], 0, active.shape[1]))
    return sorted((int(ey[r0]), int(ex[c0]), int(ey[r1]), int(ex[c1])) for r0, r1, c0, c1 in parts)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    grid=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    density=st.floats(0.05, 1.0),
    origin=st.tuples(st.integers(0, 40), st.integers(0, 40)),
    context=st.sampled_from([0, 3, 8, 16]),
    overhead=st.sampled_from([None, 0, 50]),
    specks=st.booleans(),
)
def test_cover_cells_equals_the_reference(seed, grid, density, origin, context, overhead, specks):
    rng = np.random.default_rng(seed)
    cell = 16
    cells = rng.random(grid) < density
    mask = np.repeat(np.repeat(cells, cell, 0), cell, 1)
    if specks:  # single pixels in otherwise empty cells
        mask |= rng.random(mask.shape) < 0.002
    mask = mask[
        : mask.shape[0] - int(rng.integers(0, cell)), : mask.shape[1] - int(rng.integers(0, cell))
    ]
    got = cover_cells(mask, origin, cell, context, overhead)
    assert got == reference_cover_cells(mask, origin, cell, context, overhead)
