"""One benchmark measurement in a fresh process: ``python -m mdrn_edge.bench.worker SPEC_JSON``.

A fresh process per backend and size makes peak RSS and time-to-first-result honest: the clock starts when the
parent spawns the process, so interpreter start, imports and model loading are all counted, and nothing heavy
is imported before the backend asks for it (the ONNX Runtime path never imports torch).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from mdrn_edge.hardware import peak_rss_mb


def _nvml_used_mb() -> float | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        return pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
    except Exception:
        return None


def _runner(spec: dict[str, Any]):
    """The spec's backend as an active runner, and a function reporting its provider and device memory."""
    if spec["backend"] == "torch":
        from mdrn_edge.models.runner import TorchRunner

        runner = TorchRunner(spec["model_file"], spec["device"], spec["precision"], spec.get("channels_last", False))
    else:
        from mdrn_edge.runtime import RuntimeConfig, create_runner, resolve_model_file

        # every precision as the row names it, gated or not (the report measures its accuracy); no compiled-model
        # cache, so that the time to the first result counts compiling, as on a fresh machine; a Triton-served
        # model runs as its server runs it
        config = RuntimeConfig() if spec["backend"] == "triton" else RuntimeConfig(
            spec["backend"], spec["device"], spec["precision"], tensorrt_ep=spec.get("tensorrt_ep", False),
            allow_ungated=True, cache_dir="off")
        runner = create_runner(resolve_model_file(spec["model_file"], None) if spec["backend"] == "triton"
                               else Path(spec["model_file"]), config)
    before = _nvml_used_mb() if spec["device"] == "cuda" and spec["backend"] == "onnxruntime" else None
    runner.activate()

    def memory() -> dict:
        out: dict[str, Any] = {"provider": runner.describe().get("provider")}
        if spec["backend"] == "torch" and runner.peak_gpu_bytes() is not None:
            out["peak_gpu_mb"] = runner.peak_gpu_bytes() / 2**20
        elif spec["backend"] == "tensorrt":
            out["peak_gpu_mb"] = runner.device_memory_bytes() / 2**20
        elif before is not None and (now := _nvml_used_mb()) is not None:
            out["peak_gpu_mb"] = now - before  # device memory used by this process (NVML)
        return out

    return runner.infer, memory


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    lr = np.load(spec["input"])  # N x 1 x H x W
    infer, memory = _runner(spec)
    out = infer(lr)
    first = time.time() - spec["spawned_at"]
    for _ in range(spec.get("warmup", 2)):
        infer(lr)
    times: list[float] = []
    t_end = time.perf_counter() + spec.get("min_time", 1.0)
    while len(times) < spec.get("min_runs", 5) or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        infer(lr)
        times.append(time.perf_counter() - t0)
        if len(times) >= spec.get("max_runs", 200):
            break
    np.save(spec["output"], out)
    ms = np.asarray(times) * 1e3
    return {
        "latency_ms": {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
                       "p99": float(np.percentile(ms, 99)), "runs": len(times)},
        "throughput": float(len(lr) / (np.median(times))),
        "first_result_s": float(first),
        "peak_rss_mb": peak_rss_mb(),
        "torch_imported": "torch" in sys.modules,
        **memory(),
    }


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
