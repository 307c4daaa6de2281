"""PSNR and SSIM exactly as the paper (eqs. 7, 8) and a paired significance test; NumPy only (SciPy for p-values).

Both metrics take images in [0, 1] and shave ``border`` pixels (the spec's choice: ``s``) before measuring.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SSIM_K1, SSIM_K2, SSIM_SIGMA, SSIM_WIN = 0.01, 0.03, 1.5, 11


def _shave(img: np.ndarray, border: int) -> np.ndarray:
    img = np.asarray(img, dtype=np.float64)
    return img[..., border:-border, border:-border] if border else img


def psnr(pred: np.ndarray, target: np.ndarray, border: int = 0) -> float:
    """``10 log10(1 / MSE)`` with MAX = 1; infinite for identical images."""
    mse = float(np.mean((_shave(pred, border) - _shave(target, border)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def _gaussian_window(sigma: float = SSIM_SIGMA, size: int = SSIM_WIN) -> np.ndarray:
    r = size // 2
    g = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' Gaussian filtering (no padding, so no border convention to disagree about)."""
    win = np.lib.stride_tricks.sliding_window_view(img, len(g), axis=-2) @ g
    return np.lib.stride_tricks.sliding_window_view(win, len(g), axis=-1) @ g


def ssim(pred: np.ndarray, target: np.ndarray, border: int = 0, data_range: float = 1.0) -> float:
    """Mean SSIM with an 11-tap Gaussian window (sigma 1.5), population statistics, K1 0.01, K2 0.03."""
    x, y = _shave(pred, border), _shave(target, border)
    if min(x.shape[-2:]) < SSIM_WIN:
        raise ValueError(f"SSIM needs at least {SSIM_WIN}x{SSIM_WIN} pixels after shaving, got {x.shape[-2:]}")
    g = _gaussian_window()
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mx, my = _filter_valid(x, g), _filter_valid(y, g)
    vx = _filter_valid(x * x, g) - mx * mx
    vy = _filter_valid(y * y, g) - my * my
    cxy = _filter_valid(x * y, g) - mx * my
    ssim_map = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(ssim_map.mean())


# Texture safety: band-pass energy in the background (air), where the ground truth holds only noise. SR that
# sharpens LR noise into structure ("worms", at the scale of a few HR pixels) raises it above the ground truth's:
# measured on VS-SEG at x4 with LR noise 0.03, the untrained-for-noise model reached 4.1x, bicubic 1.1x, while the
# finest band (pixel noise) hid it (0.7x). The band is a difference of Gaussians of 1 and max(2, s/2) HR pixels.
BACKGROUND_LEVEL = 0.1  # normalised intensity below which the smoothed ground truth counts as background
_BG_SIGMA = 3.0  # the wider smoothing that finds background (keeps a margin from tissue edges)


def _blur_valid(img: np.ndarray, sigma: float, width: int) -> np.ndarray:
    """Gaussian blur on the grid shrunk by ``width // 2`` pixels per side (every blur here shares that grid)."""
    return _filter_valid(img, _gaussian_window(sigma, width))


def band_pass(img: np.ndarray, scale: int) -> np.ndarray:
    """Difference of Gaussian blurs of 1 and max(2, s/2) HR pixels, on a grid shrunk by 3 x the wider sigma."""
    wide = max(2.0, scale / 2)
    width = int(6 * wide) | 1
    img = np.asarray(img, dtype=np.float64)
    return _blur_valid(img, 1.0, width) - _blur_valid(img, wide, width)


def background_mask(hr: np.ndarray, scale: int, level: float = BACKGROUND_LEVEL) -> np.ndarray:
    """Pixels (on :func:`band_pass`'s grid) whose ground-truth neighbourhood is dark: air, not tissue."""
    width = int(6 * max(2.0, scale / 2)) | 1
    return _blur_valid(np.asarray(hr, dtype=np.float64), _BG_SIGMA, width) < level


def background_texture(images: dict[str, np.ndarray], hr: np.ndarray, scale: int,
                       border: int = 0) -> tuple[dict[str, float], int]:
    """Summed squared band-pass energy in ``hr``'s background for each image and for ``hr`` itself (key ``hr``),
    and the number of background pixels; summed over slices and divided at the end, they give the texture
    measure: above the ground truth's, the output has texture that is not in the patient."""
    mask = background_mask(_shave(hr, border), scale)
    sums = {k: float((band_pass(_shave(v, border), scale)[mask] ** 2).sum()) for k, v in {**images, "hr": hr}.items()}
    return sums, int(mask.sum())


@dataclass(frozen=True)
class PairedTest:
    """Paired comparison of per-slice scores (model minus reference)."""

    n: int
    mean_diff: float
    wilcoxon_p: float
    ttest_p: float


def paired_test(scores: np.ndarray, reference: np.ndarray) -> PairedTest:
    """Wilcoxon signed-rank and paired t-test of ``scores`` against ``reference`` (two-sided)."""
    from scipy import stats

    a, b = np.asarray(scores, float), np.asarray(reference, float)
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"a paired test needs two equal-length samples of at least 2, got {a.shape} and {b.shape}")
    diff = a - b
    if np.allclose(diff, 0):
        return PairedTest(a.size, 0.0, 1.0, 1.0)
    return PairedTest(
        n=int(a.size),
        mean_diff=float(diff.mean()),
        wilcoxon_p=float(stats.wilcoxon(a, b).pvalue),
        ttest_p=float(stats.ttest_rel(a, b).pvalue),
    )
