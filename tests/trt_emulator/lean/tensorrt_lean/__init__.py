"""The test emulator posing as ``tensorrt_lean``: a runtime without Builder or OnnxParser that deserialises only
version-compatible plans (as TensorRT's lean runtime). Not TensorRT."""

import trt_emulator as _emu
from trt_emulator import (  # noqa: F401
    EMULATOR, DataType, DeviceType, ICudaEngine, IExecutionContext, Logger, TensorIOMode, float16, float32, int8,
)

__version__ = _emu.version()


class Runtime(_emu.Runtime):
    lean = True
