"""A volume in, its super-resolved slices out: normalise with the model's own normaliser, batch or tile, invert."""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from mdrn_edge.data.volume import Volume
from mdrn_edge.errors import InputError
from mdrn_edge.hardware import available_memory
from mdrn_edge.runtime.base import Runner
from mdrn_edge.runtime.checks import SliceChecker
from mdrn_edge.runtime.tiling import DEFAULT_OVERLAP, DEFAULT_TILE, run_tiled, tiled_rows

UNKNOWN_BYTES_PER_LR_PIXEL = 17000  # a model file that predates the measured figure: EDSR's, the largest measured
CLIP_MODES = ("series", "none")  # series: outputs within the input series' own physical range; none: unclipped
Encoder = Callable[[int, np.ndarray], np.ndarray]  # (slice index, physical rows) -> rows as the writer stores them
BATCH_PIXELS = 256 * 256  # batch small slices up to this many LR pixels per call; large ones go one by one
FINISH_ROWS = 256  # output rows converted per step of a tiled slice


def activation_bytes(runner: Runner, lr_pixels: int) -> int:
    """The inference memory for ``lr_pixels`` LR pixels, from the architecture's measured bytes per LR pixel
    (declared by its model file, carried in the model info)."""
    per_pixel = runner.info.bytes_per_lr_pixel if runner.info and runner.info.bytes_per_lr_pixel else UNKNOWN_BYTES_PER_LR_PIXEL
    return lr_pixels * per_pixel


def plan_batch(runner: Runner, shape: tuple[int, int], tile: int | None, batch: int | None, budget: int) -> int:
    """Slices (or tiles) per call: small slices batched (measured: no gain beyond 256x256 LR pixels per call on a
    CPU), tiles one at a time (tiling is for bounding memory), both within the memory budget; a slice that cannot
    fit without --tile is refused with the hint."""
    h, w = (min(tile, shape[0]), min(tile, shape[1])) if tile else shape
    per_item = activation_bytes(runner, h * w)
    if per_item > budget:
        hint = "use a smaller --tile" if tile else f"use --tile {DEFAULT_TILE} (tiled inference bounds memory by the tile)"
        raise InputError(f"a {shape[0]}x{shape[1]} slice needs about {per_item / 2**30:.1f} GiB to infer whole, "
                         f"more than the {budget / 2**30:.1f} GiB available; {hint}")
    fit = max(1, budget // per_item)
    default = 1 if tile else max(1, min(8, BATCH_PIXELS // (h * w)))
    limits = runner.input_limits()
    most = limits[1][0] if limits else fit  # an engine profile's largest batch
    if batch and batch > most:
        raise InputError(f"--batch {batch} is more than the engine's profile allows ({most}); use --batch {most} or "
                         "rebuild the engine with a larger batch in --max-shape")
    return int(min(batch or default, fit, most))


def padded_to_profile(infer: Callable[[np.ndarray], np.ndarray], minimum: tuple[int, ...],
                      scale: int) -> Callable[[np.ndarray], np.ndarray]:
    """``infer`` for inputs smaller than an engine profile's smallest H x W (a static DLA engine runs one shape, a
    dynamic one from its minimum): they are padded at the bottom and right by repeating their last row and column,
    and the output is cropped back to their own size."""
    def run(batch: np.ndarray) -> np.ndarray:
        h, w = batch.shape[-2:]
        ph, pw = max(0, minimum[0] - h), max(0, minimum[1] - w)
        if not (ph or pw):
            return infer(batch)
        return infer(np.pad(batch, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="edge"))[..., : h * scale, : w * scale]

    return run


def resolve_tile(tile: int | str | None, shape: tuple[int, int],
                 limits: tuple[tuple[int, ...], tuple[int, ...]] | None = None) -> int | None:
    """The tile size to use: ``"auto"`` tiles slices larger than :data:`DEFAULT_TILE` (faster on a CPU and
    bounded in memory, see :mod:`~mdrn_edge.runtime.tiling`), or than an engine profile's largest input, with
    tiles it admits; ``None`` or 0 infers whole slices."""
    if tile == "auto":
        largest = min(limits[1][2:]) if limits else DEFAULT_TILE
        size = min(DEFAULT_TILE, largest)
        return size if max(shape) > size else None
    if tile is not None and not isinstance(tile, int):
        raise InputError(f"tile must be 'auto', 0 (whole slices) or a number of LR pixels, got {tile!r}")
    return tile or None


def super_resolve_volume(volume: Volume, runner: Runner, tile: int | str | None = "auto", overlap: int | None = None,
                         batch: int | None = None, progress: Callable[[int], None] | None = None,
                         memory_budget: int | None = None, clip: str = "series",
                         encode: Encoder | None = None, checker: SliceChecker | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first slice index, SR slices)`` chunks, so that callers write each chunk as it comes and memory
    never holds the whole super-resolved volume.

    Values are in the volume's physical units, or what ``encode(slice index, rows)`` makes of them (a writer's
    stored integers): tiled slices are encoded band by band as the stitcher releases rows, so a large slice is held
    once, in its output type, and never as float32. ``clip="series"`` keeps outputs within the input's own minimum
    and maximum: a network's overshoot at edges must not make MR magnitude negative or exceed what the scanner
    stored, while signed data keeps its negative values. ``clip="none"`` returns the network's values as they are.

    With a ``checker`` every slice is checked against its LR slice (:mod:`~mdrn_edge.runtime.checks`) before it
    leaves, and may be replaced (the self-ensemble's mean, made consistent): a tiled slice is then held whole, in
    normalised float32, while it is checked (``checks="off"`` keeps the band-by-band stream for huge slices)."""
    if clip not in CLIP_MODES:
        raise InputError(f"clip must be one of {CLIP_MODES}, got {clip!r}")
    if min(volume.data.shape[-2:]) < 2:
        raise InputError(f"{volume.sources[0]}: a {volume.data.shape[-2]}x{volume.data.shape[-1]} image is too small "
                         "to super-resolve; give slices of at least 2x2 pixels")
    limits = runner.input_limits()
    largest = min(limits[1][2:]) if limits else None  # tiles an engine profile admits
    tile = resolve_tile(tile, volume.data.shape[-2:], limits)
    if tile and largest and tile > largest:
        raise InputError(f"--tile {tile} is larger than the engine's profile admits ({largest}); use --tile {largest} "
                         "or auto")
    overlap = DEFAULT_OVERLAP if overlap is None else overlap
    if tile and overlap >= tile:
        raise InputError(f"--overlap {overlap} must be smaller than --tile {tile}")
    infer = padded_to_profile(runner.infer, limits[0][2:], runner.scale) if limits else runner.infer
    bounds = volume.value_range if clip == "series" else None
    scaling = runner.info.normalizer.fit(volume.data)
    if checker:
        checker.scaling = scaling
    x = scaling.normalize(volume.data)
    budget = memory_budget or int(0.5 * available_memory())
    per_call = plan_batch(runner, x.shape[-2:], tile, batch, budget)
    s = runner.scale

    def finish(k: int, sr: np.ndarray) -> np.ndarray:  # rows of slice k: physical units, clipped, encoded
        out = scaling.denormalize(sr[None], first=k)[0]
        if bounds:
            np.clip(out, *bounds, out=out)
        return encode(k, out) if encode else out

    def sr_of(lr: np.ndarray) -> np.ndarray:  # one normalised slice, as the run infers it (the checker's ensemble)
        if tile:
            return run_tiled(infer, lr, s, tile, overlap, per_call, largest)
        return infer(lr[None, None])[0, 0]

    def checked(k: int, sr: np.ndarray) -> np.ndarray:  # slice k through the checker, in normalised units
        limits = scaling.normalize(np.asarray(bounds, np.float32)[None, None], first=k).ravel() if bounds else None
        return checker.process(k, x[k], sr, sr_of, (float(limits[0]), float(limits[1])) if bounds else None)

    def finished(k: int, sr: np.ndarray) -> np.ndarray:  # a whole slice, a few rows at a time: small temporaries
        return np.concatenate([finish(k, sr[r : r + FINISH_ROWS]) for r in range(0, len(sr), FINISH_ROWS)])

    for i in range(0, len(x), 1 if tile else per_call):
        if tile and checker:
            chunk = finished(i, checked(i, sr_of(x[i])))[None]
        elif tile:
            out = None
            for row, rows in tiled_rows(infer, x[i], s, tile, overlap, per_call, largest):
                for k in range(0, len(rows), FINISH_ROWS):
                    done = finish(i, rows[k : k + FINISH_ROWS])
                    if out is None:
                        out = np.empty((x.shape[1] * s, x.shape[2] * s), done.dtype)
                    out[row + k : row + k + len(done)] = done
            chunk = out[None]
        else:
            sr = infer(x[i : i + per_call, None])[:, 0]
            chunk = np.stack([finish(i + k, checked(i + k, one) if checker else one) for k, one in enumerate(sr)])
        yield i, chunk
        if progress:
            progress(len(chunk))
