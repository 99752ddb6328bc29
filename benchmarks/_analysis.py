"""Counting work without running it: how many pixels the network sees on each side."""

from __future__ import annotations

__all__ = ["model_only_pixels", "pipeline_pixels"]


def _n_tiles(origin: int, size: int, stride: int) -> int:
    # tiles of the global grid whose core [k * stride, (k + 1) * stride) meets [origin, origin + size)
    return (origin + size - 1) // stride - origin // stride + 1


def model_only_pixels(shape: tuple[int, int], tile: int, stride: int) -> tuple[int, int]:
    """``(tiles, pixels)`` the network sees covering an image once with the card's tiles."""
    n = -(-shape[0] // stride) * -(-shape[1] // stride)
    return n, n * tile * tile


def pipeline_pixels(shape: tuple[int, int], model: str, chunk: int = 1024) -> tuple[int, int, str]:
    """``(forward passes, pixels, how)`` of segpipe's segment stage on a fully processed image.

    Mirrors :func:`segpipe.infer.segment_image`: learned networks predict each block's
    window (block + halo, halo rounded up to 16 px) in one pass (``grid="window"``); the
    classical model tiles each window on the global tile grid, so the tiles whose cores lie
    in the halo are predicted again by every neighbouring block.
    """
    from segpipe.infer import default_halo
    from segpipe.models import load_model
    from segpipe.tiling import BlockGrid

    m = load_model(model, device="cpu")
    card = m.card
    learned = card.architecture.get("type") != "classical"
    halo = default_halo(card.halo)
    if learned:
        halo = -(-halo // 16) * 16
    grid = BlockGrid(shape, chunk, halo)
    passes = pixels = 0
    mult = max(1, int(getattr(m, "size_multiple", 1)))
    for b in grid.blocks():
        y0, x0, y1, x1 = grid.window(b)
        if learned:
            h, w = -(-(y1 - y0) // mult) * mult, -(-(x1 - x0) // mult) * mult
            passes += 1
            pixels += h * w
        else:
            n = _n_tiles(y0, y1 - y0, card.stride) * _n_tiles(x0, x1 - x0, card.stride)
            passes += n
            pixels += n * card.tile * card.tile
    how = (
        f"whole window per pass, halo {halo}"
        if learned
        else f"{card.tile}² tiles on the global grid, halo {halo}"
    )
    return passes, pixels, how
