"""Bicubic resizing with MATLAB ``imresize`` behaviour (NumPy only).

One implementation serves the training degradation, the evaluation, the bicubic baseline and the runtime, so that
what was measured is what runs at the scanner. Cubic kernel with a = -0.5; on downscaling the kernel is widened
by 1/scale (antialiasing); borders are handled by mirroring indices, as MATLAB does.

The spec's ``paper`` evaluation protocol uses PyTorch's ``interpolate(mode="bicubic", antialias=False)`` instead:
a = -0.75, no widening, clamped borders. ``kernel="torch"`` selects it, from the same code.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel; a = -0.5 is MATLAB's and Pillow's choice."""
    ax = np.abs(x)
    ax2, ax3 = ax**2, ax**3
    near = (a + 2) * ax3 - (a + 3) * ax2 + 1
    far = a * ax3 - 5 * a * ax2 + 8 * a * ax - 4 * a
    return np.where(ax <= 1, near, np.where(ax < 2, far, 0.0))


KERNELS = ("matlab", "torch")


@lru_cache(maxsize=64)
def resize_matrix(in_len: int, out_len: int, antialias: bool = True, kernel: str = "matlab") -> np.ndarray:
    """Dense ``(out_len, in_len)`` weights of a 1-D bicubic resize (rows sum to 1).

    ``kernel="matlab"``: a = -0.5, mirrored borders, widened kernel when ``antialias`` and downscaling.
    ``kernel="torch"``: PyTorch's bicubic (a = -0.75, clamped borders, never widened).
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    torch_like = kernel == "torch"
    a = -0.75 if torch_like else -0.5
    scale = out_len / in_len
    widen = antialias and scale < 1 and not torch_like
    width = 4.0 / scale if widen else 4.0
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)  # output pixel centre in input coordinates (1-based)
    left = np.floor(u - width / 2)
    idx = left[:, None] + np.arange(int(np.ceil(width)) + 2)[None, :]
    dist = u[:, None] - idx
    w = scale * cubic(scale * dist, a) if widen else cubic(dist, a)
    w /= w.sum(axis=1, keepdims=True)
    if torch_like:
        cols = np.clip(idx.astype(np.int64) - 1, 0, in_len - 1)
    else:
        mirror = np.concatenate([np.arange(in_len), np.arange(in_len)[::-1]])  # symmetric border, 0-based
        cols = mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    mat = np.zeros((out_len, in_len))
    np.add.at(mat, (np.repeat(np.arange(out_len), idx.shape[1]), cols.ravel()), w.ravel())
    mat.setflags(write=False)
    return mat


def imresize(img: np.ndarray, out_hw: tuple[int, int], antialias: bool = True, kernel: str = "matlab") -> np.ndarray:
    """Resize the last two axes of ``img`` to ``out_hw`` (float32 in, float32 out)."""
    h, w = img.shape[-2:]
    rows = resize_matrix(h, out_hw[0], antialias, kernel).astype(np.float32)
    cols = resize_matrix(w, out_hw[1], antialias, kernel).astype(np.float32)
    return (rows @ img.astype(np.float32, copy=False) @ cols.T).astype(np.float32, copy=False)


def crop_to_multiple(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop the last two axes to a multiple of ``scale`` (bottom/right), as the paper's HR preparation."""
    h, w = img.shape[-2:]
    return img[..., : h - h % scale, : w - w % scale]


def centre_crop(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """The central ``height`` x ``width`` of the last two axes (the whole axis where it is shorter)."""
    h, w = img.shape[-2:]
    ch, cw = min(h, height), min(w, width)
    y, x = (h - ch) // 2, (w - cw) // 2
    return img[..., y : y + ch, x : x + cw]


def degrade(hr: np.ndarray, scale: int, kernel: str = "matlab") -> np.ndarray:
    """HR -> LR by bicubic downsampling (antialiased for ``matlab``); ``hr`` must be a multiple of ``scale``."""
    h, w = hr.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"HR size {h}x{w} is not a multiple of scale {scale}; crop it first")
    return imresize(hr, (h // scale, w // scale), antialias=True, kernel=kernel)


def upscale(lr: np.ndarray, scale: int, kernel: str = "matlab") -> np.ndarray:
    """The bicubic baseline: LR -> s*H x s*W with the same kernel."""
    h, w = lr.shape[-2:]
    return imresize(lr, (h * scale, w * scale), kernel=kernel)


# --- realistic MRI degradations (k-space truncation, Rician noise) -------------------------------------------------
METHODS = ("bicubic", "kspace")
WINDOWS = ("none", "hann", "hamming")


def _window(n: int, kind: str) -> np.ndarray:
    """A symmetric apodisation window over ``n`` centred k-space samples (scanners' ringing filters)."""
    if kind == "none":
        return np.ones(n)
    t = (np.arange(n) + 0.5) / n
    alpha = 0.5 if kind == "hann" else 0.54
    return alpha - (1 - alpha) * np.cos(2 * np.pi * t)


def kspace_degrade(hr: np.ndarray, scale: int, window: str = "none") -> np.ndarray:
    """HR -> LR as a scanner acquires it: keep the central ``H/s x W/s`` of the HR slice's k-space (optionally
    apodised) and reconstruct the magnitude. A lower-resolution acquisition of the same field of view samples
    exactly that part of k-space, so this is the physical degradation; the 1/s^2 keeps intensities in place.
    A linear phase first moves the samples by (s - 1)/2 HR pixels, so that LR pixel k sits at the centre of HR
    pixels s k .. s k + s - 1, the geometry of the bicubic degradation and of the written DICOM."""
    if window not in WINDOWS:
        raise ValueError(f"apodisation window must be one of {WINDOWS}, got {window!r}")
    h, w = hr.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"HR size {h}x{w} is not a multiple of scale {scale}; crop it first")
    lh, lw = h // scale, w // scale
    d = (scale - 1) / 2
    phase = np.outer(np.exp(2j * np.pi * np.fft.fftfreq(h) * d), np.exp(2j * np.pi * np.fft.fftfreq(w) * d))
    k = np.fft.fftshift(np.fft.fft2(hr.astype(np.float64)) * phase, axes=(-2, -1))
    y0, x0 = h // 2 - lh // 2, w // 2 - lw // 2
    k = k[..., y0 : y0 + lh, x0 : x0 + lw] * np.outer(_window(lh, window), _window(lw, window))
    lr = np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1))) / (scale * scale)
    return np.abs(lr).astype(np.float32)


def rician_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the image plus complex Gaussian noise of standard deviation ``sigma`` (in normalised units):
    the noise of a magnitude MR image, which is Rician and biased upwards in dark regions."""
    if sigma <= 0:
        return img
    re = img + rng.normal(0.0, sigma, img.shape)
    im = rng.normal(0.0, sigma, img.shape)
    return np.sqrt(re * re + im * im).astype(np.float32)


def degrade_with(hr: np.ndarray, scale: int, method: str = "bicubic", kernel: str = "matlab",
                 window: str = "none") -> np.ndarray:
    """The noise-free LR of one degradation ``method``: shared by training, evaluation and the export checks."""
    if method not in METHODS:
        raise ValueError(f"degradation must be one of {METHODS}, got {method!r}")
    return kspace_degrade(hr, scale, window) if method == "kspace" else degrade(hr, scale, kernel)
