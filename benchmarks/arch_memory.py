"""Measure each architecture's inference memory per LR pixel: ``python benchmarks/arch_memory.py``.

The figure each model file declares as ``BYTES_PER_LR_PIXEL``: the slope of ONNX Runtime's (CPU, FP32) peak RSS
between two LR sizes at x4, each measured in a fresh process, so the interpreter and the weights cancel out.
Writes benchmarks/results/arch-memory.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = (128, 256)
PROBE = """
import sys, numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
n = int(sys.argv[2])
s.run(None, {"lr": np.random.default_rng(0).random((1, 1, n, n), dtype=np.float32)})
print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) * 1024)
"""


def peak_bytes(onnx_path: Path, size: int) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, str(onnx_path), str(size)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def main() -> None:
    import torch

    from mdrn_edge.models import available_models, build_model

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in available_models(trainable=True):
            path = Path(tmp) / f"{arch}.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(build_model(arch, 4).eval(), (torch.rand(1, 1, 32, 32),), str(path), input_names=["lr"],
                                  output_names=["sr"], dynamo=False, opset_version=17,
                                  dynamic_axes={"lr": {2: "h", 3: "w"}, "sr": {2: "H", 3: "W"}})
            peaks = {n: peak_bytes(path, n) for n in SIZES}
            slope = (peaks[SIZES[1]] - peaks[SIZES[0]]) / (SIZES[1] ** 2 - SIZES[0] ** 2)
            results[arch] = {"peak_rss_bytes": peaks, "bytes_per_lr_pixel": round(slope)}
            print(arch, results[arch])
    out = ROOT / "benchmarks" / "results" / "arch-memory.json"
    out.write_text(json.dumps({"scale": 4, "backend": "onnxruntime CPU FP32", "sizes": SIZES, "archs": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
