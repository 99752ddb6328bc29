"""Nucleus geometry: sampling irregular ellipses in clusters and rasterising them.

A nucleus is an ellipse (semi-axes ``a >= b``, orientation ``theta``) whose radius is
perturbed by a few low-order Fourier harmonics, so outlines are irregular but smooth.
Nuclei are painted in ascending ``z``: a later nucleus occludes an earlier one, so the
label image is always a partition.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

N_HARMONICS = 4  # harmonics k = 2 .. 5 of the radius perturbation
MAX_PERTURBATION = 0.18  # bound on the summed relative radius perturbation


@dataclass
class Nuclei:
    """A set of nuclei as parallel arrays (level-0 pixel units).

    ``ids`` are the label values (uint32, unique); ``z`` orders painting.
    """

    cy: np.ndarray
    cx: np.ndarray
    a: np.ndarray
    b: np.ndarray
    theta: np.ndarray
    amp: np.ndarray  # (n, N_HARMONICS)
    phase: np.ndarray  # (n, N_HARMONICS)
    intensity: np.ndarray  # relative stain / brightness, ~1 (dim nuclei < 0.5)
    texture: np.ndarray  # relative chromatin texture amplitude, ~1
    seed: np.ndarray  # per-nucleus integer seed (nucleoli, texture phase)
    z: np.ndarray
    ids: np.ndarray

    def __len__(self) -> int:
        return int(self.cy.shape[0])

    @property
    def radius(self) -> np.ndarray:
        """Conservative outer radius of each nucleus."""
        return self.a * (1.0 + self.amp.sum(axis=1))

    def take(self, index: np.ndarray) -> Nuclei:
        """The subset (or reordering) ``index``."""
        return Nuclei(**{name: getattr(self, name)[index] for name in _FIELDS})

    @staticmethod
    def concat(parts: list[Nuclei]) -> Nuclei:
        """Concatenate several sets (an empty list gives an empty set)."""
        if not parts:
            return empty_nuclei()
        return Nuclei(
            **{name: np.concatenate([getattr(p, name) for p in parts]) for name in _FIELDS}
        )


_FIELDS = (
    "cy",
    "cx",
    "a",
    "b",
    "theta",
    "amp",
    "phase",
    "intensity",
    "texture",
    "seed",
    "z",
    "ids",
)


def empty_nuclei() -> Nuclei:
    """A set with no nuclei."""
    f = np.zeros(0, np.float64)
    return Nuclei(
        f,
        f,
        f,
        f,
        f,
        np.zeros((0, N_HARMONICS)),
        np.zeros((0, N_HARMONICS)),
        f,
        f,
        np.zeros(0, np.int64),
        f,
        np.zeros(0, np.uint32),
    )


#: Nucleus types: (probability, diameter range as fractions of (lo, hi), aspect range,
#: stain intensity factor, chromatin texture factor). Round dark lymphocyte-like nuclei,
#: large pale vesicular (epithelial / tumour) nuclei, elongated spindle (stromal) nuclei.
NUCLEUS_TYPES = (
    (0.30, (0.0, 0.4), (0.8, 1.0), 1.35, 0.5),
    (0.45, (0.25, 1.0), (0.6, 1.0), 0.85, 1.4),
    (0.25, (0.0, 1.0), (0.22, 0.5), 1.0, 1.0),
)


def max_radius(diameter_px: tuple[float, float]) -> float:
    """Largest distance from its centre that a nucleus of these diameters can reach."""
    min_aspect = min(t[2][0] for t in NUCLEUS_TYPES)
    return diameter_px[1] / 2.0 / np.sqrt(min_aspect) * (1.0 + MAX_PERTURBATION)


def _shape_params(
    rng: np.random.Generator, n: int, diameter_px: tuple[float, float]
) -> dict[str, np.ndarray]:
    lo, hi = diameter_px
    probs = np.array([t[0] for t in NUCLEUS_TYPES])
    kind = rng.choice(len(NUCLEUS_TYPES), size=n, p=probs / probs.sum())
    d = np.empty(n)
    aspect = np.empty(n)
    factor = np.empty(n)
    texture = np.empty(n)
    for k_type, (_, (f0, f1), (a0, a1), stain, chrom) in enumerate(NUCLEUS_TYPES):
        sel = kind == k_type
        m = int(sel.sum())
        d_lo, d_hi = lo + f0 * (hi - lo), lo + f1 * (hi - lo)
        # log-uniform diameters (equivalent diameter of the ellipse)
        d[sel] = np.exp(rng.uniform(np.log(d_lo), np.log(max(d_hi, d_lo)), m))
        aspect[sel] = rng.uniform(a0, a1, m)  # b / a
        factor[sel] = stain
        texture[sel] = chrom * rng.uniform(0.7, 1.3, m)
    a = d / 2.0 / np.sqrt(aspect)
    b = d / 2.0 * np.sqrt(aspect)
    k = np.arange(2, 2 + N_HARMONICS)
    amp = rng.uniform(0.0, 0.07, (n, N_HARMONICS)) / np.sqrt(k - 1)
    total = amp.sum(axis=1, keepdims=True)
    amp = np.where(total > MAX_PERTURBATION, amp * MAX_PERTURBATION / np.maximum(total, 1e-9), amp)
    return {
        "a": a,
        "b": b,
        "theta": rng.uniform(0, np.pi, n),
        "amp": amp,
        "phase": rng.uniform(0, 2 * np.pi, (n, N_HARMONICS)),
        "texture": texture,
        "_factor": factor,
    }


def sample_nuclei(
    rng: np.random.Generator,
    box: tuple[float, float, float, float],
    count: int,
    diameter_px: tuple[float, float],
    cluster_fraction: float = 0.6,
    overlap: float = 0.82,
    dim_fraction: float = 0.15,
) -> Nuclei:
    """Sample about ``count`` nuclei with centres in ``box = (y0, x0, y1, x1)``.

    A fraction ``cluster_fraction`` is attached to an already placed nucleus (touching
    clusters); the others are uniform. A candidate is rejected when its centre is closer
    than ``overlap * (r_i + r_j)`` to any placed nucleus (mean radii), so neighbours touch
    and overlap slightly but never swallow each other.
    """
    y0, x0, y1, x1 = box
    shapes = _shape_params(rng, count, diameter_px)
    type_factor = shapes.pop("_factor")
    mean_r = (shapes["a"] + shapes["b"]) / 2.0
    cy = np.empty(count)
    cx = np.empty(count)
    keep = np.zeros(count, bool)
    placed: list[int] = []
    for i in range(count):
        for _attempt in range(12):
            if placed and rng.random() < cluster_fraction:
                j = placed[int(rng.integers(len(placed)))]
                angle = rng.uniform(0, 2 * np.pi)
                dist = (mean_r[i] + mean_r[j]) * rng.uniform(overlap + 0.01, 1.05)
                y, x = cy[j] + dist * np.sin(angle), cx[j] + dist * np.cos(angle)
                if not (y0 <= y < y1 and x0 <= x < x1):
                    continue
            else:
                y, x = rng.uniform(y0, y1), rng.uniform(x0, x1)
            if placed:
                idx = np.asarray(placed)
                d2 = (cy[idx] - y) ** 2 + (cx[idx] - x) ** 2
                if np.any(d2 < (overlap * (mean_r[idx] + mean_r[i])) ** 2):
                    continue
            cy[i], cx[i] = y, x
            keep[i] = True
            placed.append(i)
            break
    n = count
    intensity = rng.lognormal(0.0, 0.15, n) * type_factor
    dim = rng.random(n) < dim_fraction
    intensity[dim] *= rng.uniform(0.15, 0.45, int(dim.sum()))
    nuclei = Nuclei(
        cy=cy,
        cx=cx,
        intensity=intensity,
        seed=rng.integers(0, 2**62, n),
        z=rng.random(n),
        ids=np.zeros(n, np.uint32),
        **shapes,
    )
    return nuclei.take(np.flatnonzero(keep))


def conflicts(a: Nuclei, b: Nuclei, overlap: float) -> np.ndarray:
    """For each nucleus of ``a``: does it sit too close to any nucleus of ``b``?"""
    if len(a) == 0 or len(b) == 0:
        return np.zeros(len(a), bool)
    ra = (a.a + a.b) / 2.0
    rb = (b.a + b.b) / 2.0
    d2 = (a.cy[:, None] - b.cy[None, :]) ** 2 + (a.cx[:, None] - b.cx[None, :]) ** 2
    return np.any(d2 < (overlap * (ra[:, None] + rb[None, :])) ** 2, axis=1)


def _radial(
    nuclei: Nuclei, i: int, y0: int, x0: int, y1: int, x1: int
) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Normalised radius (< 1 inside) of nucleus ``i`` over its bounding box ∩ region."""
    r = nuclei.radius[i] + 1.0
    by0 = max(int(np.floor(nuclei.cy[i] - r)), y0)
    by1 = min(int(np.ceil(nuclei.cy[i] + r)) + 1, y1)
    bx0 = max(int(np.floor(nuclei.cx[i] - r)), x0)
    bx1 = min(int(np.ceil(nuclei.cx[i] + r)) + 1, x1)
    if by0 >= by1 or bx0 >= bx1:
        return None
    dy = np.arange(by0, by1)[:, None] + 0.5 - nuclei.cy[i]
    dx = np.arange(bx0, bx1)[None, :] + 0.5 - nuclei.cx[i]
    c, s = np.cos(nuclei.theta[i]), np.sin(nuclei.theta[i])
    u = (dx * c + dy * s) / nuclei.a[i]
    v = (-dx * s + dy * c) / nuclei.b[i]
    rho = np.sqrt(u * u + v * v)
    # cos(k φ + p) for k = 2.. by the angle-addition recurrence (no arctan2 / cos calls)
    c1 = np.divide(u, rho, out=np.ones_like(rho), where=rho > 0)
    s1 = np.divide(v, rho, out=np.zeros_like(rho), where=rho > 0)
    ck, sk = c1, s1
    perturb = np.ones_like(rho)
    for j in range(N_HARMONICS):
        ck, sk = ck * c1 - sk * s1, sk * c1 + ck * s1  # now angle (j + 2) φ
        p = nuclei.phase[i, j]
        perturb += nuclei.amp[i, j] * (ck * np.cos(p) - sk * np.sin(p))
    sub = (slice(by0 - y0, by1 - y0), slice(bx0 - x0, bx1 - x0))
    return sub, rho / perturb


def rasterize(nuclei: Nuclei, y0: int, x0: int, y1: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
    """Paint nuclei (ascending ``z``) into region ``[y0:y1, x0:x1]``.

    Returns
    -------
    index : (h, w) int32 ndarray
        Position in ``nuclei`` of the visible nucleus, -1 for background.
    rnorm : (h, w) float32 ndarray
        Normalised radial coordinate inside the visible nucleus (0 centre, 1 outline).
    """
    h, w = y1 - y0, x1 - x0
    index = np.full((h, w), -1, np.int32)
    rnorm = np.ones((h, w), np.float32)
    for i in np.argsort(nuclei.z, kind="stable"):
        found = _radial(nuclei, int(i), y0, x0, y1, x1)
        if found is None:
            continue
        sub, rn = found
        inside = rn < 1.0
        index[sub][inside] = i
        rnorm[sub][inside] = rn[inside]
    return index, rnorm


def drop_occluded(nuclei: Nuclei, others: Nuclei, min_visible: float = 0.35) -> Nuclei:
    """Drop nuclei that later ones (higher ``z`` in ``others``) split or mostly hide.

    A nucleus survives when its visible part is one connected piece covering at least
    ``min_visible`` of its area. Only occluders decide, so the outcome for a nucleus does not
    depend on which region is being rendered.
    """
    if len(nuclei) == 0 or len(others) == 0:
        return nuclei
    r_self = nuclei.radius
    r_other = others.radius
    keep = np.ones(len(nuclei), bool)
    for i in range(len(nuclei)):
        d2 = (others.cy - nuclei.cy[i]) ** 2 + (others.cx - nuclei.cx[i]) ** 2
        near = (d2 < (r_self[i] + r_other) ** 2) & (others.z > nuclei.z[i])
        if not near.any():
            continue
        r = int(np.ceil(r_self[i])) + 1
        y0, x0 = int(np.floor(nuclei.cy[i])) - r, int(np.floor(nuclei.cx[i])) - r
        y1, x1 = y0 + 2 * r + 1, x0 + 2 * r + 1
        found = _radial(nuclei, i, y0, x0, y1, x1)
        if found is None:
            continue
        sub, rn = found
        visible = np.zeros((y1 - y0, x1 - x0), bool)
        visible[sub] = rn < 1.0
        full = int(visible.sum())
        for j in np.flatnonzero(near):
            hit = _radial(others, int(j), y0, x0, y1, x1)
            if hit is not None:
                visible[hit[0]] &= hit[1] >= 1.0
        if visible.sum() < min_visible * max(full, 1) or ndi.label(visible)[1] > 1:
            keep[i] = False
    return nuclei.take(np.flatnonzero(keep))
