"""The test emulator posing as ``tensorrt`` (builder, parser and runtime): see ``trt_emulator``. Not TensorRT."""

from trt_emulator import *  # noqa: F401,F403
from trt_emulator import version

__version__ = version()
bool = DataType.BOOL  # noqa: A001,F405  (TensorRT's name for the boolean type)
