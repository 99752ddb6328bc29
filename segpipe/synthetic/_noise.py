"""Coordinate-hashed noise: every value is a pure function of (seed, global y, global x).

Rendering a slide tile by tile needs noise that does not depend on which tile (or which
region) is being rendered, otherwise tiles disagree at their borders. Instead of drawing
from a stateful generator, every random value here comes from a SplitMix64-style hash of
the seed and the integer lattice / pixel coordinates, so any region can be re-rendered
bit-identically.
"""

from __future__ import annotations

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)
_PY = np.uint64(0xD6E8FEB86659FD93)
_PX = np.uint64(0xA0761D6478BD642F)


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def hash_uniform(seed: int, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """Uniform values in [0, 1) hashed from ``seed`` and integer coordinates (broadcast)."""
    with np.errstate(over="ignore"):
        s = _mix(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * _GOLD + _GOLD)
        y = np.asarray(iy).astype(np.int64).astype(np.uint64)
        x = np.asarray(ix).astype(np.int64).astype(np.uint64)
        z = _mix(s ^ (y * _PY)) + x * _PX
        z = _mix(z)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def sub_seed(seed: int, *parts: int) -> int:
    """A derived 63-bit seed from ``seed`` and integer ``parts`` (stable across runs)."""
    value = np.uint64(seed & 0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):
        for part in parts:
            value = _mix(value * _GOLD + np.uint64(part & 0xFFFFFFFFFFFFFFFF) + _GOLD)
    return int(value >> np.uint64(1))


def pixel_normals(seed: int, y0: int, x0: int, y1: int, x1: int, count: int = 1) -> np.ndarray:
    """``count`` independent standard normal fields over region ``[y0:y1, x0:x1]``.

    Box–Muller on hashed uniforms; each 64-bit hash gives two 32-bit uniforms, so two
    hashes give two normals.

    Returns
    -------
    (count, y1 - y0, x1 - x0) float32 ndarray
    """
    yy = np.arange(y0, y1, dtype=np.int64)[:, None]
    xx = np.arange(x0, x1, dtype=np.int64)[None, :]
    out = np.empty((count, y1 - y0, x1 - x0), np.float32)
    for pair in range((count + 1) // 2):
        u = hash_uniform(sub_seed(seed, pair), yy, xx)
        u1 = u.astype(np.float32)
        u2 = (u * 4294967296.0 % 1.0).astype(np.float32)  # low bits: an independent uniform
        r = np.sqrt(-2.0 * np.log1p(-u1 * np.float32(0.9999999)))
        out[2 * pair] = r * np.cos(np.float32(2 * np.pi) * u2)
        if 2 * pair + 1 < count:
            out[2 * pair + 1] = r * np.sin(np.float32(2 * np.pi) * u2)
    return out


def pixel_normal(seed: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    """One standard normal field over region ``[y0:y1, x0:x1]`` (float32)."""
    return pixel_normals(seed, y0, x0, y1, x1, 1)[0]


def value_noise(
    seed: int,
    y0: int,
    x0: int,
    y1: int,
    x1: int,
    spacing: float | tuple[float, float],
    step: float = 1.0,
) -> np.ndarray:
    """Smooth lattice noise in [-1, 1] sampled at pixel centres of a region.

    Parameters
    ----------
    seed : int
        Noise identity.
    y0, x0, y1, x1 : int
        Half-open region in the pixel grid of spacing ``step`` (level-0 px × step).
    spacing : float or (float, float)
        Lattice spacing in level-0 pixels (feature size); a pair gives anisotropic noise.
    step : float
        Level-0 pixels per output pixel (1 for full resolution).

    Returns
    -------
    (y1 - y0, x1 - x0) float32 ndarray
    """
    sy, sx = (spacing, spacing) if np.isscalar(spacing) else spacing  # type: ignore[misc]
    fy = (np.arange(y0, y1, dtype=np.float64) + 0.5) * step / float(sy)
    fx = (np.arange(x0, x1, dtype=np.float64) + 0.5) * step / float(sx)
    iy = np.floor(fy).astype(np.int64)
    ix = np.floor(fx).astype(np.int64)
    ty = fy - iy
    tx = fx - ix
    ty = ty * ty * (3 - 2 * ty)
    tx = tx * tx * (3 - 2 * tx)
    ly = np.arange(iy.min(), iy.max() + 2, dtype=np.int64)
    lx = np.arange(ix.min(), ix.max() + 2, dtype=np.int64)
    lattice = (hash_uniform(seed, ly[:, None], lx[None, :]) * 2.0 - 1.0).astype(np.float32)
    ry = iy - ly[0]
    rx = ix - lx[0]
    tx32 = tx.astype(np.float32)
    rows = lattice[:, rx] * (1 - tx32) + lattice[:, rx + 1] * tx32  # interpolate along x first
    ty32 = ty.astype(np.float32)[:, None]
    return rows[ry] * (1 - ty32) + rows[ry + 1] * ty32


def fractal_noise(
    seed: int,
    y0: int,
    x0: int,
    y1: int,
    x1: int,
    spacing: float | tuple[float, float],
    octaves: int = 3,
    persistence: float = 0.5,
    step: float = 1.0,
) -> np.ndarray:
    """Sum of ``octaves`` value-noise layers, each half the spacing, normalised to ~[-1, 1]."""
    sy, sx = (spacing, spacing) if np.isscalar(spacing) else spacing  # type: ignore[misc]
    total = np.zeros((y1 - y0, x1 - x0), np.float32)
    amp, norm = 1.0, 0.0
    for octave in range(octaves):
        scale = 2.0**octave
        layer = value_noise(sub_seed(seed, octave), y0, x0, y1, x1, (sy / scale, sx / scale), step)
        total += np.float32(amp) * layer
        norm += amp
        amp *= persistence
    return total / np.float32(norm)


def band_noise(
    seed: int, y0: int, x0: int, y1: int, x1: int, fine: float, coarse: float
) -> np.ndarray:
    """Band-passed noise: fine-scale value noise minus a coarser layer (zero-mean texture)."""
    return value_noise(seed, y0, x0, y1, x1, fine) - 0.5 * value_noise(
        sub_seed(seed, 7), y0, x0, y1, x1, coarse
    )
