"""mdrn-bench's end-to-end rows: ``mdrn-infer`` on a real series in a fresh process (reading, inference, writing),
against plain whole-slice calls of the same ONNX model on the same slices, and tiled against whole per call.

The plain calls are the rate a user would get from ONNX Runtime alone; the end-to-end run must beat it although
it also starts a process, reads and writes DICOM, because tiles that stay in cache run faster than whole slices
and files are written while the next slice is inferred.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

TILE_MODES = ("auto", "off")


def run_infer(inputs: Sequence[str], output: Path, scale: int, tile: str) -> dict[str, Any]:
    """``mdrn-infer`` in a fresh process: its wall time, its JSON result and its own peak RSS (VmHWM, which it
    reports; a parent's rusage would inherit the parent's peak through fork)."""
    cmd = [sys.executable, "-m", "mdrn_edge.cli.infer", *inputs, "--output", str(output), "--scale", str(scale),
           "--tile", tile, "--json", "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"mdrn-infer exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    result = json.loads(proc.stdout)
    return {"wall_s": wall, "peak_rss_mb": result["peak_rss_mb"], "result": result}


def call_times(model_file: Path, slices: np.ndarray, scale: int, repeats: int = 2) -> dict[str, float]:
    """Seconds for plain whole-slice calls and for default-tiled calls over ``slices`` (normalised LR), in one
    ONNX Runtime session, as a user's own loop would have. Whole and tiled alternate slice by slice and each
    slice's best of ``repeats`` counts, so that drifting machine speed (shared CPUs) does not favour either."""
    from mdrn_edge.runtime import create_runner
    from mdrn_edge.runtime.tiling import DEFAULT_OVERLAP, DEFAULT_TILE, run_tiled

    with create_runner(model_file, "onnxruntime", "cpu") as runner:
        ways = {"whole_s": lambda x: runner.infer(x[None, None]),
                "tiled_s": lambda x: run_tiled(runner.infer, x, scale, DEFAULT_TILE, DEFAULT_OVERLAP)}
        for fn in ways.values():
            fn(slices[0])  # warm-up
        out = dict.fromkeys(ways, 0.0)
        for x in slices:
            best = dict.fromkeys(ways, float("inf"))
            for _ in range(repeats):
                for name, fn in ways.items():
                    t0 = time.perf_counter()
                    fn(x)
                    best[name] = min(best[name], time.perf_counter() - t0)
            for name in ways:
                out[name] += best[name]
    return out


def series_rows(series: Sequence[str], scales: Sequence[int], flops_per_pixel: Callable[[int], float],
                matmul_gflops: float, progress: Callable[[str], None] = lambda _: None) -> list[dict[str, Any]]:
    """One row per series, scale and tile mode (auto, off): slices/s, GFLOP/s, share of the matmul rate, peak
    RSS, and the ratio to plain whole-slice calls; plus the per-call tiled and whole times."""
    from mdrn_edge.data import read_volume
    from mdrn_edge.runtime import resolve_model_file
    from mdrn_edge.runtime.onnxruntime import OnnxRuntimeRunner

    rows = []
    for folder in series:
        volume = read_volume([folder])
        n, h, w = volume.data.shape
        for scale in scales:
            model_file = resolve_model_file(None, scale)
            with OnnxRuntimeRunner(model_file, "cpu") as probe:
                x = probe.info.normalizer.fit(volume.data).normalize(volume.data)
            progress(f"plain calls x{scale} {h}x{w}")
            calls = call_times(model_file, x, scale)
            flops = flops_per_pixel(scale) * h * w * n
            for tile in TILE_MODES:
                progress(f"mdrn-infer x{scale} {h}x{w} tile {tile}")
                with tempfile.TemporaryDirectory(prefix="mdrn-bench-series-") as tmp:
                    run = run_infer([folder], Path(tmp) / "out", scale, tile)
                gflops = flops / run["wall_s"] / 1e9
                rows.append({
                    "series": folder, "scale": scale, "tile": tile, "slices": n, "lr_size": f"{h}x{w}",
                    "wall_s": run["wall_s"], "slices_per_s": n / run["wall_s"], "achieved_gflops": gflops,
                    "share_of_matmul_peak": gflops / matmul_gflops, "peak_rss_mb": run["peak_rss_mb"],
                    "plain_whole_calls_s": calls["whole_s"], "tiled_calls_s": calls["tiled_s"],
                    "speedup_vs_plain_calls": calls["whole_s"] / run["wall_s"],
                    "tiled_vs_whole_per_call": calls["whole_s"] / calls["tiled_s"],
                })
    return rows
