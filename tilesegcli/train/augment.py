"""Patch augmentations for H&E and aerial imagery (numpy, driven by one seeded Generator).

Geometric: the 8 dihedral transforms (flips x 90° rotations), applied identically to image,
labels and valid mask. Photometric: H&E stain jitter in the HED colour space of Ruifrok &
Johnston (per-stain scale 1 ± sigma and shift ± sigma, as in Tellez et al. 2018), then
brightness / contrast / saturation jitter. Both are skipped when their strength is 0, so aerial
training can use geometric + colour jitter only.
"""

from __future__ import annotations

import numpy as np


def dihedral(arr: np.ndarray, k: int) -> np.ndarray:
    """k in 0..7: rotate by 90°*(k % 4), then flip left-right when k >= 4 (first two axes)."""
    out = np.rot90(arr, k % 4, axes=(0, 1))
    if k >= 4:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def hed_jitter(img: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Perturb haematoxylin / eosin / DAB concentrations: c' = c * a + b, a ~ U(1±σ), b ~ U(±σ)
    x the patch's concentration spread. Optical densities are unmixed with Ruifrok & Johnston's
    matrix (skimage's ``hed_from_rgb``) without clipping, so sigma 0 is the identity."""
    from skimage.color import hed_from_rgb, rgb_from_hed

    od = -np.log(np.maximum(img.astype(np.float64), 1.0) / 255.0)
    hed = od.reshape(-1, 3) @ hed_from_rgb
    a = rng.uniform(1 - sigma, 1 + sigma, 3)
    b = rng.uniform(-sigma, sigma, 3) * hed.std(0)
    rgb = 255.0 * np.exp(-((hed * a + b) @ rgb_from_hed))
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8).reshape(img.shape)


def colour_jitter(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Brightness, contrast and saturation each scaled by U(1 ± strength)."""
    x = img.astype(np.float32)
    x *= rng.uniform(1 - strength, 1 + strength)  # brightness
    m = x.mean()
    x = (x - m) * rng.uniform(1 - strength, 1 + strength) + m  # contrast
    g = x.mean(axis=2, keepdims=True)
    x = (x - g) * rng.uniform(1 - strength, 1 + strength) + g  # saturation
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def augment_patch(img: np.ndarray, lab: np.ndarray, valid: np.ndarray, rng: np.random.Generator,
                  stain: float, colour: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random dihedral transform + stain + colour jitter. Draws a fixed number of values from
    ``rng`` per call regardless of options (keeps resumed runs reproducible)."""
    k = int(rng.integers(8))
    sub = np.random.default_rng(rng.integers(2**63))
    img, lab, valid = dihedral(img, k), dihedral(lab, k), dihedral(valid, k)
    if stain > 0:
        img = hed_jitter(img, sub, stain)
    if colour > 0:
        img = colour_jitter(img, sub, colour)
    return img, lab, valid
