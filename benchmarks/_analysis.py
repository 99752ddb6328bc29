"""Counting work without running it: how many network tiles each side predicts."""

from __future__ import annotations

__all__ = ["model_only_tiles", "pipeline_tiles"]


def _n_tiles(origin: int, size: int, stride: int) -> int:
    # tiles of the global grid whose core [k * stride, (k + 1) * stride) meets [origin, origin + size)
    return (origin + size - 1) // stride - origin // stride + 1


def model_only_tiles(shape: tuple[int, int], stride: int) -> int:
    """Tiles the network needs to cover an image once (the model-only reference)."""
    return -(-shape[0] // stride) * -(-shape[1] // stride)


def pipeline_tiles(shape: tuple[int, int], model: str, chunk: int = 1024) -> int:
    """Tiles segpipe's segment stage predicts on a fully processed image.

    Each block's window (core + halo, clipped to the image) is tiled on its own on the
    global grid (:func:`segpipe.predict.predict_window`), so tiles whose cores lie in the
    halo are predicted again by every neighbouring block.
    """
    from segpipe.infer import default_halo
    from segpipe.models import load_model
    from segpipe.tiling import BlockGrid

    card = load_model(model, device="cpu").card
    grid = BlockGrid(shape, chunk, default_halo(card.halo))
    total = 0
    for b in grid.blocks():
        y0, x0, y1, x1 = grid.window(b)
        total += _n_tiles(y0, y1 - y0, card.stride) * _n_tiles(x0, x1 - x0, card.stride)
    return total
