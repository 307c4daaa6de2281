"""Native TensorRT 10 backend: an engine plus its sidecar, tensor-name I/O, one non-default CUDA stream.

Follows ``shared/notes/TENSORRT.md``: the sidecar is checked and the plan's bytes verified against its SHA-256
before deserialising, every return value is checked, input shapes are validated against the engine's profile
before ``set_input_shape``, every I/O address is set, copies go through page-locked buffers, one lock guards the
execution context, and NaN/Inf outputs are refused (by :class:`~mdrn_edge.runtime.base.Runner`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from mdrn_edge.errors import InputError, MissingDependencyError, ModelFileError, first_line
from mdrn_edge.modelinfo import ModelInfo
from mdrn_edge.runtime.base import InferenceError, Runner
from mdrn_edge.runtime.cuda import CudaError, cuda_adapter, device_properties, gpu_install_hint
from mdrn_edge.runtime.sidecar import REBUILD, check_compatible, read_sidecar, sidecar_path

log = logging.getLogger(__name__)

TRT_HINT = "install TensorRT 10 (pip install 'tensorrt>=10,<11', or the [gpu] extra: pip install '.[gpu]' in the mdrn-edge clone)"


def import_tensorrt(version_compatible: bool = False):
    """The full TensorRT runtime; for version-compatible plans the lean runtime (``tensorrt_lean``) also serves,
    since that is all it can deserialise."""
    modules = ("tensorrt", "tensorrt_lean") if version_compatible else ("tensorrt",)
    for name in modules:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    if not version_compatible and importlib.util.find_spec("tensorrt_lean") is not None:
        raise MissingDependencyError("only TensorRT's lean runtime (tensorrt_lean) is installed, and it runs only "
                                     "engines built with mdrn-export --version-compatible; install the full TensorRT "
                                     "runtime or rebuild the engine with --version-compatible")
    raise MissingDependencyError(f"TensorRT is not installed; {gpu_install_hint(TRT_HINT)}")


def tensorrt_unavailable_reason() -> str | None:
    """None where TensorRT and a CUDA GPU can run an engine here; otherwise why not, in one line."""
    try:
        import_tensorrt()
        device_properties()
    except (MissingDependencyError, CudaError) as exc:
        return str(exc)
    except Exception as exc:  # a driver without a GPU fails in many ways
        return f"no usable CUDA GPU ({type(exc).__name__}: {exc})"
    return None


def verified_plan(path: Path, sidecar: dict[str, Any]) -> bytes:
    """The plan's bytes, once they match the SHA-256 its sidecar records: the bytes checked are the bytes
    deserialised, and a sidecar without the hash is refused (a plan runs native code on the GPU)."""
    expected = sidecar.get("engine_sha256")
    if not expected:
        raise ModelFileError(f"{path}: its sidecar records no engine_sha256, so the plan cannot be verified; {REBUILD}")
    plan = path.read_bytes()
    if hashlib.sha256(plan).hexdigest() != expected:
        raise ModelFileError(f"{path}: does not match the SHA-256 in its sidecar (modified or corrupt); {REBUILD}")
    return plan


class TensorRTRunner(Runner):
    """An engine on the GPU. ``allow_host_code`` lets TensorRT run the lean runtime a version-compatible plan
    embeds (host code from the file: only for plans whose origin you trust); ``lean_runtime`` is the lean runtime
    library of the building TensorRT, for a plan built with ``--exclude-lean-runtime`` run by a later TensorRT."""

    backend = "tensorrt"

    def __init__(self, path: str | Path, profile: int = 0, lean_runtime: str | Path | None = None,
                 allow_host_code: bool = False) -> None:
        super().__init__(path)
        self.profile, self.lean_runtime, self.allow_host_code = profile, lean_runtime, allow_host_code
        self.sidecar: dict[str, Any] = {}
        self.trt = self.cuda = self.engine = self.context = self.runtime = self._base_runtime = None
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity in bytes)
        self._host: dict[str, np.ndarray] = {}  # name -> page-locked staging buffer
        self._lock = threading.Lock()  # an execution context is not thread-safe

    def activate_impl(self) -> None:
        try:
            self._activate()
        except BaseException:
            self.deactivate_impl()  # nothing half-open: buffers freed, stream destroyed
            raise

    def _runtime(self, trt, built: str):
        """The runtime that may deserialise this plan, per TensorRT's version-compatibility rules."""
        runtime = trt.Runtime(self.logger)
        if self.sidecar.get("dla_core") is not None:
            runtime.DLA_core = int(self.sidecar["dla_core"])
        if not self.sidecar.get("version_compatible"):
            return runtime
        if self.sidecar.get("lean_runtime") == "excluded":
            if trt.__version__ == built:
                return runtime
            if not self.lean_runtime:
                raise ModelFileError(f"{self.path}: built by TensorRT {built} without its lean runtime; this is TensorRT "
                                     f"{trt.__version__}: pass --lean-runtime with TensorRT {built}'s libnvinfer_lean "
                                     f"library, or {REBUILD}")
            self._base_runtime = runtime  # the loaded lean runtime lives inside it: keep it alive
            shim = runtime.load_runtime(str(self.lean_runtime))
            if shim is None:
                raise ModelFileError(f"{self.lean_runtime}: TensorRT could not load it as a lean runtime library (see "
                                     f"its log above); give TensorRT {built}'s libnvinfer_lean")
            return shim
        if not self.allow_host_code:
            raise ModelFileError(f"{self.path}: a version-compatible engine runs the lean runtime embedded in the plan "
                                 "(host code from the file); pass --allow-host-code if you trust where it came from, "
                                 "or rebuild it with --exclude-lean-runtime")
        runtime.engine_host_code_allowed = True  # trusted by the caller; the bytes were verified against the sidecar
        return runtime

    def _activate(self) -> None:
        if not self.path.is_file():
            raise ModelFileError(f"{self.path}: no such engine file; build one with mdrn-export --engine")
        self.sidecar = read_sidecar(self.path)
        self.info = ModelInfo.from_dict(self.sidecar.get("model"), str(sidecar_path(self.path)))
        plan = verified_plan(self.path, self.sidecar)
        trt = self.trt = import_tensorrt(bool(self.sidecar.get("version_compatible")))
        self.cuda = cuda_adapter()
        built = str(self.sidecar.get("tensorrt_version"))
        check_compatible(self.sidecar, trt.__version__, self.cuda.device(), self.path)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = self._runtime(trt, built)  # kept: a runtime must outlive the engines it deserialised
        engine = self.engine = self.runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise ModelFileError(f"{self.path}: TensorRT {trt.__version__} could not deserialise it (see its log above); "
                                 f"{REBUILD}")
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
        if self.profile:
            try:  # NVIDIA's binding raises where the C++ API returns false
                selected = self.context.set_optimization_profile_async(self.profile, self.cuda.stream_handle)
            except RuntimeError:
                selected = False
            if not selected:
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

    def _buffer(self, name: str, nbytes: int) -> tuple[int, np.ndarray]:
        """The device buffer and page-locked host buffer of a tensor, grown to ``nbytes`` when needed."""
        ptr, capacity = self._buffers.get(name, (0, 0))
        if capacity < nbytes:
            if ptr:
                self.cuda.free(ptr)
                self.cuda.host_free(self._host.pop(name))
            self._buffers[name] = (ptr, capacity) = (self.cuda.malloc(nbytes), nbytes)
            self._host[name] = self.cuda.host_alloc(nbytes)
        return ptr, self._host[name][:nbytes]

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            ctx = self.context
            if not ctx.set_input_shape(self.input_name, batch.shape):
                raise InputError(f"TensorRT refused input shape {batch.shape} for {self.input_name}")
            out_shape = tuple(ctx.get_tensor_shape(self.output_name))
            if any(d < 0 for d in out_shape):
                raise ModelFileError(f"{self.path}: TensorRT could not infer the output shape for input {batch.shape}")
            out_bytes = int(np.prod(out_shape)) * 4
            (src, src_host), (dst, dst_host) = self._buffer(self.input_name, batch.nbytes), self._buffer(self.output_name, out_bytes)
            for name, ptr in ((self.input_name, src), (self.output_name, dst)):
                if not ctx.set_tensor_address(name, ptr):
                    raise ModelFileError(f"{self.path}: TensorRT refused the address of tensor {name}")
            src_host[:] = batch.reshape(-1).view(np.uint8)
            self.cuda.htod(src, src_host)
            if not ctx.execute_async_v3(self.cuda.stream_handle):
                raise CudaError(f"{self.path}: TensorRT execution failed (see the TensorRT log above)")
            self.cuda.dtoh(dst_host, dst)
            self.cuda.synchronize()
            return dst_host.view(np.float32).reshape(out_shape).copy()

    def deactivate_impl(self) -> None:
        """Release everything even when a release fails (one failing cudaFree must not leak the rest), then say
        what failed first."""
        failed: list[BaseException] = []
        if self.cuda:
            releases = [(self.cuda.free, ptr) for ptr, _ in self._buffers.values()]
            releases += [(self.cuda.host_free, host) for host in self._host.values()]
            for release, what in [*releases, (lambda _: self.cuda.close(), None)]:
                try:
                    release(what)
                except Exception as exc:  # noqa: BLE001  (kept, raised once all is released)
                    failed.append(exc)
        self._buffers.clear()
        self._host.clear()
        self.context = self.engine = None  # in TensorRT's order: context, engine, then the runtimes
        self.runtime = self._base_runtime = self.cuda = None
        if failed:
            raise InferenceError(f"{self.path}: {len(failed)} GPU release(s) failed ({first_line(failed[0])}); the "
                                 "rest was released; if this repeats, the CUDA driver or device is in trouble")

    def device_memory_bytes(self) -> int:
        """The engine's own figure for its activation memory (the TensorRT 10.1+ ``_v2`` API)."""
        return int(self.engine.device_memory_size_v2)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "tensorrt_version": self.sidecar.get("tensorrt_version"),
                "gpu": self.sidecar.get("gpu"), "profiles": self.sidecar.get("profiles")}
