"""Native TensorRT 10 backend: an engine plus its sidecar, tensor-name I/O, one non-default CUDA stream.

Follows ``shared/notes/TENSORRT.md``: the sidecar is checked before deserialising, every return value is
checked, input shapes are validated against the engine's profile before ``set_input_shape``, every I/O address
is set, and NaN/Inf outputs are refused (by :class:`~mdrn_edge.runtime.base.Runner`).
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from mdrn_edge.errors import InputError, MissingDependencyError, ModelFileError
from mdrn_edge.fileio import file_sha256
from mdrn_edge.modelinfo import ModelInfo
from mdrn_edge.runtime.base import Runner
from mdrn_edge.runtime.cuda import CudaError, cuda_adapter
from mdrn_edge.runtime.sidecar import check_compatible, read_sidecar, sidecar_path

log = logging.getLogger(__name__)

TRT_MODULES = ("tensorrt", "tensorrt_lean")  # the full runtime, then the lean one (version-compatible plans)
TRT_HINT = "install TensorRT 10 (JetPack 6.1+ ships 10.3; elsewhere pip install 'mdrn-edge[gpu]')"


def import_tensorrt(modules: tuple[str, ...] = TRT_MODULES):
    for name in modules:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise MissingDependencyError(f"TensorRT is not installed; {TRT_HINT}")


def tensorrt_unavailable_reason() -> str | None:
    """None where TensorRT and a CUDA GPU can run an engine here; otherwise why not, in one line."""
    try:
        import_tensorrt()
        adapter = cuda_adapter()
        adapter.device()
        adapter.close()
    except (MissingDependencyError, CudaError) as exc:
        return str(exc)
    except Exception as exc:  # a driver without a GPU fails in many ways
        return f"no usable CUDA GPU ({type(exc).__name__}: {exc})"
    return None


class TensorRTRunner(Runner):
    backend = "tensorrt"

    def __init__(self, path: str | Path, profile: int = 0, lean_runtime: str | Path | None = None) -> None:
        super().__init__(path)
        self.profile, self.lean_runtime = profile, lean_runtime
        self.sidecar: dict[str, Any] = {}
        self.trt = self.cuda = self.engine = self.context = None
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (pointer, capacity in bytes)

    def activate_impl(self) -> None:
        if not self.path.is_file():
            raise ModelFileError(f"{self.path}: no such engine file; build one with mdrn-export --engine")
        self.sidecar = read_sidecar(self.path)
        self.info = ModelInfo.from_dict(self.sidecar.get("model"), str(sidecar_path(self.path)))
        trt = self.trt = import_tensorrt()
        self.cuda = cuda_adapter()
        check_compatible(self.sidecar, trt.__version__, self.cuda.device(), self.path)
        self.logger = trt.Logger(trt.Logger.WARNING)
        runtime = self.runtime = trt.Runtime(self.logger)
        if self.sidecar.get("version_compatible"):
            runtime.engine_host_code_allowed = True  # trusted plans only: ours, checked by sidecar hash below
            if self.lean_runtime:
                runtime.load_runtime(str(self.lean_runtime))
        plan = self.path.read_bytes()
        if self.sidecar.get("engine_sha256") and file_sha256(self.path) != self.sidecar["engine_sha256"]:
            raise ModelFileError(f"{self.path}: does not match the SHA-256 in its sidecar (modified or corrupt); rebuild it")
        engine = self.engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise ModelFileError(f"{self.path}: TensorRT {trt.__version__} could not deserialise it; rebuild it on this device")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        mode = {n: engine.get_tensor_mode(n) for n in names}
        self.input_name = next(n for n in names if mode[n] == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n in names if mode[n] == trt.TensorIOMode.OUTPUT)
        for name in (self.input_name, self.output_name):
            if engine.get_tensor_dtype(name) != trt.float32:
                raise ModelFileError(f"{self.path}: tensor {name} is {engine.get_tensor_dtype(name)}, expected FP32 I/O")
        self.context = engine.create_execution_context()
        if self.context is None:
            raise CudaError(f"{self.path}: could not create an execution context (GPU memory?); close other GPU jobs")
        if self.profile and not self.context.set_optimization_profile_async(self.profile, self.cuda.stream_handle):
            raise ModelFileError(f"{self.path}: has no optimisation profile {self.profile}")
        self.profile_shapes = [tuple(map(tuple, engine.get_tensor_profile_shape(self.input_name, self.profile)))]

    def input_limits(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        lo, _, hi = self.profile_shapes[0]
        return tuple(lo), tuple(hi)

    def check_shape(self, shape: tuple[int, ...]) -> None:
        lo, _, hi = self.profile_shapes[0]
        if any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
            hint = (f"use --batch {hi[0]} or rebuild with a larger batch in --max-shape" if not lo[0] <= shape[0] <= hi[0]
                    else "use --tile, or rebuild with a larger --max-shape (or smaller --min-shape)")
            raise InputError(f"input {'x'.join(map(str, shape))} is outside the engine's profile "
                             f"{'x'.join(map(str, lo))} .. {'x'.join(map(str, hi))}; {hint}")

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, capacity = self._buffers.get(name, (0, 0))
        if capacity < nbytes:
            if ptr:
                self.cuda.free(ptr)
            ptr, capacity = self.cuda.malloc(nbytes), nbytes
            self._buffers[name] = (ptr, capacity)
        return ptr

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        ctx = self.context
        if not ctx.set_input_shape(self.input_name, batch.shape):
            raise InputError(f"TensorRT refused input shape {batch.shape} for {self.input_name}")
        out_shape = tuple(ctx.get_tensor_shape(self.output_name))
        if any(d < 0 for d in out_shape):
            raise ModelFileError(f"{self.path}: TensorRT could not infer the output shape for input {batch.shape}")
        out = np.empty(out_shape, dtype=np.float32)
        src, dst = self._buffer(self.input_name, batch.nbytes), self._buffer(self.output_name, out.nbytes)
        for name, ptr in ((self.input_name, src), (self.output_name, dst)):
            if not ctx.set_tensor_address(name, ptr):
                raise ModelFileError(f"{self.path}: TensorRT refused the address of tensor {name}")
        self.cuda.htod(src, batch)
        if not ctx.execute_async_v3(self.cuda.stream_handle):
            raise CudaError(f"{self.path}: TensorRT execution failed (see the TensorRT log above)")
        self.cuda.dtoh(out, dst)
        self.cuda.synchronize()
        return out

    def deactivate_impl(self) -> None:
        for ptr, _ in self._buffers.values():
            self.cuda.free(ptr)
        self._buffers.clear()
        self.context = self.engine = None
        if self.cuda:
            self.cuda.close()

    def device_memory_bytes(self) -> int:
        """The engine's own figure for its activation memory (the TensorRT 10.1+ ``_v2`` API)."""
        return int(self.engine.device_memory_size_v2)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "tensorrt_version": self.sidecar.get("tensorrt_version"),
                "gpu": self.sidecar.get("gpu"), "profiles": self.sidecar.get("profiles")}
