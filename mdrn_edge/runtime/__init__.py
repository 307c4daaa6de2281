"""The torch-free inference runtime: NumPy, pydicom and ONNX Runtime or TensorRT only.

Nothing here (nor anything it imports) imports torch: this is what runs on a Jetson next to the scanner. A test
checks it in a fresh subprocess.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mdrn_edge.errors import InputError, ModelFileError
from mdrn_edge.runtime.base import InferenceError, Runner

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "tensorrt")
ENGINE_SUFFIXES = (".engine", ".plan")


def resolve_model_file(model: str | None, scale: int | None) -> Path:
    """A model file, a shipped name (``mdrn-x4``) or None (the shipped MDRN for ``scale``, default x4)."""
    from mdrn_edge.weights import default_model_name, resolve_model

    name = model or default_model_name(scale or 4)
    return resolve_model(name, ".onnx")


def create_runner(path: Path, backend: str = "auto", device: str = "auto", tensorrt_ep: bool = False,
                  threads: int | None = None, allow_host_code: bool = False, lean_runtime: str | Path | None = None,
                  ) -> Runner:
    """The runner for a model file: engines run natively on TensorRT, ONNX files on ONNX Runtime.
    ``allow_host_code`` and ``lean_runtime`` are for version-compatible engines (see :class:`TensorRTRunner`)."""
    is_engine = path.suffix in ENGINE_SUFFIXES
    if (allow_host_code or lean_runtime) and not is_engine:
        raise InputError(f"{path}: --allow-host-code and --lean-runtime apply to TensorRT engines (.engine), not to "
                         "ONNX files; leave them out")
    if backend == "auto":
        backend = "tensorrt" if is_engine else "onnxruntime"
    if backend == "tensorrt":
        if not is_engine:
            raise InputError(f"{path}: the tensorrt backend runs engines (.engine) built by mdrn-export --engine; "
                             "for an ONNX file use --backend onnxruntime (add --trt-ep for ONNX Runtime's TensorRT EP)")
        from mdrn_edge.runtime.tensorrt import TensorRTRunner

        return TensorRTRunner(path, lean_runtime=lean_runtime, allow_host_code=allow_host_code)
    if is_engine:
        raise InputError(f"{path}: a TensorRT engine runs on --backend tensorrt, not {backend}")
    if path.suffix != ".onnx":
        raise ModelFileError(f"{path}: not an .onnx or .engine file; export one with mdrn-export")
    from mdrn_edge.runtime.onnxruntime import OnnxRuntimeRunner

    return OnnxRuntimeRunner(path, device=device, tensorrt_ep=tensorrt_ep, threads=threads)


from mdrn_edge.runtime.series import InferResult, super_resolve  # noqa: E402  (uses the helpers above)

__all__ = ["BACKENDS", "InferenceError", "Runner", "create_runner", "resolve_model_file", "super_resolve", "InferResult"]
