"""Tissue islands of a slide: a few large lobulated blobs with rough, slightly soft edges.

Each island is an ellipse whose radius is perturbed by low-order harmonics (lobes) and by
coordinate-hashed value noise (a rough edge). The soft tissue map at a point is a ramp of
its approximate signed distance (px) to the nearest island edge, so the edge is ~``edge_px``
wide whatever the slide size; every value is a pure function of level-0 coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segpipe.synthetic._noise import sub_seed, value_noise

_HARMONICS = 4


@dataclass
class Islands:
    """Island geometry (level-0 px); ``scale`` multiplies all radii (calibration)."""

    cy: np.ndarray
    cx: np.ndarray
    a: np.ndarray
    b: np.ndarray
    theta: np.ndarray
    amp: np.ndarray  # (n, _HARMONICS)
    phase: np.ndarray  # (n, _HARMONICS)
    seed: int
    rough: float = 0.06
    edge_px: float = 8.0
    scale: float = 1.0

    def distance(self, y0: int, x0: int, y1: int, x1: int, step: float = 1.0) -> np.ndarray:
        """Approximate signed distance (px, > 0 inside) to the nearest island edge."""
        yy = ((np.arange(y0, y1, dtype=np.float64) + 0.5) * step)[:, None]
        xx = ((np.arange(x0, x1, dtype=np.float64) + 0.5) * step)[None, :]
        spacing = float(np.mean(self.b) * self.scale) / 3.0 + 1.0
        noise = value_noise(self.seed, y0, x0, y1, x1, spacing, step)
        noise = noise + 0.5 * value_noise(sub_seed(self.seed, 1), y0, x0, y1, x1, spacing / 3, step)
        best = np.full((y1 - y0, x1 - x0), -np.inf, np.float32)
        for i in range(self.cy.size):
            a, b = self.a[i] * self.scale, self.b[i] * self.scale
            dy, dx = yy - self.cy[i], xx - self.cx[i]
            c, s = np.cos(self.theta[i]), np.sin(self.theta[i])
            u = (dx * c + dy * s) / a
            v = (-dx * s + dy * c) / b
            rho = np.sqrt(u * u + v * v)
            phi = np.arctan2(v, u)
            lobes = 1.0 + sum(
                self.amp[i, k] * np.cos((k + 2) * phi + self.phase[i, k]) for k in range(_HARMONICS)
            )
            radius = lobes + self.rough * noise
            inside = (1.0 - rho / radius) * np.sqrt(a * b) * radius
            np.maximum(best, inside.astype(np.float32), out=best)
        return best

    def tissue(self, y0: int, x0: int, y1: int, x1: int, step: float = 1.0) -> np.ndarray:
        """Soft tissue map in [0, 1]."""
        d = self.distance(y0, x0, y1, x1, step)
        return np.clip(d / self.edge_px + 0.5, 0.0, 1.0).astype(np.float32)


def make_islands(seed: int, shape: tuple[int, int], fraction: float) -> Islands:
    """1–4 non-overlapping islands covering about ``fraction`` of a slide of ``shape``."""
    Y, X = shape
    rng = np.random.default_rng(sub_seed(seed, 77))
    n = int(rng.choice([1, 2, 2, 3, 3, 4]))
    weights = rng.dirichlet(np.full(n, 3.0))
    aspect = rng.uniform(0.6, 1.0, n)
    area = fraction * Y * X * weights
    a = np.sqrt(area / (np.pi * aspect))
    b = a * aspect
    cy, cx = np.empty(n), np.empty(n)
    for i in range(n):
        best, best_score = (Y / 2, X / 2), -np.inf
        for _ in range(60):  # keep islands apart and inside the slide
            y = rng.uniform(0.15, 0.85) * Y
            x = rng.uniform(0.15, 0.85) * X
            gap = min(
                [np.hypot(y - cy[j], x - cx[j]) - 1.05 * (a[i] + a[j]) for j in range(i)] or [0]
            )
            border = min(y, Y - y, x, X - x) - a[i]
            score = min(gap, 0) + min(border, 0)
            if score > best_score:
                best, best_score = (y, x), score
            if score >= 0:
                break
        cy[i], cx[i] = best
    amp = rng.uniform(0.0, 0.12, (n, _HARMONICS)) / np.arange(1, _HARMONICS + 1)
    islands = Islands(
        cy=cy,
        cx=cx,
        a=a,
        b=b,
        theta=rng.uniform(0, np.pi, n),
        amp=amp,
        phase=rng.uniform(0, 2 * np.pi, (n, _HARMONICS)),
        seed=sub_seed(seed, 78),
        edge_px=float(rng.uniform(4.0, 12.0)),
    )
    # calibrate the covered fraction on a coarse grid (overlaps and the slide border eat area)
    step = max(1.0, max(Y, X) / 256.0)
    h, w = int(np.ceil(Y / step)), int(np.ceil(X / step))
    for _ in range(5):
        covered = float((islands.distance(0, 0, h, w, step) > 0).mean())
        if covered <= 0:
            break
        islands.scale *= float(np.clip(np.sqrt(fraction / covered), 0.7, 1.4))
    return islands
