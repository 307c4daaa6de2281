"""Produce the committed benchmark results: ``python benchmarks/run_benchmarks.py [--tag NAME]``.

Everything is measured in this one run on this one machine, and the targets are ratios of figures from it:
1. ONNX Runtime CPU at least 1.5x faster than PyTorch eager CPU (same model, same real slices);
2. time to first result with the light runtime at least 3x sooner than the torch path (fresh processes);
3. tiled inference of a 512 x 512 LR slice at x4 (2048 x 2048 out) under 400 MB peak RSS on the CPU backend.
Writes benchmarks/results/<tag>/ (mdrn-bench's report.json, report.md, plots) and summary.{json,md}.
Stop other heavy work (a training run) first: the machine must be quiet for timings.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "vs-seg-001-t1"
TILED_TARGET_MB = 400


def child_peak_rss(code: str) -> float:
    """Run ``code`` in a fresh interpreter and return its own peak RSS (VmHWM) in MB."""
    probe = code + "\nprint(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) / 1024)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def tiled_memory(slice_file: Path, workdir: Path) -> dict:
    """Peak RSS of mdrn-infer on one 512 x 512 slice at x4, tiled (128, default overlap) and whole."""
    figures = {}
    for label, tile in (("tiled_128", 128), ("whole", None)):
        out = workdir / f"infer-{label}"
        figures[label] = child_peak_rss(
            "from mdrn_edge.runtime import super_resolve\n"
            f"super_resolve([{str(slice_file)!r}], {str(out)!r}, overwrite=True, tile={tile!r})")
    return {"input": str(slice_file), "lr_size": 512, "scale": 4, "output_size": 2048,
            "peak_rss_mb": figures, "target_mb": TILED_TARGET_MB, "pass": figures["tiled_128"] < TILED_TARGET_MB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", default="cpu-2core", help="results/<tag>: name the machine")
    parser.add_argument("--min-time", type=float, default=2.0)
    args = parser.parse_args()
    out = ROOT / "benchmarks" / "results" / args.tag
    data = [str(SHARED / f"1-{i}.dcm") for i in range(101, 121, 5)] if SHARED.is_dir() else []
    cmd = [sys.executable, "-m", "mdrn_edge.cli.bench", "--output", str(out), "--sizes", "64,128,256",
           "--min-time", str(args.min_time), *sum((["--data", d] for d in data), [])]
    subprocess.run(cmd, check=True)
    report = json.loads((out / "report.json").read_text())
    ratios = report["ratios"]
    summary = {
        "machine": report["machine"], "versions": report["versions"],
        "onnxruntime_cpu_speedup": ratios["onnxruntime_cpu_speedup"],
        "onnxruntime_cpu_speedup_pass": min(ratios["onnxruntime_cpu_speedup"].values()) >= 1.5,
        "first_result_speedup": ratios["first_result_speedup"],
        "first_result_speedup_pass": min(ratios["first_result_speedup"].values()) >= 3.0,
    }
    if SHARED.is_dir():
        summary["tiled_memory"] = tiled_memory(SHARED / "1-060.dcm", out / "work")
        subprocess.run(["rm", "-rf", str(out / "work")], check=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"# Benchmark summary ({args.tag})", "", f"Machine: {report['machine'].get('cpu_model')}, "
             f"{report['machine']['cpu_cores']} cores; " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()), "",
             "| target | measured | pass |", "|---|---|---|"]
    for key, value in summary["onnxruntime_cpu_speedup"].items():
        lines.append(f"| ONNX Runtime CPU >= 1.5x PyTorch eager CPU ({key}) | {value:.2f}x | {value >= 1.5} |")
    for key, value in summary["first_result_speedup"].items():
        lines.append(f"| first result light runtime >= 3x sooner than torch ({key}) | {value:.2f}x | {value >= 3} |")
    if "tiled_memory" in summary:
        t = summary["tiled_memory"]
        lines.append(f"| tiled 512x512 LR x4 (2048x2048 out) < {TILED_TARGET_MB} MB peak RSS | "
                     f"{t['peak_rss_mb']['tiled_128']:.0f} MB (whole slice: {t['peak_rss_mb']['whole']:.0f} MB) | {t['pass']} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
