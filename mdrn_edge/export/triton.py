"""A Triton Inference Server model repository of an exported model, so many scanners' nodes share GPU servers.

Triton (what Clara and MONAI Deploy's remote inference use) batches requests from many clients dynamically, runs
several instances of a model per GPU and serves ONNX Runtime models and TensorRT plans. The repository holds
``<name>/config.pbtxt`` and ``<name>/1/model.onnx`` (platform ``onnxruntime_onnx``: max batch, dims ``[1, -1, -1]``,
dynamic batching, instance groups, and, when asked, ONNX Runtime's TensorRT accelerator with its precision and
the engine profile's shapes), and for an engine ``<name>-trt/1/model.plan`` (platform ``tensorrt_plan``; Triton
refuses a plan built by another TensorRT, so the config records the version that built it). Every config is
parsed with Triton's own schema (``tritonclient``'s ``model_config_pb2``) before it is written, and carries our
:class:`~mdrn_edge.modelinfo.ModelInfo` in its ``parameters`` (key :data:`INFO_KEY`), so a client reads the
scale, the normaliser and the check thresholds from the server (:class:`~mdrn_edge.runtime.triton.TritonRunner`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mdrn_edge.errors import ExportCheckError, ModelFileError, require
from mdrn_edge.modelinfo import ModelInfo

REPOSITORY = "triton"  # the repository folder mdrn-export writes beside the other artifacts
INFO_KEY = "mdrn_edge"  # the config parameter holding the model info (JSON)
SHA_KEY = "model_sha256"  # ... and the served file's SHA-256 (what the derived DICOM names)
SERVED_KEY = "served_by"  # mdrn-serve: the backend and precision its runners compute in
Shape = tuple[int, int, int, int]


@dataclass(frozen=True)
class TritonOptions:
    """How Triton serves the model: the largest batch the dynamic batcher forms (and how long it waits to form
    one), instances per device, the device kind, and ONNX Runtime's TensorRT accelerator (None: off)."""

    max_batch: int = 8
    queue_delay_us: int = 2000
    instances: int = 1
    kind: str = "KIND_GPU"
    tensorrt_precision: str | None = None  # FP32 | FP16 | INT8: ONNX Runtime's TensorRT accelerator on the GPU

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch <= 1024 or not 1 <= self.instances <= 64 or self.queue_delay_us < 0:
            raise ValueError("max batch 1..1024, instances 1..64 and a non-negative queue delay")
        if self.kind not in ("KIND_GPU", "KIND_CPU"):
            raise ValueError(f"instance kind must be KIND_GPU or KIND_CPU, got {self.kind!r}")
        if self.tensorrt_precision not in (None, "FP32", "FP16", "INT8"):
            raise ValueError(f"TensorRT precision must be FP32, FP16 or INT8, got {self.tensorrt_precision!r}")


def _shape(name: str, dims: Shape) -> str:
    return f"{name}:" + "x".join(map(str, dims))


def config_text(name: str, platform: str, info: ModelInfo, options: TritonOptions,
                profile: tuple[Shape, Shape, Shape] | None = None, parameters: dict[str, str] | None = None) -> str:
    """The ``config.pbtxt`` of one model: N x 1 x H x W FP32 in and out (Triton's dims leave out the batch)."""
    tensor = '{{ name: "{}" data_type: TYPE_FP32 dims: [ 1, -1, -1 ] }}'
    lines = [f'name: "{name}"', f'platform: "{platform}"', f"max_batch_size: {options.max_batch}",
             f"input [ {tensor.format(info.input_name)} ]", f"output [ {tensor.format(info.output_name)} ]",
             f"dynamic_batching {{ max_queue_delay_microseconds: {options.queue_delay_us} }}",
             f"instance_group [ {{ count: {options.instances} kind: {options.kind} }} ]"]
    if options.tensorrt_precision and platform == "onnxruntime_onnx":
        accel = [("precision_mode", options.tensorrt_precision), ("max_workspace_size_bytes", str(1 << 30)),
                 ("trt_engine_cache_enable", "1"),
                 # CCA's variance (Pow + ReduceMean) in FP32: only a hint to TensorRT (no constraints flag), but
                 # Triton's backend takes no trt_op_types_to_exclude; the -trt engine model pins CCA for certain
                 ("trt_layer_norm_fp32_fallback", "1")]
        if profile:
            accel += [(f"trt_profile_{k}_shapes", _shape(info.input_name, dims)) for k, dims in zip(("min", "opt", "max"), profile)]
        params = " ".join(f'parameters {{ key: "{k}" value: "{v}" }}' for k, v in accel)
        lines.append(f'optimization {{ execution_accelerators {{ gpu_execution_accelerator: [ {{ name: "tensorrt" {params} }} ] }} }}')
    for key, value in {INFO_KEY: info.to_json(), **(parameters or {})}.items():
        lines.append(f"parameters {{ key: {json.dumps(key)} value: {{ string_value: {json.dumps(value)} }} }}")
    return "\n".join(lines) + "\n"


def parse_config(text: str, source: str) -> Any:
    """The config parsed by Triton's own protobuf schema; anything it refuses (a typo, a wrong type) is one line."""
    require("tritonclient.grpc", "triton")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ModelFileError(f"{source}: not a valid Triton model configuration ({exc}); regenerate it with "
                             "mdrn-export --triton") from None


def info_of(config: Any, source: str) -> ModelInfo:
    """The model info a config (parsed, or Triton's JSON form of it) carries in its parameters."""
    params = config.get("parameters", {}) if isinstance(config, dict) else {
        k: {"string_value": v.string_value} for k, v in config.parameters.items()}
    if INFO_KEY not in params:
        raise ModelFileError(f"{source}: its Triton configuration carries no mdrn-edge model info (parameter "
                             f"'{INFO_KEY}'); serve a repository written by mdrn-export --triton, or mdrn-serve")
    return ModelInfo.from_json(params[INFO_KEY]["string_value"], source)


def write_model(repository: Path, name: str, platform: str, model_file: Path, info: ModelInfo,
                options: TritonOptions, profile: tuple[Shape, Shape, Shape] | None = None,
                parameters: dict[str, str] | None = None) -> Path:
    """One model folder of a repository (config checked by Triton's schema first); returns the folder."""
    from mdrn_edge.fileio import file_sha256

    text = config_text(name, platform, info, options, profile, {SHA_KEY: file_sha256(model_file), **(parameters or {})})
    parsed = parse_config(text, f"{name}/config.pbtxt")
    if info_of(parsed, name) != info or parsed.max_batch_size != options.max_batch:
        raise ExportCheckError(f"{name}/config.pbtxt: does not read back as written; this is a bug, please report it")
    folder = repository / name
    (folder / "1").mkdir(parents=True)
    shutil.copy2(model_file, folder / "1" / ("model.plan" if platform == "tensorrt_plan" else "model.onnx"))
    (folder / "config.pbtxt").write_text(text)
    return folder
