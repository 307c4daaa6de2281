"""Tiled inference for large slices, NumPy only, streamed band by band.

Why tiles: memory must be bounded by the tile, not the slice, and a tile's feature maps stay closer to the cache
(a 512x512 slice's 56-channel feature map is 58 MB, a default tile's 4 MB: on 2 CPU cores default tiles ran 1.27x
faster per call than whole 512x512 slices at x4 and 1.24x on 384x274 slices in the committed benchmark,
`benchmarks/results/cpu-2core-epyc/summary.md`). Tiles of one band (a row of tiles)
are blended with linear ramps exactly as wide as their overlap, normalised so the weights sum to one everywhere and
no normalisation image is needed; once a band is done, the output rows above the next band are final and leave as
a block. Peak memory is one band of output plus the carried overlap, whatever the slice's size.

The overlap is measured, not the theoretical receptive field (71 LR pixels for MDRN): CCA's channel statistics
are global, so a tile never equals the whole slice exactly, but on real MRI an overlap of 8 LR pixels already
agrees with the whole slice at over 60 dB PSNR at x2, x4 and x8 (``tests/test_runtime.py`` checks >= 45 dB).
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import numpy as np

DEFAULT_TILE = 128  # LR pixels: the measured cache sweet spot of MDRN on a CPU
MIN_TILE = 16  # smaller tiles spend most of their work on the overlap
DEFAULT_OVERLAP = 8  # LR pixels: measured seam-free (see the module docstring)

Span = tuple[int, int]  # start, stop in LR pixels along one axis


def plan_axis(length: int, tile: int, overlap: int, largest: int | None = None) -> list[Span]:
    """Equal spans of about ``tile`` covering ``length``, neighbours overlapping by at least ``overlap``.

    The span count is the one whose spans come nearest ``tile`` and the spans are spread evenly, so no thin last tile repeats
    work (512 with tile 128 and overlap 8: four spans of 134, not five of 128). ``largest`` caps the span (an
    engine profile's largest input): more spans are taken rather than longer ones."""
    if tile < 1 or overlap < 0:
        raise ValueError(f"tile must be >= 1 and overlap >= 0, got tile {tile}, overlap {overlap}")
    if overlap >= tile:
        raise ValueError(f"overlap {overlap} must be smaller than the tile {tile}")
    largest = largest or length
    n = round((length - overlap) / (tile - overlap))
    if length <= min(tile, largest) or (n <= 1 and length <= largest):  # up to about 1.5 tiles: one span
        return [(0, length)]  # (an axis shorter than the overlap too: a 512 x 6 slice is tiled along one axis)
    if largest <= overlap:
        raise ValueError(f"the largest span {largest} must exceed the overlap {overlap}")
    n = max(n, 2)
    while math.ceil((length + (n - 1) * overlap) / n) > largest:
        n += 1
    size = min(length, math.ceil((length + (n - 1) * overlap) / n))
    while True:
        starts = [i * (length - size) // (n - 1) for i in range(n)]
        if all(size - (b - a) >= overlap for a, b in zip(starts, starts[1:])) or size == length:
            return [(a, a + size) for a in starts]
        size += 1


def ramp(length: int, ramp_in: int, ramp_out: int) -> np.ndarray:
    """1-D blending weights: linear ramps of the given widths at each end."""
    w = np.ones(length, np.float32)
    if ramp_in:
        w[:ramp_in] = (np.arange(ramp_in, dtype=np.float32) + 0.5) / ramp_in
    if ramp_out:
        w[length - ramp_out :] *= ((np.arange(ramp_out, dtype=np.float32) + 0.5) / ramp_out)[::-1]
    return w


def axis_weights(spans: list[Span], scale: int) -> list[np.ndarray]:
    """Output weights of each span: ramps over the overlap with each neighbour (none at the slice border),
    divided by their sum so that the weights along the axis add up to one everywhere (two equal ramps already
    do; large overlaps, where three spans meet, need the division). The 2-D weights are outer products of these,
    so they too sum to one and the stitched slice needs no normalisation image."""
    raw, total = [], np.zeros(spans[-1][1] * scale, np.float32)
    for i, (start, stop) in enumerate(spans):
        ramp_in = spans[i - 1][1] - start if i > 0 else 0
        ramp_out = stop - spans[i + 1][0] if i + 1 < len(spans) else 0
        raw.append(ramp((stop - start) * scale, min(ramp_in * scale, (stop - start) * scale),
                        min(ramp_out * scale, (stop - start) * scale)))
        total[start * scale : stop * scale] += raw[-1]
    return [r / total[start * scale : stop * scale] for r, (start, stop) in zip(raw, spans)]


def tiled_rows(infer: Callable[[np.ndarray], np.ndarray], image: np.ndarray, scale: int, tile: int, overlap: int,
               batch: int = 1, largest: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """SR of one ``H x W`` slice by tiles, yielding ``(first output row, final rows)`` blocks top to bottom."""
    h, w = image.shape
    rows, cols = plan_axis(h, tile, overlap, largest), plan_axis(w, tile, overlap, largest)
    row_weights, col_weights = axis_weights(rows, scale), axis_weights(cols, scale)
    carry = None  # output rows shared with the previous band, already holding its share
    for i, (y0, y1) in enumerate(rows):
        band = np.zeros(((y1 - y0) * scale, w * scale), np.float32)
        if carry is not None:
            band[: len(carry)] = carry
        wy = row_weights[i][:, None]
        for k in range(0, len(cols), batch):
            group = cols[k : k + batch]
            tiles = np.stack([image[y0:y1, x0:x1] for x0, x1 in group])[:, None]
            for j, ((x0, x1), out) in enumerate(zip(group, infer(tiles)[:, 0]), start=k):
                band[:, x0 * scale : x1 * scale] += out * (wy * col_weights[j])
        done = (rows[i + 1][0] - y0) * scale if i + 1 < len(rows) else len(band)
        carry = band[done:]
        yield y0 * scale, band[:done]


def run_tiled(infer: Callable[[np.ndarray], np.ndarray], image: np.ndarray, scale: int, tile: int, overlap: int,
              batch: int = 1, largest: int | None = None) -> np.ndarray:
    """The whole SR slice from :func:`tiled_rows` (for callers that need it in one array)."""
    return np.concatenate([rows for _, rows in tiled_rows(infer, image, scale, tile, overlap, batch, largest)])
