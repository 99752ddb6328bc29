"""Tissue islands of a slide: a few large lobulated blobs with rough, slightly soft edges.

Each island is an ellipse whose radius is perturbed by harmonics of the polar angle: low
orders make lobes, higher orders a rough edge; an island stays star-shaped, so it never
sheds detached specks. The soft tissue map at a point is a ramp of
its approximate signed distance (px) to the nearest island edge, so the edge is ~``edge_px``
wide whatever the slide size; every value is a pure function of level-0 coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segpipe.synthetic._noise import sub_seed

_HARMONICS = 15  # radius harmonics k = 2 .. 16: low ones make lobes, high ones a rough edge


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
    edge_px: float = 8.0
    scale: float = 1.0

    def distance(self, y0: int, x0: int, y1: int, x1: int, step: float = 1.0) -> np.ndarray:
        """Approximate signed distance (px, > 0 inside, -inf far outside) to the nearest edge."""
        best = np.full((y1 - y0, x1 - x0), -np.inf, np.float32)
        for i in range(self.cy.size):
            a, b = self.a[i] * self.scale, self.b[i] * self.scale
            reach = max(a, b) * (1.0 + float(np.abs(self.amp[i]).sum())) + 4 * self.edge_px
            # only the pixels of the region near this island
            iy0 = max(int(np.floor((self.cy[i] - reach) / step)), y0)
            iy1 = min(int(np.ceil((self.cy[i] + reach) / step)) + 1, y1)
            ix0 = max(int(np.floor((self.cx[i] - reach) / step)), x0)
            ix1 = min(int(np.ceil((self.cx[i] + reach) / step)) + 1, x1)
            if iy0 >= iy1 or ix0 >= ix1:
                continue
            dy = ((np.arange(iy0, iy1) + 0.5) * step - self.cy[i]).astype(np.float32)[:, None]
            dx = ((np.arange(ix0, ix1) + 0.5) * step - self.cx[i]).astype(np.float32)[None, :]
            c, s = np.float32(np.cos(self.theta[i])), np.float32(np.sin(self.theta[i]))
            u = (dx * c + dy * s) / np.float32(a)
            v = (-dx * s + dy * c) / np.float32(b)
            rho = np.sqrt(u * u + v * v)
            c1 = np.divide(u, rho, out=np.ones_like(rho), where=rho > 0)
            s1 = np.divide(v, rho, out=np.zeros_like(rho), where=rho > 0)
            ck, sk = c1, s1
            radius = np.ones_like(rho)
            for k in range(self.amp.shape[1]):  # harmonic k + 2: lobes, then a rough edge
                ck, sk = ck * c1 - sk * s1, sk * c1 + ck * s1
                p = self.phase[i, k]
                radius += np.float32(self.amp[i, k]) * (
                    ck * np.float32(np.cos(p)) - sk * np.float32(np.sin(p))
                )
            inside = (1.0 - rho / radius) * np.float32(np.sqrt(a * b)) * radius
            sub = best[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
            np.maximum(sub, inside, out=sub)
        return best

    def tissue(self, y0: int, x0: int, y1: int, x1: int, step: float = 1.0) -> np.ndarray:
        """Soft tissue map in [0, 1]."""
        d = self.distance(y0, x0, y1, x1, step)
        return np.clip(d / self.edge_px + 0.5, 0.0, 1.0).astype(np.float32)


def make_islands(seed: int, shape: tuple[int, int], fraction: float) -> Islands:
    """1–3 non-overlapping islands covering about ``fraction`` of a slide of ``shape``."""
    Y, X = shape
    rng = np.random.default_rng(sub_seed(seed, 77))
    n = int(rng.choice([1, 2, 2, 3]))
    weights = rng.dirichlet(np.full(n, 3.0))
    aspect = rng.uniform(0.7, 1.0, n)
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
    k = np.arange(2, _HARMONICS + 2)
    amp = rng.uniform(0.0, 0.2, (n, _HARMONICS)) / k**1.3
    amp[:, 3:] *= rng.uniform(0.3, 1.0, (n, 1))  # how rough the edge is
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
