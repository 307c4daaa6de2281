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


def series_rows(series: Sequence[str], scales: Sequence[int], flops_per_pixel: Callable[[int], float],
                matmul_gflops: float, progress: Callable[[str], None] = lambda _: None,
                repeats: int = 3) -> list[dict[str, Any]]:
    """One row per series, scale and tile mode (auto, off): slices/s, GFLOP/s, share of the matmul rate, peak
    RSS, and the ratio to plain whole-slice calls; plus plain tiled calls against plain whole-slice calls.

    The plain ways alternate slice by slice and each slice's best of ``repeats`` rounds counts (summed over the
    slices); the two mdrn-infer ways alternate run by run and each one's best run counts. On a virtual machine
    whose speed drifts by a quarter from one second to the next (measured here), per-slice minima of
    interleaved calls compare the ways at the machine's best for each, and no way is favoured by when it ran."""
    from mdrn_edge.data import read_volume
    from mdrn_edge.runtime import RuntimeConfig, create_runner, resolve_model_file
    from mdrn_edge.runtime.tiling import DEFAULT_OVERLAP, DEFAULT_TILE, run_tiled

    rows = []
    for folder in series:
        volume = read_volume([folder])
        n, h, w = volume.data.shape
        for scale in scales:
            model_file = resolve_model_file(None, scale)
            runs: dict[str, dict[str, Any]] = {}
            with create_runner(model_file, RuntimeConfig("onnxruntime", "cpu")) as runner:
                x = runner.info.normalizer.fit(volume.data).normalize(volume.data)
                plain = {"whole": lambda s: runner.infer(s[None, None]),
                         "tiled": lambda s: run_tiled(runner.infer, s, scale, DEFAULT_TILE, DEFAULT_OVERLAP)}
                for fn in plain.values():
                    fn(x[0])  # warm-up
                per_slice = {way: [float("inf")] * n for way in plain}
                for _ in range(repeats):
                    progress(f"x{scale} {h}x{w}: plain calls and mdrn-infer")
                    for k, one in enumerate(x):
                        for way, fn in plain.items():
                            t0 = time.perf_counter()
                            fn(one)
                            per_slice[way][k] = min(per_slice[way][k], time.perf_counter() - t0)
                    for tile in TILE_MODES:
                        with tempfile.TemporaryDirectory(prefix="mdrn-bench-series-") as tmp:
                            run = run_infer([folder], Path(tmp) / "out", scale, tile)
                        if run["wall_s"] < runs.get(tile, {"wall_s": float("inf")})["wall_s"]:
                            runs[tile] = run
            best = {way: sum(times) for way, times in per_slice.items()}
            flops = flops_per_pixel(scale) * h * w * n
            for tile in TILE_MODES:
                run = runs[tile]
                gflops = flops / run["wall_s"] / 1e9
                rows.append({
                    "series": folder, "scale": scale, "tile": tile, "slices": n, "lr_size": f"{h}x{w}",
                    "wall_s": run["wall_s"], "slices_per_s": n / run["wall_s"], "achieved_gflops": gflops,
                    "share_of_matmul_peak": gflops / matmul_gflops, "peak_rss_mb": run["peak_rss_mb"],
                    "plain_whole_calls_s": best["whole"], "tiled_calls_s": best["tiled"], "repeats": repeats,
                    "speedup_vs_plain_calls": best["whole"] / run["wall_s"],
                    "tiled_vs_whole_per_call": best["whole"] / best["tiled"],
                })
    return rows
