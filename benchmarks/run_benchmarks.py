"""Produce the committed benchmark results: ``python benchmarks/run_benchmarks.py [--tag NAME]``.

Everything is measured in this one run on this one machine, and the targets are ratios of figures from it:
1. ONNX Runtime CPU at least 1.5x faster than PyTorch eager CPU (same model, same real slices);
2. time to first result with the light runtime at least 3x sooner than the torch path (fresh processes);
3. default-tiled inference at least as fast as whole-slice inference per call, on 384x274 and 512x512 real slices
   at x4 (mdrn-bench's end-to-end rows);
4. mdrn-infer's wall time on 8 real 512x512 slices at x4 at least 1.1x the rate of plain whole-slice ONNX Runtime
   calls on the same slices;
5. peak RSS of mdrn-infer on one slice: 512x512 LR at x4 with default tiles under 400 MB; 2048x2048 LR at x4 with
   --tile 256 (8192x8192 out) under 1 GB; 3072x3072 LR at x4 with the default tiles no more than the output
   slice's own stored size plus 500 MB.
Writes benchmarks/results/<tag>/ (mdrn-bench's report.json, report.md, plots) and summary.{json,md}.
Stop other heavy work (a training run) first: the machine must be quiet for timings.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "vs-seg-001-t1"
SERIES_SLICES = range(56, 64)  # 8 real slices through the middle of the head
MEMORY_CASES = [  # LR size, --tile, target MB (None: the output slice's stored size + 500 MB)
    (512, "auto", 400),
    (2048, "256", 1000),
    (3072, "auto", None),
]
SCALE = 4


def series_folders(work: Path) -> list[Path]:
    """8 real 512x512 VS-SEG slices, and the same slices' central 384x274 crops, each as a series folder."""
    import pydicom

    full, crop = work / "vs-seg-512x512", work / "vs-seg-384x274"
    full.mkdir(parents=True)
    crop.mkdir()
    for i in SERIES_SLICES:
        src = SHARED / f"1-{i:03d}.dcm"
        shutil.copy(src, full / src.name)
        ds = pydicom.dcmread(src)
        y, x = (ds.Rows - 384) // 2, (ds.Columns - 274) // 2
        ds.PixelData = np.ascontiguousarray(ds.pixel_array[y : y + 384, x : x + 274]).tobytes()
        ds.Rows, ds.Columns = 384, 274
        ds.save_as(crop / src.name)
    return [full, crop]


def large_slice(work: Path, size: int) -> Path:
    """A real slice (VS-SEG 1-060) enlarged to ``size`` x ``size`` by bicubic interpolation, as a DICOM series."""
    import pydicom

    from mdrn_edge.data.degradation import imresize

    folder = work / f"large-{size}"
    folder.mkdir()
    ds = pydicom.dcmread(SHARED / "1-060.dcm")
    big = imresize(ds.pixel_array.astype(np.float32), (size, size))
    ds.PixelData = np.clip(np.rint(big), 0, 65535).astype(np.uint16).tobytes()
    ds.Rows = ds.Columns = size
    ds.save_as(folder / "1.dcm")
    return folder


def memory(work: Path) -> list[dict]:
    """Peak RSS of mdrn-infer (a fresh process, wait4) on one large slice per case."""
    from mdrn_edge.bench.series import run_infer

    rows = []
    for size, tile, target in MEMORY_CASES:
        folder = large_slice(work, size)
        run = run_infer([str(folder)], work / f"out-{size}", SCALE, tile)
        stored_mb = (size * SCALE) ** 2 * 2 / 2**20
        target = target if target is not None else stored_mb + 500
        rows.append({"lr_size": size, "scale": SCALE, "tile": tile, "output_size": size * SCALE,
                     "output_stored_mb": round(stored_mb), "peak_rss_mb": round(run["peak_rss_mb"]),
                     "wall_s": round(run["wall_s"], 1), "target_mb": round(target),
                     "pass": run["peak_rss_mb"] < target})
        shutil.rmtree(work / f"out-{size}")
    return rows


def main() -> None:
    from mdrn_edge.bench.report import busy_note
    from mdrn_edge.fileio import project_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", default="cpu-2core", help="results/<tag>: name the machine")
    parser.add_argument("--min-time", type=float, default=2.0)
    args = parser.parse_args()
    out = ROOT / "benchmarks" / "results" / args.tag
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    data = [project_path(SHARED / f"1-{i}.dcm") for i in range(101, 121, 5)] if SHARED.is_dir() else []
    series = series_folders(work) if SHARED.is_dir() else []
    cmd = [sys.executable, "-m", "mdrn_edge.cli.bench", "--output", str(out), "--sizes", "64,128,256",
           "--min-time", str(args.min_time), *sum((["--data", d] for d in data), []),
           *sum((["--series", str(f)] for f in series), [])]
    subprocess.run(cmd, check=True, cwd=ROOT)
    report = json.loads((out / "report.json").read_text())
    ratios = report["ratios"]
    summary = {
        "machine": report["machine"], "versions": report["versions"],
        "onnxruntime_cpu_speedup": ratios["onnxruntime_cpu_speedup"],
        "onnxruntime_cpu_speedup_pass": min(ratios["onnxruntime_cpu_speedup"].values()) >= 1.5,
        "first_result_speedup": ratios["first_result_speedup"],
        "first_result_speedup_pass": min(ratios["first_result_speedup"].values()) >= 3.0,
    }
    lines = [f"# Benchmark summary ({args.tag})", "", f"Machine: {report['machine'].get('cpu_model')}, "
             f"{report['machine']['cpu_cores']} cores; " + ", ".join(f"{k} {v}" for k, v in report["versions"].items())
             + "." + busy_note(report["machine"]), "",
             "| target | measured | pass |", "|---|---|---|"]
    for key, value in summary["onnxruntime_cpu_speedup"].items():
        lines.append(f"| ONNX Runtime CPU >= 1.5x PyTorch eager CPU ({key}) | {value:.2f}x | {value >= 1.5} |")
    for key, value in summary["first_result_speedup"].items():
        lines.append(f"| first result light runtime >= 3x sooner than torch ({key}) | {value:.2f}x | {value >= 3} |")
    if series:
        x4 = {k: v for k, v in ratios["tiled_vs_whole_per_call"].items() if k.startswith("x4 ")}
        e2e = {k: v for k, v in ratios["series_speedup_vs_plain_calls"].items() if k.startswith("x4 512x512")}
        summary.update(tiled_vs_whole_per_call=x4, tiled_vs_whole_pass=min(x4.values()) >= 1.0,
                       series_speedup=e2e, series_speedup_pass=min(e2e.values()) >= 1.1,
                       memory=memory(work))
        for key, value in x4.items():
            lines.append(f"| default tiles >= 1.0x whole-slice calls ({key}) | {value:.2f}x | {value >= 1.0} |")
        for key, value in e2e.items():
            lines.append(f"| mdrn-infer end to end >= 1.1x plain whole-slice calls ({key}) | {value:.2f}x | {value >= 1.1} |")
        for m in summary["memory"]:
            lines.append(f"| peak RSS, {m['lr_size']}x{m['lr_size']} LR x{m['scale']} --tile {m['tile']} "
                         f"({m['output_size']}x{m['output_size']} out, {m['output_stored_mb']} MB stored) < {m['target_mb']} MB "
                         f"| {m['peak_rss_mb']} MB in {m['wall_s']} s | {m['pass']} |")
        shutil.rmtree(work)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
