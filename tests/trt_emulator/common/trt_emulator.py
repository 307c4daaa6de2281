"""A strict TensorRT 10 emulator for the tests: NOT TensorRT, never reported as TensorRT verification.

It offers the TensorRT 10 Python API surface mdrn-edge uses (names as in NVIDIA's bindings, checked against the
real lean bindings by ``tests/test_trt_emulator.py``) and enforces the contract the real library enforces, or
fails louder than it: tensor names, optimisation profiles and their min/opt/max rules, ``set_input_shape``
bounds, FP32 I/O dtypes, every I/O address set before ``execute_async_v3`` on a non-default stream, results
visible only after the stream is synchronised, version rules for plans (exact version, or version-compatible
with the lean runtime embedded / excluded), host code only where allowed, DLA cores, INT8 only from Q/DQ graphs.
The builder records its flags and per-layer precision calls in the plan, and the plan computes with ONNX Runtime
on the CPU: FP16 engines run an FP16 conversion of the graph with only the layers pinned to FP32 (under
OBEY_PRECISION_CONSTRAINTS) kept in FP32, INT8 engines run the Q/DQ graph.

Configured by environment variables so that subprocesses (mdrn-export, mdrn-infer, mdrn-bench) see the same
device: ``MDRN_TRT_EMU_VERSION`` (10.3.0), ``MDRN_TRT_EMU_CC`` (8.7), ``MDRN_TRT_EMU_DLA_CORES`` (0) and
``MDRN_TRT_EMU_LOG`` (a JSON-lines file of checked events: pageable copies, builds, executions).
"""

from __future__ import annotations

import ctypes
import enum
import json
import os
import re
import struct
import sys
import threading
from pathlib import Path

import numpy as np

EMULATOR = True
PLAN_MAGIC = b"MDRNEMU1"
GPU_NAME = "TensorRT emulator (ONNX Runtime CPU; not a GPU)"


def version() -> str:
    return os.environ.get("MDRN_TRT_EMU_VERSION", "10.3.0")


def compute_capability() -> str:
    return os.environ.get("MDRN_TRT_EMU_CC", "8.7")


def record(event: str, **fields) -> None:
    path = os.environ.get("MDRN_TRT_EMU_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"event": event, **fields}) + "\n")


def _vtuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split(".")[:3])


class ContractError(RuntimeError):
    """The code broke TensorRT's API contract in a way the real library would crash or misbehave on."""


# --- enums and data types ---------------------------------------------------------------------------------------

class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    INT64 = 10


float32, float16, int8, int32, bool_, int64 = DataType.FLOAT, DataType.HALF, DataType.INT8, DataType.INT32, DataType.BOOL, DataType.INT64
ONNX_TYPES = {1: DataType.FLOAT, 10: DataType.HALF, 3: DataType.INT8, 6: DataType.INT32, 7: DataType.INT64, 9: DataType.BOOL}


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class _Flag(enum.IntEnum):  # every flag of TensorRT 10; BuilderFlag below is what the emulated version has
    FP16 = 0
    INT8 = 1
    DEBUG = 2
    GPU_FALLBACK = 3
    REFIT = 5
    DISABLE_TIMING_CACHE = 6
    TF32 = 7
    SPARSE_WEIGHTS = 8
    SAFETY_SCOPE = 9
    OBEY_PRECISION_CONSTRAINTS = 10
    PREFER_PRECISION_CONSTRAINTS = 11
    DIRECT_IO = 12
    REJECT_EMPTY_ALGORITHMS = 13
    VERSION_COMPATIBLE = 14
    EXCLUDE_LEAN_RUNTIME = 15
    FP8 = 16


# TensorRT 11 is strongly typed only: its BuilderFlag has no FP16, INT8 or precision-constraint flags
_GONE_IN_11 = {"FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"}
BuilderFlag = enum.IntEnum("BuilderFlag", {f.name: f.value for f in _Flag
                                           if int(version().split(".")[0]) < 11 or f.name not in _GONE_IN_11})


class NetworkDefinitionCreationFlag(enum.IntEnum):
    STRONGLY_TYPED = 1


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0
    DLA_MANAGED_SRAM = 1
    DLA_LOCAL_DRAM = 2
    DLA_GLOBAL_DRAM = 3
    TACTIC_DRAM = 4


class DeviceType(enum.IntEnum):
    GPU = 0
    DLA = 1


class _Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class Logger:
    Severity = _Severity
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = (_Severity.INTERNAL_ERROR, _Severity.ERROR, _Severity.WARNING,
                                                     _Severity.INFO, _Severity.VERBOSE)

    def __init__(self, min_severity: _Severity = _Severity.WARNING) -> None:
        self.min_severity = min_severity

    def log(self, severity: _Severity, msg: str) -> None:
        if severity <= self.min_severity:
            print(f"[TRT-EMULATOR] [{severity.name[0]}] {msg}", file=sys.stderr)


def _need_logger(logger) -> None:
    if not isinstance(logger, Logger):
        raise TypeError("a tensorrt.Logger is required")


# --- network and parser -----------------------------------------------------------------------------------------

class ITensor:
    def __init__(self, name: str, dtype: DataType, shape: tuple[int, ...] = ()) -> None:
        self.name, self.dtype, self.shape = name, dtype, shape


class LayerType(enum.IntEnum):  # TensorRT's names for the layers the ONNX parser makes of our graphs
    CONVOLUTION = 0
    ACTIVATION = 2
    POOLING = 3
    CONCATENATION = 8
    ELEMENTWISE = 9
    UNARY = 11
    SHUFFLE = 13
    REDUCE = 14
    CONSTANT = 19
    IDENTITY = 20
    CAST = 42
    QUANTIZE = 33
    DEQUANTIZE = 34


# the ONNX operators of our graphs and the TensorRT layer each becomes (an operator missing here fails to parse,
# as one TensorRT has no importer for would)
ONNX_LAYERS = {
    "Conv": LayerType.CONVOLUTION, "Relu": LayerType.ACTIVATION, "LeakyRelu": LayerType.ACTIVATION,
    "Sigmoid": LayerType.ACTIVATION, "Clip": LayerType.ACTIVATION, "PRelu": LayerType.ACTIVATION,
    "Add": LayerType.ELEMENTWISE, "Sub": LayerType.ELEMENTWISE, "Mul": LayerType.ELEMENTWISE,
    "Div": LayerType.ELEMENTWISE, "Pow": LayerType.ELEMENTWISE, "Sqrt": LayerType.UNARY, "Erf": LayerType.UNARY,
    "Exp": LayerType.UNARY, "ReduceMean": LayerType.REDUCE, "ReduceSum": LayerType.REDUCE,
    "Concat": LayerType.CONCATENATION, "DepthToSpace": LayerType.SHUFFLE, "Reshape": LayerType.SHUFFLE,
    "Transpose": LayerType.SHUFFLE, "MaxPool": LayerType.POOLING, "AveragePool": LayerType.POOLING,
    "BatchNormalization": LayerType.ELEMENTWISE, "Cast": LayerType.CAST, "Identity": LayerType.IDENTITY,
    "QuantizeLinear": LayerType.QUANTIZE, "DequantizeLinear": LayerType.DEQUANTIZE,
}
ELEMENTWISE_OPS = {op for op, kind in ONNX_LAYERS.items() if kind == LayerType.ELEMENTWISE}


class ILayer:
    def __init__(self, name: str, kind: LayerType, inputs: list[ITensor], outputs: list[ITensor], node: str | None,
                 op: str | None = None) -> None:
        self.name, self.type, self._inputs, self._outputs = name, kind, inputs, outputs
        self._node, self._op = node, op  # the ONNX node it was made for (None: a constant of weights)
        self._precision: DataType | None = None
        self._output_types: dict[int, DataType] = {}

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    def get_input(self, index: int) -> ITensor:
        return self._inputs[index]

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_output(self, index: int) -> ITensor:
        return self._outputs[index]

    @property
    def precision(self) -> DataType:
        return self._precision if self._precision is not None else float32

    @precision.setter
    def precision(self, dtype: DataType) -> None:
        if not isinstance(dtype, DataType):
            raise TypeError("layer.precision takes a tensorrt.DataType")
        self._precision = dtype

    def set_output_type(self, index: int, dtype: DataType) -> None:
        if not 0 <= index < self.num_outputs:
            raise IndexError(f"layer {self.name} has no output {index}")
        self._output_types[index] = dtype


class INetworkDefinition:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.onnx_bytes: bytes | None = None
        self.layers: list[ILayer] = []
        self.inputs: list[ITensor] = []
        self.outputs: list[ITensor] = []
        self.has_qdq = False

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_layer(self, index: int) -> ILayer:
        return self.layers[index]

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, index: int) -> ITensor:
        return self.inputs[index]

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_output(self, index: int) -> ITensor:
        return self.outputs[index]


class _ParserError:
    def __init__(self, desc: str, node: int = -1, node_name: str = "") -> None:
        self._desc, self._node, self._name = desc, node, node_name

    def desc(self) -> str:
        return self._desc

    def node(self) -> int:
        return self._node

    def node_name(self) -> str:
        return self._name

    def code(self) -> int:
        return 1


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: Logger) -> None:
        _need_logger(logger)
        self.network, self.errors = network, []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> _ParserError:
        return self.errors[index]

    def parse_from_file(self, path: str) -> bool:
        """Layers as onnx-tensorrt 10.x makes them: none for a Constant node (its value becomes weights); a constant
        layer, named after the weights, where an operator takes weights as a tensor (Conv's own weights and bias are
        folded into it); an ``ONNXTRT_Broadcast`` shuffle for an element-wise input of lower rank; then the node's
        layer under its name. Names are unique as ``ImporterContext::generateUniqueName`` makes them: a taken name
        gets ``_N``, N from one counter for the whole parse."""
        import onnx

        if not isinstance(path, str):
            raise TypeError("parse_from_file takes a str path")
        try:
            model = onnx.shape_inference.infer_shapes(onnx.load(path))
        except Exception as exc:
            self.errors.append(_ParserError(f"cannot read ONNX: {exc}"))
            return False
        graph = model.graph
        values = {v.name: v.type.tensor_type for v in [*graph.value_info, *graph.output, *graph.input]}
        weights = {init.name: (init.data_type, len(init.dims)) for init in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant":
                value = onnx.helper.get_attribute_value(node.attribute[0])
                weights[node.output[0]] = (getattr(value, "data_type", 1), len(getattr(value, "dims", ())))

        def rank(name: str) -> int:
            if name in weights:
                return weights[name][1]
            return len(values[name].shape.dim) if name in values else 0

        def dtype(name: str) -> DataType:
            onnx_type = weights[name][0] if name in weights else values[name].elem_type if name in values else 1
            return ONNX_TYPES.get(onnx_type, float32)

        net, taken, counter, constants = self.network, set(), [0], {}
        tensors: dict[str, ITensor] = {}

        def unique(base: str) -> str:
            name = base
            while name in taken:
                name = f"{base}_{counter[0]}"
                counter[0] += 1
            taken.add(name)
            return name

        def add(base: str, kind: LayerType, inputs: list[ITensor], outputs: list[ITensor], node: str | None,
                op: str | None = None) -> ILayer:
            layer = ILayer(unique(base), kind, inputs, outputs, node, op)
            net.layers.append(layer)
            return layer

        for v in graph.input:
            if v.name not in weights:
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim)
                tensors[v.name] = ITensor(v.name, ONNX_TYPES[v.type.tensor_type.elem_type], dims)
                net.inputs.append(tensors[v.name])
        for i, node in enumerate(graph.node):
            if not node.name:
                self.errors.append(_ParserError("nodes need names", i))
                return False
            if node.op_type == "Constant":
                continue
            if node.op_type not in ONNX_LAYERS:
                self.errors.append(_ParserError(f"No importer registered for op: {node.op_type}", i, node.name))
                return False
            inputs = []
            out_rank = max((rank(n) for n in node.input if n), default=0)
            for k, name in enumerate(node.input):
                if not name or (node.op_type == "Conv" and k > 0 and name in weights):
                    continue  # absent optional input, or weights folded into the convolution
                if name in weights:
                    if name not in constants:
                        out = ITensor(name, dtype(name))
                        constants[name] = add(name, LayerType.CONSTANT, [], [out], None)
                    tensor = constants[name].get_output(0)
                else:
                    tensor = tensors[name]
                if node.op_type in ELEMENTWISE_OPS and rank(name) < out_rank:
                    shuffled = ITensor(f"{name}_broadcast", tensor.dtype)
                    add("ONNXTRT_Broadcast", LayerType.SHUFFLE, [tensor], [shuffled], node.name)
                    tensor = shuffled
                inputs.append(tensor)
            outs = [ITensor(o, dtype(o)) for o in node.output]
            tensors.update({t.name: t for t in outs})
            add(node.name, ONNX_LAYERS[node.op_type], inputs, outs, node.name, node.op_type)
            net.has_qdq |= node.op_type in ("QuantizeLinear", "DequantizeLinear")
        for v in graph.output:
            net.outputs.append(ITensor(v.name, ONNX_TYPES[v.type.tensor_type.elem_type]))
        net.onnx_bytes = model.SerializeToString()
        return True


# --- builder ------------------------------------------------------------------------------------------------------

class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}

    def set_shape(self, input: str, min, opt, max) -> None:  # noqa: A002  (TensorRT's parameter names)
        lo, op, hi = (tuple(int(v) for v in s) for s in (min, opt, max))
        if not len(lo) == len(op) == len(hi):
            raise ValueError("min, opt and max must have the same rank")
        if not all(1 <= a <= b <= c for a, b, c in zip(lo, op, hi)):
            raise ValueError(f"need 1 <= min <= opt <= max, got {lo} {op} {hi}")
        self.shapes[input] = (lo, op, hi)

    def get_shape(self, input: str):  # noqa: A002
        return list(self.shapes.get(input, []))

    def __bool__(self) -> bool:
        return bool(self.shapes)


class IHostMemory(bytes):
    @property
    def nbytes(self) -> int:
        return len(self)


class ITimingCache:
    def __init__(self, entries: dict[str, str], cc: str, built_by: str | None = None) -> None:
        self.entries, self.cc, self.version = dict(entries), cc, built_by or version()

    def serialize(self) -> IHostMemory:
        return IHostMemory(b"EMUTC1" + json.dumps({"cc": self.cc, "version": self.version,
                                                   "entries": self.entries}).encode())

    def combine(self, other: "ITimingCache", ignore_mismatch: bool) -> bool:
        if other.cc != self.cc and not ignore_mismatch:
            return False
        self.entries.update(other.entries)
        return True

    def reset(self) -> bool:
        self.entries.clear()
        return True


# the ONNX operators whose TensorRT layers DLA runs (convolution, activation, element-wise, concatenation, pooling,
# scale); depth-to-space (the upsampler's shuffle) and reductions (CCA's statistics) fall back to the GPU
DLA_LAYER_TYPES = {"Conv", "Relu", "LeakyRelu", "Sigmoid", "Add", "Mul", "Sub", "Concat", "MaxPool", "AveragePool",
                   "BatchNormalization", "Clip", "PRelu"}


class IBuilderConfig:
    def __init__(self, logger: "Logger | None" = None) -> None:
        self.logger = logger
        self.flags = {_Flag.TF32}  # TensorRT enables TF32 by default
        self.pools: dict[MemoryPoolType, int] = {}
        self.profiles: list[IOptimizationProfile] = []
        self.timing_cache: ITimingCache | None = None
        self._opt_level = 3
        self.default_device_type = DeviceType.GPU
        self.DLA_core = -1

    def set_flag(self, flag: BuilderFlag) -> None:
        if not isinstance(flag, BuilderFlag):
            raise TypeError("set_flag takes a tensorrt.BuilderFlag")
        self.flags.add(flag)

    def clear_flag(self, flag: BuilderFlag) -> None:
        self.flags.discard(flag)

    def get_flag(self, flag: BuilderFlag) -> bool:
        return flag in self.flags

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        if not isinstance(pool, MemoryPoolType) or not isinstance(size, int) or size < 0:
            raise TypeError("set_memory_pool_limit(MemoryPoolType, int >= 0)")
        self.pools[pool] = size

    @property
    def builder_optimization_level(self) -> int:
        return self._opt_level

    @builder_optimization_level.setter
    def builder_optimization_level(self, level: int) -> None:
        if not 0 <= int(level) <= 5:
            raise ValueError("builder_optimization_level is 0..5")
        self._opt_level = int(level)

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        if not profile:
            return -1
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, serialized: bytes) -> ITimingCache:
        """As TensorRT: a cache another TensorRT version wrote cannot be read; TensorRT logs that and hands back an
        empty cache, never None (NVIDIA/TensorRT#3566: 'The timing cache will not be used!')."""
        data = bytes(serialized)
        if not data:
            return ITimingCache({}, compute_capability())
        if not data.startswith(b"EMUTC1"):
            raise ContractError("create_timing_cache: not a serialized timing cache")
        body = json.loads(data[6:])
        if body.get("version") != version():
            if self.logger:
                self.logger.log(Logger.ERROR, "Serialization assertion failed: timing cache of TensorRT "
                                              f"{body.get('version')}. The timing cache will not be used!")
            return ITimingCache({}, compute_capability())
        return ITimingCache(body["entries"], body["cc"], body["version"])

    def can_run_on_DLA(self, layer: ILayer) -> bool:  # noqa: N802  (TensorRT's name)
        """As TensorRT's DLA restrictions: layers of the kinds DLA runs, and only with one static shape per input
        (a dynamic profile puts no layer on the DLA, NVIDIA/TensorRT#2318)."""
        static = bool(self.profiles) and all(len({tuple(s) for s in shapes}) == 1
                                              for p in self.profiles for shapes in p.shapes.values())
        return static and layer._op in DLA_LAYER_TYPES

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        if cache.cc != compute_capability() and not ignore_mismatch:
            return False
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self.timing_cache


class Builder:
    def __init__(self, logger: Logger) -> None:
        _need_logger(logger)
        self.logger = logger

    @property
    def num_DLA_cores(self) -> int:  # noqa: N802  (TensorRT's name)
        return int(os.environ.get("MDRN_TRT_EMU_DLA_CORES", "0"))

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        if not isinstance(flags, int) or flags & ~(1 << NetworkDefinitionCreationFlag.STRONGLY_TYPED):
            raise ContractError(f"create_network: unknown flags {flags} (EXPLICIT_BATCH is deprecated in 10.x: pass 0)")
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig(self.logger)

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def _error(self, msg: str) -> None:
        self.logger.log(Logger.ERROR, msg)
        return None

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory | None:
        flags = config.flags
        strongly_typed = bool(network.flags & (1 << NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        if network.onnx_bytes is None:
            return self._error("network is empty (parse an ONNX model first)")
        dynamic = [t for t in network.inputs if any(d < 0 for d in t.shape)]
        if dynamic and not config.profiles:
            return self._error("Network has dynamic or shape inputs, but no optimization profile has been defined.")
        for profile in config.profiles:
            for t in dynamic:
                if t.name not in profile.shapes:
                    return self._error(f"optimization profile is missing values for input tensor {t.name}")
                for dims in profile.shapes[t.name]:
                    if len(dims) != len(t.shape) or any(s >= 0 and s != d for s, d in zip(t.shape, dims)):
                        return self._error(f"profile shape {dims} does not match input {t.name} {t.shape}")
        if strongly_typed and flags & {_Flag.FP16, _Flag.INT8}:
            return self._error("precision flags are not allowed with a strongly typed network")
        if network.has_qdq and _Flag.INT8 not in flags and not strongly_typed:
            return self._error("the network has Q/DQ layers: set BuilderFlag.INT8 to build it")
        if _Flag.INT8 in flags and not network.has_qdq:
            return self._error("INT8 without Q/DQ layers needs a calibrator (implicit quantisation, deprecated): "
                               "export an explicitly quantised ONNX")
        if _Flag.EXCLUDE_LEAN_RUNTIME in flags and _Flag.VERSION_COMPATIBLE not in flags:
            return self._error("EXCLUDE_LEAN_RUNTIME needs VERSION_COMPATIBLE")
        dla = None
        if config.default_device_type == DeviceType.DLA:
            if not 0 <= config.DLA_core < self.num_DLA_cores:
                return self._error(f"DLA core {config.DLA_core} does not exist ({self.num_DLA_cores} DLA cores)")
            if not flags & {_Flag.FP16, _Flag.INT8}:
                return self._error("DLA runs FP16 or INT8 only")
            if _Flag.GPU_FALLBACK not in flags:
                return self._error("layers DLA cannot run (depth-to-space, reductions) need BuilderFlag.GPU_FALLBACK")
            dla = config.DLA_core
        obey = _Flag.OBEY_PRECISION_CONSTRAINTS in flags
        pinned = [layer.name for layer in network.layers if layer._precision == float32]
        other = [layer.name for layer in network.layers if layer._precision not in (None, float32)]
        if other:
            return self._error(f"layers {other[:3]} have a precision the emulator does not model (FP32 only)")
        onnx_bytes = network.onnx_bytes
        if _Flag.FP16 in flags and not strongly_typed:
            onnx_bytes = _fp16_arithmetic(network, set(pinned) if obey else set())
        if config.timing_cache is not None:  # one entry per (precision flags, network) tuned
            key = "+".join(sorted(f.name for f in flags & {_Flag.FP16, _Flag.INT8})) or "FP32"
            config.timing_cache.entries[f"{key}:{len(network.layers)}"] = compute_capability()
        profiles = [{k: [list(s) for s in v] for k, v in p.shapes.items()} for p in config.profiles]
        header = {
            "version": version(), "cc": compute_capability(),
            "version_compatible": _Flag.VERSION_COMPATIBLE in flags,
            "lean_runtime": ("excluded" if _Flag.EXCLUDE_LEAN_RUNTIME in flags else "embedded")
            if _Flag.VERSION_COMPATIBLE in flags else None,
            "flags": sorted(f.name for f in flags), "fp32_layers": pinned if obey else [],
            "pinned_without_obey": [] if obey else pinned, "profiles": profiles, "dla_core": dla,
            "workspace": config.pools.get(MemoryPoolType.WORKSPACE), "opt_level": config.builder_optimization_level,
            "inputs": [t.name for t in network.inputs], "outputs": [t.name for t in network.outputs],
        }
        record("build", layers=[layer.name for layer in network.layers],
               **{k: header[k] for k in ("flags", "fp32_layers", "pinned_without_obey", "dla_core", "lean_runtime")})
        head = json.dumps(header).encode()
        return IHostMemory(PLAN_MAGIC + struct.pack("<Q", len(head)) + head + onnx_bytes)


def _fp16_arithmetic(network: INetworkDefinition, fp32_layers: set[str]) -> bytes:
    """The network's ONNX graph computing as a weakly typed FP16 plan does on the GPU: every layer not pinned to
    FP32 takes FP16 inputs and writes an FP16 output (values past 65504 become inf, as on the GPU; ONNX Runtime's
    CPU kernels would upcast and hide that), weights reach it in FP16, and a pinned layer's weights stay FP32 only
    where every layer carrying them (their constant layer, a broadcast) is pinned too, and its output is FP32 where
    its output type is (TensorRT picks the type of one left unset: the emulator takes FP16). Q/DQ layers keep
    their own arithmetic (an INT8 plan's quantised layers); reductions accumulate in FP32 and write FP16."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load_from_string(network.onnx_bytes)
    graph = model.graph
    layers = network.layers
    producer = {id(t): layer for layer in layers for t in layer._outputs}
    fp32 = lambda layer: layer.name in fp32_layers  # noqa: E731
    half_nodes = {layer._node for layer in layers if layer._op and layer._op not in ("QuantizeLinear", "DequantizeLinear")
                  and not fp32(layer)}
    main = {layer._node: layer for layer in layers if layer._op}
    rounded_outputs = set()
    for node in graph.node:
        layer = main.get(node.name)
        if layer is None or not (node.name in half_nodes or fp32(layer)):
            continue
        for k, t in enumerate(layer._outputs):  # a pinned layer writes FP32 only where its output type says so
            if not (fp32(layer) and layer._output_types.get(k) == float32) and t.dtype == float32:
                rounded_outputs.add(t.name)

    def weights_behind(t: ITensor) -> tuple[str | None, list[ILayer]]:
        """The weights an input carries, if any, and the layers carrying them (constant, broadcast)."""
        chain: list[ILayer] = []
        while id(t) in producer and producer[id(t)]._op is None:
            chain.append(producer[id(t)])
            if not chain[-1]._inputs:
                return t.name, chain
            t = chain[-1]._inputs[0]
        return None, chain

    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    rounded_inputs: dict[str, set[str]] = {}  # node -> its inputs that arrive in FP16
    for node in graph.node:
        layer = main.get(node.name)
        if layer is None:
            continue
        if node.name in half_nodes:  # an INT8 layer (its inputs dequantised) takes them as they are
            rounded_inputs[node.name] = set(node.input) - dequantized
        elif fp32(layer):  # weights reach it in FP16 where a layer carrying them is not pinned
            for t in layer._inputs:
                name, chain = weights_behind(t)
                if name and not all(fp32(c) for c in chain):
                    rounded_inputs.setdefault(node.name, set()).add(name)
    floats = {v.name for v in [*graph.value_info, *graph.input, *graph.output]
              if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    floats |= {i.name for i in graph.initializer if i.data_type == TensorProto.FLOAT}
    floats |= {n.output[0] for n in graph.node if n.op_type == "Constant"
               and helper.get_attribute_value(n.attribute[0]).data_type == TensorProto.FLOAT}
    nodes, made = [], set()

    def round_half(src: str, dst: str) -> None:
        nodes.append(helper.make_node("Cast", [src], [f"{dst}__fp16"], to=TensorProto.FLOAT16, name=f"{dst}__to_fp16"))
        nodes.append(helper.make_node("Cast", [f"{dst}__fp16"], [dst], to=TensorProto.FLOAT, name=f"{dst}__from_fp16"))

    for node in graph.node:
        for k, name in enumerate(node.input):
            if name in rounded_inputs.get(node.name, ()) and name in floats and name not in rounded_outputs:
                if name not in made:
                    round_half(name, f"{name}__in_fp16")
                    made.add(name)
                node.input[k] = f"{name}__in_fp16"
        nodes.append(node)
        for k, name in enumerate(node.output):
            if name in rounded_outputs:
                node.output[k] = f"{name}__fp32"
                round_half(f"{name}__fp32", name)
    del graph.node[:]
    graph.node.extend(nodes)
    return model.SerializeToString()


# --- runtime ------------------------------------------------------------------------------------------------------

class Runtime:
    lean = False  # tensorrt_lean's Runtime sets this

    def __init__(self, logger: Logger, _version: str | None = None) -> None:
        _need_logger(logger)
        self.logger, self.version = logger, _version or version()
        self.engine_host_code_allowed = False
        self.DLA_core = -1
        self._loaded_from: str | None = None

    @property
    def num_DLA_cores(self) -> int:  # noqa: N802
        return int(os.environ.get("MDRN_TRT_EMU_DLA_CORES", "0"))

    def _error(self, msg: str) -> None:
        self.logger.log(Logger.ERROR, f"IRuntime::deserializeCudaEngine: {msg}")
        return None

    def load_runtime(self, path: str) -> "Runtime | None":
        """A lean runtime library of a given version, as ``libnvinfer_lean.so.*``; the emulator's test file says
        its version in its text."""
        if not isinstance(path, str):
            raise TypeError("load_runtime takes a str path")
        try:
            text = Path(path).read_text()
        except OSError as exc:
            self.logger.log(Logger.ERROR, f"cannot load runtime {path}: {exc}")
            return None
        m = re.match(r"TensorRT lean runtime (\d+\.\d+\.\d+)", text)
        if not m or not Path(path).name.startswith("libnvinfer_lean"):
            self.logger.log(Logger.ERROR, f"{path} is not a TensorRT lean runtime library")
            return None
        shim = type(self)(self.logger, m.group(1))
        shim._loaded_from = path
        return shim

    def deserialize_cuda_engine(self, serialized_engine) -> "ICudaEngine | None":
        if isinstance(serialized_engine, (str, Path)):
            raise TypeError("deserialize_cuda_engine takes the plan's bytes, not a path")
        data = bytes(serialized_engine)
        if not data.startswith(PLAN_MAGIC):
            return self._error("Error Code 1: Serialization (Serialization assertion magicTagRead == kMAGIC_TAG failed.)")
        (n,) = struct.unpack("<Q", data[8:16])
        header = json.loads(data[16 : 16 + n])
        onnx_bytes = data[16 + n :]
        if header["cc"] != compute_capability():
            return self._error("the plan file is generated on an incompatible device")
        if header["version_compatible"]:
            if _vtuple(self.version) < _vtuple(header["version"]):
                return self._error(f"plan built by TensorRT {header['version']}, newer than this runtime {self.version}")
            if header["lean_runtime"] == "embedded" and not self.engine_host_code_allowed:
                return self._error("the plan contains host code (its lean runtime); set engine_host_code_allowed "
                                   "for trusted plans")
            if header["lean_runtime"] == "excluded" and self.version != header["version"]:
                return self._error(f"the plan excludes its lean runtime: load the lean runtime of TensorRT "
                                   f"{header['version']} with load_runtime()")
        else:
            if self.lean:
                return self._error("the lean runtime deserializes only version-compatible plans")
            if self.version != header["version"]:
                return self._error("Serialization assertion stdVersionRead == serializationVersion failed. Version "
                                   f"tag does not match ({header['version']} vs {self.version})")
        if header["dla_core"] is not None and not 0 <= self.DLA_core < self.num_DLA_cores:
            return self._error(f"the engine runs on DLA: set runtime.DLA_core (0..{self.num_DLA_cores - 1}) first")
        return ICudaEngine(header, onnx_bytes)


class ICudaEngine:
    def __init__(self, header: dict, onnx_bytes: bytes) -> None:
        import onnxruntime as ort

        self.header = header
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
        self._io = {t.name: (TensorIOMode.INPUT, t) for t in self.session.get_inputs()}
        self._io.update({t.name: (TensorIOMode.OUTPUT, t) for t in self.session.get_outputs()})
        for name, (_, t) in self._io.items():
            if t.type != "tensor(float)":
                raise ContractError(f"emulated engines take FP32 I/O; {name} is {t.type}")

    @property
    def num_io_tensors(self) -> int:
        return len(self._io)

    def get_tensor_name(self, index: int) -> str:
        return list(self._io)[index]

    def _tensor(self, name: str):
        if name not in self._io:
            raise ContractError(f"no tensor named {name!r} (names: {list(self._io)})")
        return self._io[name]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self._tensor(name)[0]

    def get_tensor_dtype(self, name: str) -> DataType:
        self._tensor(name)
        return float32

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else -1 for d in self._tensor(name)[1].shape)

    @property
    def num_optimization_profiles(self) -> int:
        return len(self.header["profiles"])

    def get_tensor_profile_shape(self, name: str, profile_index: int):
        if self.get_tensor_mode(name) != TensorIOMode.INPUT:
            raise ContractError(f"{name} is not an input")
        if not 0 <= profile_index < self.num_optimization_profiles:
            raise ContractError(f"no optimisation profile {profile_index}")
        return [tuple(s) for s in self.header["profiles"][profile_index][name]]

    @property
    def device_memory_size_v2(self) -> int:
        _, _, hi = self.header["profiles"][0][self.header["inputs"][0]]
        return int(np.prod(hi)) * 4 * 64  # a plausible activation size for the largest input

    def create_execution_context(self) -> "IExecutionContext":
        return IExecutionContext(self)


class IExecutionContext:
    def __init__(self, engine: ICudaEngine) -> None:
        self.engine = engine
        self.active_optimization_profile = 0
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._addresses: dict[str, int] = {}
        self._busy = threading.Lock()
        self._owner: int | None = None  # the thread that last set state; another thread's execute is a race

    def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
        if not 0 <= profile_index < self.engine.num_optimization_profiles:
            raise RuntimeError("Error in set optimization profile async.")  # as NVIDIA's binding: raises, never False
        _cuda().stream(stream_handle)
        self.active_optimization_profile = profile_index
        return True

    def set_input_shape(self, name: str, shape) -> bool:
        if self.engine.get_tensor_mode(name) != TensorIOMode.INPUT:
            raise ContractError(f"set_input_shape on {name}, which is not an input")
        shape = tuple(int(s) for s in shape)
        lo, _, hi = self.engine.get_tensor_profile_shape(name, self.active_optimization_profile)
        if len(shape) != len(lo) or any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
            print(f"[TRT-EMULATOR] [E] IExecutionContext::setInputShape: Error Code 3: API Usage Error (Parameter "
                  f"check failed, condition: {shape} within profile {lo}..{hi})", file=sys.stderr)
            return False
        self._shapes[name] = shape
        self._owner = threading.get_ident()
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        mode = self.engine.get_tensor_mode(name)
        if mode == TensorIOMode.INPUT:
            return self._shapes.get(name, self.engine.get_tensor_shape(name))
        inp = self.engine.header["inputs"][0]
        if inp not in self._shapes:
            return self.engine.get_tensor_shape(name)
        n, c, h, w = self._shapes[inp]
        probe = self.engine.session.run(None, {inp: np.zeros((1, c, 4, 4), np.float32)})[0]
        s = probe.shape[2] // 4
        return (n, probe.shape[1], h * s, w * s)

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self.engine._tensor(name)
        if not isinstance(memory, int) or memory == 0:
            return False
        self._addresses[name] = memory
        self._owner = threading.get_ident()
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        if not self._busy.acquire(blocking=False):
            raise ContractError("execute_async_v3 on one execution context from two threads at once")
        try:
            if self._owner != threading.get_ident():
                raise ContractError("another thread changed this execution context's shapes or addresses before "
                                    "execute_async_v3: a context is not thread-safe")
            cuda = _cuda()
            stream = cuda.stream(stream_handle)
            io = self.engine._io
            for name in io:
                if name not in self._addresses:
                    print(f"[TRT-EMULATOR] [E] Address is not set for input/output tensor {name}", file=sys.stderr)
                    return False
            inp = self.engine.header["inputs"][0]
            if inp not in self._shapes:
                print("[TRT-EMULATOR] [E] input shape not set (set_input_shape before execute_async_v3)", file=sys.stderr)
                return False
            in_shape = self._shapes[inp]
            out_name = self.engine.header["outputs"][0]
            out_shape = self.get_tensor_shape(out_name)
            src = cuda.device_view(self._addresses[inp], int(np.prod(in_shape)) * 4)
            dst = cuda.device_view(self._addresses[out_name], int(np.prod(out_shape)) * 4)
            session = self.engine.session

            def run() -> None:
                x = src.view(np.float32).reshape(in_shape).copy()
                y = session.run(None, {inp: x})[0]
                dst.view(np.float32)[:] = y.reshape(-1)
                record("execute", shape=list(in_shape))

            stream.queue.append(run)
            return True
        finally:
            self._busy.release()


# --- CUDA runtime (cuda-python's cudart surface), host memory standing in for the device --------------------------

class cudaError_t(enum.IntEnum):  # noqa: N801  (cuda-python's names)
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInvalidResourceHandle = 400


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class _Stream:
    def __init__(self) -> None:
        self.queue: list = []

    def __int__(self) -> int:
        return id(self)


class _Props:
    def __init__(self) -> None:
        self.name = GPU_NAME.encode()
        self.major, self.minor = (int(v) for v in compute_capability().split("."))


class _Cuda:
    """The emulated device: allocations (device and pinned host) and streams, with the checks."""

    def __init__(self) -> None:
        self.device: dict[int, np.ndarray] = {}
        self.pinned: dict[int, np.ndarray] = {}
        self.streams: dict[int, _Stream] = {}

    def stream(self, handle: int) -> _Stream:
        if handle == 0:
            raise ContractError("the default stream (0): TensorRT 10 wants a stream created with cudaStreamCreate")
        if handle not in self.streams:
            raise ContractError(f"stream {handle:#x} does not exist (destroyed, or never created)")
        return self.streams[handle]

    @staticmethod
    def _find(table: dict[int, np.ndarray], ptr: int, nbytes: int) -> np.ndarray | None:
        for base, arr in table.items():
            if base <= ptr and ptr + nbytes <= base + arr.nbytes:
                return arr[ptr - base : ptr - base + nbytes]
        return None

    def device_view(self, ptr: int, nbytes: int) -> np.ndarray:
        view = self._find(self.device, ptr, nbytes)
        if view is None:
            raise ContractError(f"{nbytes} bytes at {ptr:#x} are not inside one device allocation (too small, freed, "
                                "or a host pointer)")
        return view

    def host_view(self, ptr: int, nbytes: int) -> np.ndarray:
        view = self._find(self.pinned, ptr, nbytes)
        if view is None:
            record("pageable_copy", nbytes=nbytes)
            view = np.ctypeslib.as_array((ctypes.c_ubyte * nbytes).from_address(ptr))
        return view


_CUDA: _Cuda | None = None


def _cuda() -> _Cuda:
    global _CUDA
    if _CUDA is None:
        _CUDA = _Cuda()
    return _CUDA


def live_streams() -> int:
    """For tests: streams created and not destroyed."""
    return len(_cuda().streams)


def live_allocations() -> int:
    """For tests: device and pinned host allocations not freed."""
    return len(_cuda().device) + len(_cuda().pinned)


def cudaGetErrorName(err: cudaError_t):  # noqa: N802
    return cudaError_t.cudaSuccess, cudaError_t(err).name.encode()


def cudaGetDevice():  # noqa: N802
    return cudaError_t.cudaSuccess, 0


def cudaGetDeviceProperties(device: int):  # noqa: N802
    if device != 0:
        return cudaError_t.cudaErrorInvalidValue, None
    return cudaError_t.cudaSuccess, _Props()


def cudaStreamCreate():  # noqa: N802
    s = _Stream()
    _cuda().streams[int(s)] = s
    return cudaError_t.cudaSuccess, s


def cudaStreamSynchronize(stream):  # noqa: N802
    s = _cuda().stream(int(stream))
    while s.queue:
        s.queue.pop(0)()
    return (cudaError_t.cudaSuccess,)


def cudaStreamDestroy(stream):  # noqa: N802
    cudaStreamSynchronize(stream)
    del _cuda().streams[int(stream)]
    return (cudaError_t.cudaSuccess,)


def _alloc(table: dict[int, np.ndarray], nbytes: int):
    if nbytes <= 0:
        return cudaError_t.cudaErrorInvalidValue, 0
    arr = np.zeros(nbytes, np.uint8)
    table[arr.ctypes.data] = arr
    return cudaError_t.cudaSuccess, arr.ctypes.data


def cudaMalloc(size: int):  # noqa: N802
    return _alloc(_cuda().device, size)


def cudaMallocHost(size: int):  # noqa: N802
    return _alloc(_cuda().pinned, size)


def cudaFree(ptr: int):  # noqa: N802
    return (cudaError_t.cudaSuccess if _cuda().device.pop(int(ptr), None) is not None else cudaError_t.cudaErrorInvalidValue,)


def cudaFreeHost(ptr: int):  # noqa: N802
    return (cudaError_t.cudaSuccess if _cuda().pinned.pop(int(ptr), None) is not None else cudaError_t.cudaErrorInvalidValue,)


def cudaMemcpyAsync(dst: int, src: int, count: int, kind: cudaMemcpyKind, stream):  # noqa: N802
    cuda = _cuda()
    s = cuda.stream(int(stream))
    if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
        d, h = cuda.device_view(dst, count), cuda.host_view(src, count)
        s.queue.append(lambda: d.__setitem__(slice(None), h))
    elif kind == cudaMemcpyKind.cudaMemcpyDeviceToHost:
        d, h = cuda.device_view(src, count), cuda.host_view(dst, count)
        s.queue.append(lambda: h.__setitem__(slice(None), d))
    else:
        return (cudaError_t.cudaErrorInvalidValue,)
    return (cudaError_t.cudaSuccess,)
