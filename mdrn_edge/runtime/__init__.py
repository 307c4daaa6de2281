"""The torch-free inference runtime: NumPy, pydicom and ONNX Runtime, OpenVINO or TensorRT only.

Nothing here (nor anything it imports) imports torch: this is what runs on a Jetson next to the scanner. A test
checks it in a fresh subprocess.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mdrn_edge.errors import InputError, ModelFileError
from mdrn_edge.runtime.base import InferenceError, Runner
from mdrn_edge.runtime.config import BACKENDS, PRECISIONS, RuntimeConfig
from mdrn_edge.runtime.triton import TritonAddress, is_triton

log = logging.getLogger(__name__)

ENGINE_SUFFIXES = (".engine", ".plan")


def resolve_model_file(model: str | None, scale: int | None) -> "Path | TritonAddress":
    """A model file, a shipped name (``mdrn-x4``) or None (the shipped MDRN for ``scale``, default x4); a
    Triton-served model (``triton://HOST:PORT/NAME``, ``grpc://...``) is its address."""
    from mdrn_edge.weights import default_model_name, resolve_model

    if is_triton(model):
        return TritonAddress.parse(str(model))
    name = model or default_model_name(scale or 4)
    return resolve_model(name, ".onnx")


def choose_backend(path: Path, config: RuntimeConfig) -> str:
    """The backend for ``config.backend="auto"``, by the rule measured in ``benchmarks/results/``: engines on
    TensorRT; ONNX files on a CUDA GPU (ONNX Runtime's CUDA provider) with ONNX Runtime; on a CPU with OpenVINO
    wherever it is installed (FP32 1.2x, BF16 and INT8 about 2.2x ONNX Runtime on an Intel Xeon with AMX), except
    FP16 files, which are for GPUs; else ONNX Runtime."""
    if path.suffix in ENGINE_SUFFIXES:
        return "tensorrt"
    if config.device in ("gpu", "npu"):
        return "openvino"
    if config.device == "cuda" or config.tensorrt_ep:
        return "onnxruntime"
    import onnxruntime as ort

    if config.device == "auto" and "CUDAExecutionProvider" in ort.get_available_providers():
        return "onnxruntime"
    from mdrn_edge.runtime.openvino import file_precision, openvino_unavailable_reason

    reason = openvino_unavailable_reason()
    if reason is None and config.precision != "fp16" and file_precision(path) != "fp16":
        return "openvino"
    if reason and config.precision == "bf16":
        raise InputError(f"--precision bf16 runs on OpenVINO, which cannot run here: {reason}")
    return "onnxruntime"


def create_runner(path: "Path | TritonAddress", config: RuntimeConfig = RuntimeConfig()) -> Runner:
    """The runner for a model file and a :class:`RuntimeConfig`: engines run natively on TensorRT, ONNX files on
    OpenVINO or ONNX Runtime (``auto``: :func:`choose_backend`), a Triton address on its server."""
    if isinstance(path, TritonAddress):
        if config.backend != "auto" or config.precision != "auto" or config.device != "auto":
            raise InputError(f"{path}: a Triton-served model runs where and how its server runs it; leave out "
                             "--backend, --precision and --device")
        from mdrn_edge.runtime.triton import TritonRunner

        return TritonRunner(path)
    is_engine = path.suffix in ENGINE_SUFFIXES
    if (config.allow_host_code or config.lean_runtime) and not is_engine:
        raise InputError(f"{path}: --allow-host-code and --lean-runtime apply to TensorRT engines (.engine), not to "
                         "ONNX files; leave them out")
    backend = choose_backend(path, config) if config.backend == "auto" else config.backend
    if backend == "tensorrt":
        if not is_engine:
            raise InputError(f"{path}: the tensorrt backend runs engines (.engine) built by mdrn-export --engine; "
                             "for an ONNX file use --backend onnxruntime (add --trt-ep for ONNX Runtime's TensorRT EP)")
        from mdrn_edge.runtime.tensorrt import TensorRTRunner

        return TensorRTRunner(path, lean_runtime=config.lean_runtime, allow_host_code=config.allow_host_code)
    if is_engine:
        raise InputError(f"{path}: a TensorRT engine runs on --backend tensorrt, not {backend}")
    if path.suffix != ".onnx":
        raise ModelFileError(f"{path}: not an .onnx or .engine file; export one with mdrn-export")
    if backend == "openvino":
        from mdrn_edge.runtime.openvino import OpenVINORunner

        return OpenVINORunner(path, config)
    from mdrn_edge.runtime.onnxruntime import OnnxRuntimeRunner

    return OnnxRuntimeRunner(path, device=config.device, tensorrt_ep=config.tensorrt_ep, threads=config.threads,
                             precision=config.precision)


def check_runtime(model: str | None, scale: int | None, config: RuntimeConfig) -> dict:
    """Open and close the runner a long-running service will use, so that a model file, backend or precision that
    cannot run here is one line at its start rather than a failure at its first series; returns what it runs."""
    with create_runner(resolve_model_file(model, scale), config) as runner:
        return runner.describe()


from mdrn_edge.runtime.series import InferResult, super_resolve  # noqa: E402  (uses the helpers above)

__all__ = ["BACKENDS", "PRECISIONS", "RuntimeConfig", "check_runtime", "choose_backend", "InferenceError", "Runner", "create_runner", "resolve_model_file", "super_resolve", "InferResult"]
