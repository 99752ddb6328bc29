"""Render a region of a nuclei scene as fluorescence (grey) or H&E (RGB).

A *scene* is a deterministic description: a style (the realism knobs drawn once per image),
a function giving the nuclei near a region and a function giving the soft tissue map of a
region. Everything that varies per pixel is either a nucleus or coordinate-hashed noise, so
rendering any region of a scene gives the same pixels as rendering a larger region and
cropping — which is what lets slides be written tile by tile without seams.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from segpipe.synthetic._noise import band_noise, fractal_noise, pixel_normals, sub_seed, value_noise
from segpipe.synthetic._nuclei import Nuclei, rasterize

# Ruifrok & Johnston optical-density vectors (R, G, B) for haematoxylin and eosin.
HEMATOXYLIN_OD = np.array([0.650, 0.704, 0.286])
EOSIN_OD = np.array([0.092, 0.954, 0.283])


@dataclass(frozen=True)
class Style:
    """Per-image realism knobs (drawn by :func:`random_style`)."""

    modality: str
    blur_sigma: float  # Gaussian PSF sigma, px
    read_noise: float  # Gaussian read noise, grey levels
    gain: float  # photons per grey level (Poisson part; higher = less shot noise)
    chromatin: float  # amplitude of chromatin texture inside nuclei
    nucleolus: float  # contrast of nucleoli
    illum_amp: float  # relative amplitude of the low-frequency illumination field
    illum_spacing: float  # feature size of that field, px
    # fluorescence
    background: float = 8.0  # dark level
    exposure: float = 150.0  # grey level of a nucleus of intensity 1
    autofluorescence: float = 6.0  # tissue autofluorescence, grey levels
    haze: float = 0.08  # out-of-focus light fraction
    haze_sigma: float = 5.0
    # H&E
    h_vec: tuple[float, float, float] = tuple(HEMATOXYLIN_OD)  # type: ignore[assignment]
    e_vec: tuple[float, float, float] = tuple(EOSIN_OD)  # type: ignore[assignment]
    h_nucleus: float = 1.0  # haematoxylin concentration in nuclei
    h_tissue: float = 0.08  # haematoxylin in cytoplasm / stroma
    e_tissue: float = 0.35  # eosin in cytoplasm / stroma
    light: tuple[float, float, float] = (0.96, 0.95, 0.97)  # white level per channel
    holes: float = 0.25  # fraction of tissue left as lumen / white space
    fiber_spacing: float = 24.0  # stroma fibre length scale, px

    @property
    def halo(self) -> int:
        """Context (px) needed on each side to blur a region exactly."""
        haze = self.haze_sigma if self.modality == "fluorescence" and self.haze > 0 else 0.0
        return int(np.ceil(4.0 * self.blur_sigma)) + int(np.ceil(4.0 * haze)) + 2


def _unit(vec: np.ndarray) -> tuple[float, float, float]:
    vec = np.clip(vec, 0.01, None)
    return tuple(float(v) for v in vec / np.linalg.norm(vec))  # type: ignore[return-value]


def random_style(rng: np.random.Generator, modality: str, **overrides: float) -> Style:
    """Draw the realism knobs of one image; ``overrides`` fix any of them."""
    common = {
        "blur_sigma": rng.uniform(0.7, 1.6),
        "chromatin": rng.uniform(0.12, 0.35),
        "nucleolus": rng.uniform(0.2, 0.6),
        "illum_amp": rng.uniform(0.05, 0.35),
        "illum_spacing": rng.uniform(300, 900),
    }
    if modality == "fluorescence":
        values = {
            **common,
            "modality": modality,
            "read_noise": rng.uniform(1.0, 4.0),
            "gain": float(np.exp(rng.uniform(np.log(0.3), np.log(4.0)))),
            "background": rng.uniform(3, 25),
            "exposure": rng.uniform(70, 200),
            "autofluorescence": rng.uniform(0, 12),
            "haze": rng.uniform(0.0, 0.15),
            "haze_sigma": rng.uniform(3, 7),
        }
    elif modality == "he":
        values = {
            **common,
            "modality": modality,
            "illum_amp": rng.uniform(0.0, 0.06),
            "read_noise": rng.uniform(1.0, 3.0),
            "gain": rng.uniform(2.0, 8.0),
            "h_vec": _unit(HEMATOXYLIN_OD + rng.normal(0, 0.06, 3)),
            "e_vec": _unit(EOSIN_OD + rng.normal(0, 0.06, 3)),
            "h_nucleus": rng.uniform(0.6, 1.3),
            "h_tissue": rng.uniform(0.03, 0.14),
            "e_tissue": rng.uniform(0.12, 0.38),
            "light": tuple(float(v) for v in rng.uniform(0.92, 0.99, 3)),
            "holes": rng.uniform(0.0, 0.35),
            "fiber_spacing": rng.uniform(12, 40),
        }
    else:
        raise ValueError(f"modality={modality!r}: use 'fluorescence' or 'he'")
    values.update(overrides)
    return Style(**values)  # type: ignore[arg-type]


@dataclass
class Scene:
    """What to render: style, noise seed, nuclei near a region, soft tissue map of a region."""

    style: Style
    seed: int
    nuclei_in: Callable[[int, int, int, int], Nuclei]
    tissue: Callable[[int, int, int, int], np.ndarray]
    dtype: type = np.uint8  # uint8, or uint16 (grey levels scaled by 257)


def lumens(
    seed: int, style: Style, y0: int, x0: int, y1: int, x1: int, step: float = 1.0
) -> np.ndarray:
    """Soft map in [0, 1] of lumens / white spaces inside H&E tissue (0 for fluorescence)."""
    if style.modality != "he" or style.holes <= 0:
        return np.zeros((y1 - y0, x1 - x0), np.float32)
    field = fractal_noise(sub_seed(seed, 16), y0, x0, y1, x1, 90.0, 2, step=step)
    return np.clip((field - (1.0 - 2.2 * style.holes)) / 0.08, 0, 1).astype(np.float32)


def with_lumens(
    tissue: Callable[[int, int, int, int], np.ndarray], seed: int, style: Style
) -> Callable[[int, int, int, int], np.ndarray]:
    """A tissue function with the style's lumens cut out (nuclei are then never in a lumen)."""
    if style.modality != "he" or style.holes <= 0:
        return tissue

    def cut(y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        return tissue(y0, x0, y1, x1) * (1.0 - lumens(seed, style, y0, x0, y1, x1))

    return cut


def _nucleoli(nuclei: Nuclei, index: np.ndarray, y0: int, x0: int) -> np.ndarray:
    """Field in [0, 1]: small Gaussian spots (0–2 per nucleus) inside visible nuclei."""
    out = np.zeros(index.shape, np.float32)
    h, w = index.shape
    for i in np.unique(index[index >= 0]):
        rng = np.random.default_rng(int(nuclei.seed[i]))
        count = rng.choice(3, p=[0.35, 0.45, 0.2])
        for _ in range(count):
            rad = rng.uniform(0, 0.45) * nuclei.b[i]
            ang = rng.uniform(0, 2 * np.pi)
            cy = nuclei.cy[i] + rad * np.sin(ang)
            cx = nuclei.cx[i] + rad * np.cos(ang)
            sigma = max(0.6, nuclei.b[i] * rng.uniform(0.08, 0.16))
            r = int(np.ceil(3 * sigma))
            sy0, sy1 = max(int(cy) - r, y0), min(int(cy) + r + 1, y0 + h)
            sx0, sx1 = max(int(cx) - r, x0), min(int(cx) + r + 1, x0 + w)
            if sy0 >= sy1 or sx0 >= sx1:
                continue
            dy = np.arange(sy0, sy1)[:, None] + 0.5 - cy
            dx = np.arange(sx0, sx1)[None, :] + 0.5 - cx
            spot = np.exp(-(dy * dy + dx * dx) / (2 * sigma * sigma)).astype(np.float32)
            sub = (slice(sy0 - y0, sy1 - y0), slice(sx0 - x0, sx1 - x0))
            spot *= index[sub] == i
            np.maximum(out[sub], spot, out=out[sub])
    return out


def _nuclear_profile(
    style: Style, rnorm: np.ndarray, texture: np.ndarray, amount: np.ndarray
) -> np.ndarray:
    """Relative stain inside nuclei: flat dome, chromatin texture, darker rim.

    ``amount`` is the per-pixel texture factor of the nucleus (vesicular nuclei have more
    chromatin clumping and a stronger rim than dense lymphocyte-like ones).
    """
    rim = np.clip((rnorm - 0.75) / 0.25, 0, 1) ** 2
    dome = 1.0 - 0.2 * rnorm * rnorm
    return dome * (1.0 + style.chromatin * amount * texture) + 0.2 * amount * rim


def quantize(values: np.ndarray, dtype: type) -> np.ndarray:
    """Round grey levels (0–255 scale) to ``uint8``, or to ``uint16`` after scaling by 257."""
    if np.dtype(dtype) == np.uint16:
        return np.clip(np.rint(values * np.float32(257.0)), 0, 65535).astype(np.uint16)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def gather(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``values[index]`` where ``index >= 0``, else 0 (works for an empty ``values``)."""
    if values.shape[0] == 0:
        return np.zeros(index.shape, values.dtype)
    return np.where(index >= 0, values[np.maximum(index, 0)], 0).astype(values.dtype)


def render_region(
    scene: Scene, y0: int, x0: int, y1: int, x1: int, normals: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, Nuclei]:
    """Render ``[y0:y1, x0:x1]`` of a scene.

    ``normals`` (``(C, h, w)`` float32 standard normal) drives the pixel noise; by default it
    is hashed from the pixel coordinates (region-independent, but slower).

    Returns
    -------
    image : (C, h, w) ndarray of ``scene.dtype``
        C = 1 for fluorescence, 3 for H&E.
    index : (h, w) int32 ndarray
        Position in ``nuclei`` of the nucleus at each pixel, -1 for none.
    nuclei : Nuclei
        The nuclei considered for this region.
    """
    st = scene.style
    hz = st.halo
    Y0, X0, Y1, X1 = y0 - hz, x0 - hz, y1 + hz, x1 + hz
    nuclei = scene.nuclei_in(Y0, X0, Y1, X1)
    index, rnorm = rasterize(nuclei, Y0, X0, Y1, X1)
    inside = index >= 0
    tissue = scene.tissue(Y0, X0, Y1, X1)
    seed = scene.seed
    texture = band_noise(sub_seed(seed, 11), Y0, X0, Y1, X1, 2.2, 7.0)
    profile = _nuclear_profile(st, rnorm, texture, gather(nuclei.texture.astype(np.float32), index))
    nucleoli = _nucleoli(nuclei, index, Y0, X0)
    strength = gather(nuclei.intensity.astype(np.float32), index)
    illum = 1.0 + st.illum_amp * fractal_noise(
        sub_seed(seed, 12), Y0, X0, Y1, X1, st.illum_spacing, 2
    )

    if st.modality == "fluorescence":
        nuc = strength * profile * (1.0 - st.nucleolus * nucleoli) * st.exposure
        haze = (
            ndi.gaussian_filter(nuc, st.haze_sigma, mode="nearest") * st.haze
            if st.haze > 0
            else 0.0
        )
        auto = (
            st.autofluorescence
            * tissue
            * (1.0 + 0.3 * value_noise(sub_seed(seed, 13), Y0, X0, Y1, X1, 9.0))
        )
        clean = ((st.background + auto + nuc + haze) * illum)[None]
    else:
        # wavy stroma fibres: two anisotropic layers blended by a slowly varying weight
        weight = np.clip(0.5 + 1.5 * value_noise(sub_seed(seed, 17), Y0, X0, Y1, X1, 150.0), 0, 1)
        fibres = weight * value_noise(
            sub_seed(seed, 14), Y0, X0, Y1, X1, (st.fiber_spacing / 6, st.fiber_spacing)
        ) + (1 - weight) * value_noise(
            sub_seed(seed, 15), Y0, X0, Y1, X1, (st.fiber_spacing, st.fiber_spacing / 6)
        )
        fibres = 0.7 * fibres + 0.3 * value_noise(sub_seed(seed, 18), Y0, X0, Y1, X1, 5.0)
        t = tissue  # lumens are already cut out (see with_lumens)
        t = np.where(inside, np.maximum(t, 0.8), t)  # nuclei keep their cytoplasm around them
        h_conc = t * st.h_tissue * (1.0 + 0.3 * fibres) + strength * st.h_nucleus * profile
        h_conc = h_conc + inside * nucleoli * st.nucleolus * 0.6
        e_conc = (
            t
            * st.e_tissue
            * (0.8 + 0.4 * fibres)
            * np.where(inside, np.float32(0.45), np.float32(1.0))
        )
        e_conc = e_conc + inside * nucleoli * st.nucleolus * 0.3
        od = (
            h_conc[None] * np.asarray(st.h_vec, np.float32)[:, None, None]
            + e_conc[None] * np.asarray(st.e_vec, np.float32)[:, None, None]
        )
        light = np.asarray(st.light, np.float32)[:, None, None] * 255.0 * illum[None]
        clean = light * np.power(np.float32(10.0), -od)
    clean = clean.astype(np.float32)
    blurred = np.stack([ndi.gaussian_filter(c, st.blur_sigma, mode="nearest") for c in clean])
    crop = (slice(None), slice(hz, hz + (y1 - y0)), slice(hz, hz + (x1 - x0)))
    signal = np.clip(blurred[crop], 0, None)
    # Poisson–Gaussian noise, Gaussian approximation of the shot noise, hashed per pixel
    if normals is None:
        normals = pixel_normals(sub_seed(seed, 20), y0, x0, y1, x1, signal.shape[0])
    noisy = signal + np.sqrt(signal / np.float32(st.gain) + np.float32(st.read_noise**2)) * normals
    image = quantize(noisy, scene.dtype)
    return image, index[hz : hz + (y1 - y0), hz : hz + (x1 - x0)], nuclei


def render_background(
    scene: Scene, y0: int, x0: int, y1: int, x1: int, normals: np.ndarray | None = None
) -> np.ndarray:
    """Fast path for a region without tissue or nuclei: illumination and noise only."""
    st = scene.style
    seed = scene.seed
    illum = 1.0 + st.illum_amp * fractal_noise(
        sub_seed(seed, 12), y0, x0, y1, x1, st.illum_spacing, 2
    )
    if st.modality == "fluorescence":
        signal = (st.background * illum)[None]
    else:
        signal = np.asarray(st.light, np.float32)[:, None, None] * 255.0 * illum[None]
    signal = signal.astype(np.float32)
    if normals is None:
        normals = pixel_normals(sub_seed(seed, 20), y0, x0, y1, x1, signal.shape[0])
    noisy = signal + np.sqrt(signal / np.float32(st.gain) + np.float32(st.read_noise**2)) * normals
    return quantize(noisy, scene.dtype)
