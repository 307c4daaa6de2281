"""mdrn-bench: every backend on the same real slices, each in its own process, compared in one report."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

import mdrn_edge
from mdrn_edge.data import read_volume
from mdrn_edge.data.degradation import degrade, imresize
from mdrn_edge.data.normalize import Normalizer
from mdrn_edge.evaluate import score
from mdrn_edge.fileio import project_path
from mdrn_edge.hardware import cpu_busy, cpu_features, cpu_model
from mdrn_edge.metrics import psnr

# name -> how to run it; the CLI, the availability checks and the report all read this one table
BACKENDS: dict[str, dict[str, Any]] = {
    "torch-fp32-cpu": {"backend": "torch", "precision": "fp32", "device": "cpu"},
    "torch-fp32-cuda": {"backend": "torch", "precision": "fp32", "device": "cuda"},
    "torch-fp16-cuda": {"backend": "torch", "precision": "fp16", "device": "cuda"},
    "torch-fp16-cuda-channels-last": {"backend": "torch", "precision": "fp16", "device": "cuda", "channels_last": True},
    "onnxruntime-fp32-cpu": {"backend": "onnxruntime", "precision": "fp32", "device": "cpu"},
    "onnxruntime-fp16-cpu": {"backend": "onnxruntime", "precision": "fp16", "device": "cpu"},
    "onnxruntime-int8-cpu": {"backend": "onnxruntime", "precision": "int8", "device": "cpu", "speed_path": False},
    "openvino-fp32-cpu": {"backend": "openvino", "precision": "fp32", "device": "cpu"},
    "openvino-bf16-cpu": {"backend": "openvino", "precision": "bf16", "device": "cpu"},
    "openvino-int8-cpu": {"backend": "openvino", "precision": "int8", "device": "cpu"},
    "onnxruntime-fp32-cuda": {"backend": "onnxruntime", "precision": "fp32", "device": "cuda"},
    "onnxruntime-fp16-cuda": {"backend": "onnxruntime", "precision": "fp16", "device": "cuda"},
    "onnxruntime-fp16-tensorrt-ep": {"backend": "onnxruntime", "precision": "fp16", "device": "cuda", "tensorrt_ep": True},
    "tensorrt-fp32": {"backend": "tensorrt", "precision": "fp32", "device": "cuda"},
    "tensorrt-fp16": {"backend": "tensorrt", "precision": "fp16", "device": "cuda"},
    "tensorrt-int8": {"backend": "tensorrt", "precision": "int8", "device": "cuda"},
    # a model served by Triton (mdrn-bench --triton triton://HOST:PORT/NAME): the server's own device and precision
    "triton": {"backend": "triton", "precision": "fp32", "device": "server"},
}
REFERENCE = "torch-fp32-cpu"
CPU_BASELINE = "onnxruntime-fp32-cpu"  # what the CPU rows are set against (the runtime's FP32 before OpenVINO)
# ONNX Runtime's INT8 on a CPU is a parity row, not a speed path: its INT8 convolutions sit between float layers,
# and quantising, dequantising and NCHW/NHWC transposes took 47% of its time, the INT8 convolutions 10% (measured
# with ONNX Runtime's profiler, mdrn-x4, 256 x 256 LR); OpenVINO fuses the same Q/DQ pairs into its INT8 kernels
NOT_A_SPEED_PATH = ("ONNX Runtime's CPU INT8 is slower than its FP32 (Q/DQ and layout transposes around isolated "
                    "INT8 convolutions); run INT8 on OpenVINO")
MAX_GATED_DROP_DB = 0.05  # a reduced precision counts as gated in the report within this PSNR loss against FP32
EXPECTED_PROVIDER = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
# The paper's Table 3 (MRI-brain, x4, RTX 3090): peak memory MB and time ms
PAPER_TABLE3 = {"mdrn": (325.21, 27.88), "edsr": (2192.74, 72.36), "rfdn": (813.06, 49.51)}


@dataclass
class BenchConfig:
    model: str = "mdrn-x4"
    backends: Sequence[str] = tuple(BACKENDS)
    sizes: Sequence[int] = (64, 128, 256)
    batches: Sequence[int] = (1,)
    data: Sequence[str] = ()
    min_time: float = 1.0
    rounds: int = 3  # alternating runs of every backend per input; each keeps its fastest (see measure_rounds)
    table3: bool = True
    table3_size: int = 256
    series: Sequence[str] = ()  # series folders for the end-to-end rows (mdrn-infer wall time)
    series_scales: Sequence[int] = (2, 4)
    triton: str | None = None  # triton://HOST:PORT/NAME or grpc://...: the "triton" row measures that served model
    extra: dict[str, Any] = field(default_factory=dict)


def bench_steps(cfg: BenchConfig) -> int:
    """How many times :func:`run_bench` calls its progress callback (each backend, skipped or not, each round, size
    and batch; the Table 3 models; two ways per series and scale): the progress bar's total."""
    return (len(cfg.sizes) * len(cfg.batches) * len(cfg.backends) * cfg.rounds + (len(PAPER_TABLE3) if cfg.table3 else 0)
            + len(cfg.series) * len(cfg.series_scales) * 2)


def unavailable(name: str, triton: str | None = None) -> str | None:
    """Why a backend cannot run here, or None (``triton``: the served model of the ``triton`` row)."""
    spec = BACKENDS[name]
    if spec["backend"] == "triton":
        if not triton:
            return "no served model: give mdrn-bench --triton triton://HOST:PORT/NAME (mdrn-serve starts one)"
        from mdrn_edge.errors import MdrnError
        from mdrn_edge.runtime.triton import TritonRunner

        try:
            with TritonRunner(triton, retries=0):
                return None
        except MdrnError as exc:
            return str(exc)
    if spec["device"] == "cuda" and spec["backend"] == "torch":
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU here (torch.cuda.is_available() is False)"
    if spec["backend"] == "onnxruntime":
        import onnxruntime as ort

        wanted = "TensorrtExecutionProvider" if spec.get("tensorrt_ep") else EXPECTED_PROVIDER[spec["device"]]
        if wanted not in ort.get_available_providers():
            return f"this onnxruntime has no {wanted} (pip install onnxruntime-gpu on a CUDA machine)"
    if spec["backend"] == "openvino":
        from mdrn_edge.runtime.openvino import device_precisions, import_openvino, openvino_unavailable_reason

        reason = openvino_unavailable_reason()
        if reason:
            return reason
        native = device_precisions(import_openvino().Core())
        if spec["precision"] == "bf16" and "BF16" not in native:
            return f"this CPU has no native BF16 (OpenVINO reports {', '.join(sorted(native))})"
    if spec["backend"] == "tensorrt":
        from mdrn_edge.engines.tensorrt import import_builder
        from mdrn_edge.errors import MdrnError
        from mdrn_edge.runtime.tensorrt import tensorrt_unavailable_reason

        reason = tensorrt_unavailable_reason()
        if reason:
            return reason
        try:
            import_builder()
        except MdrnError as exc:
            return str(exc)
    return None


def cuda_visible_to_torch() -> bool:
    import torch

    return torch.cuda.is_available()


def machine() -> dict[str, Any]:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
            "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "cpu_model": cpu_model(),
            "cpu_features": cpu_features()}
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (OSError, ValueError):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def versions() -> dict[str, str]:
    import onnxruntime
    import torch

    out = {"mdrn_edge": mdrn_edge.__version__, "torch": str(torch.__version__), "onnxruntime": onnxruntime.__version__,
           "numpy": np.__version__}
    for module in ("onnx", "openvino", "tensorrt"):
        try:
            out[module] = __import__(module).__version__
        except ImportError:
            pass
    return out


def matmul_gflops(device: str = "cpu", dtype: str = "fp32", n: int = 2048, min_time: float = 1.0) -> float:
    """Dense matmul throughput on this device: the machine's capability that each backend's FLOP/s is set against."""
    import torch

    dt = torch.float16 if dtype == "fp16" else torch.float32
    a = torch.rand(n, n, device=device, dtype=dt)
    b = torch.rand(n, n, device=device, dtype=dt)
    (a @ b).sum().item()
    runs, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_time or runs < 3:
        (a @ b).sum().item()
        runs += 1
    return 2 * n**3 * runs / (time.perf_counter() - t0) / 1e9


def make_inputs(data: Sequence[str], normalizer: Normalizer, scale: int, size: int,
                batch: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Real HR slices of (size*scale)^2 (centre crops, or bicubic enlargements of smaller slices), their LR, and
    whether the HR is a real ground truth (an enlargement is not: accuracy against it means nothing)."""
    from mdrn_edge.samples import sample_files

    volume = read_volume(list(data) or sample_files())
    slices = normalizer.fit(volume.data).normalize(volume.data)
    pick = np.linspace(0, len(slices) - 1, batch).round().astype(int)
    target, hrs, real = size * scale, [], True
    for sl in slices[pick]:
        h, w = sl.shape
        if min(h, w) >= target:
            y, x = (h - target) // 2, (w - target) // 2
            hrs.append(sl[y : y + target, x : x + target])
        else:
            hrs.append(imresize(sl, (target, target)))
            real = False
    hr = np.stack(hrs).astype(np.float32)
    return degrade(hr, scale)[:, None], hr, real


def run_worker(spec: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    spec = {**spec, "spawned_at": time.time()}
    proc = subprocess.run([sys.executable, "-m", "mdrn_edge.bench.worker", json.dumps(spec)], capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"skipped": f"failed: {tail[:300]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def prepare_models(cfg: BenchConfig, work: Path, names: Sequence[str]) -> tuple[dict[str, Path], Any]:
    """The checkpoint, its FP32/FP16 ONNX and, where TensorRT runs, its engines, all from the same weights and
    through :func:`mdrn_edge.export.export` with its checks; engine profiles cover the benchmark's shapes."""
    from mdrn_edge.engines.tensorrt import Profile
    from mdrn_edge.export import ExportConfig, export
    from mdrn_edge.samples import sample_files
    from mdrn_edge.weights import resolve_model

    ckpt_path = resolve_model(cfg.model, ".pt")
    side = max(cfg.sizes)
    profile = Profile.parse(f"1x1x{min(cfg.sizes)}x{min(cfg.sizes)}", f"1x1x{side}x{side}", f"{max(cfg.batches)}x1x{side}x{side}")
    check = {"check_data": tuple(cfg.data), "profile": profile}
    # INT8 calibrates on the benchmark's own real slices (the bundled sample by default)
    int8 = {"int8": True, "calibration": tuple(cfg.data) or tuple(str(p) for p in sample_files())}
    wants_int8 = any(BACKENDS[n]["precision"] == "int8" for n in names)
    onnx = {a.format: a.path for a in export(ckpt_path, work, ExportConfig(fp16=True, engine=False, **check,
                                                                           **(int8 if wants_int8 else {})))}
    files = {"torch": ckpt_path, "onnx-fp32": onnx["onnx"], "onnx-fp16": onnx["onnx_fp16"]}
    if wants_int8:
        files["onnx-int8"] = onnx["onnx_int8"]
    for precision in sorted({BACKENDS[n]["precision"] for n in names if BACKENDS[n]["backend"] == "tensorrt"}):
        options = {"fp16": precision == "fp16", **(int8 if precision == "int8" else {})}
        built = export(ckpt_path, work / precision, ExportConfig(engine=True, **options, **check))
        files[f"engine-{precision}"] = next(a.path for a in built if a.format == "engine")
    from mdrn_edge.export.fp16 import load_onnx_info

    return files, load_onnx_info(files["onnx-fp32"])


def model_file(files: dict[str, Path], spec: dict[str, Any]) -> Path | str:
    if spec["backend"] == "triton":
        return str(files["triton"])
    if spec["backend"] == "torch":
        return files["torch"]
    if spec["backend"] == "tensorrt":
        return files[f"engine-{spec['precision']}"]
    return files["onnx-fp32" if spec["precision"] == "bf16" else f"onnx-{spec['precision']}"]  # BF16 runs the FP32 file


def flops_per_lr_pixel(arch: str, scale: int, config: dict[str, Any] | None = None) -> float:
    """FLOPs per LR pixel of one forward pass (counted at 64 x 64; the count is linear in pixels)."""
    from mdrn_edge.models import build_model
    from mdrn_edge.models.stats import count_flops

    config = {k: v for k, v in (config or {}).items() if k != "scale"}
    return count_flops(build_model(arch, scale, **config), 64) / 64**2


def measure_rounds(specs: dict[str, dict[str, Any]], rounds: int,
                   progress: Callable[[str], None] = lambda _: None) -> dict[str, dict[str, Any]]:
    """Every backend's best of ``rounds`` runs, the backends taking turns in fresh processes.

    This VM's speed drifts by up to a quarter from one second to the next, so backends measured one after the other
    can swap places; taking turns and keeping each one's fastest round (lowest p50, and the soonest first result)
    compares them at the machine's best. A backend that fails or skips once is not run again.
    """
    best: dict[str, dict[str, Any]] = {}
    for _ in range(rounds):
        for name, spec in specs.items():
            if "skipped" in best.get(name, {}):
                continue
            progress(name)
            measured, kept = run_worker(spec), best.get(name)
            if kept is None or "skipped" in measured:
                best[name] = measured if "skipped" in measured else {**measured, "rounds": 1}
                continue
            faster = measured if measured["latency_ms"]["p50"] < kept["latency_ms"]["p50"] else kept
            best[name] = {**faster, "first_result_s": min(kept["first_result_s"], measured["first_result_s"]),
                          "rounds": kept["rounds"] + 1}
    return best


def run_bench(cfg: BenchConfig, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    from mdrn_edge.bench.series import series_rows

    busy = cpu_busy()  # before anything of ours runs: what else the machine was doing
    names = [n for n in cfg.backends]
    reasons = {n: unavailable(n, cfg.triton) for n in names}
    runnable = [n for n in names if not reasons[n]]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mdrn-bench-") as tmp:
        work = Path(tmp)
        files, info = prepare_models(cfg, work, runnable)
        files["triton"] = cfg.triton or ""
        flops_per_pixel = flops_per_lr_pixel(info.arch, info.scale, info.config)
        normalizer = info.normalizer
        peak = {"cpu": matmul_gflops("cpu")}
        if any(BACKENDS[n]["device"] == "cuda" for n in runnable) and cuda_visible_to_torch():
            peak["cuda-fp32"], peak["cuda-fp16"] = matmul_gflops("cuda", "fp32"), matmul_gflops("cuda", "fp16")
        for size in cfg.sizes:
            for batch in cfg.batches:
                lr, hr, real = make_inputs(cfg.data, normalizer, info.scale, size, batch)
                for name in names:  # the progress bar counts every backend, run or not
                    for _ in range(cfg.rounds if reasons[name] else 0):
                        progress(f"{name}: skipped")
                np.save(work / "lr.npy", lr)
                ref = None
                order = sorted(names, key=lambda n: n != REFERENCE)  # the reference first
                specs = {n: {**{k: v for k, v in BACKENDS[n].items() if k != "speed_path"}, "model_file": str(model_file(files, BACKENDS[n])), "input": str(work / "lr.npy"),
                             "output": str(work / f"out-{n}.npy"), "min_time": cfg.min_time}
                         for n in order if not reasons[n]}
                best = measure_rounds(specs, cfg.rounds, lambda n: progress(f"{n} {size}x{size} batch {batch}"))
                for name in order:
                    spec = BACKENDS[name]
                    row = {"name": name, "backend": spec["backend"], "precision": spec["precision"],
                           "device": spec["device"], "lr_size": size, "batch": batch,
                           **({"speed_path": False, "note": NOT_A_SPEED_PATH} if spec.get("speed_path") is False else {})}
                    measured = {"skipped": reasons[name]} if reasons[name] else best[name]
                    expected = EXPECTED_PROVIDER.get(spec["device"]) if spec["backend"] == "onnxruntime" else None
                    if expected and not spec.get("tensorrt_ep") and measured.get("provider") not in (None, expected):
                        measured = {"skipped": f"onnxruntime fell back to {measured['provider']}"}
                    if "skipped" in measured:
                        results.append({**row, **measured})
                        continue
                    out = np.load(specs[name]["output"])[:, 0]
                    if name == REFERENCE:
                        ref = out
                    scores = [score(o, h, info.scale) for o, h in zip(out, hr)] if real else [(None, None)]
                    flops = flops_per_pixel * size * size * batch
                    capability = peak["cpu"] if spec["device"] == "cpu" else peak.get(f"cuda-{spec['precision']}")
                    achieved = flops / (measured["latency_ms"]["p50"] / 1e3) / 1e9
                    results.append({
                        **row, **measured,
                        "max_abs_err": float(np.abs(out - ref).max()) if ref is not None else None,
                        "psnr_vs_torch_fp32": float(np.mean([psnr(np.clip(o, 0, 1), np.clip(r, 0, 1)) for o, r in zip(out, ref)])) if ref is not None else None,
                        # against HR only where the HR is a real slice, not an enlargement of a smaller one
                        "psnr": float(np.mean([s[0] for s in scores])) if real else None,
                        "ssim": float(np.mean([s[1] for s in scores])) if real else None,
                        "achieved_gflops": achieved, "share_of_matmul_peak": achieved / capability if capability else None,
                    })
        models = table3(cfg, work, progress) if cfg.table3 else []
    series = series_rows(cfg.series, cfg.series_scales, lambda s: flops_per_lr_pixel(info.arch, s), peak["cpu"],
                         progress) if cfg.series else []
    return {
        "schema": "mdrn-edge-bench/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {**machine(), "cpu_busy_before_run": busy}, "versions": versions(),
        "model": {"name": cfg.model, **{k: info.to_dict()[k] for k in ("arch", "scale", "normalizer", "checkpoint_sha256")}},
        "data": [project_path(p) for p in cfg.data] or ["bundled sample: pydicom MR_small.dcm"],
        "settings": {"sizes": list(cfg.sizes), "batches": list(cfg.batches), "min_time_s": cfg.min_time, "rounds": cfg.rounds,
                     "border_shaved": info.scale, "protocol": "antialiased"},
        "matmul_gflops": peak,
        "results": results,
        "models": models,
        "series": [{**row, "series": project_path(row["series"])} for row in series],
        "ratios": {**ratios(results), **series_ratios(series)},
    }


def table3(cfg: BenchConfig, work: Path, progress: Callable[[str], None]) -> list[dict[str, Any]]:
    """The paper's Table 3 with our own numbers: params, FLOPs at 256x256, latency and peak memory at x4."""
    import torch

    from mdrn_edge.models import build_model, model_config
    from mdrn_edge.models.checkpoint import FORMAT, FORMAT_VERSION, atomic_save, make_model_info
    from mdrn_edge.models.stats import count_flops, count_params
    from mdrn_edge.weights import shipped_models

    device = "cuda" if torch.cuda.is_available() else "cpu"
    size = cfg.table3_size
    lr = np.random.default_rng(0).random((1, 1, size, size), dtype=np.float32)
    np.save(work / "t3.npy", lr)
    rows = []
    for arch, (paper_mem, paper_ms) in PAPER_TABLE3.items():  # the paper's table: its three architectures
        progress(f"Table 3: {arch}")
        model = build_model(arch, 4)
        shipped = shipped_models().get(f"{arch}-x4")
        path = shipped or atomic_save({"format": FORMAT, "format_version": FORMAT_VERSION, "arch": arch, "scale": 4,
                                       "config": model_config(model),
                                       "model_info": make_model_info(model, arch, Normalizer()).to_dict(),
                                       "state_dict": model.state_dict()}, work / f"{arch}.pt")
        measured = run_worker({"backend": "torch", "precision": "fp32", "device": device, "model_file": str(path),
                               "input": str(work / "t3.npy"), "output": str(work / "t3-out.npy"),
                               "min_time": cfg.min_time, "min_runs": 3})
        rows.append({"arch": arch, "params": count_params(model), "flops": count_flops(model, 256), "lr_size": size,
                     "device": device, "latency_ms": measured.get("latency_ms", {}).get("p50"),
                     "peak_mem_mb": measured.get("peak_gpu_mb", measured.get("peak_rss_mb")),
                     "peak_mem_kind": "torch.cuda.max_memory_allocated" if device == "cuda" else "process peak RSS (CPU)",
                     "weights": "shipped" if shipped else "random init (timing and memory do not depend on weights)",
                     "paper_peak_mem_mb": paper_mem, "paper_time_ms": paper_ms, "paper_device": "RTX 3090",
                     **({"skipped": measured["skipped"]} if "skipped" in measured else {})})
    return rows


def series_ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """End to end (default tiles) against plain whole-slice calls, and tiled against whole per call."""
    auto = [r for r in rows if r["tile"] == "auto"]
    key = lambda r: f"x{r['scale']} {r['lr_size']} ({r['slices']} slices)"  # noqa: E731
    return {"series_speedup_vs_plain_calls": {key(r): r["speedup_vs_plain_calls"] for r in auto},
            "tiled_vs_whole_per_call": {key(r): r["tiled_vs_whole_per_call"] for r in auto}} if rows else {}


def ratios(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The targets of benchmarks/: ONNX Runtime CPU vs PyTorch eager CPU speed, and time to first result."""
    by = {(r["name"], r["lr_size"], r["batch"]): r for r in results if "skipped" not in r}
    out: dict[str, Any] = {"onnxruntime_cpu_speedup": {}, "first_result_speedup": {}, **cpu_ratios(by)}
    for (name, size, batch), r in by.items():
        if name != "onnxruntime-fp32-cpu" or (REFERENCE, size, batch) not in by:
            continue
        t = by[(REFERENCE, size, batch)]
        key = f"{size}x{size}/b{batch}"
        out["onnxruntime_cpu_speedup"][key] = t["latency_ms"]["p50"] / r["latency_ms"]["p50"]
        out["first_result_speedup"][key] = t["first_result_s"] / r["first_result_s"]
    return out


def cpu_ratios(by: dict[tuple[str, int, int], dict[str, Any]]) -> dict[str, Any]:
    """Every CPU row against ONNX Runtime FP32 (p50 speed-up, PSNR loss), and per input the fastest row that is
    gated (within :data:`MAX_GATED_DROP_DB` of FP32) and offered as a speed path: what the report names fastest."""
    speedup: dict[str, dict[str, float]] = {}
    drop: dict[str, dict[str, float]] = {}
    fastest: dict[str, str] = {}
    for (name, size, batch), r in by.items():
        base = by.get((CPU_BASELINE, size, batch))
        if r["device"] != "cpu" or base is None:
            continue
        key = f"{size}x{size}/b{batch}"
        speedup.setdefault(key, {})[name] = base["latency_ms"]["p50"] / r["latency_ms"]["p50"]
        measured = r["psnr"] is not None and base["psnr"] is not None  # no ground truth at this size: FP32 only
        drop.setdefault(key, {})[name] = base["psnr"] - r["psnr"] if measured else None
    for key, rows in speedup.items():
        gated = [n for n in rows if BACKENDS[n].get("speed_path", True) and (
            BACKENDS[n]["precision"] == "fp32" if drop[key][n] is None else drop[key][n] <= MAX_GATED_DROP_DB)]
        fastest[key] = max(gated, key=rows.get)
    return {"cpu_speedup_vs_onnxruntime_fp32": speedup, "cpu_psnr_drop_vs_onnxruntime_fp32_db": drop,
            "fastest_gated_cpu_backend": fastest}
