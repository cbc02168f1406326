"""`technical-quality`: an offline, model-free image-quality score on its own 0–10 scale.

It says whether a frame is technically usable (in focus, well exposed, with contrast, not noisy). It is not an
aesthetic model and says nothing about composition or appeal; records name it `technical-quality (0–10)`.

All measures are taken on the BT.601 luma Y (0–255) of the frame shrunk (area filter, never enlarged: that
would smooth the noise away) so its longer side is at most `analysis_side_px` (default 384), so clips of
different resolutions are comparable.

- noise σ: Immerkær's fast estimate, σ = sqrt(π/2) / (6 (W−2)(H−2)) · Σ |Y ∗ N| with the high-pass
  N = [[1, −2, 1], [−2, 4, −2], [1, −2, 1]] (zero on flat areas and linear gradients; fine texture counts
  partly as noise: the demo's rendered brick walls read σ ≈ 5); noisiness = clip(σ / 10, 0, 1), and the
  recorded noise term is 1 − noisiness.
- sharpness: variance of the 3×3 Laplacian of Y, less the 20 σ² that white noise of σ contributes to it
  (the sum of the squared kernel taps), so noise is not mistaken for detail;
  sharpness term = clip(log10(1 + v) / log10(1 + 1000), 0, 1).
- exposure: clipped fraction c (Y ≤ 3 or Y ≥ 252) and mean luma m;
  exposure term = clip(1 − c / 0.5, 0, 1) · (1 − ((m − 128) / 128)²).
- contrast: luma standard deviation s; contrast term = clip(s / 60, 0, 1).
- score = 10 · (0.4 sharpness + 0.3 exposure + 0.3 contrast) · (1 − 0.5 noisiness): noise at σ ≥ 10 halves it.

Reference values: a flat grey frame scores 3.0, a black frame 0; a sharp, well-exposed, contrasty frame 8–10.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass

import numpy as np

SCALE = "technical-quality (0–10)"
MODEL_NAME = "technical-quality-v1"

WEIGHTS = {"sharpness": 0.4, "exposure": 0.3, "contrast": 0.3}
NOISE_PENALTY = 0.5        # the share of the score that full noisiness takes away
SHARPNESS_REF = 1000.0     # Laplacian variance that counts as fully sharp (log scale)
NOISE_REF = 10.0           # noise σ (grey levels) that counts as fully noisy
CLIPPED_REF = 0.5          # fraction of clipped pixels that counts as fully badly exposed
CONTRAST_REF = 60.0        # luma std that counts as full contrast
DARK, BRIGHT = 3.0, 252.0  # luma at or beyond which a pixel is clipped

_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
_LAPLACIAN_NOISE_GAIN = 20.0  # Σ k² of the 3×3 Laplacian [[0,1,0],[1,-4,1],[0,1,0]]


def formula_sha256() -> str:
    """Identifies this formula (its constants) in records, where model backends give their weights' hash."""
    constants = {"model": MODEL_NAME, "weights": WEIGHTS, "noise_penalty": NOISE_PENALTY,
                 "sharpness_ref": SHARPNESS_REF, "noise_ref": NOISE_REF, "clipped_ref": CLIPPED_REF,
                 "contrast_ref": CONTRAST_REF, "dark": DARK, "bright": BRIGHT}
    return hashlib.sha256(json.dumps(constants, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class TechnicalQuality:
    """One frame's score (0–10) and its four terms (each 0–1; 1 = good, for noise 1 = noise-free), plus the raw
    measures behind them."""

    score: float
    sharpness: float
    exposure: float
    contrast: float
    noise: float
    laplacian_variance: float  # after removing the noise contribution
    noise_sigma: float
    clipped_fraction: float
    mean_luma: float
    luma_std: float

    def as_dict(self) -> dict:
        return asdict(self)


def luma(image: np.ndarray, analysis_side_px: int) -> np.ndarray:
    """BT.601 luma `(h, w)` float32 in 0–255 of an `(H, W, 3)` uint8 RGB frame, shrunk (area filter) so its
    longer side is at most `analysis_side_px`."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB frame, got {image.shape} {image.dtype}")
    import cv2  # here, not with the module: the aesthetic stage's config imports it where no frame is scored

    height, width = image.shape[:2]
    scale = analysis_side_px / max(height, width)
    if scale < 1:
        image = cv2.resize(image, (max(3, round(width * scale)), max(3, round(height * scale))),
                           interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)


def technical_quality(y: np.ndarray) -> TechnicalQuality:
    """Score one luma image `(h, w)` float32 (0–255, from `luma`)."""
    if y.ndim != 2 or min(y.shape) < 3:
        raise ValueError(f"expected a luma image of at least 3x3 pixels, got shape {y.shape}")
    import cv2

    y = y.astype(np.float32, copy=False)
    inner = (y.shape[0] - 2) * (y.shape[1] - 2)
    residual = cv2.filter2D(y, cv2.CV_32F, _NOISE_KERNEL, borderType=cv2.BORDER_REFLECT)[1:-1, 1:-1]
    noise_sigma = float(math.sqrt(math.pi / 2) * np.abs(residual, dtype=np.float64).sum() / (6.0 * inner))
    laplacian = cv2.Laplacian(y, cv2.CV_32F, ksize=1)[1:-1, 1:-1]
    detail = max(0.0, float(laplacian.var(dtype=np.float64)) - _LAPLACIAN_NOISE_GAIN * noise_sigma**2)
    clipped = float(np.mean((y <= DARK) | (y >= BRIGHT)))
    mean, std = float(y.mean(dtype=np.float64)), float(y.std(dtype=np.float64))

    terms = {
        "sharpness": _unit(math.log10(1.0 + detail) / math.log10(1.0 + SHARPNESS_REF)),
        "exposure": _unit(1.0 - clipped / CLIPPED_REF) * (1.0 - ((mean - 128.0) / 128.0) ** 2),
        "contrast": _unit(std / CONTRAST_REF),
    }
    noise = 1.0 - _unit(noise_sigma / NOISE_REF)
    score = 10.0 * sum(WEIGHTS[name] * value for name, value in terms.items()) * (1.0 - NOISE_PENALTY * (1 - noise))
    return TechnicalQuality(score=score, **terms, noise=noise, laplacian_variance=detail,
                            noise_sigma=noise_sigma, clipped_fraction=clipped, mean_luma=mean, luma_std=std)


def _unit(value: float) -> float:
    return min(1.0, max(0.0, value))
