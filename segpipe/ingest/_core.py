"""Pure core of ingest: pyramid sizes, the 2×2 mean, and how levels are split into tasks."""

from __future__ import annotations

import heapq

import numpy as np


def level_shapes_for(shape: tuple[int, int], min_size: int = 1024) -> list[tuple[int, int]]:
    """Pyramid sizes: halve (rounding up) until the long side is at most ``min_size``.

    >>> level_shapes_for((2503, 1979), 600)
    [(2503, 1979), (1252, 990), (626, 495), (313, 248)]
    """
    shapes = [(int(shape[0]), int(shape[1]))]
    while max(shapes[-1]) > min_size:
        y, x = shapes[-1]
        shapes.append(((y + 1) // 2, (x + 1) // 2))
    return shapes


def downsample2(block: np.ndarray) -> np.ndarray:
    """2×2 mean of a ``(C, Y, X)`` block; an odd last row / column averages what exists.

    Integers are rounded half up and keep their dtype; floats are averaged in float32.

    >>> downsample2(np.array([[[0, 2, 5], [2, 4, 7]]], np.uint8))
    array([[[2, 6]]], dtype=uint8)
    """
    _, y, x = block.shape
    if y % 2 or x % 2:
        block = np.pad(block, ((0, 0), (0, y % 2), (0, x % 2)), mode="edge")
    if np.issubdtype(block.dtype, np.integer):
        acc = {1: np.uint16, 2: np.uint32}.get(block.dtype.itemsize, np.int64)
        total = block[:, 0::2, 0::2].astype(acc)
        for dy, dx in ((1, 0), (0, 1), (1, 1)):
            total += block[:, dy::2, dx::2]
        total += 2
        total //= 4
        return total.astype(block.dtype)
    total = block[:, 0::2, 0::2].astype(np.float32)
    for dy, dx in ((1, 0), (0, 1), (1, 1)):
        total += block[:, dy::2, dx::2]
    total *= 0.25
    return total.astype(block.dtype)


# Relative costs for planning the phases (unit: reading, encoding and 2×2-meaning one
# level-0 block; measured on zlib and JPEG tiled TIFFs with zstd chunks on 1-2 workers).
_COST_LEAF_FROM_STORE = 1.2  # a leaf of a lower level: read 4 blocks back + mean + encode
_COST_ASSEMBLED = 0.35  # a block built from its children: mean + encode
_COST_TASK = 0.2  # scheduling a task, opening its arrays
_COST_PHASE = 3.0  # a barrier between phases: the last tasks' tail, a scheduler round trip
_MAX_DEPTH = 4  # a task spans at most 16 × 16 leaves: bounded retries and progress steps


def _phases(grids: list[tuple[int, int]], threads: int) -> list[tuple[int, int]]:
    """Split the levels into phases ``(first, top)``, run one after the other.

    ``grids[i]`` is the block grid (rows, columns) of level ``i``. A phase has one task per
    block of level ``top``, each writing that block and every block under it down to
    ``first``; its leaves come from the source (``first == 0``) or from level ``first - 1``
    in the store. High tops mean few barriers and little read back, but few, uneven tasks
    for ``threads`` threads; the split with the smallest estimated time wins (each phase:
    its tasks' costs packed longest first onto the threads, plus a barrier). A task spans
    at most ``_MAX_DEPTH`` levels above its leaves (16 × 16 leaves), so a lost worker costs
    a bounded recomputation.

    >>> _phases([(8, 8), (4, 4), (2, 2), (1, 1)], 2)
    [(0, 2), (3, 3)]
    >>> _phases([(32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)], 16)
    [(0, 3), (4, 5)]
    """

    def phase_cost(first: int, top: int) -> float:
        k = top - first
        fy, fx = grids[first]
        leaf = 1.0 if first == 0 else _COST_LEAF_FROM_STORE
        upper = sum(4**i for i in range(k))  # assembled blocks under a full top block
        costs = []
        for y in range(grids[top][0]):
            rows = min((y + 1) << k, fy) - (y << k)
            for x in range(grids[top][1]):
                cols = min((x + 1) << k, fx) - (x << k)
                full = rows * cols / 4**k
                costs.append(rows * cols * leaf + full * upper * _COST_ASSEMBLED + _COST_TASK)
        loads = [0.0] * min(threads, len(costs))
        for cost in sorted(costs, reverse=True):
            heapq.heapreplace(loads, loads[0] + cost)
        return max(loads) + _COST_PHASE

    last = len(grids) - 1
    best: dict[int, tuple[float, list[tuple[int, int]]]] = {last + 1: (0.0, [])}
    for first in range(last, -1, -1):
        best[first] = min(
            (phase_cost(first, top) + best[top + 1][0], [(first, top), *best[top + 1][1]])
            for top in range(first, min(first + _MAX_DEPTH, last) + 1)
        )
    return best[0][1]
