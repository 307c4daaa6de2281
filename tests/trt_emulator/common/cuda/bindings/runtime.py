"""The test emulator posing as cuda-python's ``cuda.bindings.runtime`` (host memory stands in for the device)."""

from trt_emulator import (  # noqa: F401
    cudaError_t, cudaFree, cudaFreeHost, cudaGetDevice, cudaGetDeviceProperties, cudaGetErrorName, cudaMalloc,
    cudaMallocHost, cudaMemcpyAsync, cudaMemcpyKind, cudaStreamCreate, cudaStreamDestroy, cudaStreamSynchronize,
)
