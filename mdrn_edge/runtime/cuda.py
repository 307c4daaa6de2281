"""Device buffers, page-locked host buffers and a stream behind one small adapter: cuda-python (NVIDIA's choice in
its TensorRT samples) or pycuda where that is what is installed. Every cuda-python call returns ``(err, value...)``
and is checked. Host buffers are page-locked (pinned): an asynchronous copy from pageable memory is staged through
a driver buffer and does not overlap with compute.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from mdrn_edge.errors import MdrnError, MissingDependencyError, first_line

JETSON_HINT = ("on a Jetson, TensorRT and CUDA come with JetPack 6.1+ (TensorRT 10.3, CUDA 12.6): make the venv with "
               "python3 -m venv --system-site-packages so JetPack's python3-libnvinfer is seen, and pip install "
               "'cuda-python>=12.6,<12.7' (a later cuda-python wants a later CUDA than JetPack's); not the [gpu] extra, "
               "whose wheels are for server GPUs")


def gpu_install_hint(x86: str) -> str:
    """What installs the GPU stack from where the user stands: ``x86`` on a server or desktop, JetPack's own packages
    on an aarch64 device (a Jetson), where PyPI's TensorRT and CUDA wheels do not match the system."""
    import platform

    return JETSON_HINT if platform.machine() in ("aarch64", "arm64") else x86


INSTALL_HINT = "install cuda-python (pip install 'cuda-python>=12,<13') or pycuda"


class CudaError(MdrnError):
    """A CUDA call failed (no GPU, out of memory, driver mismatch)."""


def _import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6.1
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            return None
    return cudart


class CudaPython:
    """cuda-python's runtime API."""

    name = "cuda-python"

    def __init__(self, cudart) -> None:
        self.rt = cudart
        self.stream = self._check(cudart.cudaStreamCreate(), "cudaStreamCreate")

    def _check(self, result: tuple, what: str) -> Any:
        err, *values = result
        if err != self.rt.cudaError_t.cudaSuccess:
            _, name = self.rt.cudaGetErrorName(err)
            raise CudaError(f"CUDA {what} failed: {name.decode() if isinstance(name, bytes) else name}")
        return values[0] if len(values) == 1 else values

    def device(self) -> dict[str, Any]:
        dev = self._check(self.rt.cudaGetDevice(), "cudaGetDevice")
        props = self._check(self.rt.cudaGetDeviceProperties(dev), "cudaGetDeviceProperties")
        name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
        return {"name": name, "compute_capability": f"{props.major}.{props.minor}"}

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self.rt.cudaMalloc(max(nbytes, 1)), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        self._check(self.rt.cudaFree(ptr), "cudaFree")

    def host_alloc(self, nbytes: int) -> np.ndarray:
        """A page-locked host buffer of ``nbytes`` bytes as a uint8 array (freed by :meth:`host_free`)."""
        ptr = int(self._check(self.rt.cudaMallocHost(max(nbytes, 1)), "cudaMallocHost"))
        return np.ctypeslib.as_array((ctypes.c_ubyte * max(nbytes, 1)).from_address(ptr))

    def host_free(self, buffer: np.ndarray) -> None:
        self._check(self.rt.cudaFreeHost(buffer.ctypes.data), "cudaFreeHost")

    def htod(self, ptr: int, host: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, kind, self.stream), "cudaMemcpyAsync")

    def dtoh(self, host: np.ndarray, ptr: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, kind, self.stream), "cudaMemcpyAsync")

    def synchronize(self) -> None:
        self._check(self.rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def close(self) -> None:
        self._check(self.rt.cudaStreamDestroy(self.stream), "cudaStreamDestroy")


class PyCuda:
    """pycuda's driver API on the device's primary context (``pycuda.autoprimaryctx``), the context TensorRT, the
    CUDA runtime and ONNX Runtime use: ``pycuda.autoinit`` would create a new context current on the importing
    thread only, and a runner shared by threads would then run outside it."""

    name = "pycuda"

    def __init__(self) -> None:
        import pycuda.driver as cuda  # ImportError: pycuda is not installed

        try:
            import pycuda.autoprimaryctx  # noqa: F401  (retains the primary context: fails without a driver or GPU)

            self.stream = cuda.Stream()
        except Exception as exc:
            raise CudaError(f"pycuda could not create a CUDA context ({type(exc).__name__}: {first_line(exc)}); check the "
                            "NVIDIA driver and that a GPU is visible") from None
        self.cuda, self._allocs = cuda, {}

    def device(self) -> dict[str, Any]:
        dev = self.cuda.Context.get_device()
        major, minor = dev.compute_capability()
        return {"name": dev.name(), "compute_capability": f"{major}.{minor}"}

    def malloc(self, nbytes: int) -> int:
        alloc = self.cuda.mem_alloc(max(nbytes, 1))
        self._allocs[int(alloc)] = alloc
        return int(alloc)

    def free(self, ptr: int) -> None:
        self._allocs.pop(ptr).free()

    def host_alloc(self, nbytes: int) -> np.ndarray:
        return self.cuda.pagelocked_empty(max(nbytes, 1), np.uint8)

    def host_free(self, buffer: np.ndarray) -> None:
        """pycuda frees page-locked arrays with the array."""

    def htod(self, ptr: int, host: np.ndarray) -> None:
        self.cuda.memcpy_htod_async(ptr, host, self.stream)

    def dtoh(self, host: np.ndarray, ptr: int) -> None:
        self.cuda.memcpy_dtoh_async(host, ptr, self.stream)

    def synchronize(self) -> None:
        self.stream.synchronize()

    @property
    def stream_handle(self) -> int:
        return int(self.stream.handle)

    def close(self) -> None:
        self.stream = None


def cuda_adapter() -> CudaPython | PyCuda:
    """The first CUDA binding that imports; one line saying what to install otherwise."""
    cudart = _import_cudart()
    if cudart is not None:
        return CudaPython(cudart)
    try:
        return PyCuda()
    except ImportError:
        raise MissingDependencyError(f"the TensorRT backend needs CUDA Python bindings; {gpu_install_hint(INSTALL_HINT)}") from None


def device_properties() -> dict[str, Any]:
    """The current GPU's name and compute capability, through an adapter that is closed again (an adapter owns a
    stream: one left open per engine build leaked it)."""
    adapter = cuda_adapter()
    try:
        return adapter.device()
    finally:
        adapter.close()
