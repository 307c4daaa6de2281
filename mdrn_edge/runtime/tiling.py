"""Tiled inference for large slices, NumPy only (after MONAI's sliding window, split into small functions).

Tiles overlap by at least the model's receptive field and are blended with linear ramps over the overlap, so
seams vanish; memory is bounded by the tile, not the slice. CCA's mean and std are global per channel, so a tile
cannot match the whole slice exactly: the tests measure how close it gets on real slices.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

Window = tuple[int, int, int, int]  # y0, y1, x0, x1 in LR pixels


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]  # the last tile ends at the border


def plan_tiles(height: int, width: int, tile: int, overlap: int) -> list[Window]:
    """Windows covering an ``height x width`` slice; tiles never exceed the slice."""
    if tile < 1 or overlap < 0:
        raise ValueError(f"tile must be >= 1 and overlap >= 0, got tile {tile}, overlap {overlap}")
    if overlap >= tile:
        raise ValueError(f"overlap {overlap} must be smaller than the tile {tile}")
    th, tw = min(tile, height), min(tile, width)
    return [(y, y + th, x, x + tw) for y in _starts(height, th, overlap) for x in _starts(width, tw, overlap)]


def ramp(length: int, ramp_in: int, ramp_out: int) -> np.ndarray:
    """1-D blending weights: linear ramps of the given widths at each end (0 where the edge is a slice border)."""
    w = np.ones(length, np.float32)
    if ramp_in:
        w[:ramp_in] = np.minimum(w[:ramp_in], (np.arange(ramp_in) + 0.5) / ramp_in)
    if ramp_out:
        w[length - ramp_out :] = np.minimum(w[length - ramp_out :], ((np.arange(ramp_out) + 0.5) / ramp_out)[::-1])
    return w


def blend_weights(window: Window, height: int, width: int, overlap: int, scale: int) -> np.ndarray:
    """2-D weights of one output tile: ramps only on edges shared with a neighbouring tile."""
    y0, y1, x0, x1 = window
    r = overlap * scale
    wy = ramp((y1 - y0) * scale, r if y0 > 0 else 0, r if y1 < height else 0)
    wx = ramp((x1 - x0) * scale, r if x0 > 0 else 0, r if x1 < width else 0)
    return np.outer(wy, wx)


def batched(windows: list[Window], size: int) -> Iterator[list[Window]]:
    for i in range(0, len(windows), size):
        yield windows[i : i + size]


def run_tiled(infer: Callable[[np.ndarray], np.ndarray], image: np.ndarray, scale: int, tile: int, overlap: int,
              batch: int = 1) -> np.ndarray:
    """SR of one ``H x W`` slice by tiles: infer batches of tiles, accumulate weighted outputs, divide."""
    h, w = image.shape
    windows = plan_tiles(h, w, tile, overlap)
    acc = np.zeros((h * scale, w * scale), np.float32)
    norm = np.zeros_like(acc)
    for group in batched(windows, batch):
        tiles = np.stack([image[y0:y1, x0:x1] for y0, y1, x0, x1 in group])[:, None]
        for (y0, y1, x0, x1), out in zip(group, infer(tiles)[:, 0]):
            wgt = blend_weights((y0, y1, x0, x1), h, w, overlap, scale)
            acc[y0 * scale : y1 * scale, x0 * scale : x1 * scale] += out * wgt
            norm[y0 * scale : y1 * scale, x0 * scale : x1 * scale] += wgt
    return acc / norm
