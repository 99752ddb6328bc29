"""Global instance ids, merged across block borders — the pure core of tiled segmentation.

Design (after dask-image's ``label`` — per-block labels, a face adjacency graph, connected
components over it — and Cellpose's distributed segmentation, which links labels over
block faces; here each side *votes*, so touching but distinct instances stay apart):

**Pass 1** (per block, :func:`provisional_block`). The block's window (core + halo) has
been segmented with window-local ids. Core pixels get a *provisional* id: the rank of
their window id among the window ids present in the core (ids ``1..n_b``). A window
object keeps ONE id in the core even when it is disconnected inside the core (it is
connected through the halo). The block returns ``n_b`` and **face records**: for every
neighbouring block ``n`` (faces and corners) and every pair of adjacent pixels ``(p, q)``
(adjacency as below), ``p`` in this core and ``q`` in ``n``'s core, the provisional id of ``p`` and
the flag ``same(p, q)`` = "in *this* window, ``p`` and ``q`` carry the same non-zero
window label" (``q`` lies in this window's halo, so this block sees it). Pairs are
listed in a canonical order both blocks compute from the grid alone, so the driver
joins the two sides by position; only pairs whose own id is non-zero are kept.

**Plan** (driver, :func:`plan`). A provisional global id is ``(block, local id)``. For
two objects ``A`` (block a) and ``C`` (block c) that touch across the border, let
``m`` be the number of adjacent pixel pairs ``(p in A, q in C)`` and ``v`` the number of
"same" votes over those pairs from both windows (``0 <= v <= 2m``). **Rule: merge A and C
when v > m**, i.e. when more than half of all votes say "same object". For a pointwise
model followed by connected components both windows always agree (``v = 2m``), so the
stitched labels equal the whole-image labels exactly; for watershed-like
post-processing, two touching instances that both windows separate get no votes and
stay apart. Merged pairs go into ``scipy.sparse.csgraph.connected_components`` (the
union-find), over the merged ids only. Final id = ``offset[b] + local id`` with offsets
the cumulative counts in block raster order (ids start at 1); a merged component takes
its smallest member's final id. The plan holds the offsets and, per block, a small
remap ``{local id: final id}`` for merged non-representative ids only — no canvas, no
full relabel vector: pass 2 of block b receives ``offset[b]`` and its own remap.

**Pass 2** (per block, :func:`apply_relabel`). Provisional → final ids, vectorised.

Pixel connectivity follows :data:`segpipe.postprocess.CONNECTIVITY` (skimage's
convention: 1 = 4-connectivity, the default there; 2 = 8-connectivity): with 1 only pixels
sharing an edge form pairs (corner neighbours then have none), with 2 diagonal pixels too.
It must be the connectivity the window labels were made with. Semantic models: ``same``
also requires the same class.

Examples
--------
>>> import numpy as np
>>> from segpipe.tiling import BlockGrid
>>> from skimage.measure import label
>>> mask = np.zeros((6, 6), bool); mask[2:4, 1:5] = True
>>> grid = BlockGrid((6, 6), block=3, halo=2)
>>> tiled = label_tiled(lambda r: label(mask[r[0]:r[2], r[1]:r[3]], connectivity=1), grid)
>>> int(tiled.max()), len(np.unique(tiled))
(1, 2)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph

from segpipe.errors import ConfigError
from segpipe.postprocess import CONNECTIVITY, sequential_table
from segpipe.tiling import BlockGrid

__all__ = [
    "BlockRecord",
    "FaceRecord",
    "RelabelPlan",
    "provisional_block",
    "plan",
    "apply_relabel",
    "label_tiled",
    "pair_coords",
    "CONNECTIVITY",
]

Index = tuple[int, int]


@dataclass(frozen=True)
class FaceRecord:
    """One block's side of the border with one neighbour.

    ``pair`` holds positions in the canonical pair list of the two blocks
    (:func:`pair_coords`), ``ids`` this block's provisional id of its own pixel of each
    pair (all non-zero), ``same`` this window's vote that the pair is one object.
    """

    pair: np.ndarray  # int32 (M,)
    ids: np.ndarray  # uint32 (M,)
    same: np.ndarray  # bool (M,)


@dataclass(frozen=True)
class BlockRecord:
    """What pass 1 of one block returns to the driver: its id count and face records."""

    block: Index
    count: int
    faces: dict[Index, FaceRecord] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes of border data this record carries."""
        return sum(f.pair.nbytes + f.ids.nbytes + f.same.nbytes for f in self.faces.values())


@dataclass(frozen=True)
class RelabelPlan:
    """Offsets by block and small remaps of merged ids; see :meth:`for_block`."""

    offsets: dict[Index, int]
    remaps: dict[Index, dict[int, int]]
    n_provisional: int
    n_regions: int

    def for_block(self, block: Index) -> tuple[int, dict[int, int]]:
        """``(offset, remap)`` for pass 2 of ``block`` (offset 0 for unknown blocks)."""
        return self.offsets.get(tuple(block), 0), self.remaps.get(tuple(block), {})


@lru_cache(maxsize=4096)
def _pair_coords_cached(
    grid: BlockGrid, a: Index, c: Index, connectivity: int
) -> tuple[np.ndarray, np.ndarray]:
    ay0, ax0, ay1, ax1 = grid.core(a)
    cy0, cx0, cy1, cx1 = grid.core(c)
    # Pixels of a's core within one pixel of c's core.
    y0, y1 = max(ay0, cy0 - 1), min(ay1, cy1 + 1)
    x0, x1 = max(ax0, cx0 - 1), min(ax1, cx1 + 1)
    pa_list, pc_list = [], []
    if y0 < y1 and x0 < x1:
        yy, xx = np.mgrid[y0:y1, x0:x1]
        yy, xx = yy.ravel(), xx.ravel()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if (dy == dx == 0) or abs(dy) + abs(dx) > connectivity:
                    continue
                qy, qx = yy + dy, xx + dx
                keep = (qy >= cy0) & (qy < cy1) & (qx >= cx0) & (qx < cx1)
                if keep.any():
                    pa_list.append(np.stack([yy[keep], xx[keep]], axis=1))
                    pc_list.append(np.stack([qy[keep], qx[keep]], axis=1))
    if not pa_list:
        empty = np.zeros((0, 2), np.int64)
        return empty, empty
    pa, pc = np.concatenate(pa_list), np.concatenate(pc_list)
    pa.flags.writeable = False
    pc.flags.writeable = False
    return pa, pc


def pair_coords(
    grid: BlockGrid, a: Index, c: Index, connectivity: int = CONNECTIVITY
) -> tuple[np.ndarray, np.ndarray]:
    """All adjacent pixel pairs between the cores of blocks ``a`` and ``c``.

    Parameters
    ----------
    grid : BlockGrid
    a, c : (int, int)
        Two distinct block indices.
    connectivity : {1, 2}
        1: pixels sharing an edge; 2: sharing an edge or a corner (skimage's convention).

    Returns
    -------
    pa, pc : (M, 2) int64 ndarray
        Global ``(y, x)`` of the pixel in ``a``'s core and in ``c``'s core of each pair,
        in a canonical order that depends only on the unordered pair ``{a, c}``
        (``pair_coords(grid, c, a)`` returns the same pairs in the same order, swapped).
    """
    a, c = (int(a[0]), int(a[1])), (int(c[0]), int(c[1]))
    if connectivity not in (1, 2):
        raise ConfigError(f"connectivity={connectivity}: use 1 (4-neighbours) or 2 (8-neighbours)")
    if a == c:
        raise ConfigError(f"pair_coords: block {a} has no border with itself; pass two blocks")
    if a < c:
        return _pair_coords_cached(grid, a, c, connectivity)
    pc, pa = _pair_coords_cached(grid, c, a, connectivity)
    return pa, pc


def provisional_block(
    window_labels: np.ndarray,
    grid: BlockGrid,
    block: Index,
    window_classes: np.ndarray | None = None,
    connectivity: int = CONNECTIVITY,
) -> tuple[np.ndarray, BlockRecord, np.ndarray]:
    """Pass 1 of one block: provisional core ids and face records.

    Parameters
    ----------
    window_labels : (H, W) integer ndarray
        Window-local labels of the block's window ``grid.window(block)`` (0 = background).
    grid : BlockGrid
        The grid; its halo must be >= 1 so the neighbour pixel of each pair is visible.
    block : (int, int)
    window_classes : (H, W) integer ndarray, optional
        Semantic class per pixel; ``same`` then also requires equal classes.
    connectivity : {1, 2}
        The connectivity the window labels were made with (see :func:`pair_coords`).

    Returns
    -------
    core_ids : (h, w) uint32 ndarray
        Provisional ids of the core, ``1..count`` (0 = background).
    record : BlockRecord
        Count and face records to send to the driver.
    window_ids : (n,) ndarray
        Window label of each provisional id (``window_ids[i - 1]`` for id ``i``).
    """
    block = (int(block[0]), int(block[1]))
    wy0, wx0, wy1, wx1 = grid.window(block)
    if window_labels.shape != (wy1 - wy0, wx1 - wx0):
        raise ConfigError(
            f"window_labels has shape {window_labels.shape}, expected {(wy1 - wy0, wx1 - wx0)} "
            f"for block {block}; segment grid.window(block)"
        )
    if grid.halo < 1 and grid.n_blocks > 1:
        raise ConfigError("halo=0: stitching needs a halo of at least 1 pixel; raise the halo")
    core = window_labels[grid.core_in_window(block)]
    window_ids, core_ids = _ids_and_ranks(core)
    faces: dict[Index, FaceRecord] = {}
    for n in grid.neighbours(block):
        pb, pn = pair_coords(grid, block, n, connectivity)
        if len(pb) == 0:
            continue
        py, px = pb[:, 0] - wy0, pb[:, 1] - wx0
        qy, qx = pn[:, 0] - wy0, pn[:, 1] - wx0
        lp = window_labels[py, px]
        nz = np.flatnonzero(lp)
        if len(nz) == 0:
            continue
        lp = lp[nz]
        same = lp == window_labels[qy[nz], qx[nz]]
        if window_classes is not None:
            same &= window_classes[py[nz], px[nz]] == window_classes[qy[nz], qx[nz]]
        faces[n] = FaceRecord(
            pair=nz.astype(np.int32), ids=_rank(lp, window_ids), same=same.astype(bool)
        )
    return core_ids, BlockRecord(block=block, count=len(window_ids), faces=faces), window_ids


def _ids_and_ranks(core: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sorted non-zero ids of ``core`` and ``core`` under :func:`_rank` of them."""
    table = sequential_table(core)
    if table is not None:  # dense ids: a lookup table, no sort
        ids = np.flatnonzero(table)
        if len(ids) == len(table) - 1:  # every id 1..max present (e.g. a one-block image): identity
            return ids.astype(core.dtype), core.astype(np.uint32, copy=False)
        return ids.astype(core.dtype), np.take(table, core)  # = table[core], 1.5x faster
    window_ids = np.unique(core)
    window_ids = window_ids[window_ids != 0]
    return window_ids, _rank(core, window_ids)


def _rank(values: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    """Map each value to 1 + its position in ``sorted_ids`` (0 stays 0)."""
    out = np.searchsorted(sorted_ids, values).astype(np.uint32) + 1
    out[values == 0] = 0
    return out


def plan(records: Iterable[BlockRecord]) -> RelabelPlan:
    """Driver step: offsets by block and the merges agreed across block borders.

    Parameters
    ----------
    records : iterable of BlockRecord
        One record per processed block (blocks not listed have no objects).

    Returns
    -------
    RelabelPlan
        ``offsets[b]`` = number of provisional ids in blocks before ``b`` in raster
        order; ``remaps[b]`` = ``{local id: final id}`` for ids merged into a component
        whose smallest final id lies elsewhere. ``n_regions`` counts the final ids.
    """
    by_block = {tuple(r.block): r for r in records}
    order = sorted(by_block)
    offsets: dict[Index, int] = {}
    total = 0
    for b in order:
        offsets[b] = total
        total += int(by_block[b].count)
    if total >= 2**32 - 1:
        raise ConfigError(f"{total} provisional ids do not fit uint32 labels; use larger blocks")
    src_parts, dst_parts = [], []
    for a in order:
        ra = by_block[a]
        for c, fa in ra.faces.items():
            c = tuple(c)
            if c <= a or c not in by_block:
                continue
            fc = by_block[c].faces.get(a)
            if fc is None:
                continue
            _, ia, ic = np.intersect1d(fa.pair, fc.pair, assume_unique=True, return_indices=True)
            if len(ia) == 0:
                continue
            # object pairs keyed by local ids (bounded by the two blocks' counts)
            width = int(by_block[c].count) + 1
            key = fa.ids[ia].astype(np.int64) * width + fc.ids[ic].astype(np.int64)
            votes = fa.same[ia].astype(np.int64) + fc.same[ic].astype(np.int64)
            uniq, inv = np.unique(key, return_inverse=True)
            n_pairs = np.bincount(inv, minlength=len(uniq))
            n_votes = np.bincount(inv, weights=votes, minlength=len(uniq))
            merged = uniq[n_votes > n_pairs]
            src_parts.append(merged // width + offsets[a])
            dst_parts.append(merged % width + offsets[c])
    remaps: dict[Index, dict[int, int]] = {}
    n_regions = total
    if src_parts:
        src, dst = np.concatenate(src_parts), np.concatenate(dst_parts)
        nodes, inv = np.unique(np.concatenate([src, dst]), return_inverse=True)
        graph = scipy.sparse.coo_matrix(
            (np.ones(len(src), bool), (inv[: len(src)], inv[len(src) :])),
            shape=(len(nodes), len(nodes)),
        )
        n_comp, comp = scipy.sparse.csgraph.connected_components(graph, directed=False)
        smallest = np.full(n_comp, np.iinfo(np.int64).max)
        np.minimum.at(smallest, comp, nodes)
        final = smallest[comp]
        n_regions = total - (len(nodes) - n_comp)
        starts = np.array([offsets[b] for b in order], np.int64)
        moved = np.flatnonzero(final != nodes)
        owner = np.searchsorted(starts, nodes[moved] - 1, side="right") - 1
        for i, o in zip(moved.tolist(), owner.tolist(), strict=True):
            b = order[o]
            remaps.setdefault(b, {})[int(nodes[i] - offsets[b])] = int(final[i])
    return RelabelPlan(offsets=offsets, remaps=remaps, n_provisional=total, n_regions=n_regions)


def apply_relabel(
    provisional: np.ndarray, offset: int, remap: dict[int, int] | None = None
) -> np.ndarray:
    """Pass 2 of one block: provisional ids → final ids (0 stays 0).

    Parameters
    ----------
    provisional : integer ndarray
        Provisional ids of a block (``1..count``).
    offset : int
        The block's offset from :meth:`RelabelPlan.for_block`.
    remap : dict, optional
        ``{local id: final id}`` for merged ids.

    Returns
    -------
    uint32 ndarray of the same shape.
    """
    prov = np.asarray(provisional)
    out = prov.astype(np.uint32, copy=True)
    nz = out != 0
    out[nz] += np.uint32(offset)
    if remap:
        keys = np.fromiter(remap.keys(), np.int64, len(remap))
        vals = np.fromiter(remap.values(), np.int64, len(remap))
        order = np.argsort(keys)
        keys, vals = keys[order], vals[order]
        pos = np.clip(np.searchsorted(keys, prov), 0, len(keys) - 1)
        hit = nz & (keys[pos] == prov)
        out[hit] = vals[pos[hit]].astype(np.uint32)
    return out


def label_tiled(
    segment: Callable[[tuple[int, int, int, int]], np.ndarray | tuple[np.ndarray, np.ndarray]],
    grid: BlockGrid,
    blocks: Iterable[Index] | None = None,
    connectivity: int = CONNECTIVITY,
) -> np.ndarray:
    """Tiled segmentation in memory: pass 1, plan, pass 2 over every block of ``grid``.

    The reference implementation of the distributed path in :mod:`segpipe.infer`, for
    tests and small images (it holds the whole label image).

    Parameters
    ----------
    segment : callable
        ``segment(window) -> labels`` or ``-> (labels, classes)`` for a window
        ``(y0, x0, y1, x1)``; labels are window-local ids.
    grid : BlockGrid
    blocks : iterable of (int, int), optional
        Blocks to process (default: all); the others stay 0.
    connectivity : {1, 2}
        The connectivity ``segment`` labels with.

    Returns
    -------
    (Y, X) uint32 ndarray of final labels.
    """
    blocks = list(grid.blocks()) if blocks is None else [tuple(b) for b in blocks]
    out = np.zeros(grid.shape, np.uint32)
    provisional, records = {}, []
    for b in blocks:
        result = segment(grid.window(b))
        labels, classes = result if isinstance(result, tuple) else (result, None)
        core_ids, record, _ = provisional_block(labels, grid, b, classes, connectivity)
        provisional[b] = core_ids
        records.append(record)
    relabel = plan(records)
    for b in blocks:
        y0, x0, y1, x1 = grid.core(b)
        out[y0:y1, x0:x1] = apply_relabel(provisional[b], *relabel.for_block(b))
    return out
